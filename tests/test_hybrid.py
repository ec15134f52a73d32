"""The hybrid first stage: BM25 and dense mixed (common/fusion.py), saved with an index (build_index.py)
and served the same way by Retriever, evaluate.py --index, search.py and the ONNX backend."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import build_index
import evaluate
import search
from common import decision, fusion
from common.data import doc_text, load_beir, read_corpus
from common.metrics import ranked
from common.retrievers import BM25, Retriever
from common.run import UserError
from conftest import write_beir_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_runs(n_queries=30, n_docs=40, seed=0):
    """Dense and BM25 top-20 lists that overlap in part; BM25 matches nothing for the last query."""
    rng = np.random.default_rng(seed)
    dense, bm25 = {}, {}
    for q in range(n_queries):
        docs = [f"d{i}" for i in rng.permutation(n_docs)]
        dense[f"q{q}"] = {d: float(s) for d, s in zip(docs[:20], np.sort(rng.uniform(0.2, 0.9, 20))[::-1])}
        bm25[f"q{q}"] = {d: float(s) for d, s in zip(docs[10:30], np.sort(rng.uniform(1, 15, 20))[::-1])}
    bm25[f"q{n_queries - 1}"] = {d: 0.0 for d in list(bm25[f"q{n_queries - 1}"])[:5]}  # matched no word
    return dense, bm25


def convex(w):
    return {"method": "convex", "weight": w}


def test_weight_zero_is_the_dense_run_exactly_and_one_is_bm25s_order_exactly():
    dense, bm25 = random_runs()
    assert fusion.hybrid(dense, bm25, convex(0.0)) == dense
    at_one = fusion.hybrid(dense, bm25, convex(1.0))
    for qid in list(dense)[:-1]:
        assert at_one[qid] is bm25[qid] and list(at_one[qid]) == list(bm25[qid])
    for w in (0.0, 0.3, 1.0):  # BM25 matched no word of the last query: its dense list alone
        assert fusion.hybrid(dense, bm25, convex(w))["q29"] is dense["q29"]
    assert fusion.hybrid(dense, bm25, {"method": "rrf"})["q29"] is dense["q29"]


def test_documents_in_one_list_only_get_that_lists_floor():
    dense = {"q": {"a": 0.9, "b": 0.5, "c": 0.1}}
    bm25 = {"q": {"b": 10.0, "d": 6.0, "e": 2.0}}
    mixed = fusion.hybrid(dense, bm25, convex(0.5))["q"]
    # min-max over each list: dense a 1, b 0.5, c 0; BM25 b 1, d 0.5, e 0; a missing doc gets 0
    assert mixed == pytest.approx({"a": 0.5, "b": 0.75, "c": 0.0, "d": 0.25, "e": 0.0})
    assert ranked(mixed)[:3] == ["b", "a", "d"]
    assert list(fusion.hybrid(dense, bm25, convex(0.5), depth=2)["q"]) == ["b", "a"]
    rrf = fusion.hybrid(dense, bm25, {"method": "rrf", "rrf_k": 1})["q"]
    assert rrf == pytest.approx({"a": 1 / 2, "b": 1 / 3 + 1 / 2, "c": 1 / 4, "d": 1 / 3, "e": 1 / 4})


def test_a_mix_chosen_on_val_beats_dense_or_is_not_served():
    """BM25 that finds what dense misses is mixed in; BM25 that is noise is refused (dense alone), however
    well some weight of it happens to do on these queries."""
    rng = np.random.default_rng(1)
    qrels, dense, good, noise = {}, {}, {}, {}
    for q in range(200):
        docs = [f"d{i}" for i in rng.permutation(60)]
        relevant = docs[int(rng.integers(0, 30))]
        qrels[f"q{q}"] = {relevant: 1}
        dense[f"q{q}"] = {d: float(s) for d, s in zip(docs[:40], np.sort(rng.uniform(0, 1, 40))[::-1])}
        lexical = [relevant] + [d for d in docs if d != relevant][:30] if q % 2 else docs[5:36]
        good[f"q{q}"] = {d: 10.0 - 0.2 * i for i, d in enumerate(lexical)}
        noise[f"q{q}"] = {d: float(s) for d, s in zip(rng.permutation(docs)[:30], rng.uniform(1, 10, 30))}
    choice = decision.hybrid(qrels, dense, good)
    assert fusion.uses_bm25(choice) and choice["val"]["served"] > choice["val"]["dense"] + 2 * choice["stderr"]
    assert choice["queries"] == 200 and set(choice["grid"]) >= {"0.5", "1", "rrf"}
    refused = decision.hybrid(qrels, dense, noise)
    assert refused["weight"] == 0 and refused.get("method") == "convex"
    assert refused["val"]["served"] == refused["val"]["dense"]
    assert decision.describe_hybrid(refused).startswith("dense alone: chosen on val (200 queries")


def test_bm25_saved_and_loaded_scores_the_same_and_knows_its_corpus(toy_beir, tmp_path):
    corpus_file = os.path.join(toy_beir, "corpus.jsonl")
    corpus = read_corpus(corpus_file)
    built = BM25(list(corpus), [doc_text(d) for d in corpus.values()], k1=0.9, b=0.6)
    built.save(str(tmp_path), corpus_file)
    loaded = BM25.load(str(tmp_path), list(corpus), corpus_file)
    assert (loaded.k1, loaded.b) == (0.9, 0.6)
    for query in ("merge sort of a list", "tcp network bytes", "nothing matches this zzz"):
        np.testing.assert_array_equal(loaded.scores(query), built.scores(query))
        assert loaded.search(query, 6) == built.search(query, 6)
    other = write_beir_dir(tmp_path / "other", {d: ("", "other text " + d) for d in corpus}, {"q": "x"},
                           {"test": [("q", "d1", 1)]})
    with pytest.raises(UserError) as e:
        BM25.load(str(tmp_path), list(corpus), os.path.join(other, "corpus.jsonl"))
    assert f"built over {os.path.abspath(corpus_file)}, not over this corpus " \
           f"{os.path.abspath(os.path.join(other, 'corpus.jsonl'))}" in str(e.value)
    meta = json.loads((tmp_path / "bm25.json").read_text())
    (tmp_path / "bm25.json").write_text(json.dumps({**meta, "tokenizer": "older"}))
    with pytest.raises(UserError, match="another version of bm25_tokenize"):
        BM25.load(str(tmp_path), list(corpus), corpus_file)


@pytest.fixture(scope="module")
def hybrid_index(tiny_model, train_beir, tmp_path_factory):
    """train_beir (queries are two words of their doc: BM25 finds them, the tiny random model does not)
    indexed with the hybrid val chooses."""
    out = tmp_path_factory.mktemp("hybrid") / "index"
    assert build_index.main([f"--data={train_beir}", f"--model={tiny_model}", f"--out={out}"]) == 0
    return str(out)


def test_build_index_saves_bm25_and_the_mix_val_chose(hybrid_index, train_beir):
    assert {"bm25.npz", "bm25.json", "fusion.json", "index.faiss", "embeddings.npy"} <= set(os.listdir(hybrid_index))
    saved = fusion.load(hybrid_index, fusion.DENSE_ONLY)
    assert fusion.uses_bm25(saved) and saved["queries"] == 8  # the val split's queries
    assert saved["val"]["served"] > saved["val"]["dense"]
    assert json.load(open(os.path.join(hybrid_index, "metrics.json")))["hybrid"]["weight"] == saved["weight"]


def test_every_way_of_serving_an_index_serves_its_hybrid(hybrid_index, train_beir, tmp_path, capsys):
    """Retriever, evaluate.py --index and search.py return the same ranking, which is the saved mix of
    the index's dense and BM25 lists."""
    saved = fusion.load(hybrid_index, fusion.DENSE_ONLY)
    corpus, queries, _ = load_beir(train_beir, "test")
    retriever = Retriever.load("", train_beir, index_dir=hybrid_index)
    assert retriever.hybrid["weight"] == saved["weight"] and retriever.bm25 is not None
    texts = list(queries.values())
    served = retriever.batch_retrieve(texts, 10)
    # the same mix by hand, from the two lists the index holds
    dense_only = Retriever(retriever.encoder, retriever.doc_ids, retriever.texts, index=retriever.index)
    dense = dict(enumerate(dict(hits) for hits in dense_only.batch_retrieve(texts, 100)))
    bm25 = dict(enumerate(dict(hits) for hits in retriever.bm25.search_many(texts, 100)))
    by_hand = fusion.hybrid(dense, bm25, saved, 10)
    for i, hits in enumerate(served):
        assert [d for d, _ in hits] == ranked(by_hand[i])
    assert [d for d, _ in served[0]] != [d for d, _ in dense_only.batch_retrieve(texts[:1], 10)[0]]  # BM25 mattered

    assert evaluate.main([f"--data={train_beir}", f"--index={hybrid_index}", "--retrievers=hybrid", "--k=10",
                          "--ignore_identical_ids=false", f"--out={tmp_path}/eval"]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]["hybrid"]
    assert result["hybrid"]["weight"] == saved["weight"] and "saved with" in capsys.readouterr().out
    trec = {}
    for line in (tmp_path / "eval" / "hybrid.trec").read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        trec.setdefault(qid, []).append(doc)
    for qid, hits in zip(queries, served):
        assert trec[qid] == [d for d, _ in hits]

    assert search.main([f"--data={train_beir}", f"--index={hybrid_index}", f"--query={texts[0]}", "--k=5",
                        "--snippet=0"]) == 0
    printed = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert printed == [d for d, _ in served[0][:5]]


def test_the_onnx_backend_serves_the_same_hybrid_without_torch(hybrid_index, tiny_model, train_beir, tmp_path):
    """The index (built with torch) served through an ONNX export of its encoder, in a process that never
    imports torch: the same mix, the same ranking as the torch Retriever's."""
    import export_onnx

    export_onnx.main([f"--model={tiny_model}", f"--out={tmp_path}/onnx", f"--data={train_beir}"])
    _, queries, _ = load_beir(train_beir, "test")
    texts = list(queries.values())
    torch_served = Retriever.load("", train_beir, index_dir=hybrid_index).batch_retrieve(texts, 10)
    want = [[d for d, _ in hits] for hits in torch_served]
    child = f"""
import json, sys
from common.retrievers import Retriever
r = Retriever.load("{tmp_path}/onnx", "{train_beir}", index_dir="{hybrid_index}", backend="onnx")
hits = r.batch_retrieve({texts!r}, 10)
assert "torch" not in sys.modules, "torch was imported"
print(json.dumps({{"weight": r.hybrid["weight"], "hits": [[d for d, _ in h] for h in hits]}}))
"""
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["weight"] == fusion.load(hybrid_index, fusion.DENSE_ONLY)["weight"] > 0
    assert got["hits"] == want


def test_a_query_bm25_matches_no_word_of_gets_the_dense_list(hybrid_index, train_beir):
    retriever = Retriever.load("", train_beir, index_dir=hybrid_index)
    dense_only = Retriever(retriever.encoder, retriever.doc_ids, retriever.texts, index=retriever.index)
    for query in ("the of and which", "qqqqzz xxyyww"):  # stopwords only; words no document has
        assert retriever.bm25.search(query, 3)[0][1] == 0
        assert [d for d, _ in retriever.retrieve(query, 5)] == [d for d, _ in dense_only.retrieve(query, 5)]


def test_without_val_the_default_weight_is_served_and_said(toy_beir, tiny_model, tmp_path, capsys):
    assert build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={tmp_path}/index"]) == 0
    saved = fusion.load(str(tmp_path / "index"), fusion.DENSE_ONLY)
    assert (saved["method"], saved["weight"]) == ("convex", decision.NO_VAL["weight"])
    err = capsys.readouterr().err
    assert "no val split" in err and f"BM25 weight {decision.NO_VAL['weight']:g} (the default: no val" in err
    assert build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", "--hybrid=false",
                             f"--out={tmp_path}/dense"]) == 0
    assert "bm25.json" not in os.listdir(tmp_path / "dense")
    assert fusion.load(str(tmp_path / "dense"), fusion.DENSE_ONLY)["weight"] == 0


def test_the_baseline_is_indexed_unless_the_model_beats_it_beyond_noise(train_beir, tiny_model, tmp_path, capsys):
    from conftest import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=7)
    args = [f"--data={train_beir}", f"--model={other}", f"--baseline={tiny_model}", "--hybrid_weight=0"]
    assert build_index.main(args + [f"--out={tmp_path}/index"]) == 0
    saved = fusion.load(str(tmp_path / "index"), fusion.DENSE_ONLY)
    assert {os.path.basename(m) for m in saved["candidates"]} == {"other", os.path.basename(tiny_model)}
    report = saved["encoder"]  # common.decision.encoder's, on the served one's record
    beyond = report["gain"] - decision.ENCODER_Z * report["stderr"] > 0 and not report["guard"]["vetoed"]
    served = os.path.basename(json.load(open(tmp_path / "index" / "index.json"))["model"])
    assert served == ("other" if beyond else os.path.basename(tiny_model))
    assert f"encoder served: the {'fine-tuned' if beyond else 'zero-shot'} encoder" in capsys.readouterr().out


def test_settings_that_make_no_sense_fail_before_any_work(toy_beir, tiny_model, tmp_path):
    from common.config import ConfigError

    out = tmp_path / "run"
    for args, message in ((["--retrievers=bm25,dense", "--hybrid_weight=0.3"], "has no hybrid"),
                          (["--retrievers=hybrid", "--hybrid_method=rrf", "--hybrid_weight=0.3"], "drop hybrid_weight"),
                          (["--retrievers=dense,dense"], "at most once"),
                          (["--retrievers=hybrid", "--hybrid_weight=1.5"], "at most 1"),
                          (["--hybrid_method=mean"], "choose one of auto, convex, rrf")):
        with pytest.raises((UserError, ConfigError), match=message):
            evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={out}", *args])
        assert not out.exists()
    with pytest.raises(ConfigError, match="hybrid=false serves dense alone"):
        build_index.main([f"--data={toy_beir}", "--hybrid=false", "--hybrid_weight=0.2", f"--out={out}"])
    proc = subprocess.run([sys.executable, "mine_negatives.py", f"--data={toy_beir}", "--strategy=index"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "pass --index=DIR" in proc.stderr
