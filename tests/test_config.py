import importlib
import os
import subprocess
import sys

import pytest

from common.config import ConfigError, check_choice, load_config

DEFAULTS = dict(lr=1e-4, steps=10, name="x", amp=False, ks=[1, 10], tags=["a"])


def test_defaults_then_yaml_then_cli(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("steps: 20\nname: fromyaml\n")
    cfg = load_config(DEFAULTS, [str(yml), "--steps=30", "--lr", "0.5", "--amp"])
    assert (cfg.steps, cfg.name, cfg.lr, cfg.amp) == (30, "fromyaml", 0.5, True)


def test_lists_and_dashes():
    cfg = load_config(DEFAULTS, ["--ks=5,20", "--tags=b,c"])
    assert cfg.ks == [5, 20] and cfg.tags == ["b", "c"]
    assert load_config({"rerank_depth": 1}, ["--rerank-depth=7"]).rerank_depth == 7


@pytest.mark.parametrize("argv, needle", [
    (["--stpes=3"], "did you mean --steps"),
    (["--steps=ten"], "not a int"),
    (["--steps=1.5"], "not a int"),
    (["--amp=maybe"], "not a bool"),
    (["--lr"], "needs a value"),
    (["notes.txt"], "neither a configs/"),
])
def test_bad_command_lines(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(DEFAULTS, argv)


def test_bad_yaml_names_the_file(tmp_path):
    yml = tmp_path / "bad.yaml"
    yml.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:1: unknown key 'stepz'"):
        load_config(DEFAULTS, [str(yml)])
    yml.write_text("name: a\nsteps: [1, 2]\n")
    with pytest.raises(ConfigError, match="bad.yaml:2: steps"):
        load_config(DEFAULTS, [str(yml)])
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(DEFAULTS, [str(tmp_path / "missing.yaml")])


def test_check_choice():
    cfg = load_config(DEFAULTS, ["--tags=a,zz"])
    with pytest.raises(ConfigError, match="tags='zz'"):
        check_choice(cfg, "tags", ("a", "b"))


def test_shipped_configs_load_with_their_script():
    """Every configs/*.yaml names only keys its script knows, with the right types."""
    import glob
    import os

    import build_index
    import evaluate
    import mine_negatives
    import prepare_data
    import train_encoder
    import train_reranker

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scripts = {"encoder-": train_encoder, "reranker-": train_reranker, "mine-": mine_negatives,
               "bm25-": evaluate, "eval-": evaluate, "index-": build_index, "prepare-": prepare_data}
    paths = sorted(glob.glob(os.path.join(root, "configs", "*.yaml")))
    assert paths
    for path in paths:
        script = next(s for prefix, s in scripts.items() if os.path.basename(path).startswith(prefix))
        # the Makefile passes the trainers their mined file after the yaml
        cfg = load_config(script.DEFAULTS, [path] + (["--train_file=mined.jsonl"] if script in (train_encoder, train_reranker)
                                                    else []))
        if script in (train_encoder, train_reranker):
            script.check_config(cfg, world=1)
        elif script in (mine_negatives, prepare_data):
            script.check_config(cfg)


@pytest.mark.parametrize("dir_var, args_var", [("ENCODER_DIR", "TRAIN_ARGS"), ("MINE_DIR", "MINE_ARGS"),
                                               ("RERANKER_DIR", "RERANKER_ARGS")])
def test_make_reruns_a_stage_when_only_its_args_change(tmp_path, dir_var, args_var):
    # The stage's target depends on make-args.txt, which must change exactly when the args do.
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stamp = tmp_path / "make-args.txt"

    def make(args):
        subprocess.run(["make", "-s", "-C", root, f"{dir_var}={tmp_path}", f"{args_var}={args}", str(stamp)],
                       check=True)
        return stamp.read_text(), stamp.stat().st_mtime_ns

    first = make("--lr=5e-5")
    os.utime(stamp, ns=(1, 1))  # an old stamp: rewriting it would show as a new mtime
    assert make("--lr=5e-5") == (first[0], 1)
    changed = make("--lr=1e-4")
    assert changed[0] != first[0] and changed[1] > 1


def make_dry_run(*args):
    """The commands `make -n` would run (PY=true: nothing executes), one string each, continuation lines joined."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["make", "-n", "-C", root, *args, "PY=true"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.replace("\\\n", " ").splitlines() if line.startswith("true ")]


def test_config_picks_each_stages_yaml(tmp_path):
    """CONFIG=<name> hands every stage its configs/<stage>-<name>.yaml (dry run: nothing executes)."""
    lines = make_dry_run("pipeline", "CONFIG=smoke", "DATA=smoke", "DATASET=smoke", f"MODEL={tmp_path}/m", "RERANKER=yes")
    for stage, script in [("mine", "mine_negatives.py"), ("reranker", "train_reranker.py"),
                          ("encoder", "train_encoder.py")]:
        assert any(line.startswith(f"true {script} ") and f"configs/{stage}-smoke.yaml" in line
                   for line in lines), f"{stage}: {lines}"
    assert any("--results_csv=runs/results.csv" in line for line in lines)


def test_every_stage_reads_what_the_stage_before_it_wrote(tmp_path):
    """make pipeline on a dataset with no config of its own: each stage's output is an input of a later
    stage, and the trainers' defaults use it (the encoder draws hard negatives from the mined file)."""
    import train_encoder
    from common.config import load_config

    run = "runs/fresh-m"
    lines = make_dry_run("pipeline", f"DATA={tmp_path}/fresh", f"MODEL={tmp_path}/m", "RERANKER=yes")  # as on a GPU
    assert not any("configs/" in line for line in lines), lines  # the defaults, no config file
    step = {name: next(line for line in lines if line.startswith(f"true {script}") and all(w in line for w in words))
            for name, script, words in [
                ("mine", "mine_negatives.py", [f"--out={run}/mine"]),
                ("encoder", "train_encoder.py", []), ("bar", "build_index.py", [f"--out={run}/zero-shot"]),
                ("index", "build_index.py", [f"--out={run}/index"]),
                ("baseline", "evaluate.py", [f"--out={run}/baseline-val"]),
                ("mine-reranker", "mine_negatives.py", [f"--out={run}/mine-reranker"]),
                ("reranker", "train_reranker.py", []), ("final", "evaluate.py", ["--split=test", "--index="]),
                ("compare", "evaluate.py", ["--compare="])]}
    assert f"--train_file={run}/mine/train.jsonl" in step["encoder"]
    # the bar first: the zero-shot encoder's index, whose mix the baseline columns serve and training weighs each
    # step against; then the fine-tuned encoder's, the bar's files where it does not beat it beyond noise
    assert f"--model={tmp_path}/m" in step["bar"] and f"--choices={run}/zero-shot" in step["baseline"]
    assert lines.index(step["bar"]) < lines.index(step["baseline"]) < lines.index(step["encoder"])
    assert f"--bar={run}/zero-shot" in step["encoder"]
    assert f"--model={run}/encoder/best" in step["index"] and f"--baseline={run}/zero-shot" in step["index"]
    # neither remembers val: training is scored against the bar on val, the reranker chooses its fusion on val
    assert "--memory_val=false" in step["bar"] and "--memory_val=false" in step["index"]
    assert f"--index={run}/index" in step["mine-reranker"] and "--strategy=index," in step["mine-reranker"]
    assert f"--train_file={run}/mine-reranker/train.jsonl" in step["reranker"]
    assert f"--first_stage={run}/index" in step["reranker"]  # val reranks the encoder's candidates
    assert f"--index={run}/index" in step["final"] and f"--rerank={run}/reranker/best" in step["final"]
    assert "--retrievers=hybrid" in step["final"]  # the index's first stage, as it serves it
    assert f"{run}/final-test/metrics.json" in step["compare"] and f"{run}/reranker/val/metrics.json" in step["compare"]
    for split in ("val", "test"):  # the fine-tuned encoder's own columns, served or not
        assert f"{run}/fine-tuned-{split}/metrics.json" in step["compare"]
        assert any(f"--out={run}/fine-tuned-{split}" in line and "--retrievers=dense,hybrid" in line for line in lines)
    assert not any("--teacher" in line for line in lines)  # nothing in the pipeline would read its scores
    cfg = load_config(train_encoder.DEFAULTS, [f"--train_file={run}/mine/train.jsonl"])
    assert cfg.hard_negatives == "auto" and all(n > 0 for _, n in train_encoder.AUTO["cpu"]["recipes"])


def test_on_a_cpu_the_pipeline_serves_its_first_stage_without_training_a_reranker(tmp_path):
    """RERANKER=auto where torch sees no GPU (here PY=true, which sees nothing): no reranker stage, one
    line saying why, and the served column's val is the index's own record of its choice (train's memory alone)."""
    run = "runs/fresh-m"
    lines = make_dry_run("pipeline", f"DATA={tmp_path}/fresh", f"MODEL={tmp_path}/m")
    assert not any("train_reranker.py" in line or f"--out={run}/mine-reranker" in line for line in lines), lines
    final = next(line for line in lines if "evaluate.py" in line and "--split=test" in line and "--index=" in line)
    assert "--rerank" not in final
    assert not any("--split=val" in line and f"--index={run}/index" in line for line in lines)  # no val memory in it
    index = next(line for line in lines if "build_index.py" in line and f"--out={run}/index" in line)
    assert "--memory_val=false" not in index  # once val has chosen, the served index remembers it too
    compare = next(line for line in lines if "--compare=" in line)
    assert f"served={run}/index/val/metrics.json" in compare and "reranker" not in compare
    import os
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    said = subprocess.run(["make", "-n", "-C", root, "pipeline", f"DATA={tmp_path}/fresh", f"MODEL={tmp_path}/m",
                           "PY=true"], capture_output=True, text=True, check=True).stdout
    assert "reranker: not trained: no GPU here" in said


def test_adapt_trains_on_pseudo_queries_and_tests_on_the_labelled_split(tmp_path):
    """make adapt (dry run, on a dataset name no run has made): every training stage reads data/<dataset>-pseudo, each with its
    <stage>-<CONFIG>-pseudo.yaml or else <stage>-<CONFIG>.yaml; only the evaluations at the end, and the
    choice of what to serve on its val split, read the labelled directory."""
    lines = make_dry_run("adapt", "CONFIG=smoke", "DATA=smoke", "DATASET=dry-adapt", f"MODEL={tmp_path}/m")
    prepare = [line for line in lines if "--out=data/dry-adapt-pseudo" in line]
    assert len(prepare) == 1 and "--source=data/dry-adapt " in prepare[0] and "--pseudo_queries=ict,crop" in prepare[0]
    for stage, script in [("mine", "mine_negatives.py"), ("encoder", "train_encoder.py")]:
        assert any(line.startswith(f"true {script} ") and f"configs/{stage}-smoke.yaml" in line
                   and "--data=data/dry-adapt-pseudo " in line for line in lines), f"{stage}: {lines}"
    labelled = [line for line in lines if "--data=data/dry-adapt " in line]
    assert any("evaluate.py" in line and "--split=test" in line and "--model=runs/dry-adapt-pseudo-m/encoder/best" in line
               for line in labelled), lines
    # the labelled directory is read by evaluations and by build_index.py's choice on its val split, never in training
    assert all(("evaluate.py" in line or "build_index.py" in line) for line in labelled), labelled
    index = next(line for line in labelled if "build_index.py" in line and "/adapted/index" in line)
    assert "--model=runs/dry-adapt-pseudo-m/encoder/best" in index and f"--baseline={tmp_path}/m" in index
    assert any("evaluate.py" in line and "--split=test" in line and "--index=runs/dry-adapt-pseudo-m/adapted/index" in line
               for line in labelled), labelled


@pytest.mark.parametrize("splits", [("test",), ("train", "test")])
def test_a_prepared_set_without_train_or_val_still_runs_to_its_comparison(tmp_path, splits):
    """No train split (a test collection alone): nothing is mined or fine-tuned, the zero-shot encoder is
    indexed and exported, the comparison holds BM25, zero-shot and their hybrid. No val split: nothing
    is evaluated on val. (Dry run: the Makefile reads the prepared directory's splits.)"""
    data = tmp_path / "prepared"
    (data / "qrels").mkdir(parents=True)
    (data / "prepare.json").write_text("{}")
    for split in splits:
        (data / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n")
    lines = make_dry_run("pipeline", f"DATA={data}", "DATASET=dry-splits", f"DATA_DIR={data}", f"MODEL={tmp_path}/m")
    trains = "train" in splits
    assert any(line.startswith("true train_encoder.py") for line in lines) == trains, lines
    assert any(line.startswith("true mine_negatives.py") for line in lines) == trains, lines
    assert not any("--split=val" in line for line in lines), lines
    index = next(line for line in lines
                 if line.startswith("true build_index.py") and "--out=runs/dry-splits-m/index" in line)
    assert (f"--model={tmp_path}/m " in index) != trains
    compare = next(line for line in lines if "--compare=" in line)
    assert "--compare_val" not in compare and ("fine-tuned=" in compare) == trains


SCRIPTS = ["prepare_data", "mine_negatives", "train_encoder", "train_reranker", "evaluate", "build_index",
           "export_onnx", "search"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_the_usage_and_every_setting(name, capsys):
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(module.__doc__.strip().splitlines()[0])
    missing = [key for key in module.DEFAULTS if f"\n  --{key}=" not in out]
    assert not missing


def test_help_groups_and_comments_come_from_the_source():
    from common.config import Auto, ListOf, help_text

    source = '''"""doc"""
DEFAULTS = dict(
    # data
    data="d",  # where it is
    steps=Auto(int),  # how many; auto = sized
    #                   from the data
    # model: what
    # is trained
    dims=ListOf(int),
    lr=1e-4,
)
'''
    defaults = dict(data="d", steps=Auto(int), dims=ListOf(int), lr=1e-4, extra=True)
    out = help_text(defaults, "Usage: run it.", source)
    assert out.startswith("Usage: run it.")
    assert "\ndata:\n  --data=d  (str)\n      where it is\n" in out
    assert "  --steps=auto  (int or auto)\n      how many; auto = sized from the data\n" in out
    assert "\nmodel: what is trained:\n  --dims=\"\"  (comma-separated ints)\n  --lr=0.0001  (float)\n" in out
    assert "\nother:\n  --extra=True  (bool)\n" in out


def test_help_on_the_command_line_exits_zero():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "evaluate.py", "-h"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0 and "--hybrid_weight=auto  (float or auto)" in proc.stdout
    proc = subprocess.run([sys.executable, "train_encoder.py", "--max_step=3"], cwd=root, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "did you mean --max_steps?" in proc.stderr
