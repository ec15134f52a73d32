"""train_encoder.py on a tiny model: equivalence of GradCache, DDP and resume, and the run's outputs."""
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import mine_negatives
import train_encoder
from common import losses
from common.config import ConfigError
from common.run import UserError
from conftest import build_tiny_model, grads_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--max_passage_length=32", "--max_query_length=16", "--val_docs_random=8", "--val_docs_bm25=4",
        "--log_every=1", "--tensorboard=false", "--test_eval=false", "--eval_every=0"]


def train(data, model, out, *args):
    return train_encoder.main([f"--data={data}", f"--model={model}", f"--out={out}", *FAST, *args])


def weights(run_dir, sub="last"):
    """The model's weights, and a LoRA adapter's and a projection's beside them ("lora:<name>", "dense:<name>")."""
    out = load_file(os.path.join(run_dir, sub, "model.safetensors"))
    for prefix, file in (("lora", "lora.safetensors"), ("dense", "2_Dense/model.safetensors")):
        if os.path.exists(os.path.join(run_dir, sub, file)):
            out.update({f"{prefix}:{k}": v for k, v in load_file(os.path.join(run_dir, sub, file)).items()})
    return out


def log_lines(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def patch_infonce(monkeypatch, call, action):
    """infonce whose `call`-th call (1-based) goes through action(loss) first."""
    calls, infonce = {"n": 0}, losses.infonce

    def patched(*args, **kwargs):
        calls["n"] += 1
        loss = infonce(*args, **kwargs)
        return action(loss) if calls["n"] == call else loss
    monkeypatch.setattr(losses, "infonce", patched)


def assert_same_grads(a, b, atol=1e-5):
    assert len(a) == len(b) and len(a[0]) == len(b[0]) > 0
    for step_a, step_b in zip(a, b):
        for ga, gb in zip(step_a, step_b):
            torch.testing.assert_close(ga, gb, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("variant", [["--micro_batch_size=3"], ["--gradient_checkpointing"],
                                     ["--micro_batch_size=3", "--gradient_checkpointing"]],
                         ids=["gradcache", "checkpointing", "both"])
def test_same_gradients_as_one_plain_batch(train_beir, tiny_model, tmp_path, monkeypatch, variant):
    """GradCache over micro-batches of 3 and/or gradient checkpointing: the gradients (and losses) of
    one plain forward and backward over the batch of 8."""
    args = ["--batch_size=8", "--max_steps=2", "--dtype=fp32"]  # bf16 rounds by the batch's shape
    plain, other = grads_of(monkeypatch, lambda: train(train_beir, tiny_model, tmp_path / "plain", *args),
                            lambda: train(train_beir, tiny_model, tmp_path / "other", *args, *variant))
    assert_same_grads(plain, other)
    losses_plain = [r["loss"] for r in log_lines(tmp_path / "plain")]
    assert losses_plain == pytest.approx([r["loss"] for r in log_lines(tmp_path / "other")], abs=1e-6)


def test_naive_accumulation_would_differ(train_beir, tiny_model, tmp_path, monkeypatch):
    """The equivalence above is not vacuous: a loss over 4 examples is not the loss over 8."""
    train(train_beir, tiny_model, tmp_path / "b8", "--batch_size=8", "--max_steps=1")
    train(train_beir, tiny_model, tmp_path / "b4", "--batch_size=4", "--max_steps=1")
    assert log_lines(tmp_path / "b8")[0]["loss"] != pytest.approx(log_lines(tmp_path / "b4")[0]["loss"], abs=1e-3)


def mine_dense(data, model, out):
    assert mine_negatives.main([f"--data={data}", f"--model={model}", f"--out={out}", "--strategy=dense",
                                "--num_negatives=4", "--max_rank=20"]) == 0
    return os.path.join(out, "train.jsonl")


@pytest.mark.parametrize("variant", ["plain", "across-a-remine", "lora", "matryoshka"])
def test_resume_after_interrupt_is_bitwise_identical(train_beir, tmp_path, monkeypatch, variant):
    # Dropout on, so the resumed run must also restore the RNG to draw the same masks.
    model = build_tiny_model(tmp_path / "tiny-dropout", dropout=0.1)
    args = ["--batch_size=8", "--max_steps=6", "--micro_batch_size=4", "--lr=1e-3", "--save_every=0"]
    if variant == "lora":  # the adapter, its dropout and its optimiser state must all come back
        args += ["--lora_r=4", "--lora_alpha=8", "--lora_dropout=0.1"]
    if variant == "matryoshka":  # the rotation after pooling is made once, then trained and checkpointed
        args += ["--matryoshka_dims=32,8"]
    if variant == "across-a-remine":  # re-mined at step 2 mid-epoch (the rest of the epoch rebuilt), interrupted at 3, re-mined at 4
        args += [f"--train_file={mine_dense(train_beir, model, tmp_path / 'mined')}", "--hard_negatives=2",
                 "--remine_every=2"]
    assert train(train_beir, model, tmp_path / "straight", *args) == 0

    def ctrl_c(loss):
        os.kill(os.getpid(), signal.SIGINT)
        return loss
    patch_infonce(monkeypatch, 5 if variant == "matryoshka" else 3, ctrl_c)  # Ctrl-C in the middle of step 3
    # (with Matryoshka, infonce runs at both dims: twice a step)
    assert train(train_beir, model, tmp_path / "resumed", *args) == 130
    monkeypatch.undo()
    state = torch.load(tmp_path / "resumed" / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3  # the step in flight finished, then last/ was saved
    assert train(train_beir, model, tmp_path / "resumed", *args, "--resume") == 0

    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training moved the weights at all (with LoRA: the adapter, the trunk staying as it was)
    start = load_file(os.path.join(model, "model.safetensors"))
    if variant == "lora":
        assert all(torch.equal(start[k], a[k]) for k in a if k in start)
        assert any(k.startswith("lora:") and k.endswith("lora_B") and a[k].abs().sum() > 0 for k in a)
    else:
        assert any(not torch.equal(start[k], a[k]) for k in a if k in start)
    assert ("dense:linear.weight" in a) == (variant == "matryoshka")


def run_torchrun(nproc, data, model, out, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "train_encoder.py", f"--data={data}", f"--model={model}", f"--out={out}", *FAST, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("micro,extra", [(0, []), (2, []), (2, ["--lora_r=4", "--lora_dropout=0"]),
                                         (2, ["--matryoshka_dims=32,8"])],
                         ids=["one-pass", "gradcache", "lora", "matryoshka"])
def test_two_process_ddp_equals_one_process(train_beir, tiny_model, tmp_path, micro, extra):
    """gloo, 2 CPU processes, each with half of the global batch: the same loss, gradient norm and
    weights as one process with the whole batch, because embeddings are gathered across ranks."""
    args = ["--batch_size=8", "--max_steps=3", "--lr=1e-3", f"--micro_batch_size={micro}", *extra,
            "--dtype=fp32"]  # bf16 rounds by the batch's shape, which is half as large on each rank
    train(train_beir, tiny_model, tmp_path / "one", *args)
    run_torchrun(2, train_beir, tiny_model, tmp_path / "two", *args)
    one, two = log_lines(tmp_path / "one"), log_lines(tmp_path / "two")
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in two], abs=1e-5)
    assert [r["grad_norm"] for r in one] == pytest.approx([r["grad_norm"] for r in two], rel=1e-4)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_full_run_writes_a_complete_run_directory(train_beir, tiny_model, tmp_path):
    out = tmp_path / "run"
    code = train_encoder.main([f"--data={train_beir}", f"--model={tiny_model}", f"--out={out}",
                               "--batch_size=8", "--epochs=6", "--lr=3e-3", "--eval_every=10", "--log_every=5",
                               "--max_passage_length=32", "--val_docs_random=8", "--val_docs_bm25=4"])
    assert code == 0
    for name in ("config.json", "command.txt", "metrics.json", "metrics.jsonl", "training_progress.json",
                 "best/model.safetensors", "best/biencoder.json", "last/trainer_state.pt", "test/metrics.json",
                 "test/dense.trec"):
        assert (out / name).exists(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == summary["total_steps"] == 6 * 6  # 49 pairs -> 6 batches of 8 per epoch
    assert 0 <= summary["test"]["ndcg@10"] <= 1
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    assert [e["step"] for e in evals] == [0, 10, 20, 30, 36]
    # Trained on these queries' own words, the tiny model must beat its random start on val.
    assert summary["val"]["ndcg@10"] > evals[0]["ndcg@10"]
    assert summary["best_step"] > 0
    for key in ("examples_per_s", "tokens_per_s"):  # bench/st_compare.py reads them
        assert summary[key] > 0
    # best/ explains itself: a model card whose numbers are the run's own
    card = (out / "best" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers") and f"base_model: {tiny_model}" in card
    assert f"at step {summary['best_step']} of 36" in card
    assert f"ndcg@10 {summary['val']['ndcg@10']:.4f}" in card and f"Test: ndcg@10 {summary['test']['ndcg@10']:.4f}" in card
    record = log_lines(out)[-1]
    for key in ("lr", "grad_norm", "in_batch_accuracy", "embedding_std", "examples_per_s", "tokens_per_s",
                "step_seconds"):
        assert key in record


def test_nan_loss_stops_naming_the_step(train_beir, tiny_model, tmp_path, monkeypatch):
    patch_infonce(monkeypatch, 2, lambda loss: loss * float("nan"))
    with pytest.raises(UserError, match="loss is nan at step 1"):
        train(train_beir, tiny_model, tmp_path / "nan", "--batch_size=8", "--max_steps=4")


def test_remining_refreshes_the_negatives_and_training_goes_on(train_beir, tiny_model, tmp_path):
    mined = mine_dense(train_beir, tiny_model, tmp_path / "mined")
    out = tmp_path / "ance"
    assert train(train_beir, tiny_model, out, f"--train_file={mined}", "--hard_negatives=2", "--remine_every=2",
                 "--batch_size=8", "--max_steps=5", "--lr=1e-3") == 0
    assert sorted(os.listdir(out / "negatives")) == ["step-2.jsonl", "step-4.jsonl"]

    def negatives(path):
        with open(path) as f:
            return {r["qid"]: [n["id"] for n in r["negatives"]] for r in map(json.loads, f)}
    before, after = negatives(mined), negatives(out / "negatives" / "step-4.jsonl")
    assert before.keys() == after.keys() and before != after
    with open(out / "metrics.jsonl") as f:
        remines = [r for r in map(json.loads, f) if "remine_seconds" in r]
    assert [r["step"] for r in remines] == [2, 4] and remines[1]["negatives_changed"] > 0
    assert [r["step"] for r in log_lines(out)] == [1, 2, 3, 4, 5]


def test_a_remine_that_shortens_the_epoch_starts_the_next_one(train_beir, tiny_model, tmp_path, monkeypatch):
    # Re-batching the rest of an epoch around fresh negatives can leave fewer full batches than before
    # (the batch rules reject more pairs); the extreme case is none, which once indexed past the end.
    rebatch = train_encoder.rebatch_rest
    monkeypatch.setattr(train_encoder, "rebatch_rest",
                        lambda examples, batches, negatives, position, cfg, seed:
                        (rebatch(examples, batches, negatives, position, cfg, seed)[0][:position], negatives))
    mined = mine_dense(train_beir, tiny_model, tmp_path / "mined")
    out = tmp_path / "short"
    assert train(train_beir, tiny_model, out, f"--train_file={mined}", "--hard_negatives=2", "--remine_every=2",
                 "--batch_size=8", "--max_steps=5") == 0
    assert [(r["step"], r["epoch"]) for r in log_lines(out)] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2)]


def test_mined_file_with_teacher_trains_margin_mse(train_beir, tiny_model, tmp_path):
    mined = tmp_path / "mined.jsonl"
    with open(mined, "w") as f:
        for i in range(48):
            negs = [f"d{(i + j) % 48}" for j in (1, 2, 3)]
            f.write(json.dumps({"qid": f"q{i}", "query": f"query {i}", "positives": [f"d{i}"], "negatives": negs,
                                "teacher": {f"d{i}": 5.0, **{n: 1.0 - j for j, n in enumerate(negs)}}}) + "\n")
    out = tmp_path / "mm"
    train(train_beir, tiny_model, out, f"--train_file={mined}", "--hard_negatives=2", "--loss=infonce,margin_mse",
          "--loss_weights=1,0.5", "--batch_size=4", "--max_steps=2")
    record = log_lines(out)[-1]
    assert record["loss"] == pytest.approx(record["loss/infonce"] + 0.5 * record["loss/margin_mse"], rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--loss=margin_mse"], "margin_mse needs teacher scores"),
    (["--loss=infonce,cosine", "--loss_weights=1"], "one weight each"),
    (["--hard_negatives=2"], "needs --train_file"),
    (["--remine_every=10"], "remine_every needs"),
    (["--loss=triplet"], "choose one of"),
    (["--batchsize=8"], "did you mean --batch_size"),
    (["--lr=0"], "lr=0.0: must be above 0"),
    (["--warmup_ratio=1.5"], "warmup_ratio=1.5: must be at least 0 and at most 1"),
    (["--loss=infonce,cosine", "--loss_weights=1,-1"], "loss_weights=-1.0: must be at least 0"),
    (["--batch_size=8", "--micro_batch_size=16"], "more than the 8 examples each of 1 rank"),
])
def test_bad_config_fails_before_any_work(train_beir, tiny_model, tmp_path, args, message):
    with pytest.raises(ConfigError, match=message):
        train(train_beir, tiny_model, tmp_path / "bad", *args)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args", [["--dtype=bf16"], ["--dtype=fp16"], ["--loss=contrastive,cosine", "--loss_weights=1,1"],
                                  ["--symmetric", "--schedule=cosine", "--length_bucketing=false"]])
def test_other_settings_train(train_beir, tiny_model, tmp_path, args):
    """Mixed precision (on CPU here; the GPU path is the same code) and the other losses run and stay finite."""
    out = tmp_path / "other"
    assert train(train_beir, tiny_model, out, "--batch_size=8", "--max_steps=2", *args) == 0
    assert all(math.isfinite(r["loss"]) for r in log_lines(out))


def test_a_loss_spike_is_warned_about_and_training_goes_on(train_beir, tiny_model, tmp_path, monkeypatch, capsys):
    patch_infonce(monkeypatch, 13, lambda loss: loss * 50)  # step 12, after 12 ordinary steps
    assert train(train_beir, tiny_model, tmp_path / "spike", "--batch_size=8", "--max_steps=14") == 0
    err = capsys.readouterr().err
    assert "warning: loss" in err and "at step 12 is over 3x the mean of the last 12 steps" in err


def test_an_output_directory_that_cannot_be_written_fails_before_training(train_beir, tiny_model, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(UserError, match="output directory is not writable"):
        train(train_beir, tiny_model, tmp_path / "a-file" / "run", "--batch_size=8", "--max_steps=2")


def test_wise_ft_mixes_the_best_step_with_the_start_and_serves_the_mix_only_beyond_noise(train_beir, tiny_model,
                                                                                          tmp_path, monkeypatch):
    """train_encoder.wise_ft: each share's mix scored on val as the steps are; None where none beats best/."""
    from types import SimpleNamespace

    from common import decision
    from common.data import load_beir
    from common.models import BiEncoder

    shutil_copy = __import__("shutil").copytree
    shutil_copy(build_tiny_model(tmp_path / "tuned", seed=7), tmp_path / "run" / "best")
    cfg = SimpleNamespace(out=str(tmp_path / "run"), model=tiny_model, max_passage_length=0, pooling="",
                          max_query_length=0, query_prefix="", passage_prefix="", dtype="fp32", eval_batch_size=8,
                          best_metric="ndcg@10", wise_alphas=[0.5])
    corpus, queries, qrels = load_beir(train_beir, "val")
    args = (cfg, torch.device("cpu"), corpus, list(corpus), queries, qrels, None, {"step": 3})
    mixed, report = train_encoder.wise_ft(*args)
    assert set(report["grid"]) == {0.5} and (mixed is None) == (report["chosen"] is None)
    monkeypatch.setattr(decision, "select", lambda *a, **k: (0.5, {"chosen": 0.5}))  # as if val chose the mix
    mixed, _ = train_encoder.wise_ft(*args)
    start, tuned = BiEncoder.from_pretrained(tiny_model).model.state_dict(), load_file(
        str(tmp_path / "run" / "best" / "model.safetensors"))
    for name, value in mixed.model.state_dict().items():
        if value.is_floating_point() and name in tuned:
            torch.testing.assert_close(value, 0.5 * start[name] + 0.5 * tuned[name])
