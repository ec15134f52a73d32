"""Fusion: every mix of two rankings the pipeline serves.

One mechanism for both stages: each list's scores min-max normalised over that list, then a convex mix

    (1 - weight) * a + weight * b

- the hybrid first stage (`hybrid`): a = dense, b = BM25, over the union of a query's two top-k lists; a
  document one list lacks gets that list's floor (0). Weight 0 is the dense run exactly, 1 BM25's order
  exactly, and a query BM25 matches no word of gets the dense list alone; reciprocal-rank fusion
  (`method` "rrf") beside it. Saved with the index as fusion.json.
- the second stage (`fuse`): a = the first stage, b = the reranker, over the first stage's top `depth`,
  the rest below in first-stage order. Weight 0 is the first stage exactly (the reranker is not even
  run), 1 the reranker alone. Saved with the reranker as fusion.json.

Which weight is served is common/decision.py's to choose, on val.
"""
import json
import os

import numpy as np

from common.files import atomic_open
from common.metrics import ranked

FILE = "fusion.json"
KS = (1, 3, 5, 10, 100)
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
DEPTHS = (10, 20, 30, 50, 100)
RRF_K = 60  # the paper's constant: it damps the top ranks' lead
# What a reranker with no fusion.json (a published cross-encoder, say) does: rerank alone.
RERANK_ONLY = {"weight": 1.0, "depth": 100}
# The hybrid's lists: each query's top HYBRID_DEPTH of dense and of BM25 (its weight is chosen over these).
HYBRID_DEPTH = 100
HYBRID_WEIGHTS = WEIGHTS
# What an index with no fusion.json (built before hybrids, or with hybrid=false) serves: dense alone.
DENSE_ONLY = {"method": "convex", "weight": 0.0, "depth": HYBRID_DEPTH}


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

