import json
import os
import subprocess
import sys

import evaluate
from conftest import write_beir_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bm25_and_dense_side_by_side(toy_beir, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={out}", "--k=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["results"]
    assert set(metrics) == {"bm25", "dense"}
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
    assert "ndcg@10" in table and "bm25" in table and "dense" in table


def test_dense_embeddings_are_cached(toy_beir, tiny_model, tmp_path):
    args = [f"--data={toy_beir}", f"--model={tiny_model}", "--retrievers=dense"]
    evaluate.main(args + [f"--out={tmp_path}/a"])
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())["results"]["dense"]
    evaluate.main(args + [f"--out={tmp_path}/b"])
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())["results"]["dense"]
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["metrics"] == second["metrics"]


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
    assert "no such split" in proc.stderr
    proc = subprocess.run([sys.executable, "evaluate.py", f"--data={toy_beir}", f"--model={tmp_path}/nope",
                           f"--out={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "model directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "run")  # failed before writing anything, BM25 included
    proc = subprocess.run([sys.executable, "evaluate.py", "--retrievers=bm25,splade"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "choose one of bm25, dense" in proc.stderr


def test_compare_puts_earlier_runs_side_by_side(toy_beir, tiny_model, tmp_path, capsys):
    import pytest

    from common.run import UserError

    evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={tmp_path}/a", "--k=4"])
    capsys.readouterr()
    assert evaluate.main([f"--compare=zero-shot={tmp_path}/a/metrics.json", f"--out={tmp_path}/cmp"]) == 0
    table = capsys.readouterr().out
    header, rule, *rows = table.splitlines()
    assert header == "| metric | zero-shot bm25 | zero-shot dense |"
    bm25 = json.loads((tmp_path / "a" / "metrics.json").read_text())["results"]["bm25"]["metrics"]["ndcg@10"]
    assert f"| ndcg@10 | {bm25:.4f} |" in table
    assert (tmp_path / "cmp" / "comparison.md").read_text() == table
    with pytest.raises(UserError, match="not a metrics.json"):
        evaluate.main([f"--compare=x={tmp_path}/a/config.json"])
