"""The second stage's score: the first stage's and the reranker's, mixed.

A reranker trained on few queries can be weaker than the first stage it reorders (a fine-tuned
bi-encoder especially), and then reranking makes results worse. So the served score of each of a
query's top `depth` candidates is a convex mix

    (1 - weight) * first-stage score + weight * reranker score,

each min-max normalised over those candidates, with `weight` and `depth` chosen on val
(train_reranker.py) and saved with the reranker as fusion.json. Weight 0 is the first stage
exactly (the reranker is then not even run), weight 1 the reranker alone. Candidates below the
depth follow in first-stage order.
"""
import json
import os

import numpy as np

from common.files import atomic_open
from common.metrics import evaluate_run, ranked

FILE = "fusion.json"
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
DEPTHS = (10, 20, 30, 50, 100)
# What a reranker with no fusion.json (a published cross-encoder, say) does: rerank alone.
RERANK_ONLY = {"weight": 1.0, "depth": 100}


def _unit(values):
    values = np.asarray(values, dtype=np.float64)
    spread = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / spread if spread > 0 else np.zeros_like(values)


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
        if weight == 1:  # the reranker's own scores, as a reranker alone would serve them
            mixed = np.array([rerank[qid][d] for d in top], dtype=np.float64)
        else:
            mixed = (1 - weight) * _unit([row[d] for d in top]) + weight * _unit([rerank[qid][d] for d in top])
        out[qid] = {d: float(s) for d, s in zip(top, mixed)}
        floor = float(mixed.min()) if len(top) else 0.0
        out[qid].update((d, floor - 1.0 - i) for i, d in enumerate(rest))  # below, in first-stage order
    return out


def choose(qrels, first, rerank, depths, weights=WEIGHTS, metric="ndcg@10", ks=(1, 3, 5, 10, 100), min_z=2.0):
    """(choice, grid): the (weight, depth) whose fused run scores best on `metric` against `qrels`
    (ties go to the lower weight, then the shallower depth: the cheaper one to serve), and
    {"weight,depth": metric} of every pair tried. A mix is kept only when its per-query gain over
    the first stage is at least `min_z` standard errors: the best of a grid of mixes on a few hundred
    val queries beats the first stage by a little through noise alone. Otherwise the choice is
    weight 0, and "gain" says by how much the best mix was ahead."""
    grid, best = {}, None
    first_metric, first_per_query = evaluate_run(qrels, first, ks)
    for depth in sorted(depths):
        for weight in sorted(weights):
            mean, per_query = (first_metric, first_per_query) if weight == 0 else \
                evaluate_run(qrels, fuse(first, rerank, weight, depth), ks)
            grid[f"{weight:g},{depth}"] = mean[metric]
            if best is None or mean[metric] > best[0]:
                best = (mean[metric], weight, depth, per_query)
    _, weight, depth, per_query = best
    gains = np.array([per_query[q][metric] - first_per_query[q][metric] for q in first_per_query])
    gain = float(gains.mean()) if len(gains) else 0.0
    stderr = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else 0.0
    if weight == 0 or gain <= 0 or gain < min_z * stderr:
        return {"weight": 0.0, "depth": min(depths), "gain": gain, "stderr": stderr}, grid
    return {"weight": weight, "depth": depth, "gain": gain, "stderr": stderr}, grid


def save(model_dir, fusion):
    with atomic_open(os.path.join(model_dir, FILE)) as f:
        json.dump(fusion, f, indent=2)
        f.write("\n")


def load(model_dir):
    """The fusion saved with a reranker, or RERANK_ONLY when it has none."""
    path = os.path.join(model_dir, FILE) if os.path.isdir(model_dir) else ""
    if not os.path.isfile(path):
        return dict(RERANK_ONLY)
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return {**RERANK_ONLY, **saved}


def describe(fusion):
    """One line for logs and reports."""
    if fusion["weight"] == 0:
        ahead = (f" (the best mix was {fusion['gain']:+.4f} {fusion.get('metric', 'nDCG@10')}, within noise: "
                 f"standard error {fusion['stderr']:.4f})" if fusion.get("gain", 0) > 0 else "")
        return f"fusion weight 0: the reranker does not help this first stage{ahead}; serving the first stage alone"
    if fusion["weight"] == 1:
        return f"the reranker alone over the first stage's top {fusion['depth']}"
    return f"fusion weight {fusion['weight']:g} over the first stage's top {fusion['depth']}"
