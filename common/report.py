"""Results side by side, and the files every evaluation leaves: the markdown tables evaluate.py
prints, comparison.md's summary (one row per served column, val beside test), a results.csv row, and
a split's outputs (<name>.trec, <name>.per_query.json, metrics.json) as evaluate.py and both
trainers write them."""
import json
import os
import time

import numpy as np

from common.files import write_json
from common.metrics import write_trec
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


def results_row(run_dir, hparams, results):
    """One row of results.csv: when, which commit and run, each compared run's headline metrics, and
    the scalar settings of the config.json files in `hparams` (prefixed with their run's name)."""
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(), "run": run_dir}
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
    """{"label name": result} from `label=path/metrics.json` items, in order; with per_query, each
    result's per-query metrics (the <name>.per_query.json beside it) under "per_query"."""
    results = {}
    for item in items:
        label, _, path = item.rpartition("=")
        label = label or os.path.basename(os.path.dirname(os.path.abspath(path)))
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)["results"]
            for name, result in saved.items():
                if per_query:
                    with open(os.path.join(os.path.dirname(path), f"{name}.per_query.json"), encoding="utf-8") as f:
                        result["per_query"] = json.load(f)
                results[f"{label} {name}"] = result
        except (OSError, ValueError, KeyError) as e:
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


def write_results(out_dir, dataset, split, results):
    """{name: {"metrics", "per_query", "run", ...}} as a run file and per-query metrics per name, and
    one metrics.json holding the rest: the layout every evaluation writes, so reports read them alike."""
    os.makedirs(out_dir, exist_ok=True)
    for name, r in results.items():
        write_trec(os.path.join(out_dir, f"{name}.trec"), r["run"], name)
        write_json(os.path.join(out_dir, f"{name}.per_query.json"), r["per_query"])
    write_json(os.path.join(out_dir, "metrics.json"), {"dataset": dataset, "split": split, "results": {
        name: {k: v for k, v in r.items() if k not in ("per_query", "run")} for name, r in results.items()}})
