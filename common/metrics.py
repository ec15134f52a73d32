"""Ranking metrics with trec_eval's conventions (what pytrec_eval, BEIR and MTEB report).

- a run is {query id: {doc id: score}}; it is ranked by score descending, ties broken by doc id
  descending, exactly as trec_eval does, so tied scores give the same numbers as trec_eval;
- a doc is relevant when its grade is >= 1; nDCG's gain is the grade itself (not 2^grade - 1)
  with a log2(rank + 1) discount, and the ideal ranking uses every judged doc of the query;
- Recall@k and MAP@k divide by all relevant docs of the query, P@k always divides by k;
- MRR@k is the reciprocal rank of the first relevant doc within k (0 when none), success@k is 1
  when any relevant doc is within k.
A row that judges documents of several passages (common.data.Judged) is scored at what it judges: each
document's best passage in the run stands for it (max over passages).
Means are over the queries of the qrels that have at least one relevant doc; a query the run
does not answer scores 0 (trec_eval would skip it, which flatters a retriever that fails).
"""
import math
import time

import numpy as np

from common.files import atomic_open

METRICS = ("ndcg", "mrr", "recall", "map", "precision", "success")
DEFAULT_KS = (1, 3, 5, 10, 100)


def ranked(run_row, depth=None):
    """Doc ids of one query, best first, with trec_eval's tie-breaking."""
    order = sorted(run_row.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return [doc_id for doc_id, _ in order[:depth]]


def query_metrics(qrels_row, run_row, ks=DEFAULT_KS):
    """{"ndcg@10": ..., ...} for one query."""
    if hasattr(qrels_row, "best_per_unit"):
        qrels_row, run_row = qrels_row.units, qrels_row.best_per_unit(run_row)
    docs = ranked(run_row, max(ks))
    grades = np.array([qrels_row.get(d, 0) for d in docs], dtype=np.float64)
    relevant = grades >= 1
    num_rel = sum(1 for g in qrels_row.values() if g >= 1)
    discounts = 1.0 / np.log2(np.arange(2, len(docs) + 2))
    ideal = np.array(sorted((g for g in qrels_row.values() if g > 0), reverse=True), dtype=np.float64)
    ideal_discounts = 1.0 / np.log2(np.arange(2, len(ideal) + 2))
    hits = np.cumsum(relevant)
    first_hit = int(np.argmax(relevant)) + 1 if relevant.any() else math.inf
    precision_at_hit = np.where(relevant, hits / np.arange(1, len(docs) + 1), 0.0)
    out = {}
    for k in ks:
        gain = np.where(grades[:k] > 0, grades[:k], 0.0)
        dcg = float(gain @ discounts[:len(gain)])
        idcg = float(ideal[:k] @ ideal_discounts[:k])
        found = int(hits[min(k, len(docs)) - 1]) if docs else 0
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        out[f"mrr@{k}"] = 1.0 / first_hit if first_hit <= k else 0.0
        out[f"recall@{k}"] = found / num_rel if num_rel else 0.0
        out[f"map@{k}"] = float(precision_at_hit[:k].sum()) / num_rel if num_rel else 0.0
        out[f"precision@{k}"] = found / k
        out[f"success@{k}"] = 1.0 if found else 0.0
    return out


def evaluate_run(qrels, run, ks=DEFAULT_KS):
    """(mean metrics, per-query metrics) of a run against graded qrels."""
    per_query = {
        qid: query_metrics(row, run.get(qid, {}), ks)
        for qid, row in qrels.items() if any(g >= 1 for g in row.values())
    }
    names = [f"{m}@{k}" for m in METRICS for k in ks]
    mean = {n: float(np.mean([pq[n] for pq in per_query.values()])) if per_query else 0.0 for n in names}
    return mean, per_query


def cut_run(run, k, ignore_identical_ids=True):
    """Each query's top k, after dropping a doc that has the query's own id (BEIR's convention:
    retrieve one extra hit so k remain)."""
    out = {}
    for qid, row in run.items():
        if ignore_identical_ids:
            row = {d: s for d, s in row.items() if d != qid}
        out[qid] = {doc_id: row[doc_id] for doc_id in ranked(row, k)}
    return out


def rerank_run(score, queries, run, doc_texts, depth=100, batch_size=32):
    """(reranked run, seconds per query): each query's top `depth` of `run` ({qid: {doc id: score}})
    re-scored by `score(queries, passages, batch_size)` (a cross-encoder's logits, torch or ONNX), one
    query at a time as a search service would; the documents below the depth follow in their
    first-stage order, scored under the reranked ones, so recall at the run's full depth stays what
    the first stage found. `doc_texts` maps doc ids to text."""
    out, seconds = {}, []
    for qid, row in run.items():
        docs = ranked(row)
        top, rest = docs[:depth], docs[depth:]
        t0 = time.perf_counter()
        scores = score([queries[qid]] * len(top), [doc_texts[d] for d in top], batch_size)
        seconds.append(time.perf_counter() - t0)
        out[qid] = {d: float(s) for d, s in zip(top, scores)}
        floor = float(scores.min()) if len(top) else 0.0  # one apart below it: the rest keep their order
        out[qid].update((d, floor - 1.0 - i) for i, d in enumerate(rest))
    return out, seconds


def read_trec(path):
    """{query id: {doc id: score}} of a TREC run file (`qid Q0 docid rank score tag`); a line of another
    shape is a ValueError naming the file and the line."""
    run = {}
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    qid, _, doc_id, rank, score, _ = parts
                    int(rank)
                    run.setdefault(qid, {})[doc_id] = float(score)
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: not a TREC run line (qid Q0 docid rank score tag): "
                                     f"{line.strip()[:80]!r}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read a TREC run file ({e})") from None
    if not run:
        raise ValueError(f"{path}: no lines; a TREC run file holds `qid Q0 docid rank score tag` lines")
    return run


def write_trec(path, run, tag):
    """A TREC run file: `qid Q0 docid rank score tag`, best first."""
    with atomic_open(path) as f:
        for qid, row in run.items():
            for rank, doc_id in enumerate(ranked(row), 1):
                f.write(f"{qid} Q0 {doc_id} {rank} {row[doc_id]:.6f} {tag}\n")
