"""Run directories and their provenance, and the one-line error exit every script shares. Below every
other module of common/: it imports none but files.py."""
import json
import os
import shlex
import subprocess
import sys

from common.files import atomic_open, write_json


class UserError(Exception):
    """Bad input a user can fix; scripts print it as one line instead of a stack trace. Every other such
    error (common.config.ConfigError, common.data.DataError, common.models.ModelNotFound) is one of these."""


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def start_run(out_dir, cfg, argv):
    """Create the run directory and record what produced it: config, command line, git commit."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{out_dir}: output directory is not writable ({e.strerror}); pass --out=DIR") from None
    write_json(os.path.join(out_dir, "config.json"), vars(cfg))
    with atomic_open(os.path.join(out_dir, "command.txt")) as f:
        f.write(" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv[:1], *argv]) + "\n")
        f.write(f"git {git_commit()}\n")
    return out_dir


# Under torchrun: rank 0's cache_dir, which every rank shares (set by common.retrievers.join_ranks, which
# moves the other ranks' `out` to scratch directories).
SHARED_CACHE = ""


def cache_dir(cfg):
    """Where a run keeps what its sibling runs reuse (corpus embeddings, BM25): cfg.cache_dir when the
    script has one and it is set, else <out>/../.cache, shared by every stage of one pipeline."""
    return (getattr(cfg, "cache_dir", "") or SHARED_CACHE
            or os.path.join(os.path.dirname(os.path.abspath(cfg.out)), ".cache"))


def trained_on(model, data):
    """Whether `model` is a training run's checkpoint (best/, last/) whose run trained on `data` (its
    config.json beside it names that directory, or one of its name): such an encoder has seen data's
    train queries, and its choices rest on val alone."""
    run = os.path.dirname(os.path.normpath(model)) if model else ""
    try:
        with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
            trained = json.load(f).get("data")
    except (OSError, ValueError, AttributeError):
        return False
    try:  # best/ kept at step 0 (or training not run) is the model training started from: it saw nothing
        with open(os.path.join(run, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        if os.path.basename(os.path.normpath(model)) == "best" and metrics.get("best_step", metrics.get("steps")) == 0:
            return False
    except (OSError, ValueError, AttributeError):
        pass
    # by name: a relative path was relative to where the run ran (in doubt, val alone: the choice as it was)
    return bool(trained) and os.path.basename(os.path.normpath(trained)) == os.path.basename(os.path.normpath(data))


def cli(main):
    """Run main(sys.argv[1:]); known user errors become one line on stderr and exit code 2."""
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
