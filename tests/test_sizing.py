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
    # the sizes come from the recipes, richest first: a GPU's one (the model's length, 3 negatives), a
    # CPU's down to cheaper ones it may fall back on
    assert train_encoder.recipes(gpu, train_encoder.AUTO["gpu"], 256) == [(256, 3)]
    ladder = train_encoder.recipes(cpu, train_encoder.AUTO["cpu"], 256)
    assert len(ladder) > 1 and ladder[0] == (256, 3) and ladder[-1][1] < 3
    assert train_encoder.recipes(cpu, train_encoder.AUTO["cpu"], 128)[0] == (128, 3)  # never past the model's length
    # a small val split is used whole, and a mined file without negatives trains in-batch only
    cfg = encoder_cfg()
    train_encoder.resolve_sizes(cfg, train_encoder.AUTO["gpu"], records(100, negatives=False), corpus,
                                {"v1": "q"}, world=1)
    assert cfg.val_queries == 1 and cfg.hard_negatives == 0
    # what the user set is kept
    cfg = encoder_cfg("--val_queries=7", "--time_budget_min=3", "--hard_negatives=1")
    train_encoder.resolve_sizes(cfg, train_encoder.AUTO["gpu"], records(100), corpus, val, world=1)
    assert (cfg.val_queries, cfg.time_budget_min, cfg.hard_negatives) == (7, 3, 1)
    assert train_encoder.recipes(cfg, train_encoder.AUTO["cpu"], 256) == [(256, 1)]  # the set value, once
    rer_cpu, rer_gpu = train_reranker.AUTO["cpu"], train_reranker.AUTO["gpu"]
    assert rer_cpu["val_depth"] < rer_gpu["val_depth"] and rer_cpu["time_budget_min"] > rer_gpu["time_budget_min"] == 0


def test_steps_follow_the_epochs_or_the_budget():
    slow = lambda: time.sleep(0.05)  # noqa: E731
    no_val = lambda: 0.0  # noqa: E731
    # no budget (a GPU): the recipe's epochs, no probe
    cfg = encoder_cfg("--time_budget_min=0", "--epochs=3")
    plan = sizing.resolve_steps(cfg, train_encoder.AUTO["gpu"], 40, lambda: pytest.fail("no probe"), no_val, 11, 1)
    assert cfg.max_steps == 120 and plan["notes"] == [] and cfg.eval_every == 12  # 11 evaluations: step 0 and 10 more
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


def test_a_dataset_too_small_for_the_batch_trains_at_half_of_it(train_beir, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_encoder.main([f"--data={train_beir}", f"--model={tiny_model}", f"--out={out}", "--max_steps=1",
                               "--max_passage_length=16", "--tensorboard=false", "--test_eval=false"]) == 0
    assert json.loads((out / "config.json").read_text())["batch_size"] == 16  # 48 train queries
    assert "48 training queries, too few for batches of 32: training at batch_size=16" in capsys.readouterr().err
    cfg = type("Cfg", (), {"batch_size": "auto"})()
    sizing.batch_size(cfg, 10, 32, 1, "few")  # fewer than two batches of 16: half the queries
    assert cfg.batch_size == 5


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


def trial(recipe, seconds, steps_per_epoch=10, eval_seconds=0.0, measured=True):
    return sizing.Trial(recipe, steps_per_epoch, seconds, eval_seconds, measured)


def test_the_richest_recipe_that_fits_is_chosen_and_one_that_cannot_is_not_measured():
    ladder = [(256, 3), (256, 1), (128, 3), (128, 1)]
    seconds = {(256, 3): 20.0, (256, 1): 9.0, (128, 3): 7.0, (128, 1): 4.0}
    measured = []

    def measure(recipe):
        measured.append(recipe)
        return trial(recipe, seconds[recipe], eval_seconds=30.0)

    def bound(recipe, cheapest):  # what the token counts promise: 256/3 surely too slow, the others maybe not
        return trial(recipe, {(256, 3): 25.0, (256, 1): 7.0, (128, 3): 6.0}[recipe], eval_seconds=30.0, measured=False)

    cfg = encoder_cfg("--time_budget_min=12", "--epochs=3")  # 720 s: 30 steps and val
    chosen, line = sizing.choose_recipe(cfg, ladder, measure, bound, 3, 1)
    # 256/3 is never run (its bound alone is 750 s); 256/1 runs and takes 270 s + 90 s: it fits
    assert chosen.recipe == (256, 1) and measured == [(128, 1), (256, 1)]
    assert "recipe: 256-token passages, 1 hard negative, the richest that fits" in line and "(cannot fit: time)" in line
    # a budget nothing fits whole: the cheapest, whose steps resolve_steps then cuts
    measured.clear()
    cfg = encoder_cfg("--time_budget_min=1", "--epochs=3")
    chosen, line = sizing.choose_recipe(cfg, ladder, measure, bound, 3, 1)
    assert chosen.recipe == (128, 1) and measured == [(128, 1)] and "the last of the recipes (none fits" in line
    plan = sizing.resolve_steps(cfg, train_encoder.AUTO["cpu"], 10, lambda: pytest.fail("measured already"),
                                lambda: pytest.fail("measured already"), 3, 1, trial=chosen)
    assert cfg.max_steps == int((60 - 30) / 4.0) and plan["evals"] == 1  # val held to its share of the minute
    # one recipe, or no budget: nothing to choose, nothing measured
    assert sizing.choose_recipe(encoder_cfg("--time_budget_min=0"), ladder, pytest.fail, bound, 3, 1) == (None, "")
    assert sizing.choose_recipe(cfg, [(128, 1)], pytest.fail, bound, 3, 1) == (None, "")


def test_epochs_a_little_over_the_tables_budget_run_whole():
    """A small dataset's epochs are not cut for a few minutes when the budget is the table's; one the
    user set is a limit."""
    trial = sizing.Trial((256, 1), 10, 4.0, 30.0)  # 30 steps x 4 s + one 30 s evaluation: 150 s
    fail = lambda: pytest.fail("measured already")  # noqa: E731
    cfg = encoder_cfg("--time_budget_min=1", "--epochs=3")
    plan = sizing.resolve_steps(cfg, train_encoder.AUTO["cpu"], 10, fail, fail, 3, 1, trial=trial, whole_within_min=3)
    assert cfg.max_steps == 30 and cfg.time_budget_min == 2.5 and plan["evals"] == 1 and plan["notes"] == [""]
    assert "the recipe's 30 steps whole take ~2.5 min, more than time_budget_min=1 but within 3: not cut" in plan["lines"][0]
    for within in (2, 0):  # epochs that take longer, or a budget the user set: cut to the budget
        cfg = encoder_cfg("--time_budget_min=1", "--epochs=3")
        plan = sizing.resolve_steps(cfg, train_encoder.AUTO["cpu"], 10, fail, fail, 3, 1, trial=trial,
                                    whole_within_min=within)
        assert cfg.max_steps == 7 and cfg.time_budget_min == 1 and "fits 7 steps, less than one epoch" in plan["notes"][0]


def test_only_the_tables_budget_may_run_over(train_beir, tiny_model, tmp_path, monkeypatch):
    seen, real = [], sizing.resolve_steps

    def spy(*args, **kwargs):
        seen.append(kwargs["whole_within_min"])
        return real(*args, **kwargs)
    monkeypatch.setattr(sizing, "resolve_steps", spy)
    for budget in ([], ["--time_budget_min=8"]):
        assert train_encoder.main([f"--data={train_beir}", f"--model={tiny_model}", f"--out={tmp_path / str(len(seen))}",
                                   "--max_steps=2", "--device=cpu", "--tensorboard=false", "--test_eval=false",
                                   *budget]) == 0
    assert seen == [train_encoder.AUTO["cpu"]["whole_within_min"], 0.0] and seen[0] > train_encoder.AUTO["cpu"]["time_budget_min"]


def test_val_evaluations_keep_to_their_share_of_the_budget():
    assert sizing.val_evals(10, 30.0, 4) == 3  # 15% of 600 s: 90 s, three evaluations of 30 s
    assert sizing.val_evals(10, 200.0, 4) == 1  # the last step's is never dropped
    assert sizing.val_evals(0, 200.0, 4) == 4  # no budget: as many as the table says
    cfg = encoder_cfg("--time_budget_min=10", "--epochs=1")
    sizing.resolve_steps(cfg, train_encoder.AUTO["cpu"], 100, lambda: None, lambda: 200.0, 4, 1)
    assert cfg.eval_every == 0  # one evaluation: at the end, not at step 0


def test_a_cpu_run_measures_its_recipes_and_saves_the_one_it_chose(train_beir, tiny_model, tmp_path, monkeypatch,
                                                                  capsys):
    """Step times faked as passage length x documents a query (the real ones are too quick to tell
    apart): the budget fits an epoch at 32 tokens and 2 negatives, not at 64."""
    from test_train_encoder import mine_dense
    mined = mine_dense(train_beir, tiny_model, tmp_path / "mined")
    cost = {}
    real = train_encoder.forward_backward

    def counting(cfg, model, encoder, chunks, *args):
        q, d = chunks[0]
        cost["s"] = encoder.max_length["passage"] * len(d["input_ids"]) / len(q["input_ids"]) * 1e-3
        return real(cfg, model, encoder, chunks, *args)

    def fake_time(step, repeats=2):
        step()
        return cost["s"]
    monkeypatch.setattr(train_encoder, "forward_backward", counting)
    monkeypatch.setattr(sizing, "time_step", fake_time)
    monkeypatch.setattr(train_encoder, "estimate_eval_seconds", lambda *args: 0.0)
    monkeypatch.setitem(train_encoder.AUTO["cpu"], "recipes", [(64, 2), (32, 2), (32, 1)])
    out = tmp_path / "run"
    assert train_encoder.main([f"--data={train_beir}", f"--model={tiny_model}", f"--out={out}", f"--train_file={mined}",
                               "--batch_size=8", "--epochs=1", "--time_budget_min=0.0133", "--device=cpu",
                               "--tensorboard=false", "--test_eval=false", "--val_docs_random=8",
                               "--val_docs_bm25=4"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    # 6 steps: 0.38 s at 32/1, 0.58 s at 32/2, 1.15 s at 64/2: the budget of 0.8 s fits the second
    assert "recipe: 32-token passages, 2 hard negatives, the richest that fits" in printed
    assert "richer: 64-token passages, 2 hard negatives (0.2 s a step" in printed
    assert (saved["max_passage_length"], saved["hard_negatives"]) == (32, 2)
