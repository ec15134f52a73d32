"""common/training.py: optimiser groups, schedule, precision choice, checkpoint files."""
import json
import math
import os
import shutil

from types import SimpleNamespace

import pytest
import torch

from common import models, training
from common.models import BiEncoder, autocast_dtype, why_dtype
from common.run import UserError
from common.training import (Health, check_free_space, keep_freed_memory, lr_at, param_groups, resume, resume_checkpoint,
                             run_dtype, save_checkpoint, trim_log)


def test_no_weight_decay_on_biases_and_layernorm(tiny_model):
    encoder = BiEncoder.from_pretrained(tiny_model)
    decay, no_decay = param_groups(encoder, 0.01)
    names = {id(p): n for n, p in encoder.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in encoder.named_parameters()
                                                         if n.endswith("bias") or "LayerNorm" in n}
    assert all("LayerNorm" not in names[id(p)] and not names[id(p)].endswith("bias") for p in decay["params"])


def test_warmup_then_linear_or_cosine_decay():
    assert [lr_at(s, 1.0, 4, 10) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 1.0, 4, 10) == 1.0
    assert lr_at(7, 1.0, 4, 10) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 4, 10) == 0.0
    assert lr_at(7, 1.0, 4, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(9, 2.0, 0, 10, "constant") == 2.0


def test_keep_freed_memory_stops_the_page_faults_of_reallocating(tmp_path):
    """Large tensors freed and allocated again come from the heap, not fresh zeroed pages from the OS.
    A child process: the setting is process-wide."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from common.training import keep_freed_memory\n"
        "def faults():\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(5):\n"
        "        x = torch.ones(64 * 2**20 // 4)\n"  # 64 MB, above glibc's mmap threshold
        "        del x\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
        "plain = faults()\n"
        "print(keep_freed_memory(), plain, (faults(), faults())[1])\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True).stdout.split()
    if out[0] != "True":
        pytest.skip("not Linux with glibc")
    plain, kept = int(out[1]), int(out[2])
    # 64 MB is 16k pages of 4 KiB: faulted in on every one of the 5 allocations, or once or twice when kept
    # (twice seen with the full test suite running: the heap trimmed once between the two calls)
    assert plain > 5 * 10_000 and kept <= 2 * 16_384 < plain / 2


ZEN4 = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}  # as /proc/cpuinfo lists them
AVX2 = {"avx2", "fma", "sse4_2"}


def test_auto_is_bf16_on_a_cpu_with_native_bf16_and_fp32_on_one_without():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu, ZEN4) == torch.bfloat16
    assert autocast_dtype("auto", cpu, {"amx_bf16", "amx_tile"}) == torch.bfloat16  # Sapphire Rapids
    assert autocast_dtype("auto", cpu, AVX2) == torch.float32
    assert autocast_dtype("auto", cpu, set()) == torch.float32  # no /proc/cpuinfo (macOS, Windows)
    assert autocast_dtype("fp32", cpu, ZEN4) == torch.float32 and autocast_dtype("bf16", cpu, AVX2) == torch.bfloat16
    assert why_dtype("auto", cpu, ZEN4) == "bf16: this CPU has AVX512_BF16"
    assert why_dtype("auto", cpu, AVX2).startswith("fp32: no native bf16")
    assert "slower than fp32" in why_dtype("bf16", cpu, AVX2) and "slower" not in why_dtype("bf16", cpu, ZEN4)
    assert "slower than fp32" in why_dtype("fp16", cpu, ZEN4)  # no CPU here computes fp16 natively


def test_a_resumed_run_keeps_the_dtype_it_started_in_or_says_it_changed(monkeypatch, capsys):
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_flags", lambda: ZEN4)
    cfg = SimpleNamespace(dtype="auto", resume=False)
    dtype, why = run_dtype(cfg, cpu, resume(cfg)[1], True)
    assert dtype == torch.bfloat16 and cfg.dtype == "bf16" and why == "bf16: this CPU has AVX512_BF16"
    saved = {"config": dict(vars(cfg))}  # the config a checkpoint keeps: auto resolved

    # Resumed on a CPU without native bf16: the run keeps bf16, and warns that it is emulated here.
    monkeypatch.setattr(models, "cpu_flags", lambda: AVX2)
    monkeypatch.setattr(training, "resume_checkpoint", lambda out: ("last", saved))
    cfg = SimpleNamespace(dtype="auto", resume=True, out="run")
    dtype, why = run_dtype(cfg, cpu, resume(cfg)[1], True)
    assert dtype == torch.bfloat16 and cfg.dtype == "bf16" and "kept from the run's start" in why
    assert "emulated" in capsys.readouterr().err
    # Told otherwise, it changes, and the plan says from what.
    cfg = SimpleNamespace(dtype="fp32", resume=True, out="run")
    dtype, why = run_dtype(cfg, cpu, resume(cfg)[1], True)
    assert dtype == torch.float32 and why == "fp32; the run started in bf16"
    # A run saved before dtypes were resolved ("auto" in its config) resolves for this machine.
    monkeypatch.setattr(training, "resume_checkpoint", lambda out: ("last", {"config": {"dtype": "auto"}}))
    cfg = SimpleNamespace(dtype="auto", resume=True, out="run")
    assert run_dtype(cfg, cpu, resume(cfg)[1], True)[0] == torch.float32


def test_checkpoint_is_replaced_whole_or_not_at_all(tiny_model, tmp_path, monkeypatch):
    encoder = BiEncoder.from_pretrained(tiny_model)
    save_checkpoint(tmp_path / "last", encoder, {"step": 1})
    save_checkpoint(tmp_path / "last", encoder, {"step": 2})
    assert resume_checkpoint(tmp_path)[1]["step"] == 2
    assert torch.load(tmp_path / "previous" / "trainer_state.pt", weights_only=False)["step"] == 1

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match="No space left on device.*the one before it is intact"):
        save_checkpoint(tmp_path / "last", encoder, {"step": 3})
    monkeypatch.undo()
    assert resume_checkpoint(tmp_path)[1]["step"] == 2  # the checkpoints before, intact
    assert sorted(os.listdir(tmp_path)) == ["last", "previous"]  # no half-written directory left behind


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[:len(data) // 2]
    else:  # one flipped bit, same size: only the checksum sees it
        data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("file,how", [("trainer_state.pt", "truncate"), ("model.safetensors", "truncate"),
                                      ("model.safetensors", "flip"), ("trainer_state.pt", "flip")])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tiny_model, tmp_path, capsys, file, how):
    encoder = BiEncoder.from_pretrained(tiny_model)
    for step in (1, 2):
        save_checkpoint(tmp_path / "last", encoder, {"step": step})
    damage(tmp_path / "last" / file, how)
    path, state = resume_checkpoint(tmp_path)
    assert (path, state["step"]) == (str(tmp_path / "previous"), 1)
    said = capsys.readouterr().err
    assert f"{tmp_path / 'last'}: {file}" in said and "resuming from" in said and "(step 1)" in said
    damage(tmp_path / "previous" / file, how)
    with pytest.raises(UserError, match="nothing to resume from.*last.*previous.*start without --resume"):
        resume_checkpoint(tmp_path)


def test_a_crash_between_the_renames_or_mid_write_still_resumes(tiny_model, tmp_path):
    encoder = BiEncoder.from_pretrained(tiny_model)
    save_checkpoint(tmp_path / "last", encoder, {"step": 1})
    save_checkpoint(tmp_path / "last", encoder, {"step": 2})
    os.rename(tmp_path / "last", tmp_path / ".last.abc123")  # killed after last/ became previous/: a half
    assert resume_checkpoint(tmp_path)[1]["step"] == 1        # temporary, no last/
    assert sorted(os.listdir(tmp_path)) == ["previous"]  # the leftover temporary is gone
    encoder.save(tmp_path / "best")
    os.rename(tmp_path / "best", tmp_path / ".best.old.x1")  # killed between best/'s two renames: the old
    (tmp_path / ".best.y2").mkdir()                          # one aside, the new one a temporary
    resume_checkpoint(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["best", "previous"] and (tmp_path / "best" / "model.safetensors").exists()
    with pytest.raises(UserError, match="nothing to resume from"):
        resume_checkpoint(tmp_path / "elsewhere")


def test_trim_log_drops_what_a_killed_run_logged_after_its_checkpoint(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    trim_log(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_a_disk_too_small_for_the_checkpoints_fails_before_training(tiny_model, tmp_path, monkeypatch):
    encoder = BiEncoder.from_pretrained(tiny_model)
    check_free_space(tmp_path, encoder)  # plenty here
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"0.0 MiB free, the checkpoints need about [\d.]+ MiB"):
        check_free_space(tmp_path, encoder)


def test_health_warns_of_a_loss_spike_and_embedding_collapse_once_per_window(capsys):
    health = Health(window=20)
    said = [health.check(step, 1.0 + 0.01 * (step % 3), 0.05) for step in range(30)]
    assert not any(said)  # a noisy but steady loss is fine
    assert health.check(30, 10.0, 0.05) == ["spike"]
    assert health.check(31, 10.0, 0.05) == []  # said once; not again inside the window
    assert health.check(32, 1.0, 0.005) == ["collapse"]
    assert "over 3x the mean" in capsys.readouterr().err


def test_param_groups_scale_the_named_parts():
    import torch

    from common.training import param_groups

    model = torch.nn.Sequential()
    model.add_module("trunk", torch.nn.Linear(4, 4))
    model.add_module("classifier", torch.nn.Linear(4, 1))
    groups = param_groups(model, 0.01, [("classifier", 50.0)])
    by_key = {(g["weight_decay"], g["lr_scale"]): [p.shape for p in g["params"]] for g in groups}
    assert by_key == {(0.01, 1.0): [(4, 4)], (0.0, 1.0): [(4,)], (0.01, 50.0): [(1, 4)], (0.0, 50.0): [(1,)]}
    assert {g["lr_scale"] for g in param_groups(model, 0.01)} == {1.0}


def test_throughput_leaves_the_first_step_out_and_smooths_the_rest():
    from common.training import Throughput

    meter = Throughput(smoothing=0.5)
    meter.update(10.0, 32, 3200)  # warm-up: ten times slower
    assert meter.summary() == {"examples_per_s": 3.2, "tokens_per_s": 320.0}  # one step: all there is
    meter.update(1.0, 32, 3200)
    assert meter.examples_per_s == 32.0  # the warm-up rate is not averaged in
    meter.update(2.0, 32, 3200)
    assert meter.examples_per_s == 0.5 * 32 + 0.5 * 16
    assert meter.summary() == {"examples_per_s": 64 / 3.0, "tokens_per_s": 6400 / 3.0}
    assert (meter.steps, meter.seconds) == (3, 13.0)
