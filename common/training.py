"""What a training loop needs besides the model: the optimiser's parameter groups, the learning
rate schedule, mixed precision, checkpoints that resume exactly, the distributed set-up, and the
scaffolding both trainers' main() share around their loops (set-up, resume, the run directory and
its logs, the optimiser step, throughput, the end). The loop itself lives in each training script,
where the two differ: what a batch is and what its loss is."""
import datetime
import hashlib
import json
import math
import os
import random
import shutil
import signal
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from common import lora, model_card
from common.config import check_choice, check_range
from common.files import atomic_open, write_json
from common.models import autocast_dtype, dtype_name, pick_device, slow_autocast, why_dtype
from common.run import UserError, start_run, warn

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


def keep_freed_memory():
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    A training step on a CPU allocates and frees gigabytes of activations. By default each large
    tensor is a fresh mmap, so every step page-faults all of it in again and the kernel zeroes it,
    seconds of system time a step (bench/results/st_compare-cpu.md). With mmap off and a 1 GiB trim
    threshold the heap keeps those pages: next to no faults, for a little more peak RSS. Linux with
    glibc only: returns whether it took effect."""
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


PREVIOUS = "previous"  # the checkpoint last/ replaced: what --resume falls back to if last/ is damaged
MANIFEST = "checksums.json"


def save_checkpoint(path, model, state):
    """last/: the model directory plus trainer_state.pt and a manifest of sizes and SHA-256 sums,
    built under a temporary name and renamed into place. The checkpoint it replaces becomes
    previous/, so a crash at any moment, or a last/ damaged later, leaves one to resume from.
    A failed write (a full disk) raises UserError and leaves both as they were."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.")
    try:
        model.write(tmp)
        with open(os.path.join(tmp, STATE_FILE), "wb") as f:
            torch.save(state, f)
        sums = {os.path.relpath(os.path.join(d, name), tmp): _file_sum(os.path.join(d, name))
                for d, _, names in os.walk(tmp) for name in sorted(names)}
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(sums, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        previous = os.path.join(parent, PREVIOUS)
        if os.path.isdir(path):
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(path, previous)  # a crash between these two renames leaves previous/ to resume from
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{path}: could not write the checkpoint ({e.strerror or e}); the one before it is "
                        f"intact. Free disk space and continue with --resume") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _file_sum(path, fsync=True):
    """Size and SHA-256 of a file, fsynced on the way when saving: the rename that publishes a
    checkpoint must not reach the disk before its contents do."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(f.fileno())
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def checkpoint_problem(path):
    """Why the checkpoint at `path` cannot be resumed from, or None. Checks the manifest's sizes and
    sums (a truncated or bit-flipped file), then that trainer_state.pt loads."""
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_file):
        return f"no {STATE_FILE}"
    manifest = os.path.join(path, MANIFEST)
    if os.path.isfile(manifest):  # checkpoints from before the manifest are only load-checked
        try:
            with open(manifest, encoding="utf-8") as f:
                sums = json.load(f)
        except (OSError, ValueError):
            return f"unreadable {MANIFEST}"
        for name, want in sums.items():
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                return f"{name} is missing"
            if os.path.getsize(file) != want["bytes"]:
                return f"{name} is {os.path.getsize(file)} bytes, {want['bytes']} were written (truncated?)"
            if _file_sum(file, fsync=False)["sha256"] != want["sha256"]:
                return f"{name} does not match its SHA-256 (damaged on disk?)"
    return None


def resume_checkpoint(out_dir):
    """(checkpoint directory, trainer state) for --resume: last/, or previous/ with a message when
    last/ is missing or damaged. Leftovers of a write cut short by a crash are removed first."""
    for name in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else ():
        leftover = os.path.join(out_dir, name)
        if name.startswith(".best.old.") and not os.path.exists(os.path.join(out_dir, "best")):
            os.replace(leftover, os.path.join(out_dir, "best"))  # killed between atomic_dir's two renames
        elif name.startswith((".last.", ".best.")):  # temporary directories of an interrupted write
            shutil.rmtree(leftover, ignore_errors=True)
    problems = []
    for name in ("last", PREVIOUS):
        path = os.path.join(out_dir, name)
        problem = checkpoint_problem(path) if os.path.isdir(path) else "no checkpoint"
        if problem is None:
            try:
                # Our own file: optimiser state and RNG states are more than weights.
                state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=False)
            except Exception as e:  # a truncated file from before the manifest, or a foreign one
                problem = f"unreadable {STATE_FILE} ({type(e).__name__}: {e})"
        if problem is None:
            if problems:
                warn(f"{problems[0]}; resuming from {path} (step {state['step']}) instead")
            return path, state
        problems.append(f"{path}: {problem}")
    raise UserError(f"{out_dir}: nothing to resume from ({'; '.join(problems)}); start without --resume, or pass "
                    "--out=<the run directory whose last/ holds a checkpoint>")


def trim_log(path, step):
    """Drop the records a resumed run will write again (those after `step`) from metrics.jsonl."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # the line a kill cut short
            continue
        if record.get("step", 0) <= step:
            keep.append(line)
    with atomic_open(path) as f:
        f.writelines(keep)


def check_free_space(out_dir, model):
    """Fail before training when the disk cannot hold the checkpoints: at a save, previous/, last/ and
    the new one (weights and AdamW's two moments each, fp32) plus best/."""
    n_bytes = sum(p.numel() * 4 for p in model.parameters())
    need = n_bytes * (3 * 3 + 1)
    free = shutil.disk_usage(out_dir).free
    if free < need:
        size = lambda n: f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"  # noqa: E731
        raise UserError(f"{out_dir}: {size(free)} free, the checkpoints need about {size(need)}; free some space or "
                        "pass --out=<a directory on another disk>")


class Health:
    """Warnings a long run deserves before its metrics show it: a loss spike (loss above `spike` times
    the mean of the last `window` steps) and embedding collapse (std below `collapse` times its value
    at the first step checked). Each warns once per `window` steps, not every step."""

    def __init__(self, spike=3.0, collapse=0.2, window=50):
        self.spike, self.collapse, self.window = spike, collapse, window
        self.losses, self.first_std, self.quiet_until = [], None, {}

    def check(self, step, loss, embedding_std=None):
        warnings = []
        recent = self.losses[-self.window:]
        if len(recent) >= 10 and loss > self.spike * (sum(recent) / len(recent)):
            warnings.append(("spike", f"loss {loss:.4g} at step {step} is over {self.spike:g}x the mean of the last "
                                      f"{len(recent)} steps ({sum(recent) / len(recent):.4g}); if it keeps "
                                      "happening, lower --lr or --max_grad_norm"))
        self.losses.append(loss)
        if embedding_std is not None:
            self.first_std = self.first_std or embedding_std
            if embedding_std < self.collapse * self.first_std:
                warnings.append(("collapse", f"embedding std {embedding_std:.3g} at step {step}, down from "
                                             f"{self.first_std:.3g}: the embeddings are collapsing to one point; "
                                             "lower --lr, or raise --temperature"))
        said = []
        for kind, message in warnings:
            if step >= self.quiet_until.get(kind, 0):
                self.quiet_until[kind] = step + self.window
                warn(message)
                said.append(kind)
        return said


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
        if any_rank(self.requested, world, device):
            self.requested = self.requested or signal.SIGTERM
        return self.requested

    def restore(self):
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def stopped(self, step, out_dir, world):
        """After the loop: the old handlers back; when a signal ended the run, say where it stopped
        (rank 0), end the process group and return True."""
        self.restore()
        if not self.requested:
            return False
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"stopped by signal at step {step}; `--resume` continues from {out_dir}/last")
        if world > 1:
            dist.destroy_process_group()
        return True


def any_rank(flag, world, device):
    """Whether `flag` is true on any rank (itself in a plain run): what one rank decides, every rank does."""
    if world <= 1:
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


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


def device_memory_mb(device):
    """The memory a run's steps share: the GPU's, or the machine's RAM on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_progress(out_dir, step, total_steps, epoch, t_start, record, best):
    """training_progress.json: where a run is, for scripts and for a glance from another terminal."""
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


# ---- a run's scaffolding: what both trainers' main() does around its loop, in the order it does it

def setup(cfg, check_config, stage):
    """This process's place in the run, once the settings are checked: (rank, world, device).
    cfg.out defaults to runs/<dataset>-<model>/<stage>."""
    rank, world, ddp_device = setup_distributed()
    check_config(cfg, world)
    dataset = os.path.basename(os.path.normpath(cfg.data))
    cfg.out = cfg.out or os.path.join("runs", f"{dataset}-{os.path.basename(os.path.normpath(cfg.model))}", stage)
    return rank, world, ddp_device or pick_device(cfg.device)


def resume(cfg):
    """(checkpoint directory, trainer state) to continue from with --resume (last/, or previous/ if
    last/ is damaged), else (None, None). The `auto` settings take the values the run resolved when
    it started (its saved config), so the schedule and sizes stay what they were."""
    if not cfg.resume:
        return None, None
    checkpoint, state = resume_checkpoint(cfg.out)
    for key, value in vars(cfg).items():
        if value == "auto" and key in state["config"]:
            setattr(cfg, key, state["config"][key])
    return checkpoint, state


def run_dtype(cfg, device, state, master):
    """(torch dtype, the plan's words for it): the run's autocast, resolved before any work and saved
    as cfg.dtype. A resumed run keeps the dtype it started in (resume() put it in place of auto), and
    says so where it differs from the start's or is emulated on this machine."""
    requested = cfg.dtype
    dtype = autocast_dtype(requested, device)
    started = (state or {}).get("config", {}).get("dtype", "auto")
    why = why_dtype(requested, device)
    if started != "auto" and started != dtype_name(dtype):
        why = f"{why}; the run started in {started}"
    elif started != "auto" and state is not None:
        why = f"{why}, kept from the run's start"
    if master and slow_autocast(dtype, device):
        warn(f"dtype={dtype_name(dtype)} on a CPU without native bf16: autocast is emulated there, several "
             "times slower than fp32; --dtype=fp32 to change")
    cfg.dtype = dtype_name(dtype)
    return dtype, why


def optimizer_and_scaler(model, cfg, device, dtype, lr_scales=()):
    """AdamW over param_groups (fused: one kernel for all parameters, on CUDA and on the CPU) and the
    loss scaler fp16 needs (a no-op otherwise)."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, lr_scales), lr=cfg.lr,
                                  fused=device.type in ("cuda", "cpu"))
    return optimizer, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def restore(state, optimizer, scaler, rank, checkpoint):
    """(step, epoch, position in the epoch, best so far): a fresh run's, or a resumed one's with the
    optimiser, the scaler and this rank's RNG streams put back. The optimiser's moments leave `state`
    (on a GPU they were copied there; the CPU copy would sit in memory for the whole run)."""
    if state is None:
        return 0, 0, 0, {"metric": -1.0, "step": -1}
    optimizer.load_state_dict(state.pop("optimizer"))
    scaler.load_state_dict(state.pop("scaler"))
    set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
    if rank == 0:
        print(f"resumed from {checkpoint} at step {state['step']} (epoch {state['epoch']}, batch {state['position']})")
    return state["step"], state["epoch"], state["position"], state["best"]


def open_run(cfg, argv, model, step):
    """Rank 0's run directory: its provenance (config.json, command.txt), a disk-space check,
    metrics.jsonl (emptied for a fresh run, cut back to `step` for a resumed one) and the TensorBoard
    writer, or None with tensorboard off."""
    start_run(cfg.out, cfg, argv)
    check_free_space(cfg.out, model)
    log_file = os.path.join(cfg.out, "metrics.jsonl")
    if not cfg.resume and os.path.exists(log_file):
        os.remove(log_file)
    trim_log(log_file, step)  # what a killed run logged after its checkpoint
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(cfg.out, purge_step=step + 1 if cfg.resume else None)


def log(out_dir, record):
    with open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def log_val(cfg, writer, step, metrics, headline, improved, seconds, note="", **extra):
    """A val evaluation: one line on the terminal, a record in metrics.jsonl, scalars in TensorBoard."""
    shown = {k: metrics[k] for k in headline}
    tqdm.write(f"step {step}: val " + " ".join(f"{k} {v:.4f}" for k, v in shown.items())
               + (" (best)" if improved else "") + f" [{seconds:.0f}s{note}]")
    log(cfg.out, {"step": step, "split": "val", **metrics, "eval_seconds": seconds, **extra})
    if writer:
        for k, v in shown.items():
            writer.add_scalar(f"val/{k}", v, step)
        writer.add_scalar("time/eval_seconds", seconds, step)


def log_train(cfg, writer, progress, record, total_steps, t_start, best):
    """A training record: metrics.jsonl, TensorBoard (train/<name>, or the name itself when it has a
    group, as loss/<term> does), the progress bar and training_progress.json."""
    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
    log(cfg.out, record)
    if writer:
        for k, v in record.items():
            if k not in ("step", "epoch"):
                writer.add_scalar(k if "/" in k else f"train/{k}", v, record["step"])
    write_progress(cfg.out, record["step"], total_steps, record["epoch"], t_start, record, best)


class Throughput:
    """Examples (and tokens) per second of the training steps alone, not evaluation or saving:
    `examples_per_s` and `tokens_per_s` smoothed over recent steps for the log; summary() for the
    whole run, without its first step (warm-up: allocator, kernel choice) when there are more."""

    def __init__(self, smoothing=0.9):
        self.smoothing = smoothing
        self.steps = 0
        self.total, self.warm = [0.0, 0, 0], [0.0, 0, 0]  # seconds, examples, tokens: all steps, all but the first
        self.examples_per_s = self.tokens_per_s = 0.0

    @property
    def seconds(self):
        return self.total[0]

    def update(self, dt, examples, tokens=0):
        self.steps += 1
        for totals in (self.total, self.warm) if self.steps > 1 else (self.total,):
            totals[:] = [totals[0] + dt, totals[1] + examples, totals[2] + tokens]
        keep = self.smoothing if self.steps > 2 else 0.0  # the first step's rate is warm-up: not averaged in
        self.examples_per_s = keep * self.examples_per_s + (1 - keep) * examples / max(dt, 1e-9)
        self.tokens_per_s = keep * self.tokens_per_s + (1 - keep) * tokens / max(dt, 1e-9)

    def summary(self):
        seconds, examples, tokens = self.warm if self.steps > 1 else self.total
        return {"examples_per_s": examples / max(seconds, 1e-9), "tokens_per_s": tokens / max(seconds, 1e-9)}


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def check_finite(loss, step, out_dir):
    """Stop before the optimiser step, so the weights (and last/) stay good."""
    if not math.isfinite(loss):
        raise UserError(f"loss is {loss} at step {step}: lower --lr, or use --dtype=fp32; the last good checkpoint "
                        f"is {out_dir}/last")
    return loss


def optimizer_step(optimizer, scaler, parameters, max_grad_norm):
    """Unscale (fp16), clip to max_grad_norm (0: no clipping), step, zero the gradients. Returns the
    gradient norm before clipping."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm if max_grad_norm > 0 else float("inf"))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def save_last(cfg, model, optimizer, scaler, world, **position):
    """last/: the model and everything --resume needs: optimiser, scaler, every rank's RNG streams,
    the config and `position` (step, epoch, batch, best, and what the script adds). Every rank calls
    it (the RNG states are gathered); rank 0 writes."""
    state = dict(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), config=vars(cfg),
                 rng=all_rng_states(world), **position)
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_checkpoint(os.path.join(cfg.out, "last"), model, state)


def summary(dataset, step, total_steps, best, t_start, throughput, device):
    """The start of metrics.json: how far the run went, what val kept, how fast it trained."""
    return {"dataset": dataset, "steps": step, "total_steps": total_steps, "best_step": best["step"],
            "val": best.get("val"), "train_seconds": time.time() - t_start, **throughput.summary(),
            "peak_memory_mb": peak_memory_mb(device)}


def finish(cfg, summary, writer, world, hparams_test=None):
    """metrics.json and the TensorBoard hparams table (rank 0: `summary` is None on the others), then
    the process group's end."""
    if summary is not None:
        write_json(os.path.join(cfg.out, "metrics.json"), summary)
        if writer:
            log_hparams(writer, cfg, {**summary, "test": hparams_test or summary.get("test")})
            writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


LORA_SAVES = ("merged", "adapter")


def check_lora(cfg):
    check_range(cfg, "lora_r", 0)
    check_range(cfg, "lora_alpha", 0, above=True)
    check_range(cfg, "lora_dropout", 0, 1)
    check_choice(cfg, "lora_save", LORA_SAVES)
    if cfg.lora_r and not cfg.lora_targets:
        raise UserError("lora_r > 0 needs lora_targets: the names of the linear layers to adapt (query, value, ...)")


def setup_lora(model, cfg, trainable=(), master=True):
    """LoRA on the trunk when lora_r > 0 (a resumed checkpoint comes back wrapped already), the
    parameters whose names hold a part in `trainable` (a reranker's fresh head) trained whole, and
    best/ saved merged or as the adapter. Says what trains."""
    model.save_merged = cfg.lora_save == "merged"
    if not cfg.lora_r:
        return
    if model.lora is None:
        try:
            model.add_lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        except ValueError as e:
            raise UserError(str(e)) from None
    for name, p in model.named_parameters():
        if any(part in name for part in trainable):
            p.requires_grad_(True)
    if master:
        total = sum(p.numel() for p in model.parameters())
        print(f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha:g} on {len(lora.layers(model))} layers: "
              f"{lora.trainable_parameters(model):,} of {total:,} parameters train")


def write_card(model_dir, kind, cfg, best, total_steps, test=None):
    """best/README.md (common/model_card.py): the recipe and what val (and, at the end, test) measured."""
    model_card.write(model_dir, model_card.render(kind, vars(cfg), val=best.get("val"), test=test,
                                                  step=best.get("step") if best.get("val") else None,
                                                  steps=total_steps, commit=model_card.run_commit(cfg.out)))
