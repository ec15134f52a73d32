"""Fusion: every mix of two rankings the pipeline serves, and the rule that chooses its weight on val.

One mechanism for both stages: each list's scores min-max normalised over that list, then a convex mix

    (1 - weight) * a + weight * b

- the hybrid first stage (`hybrid`): a = dense, b = BM25, over the union of a query's two top-k lists; a
  document one list lacks gets that list's floor (0). Weight 0 is the dense run exactly, 1 BM25's order
  exactly, and a query BM25 matches no word of gets the dense list alone. Chosen on val by build_index.py
  (and evaluate.py without an index) and saved with the index as fusion.json; reciprocal-rank fusion is
  compared on val beside it (`method` "rrf").
- the second stage (`fuse`): a = the first stage, b = the reranker, over the first stage's top `depth`,
  the rest below in first-stage order. Weight 0 is the first stage exactly (the reranker is not even
  run), 1 the reranker alone. Chosen on val by train_reranker.py, saved with the reranker as fusion.json.

`select` applies one rule to both: serve the candidate whose per-query val gain over the weight-0 run,
less z standard errors, is largest, when that bound is above 0. The best of a grid on a hundred-odd
val queries is ahead partly by luck, and a weight chosen by its val score alone overshoots
(bench/fusion_rules.py compares the rules on val alone, bench/results/hybrid-cpu.md).
"""
import json
import os

import numpy as np

from common.files import atomic_open
from common.metrics import evaluate_run, ranked
from common.significance import mean_and_se

FILE = "fusion.json"
KS = (1, 3, 5, 10, 100)
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
DEPTHS = (10, 20, 30, 50, 100)
RRF_K = 60  # the paper's constant: it damps the top ranks' lead
# How many standard errors a mix's val gain must clear (select): the reranker's grid holds five times
# the candidates, so its best bound is the more inflated by luck, and a CPU-trained reranker rarely helps.
HYBRID_Z, RERANK_Z = 1.0, 2.0
# What a reranker with no fusion.json (a published cross-encoder, say) does: rerank alone.
RERANK_ONLY = {"weight": 1.0, "depth": 100}
# The hybrid's lists: each query's top HYBRID_DEPTH of dense and of BM25 (its weight is chosen over these).
HYBRID_DEPTH = 100
HYBRID_WEIGHTS = WEIGHTS
# What an index with no fusion.json (built before hybrids, or with hybrid=false) serves: dense alone.
DENSE_ONLY = {"method": "convex", "weight": 0.0, "depth": HYBRID_DEPTH}
# What a hybrid serves when there is no val to choose on: the weight val chose most often across the
# datasets measured (bench/results/hybrid-cpu.md).
NO_VAL = {"method": "convex", "weight": 0.3, "depth": HYBRID_DEPTH, "default": True}


def unit(row):
    """{doc: score} min-max normalised to [0, 1] over the row; a row whose scores are all equal gets 1s."""
    if not row:
        return {}
    values = np.fromiter(row.values(), np.float64, len(row))
    low, spread = values.min(), values.max() - values.min()
    scaled = (values - low) / spread if spread > 0 else np.ones_like(values)
    return dict(zip(row, scaled.tolist()))


def mix(a, b, weight):
    """{doc: (1 - weight) * a + weight * b} over the union of two rows, each normalised by `unit`; a
    document one row lacks gets that row's floor, 0."""
    a, b = unit(a), unit(b)
    return {d: (1 - weight) * a.get(d, 0.0) + weight * b.get(d, 0.0) for d in {**a, **b}}


def rrf(rows, k=RRF_K):
    """Reciprocal-rank fusion of one query's rows (Cormack et al., 2009): a doc scores the sum over
    rows of 1 / (k + rank), rank from 1 in trec_eval's order, nothing from a row that misses it."""
    out = {}
    for row in rows:
        for rank, doc_id in enumerate(ranked(row), 1):
            out[doc_id] = out.get(doc_id, 0.0) + 1.0 / (k + rank)
    return out


def hybrid(dense, bm25, choice, depth=None):
    """{qid: {doc id: score}}: each query's dense and BM25 rows mixed as `choice` says ({"method":
    "convex", "weight": w} or {"method": "rrf", "rrf_k": k}), cut to its top `depth` (None: all). BM25
    documents scoring 0 matched no query word and count as missing; a query with none gets its dense
    row alone. Weight 0 returns the dense rows themselves, weight 1 the BM25 rows themselves."""
    out = {}
    for qid, row in dense.items():
        matched = {d: s for d, s in bm25.get(qid, {}).items() if s > 0}
        if not matched or choice.get("method", "convex") == "convex" and choice["weight"] == 0:
            out[qid] = row
        elif choice.get("method", "convex") == "rrf":
            out[qid] = rrf([row, matched], choice.get("rrf_k", RRF_K))
        elif choice["weight"] == 1:
            out[qid] = bm25[qid]
        else:
            out[qid] = mix(row, matched, choice["weight"])
        if depth is not None and len(out[qid]) > depth:
            out[qid] = {d: out[qid][d] for d in ranked(out[qid], depth)}
    return out


def uses_bm25(choice):
    """Whether a hybrid choice needs BM25's scores."""
    return choice.get("method", "convex") == "rrf" or choice["weight"] > 0


def fuse(first, rerank, weight, depth):
    """{qid: {doc id: score}}: each query's first-stage top `depth` ordered by the mix, the rest of
    its first-stage run below them in their order. `rerank` {qid: {doc id: reranker score}} must
    hold every one of those top documents. Weight 0 returns `first` itself."""
    if weight == 0:
        return first
    out = {}
    for qid, row in first.items():
        docs = ranked(row)
        top, rest = docs[:depth], docs[depth:]
        scores = {d: rerank[qid][d] for d in top}
        # weight 1: the reranker's own scores, as a reranker alone would serve them
        out[qid] = scores if weight == 1 else mix({d: row[d] for d in top}, scores, weight)
        floor = min(out[qid].values(), default=0.0)
        out[qid].update((d, floor - 1.0 - i) for i, d in enumerate(rest))  # below, in first-stage order
    return out


def choose(qrels, first, rerank, depths, weights=WEIGHTS, metric="ndcg@10"):
    """(choice, grid) of the second stage, chosen on val by `select`: {"weight", "depth", "gain",
    "stderr"} (weight 0: the first stage alone) and {"weight,depth": val score} of every pair tried."""
    candidates = {(w, d): lambda w=w, d=d: fuse(first, rerank, w, d) for w in sorted(weights) if w > 0
                  for d in sorted(depths)}
    key, report = select(qrels, first, candidates, RERANK_Z, metric)
    grid = {f"0,{d}": report["base"] for d in sorted(depths)} if 0 in weights else {}
    grid.update({f"{w:g},{d}": score for (w, d), score in report["grid"].items()})
    weight, depth = key or (0.0, min(depths))
    return {"weight": weight, "depth": depth, "gain": report["gain"], "stderr": report["stderr"]}, grid


def select(qrels, base, candidates, z, metric="ndcg@10", guard=(), tolerance=0.0):
    """(key, report) of the candidate to serve: `candidates` is {key: run, or a function that makes it}; a
    function's run is made, scored and let go one at a time, so a grid of hundreds of mixes over tens of
    thousands of queries never holds its runs at once. `base` is the weight-0 run.
    Served: the candidate whose per-query gain over `base` on val, less `z` standard errors, is
    largest, when that bound is above 0; else key None (serve base). The best val score alone favours
    whichever weight was luckiest on these queries, and overshoots; the bound prefers a gain that holds
    across them, which leans to lighter weights. With `guard` (query ids), a candidate whose mean
    loss to `base` over those queries exceeds `tolerance` is never served (a gain on some queries
    bought with a loss on others). report: {"base", "grid": {key: val score}, "gain", "stderr"} of the
    candidate served (of the best-scoring one when none is), and "chosen"."""
    ks = (int(metric.rsplit("@", 1)[1]),)  # the one cut-off the choice reads: the others cost time on a large grid
    base_mean, base_per_query = evaluate_run(qrels, base, ks)
    row = {q: i for i, q in enumerate(base_per_query)}
    base_values = np.array([m[metric] for m in base_per_query.values()])
    grid, values = {}, {}  # per candidate: its val score, and its metric per query in base's order
    for key, run in candidates.items():
        mean, per_query = evaluate_run(qrels, run() if callable(run) else run, ks)
        grid[key] = mean[metric]
        values[key] = np.array([per_query[q][metric] for q in base_per_query])
    report = {"base": base_mean[metric], "grid": grid, "gain": 0.0, "stderr": 0.0, "chosen": None}
    if not grid or len(base_per_query) < 2:  # one query has no standard error: nothing is beyond noise
        return None, report
    gains = {key: mean_and_se(values[key] - base_values) for key in candidates}
    guard = [row[q] for q in guard if q in row]
    eligible = [key for key in candidates
                if not guard or np.mean(values[key][guard] - base_values[guard]) >= -tolerance]
    chosen = max(eligible, key=lambda key: gains[key][0] - z * gains[key][1]) if eligible else None  # first of equals
    gain, stderr = gains[chosen] if chosen is not None else (0.0, 0.0)
    if chosen is None or gain - z * stderr <= 0:
        gain, stderr = gains[max(grid, key=grid.get)]
        report.update(gain=gain, stderr=stderr)
        return None, report
    report.update(gain=gain, stderr=stderr, chosen=chosen)
    return chosen, report


def choose_hybrid(qrels, dense, bm25, weights=HYBRID_WEIGHTS, metric="ndcg@10", given=None):
    """The hybrid to serve, chosen on val (`qrels`, and each val query's dense and BM25 top
    HYBRID_DEPTH) by `select`: a convex weight from `weights`, or RRF, or dense alone; or, with
    `given` (a choice), that one, scored. Returns the choice with "val": {"dense", "bm25", "served"}
    scores, "gain" and "stderr" of the best mix against dense, "queries" and "grid"."""
    if given is None and len(qrels) < 2:  # no weight can be told apart on one query: the default's
        given = {**NO_VAL, "one_query": True}
    if given is not None:
        candidates = {"given": hybrid(dense, bm25, given)}
    else:
        candidates = {f"{w:g}": lambda w=w: hybrid(dense, bm25, {"method": "convex", "weight": w})
                      for w in sorted(weights) if w > 0}
        candidates["rrf"] = lambda: hybrid(dense, bm25, {"method": "rrf", "rrf_k": RRF_K})
    key, report = select(qrels, dense, candidates, HYBRID_Z, metric)
    if given is not None:
        key, choice = "given", {**given, "depth": HYBRID_DEPTH, "given": not given.get("one_query")}
    else:
        choice = (dict(DENSE_ONLY) if key is None else {"method": "rrf", "rrf_k": RRF_K, "depth": HYBRID_DEPTH}
                  if key == "rrf" else {"method": "convex", "weight": float(key), "depth": HYBRID_DEPTH})
    bm25_score = (None if not any(bm25.values()) else report["grid"]["1"] if "1" in report["grid"] else
                  evaluate_run(qrels, hybrid(dense, bm25, {"method": "convex", "weight": 1.0}), KS)[0][metric])
    served = report["grid"].get(key, report["base"]) if key is not None else report["base"]
    return {**choice, "metric": metric, "queries": len(qrels), "gain": report["gain"], "stderr": report["stderr"],
            "val": {"dense": report["base"], "bm25": bm25_score, "served": served}, "grid": report["grid"]}


def describe_hybrid(choice):
    """One line: what a hybrid serves, and why."""
    if choice.get("method") == "rrf":
        what = f"reciprocal-rank fusion of dense and BM25 (k={choice.get('rrf_k', RRF_K)})"
    elif choice["weight"] == 0:
        what = "dense alone"
    elif choice["weight"] == 1:
        what = "BM25 alone (dense for a query BM25 matches no word of)"
    else:
        what = f"dense and BM25 mixed, BM25 weight {choice['weight']:g}"
    if "val" not in choice:
        return what + (" (the default: no val to choose on)" if choice.get("default") else "")
    v, metric = choice["val"], choice.get("metric", "ndcg@10")
    bm25 = f", BM25 {v['bm25']:.4f}" if v.get("bm25") is not None else ""
    how = ("the default (one val query tells no weight from another); scored " if choice.get("one_query") else
           "as given; " if choice.get("given") else "chosen ")
    on = choice.get("chosen_on", {})
    if on.get("split", "val") != "val":  # chosen on train + val; scored on val as served
        pooled = f", BM25 {on['bm25']:.4f}" if on.get("bm25") is not None else ""
        return (f"{what}: {how}on train + val ({on['queries']} queries: val's {on['val']} are too few alone; "
                f"{metric}: dense {on['dense']:.4f}{pooled}, served {on['served']:.4f}); on val: dense "
                f"{v['dense']:.4f}{bm25}, served {v['served']:.4f}" + (
                    f"; with the train queries' memory (dense strength {choice['memory']['dense']:g}, BM25 repeat "
                    f"{choice['memory']['bm25']})" if remembers(choice) else ""))
    why = (f"{how}on val ({choice['queries']} queries, {metric}: "
           f"dense {v['dense']:.4f}{bm25}, served {v['served']:.4f}")
    if choice.get("method") != "rrf" and choice["weight"] == 0 and choice["gain"] > 0 and not remembers(choice):
        why += f"; the best mix was {choice['gain']:+.4f}, within noise: standard error {choice['stderr']:.4f}"
    if remembers(choice):
        m = choice["memory"]
        what += f", with the train queries' memory (dense strength {m['dense']:g}, BM25 repeat {m['bm25']})"
        why = why.replace("served", f"{m.get('without', v['served']):.4f} without memory, served", 1) \
            if "without" in m else why
    return f"{what}: {why})"


def remembers(choice):
    """Whether a hybrid choice serves an index memory (common/memory.py)."""
    m = choice.get("memory") or {}
    return bool(m.get("dense") or m.get("bm25"))


def save(directory, fusion):
    with atomic_open(os.path.join(directory, FILE)) as f:
        json.dump(fusion, f, indent=2)
        f.write("\n")


def load(directory, default=RERANK_ONLY):
    """The fusion saved in a directory (a reranker's or an index's), over `default`, which is what a
    directory without one serves."""
    path = os.path.join(directory, FILE) if os.path.isdir(directory) else ""
    if not os.path.isfile(path):
        return dict(default)
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return {**default, **saved}


def describe(fusion):
    """One line for logs and reports."""
    if fusion["weight"] == 0:
        ahead = (f" (the best mix was {fusion['gain']:+.4f} {fusion.get('metric', 'nDCG@10')}, within noise: "
                 f"standard error {fusion['stderr']:.4f})" if fusion.get("gain", 0) > 0 else "")
        return f"fusion weight 0: the reranker does not help this first stage{ahead}; serving the first stage alone"
    if fusion["weight"] == 1:
        return f"the reranker alone over the first stage's top {fusion['depth']}"
    return f"fusion weight {fusion['weight']:g} over the first stage's top {fusion['depth']}"
