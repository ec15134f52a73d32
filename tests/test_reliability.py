"""Long runs: a training process killed at a random step resumes to the weights of a run that never
stopped; SIGTERM saves before exiting; the same seed gives the same metrics."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train_encoder
import train_reranker
from conftest import build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {  # script: (its loss function, the arguments of a short run with checkpoints and val evals)
    "train_encoder": ("infonce", ["--batch_size=8", "--max_query_length=16", "--max_passage_length=32",
                                  "--val_docs_random=8", "--val_docs_bm25=4"]),
    "train_reranker": ("listwise", ["--batch_size=8", "--negatives=3", "--max_length=48", "--val_depth=8"]),
}
COMMON = ["--max_steps=16", "--save_every=3", "--eval_every=4", "--log_every=1", "--lr=1e-3", "--test_eval=false",
          "--tensorboard=false"]
# The child trains as the script's own __main__ would, with each step slowed by `delay` seconds so that
# the parent can signal it at a chosen step.
CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from common import losses
from common.run import cli
import {script} as script
original = losses.{loss}
def slowed(*args, **kwargs):
    time.sleep({delay})
    return original(*args, **kwargs)
losses.{loss} = slowed
cli(script.main)
"""


def mined_file(data, path):
    """Each of train_beir's 48 train queries with its positive and three other docs as negatives."""
    with open(os.path.join(data, "queries.jsonl")) as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f)}
    with open(path, "w") as f:
        for i in range(48):
            f.write(json.dumps({"qid": f"q{i}", "query": queries[f"q{i}"], "positives": [f"d{i}"],
                                "negatives": [f"d{(i + j) % 48}" for j in (1, 2, 3)]}) + "\n")
    return str(path)


def start(script, data, model, out, *extra, delay=0.0):
    loss, args = SCRIPTS[script]
    if script == "train_reranker":
        args = args + [f"--train_file={mined_file(data, os.path.join(os.path.dirname(out), 'mined.jsonl'))}"]
    code = CHILD.format(root=ROOT, script=script, loss=loss, delay=delay)
    cmd = [sys.executable, "-c", code, f"--data={data}", f"--model={model}", f"--out={out}", *args, *COMMON, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc):
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


def progress_step(out):
    try:
        with open(os.path.join(out, "training_progress.json")) as f:
            return json.load(f)["step"]
    except (OSError, ValueError, KeyError):
        return 0


def records(out):
    """(step, loss or val ndcg@10) of every metrics.jsonl line, in order."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [(r["step"], r.get("loss", r.get("ndcg@10"))) for r in map(json.loads, f)]


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory):
    # dropout on, so a resumed run must restore the RNG states to draw the same masks
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-dropout", dropout=0.1)


@pytest.fixture(scope="module")
def straight_runs(train_beir, dropout_model, tmp_path_factory):
    """script -> the run directory of its uninterrupted run, made once for both signals."""
    runs = {}

    def get(script):
        if script not in runs:
            out = tmp_path_factory.mktemp(script) / "straight"
            code, output = finish(start(script, train_beir, dropout_model, out))
            assert code == 0, output[-3000:]
            runs[script] = out
        return runs[script]
    return get


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_killed_at_a_random_step_resume_ends_with_the_same_weights(script, sig, train_beir, dropout_model,
                                                                   straight_runs, tmp_path):
    straight = straight_runs(script)

    kill_at = random.randint(4, 11)  # after the first checkpoint (step 3), well before the end (16)
    out = tmp_path / "killed"
    proc = start(script, train_beir, dropout_model, out, delay=0.15)
    while proc.poll() is None and progress_step(out) < kill_at:
        time.sleep(0.01)
    proc.send_signal(sig)
    code, output = finish(proc)
    killed_at = progress_step(out)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, f"the run ended before the kill at step {kill_at}: {output[-2000:]}"
    else:  # the step in flight finishes, last/ is saved, and the run says how to go on
        assert code == 130, output[-3000:]
        assert f"stopped by signal at step {killed_at}; `--resume` continues from {out}/last" in output
        assert torch.load(out / "last" / "trainer_state.pt", weights_only=False)["step"] == killed_at

    code, output = finish(start(script, train_beir, dropout_model, out, "--resume"))
    assert code == 0, output[-3000:]
    assert "resumed from" in output
    for sub in ("last", "best"):
        a, b = load_file(straight / sub / "model.safetensors"), load_file(out / sub / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
            f"{sub}/ differs after a {sig.name} at step {killed_at} (aimed at {kill_at})"
    # the log reads as one run: what the killed run wrote after its checkpoint was dropped, not repeated
    assert records(out) == records(straight)
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_the_same_seed_gives_the_same_metrics(script, train_beir, tiny_model, tmp_path):
    loss, args = SCRIPTS[script]
    if script == "train_reranker":
        args = args + [f"--train_file={mined_file(train_beir, tmp_path / 'mined.jsonl')}"]
    main = {"train_encoder": train_encoder.main, "train_reranker": train_reranker.main}[script]
    summaries = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main([f"--data={train_beir}", f"--model={tiny_model}", f"--out={out}", *args, *COMMON,
                     "--max_steps=8", "--test_eval=true"]) == 0
        with open(out / "metrics.json") as f:
            summary = json.load(f)
        summaries.append((records(out), summary["val"], summary["test"], summary["best_step"]))
    assert summaries[0] == summaries[1]
    assert summaries[0][2]  # and there were test metrics to compare
