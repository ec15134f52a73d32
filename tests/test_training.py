"""common/training.py: optimiser groups, schedule, precision choice, checkpoint files."""
import math
import os

import pytest
import torch

from common.models import BiEncoder
from common.run import UserError
from common.training import autocast_dtype, keep_freed_memory, load_state, lr_at, param_groups, save_checkpoint


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
    # 64 MB is 16k pages of 4 KiB: faulted in on every allocation, or at most once when kept
    assert plain > 5 * 10_000 and kept < plain / 4


def test_cpu_trains_in_fp32_unless_asked():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == torch.float32
    assert autocast_dtype("bf16", cpu) == torch.bfloat16


def test_checkpoint_is_replaced_whole_or_not_at_all(tiny_model, tmp_path, monkeypatch):
    encoder = BiEncoder.from_pretrained(tiny_model)
    save_checkpoint(tmp_path / "last", encoder, {"step": 1})
    assert load_state(tmp_path / "last")["step"] == 1

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last", encoder, {"step": 2})
    monkeypatch.undo()
    assert load_state(tmp_path / "last")["step"] == 1  # the previous checkpoint, intact
    assert sorted(os.listdir(tmp_path)) == ["last"]  # no half-written directory left behind
    (tmp_path / "last" / "trainer_state.pt").write_bytes(b"truncated")
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_state(tmp_path / "last")
    with pytest.raises(UserError, match="no trainer_state.pt"):
        load_state(tmp_path)


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
