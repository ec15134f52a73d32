"""mine_negatives.py and common.mining: every strategy and filter against a brute-force reference."""
import json
import os

import numpy as np
import pytest
import torch

import mine_negatives
from common import mining
from common.config import ConfigError
from common.data import doc_text, load_beir, read_training_file
from common.models import BiEncoder, CrossEncoder
from common.retrievers import BM25


def mine(data, out, *args):
    return mine_negatives.main([f"--data={data}", f"--out={out}", *args])


def records(out):
    with open(os.path.join(out, "train.jsonl")) as f:
        return [json.loads(line) for line in f]


def stats(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def train_split(train_beir):
    corpus, queries, qrels = load_beir(train_beir, "train")
    return corpus, queries, {q: {d for d, g in row.items() if g >= 1} for q, row in qrels.items()}


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory, tiny_model):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-ce")
    config = BertConfig.from_pretrained(tiny_model, num_labels=1)
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)
    return str(path)


def test_bm25_negatives_are_the_top_unlabelled_documents(train_beir, train_split, tmp_path):
    corpus, queries, positives = train_split
    out = tmp_path / "bm25"
    assert mine(train_beir, out, "--num_negatives=5") == 0
    got = records(out)
    assert {r["qid"] for r in got} == set(queries)
    bm25 = BM25(list(corpus), [doc_text(d) for d in corpus.values()])
    for r in got:
        expected = [(d, s) for d, s in bm25.search(queries[r["qid"]], 100) if d not in positives[r["qid"]]][:5]
        assert [n["id"] for n in r["negatives"]] == [d for d, _ in expected]
        assert [n["score"] for n in r["negatives"]] == pytest.approx([s for _, s in expected], abs=1e-5)
        assert all(n["source"] == "bm25" for n in r["negatives"])
        assert sorted(r["positives"]) == sorted(positives[r["qid"]])
    # the file is what train_encoder.py reads, and the run says how fast it went
    assert len(read_training_file(out / "train.jsonl", corpus)) == len(queries)
    s = stats(out)
    assert s["queries"] == len(queries) and s["negatives_per_query"] == 5
    assert s["queries_per_s"] > 0 and s["peak_rss_mb"] > 0
    assert (out / "config.json").exists() and (out / "command.txt").exists()


def test_rank_window_skips_the_top_and_counts_short_lists(train_beir, tmp_path, capsys):
    out = tmp_path / "window"
    assert mine(train_beir, out, "--skip_top=3", "--max_rank=10", "--num_negatives=20") == 0
    for r in records(out):
        assert all(4 <= n["rank"] <= 10 for n in r["negatives"])
        assert len(r["negatives"]) <= 7
    assert stats(out)["short_queries"] == len(records(out))
    assert "fewer negatives than asked" in capsys.readouterr().err


def test_max_score_ratio_drops_candidates_nearly_as_good_as_the_positive(train_beir, train_split, tmp_path):
    corpus, queries, positives = train_split
    out = tmp_path / "ratio"
    assert mine(train_beir, out, "--max_score_ratio=0.6", "--num_negatives=5") == 0
    bm25 = BM25(list(corpus), [doc_text(d) for d in corpus.values()])
    row = {d: i for i, d in enumerate(corpus)}
    for r in records(out):
        scores = bm25.scores(queries[r["qid"]])
        best = max(scores[row[p]] for p in positives[r["qid"]])
        assert all(n["score"] <= 0.6 * best + 1e-6 for n in r["negatives"])
    assert stats(out)["dropped_over_ratio"] > 0


def test_mix_takes_each_strategy_count_once(train_beir, train_split, tmp_path):
    _, _, positives = train_split
    out = tmp_path / "mix"
    assert mine(train_beir, out, "--strategy=bm25,random", "--num_negatives=3,4") == 0
    for r in records(out):
        ids = [n["id"] for n in r["negatives"]]
        assert [n["source"] for n in r["negatives"]] == ["bm25"] * 3 + ["random"] * 4
        assert len(set(ids)) == 7 and not set(ids) & positives[r["qid"]]


def dense_scores(model, corpus, queries, positives):
    """Exact (query x doc) cosine scores and each query's best positive score, computed directly."""
    enc = BiEncoder.from_pretrained(model)
    doc_ids = list(corpus)
    d = enc.encode([doc_text(corpus[i]) for i in doc_ids], "passage")
    q = enc.encode(list(queries.values()), "query")
    scores = {qid: dict(zip(doc_ids, row)) for qid, row in zip(queries, q @ d.T)}
    return scores, {qid: max(scores[qid][p] for p in positives[qid]) for qid in queries}


def test_dense_and_semi_hard_follow_the_encoders_scores(train_beir, train_split, tiny_model, tmp_path):
    corpus, queries, positives = train_split
    scores, best = dense_scores(tiny_model, corpus, queries, positives)
    assert mine(train_beir, tmp_path / "dense", "--strategy=dense", f"--model={tiny_model}", "--num_negatives=4") == 0
    for r in records(tmp_path / "dense"):
        ranked = sorted((d for d in corpus if d not in positives[r["qid"]]), key=lambda d: -scores[r["qid"]][d])
        assert [n["id"] for n in r["negatives"]] == ranked[:4]
        assert [n["score"] for n in r["negatives"]] == pytest.approx([scores[r["qid"]][d] for d in ranked[:4]], abs=1e-4)

    margin = 0.02
    assert mine(train_beir, tmp_path / "semi", "--strategy=semi-hard", f"--model={tiny_model}", "--num_negatives=4",
                f"--semi_hard_margin={margin}") == 0
    got = records(tmp_path / "semi")
    assert sum(len(r["negatives"]) for r in got) > 0
    for r in got:
        assert all(best[r["qid"]] - margin - 1e-4 < n["score"] < best[r["qid"]] + 1e-4 for n in r["negatives"])


def test_teacher_denoises_and_scores_every_pair(train_beir, train_split, tiny_cross_encoder, tmp_path, monkeypatch):
    corpus, queries, _ = train_split
    out = tmp_path / "teacher"
    assert mine(train_beir, out, f"--teacher={tiny_cross_encoder}", "--num_negatives=3") == 0
    teacher = CrossEncoder.from_pretrained(tiny_cross_encoder)
    for r in records(out)[:8]:
        ids = r["positives"] + [n["id"] for n in r["negatives"]]
        assert set(r["teacher"]) == set(ids)
        direct = teacher.score([queries[r["qid"]]] * len(ids), [doc_text(corpus[d]) for d in ids])
        assert [r["teacher"][d] for d in ids] == pytest.approx(direct.tolist(), abs=1e-4)
        best_positive = max(r["teacher"][p] for p in r["positives"])
        assert all(r["teacher"][n["id"]] < best_positive for n in r["negatives"])
    # a random teacher thinks some BM25 candidates beat the positive: those are gone
    assert stats(out)["dropped_by_teacher"] > 0
    # scoring many queries per call (chunks that end mid-file here) picks what one query at a time picks
    monkeypatch.setattr(mining, "TEACHER_CHUNK", 3)
    mine(train_beir, tmp_path / "chunked", f"--teacher={tiny_cross_encoder}", "--num_negatives=3")
    assert [(r["qid"], r["negatives"]) for r in records(tmp_path / "chunked")] == \
        [(r["qid"], r["negatives"]) for r in records(out)]


@pytest.mark.parametrize("args, message", [
    (["--strategy=bm25,dense", "--num_negatives=5"], "one count each"),
    (["--strategy=colbert"], "choose one of"),
    (["--skip_top=10", "--max_rank=10"], "skip_top < max_rank"),
    (["--split=test"], "split=test"),
    (["--strategy=bm25,bm25", "--num_negatives=1,1"], "twice"),
    (["--dtype=fp8"], "choose one of"),
])
def test_bad_config_fails_before_any_work(train_beir, tmp_path, args, message):
    with pytest.raises(ConfigError, match=message):
        mine(train_beir, tmp_path / "bad", *args)
    assert not (tmp_path / "bad").exists()


def test_select_never_takes_a_labelled_positive(train_split):
    """Directly on common.mining: a candidate list full of positives yields none of them."""
    from types import SimpleNamespace

    from common import mining

    corpus, queries, positives = train_split
    qid = next(q for q in queries if len(positives[q]) > 1)
    cfg = SimpleNamespace(strategy=["bm25"], num_negatives=[3], sampling="random", skip_top=0, max_rank=10,
                          max_score_ratio=0.0, semi_hard_margin=0.1, teacher_margin=0.0, bm25_k1=1.2, bm25_b=0.4,
                          bm25_backend="rank_bm25", seed=0)
    sources = mining.Sources(cfg, corpus)
    doc_ids = list(corpus)
    pos_rows = np.array([doc_ids.index(p) for p in positives[qid]])
    others = np.array([i for i in range(len(doc_ids)) if doc_ids[i] not in positives[qid]][:5])
    sources.bm25_lists = lambda texts, pos: [(np.concatenate([pos_rows, others]), np.arange(10.0, 10 - len(pos_rows) - 5, -1), 10.0)]
    got, _ = mining.mine(cfg, corpus, {qid: queries[qid]}, {qid: positives[qid]}, sources)
    ids = [n["id"] for n in got[0]["negatives"]]
    assert len(ids) == 3 and not set(ids) & positives[qid]


def test_max_queries_mines_a_seeded_sample(train_beir, train_split, tmp_path):
    _, queries, _ = train_split
    assert mine(train_beir, tmp_path / "a", "--num_negatives=2", "--max_queries=5") == 0
    assert mine(train_beir, tmp_path / "b", "--num_negatives=2", "--max_queries=5") == 0
    picked = [r["qid"] for r in records(tmp_path / "a")]
    assert len(picked) == len(set(picked)) == 5 and set(picked) <= set(queries)
    assert picked == [r["qid"] for r in records(tmp_path / "b")]
    with pytest.raises(ConfigError, match="max_queries=-1"):
        mine(train_beir, tmp_path / "c", "--max_queries=-1")


def test_a_query_longer_than_max_length_is_cut_not_refused(tiny_cross_encoder):
    # only_second truncation raised on such a pair; the pipeline's reranker meets them (max_length 128
    # against long docstrings), and the tiny character-level vocab makes every query one.
    cross = CrossEncoder.from_pretrained(tiny_cross_encoder, max_length=16)
    batch = cross.tokenize(["a query of many more than sixteen characters"], ["short passage"])
    assert batch["input_ids"].shape == (1, 16)
    assert cross.score(["x" * 200, "q"], ["p" * 200, "p"]).shape == (2,)


def test_under_torchrun_the_ranks_share_the_corpus_encode(train_beir, tiny_model, tmp_path):
    """Two gloo ranks: each encodes a slice of the corpus into the file rank 0 names (mining's own, under its
    out directory), and the training file is one process's, byte for byte."""
    import subprocess
    import sys

    args = [f"--data={train_beir}", f"--model={tiny_model}", "--strategy=bm25,dense", "--num_negatives=2,2",
            "--dtype=fp32"]  # bf16 rounds by the batch's shape, which the ranks' slices change
    assert mine(train_beir, tmp_path / "one" / "mine", *args[1:]) == 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "mine_negatives.py",
           *args, f"--out={tmp_path / 'two' / 'mine'}"]
    proc = subprocess.run(cmd, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "corpus encode shared by 2 ranks" in proc.stdout
    one, two = ((tmp_path / d / "mine" / "train.jsonl").read_bytes() for d in ("one", "two"))
    assert two == one
