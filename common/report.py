"""Results side by side, and the files every evaluation leaves: the markdown tables evaluate.py
prints, comparison.md's summary (one row per served column, val beside test), a results.csv row, and
a split's outputs (<name>.trec, <name>.per_query.json, metrics.json) as evaluate.py and both
trainers write them."""
import json
import os
import time

import numpy as np

from common.files import read_csv_rows, write_json
from common.metrics import ranked, write_trec
from common import significance
from common.run import UserError, git_commit

HEADLINE = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@10", "precision@10", "success@10")


def table(results):
    """Markdown table of the headline metrics, one column per retriever."""
    names = list(results)
    rows = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in HEADLINE:
        if all(metric in r["metrics"] for r in results.values()):
            rows.append(f"| {metric} | " + " | ".join(f"{r['metrics'][metric]:.4f}" for r in results.values()) + " |")
    for p in ("p50", "p95"):  # a column evaluated without latency (evaluate.py --latency=false) shows "-"
        if any("latency_ms" in r for r in results.values()):
            rows.append(f"| latency {p} ms | " + " | ".join(f"{r['latency_ms'][p]:.1f}" if "latency_ms" in r else "-"
                                                           for r in results.values()) + " |")
    return "\n".join(rows) + "\n"


def baseline_column(results, given=""):
    """The column others are tested against: `given` (a column's name, or the label of several: its
    served column), else the first BM25 column, else the first."""
    if given:
        if given in results:
            return given
        return served_column(results, given)
    return next((n for n in results if n == "bm25" or n.endswith(" bm25")), next(iter(results)))


def significance_table(results, baseline, metric="ndcg@10"):
    """Markdown: each column against `baseline` on `metric` per query, over the queries both scored:
    the mean difference, Holm-adjusted p of a paired t and of a randomisation test, wins / ties /
    losses. "" with a single column."""
    per_query = {n: {q: s[metric] for q, s in r.get("per_query", {}).items()} for n, r in results.items()}
    if len(per_query) < 2:
        return ""
    rows = significance.against(per_query, baseline)
    lines = [f"Against **{baseline}**, {metric} per query: two-sided paired tests (Student's t; Fisher's "
             f"randomisation, {significance.ROUNDS:,} sign flips, seeded: its smallest p is 1/{significance.ROUNDS + 1:,}), p-values "
             f"Holm–Bonferroni-adjusted across the {sum('p_t' in r for r in rows.values())} columns tested; **bold** "
             "below 0.05.", "",
             f"| column | queries | Δ {metric} | p (t) | p (randomisation) | wins / ties / losses |", "|---" * 6 + "|"]
    for name, r in rows.items():
        ps = ([f"**{significance.p_text(r[k])}**" if r[k] < 0.05 else significance.p_text(r[k])
               for k in ("p_t", "p_rand")] if "p_t" in r else [r["why"], ""])
        dropped = f" ({r['dropped']} not shared, left out)" if r["dropped"] else ""
        lines.append(f"| {name} | {r['queries']}{dropped} | {r['delta']:+.4f} | {ps[0]} | {ps[1]} | "
                     f"{r['wins']} / {r['ties']} / {r['losses']} |")
    return "\n".join(lines) + "\n"


def query_changes(before, after, qrels, queries, snippets, metric="ndcg@10", n=10):
    """Markdown: the n queries `after` gained most on against `before`, and the n it lost most on, each with
    its text, its most relevant document (`snippets` {doc id: title or first words}) and that document's
    rank in both runs ("-": not retrieved). `before`, `after`: (name, {qid: {metric: value}}, run {qid: {doc id:
    score}}), over the queries both scored."""
    (a_name, a_scores, a_run), (b_name, b_scores, b_run) = before, after
    shared = [q for q in a_scores if q in b_scores]
    diff = {q: b_scores[q][metric] - a_scores[q][metric] for q in shared}
    gained, lost = most_changed(a_scores, b_scores, metric, n)
    lines = [f"# Per query: {b_name} against {a_name} ({metric})", "",
             f"{len(shared)} queries: {sum(d > 0 for d in diff.values())} gained, {sum(d < 0 for d in diff.values())} "
             f"lost, {sum(d == 0 for d in diff.values())} unchanged."
             + (f" {len(set(a_scores) ^ set(b_scores))} queries scored by one run only are left out."
                if set(a_scores) != set(b_scores) else "")]
    for title, picked in (("Gained most", gained), ("Lost most", lost)):
        lines += ["", f"## {title}", "", f"| query | relevant document | rank: {_cell(a_name)} → {_cell(b_name)} | "
                  f"{metric} |", "|---|---|---|---|"]
        for q in picked:
            relevant = sorted((d for d, g in qrels.get(q, {}).items() if g > 0), key=lambda d: -qrels[q][d])
            doc = relevant[0] if relevant else ""
            ranks = [(ranked(run.get(q, {})) + [doc]).index(doc) + 1 if doc else 0 for run in (a_run, b_run)]
            ranks = [r if r <= len(run.get(q, {})) else 0 for r, run in zip(ranks, (a_run, b_run))]
            lines.append(f"| {_cell(q)}: {_cell(queries.get(q, ''), 90)} | "
                         f"{_cell(doc)}: {_cell(snippets.get(doc, ''), 70)} | "
                         f"{' → '.join(str(r) if r else '-' for r in ranks)} | "
                         f"{a_scores[q][metric]:.2f} → {b_scores[q][metric]:.2f} |")
        if not picked:
            lines.append("| (none) | | | |")
    return "\n".join(lines) + "\n"


def most_changed(before, after, metric="ndcg@10", n=10):
    """([the n queries `after` gained most on], [the n it lost most on]) against `before`, both
    {qid: {metric: value}}, over the queries both scored; ties by query id."""
    diff = {q: after[q][metric] - before[q][metric] for q in before if q in after}
    order = sorted(diff, key=lambda q: (-diff[q], q))
    return [q for q in order if diff[q] > 0][:n], [q for q in reversed(order) if diff[q] < 0][:n]


def _cell(text, width=None):
    """Text for one markdown table cell: one line, pipes escaped, cut to `width` characters."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if width is None or len(text) <= width else text[:width - 1] + "…"


def generated_line(details, val_queries, no_val_why, worth, small_val):
    """One paragraph of comparison.md on a train split a language model wrote (prepare.json's details["generated"]):
    what was kept of what, and what chose what is served: `val_queries` real judged ones (the mix pooled with
    generated ones under `small_val`), or, with none, the mix chosen on generated ones (an estimate: `worth`) and the
    setting `no_val_why` names."""
    dropped = ", ".join(f"{n:,} {why}" for why, n in details["dropped"].items() if n)
    trip = ", ".join(f"{n:,} {where}" for where, n in details.get("round_trip", {}).items())
    weighing = details.get("weighing", 0)
    least = f"the {weighing:,} generated questions that reuse their passage's words least ({worth})"
    chose = (f"{val_queries:,} judged question(s) are val and chose what is served"
             + (f", the mix of dense and BM25 on them and {least}." if val_queries < small_val and weighing else ".")
             if val_queries else
             f"No judged question is val: the mix of dense and BM25 was chosen on {least}; the encoder and the memory: "
             f"{no_val_why}." if weighing else
             f"No judged question is val, so nothing here chose: what is served is {no_val_why}.")
    return (f"Training questions: {details['kept']:,} written by {details['generator']} for {details['passages']:,} "
            f"passages ({details['written']:,} written{'; dropped ' + dropped if dropped else ''}"
            f"{'; round trip through the zero-shot hybrid: ' + trip if trip else ''}). They are not scored as if "
            f"they were real questions. {chose}\n")


def results_row(run_dir, hparams, results, dataset="", served=None, wall_s=None):
    """One row of results.csv: when, which commit and run, the dataset, the served column and its test
    nDCG@10, the wall time, each compared run's headline metrics, and the scalar settings of the
    config.json files in `hparams` (prefixed with their run's name)."""
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(), "run": run_dir, "dataset": dataset,
           "served": served or "", "served ndcg@10": round(results[served]["metrics"]["ndcg@10"], 4) if served else "",
           "wall_s": round(wall_s) if wall_s is not None else ""}
    for path in hparams:
        try:
            with open(path, encoding="utf-8") as f:
                settings = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a run's config.json ({e}); fix or drop it from --hparams") from None
        stage = os.path.basename(os.path.dirname(os.path.abspath(path)))
        row.update({f"{stage}.{k}": v if not isinstance(v, list) else ",".join(map(str, v))
                    for k, v in settings.items() if isinstance(v, (str, int, float, bool, list))})
    for name, result in results.items():
        row.update({f"{name} {m}": round(result["metrics"][m], 4) for m in ("ndcg@10", "recall@100")
                    if m in result["metrics"]})
    return row


def read_results(items, what, per_query=False):
    """{"label name": result} from `label=path/metrics.json` items, in order, each with its "split" and
    its run file's path ("trec"); with per_query, its per-query metrics (the <name>.per_query.json beside
    it) under "per_query"."""
    results = {}
    for item in items:
        label, _, path = item.rpartition("=")
        label = label or os.path.basename(os.path.dirname(os.path.abspath(path)))
        try:
            with open(path, encoding="utf-8") as f:
                whole = json.load(f)
            for name, result in whole["results"].items():
                result["split"] = whole.get("split")
                result["trec"] = os.path.join(os.path.dirname(path), f"{name}.trec")
                if per_query:
                    with open(os.path.join(os.path.dirname(path), f"{name}.per_query.json"), encoding="utf-8") as f:
                        result["per_query"] = json.load(f)
                results[f"{label} {name}"] = result
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            raise UserError(f"{path}: not a metrics.json written by evaluate.py or a training script ({e}); "
                            f"fix or drop it from --{what}") from None
    return results


def served_column(results, label):
    """The column of `label` that is served: its reranker fused on top when it has one, else its
    first stage."""
    names = [n for n in results if n.startswith(f"{label} ")]
    if not names:
        raise UserError(f"served={label}: no compared column is labelled so; pass one of the --compare labels")
    return next((n for n in names if n.endswith("+fused")), names[0])


def summary_table(results, val, served=None, metric="ndcg@10", remembered=None):
    """Markdown: one row per column, with its val score, what val chose for it and its test scores,
    the `served` column marked. Val scores are means over the val queries every column was scored on
    (a trainer may evaluate a subset). A reranker's scores alone, when a fused column serves instead,
    come last as a diagnostic. `remembered` {"val": qids, "test": qids}: the queries with a relevant
    document some train query also found (what an index memory can help, common/memory.py); each
    split's score is then also shown over those and over the rest."""
    common = set.intersection(*(set(v["per_query"]) for v in val.values())) if val else set()
    shown = [n for n in results if not (n.endswith("+rerank") and n.removesuffix("+rerank") + "+fused" in results)]
    test_queries = set.intersection(*(set(r.get("per_query", {})) for r in results.values())) if results else set()
    parts = {"val": common, "test": test_queries}
    split = {k: (parts[k] & remembered[k], parts[k] - remembered[k]) for k in parts} if remembered else {}

    def part_cells(per_query, k):
        if k not in split:
            return ""
        means = [f"{np.mean([per_query[q][metric] for q in part]):.4f}" if part and per_query else "-"
                 for part in split[k]]
        return f" {' / '.join(means)} |"

    head = {k: f" {k} remembered / not ({len(split[k][0])} / {len(split[k][1])}) |" if k in split else ""
            for k in parts}
    rows = [f"| column | val {metric} ({len(common)} queries) |{head['val']} chosen on val | test {metric} |"
            f"{head['test']} test recall@100 |", "|---" * (5 + len(split)) + "|"]
    for name in shown + [n for n in results if n not in shown]:
        r, v = results[name], val.get(name, {})
        label = f"**{name}** (served)" if name == served else name
        shown_name = label if name in shown else f"{name} (the reranker alone; not served)"
        val_score = f"{np.mean([v['per_query'][q][metric] for q in common]):.4f}" if v and common else ""
        rows.append(f"| {shown_name} | {val_score} |{part_cells(v.get('per_query'), 'val')} "
                    f"{v.get('chosen') or r.get('chosen') or ''} | {r['metrics'][metric]:.4f} |"
                    f"{part_cells(r.get('per_query'), 'test')} {r['metrics'].get('recall@100', float('nan')):.4f} |")
    return "\n".join(rows) + "\n"


def results_table(path, last=20):
    """Markdown: the last `last` rows of a results.csv (one a pipeline), newest last: commit, dataset, model,
    the served column, its test nDCG@10, wall time. Rows written before those columns existed are read
    from what they hold (the run's directory, its encoder's model, the served columns' scores)."""
    try:
        _, rows = read_csv_rows(path)
    except OSError as e:
        raise UserError(f"{path}: no results yet ({e.strerror}); `make pipeline` appends a row per run") from None
    lines = ["| time | commit | dataset | model | served | test ndcg@10 | wall |", "|---" * 7 + "|"]
    for row in rows[-last:]:
        served = row.get("served") or next((c[:-len(" ndcg@10")] for c in reversed(list(row)) if c.startswith("served ")
                                            and c.endswith(" ndcg@10") and row[c]), "")
        model = next((row[k] for k in ("encoder.model", "index.model") if row.get(k)), "")
        dataset = row.get("dataset") or os.path.basename(row.get("index.data", "")) or row.get("run", "")
        wall = f"{int(float(row['wall_s'])) // 60} min" if row.get("wall_s") else ""
        lines.append(f"| {row.get('time', '')} | {row.get('commit', '')[:12]} | {dataset} | "
                     f"{os.path.basename(model)} | "
                     f"{served} | {row.get(f'{served} ndcg@10', '')} | {wall} |")
    return "\n".join(lines) + "\n"


def tensorboard_text(log_dir, tag, markdown):
    """`markdown` as a TensorBoard text entry in log_dir (TensorBoard renders markdown tables)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir) as writer:
        writer.add_text(tag, markdown)


def write_results(out_dir, dataset, split, results):
    """{name: {"metrics", "per_query", "run", ...}} as a run file and per-query metrics per name, and
    one metrics.json holding the rest: the layout every evaluation writes, so reports read them alike."""
    os.makedirs(out_dir, exist_ok=True)
    for name, r in results.items():
        write_trec(os.path.join(out_dir, f"{name}.trec"), r["run"], name)
        write_json(os.path.join(out_dir, f"{name}.per_query.json"), r["per_query"])
    write_json(os.path.join(out_dir, "metrics.json"), {"dataset": dataset, "split": split, "results": {
        name: {k: v for k, v in r.items() if k not in ("per_query", "run")} for name, r in results.items()}})
