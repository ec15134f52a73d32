import random

import pytest

from common.fusion import rrf
from common.metrics import evaluate_run, query_metrics, ranked

pytrec_eval = pytest.importorskip("pytrec_eval")  # test-only oracle (requirements-test.txt)


def random_case(seed, n_queries=60):
    rng = random.Random(seed)
    qrels, run = {}, {}
    for q in range(n_queries):
        docs = [f"d{i}" for i in range(50)]
        qrels[f"q{q}"] = {d: rng.choice([0, 0, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 12))}
        # Integer scores make many ties: the tie-break must match trec_eval's too.
        run[f"q{q}"] = {d: float(rng.randint(0, 8)) + rng.choice([0.0, 0.25]) for d in rng.sample(docs, 30)}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_trec_eval(seed):
    qrels, run = random_case(seed)
    ks = (1, 3, 5, 10, 20)
    _, ours = evaluate_run(qrels, run, ks)
    cut = ",".join(map(str, ks))
    oracle = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"recall.{cut}", f"map_cut.{cut}",
                                                    f"P.{cut}", f"success.{cut}"})
    theirs = oracle.evaluate(run)
    pairs = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut", "precision": "P", "success": "success"}
    checked = 0
    for qid, ref in theirs.items():
        if not any(g >= 1 for g in qrels[qid].values()):
            continue  # our means skip queries with nothing to find; trec_eval reports 0 for them
        for k in ks:
            for name, trec in pairs.items():
                assert ours[qid][f"{name}@{k}"] == pytest.approx(ref[f"{trec}_{k}"], abs=1e-6), (qid, name, k)
                checked += 1
        # MRR@k is trec_eval's recip_rank on the run cut at k.
        for k in ks:
            top = dict(sorted(run[qid].items(), key=lambda x: (x[1], x[0]), reverse=True)[:k])
            rr = pytrec_eval.RelevanceEvaluator({qid: qrels[qid]}, {"recip_rank"}).evaluate({qid: top})[qid]
            assert ours[qid][f"mrr@{k}"] == pytest.approx(rr["recip_rank"], abs=1e-6)
    assert checked > 1000


def test_hand_computed_case():
    m = query_metrics({"a": 2, "b": 1, "c": 0, "z": 1}, {"c": 3.0, "a": 2.0, "b": 1.0}, ks=(1, 3))
    dcg = 2 / 1.5849625007211562 + 1 / 2.0
    idcg = 2 + 1 / 1.5849625007211562 + 1 / 2.0
    assert m["ndcg@3"] == pytest.approx(dcg / idcg)
    assert (m["mrr@1"], m["mrr@3"], m["success@1"]) == (0.0, 0.5, 0.0)
    assert (m["recall@3"], m["precision@3"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_unanswered_query_counts_zero_and_unjudged_queries_are_skipped():
    mean, per_query = evaluate_run({"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}, {"q1": {"a": 1.0}}, ks=(10,))
    assert set(per_query) == {"q1", "q2"} and mean["ndcg@10"] == 0.5


def test_rrf_hand_computed():
    # b and y tie in the first run: trec_eval's order puts y (the larger id) first, so y has rank 2.
    bm25 = {"a": 3.0, "b": 2.0, "y": 2.0, "c": 1.0}
    dense = {"c": 0.9, "a": 0.5, "d": 0.1}
    fused = rrf([bm25, dense], k=10)
    # a: 1/11 + 1/12 = .1742   c: 1/14 + 1/11 = .1623   y: 1/12   b: 1/13   d: 1/13 (d > b by id)
    assert ranked(fused) == ["a", "c", "y", "d", "b"]
    assert fused["a"] == pytest.approx(1 / 11 + 1 / 12) and fused["c"] == pytest.approx(1 / 14 + 1 / 11)
    assert fused["y"] == pytest.approx(1 / 12) and fused["b"] == fused["d"] == pytest.approx(1 / 13)
    assert rrf([{"x": 1.0}, {}], k=10) == {"x": pytest.approx(1 / 11)}  # a doc only one list holds keeps its share
    assert rrf([bm25, dense])["a"] == pytest.approx(1 / 61 + 1 / 62)  # k=60 by default
