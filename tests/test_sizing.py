"""`auto` sizes: resolved from the data and the machine before training, saved in config.json."""
import json
import time

import pytest

import train_encoder
import train_reranker
from common import sizing
from common.config import Auto, ConfigError, load_config
from conftest import write_beir_dir


def encoder_cfg(*args):
    return load_config(train_encoder.DEFAULTS, ["--train_file=mined.jsonl", *args])


def records(n, negatives=True):
    return [dict(qid=f"q{i}", query=f"query {i}", positives=[f"d{i}"], negatives=[f"d{i + 1}"] if negatives else [],
                 teacher={}) for i in range(n)]


def test_cpu_and_gpu_plans_differ_as_designed():
    corpus = {f"d{i}": {"title": "", "text": "x"} for i in range(5_000)}
    val = {f"v{i}": "q" for i in range(3_000)}
    plans = {}
    for machine in ("cpu", "gpu"):
        cfg = encoder_cfg()
        train_encoder.resolve_sizes(cfg, train_encoder.AUTO[machine], records(100), corpus, val, world=1)
        plans[machine] = cfg
    cpu, gpu = plans["cpu"], plans["gpu"]
    assert cpu.time_budget_min > 0 and gpu.time_budget_min == 0  # a CPU run is cut to a budget, a GPU's is not
    assert not cpu.val_full_corpus and gpu.val_full_corpus  # 5,000 docs: a sub-corpus on a CPU, all of them on a GPU
    assert cpu.val_queries < gpu.val_queries <= len(val)
    assert gpu.hard_negatives >= cpu.hard_negatives > 0 and cpu.max_passage_length < 256  # a CPU step costs less
    # a small val split is used whole, and a mined file without negatives trains in-batch only
    cfg = encoder_cfg()
    train_encoder.resolve_sizes(cfg, train_encoder.AUTO["gpu"], records(100, negatives=False), corpus,
                                {"v1": "q"}, world=1)
    assert cfg.val_queries == 1 and cfg.hard_negatives == 0
    # what the user set is kept
    cfg = encoder_cfg("--val_queries=7", "--time_budget_min=3", "--hard_negatives=1")
    train_encoder.resolve_sizes(cfg, train_encoder.AUTO["gpu"], records(100), corpus, val, world=1)
    assert (cfg.val_queries, cfg.time_budget_min, cfg.hard_negatives) == (7, 3, 1)
    rer_cpu, rer_gpu = train_reranker.AUTO["cpu"], train_reranker.AUTO["gpu"]
    assert rer_cpu["val_depth"] < rer_gpu["val_depth"] and rer_cpu["time_budget_min"] > rer_gpu["time_budget_min"] == 0


def test_steps_follow_the_epochs_or_the_budget():
    slow = lambda: time.sleep(0.05)  # noqa: E731
    no_val = lambda: 0.0  # noqa: E731
    # no budget (a GPU): the recipe's epochs, no probe
    cfg = encoder_cfg("--time_budget_min=0", "--epochs=3")
    plan = sizing.resolve_steps(cfg, train_encoder.AUTO["gpu"], 40, lambda: pytest.fail("no probe"), no_val, 0, 1)
    assert cfg.max_steps == 120 and plan["notes"] == [] and cfg.eval_every == 12
    # a budget smaller than one epoch: as many steps as fit, and a line saying so
    cfg = encoder_cfg("--time_budget_min=0.01", "--epochs=3")  # 0.6 s at ~0.05 s a step
    plan = sizing.resolve_steps(cfg, train_encoder.AUTO["cpu"], 40, slow, no_val, 0, 1)
    assert 5 <= cfg.max_steps <= 12
    assert "less than one epoch (40 steps)" in plan["notes"][0] and "s a step" in plan["lines"][0]
    # an explicit max_steps is kept, whatever the budget
    cfg = encoder_cfg("--time_budget_min=0.01", "--max_steps=500")
    sizing.resolve_steps(cfg, train_encoder.AUTO["cpu"], 40, lambda: pytest.fail("no probe"), no_val, 0, 1)
    assert cfg.max_steps == 500


def test_steps_for_budget_counts_the_evaluations():
    assert sizing.steps_for_budget(0, 300, 100, 1.0, 10.0, 4) == (300, "")
    steps, note = sizing.steps_for_budget(10, 3000, 1000, 1.0, 30.0, 4)  # 600 s - 120 s of val
    assert steps == 480 and "less than one epoch" in note
    steps, note = sizing.steps_for_budget(10, 3000, 200, 1.0, 30.0, 4)
    assert steps == 480 and "2.4 epochs" in note


def test_auto_settings_are_resolved_in_config_json_and_kept_on_resume(train_beir, tiny_model, tmp_path):
    out = tmp_path / "run"
    args = [f"--data={train_beir}", f"--model={tiny_model}", f"--out={out}", "--batch_size=8", "--epochs=1",
            "--max_passage_length=32", "--tensorboard=false", "--test_eval=false"]
    assert train_encoder.main(args) == 0
    saved = json.loads((out / "config.json").read_text())
    auto_keys = [k for k, v in train_encoder.DEFAULTS.items() if isinstance(v, Auto)]
    assert auto_keys and all(saved[k] != "auto" for k in auto_keys)
    assert saved["max_steps"] == 6 and saved["hard_negatives"] == 0 and saved["val_full_corpus"] is True
    assert train_encoder.main(args + ["--resume"]) == 0  # nothing left to train; the sizes are the run's
    assert json.loads((out / "config.json").read_text()) == {**saved, "resume": True}


def test_an_epoch_visits_each_query_once_however_many_positives(tmp_path, tiny_model):
    """16 train queries, one with 30 positives: an epoch is 16 examples, 4 steps at batch 4, not 45 / 4."""
    corpus = {f"d{i}": ("", f"document {i} words w{i} x{i}") for i in range(60)}
    queries = {f"q{i}": f"words w{i}" for i in range(20)}
    train = [(f"q{i}", f"d{i}", 1) for i in range(16)] + [("q0", f"d{30 + j}", 1) for j in range(30)]
    data = write_beir_dir(tmp_path / "many", corpus, queries, {"train": train, "val": [(f"q{i}", f"d{i}", 1)
                                                                                        for i in range(16, 20)]})
    out = tmp_path / "run"
    assert train_encoder.main([f"--data={data}", f"--model={tiny_model}", f"--out={out}", "--batch_size=4",
                               "--epochs=2", "--max_passage_length=16", "--tensorboard=false",
                               "--test_eval=false"]) == 0
    assert json.loads((out / "metrics.json").read_text())["total_steps"] == 2 * 4


def test_auto_and_typed_values(tmp_path):
    assert encoder_cfg().max_steps == "auto"
    assert encoder_cfg("--max_steps=auto").max_steps == "auto"
    assert encoder_cfg("--max_steps=40").max_steps == 40
    assert encoder_cfg("--val_full_corpus").val_full_corpus is True
    with pytest.raises(ConfigError, match="max_steps='many' is neither auto nor a int"):
        encoder_cfg("--max_steps=many")
    yml = tmp_path / "c.yaml"
    yml.write_text("time_budget_min: 2.5\n")
    assert load_config(train_encoder.DEFAULTS, [str(yml)]).time_budget_min == 2.5


def test_a_dataset_too_small_for_the_batch_trains_at_half_its_queries(train_beir, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_encoder.main([f"--data={train_beir}", f"--model={tiny_model}", f"--out={out}", "--max_steps=1",
                               "--max_passage_length=16", "--tensorboard=false", "--test_eval=false"]) == 0
    assert json.loads((out / "config.json").read_text())["batch_size"] == 24  # 48 train queries
    assert "48 training queries, too few for batches of 32: training at batch_size=24" in capsys.readouterr().err


def test_an_empty_val_split_trains_without_val_and_says_so(tmp_path, tiny_model, capsys):
    corpus = {f"d{i}": ("", f"document {i} words w{i}") for i in range(20)}
    queries = {f"q{i}": f"words w{i}" for i in range(20)}
    data = write_beir_dir(tmp_path / "noval", corpus, queries, {"train": [(f"q{i}", f"d{i}", 1) for i in range(16)],
                                                                 "val": []})
    out = tmp_path / "run"
    assert train_encoder.main([f"--data={data}", f"--model={tiny_model}", f"--out={out}", "--max_steps=2",
                               "--batch_size=4", "--max_passage_length=16", "--tensorboard=false",
                               "--test_eval=false"]) == 0
    err = capsys.readouterr().err
    assert "split 'val' has no relevant (score > 0) rows; nothing to evaluate: the last step's model is kept" in err
    assert (out / "best" / "model.safetensors").exists()
