import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import train_reranker
from common import losses
from common.config import ConfigError
from common.models import CrossEncoder
from common.run import UserError
from conftest import build_tiny_model, grads_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--max_length=48", "--log_every=1", "--tensorboard=false", "--test_eval=false", "--eval_every=0",
        "--val_depth=8"]


def mined_file(path, data, teacher=False, n=48):
    """The first n train queries of train_beir (q0..q47 -> d0..d47), each with its positive and three negatives,
    optionally with teacher scores, as mine_negatives.py would write them."""
    with open(os.path.join(data, "queries.jsonl")) as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f)}
    with open(path, "w") as f:
        for i in range(n):
            negs = [f"d{(i + j) % 48}" for j in (1, 2, 3)]
            record = {"qid": f"q{i}", "query": queries[f"q{i}"], "positives": [f"d{i}"], "negatives": negs}
            if teacher:
                record["teacher"] = {f"d{i}": 5.0, **{d: 1.0 - j for j, d in enumerate(negs)}}
            f.write(json.dumps(record) + "\n")
    return str(path)


@pytest.fixture
def mined(train_beir, tmp_path):
    return mined_file(tmp_path / "mined.jsonl", train_beir, teacher=True)


def train(data, model, out, train_file, *args):
    return train_reranker.main([f"--data={data}", f"--model={model}", f"--out={out}", f"--train_file={train_file}",
                                *FAST, *args])


def log_lines(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def weights(run_dir, sub="last"):
    """The model's weights, and a LoRA adapter's beside them (as "lora:<name>")."""
    out = load_file(os.path.join(run_dir, sub, "model.safetensors"))
    if os.path.exists(os.path.join(run_dir, sub, "lora.safetensors")):
        out.update({f"lora:{k}": v for k, v in load_file(os.path.join(run_dir, sub, "lora.safetensors")).items()})
    return out


def test_full_run_writes_a_complete_run_directory(train_beir, tiny_model, mined, tmp_path):
    out = tmp_path / "run"
    assert train(train_beir, tiny_model, out, mined, "--batch_size=8", "--negatives=3", "--max_steps=4",
                 "--eval_every=2", "--test_eval=true", "--tensorboard=true", "--fusion_depths=4,8") == 0
    for name in ("config.json", "command.txt", "metrics.json", "metrics.jsonl", "training_progress.json",
                 "best/model.safetensors", "best/crossencoder.json", "best/fusion.json", "last/trainer_state.pt",
                 "val/metrics.json", "test/metrics.json", "test/bm25.trec", "test/bm25+rerank.trec",
                 "test/bm25+fused.trec", "test/bm25+rerank.per_query.json"):
        assert (out / name).exists(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 4 and summary["best_step"] in (2, 4)
    results = json.loads((out / "test" / "metrics.json").read_text())["results"]
    assert set(results) == {"bm25", "bm25+rerank", "bm25+fused"} and summary["rerank_pairs_per_s"] > 0
    card = (out / "best" / "README.md").read_text()
    assert "pipeline_tag: text-ranking" in card and f"at step {summary['best_step']} of 4" in card
    for name, r in results.items():
        assert f"Test, {name}: ndcg@10 {r['metrics']['ndcg@10']:.4f}" in card
    # reranking reorders BM25's candidates, it does not find new ones
    assert results["bm25+rerank"]["metrics"]["recall@10"] == pytest.approx(results["bm25"]["metrics"]["recall@10"])
    # the fresh head's step 0 is not evaluated (its scores are random); the run's end is
    val_steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if '"split": "val"' in line]
    assert val_steps == [2, 4]
    assert json.loads((out / "best" / "crossencoder.json").read_text()) == {"max_length": 48}
    assert CrossEncoder.from_pretrained(str(out / "best")).max_length == 48
    # the fusion chosen on val is the best of its grid there, and what test and the saved model use
    chosen = json.loads((out / "best" / "fusion.json").read_text())
    assert chosen["depth"] in (4, 8) and 0 <= chosen["weight"] <= 1
    assert chosen["val"]["bm25+fused"] == pytest.approx(max(chosen["grid"].values()))
    assert chosen["val"]["bm25+fused"] >= chosen["val"]["bm25"]  # val never gets worse than the first stage
    assert results["bm25+fused"]["fusion"] == {"weight": chosen["weight"], "depth": chosen["depth"]}
    assert CrossEncoder.from_pretrained(str(out / "best")).fusion["weight"] == chosen["weight"]


def test_listwise_training_fits_a_small_set(train_beir, tiny_model, tmp_path):
    # A tiny random cross-encoder starts with near-equal scores (loss ln 4 over groups of 4); on 8
    # queries seen 40 times it must learn to put each positive first.
    small = mined_file(tmp_path / "small.jsonl", train_beir, n=8)
    out = tmp_path / "fit"
    train(train_beir, tiny_model, out, small, "--batch_size=8", "--negatives=3", "--max_steps=40", "--lr=3e-3")
    logged = log_lines(out)
    assert logged[0]["loss"] == pytest.approx(math.log(4), abs=0.01)
    last = logged[-5:]
    assert sum(r["loss"] for r in last) / 5 < 0.8
    assert sum(r["group_accuracy"] for r in last) / 5 >= 0.75
    assert sum(r["score_margin"] for r in last) / 5 > 1.0


@pytest.mark.parametrize("args, parts", [
    (["--loss=bce"], {"bce"}),
    (["--loss=bce", "--pos_weight=1"], {"bce"}),
    (["--distill=margin_mse", "--distill_weight=0.5"], {"listwise", "margin_mse"}),
    (["--distill=kl", "--distill_temperature=2"], {"listwise", "kl"}),
])
def test_losses_and_distillation_train(train_beir, tiny_model, mined, tmp_path, args, parts):
    out = tmp_path / "run"
    assert train(train_beir, tiny_model, out, mined, "--batch_size=8", "--negatives=3", "--max_steps=2", *args) == 0
    record = log_lines(out)[-1]
    assert {k.split("/")[1] for k in record if k.startswith("loss/")} == parts
    assert record["loss"] == pytest.approx(sum(record[f"loss/{p}"] for p in parts), rel=1e-5)


def test_micro_batches_give_the_gradients_of_one_batch(train_beir, tiny_model, mined, tmp_path, monkeypatch):
    args = ["--negatives=3", "--max_steps=2"]
    plain, micro, smaller = grads_of(
        monkeypatch, lambda: train(train_beir, tiny_model, tmp_path / "plain", mined, "--batch_size=8", *args),
        lambda: train(train_beir, tiny_model, tmp_path / "micro", mined, "--batch_size=8", "--micro_batch_size=3", *args),
        lambda: train(train_beir, tiny_model, tmp_path / "b3", mined, "--batch_size=3", *args))
    assert len(plain) == len(micro) == 2
    for step_a, step_b in zip(plain, micro):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # and the check can fail: the gradient of 3 groups is not the gradient of 8
    assert not all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(plain[0], smaller[0]))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_after_interrupt_is_bitwise_identical(train_beir, mined, tmp_path, monkeypatch, lora):
    model = build_tiny_model(tmp_path / "tiny-dropout", dropout=0.1)  # dropout: the RNG must be restored too
    args = ["--batch_size=8", "--negatives=3", "--max_steps=9", "--micro_batch_size=4", "--lr=1e-3",
            "--save_every=0"]  # 6 steps an epoch: the resumed run crosses into the second
    args += ["--lora_r=4", "--lora_alpha=8"] if lora else []
    assert train(train_beir, model, tmp_path / "straight", mined, *args) == 0
    calls, listwise = {"n": 0}, losses.listwise

    def ctrl_c_in_step_3(scores):
        calls["n"] += 1
        if calls["n"] == 5:  # the first of step 3's two micro-batches
            os.kill(os.getpid(), signal.SIGINT)
        return listwise(scores)
    monkeypatch.setattr(losses, "listwise", ctrl_c_in_step_3)
    assert train(train_beir, model, tmp_path / "resumed", mined, *args) == 130
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "last" / "trainer_state.pt", weights_only=False)["step"] == 3
    assert train(train_beir, model, tmp_path / "resumed", mined, *args, "--resume") == 0
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(os.path.join(model, "model.safetensors"))  # the trunk's keys, without the "bert." prefix
    moved = [k for k in start if "bert." + k in a and not torch.equal(start[k], a["bert." + k])]
    if lora:  # the trunk stays as it was; the adapter and the fresh head train
        assert not moved and any(k.startswith("lora:") and a[k].abs().sum() > 0 for k in a if "lora_B" in k)
    else:
        assert moved


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_process_ddp_equals_one_process(train_beir, tiny_model, mined, tmp_path, lora):
    args = ["--batch_size=8", "--negatives=3", "--max_steps=2", "--lr=1e-3", "--micro_batch_size=2"]
    args += ["--lora_r=4", "--lora_dropout=0"] if lora else []
    train(train_beir, tiny_model, tmp_path / "one", mined, *args)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_reranker.py",
           f"--data={train_beir}", f"--model={tiny_model}", f"--out={tmp_path / 'two'}", f"--train_file={mined}",
           *FAST, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = log_lines(tmp_path / "one"), log_lines(tmp_path / "two")
    # rank 0 logs its own half's loss; the gradient norm is of the all-reduced (whole-batch) gradient
    assert [r["grad_norm"] for r in one] == pytest.approx([r["grad_norm"] for r in two], rel=1e-4)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_rerank_reorders_the_top_and_keeps_the_rest(tiny_model):
    cross = CrossEncoder.from_pretrained(tiny_model)
    docs = {f"d{i}": f"text number {i} " * (i + 1) for i in range(6)}
    run = {"q": {f"d{i}": 10.0 - i for i in range(6)}}
    reranked, seconds = cross.rerank({"q": "text number"}, run, docs, depth=4)
    order = sorted(reranked["q"], key=reranked["q"].get, reverse=True)
    expected = cross.score(["text number"] * 4, [docs[f"d{i}"] for i in range(4)])
    assert order[:4] == [f"d{i}" for i in sorted(range(4), key=lambda i: -expected[i])]
    assert order[4:] == ["d4", "d5"] and len(seconds) == 1 and seconds[0] > 0


@pytest.mark.parametrize("args, error, message", [
    (["--train_file="], ConfigError, "needs --train_file"),
    (["--negatives=0"], ConfigError, "at least one negative"),
    (["--loss=triplet"], ConfigError, "choose one of"),
    (["--distill=mse"], ConfigError, "choose one of"),
    (["--batch_size=100"], UserError, "fewer than batch_size"),
    (["--batch_size=0"], ConfigError, "batch_size=0: must be at least 1"),
    (["--distill=kl", "--distill_temperature=0"], ConfigError, "must be above 0"),
    (["--batch_size=8", "--micro_batch_size=9"], ConfigError, "more than the 8 groups"),
])
def test_bad_config_fails_before_any_work(train_beir, tiny_model, mined, tmp_path, args, error, message):
    with pytest.raises(error, match=message):
        train(train_beir, tiny_model, tmp_path / "bad", mined, *args)
    assert not (tmp_path / "bad").exists()


def test_distillation_without_teacher_scores_names_the_line(train_beir, tiny_model, tmp_path):
    plain = mined_file(tmp_path / "plain.jsonl", train_beir)
    with pytest.raises(UserError, match=r"plain.jsonl:1: distill=kl needs a teacher score"):
        train(train_beir, tiny_model, tmp_path / "bad", plain, "--distill=kl")
    assert not (tmp_path / "bad").exists()


def test_training_reads_each_query_with_its_documents_texts(train_beir, tiny_model, mined, tmp_path, monkeypatch):
    """What the cross-encoder is fed while training: the query and the text of its positive and negatives
    (an earlier version fed the doc ids, and the tests above could not tell)."""
    from common.data import doc_text, load_beir

    corpus = {d: doc_text(doc) for d, doc in load_beir(train_beir, "train")[0].items()}
    queries = {json.loads(line)["query"]: json.loads(line) for line in open(mined)}
    seen, tokenize = [], CrossEncoder.tokenize
    monkeypatch.setattr(CrossEncoder, "tokenize", lambda self, q, p: seen.append((list(q), list(p))) or tokenize(self, q, p))
    assert train(train_beir, tiny_model, tmp_path / "run", mined, "--batch_size=8", "--negatives=3", "--max_steps=1") == 0
    qs, ps = seen[0]
    assert len(qs) == len(ps) == 8 * 4
    for start in range(0, len(qs), 4):
        record = queries[qs[start]]
        assert ps[start] == corpus[record["positives"][0]]  # the positive first, as text
        assert set(ps[start + 1:start + 4]) <= {corpus[d] for d in record["negatives"]}
