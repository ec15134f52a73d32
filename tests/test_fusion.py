"""common/fusion.py and where it is served: the first stage's score and the reranker's, mixed as val chose."""
import json
import shutil

import numpy as np
import pytest

import evaluate
from common import decision, fusion
from common.data import doc_text, load_beir
from common.metrics import evaluate_run, ranked
from common.models import BiEncoder, CrossEncoder
from common.retrievers import Retriever, first_stage_run


def runs(n_queries=20, n_docs=30, seed=0):
    """A first-stage run and reranker scores over every query's candidates, with qrels where the
    reranker is informative for some queries and wrong for others."""
    rng = np.random.default_rng(seed)
    first, rerank, qrels = {}, {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        first[qid] = {f"d{d}": float(s) for d, s in enumerate(rng.normal(size=n_docs))}
        relevant = f"d{rng.integers(n_docs)}"
        qrels[qid] = {relevant: 1}
        rerank[qid] = {d: float(rng.normal()) + (3.0 if (d == relevant) == (q % 3 != 0) else 0.0) for d in first[qid]}
    return first, rerank, qrels


def test_weight_zero_is_the_first_stage_exactly():
    first, rerank, _ = runs()
    assert fusion.fuse(first, rerank, 0.0, 10) is first


def test_weight_one_is_the_reranker_alone_over_the_depth_and_the_rest_keeps_its_order():
    first, rerank, _ = runs()
    fused = fusion.fuse(first, rerank, 1.0, 10)
    for qid, row in first.items():
        docs = ranked(row)
        top = sorted(docs[:10], key=lambda d: -rerank[qid][d])
        assert ranked(fused[qid]) == top + docs[10:]
        assert [fused[qid][d] for d in top] == [rerank[qid][d] for d in top]  # the reranker's own scores


def test_a_mix_lies_between_and_depth_limits_what_moves():
    first, rerank, _ = runs()
    fused = fusion.fuse(first, rerank, 0.5, 5)
    for qid, row in first.items():
        docs = ranked(row)
        assert set(ranked(fused[qid])[:5]) == set(docs[:5]) and ranked(fused[qid])[5:] == docs[5:]
        assert all(0 <= fused[qid][d] <= 1 for d in docs[:5])


def test_choose_picks_the_best_on_val_and_weight_zero_when_the_reranker_only_hurts():
    first, rerank, qrels = runs(n_queries=300)
    choice, grid = decision.rerank(qrels, first, rerank, depths=[5, 10, 20])
    served = evaluate_run(qrels, fusion.fuse(first, rerank, choice["weight"], choice["depth"]))[0]["ndcg@10"]
    assert choice["weight"] > 0 and served == pytest.approx(grid[f"{choice['weight']:g},{choice['depth']}"])
    # served: the mix whose val gain less two standard errors is largest (select), a gain beyond noise
    assert choice["gain"] - decision.RERANK_Z * choice["stderr"] > 0
    assert served == pytest.approx(evaluate_run(qrels, first)[0]["ndcg@10"] + choice["gain"])
    # a reranker that is noise: some mix of it beats the first stage on these queries by luck, and is refused
    noise = {q: {d: float(s) for d, s in zip(row, np.random.default_rng(7).normal(size=len(row)))}
             for q, row in first.items()}
    choice, grid = decision.rerank(qrels, first, noise, depths=[5, 10, 20])
    assert max(grid.values()) > grid["0,5"] and choice["weight"] == 0.0 and choice["gain"] > 0
    assert "within noise" in decision.describe_rerank(choice)
    # a reranker that scores every relevant document lowest: val keeps the first stage, at the cheapest depth
    adverse = {q: {d: (-10.0 if d in qrels[q] else 0.0) for d in row} for q, row in first.items()}
    choice, _ = decision.rerank(qrels, first, adverse, depths=[5, 10, 20])
    assert (choice["weight"], choice["depth"]) == (0.0, 5)
    assert decision.describe_rerank(choice).startswith("fusion weight 0: the reranker does not help this first stage")


def test_saved_fusion_loads_with_the_reranker_and_defaults_to_the_reranker_alone(tiny_model, tmp_path):
    cross_dir = CrossEncoder.from_pretrained(tiny_model).save(str(tmp_path / "ce"))
    assert CrossEncoder.from_pretrained(cross_dir).fusion == fusion.RERANK_ONLY
    fusion.save(cross_dir, {"weight": 0.3, "depth": 20, "grid": {}})
    loaded = CrossEncoder.from_pretrained(cross_dir).fusion
    assert (loaded["weight"], loaded["depth"]) == (0.3, 20)


@pytest.fixture
def weight_zero_reranker(tiny_model, tmp_path):
    path = CrossEncoder.from_pretrained(tiny_model).save(str(tmp_path / "ce0"))
    fusion.save(path, {"weight": 0.0, "depth": 4})
    return path


def test_retriever_serves_the_first_stage_alone_at_weight_zero(tiny_model, toy_beir, weight_zero_reranker,
                                                               monkeypatch):
    retriever = Retriever.load(tiny_model, toy_beir, reranker=weight_zero_reranker)
    monkeypatch.setattr(retriever.reranker, "score", lambda *a, **k: pytest.fail("weight 0 must not run the reranker"))
    for query in ("merge sort", "parse a date", "tcp"):
        assert retriever.retrieve_and_rerank(query, k_rerank=3) == retriever.retrieve(query, 3)


def test_retriever_mixes_as_the_saved_fusion_says(tiny_model, toy_beir, tmp_path, fp32_cpu):
    path = CrossEncoder.from_pretrained(tiny_model).save(str(tmp_path / "ce"))
    fusion.save(path, {"weight": 0.5, "depth": 4})
    retriever = Retriever.load(tiny_model, toy_beir, reranker=path)
    query = "merge sort"
    hits = retriever.retrieve(query, 6)
    scores = retriever.reranker.score([query] * 4, [retriever.text(d) for d, _ in hits[:4]])
    want = fusion.fuse({"q": dict(hits)}, {"q": {d: float(s) for (d, _), s in zip(hits, scores)}}, 0.5, 4)["q"]
    got = retriever.retrieve_and_rerank(query, k_rerank=6)
    assert [d for d, _ in got] == ranked(want)
    np.testing.assert_allclose([s for _, s in got], [want[d] for d in ranked(want)], atol=1e-6)


def test_evaluate_reports_first_stage_rerank_and_fused_with_the_saved_fusion(toy_beir, tiny_model, tmp_path,
                                                                            weight_zero_reranker):
    out = tmp_path / "run"
    assert evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", "--retrievers=dense",
                          f"--rerank={weight_zero_reranker}", "--k=6", f"--out={out}"]) == 0
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert list(results) == ["dense", "dense+rerank", "dense+fused"]
    assert results["dense+fused"]["fusion"] == {"weight": 0.0, "depth": 4} and results["dense+rerank"]["rerank_depth"] == 4
    assert (out / "dense+fused.trec").read_text().replace("dense+fused", "dense") == (out / "dense.trec").read_text()
    assert results["dense+fused"]["metrics"] == results["dense"]["metrics"]
    # another weight on the command line wins over the saved one
    assert evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", "--retrievers=dense", "--fusion_weight=1",
                          f"--rerank={weight_zero_reranker}", "--k=6", f"--out={tmp_path / 'raw'}"]) == 0
    assert list(json.loads((tmp_path / "raw" / "metrics.json").read_text())["results"]) == ["dense", "dense+rerank"]


def test_first_stage_run_through_an_index_equals_exact_search(toy_beir, tiny_model, tmp_path):
    import build_index

    assert build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={tmp_path / 'index'}",
                             "--hybrid=false"]) == 0
    corpus, queries, _ = load_beir(toy_beir, "test")
    through_index = first_stage_run(str(tmp_path / "index"), toy_beir, corpus, queries, 4)
    exact = first_stage_run(tiny_model, toy_beir, corpus, queries, 4)
    assert through_index.keys() == exact.keys()
    for qid in exact:
        assert ranked(through_index[qid]) == ranked(exact[qid])
    bm25 = first_stage_run("bm25", toy_beir, corpus, queries, 3)
    assert all(len(row) == 3 for row in bm25.values())
    encoder = BiEncoder.from_pretrained(tiny_model)
    q_emb = encoder.encode([queries["q1"]], "query")[0]
    d_emb = encoder.encode([doc_text(corpus[d]) for d in exact["q1"]], "passage")
    np.testing.assert_allclose(list(exact["q1"].values()), d_emb @ q_emb, atol=1e-5)
    shutil.rmtree(tmp_path / "index")


def test_one_val_query_chooses_nothing_and_the_hybrid_takes_the_default():
    """One query has no standard error: no mix is beyond noise on it, and the hybrid serves the weight
    measured across datasets, saying why."""
    qrels = {"q": {"a": 1}}
    dense = {"q": {"b": 0.9, "a": 0.1}}
    bm25 = {"q": {"a": 9.0, "b": 1.0}}
    assert decision.select(qrels, dense, {"mix": bm25}, z=1.0)[0] is None
    choice = decision.hybrid(qrels, dense, bm25)
    assert choice["weight"] == decision.NO_VAL["weight"] and choice["one_query"]
    assert "one val query tells no weight from another" in decision.describe_hybrid(choice)
