"""What a training loop needs besides the model: the optimiser's parameter groups, the learning
rate schedule, mixed precision, checkpoints that resume exactly, and the distributed set-up.
The loop itself lives in each training script."""
import contextlib
import datetime
import math
import os
import random
import signal

import numpy as np
import torch
import torch.distributed as dist

from common.data import atomic_dir
from common.run import UserError

STATE_FILE = "trainer_state.pt"


def param_groups(model, weight_decay, lr_scales=()):
    """AdamW groups: matrices decay; biases and LayerNorm weights (every parameter under 2-D) do not.
    `lr_scales` [(name part, scale)]: parameters whose name holds the part train at lr * scale (the
    loop sets each group's lr to the schedule's lr times its "lr_scale")."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scale_of = lambda name: next((s for part, s in lr_scales if part in name), 1.0)  # noqa: E731
    groups = {}
    for name, p in named:
        key = (p.dim() >= 2, scale_of(name))
        groups.setdefault(key, {"params": [], "weight_decay": weight_decay if key[0] else 0.0, "lr_scale": key[1]})
        groups[key]["params"].append(p)
    return list(groups.values())


def lr_at(step, base_lr, warmup_steps, total_steps, schedule="linear"):
    """Linear warmup over warmup_steps, then linear or cosine decay to 0 at total_steps (or constant)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (1.0 - progress)


def autocast_dtype(name, device):
    """torch dtype for `dtype:` auto | fp32 | bf16 | fp16. Auto is bf16 on a GPU that has it and
    fp32 elsewhere: on CPUs without AMX bf16 autocast is several times slower than fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory():
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    A training step on a CPU allocates and frees gigabytes of activations. By default each large
    tensor is a fresh mmap, so every step page-faults all of it in again and the kernel zeroes it:
    about 1.2M minor faults and 2-3 s of system time per step of MiniLM at batch 32 on 2 cores
    (user time ~34 s). With mmap off and a 1 GiB trim threshold the heap keeps those pages (faults
    ~0; peak RSS +5%). Linux with glibc only: returns whether it took effect."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**30))


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, encoder, state):
    """Model directory plus trainer_state.pt, swapped into place whole: a crash mid-write leaves
    the previous checkpoint as it was."""
    with atomic_dir(path) as tmp:
        encoder.write(tmp)
        with open(os.path.join(tmp, STATE_FILE), "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    return path


def load_state(path):
    file = os.path.join(path, STATE_FILE)
    if not os.path.isfile(file):
        raise UserError(f"{path}: no {STATE_FILE} to resume from; start without --resume, or pass the "
                        "run directory whose last/ holds a checkpoint")
    try:
        # Our own file: optimiser state and RNG states are more than weights.
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{file}: unreadable checkpoint ({type(e).__name__}: {e}); delete last/ to start "
                        "over") from None


def setup_distributed():
    """(rank, world size, device) under torchrun; (0, 1, None) for a plain run."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1, None
    local_rank = int(os.environ["LOCAL_RANK"])
    # Rank 0 evaluates on val and re-mines negatives while the others wait at the next collective;
    # encoding a large corpus takes longer than the default 10-minute timeout.
    timeout = datetime.timedelta(hours=3)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=timeout)
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank)
    dist.init_process_group("gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def gather_with_grad(x, rank, world):
    """Every rank's `x`, concatenated in rank order. Only this rank's own slice carries a gradient;
    scaling the loss by `world` makes DDP's gradient average equal the single-process gradient."""
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts)


class StopSignals:
    """Ctrl-C or SIGTERM asks the loop to finish the step in flight, save last/ and exit; a second
    Ctrl-C stops at once. `requested` is the signal number, or None."""

    def __init__(self):
        self.requested = None
        self._old = {s: signal.signal(s, self._request) for s in (signal.SIGINT, signal.SIGTERM)}

    def _request(self, signum, frame):
        self.requested = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def agree(self, world, device):
        """Under torchrun a signal reaches ranks at different moments; they must stop at the same step."""
        if world > 1:
            flag = torch.tensor([1 if self.requested else 0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.requested = self.requested or (signal.SIGTERM if flag.item() else None)
        return self.requested

    def restore(self):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def all_rng_states(world):
    """This process's RNG states, or under torchrun every rank's (each resumes its own dropout stream)."""
    state = rng_state()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, state)
        return gathered
    return state


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_progress(out_dir, step, total_steps, epoch, t_start, record, best):
    """training_progress.json: where a run is, for scripts and for a glance from another terminal."""
    import time

    from common.run import write_json

    write_json(os.path.join(out_dir, "training_progress.json"), {
        "step": step, "total_steps": total_steps, "epoch": epoch, "elapsed_s": time.time() - t_start,
        "eta_s": (time.time() - t_start) / max(1, step) * (total_steps - step), "last": record,
        "best": {k: v for k, v in best.items() if k != "val"}})


def log_hparams(writer, cfg, summary, metrics=("ndcg@10", "recall@100")):
    """TensorBoard's hparams table: every setting beside the final val and test metrics."""
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(cfg).items()}
    final = {f"hparam/{split}_{k}": summary[split][k] for split in ("val", "test") if summary.get(split)
             for k in metrics if k in summary[split]}
    writer.add_hparams(hparams, final, run_name="hparams")
