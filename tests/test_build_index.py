import json
import os

import numpy as np
import pytest

import build_index
import evaluate
from common import index as faiss_index
from common.config import ConfigError
from common.retrievers import Retriever
from common.run import UserError
from conftest import build_tiny_model


def clustered(n, dim=16, clusters=40, seed=0):
    """Unit vectors around a few centres: structure an ANN index can use (uniform noise has none)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_resolve_factory_fills_nlist_from_the_corpus_size():
    assert faiss_index.resolve_factory("auto", 5_000) == "Flat"
    assert faiss_index.resolve_factory("auto", 1_000_000) == "IVF4000,Flat"
    assert faiss_index.resolve_factory("IVF,PQ32", 10_000) == "IVF256,PQ32"  # 10k / 39 caps 4 sqrt(10k) = 400
    assert faiss_index.resolve_factory("OPQ16,IVF,PQ16", 1_000_000) == "OPQ16,IVF4000,PQ16"
    assert faiss_index.resolve_factory("IVF100,SQ8", 10_000) == "IVF100,SQ8"  # a given count is kept
    assert faiss_index.resolve_factory("HNSW32", 10) == "HNSW32"


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,SQ8", "HNSW16"])
def test_tuning_reaches_the_target_recall_with_less_than_exhaustive_search(factory):
    docs, queries = clustered(6000), clustered(200, seed=1)
    index, info = faiss_index.build(docs, factory, seed=0)
    assert index.ntotal == 6000 and info["device"] == "cpu"
    exact = faiss_index.search(faiss_index.flat_ip(docs), queries, 10)[1]
    tried = faiss_index.tune(index, queries, exact, target=0.95)
    values, recalls = zip(*tried)
    assert recalls[-1] >= 0.95 and list(values) == sorted(values)
    assert all(r < 0.95 for r in recalls[:-1])  # the smallest value that reaches it
    if factory.startswith("IVF"):
        assert values[-1] < 64  # fewer lists than all of them: an approximate search that is worth having
        assert recalls[0] < 0.95  # nprobe 1 misses: the tuning had something to do
    # The chosen value is what the index now searches with.
    assert faiss_index.recall_at(faiss_index.search(index, queries, 10)[1], exact, 10) == pytest.approx(recalls[-1])


def test_recall_at_counts_the_overlap_with_exact_search():
    assert faiss_index.recall_at([[1, 2, 3]], [[3, 2, 9]], 3) == pytest.approx(2 / 3)
    assert faiss_index.recall_at([[1, 2], [5, 6]], [[1, 2], [7, 8]], 2) == pytest.approx(0.5)


def test_a_bad_factory_string_is_one_clear_error():
    with pytest.raises(UserError, match="not a FAISS index_factory string"):
        faiss_index.build(clustered(100), "IVF,Nonsense")
    with pytest.raises(UserError, match="training vectors for 64 lists"):
        faiss_index.build(clustered(50), "IVF64,Flat")


@pytest.fixture
def built(tiny_model, toy_beir, tmp_path):
    """A dense-only index (tests/test_hybrid.py has the hybrid ones)."""
    out = tmp_path / "index"
    assert build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={out}", "--split=test",
                             "--hybrid=false"]) == 0
    return str(out)


def test_build_index_writes_a_directory_search_loads_in_one_line(built, tiny_model, toy_beir):
    files = set(os.listdir(built))
    assert {"index.faiss", "doc_ids.txt", "index.json", "embeddings.npy", "metrics.json", "config.json",
            "command.txt"} <= files
    meta = json.load(open(os.path.join(built, "index.json")))
    assert meta["factory"] == "Flat" and meta["ntotal"] == 6 and meta["model"] == os.path.abspath(tiny_model)
    metrics = json.load(open(os.path.join(built, "metrics.json")))
    assert metrics["report"]["queries"] == 6 and metrics["report"]["recall@10"] == 1.0

    indexed = Retriever.load("", toy_beir, index_dir=built)  # the encoder comes from index.json
    exact = Retriever.load(tiny_model, toy_beir)
    for got, want in zip(indexed.batch_retrieve(["merge sort", "tcp bytes"], 6),
                         exact.batch_retrieve(["merge sort", "tcp bytes"], 6)):
        assert [d for d, _ in got] == [d for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def test_evaluate_with_index_matches_exact_search(built, tiny_model, toy_beir, tmp_path):
    evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", "--retrievers=dense", f"--out={tmp_path}/exact"])
    evaluate.main([f"--data={toy_beir}", f"--index={built}", "--retrievers=dense", f"--out={tmp_path}/indexed"])
    exact = json.load(open(tmp_path / "exact" / "metrics.json"))["results"]["dense"]
    indexed = json.load(open(tmp_path / "indexed" / "metrics.json"))["results"]["dense"]
    assert indexed["index"] == built and indexed["model"] == os.path.abspath(tiny_model)
    for metric, value in exact["metrics"].items():
        assert indexed["metrics"][metric] == pytest.approx(value, abs=1e-6), metric


def test_an_index_refuses_another_encoder_and_a_missing_id_map(built, toy_beir, tmp_path):
    doc_ids = list(Retriever.load("", toy_beir, index_dir=built).doc_ids)
    other = build_tiny_model(tmp_path / "other", seed=1)  # same dimension, other weights
    with pytest.raises(UserError, match="embeds differently .*--model="):
        Retriever.load(other, toy_beir, index_dir=built)
    wider = build_tiny_model(tmp_path / "wider", hidden=48)
    with pytest.raises(UserError, match="48-d ones; rebuild the index"):
        Retriever.load(wider, toy_beir, index_dir=built)
    os.remove(os.path.join(built, "doc_ids.txt"))
    with pytest.raises(UserError, match="doc_ids.txt: missing"):
        faiss_index.load(built, doc_ids)
    with pytest.raises(UserError, match="no index directory"):
        faiss_index.load(str(tmp_path / "nowhere"), doc_ids)


def test_a_failed_rebuild_keeps_the_previous_index(built, tiny_model, toy_beir):
    before = {f: os.path.getmtime(os.path.join(built, f)) for f in os.listdir(built)}
    with pytest.raises(UserError, match="not a FAISS index_factory"):
        build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={built}", "--factory=IVF,Bogus"])
    assert {f: os.path.getmtime(os.path.join(built, f)) for f in os.listdir(built)} == before
    assert not [f for f in os.listdir(os.path.dirname(built)) if f.startswith(".index.")]  # no temporary left


def test_rebuilding_from_saved_embeddings_skips_encoding(built, tiny_model, toy_beir, tmp_path):
    emb = os.path.join(built, "embeddings.npy")
    out = tmp_path / "hnsw"
    assert build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--embeddings={emb}",
                             "--factory=HNSW8", f"--out={out}", "--keep_embeddings=false"]) == 0
    metrics = json.load(open(out / "metrics.json"))
    assert "encode_seconds" not in metrics and metrics["ef_search"] >= 10
    assert json.load(open(out / "index.json"))["ef_search"] == metrics["ef_search"]
    np.save(tmp_path / "short.npy", np.zeros((3, 32), np.float32))
    with pytest.raises(UserError, match=r"shape \(3, 32\), but the corpus has 6 docs"):
        build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--embeddings={tmp_path}/short.npy",
                          f"--out={tmp_path}/bad"])
    assert not os.path.exists(tmp_path / "bad")


def test_saved_search_settings_come_back_at_load(tmp_path):
    docs = clustered(3000)
    index, _ = faiss_index.build(docs, "IVF32,Flat")
    faiss_index.set_search_params(index, nprobe=5)
    faiss_index.save(str(tmp_path), index, [str(i) for i in range(3000)], {"factory": "IVF32,Flat"})
    loaded = faiss_index.load(str(tmp_path), [str(i) for i in range(3000)], use_gpu=False)
    assert faiss_index.search_params(loaded) == {"nprobe": 5}


def test_config_errors_come_before_any_work(toy_beir, tmp_path):
    with pytest.raises(ConfigError, match="backend"):
        build_index.main([f"--data={toy_beir}", "--backend=tensorrt", f"--out={tmp_path}/x"])
    with pytest.raises(ConfigError, match="no GPU"):
        build_index.main([f"--data={toy_beir}", "--faiss_gpu=yes", f"--out={tmp_path}/x"])
    assert not os.path.exists(tmp_path / "x")


def test_the_onnx_backend_builds_evaluates_and_searches_without_torch(tiny_model, toy_beir, tmp_path):
    """export_onnx.py, then build_index.py, evaluate.py and search.py with --backend=onnx in one child
    process that must never import torch; the metrics equal the torch backend's."""
    import subprocess
    import sys

    import export_onnx

    from common.models import CrossEncoder

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    export_onnx.main([f"--model={tiny_model}", f"--out={tmp_path}/onnx", f"--data={toy_beir}"])
    cross = CrossEncoder.from_pretrained(tiny_model, max_length=64).save(str(tmp_path / "cross"))
    export_onnx.main([f"--model={cross}", "--kind=reranker", f"--out={tmp_path}/onnx-cross", f"--data={toy_beir}"])
    evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", "--retrievers=dense", f"--out={tmp_path}/torch"])
    child = f"""
import sys, build_index, evaluate, search
build_index.main(["--data={toy_beir}", "--backend=onnx", "--model={tmp_path}/onnx", "--out={tmp_path}/index"])
evaluate.main(["--data={toy_beir}", "--index={tmp_path}/index", "--out={tmp_path}/eval"])
evaluate.main(["--data={toy_beir}", "--backend=onnx", "--retrievers=bm25", "--rerank={tmp_path}/onnx-cross",
               "--rerank_max_length=32", "--out={tmp_path}/rerank"])
search.main(["--data={toy_beir}", "--index={tmp_path}/index", "--query=merge sort", "--k=2"])
assert "torch" not in sys.modules, "torch was imported"
"""
    proc = subprocess.run([sys.executable, "-c", child], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("\n1\t") == 1 and "# merge sort" in proc.stdout
    onnx_results = json.load(open(tmp_path / "eval" / "metrics.json"))["results"]
    onnx_result = onnx_results["dense"]
    # the index's hybrid (BM25 loaded from it, the weight it saved) served without torch
    assert onnx_results["hybrid"]["hybrid"]["weight"] > 0 and onnx_results["bm25"]["bm25"].startswith("saved with")
    torch_result = json.load(open(tmp_path / "torch" / "metrics.json"))["results"]["dense"]
    assert onnx_result["backend"] == "onnx" and onnx_result["model"] == f"{tmp_path}/onnx"
    for metric, value in torch_result["metrics"].items():
        assert onnx_result["metrics"][metric] == pytest.approx(value, abs=1e-6), metric
    reranked = json.load(open(tmp_path / "rerank" / "metrics.json"))["results"]["bm25+rerank"]
    assert reranked["max_length"] == 32  # rerank_max_length reaches the ONNX reranker too

    # The index's encoder runs on ONNX while the reranker given beside it stays a torch model.
    retriever = Retriever.load("", toy_beir, index_dir=f"{tmp_path}/index", reranker=cross)
    assert type(retriever.encoder).__name__ == "OnnxBiEncoder" and isinstance(retriever.reranker, CrossEncoder)
    assert len(retriever.retrieve_and_rerank("merge sort", k_retrieve=4, k_rerank=2)) == 2


def test_an_index_that_cannot_fit_in_memory_is_one_error_before_any_work(toy_beir, tiny_model, tmp_path, monkeypatch):
    """Flat vectors of 10M documents at 384 dimensions (15 GB) do not fit in 8 GB free: the error names the
    memory and a factory that fits; a corpus too large on its own says so; the run directory is never made."""
    gb = 2**30
    monkeypatch.setattr(faiss_index, "memory_available", lambda: 8 * gb)
    monkeypatch.setattr(faiss_index, "resident_bytes", lambda: 0)  # this test process's own share
    assert faiss_index.check_fits("IVF,PQ48", 10_000_000, 384, 100 * 2**20, "c") is None
    with pytest.raises(UserError, match=r"10,000,000 documents need about .* GB .* 8.0 GB is free; "
                                         r"--factory=IVF,PQ64 holds them in 0.7 GB"):
        faiss_index.check_fits("IVF,Flat", 10_000_000, 384, 100 * 2**20, "c")
    with pytest.raises(UserError, match="the corpus alone needs more"):
        faiss_index.check_fits("Flat", 1000, 384, 2 * gb, "c")
    # what the process holds already (the corpus it read) is part of the need, so it counts as free
    monkeypatch.setattr(faiss_index, "resident_bytes", lambda: 5 * gb)
    assert faiss_index.check_fits("Flat", 1000, 384, 2 * gb, "c") is None
    monkeypatch.setattr(faiss_index, "resident_bytes", lambda: 0)
    monkeypatch.setattr(faiss_index, "memory_available", lambda: 1000)
    out = tmp_path / "index"
    with pytest.raises(UserError, match="corpus.jsonl: 6 documents need about"):
        build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={out}"])
    assert not out.exists()
