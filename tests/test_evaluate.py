import json
import os
import shutil
import subprocess
import sys

import pytest

import evaluate
from common import decision, fusion
from common.data import doc_text, load_beir
from common.models import CrossEncoder
from conftest import write_beir_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bm25_dense_and_hybrid_side_by_side(toy_beir, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={out}", "--k=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["results"]
    assert set(metrics) == {"bm25", "dense", "hybrid"}
    assert metrics["hybrid"]["hybrid"]["weight"] == decision.NO_VAL["weight"]  # toy_beir has no val to choose on
    assert metrics["bm25"]["metrics"]["ndcg@10"] == 1.0  # six distinct topics: BM25 gets every one
    assert 0.0 <= metrics["dense"]["metrics"]["ndcg@10"] <= 1.0
    for r in metrics.values():
        assert r["latency_ms"]["p95"] >= r["latency_ms"]["p50"] > 0 and r["queries"] == 6
    lines = (out / "bm25.trec").read_text().splitlines()
    assert len(lines) == 6 * 4
    qid, q0, doc_id, rank, score, tag = lines[0].split()
    assert (qid, q0, doc_id, rank, tag) == ("q1", "Q0", "d1", "1", "bm25")
    ranks = [int(line.split()[3]) for line in lines if line.startswith("q1 ")]
    assert ranks == [1, 2, 3, 4]
    for name in ("config.json", "command.txt", "dense.per_query.json"):
        assert (out / name).is_file()
    assert "git " in (out / "command.txt").read_text()
    table = capsys.readouterr().out
    assert "ndcg@10" in table and "bm25" in table and "dense" in table and "hybrid" in table


def test_without_latency_the_queries_go_in_batches_to_the_same_results(toy_beir, tiny_model, tmp_path, capsys):
    base = [f"--data={toy_beir}", f"--model={tiny_model}", "--k=4", "--hybrid_weight=0.4"]
    evaluate.main(base + [f"--out={tmp_path}/timed"])
    evaluate.main(base + [f"--out={tmp_path}/batched", "--latency=false"])
    timed, batched = (json.loads((tmp_path / r / "metrics.json").read_text())["results"] for r in ("timed", "batched"))
    for name in ("bm25", "dense", "hybrid"):
        assert "latency_ms" in timed[name] and "latency_ms" not in batched[name]
        for metric, value in timed[name]["metrics"].items():
            assert batched[name]["metrics"][metric] == pytest.approx(value, abs=1e-6), (name, metric)
    capsys.readouterr()
    evaluate.main([f"--compare=a={tmp_path}/timed/metrics.json,b={tmp_path}/batched/metrics.json"])
    assert any(line.startswith("| latency p50 ms |") and line.endswith("| - | - | - |")
               for line in capsys.readouterr().out.splitlines())


def test_dense_embeddings_are_cached(toy_beir, tiny_model, tmp_path):
    args = [f"--data={toy_beir}", f"--model={tiny_model}", "--retrievers=dense"]
    evaluate.main(args + [f"--out={tmp_path}/a"])
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())["results"]["dense"]
    evaluate.main(args + [f"--out={tmp_path}/b"])
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())["results"]["dense"]
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["metrics"] == second["metrics"]


def test_new_weights_in_a_module_directory_miss_the_cache(toy_beir, tiny_model, tmp_path):
    """A Dense module's weights (2_Dense/) are part of the model: changing them must re-encode."""
    import numpy as np

    from common.models import BiEncoder

    encoder = BiEncoder.from_pretrained(tiny_model)
    encoder.rotate(np.eye(encoder.dim, dtype=np.float32))
    model = encoder.save(str(tmp_path / "rotated"))
    args = [f"--data={toy_beir}", f"--model={model}", "--retrievers=dense"]
    evaluate.main(args + [f"--out={tmp_path}/a"])
    encoder.rotate(np.eye(encoder.dim, dtype=np.float32)[::-1].copy())  # the axes reversed, only 2_Dense/ rewritten
    other = encoder.save(str(tmp_path / "reversed"))
    shutil.copy(os.path.join(other, "2_Dense", "model.safetensors"), os.path.join(model, "2_Dense", "model.safetensors"))
    evaluate.main(args + [f"--out={tmp_path}/b"])
    results = [json.loads((tmp_path / r / "metrics.json").read_text())["results"]["dense"] for r in "ab"]
    assert [r["cached"] for r in results] == [False, False]


def test_the_same_weights_under_another_name_share_the_cache(toy_beir, tiny_model, tmp_path):
    """A fine-tuning whose best step on val was step 0 saves its starting weights as best/: its corpus
    vectors are the starting model's, read from the cache, not encoded again."""
    copy = tmp_path / "encoder" / "best"
    shutil.copytree(tiny_model, copy)
    args = ["--retrievers=dense", f"--data={toy_beir}", f"--cache_dir={tmp_path}/.cache"]
    evaluate.main(args + [f"--model={tiny_model}", f"--out={tmp_path}/a"])
    evaluate.main(args + [f"--model={copy}", f"--out={tmp_path}/b"])
    results = [json.loads((tmp_path / r / "metrics.json").read_text())["results"]["dense"] for r in "ab"]
    assert [r["cached"] for r in results] == [False, True] and results[0]["metrics"] == results[1]["metrics"]


def test_query_never_retrieves_a_doc_with_its_own_id(tmp_path):
    data = write_beir_dir(tmp_path / "ids", {"q1": ("", "merge sort"), "d1": ("", "merge sort of lists")},
                          {"q1": "merge sort"}, {"test": [("q1", "d1", 1)]})
    evaluate.main([f"--data={data}", "--retrievers=bm25", f"--out={tmp_path}/r"])
    assert [line.split()[2] for line in (tmp_path / "r" / "bm25.trec").read_text().splitlines()] == ["d1"]
    evaluate.main([f"--data={data}", "--retrievers=bm25", f"--out={tmp_path}/r2", "--ignore_identical_ids=false"])
    assert len((tmp_path / "r2" / "bm25.trec").read_text().splitlines()) == 2


def test_bad_input_is_one_line_and_exit_2(toy_beir, tmp_path):
    proc = subprocess.run([sys.executable, "evaluate.py", f"--data={tmp_path}/missing", "--retrievers=bm25"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "missing: not a directory; --data needs a BEIR directory" in proc.stderr
    proc = subprocess.run([sys.executable, "evaluate.py", f"--data={toy_beir}", f"--model={tmp_path}/nope",
                           f"--out={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "model directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "run")  # failed before writing anything, BM25 included
    proc = subprocess.run([sys.executable, "evaluate.py", "--retrievers=bm25,splade"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "choose one of bm25, dense, hybrid" in proc.stderr


def test_compare_puts_earlier_runs_side_by_side(toy_beir, tiny_model, tmp_path, capsys):
    import pytest

    from common.run import UserError

    evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={tmp_path}/a", "--k=4",
                   "--retrievers=bm25,dense"])
    capsys.readouterr()
    assert evaluate.main([f"--compare=zero-shot={tmp_path}/a/metrics.json", f"--out={tmp_path}/cmp"]) == 0
    table = capsys.readouterr().out
    header, rule, *rows = table.splitlines()
    assert header == "| metric | zero-shot bm25 | zero-shot dense |"
    bm25 = json.loads((tmp_path / "a" / "metrics.json").read_text())["results"]["bm25"]["metrics"]["ndcg@10"]
    assert f"| ndcg@10 | {bm25:.4f} |" in table
    assert (tmp_path / "cmp" / "comparison.md").read_text() == table
    # each column tested against BM25, query by query
    assert "Against **zero-shot bm25**, ndcg@10 per query" in table and "| zero-shot dense | " in table
    with pytest.raises(UserError, match="not a metrics.json"):
        evaluate.main([f"--compare=x={tmp_path}/a/config.json"])


def test_compare_runs_scores_two_run_files_and_names_a_bad_one(toy_beir, tiny_model, tmp_path, capsys):
    import pytest

    from common.run import UserError

    evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={tmp_path}/a", "--k=4",
                   "--retrievers=bm25,dense"])
    capsys.readouterr()
    a, b = tmp_path / "a" / "bm25.trec", tmp_path / "a" / "dense.trec"
    assert evaluate.main([f"--data={toy_beir}", f"--compare_runs=one={a},two={b}", f"--out={tmp_path}/ab"]) == 0
    out = capsys.readouterr().out
    assert "| metric | one | two |" in out and "Against **one**" in out and "# Per query: two against one" in out
    changes = (tmp_path / "ab" / "per_query.md").read_text()
    assert changes in out
    assert ":  |" not in changes  # every relevant document shown has its title or first words
    # the same file twice: every query tied, p = 1
    evaluate.main([f"--data={toy_beir}", f"--compare_runs={a},x={a}"])
    assert "| x | " in (same := capsys.readouterr().out) and "| +0.0000 | 1 | 1 |" in same
    bad = tmp_path / "bad.trec"
    bad.write_text(a.read_text() + "q1 Q0 d1 one 0.5 tag\n")
    lines = len(a.read_text().splitlines()) + 1
    with pytest.raises(UserError, match=f"bad.trec:{lines}: not a TREC run line"):
        evaluate.main([f"--data={toy_beir}", f"--compare_runs={a},{bad}"])
    with pytest.raises(UserError, match="missing.trec: cannot read"):
        evaluate.main([f"--data={toy_beir}", f"--compare_runs={a},{tmp_path}/missing.trec"])
    with pytest.raises(UserError, match="give two"):
        evaluate.main([f"--data={toy_beir}", f"--compare_runs={a}"])


def test_results_csv_gains_a_row_per_run_and_keeps_the_old_ones(toy_beir, tiny_model, tmp_path, capsys):
    import csv

    import pytest

    from common.run import UserError

    evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={tmp_path}/a", "--k=4",
                   "--retrievers=bm25,dense"])
    csv_path = tmp_path / "results.csv"
    base = [f"--compare=zs={tmp_path}/a/metrics.json", f"--results_csv={csv_path}"]
    assert evaluate.main(base) == 0
    assert evaluate.main(base + [f"--hparams={tmp_path}/a/config.json"]) == 0  # new columns: the file is rewritten
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    ndcg = json.loads((tmp_path / "a" / "metrics.json").read_text())["results"]["bm25"]["metrics"]["ndcg@10"]
    assert len(rows) == 2 and all(float(r["zs bm25 ndcg@10"]) == pytest.approx(ndcg, abs=1e-4) for r in rows)
    assert rows[0]["a.k"] == "" and rows[1]["a.k"] == "4" and rows[1]["a.retrievers"] == "bm25,dense"
    with pytest.raises(UserError, match="config.json"):
        evaluate.main(base + [f"--hparams={tmp_path}/nope/config.json"])
    assert len(csv_path.read_text().splitlines()) == 3  # the refused run added nothing
    # `make results`: one line a run, with the served column and its score when one is served
    assert evaluate.main(base + ["--served=zs", f"--data={toy_beir}"]) == 0
    capsys.readouterr()
    assert evaluate.main([f"--results={csv_path}"]) == 0
    header, _, *lines = capsys.readouterr().out.splitlines()
    assert header.startswith("| time | commit | dataset | model | served | test ndcg@10 | wall |") and len(lines) == 3
    assert f"| {os.path.basename(toy_beir)} |" in lines[-1] and f"| zs bm25 | {round(ndcg, 4)} |" in lines[-1]
    assert lines[-1].endswith(" min |")
    with pytest.raises(UserError, match="no results yet"):
        evaluate.main([f"--results={tmp_path}/none.csv"])


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory, tiny_model):
    """The tiny BERT with a fresh (seeded) classification head: scores that are arbitrary but fixed."""
    import torch

    torch.manual_seed(3)
    return CrossEncoder.from_pretrained(tiny_model).save(str(tmp_path_factory.mktemp("tiny-reranker") / "ce"))


def trec_rows(path):
    """{qid: [(doc id, score)] in file order}."""
    rows = {}
    for line in path.read_text().splitlines():
        qid, _, doc_id, _, score, _ = line.split()
        rows.setdefault(qid, []).append((doc_id, float(score)))
    return rows


def test_rerank_orders_the_top_by_the_cross_encoder_and_keeps_the_rest(toy_beir, tiny_reranker, tmp_path, capsys):
    out = tmp_path / "run"
    assert evaluate.main([f"--data={toy_beir}", "--retrievers=bm25", f"--rerank={tiny_reranker}", "--rerank_depth=3",
                          "--rerank_batch_size=2", "--k=5", f"--out={out}"]) == 0
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert list(results) == ["bm25", "bm25+rerank"]
    after = results["bm25+rerank"]
    assert after["queries"] == 6 and after["rerank_depth"] == 3 and after["pairs_per_s"] > 0
    assert after["latency_ms"]["p95"] >= after["latency_ms"]["p50"] > 0
    assert (out / "bm25+rerank.per_query.json").is_file()
    assert "| metric | bm25 | bm25+rerank |" in capsys.readouterr().out.splitlines()
    corpus, queries, _ = load_beir(toy_beir, "test")
    ce = CrossEncoder.from_pretrained(tiny_reranker)
    first, second = trec_rows(out / "bm25.trec"), trec_rows(out / "bm25+rerank.trec")
    moved = 0
    for qid, rows in first.items():
        before = [d for d, _ in rows]
        scores = ce.score([queries[qid]] * 3, [doc_text(corpus[d]) for d in before[:3]], batch_size=2)
        expected = [d for _, d in sorted(zip(scores.tolist(), before[:3]), reverse=True)]
        after_docs = [d for d, _ in second[qid]]
        assert after_docs[:3] == expected
        assert after_docs[3:] == before[3:]  # below the depth: first-stage order, after the reranked ones
        assert [s for _, s in second[qid][:3]] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-5)
        moved += expected != before[:3]
    assert moved  # the cross-encoder did reorder something, so the checks above could fail


def test_hybrid_mixes_bm25_and_dense_searched_once(toy_beir, tiny_model, tmp_path, monkeypatch):
    base = [f"--data={toy_beir}", f"--model={tiny_model}"]
    evaluate.main(base + ["--retrievers=bm25,dense", "--k=6", f"--out={tmp_path}/parts"])  # whole lists: 6 docs
    bm25, dense = ({q: dict(r) for q, r in trec_rows(tmp_path / "parts" / f"{n}.trec").items()} for n in ("bm25", "dense"))
    calls = []
    for fn in ("bm25_searcher", "dense_searcher"):
        real = getattr(evaluate, fn)
        monkeypatch.setattr(evaluate, fn, lambda *a, real=real, fn=fn: calls.append(fn) or real(*a))
    for i, args in enumerate((["--hybrid_method=rrf", "--rrf_k=2"], ["--hybrid_weight=0.5"])):
        assert evaluate.main(base + ["--retrievers=bm25,hybrid,dense", "--k=4", f"--out={tmp_path}/{i}", *args]) == 0
        results = json.loads((tmp_path / str(i) / "metrics.json").read_text())["results"]
        assert list(results) == ["bm25", "hybrid", "dense"]
        expected = fusion.hybrid(dense, bm25, results["hybrid"]["hybrid"])
        for qid, hits in trec_rows(tmp_path / str(i) / "hybrid.trec").items():
            want = sorted(expected[qid].items(), key=lambda item: (item[1], item[0]), reverse=True)[:4]
            assert [d for d, _ in hits] == [d for d, _ in want]
            assert [s for _, s in hits] == pytest.approx([s for _, s in want], abs=1e-4)  # from 6-decimal files
    assert results["hybrid"]["hybrid"]["weight"] == 0.5
    assert sorted(calls) == ["bm25_searcher"] * 2 + ["dense_searcher"] * 2  # once per run, for every column


def test_missing_reranker_fails_before_any_output(toy_beir, tmp_path):
    proc = subprocess.run([sys.executable, "evaluate.py", f"--data={toy_beir}", "--retrievers=bm25",
                           f"--rerank={tmp_path}/no-reranker", f"--out={tmp_path}/run"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"rerank={tmp_path}/no-reranker: model directory" in proc.stderr and "cross-encoder directory" in proc.stderr
    assert not os.path.exists(tmp_path / "run")


def test_under_torchrun_the_ranks_share_the_corpus_encode(toy_beir, tiny_model, tmp_path):
    """Two gloo ranks (torchrun): the run directory and its numbers are one process's; rank 0 alone writes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [f"--data={toy_beir}", f"--model={tiny_model}", "--retrievers=bm25,dense", "--latency=false"]
    assert evaluate.main([*args, f"--out={tmp_path / 'one' / 'run'}"]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "evaluate.py", *args,
           f"--out={tmp_path / 'two' / 'run'}"]
    proc = subprocess.run(cmd, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "corpus encode shared by 2 ranks" in proc.stdout
    one, two = (json.loads((tmp_path / d / "run" / "metrics.json").read_text())["results"] for d in ("one", "two"))
    for name in ("bm25", "dense"):
        assert two[name]["metrics"] == pytest.approx(one[name]["metrics"], abs=1e-6)
    assert sorted(os.listdir(tmp_path / "two")) == [".cache", "run"]
    assert len([f for f in os.listdir(tmp_path / "two" / ".cache") if f.endswith(".npy")]) == 1  # rank 0's


def test_per_query_changes_name_the_documents_of_the_queries_shown(tmp_path):
    """Many queries tied on their gain: the ones shown are the ones whose documents' titles were read."""
    import types

    from common.data import write_beir

    corpus = {f"d{i}": {"title": f"title {i}", "text": f"text {i}"} for i in range(30)}
    queries = {f"q{i}": f"query {i}" for i in range(30)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(30)}
    write_beir(str(tmp_path / "data"), corpus, queries, {"test": qrels})
    before = {q: {"ndcg@10": 0.0} for q in queries}
    after = {q: {"ndcg@10": 1.0} for q in queries}
    runs = [("a", before, {q: {"dx": 1.0} for q in queries}), ("b", after, {q: {f"d{q[1:]}": 1.0} for q in queries})]
    cfg = types.SimpleNamespace(data=str(tmp_path / "data"), per_query_changes=10)
    changes = evaluate.query_changes(cfg, "test", runs)
    assert "30 queries: 30 gained, 0 lost" in changes and changes.count("| - → 1 |") == 10
    assert ":  |" not in changes and "d1: title 1" in changes
