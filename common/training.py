"""What a training loop needs besides the model: the optimiser's parameter groups, the learning
rate schedule, mixed precision, checkpoints that resume exactly, and the distributed set-up.
The loop itself lives in each training script."""
import contextlib
import datetime
import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from common.data import atomic_dir
from common.run import UserError

STATE_FILE = "trainer_state.pt"


def param_groups(model, weight_decay):
    """AdamW groups: matrices decay; biases and LayerNorm weights (every parameter under 2-D) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


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
