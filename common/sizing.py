"""Sizes that follow the data and the machine.

A script's `auto` settings (common.config.Auto) resolve here, before any training step: from a
table of what suits each kind of machine (a CPU trains a MiniLM two orders of magnitude slower
than a GPU), from the data (how many queries, how large a corpus), and from a measured step time
when a time budget has to be met. The script prints the result as its plan and saves it in the
run's config.json, so a rerun with those values repeats the run.
"""
import dataclasses
import math
import time

import torch.distributed as dist

from common.config import ConfigError, is_auto
from common.run import UserError, warn
from common.training import rng_state, set_rng_state


def machine(device):
    """"cpu" or "gpu": the key of a script's AUTO table."""
    return "gpu" if device.type == "cuda" else "cpu"


def resolve(cfg, table, **derived):
    """Set each setting of cfg that is still "auto" and has a value in `derived` (worked out by the
    script from the data) or else in `table` (the machine's row). Returns the names resolved; the
    others stay "auto" for a later step (the step count waits for a measured step)."""
    done = []
    for key, value in vars(cfg).items():
        if is_auto(value) and (key in derived or key in table):
            setattr(cfg, key, derived[key] if key in derived else table[key])
            done.append(key)
    return done


def batch_size(cfg, n, default, world, where):
    """Resolve batch_size when auto: `default`, or for a dataset too small for it half that, or half the
    queries when fewer (an epoch of at least two steps), rounded down to a multiple of the ranks. A
    batch set by hand that the data cannot fill is an error naming the fix."""
    if is_auto(cfg.batch_size):
        cfg.batch_size = default
        if n < 2 * default:
            cfg.batch_size = max(world, min(n // 2, default // 2) // world * world)
            warn(f"{where}: {n} training queries, too few for batches of {default}: training at "
                 f"batch_size={cfg.batch_size}")
    if n < cfg.batch_size:
        raise UserError(f"{where}: {n} training queries, fewer than batch_size={cfg.batch_size}; lower --batch_size "
                        f"(to {max(1, n // 2)}, say)")


def check_batch(cfg, world, unit):
    """The batch against the ranks and the micro-batch, once it is resolved."""
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} must divide evenly over {world} ranks")
    if cfg.micro_batch_size > cfg.batch_size // world:
        raise ConfigError(f"micro_batch_size={cfg.micro_batch_size} is more than the {cfg.batch_size // world} {unit} "
                          f"each of {world} rank(s) takes per step; 0 (the default) means all of them at once")


def time_step(step, repeats=2):
    """Seconds one call of `step()` takes: the last of `repeats` calls (the first pays for warm-up:
    allocations, kernel choice)."""
    seconds = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
    return seconds


VAL_SHARE = 0.15  # of a time budget, what val evaluations may take: the rest trains


@dataclasses.dataclass
class Trial:
    """A recipe's size and what it costs here: steps an epoch, seconds a step (measured on a
    batch, or a lower bound of it), seconds a val evaluation and the memory the step peaked at (MB)."""
    recipe: tuple  # (max_passage_length, hard_negatives)
    steps_per_epoch: int
    step_seconds: float
    eval_seconds: float
    measured: bool = True
    peak_mb: float = 0.0


def val_evals(budget_min, eval_seconds, most, least=1):
    """How many val evaluations a run makes (the last step's always, step 0's second): at most `most`,
    and within VAL_SHARE of time_budget_min when there is one, but at least `least` (a run weighed against a
    bar: each evaluation is a chance to stop)."""
    if most <= 1 or budget_min <= 0 or eval_seconds <= 0:
        return most
    return max(1, least, min(most, int(VAL_SHARE * budget_min * 60 / eval_seconds)))


def steps_for_budget(budget_min, recipe_steps, steps_per_epoch, seconds_per_step, eval_seconds, evals):
    """(steps, note): the recipe's steps, or as many as fit `budget_min` minutes beside `evals` val
    evaluations of `eval_seconds` each. Never fewer than one step; the note says what was cut."""
    if budget_min <= 0:
        return recipe_steps, ""
    room = budget_min * 60 - evals * eval_seconds
    fit = max(1, int(room / max(seconds_per_step, 1e-9)))
    if fit >= recipe_steps:
        return recipe_steps, ""
    epochs = fit / max(steps_per_epoch, 1)
    if epochs < 1:
        note = (f"time_budget_min={budget_min:g} fits {fit} steps, less than one epoch ({steps_per_epoch} steps): "
                f"training {fit}; raise time_budget_min (or set max_steps) for the full recipe")
    else:
        note = (f"time_budget_min={budget_min:g} fits {fit} of the recipe's {recipe_steps} steps "
                f"({epochs:.1f} epochs)")
    return fit, note


def fits(cfg, trial, most_evals, memory_mb=0.0):
    """Whether the trial's recipe, its steps whole (max_steps, or the epochs), fits time_budget_min
    (and its step, memory_mb)."""
    if memory_mb and trial.peak_mb > memory_mb:
        return False
    steps = cfg.epochs * trial.steps_per_epoch if cfg.max_steps == "auto" else cfg.max_steps
    evals = val_evals(cfg.time_budget_min, trial.eval_seconds, most_evals)
    return steps * trial.step_seconds + evals * trial.eval_seconds <= cfg.time_budget_min * 60


def choose_recipe(cfg, candidates, measure, lower_bound, most_evals, world, memory_mb=0.0):
    """(the Trial chosen, the plan's line): the first of `candidates` [(max_passage_length,
    hard_negatives)], richest first, whose steps fit time_budget_min beside its val evaluations, or
    else the last (the cheapest, its steps cut to the budget). The last is measured first
    (`measure(recipe)` times a batch of it); a richer one is measured only when `lower_bound(recipe,
    cheapest)`, a step time it cannot beat, leaves it a chance. With several ranks, rank 0's times
    decide for all. A recipe whose step would peak above memory_mb (0: no limit) does not fit either. A
    single candidate, or no budget, takes the first unmeasured."""
    if len(candidates) == 1 or cfg.time_budget_min <= 0:
        return None, ""
    cheapest = measure(candidates[-1])
    chosen, tried = cheapest, []
    for recipe in candidates[:-1]:
        bound = lower_bound(recipe, cheapest)
        if not agree(fits(cfg, bound, most_evals, memory_mb), world):
            why = "memory" if memory_mb and bound.peak_mb > memory_mb else "time"
            tried.append(f"{describe_recipe(recipe)} (cannot fit: {why})")
            continue
        trial = measure(recipe)
        if agree(fits(cfg, trial, most_evals, memory_mb), world):
            chosen = trial
            break
        tried.append(f"{describe_recipe(recipe)} ({trial.step_seconds:.1f} s a step, {trial.peak_mb / 1024:.1f} GB: "
                     "does not fit)")
    line = (f"recipe: {describe_recipe(chosen.recipe)}, the richest that fits time_budget_min="
            f"{cfg.time_budget_min:g}" if chosen is not cheapest or fits(cfg, cheapest, most_evals) else
            f"recipe: {describe_recipe(chosen.recipe)}, the last of the recipes (none fits time_budget_min="
            f"{cfg.time_budget_min:g} whole)") + (f"; richer: {', '.join(tried)}" if tried else "")
    return chosen, line


def describe_recipe(recipe):
    length, negatives = recipe
    return f"{length}-token passages, {negatives} hard negative{'' if negatives == 1 else 's'}"


def agree(value, world):
    """Rank 0's value on every rank."""
    if world > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def resolve_steps(cfg, table, steps_per_epoch, probe_step, eval_seconds, evals, world, trial=None,
                  step_zero=True, whole_within_min=0.0, least_evals=1):
    """max_steps and eval_every, when auto: the recipe's epochs, or the steps that fit time_budget_min
    beside at most `evals` val evaluations (fewer where they would take more than VAL_SHARE of it),
    timed by running `probe_step` (the first batch forward and backward) and `eval_seconds()` (which
    times a sample of an evaluation and returns what the whole one should take), unless `trial`
    (choose_recipe's) measured both already. Epochs that take more than time_budget_min but at most
    `whole_within_min` minutes run whole, time_budget_min raised to what they take (pass it only for
    a budget the table chose, not one the user set). `least_evals`: evaluations kept however dear
    (each is a chance to stop: a run weighed against a bar). `step_zero`: the run evaluates step 0 when it
    evaluates more than once. Rank 0's count is every rank's.
    Returns {"lines": the plan's time lines, "notes": what the budget cut, "evals": how many}."""
    recipe_steps = cfg.epochs * steps_per_epoch
    lines, notes, seconds, per_eval = [], [], None, 0.0
    if cfg.max_steps == "auto":
        cfg.max_steps = recipe_steps
        if cfg.time_budget_min > 0:
            if trial is not None and trial.measured:
                seconds, per_eval = trial.step_seconds, trial.eval_seconds
            else:
                rng = rng_state()
                seconds = time_step(probe_step)
                set_rng_state(rng)  # the probe leaves the run's random draws as they were
                per_eval = eval_seconds() if evals else 0.0
            evals = val_evals(cfg.time_budget_min, per_eval, evals, min(least_evals, evals))
            whole = recipe_steps * seconds + evals * per_eval
            if cfg.time_budget_min * 60 < whole <= whole_within_min * 60:
                lines.append(f"budget: the recipe's {recipe_steps} steps whole take ~{minutes(whole)}, more than "
                             f"time_budget_min={cfg.time_budget_min:g} but within {whole_within_min:g}: not cut")
                cfg.time_budget_min = math.ceil(whole / 6) / 10
            cfg.max_steps, note = steps_for_budget(cfg.time_budget_min, recipe_steps, steps_per_epoch, seconds,
                                                   per_eval, evals)
            notes.append(note)
        cfg.max_steps = agree(cfg.max_steps, world)
        evals = agree(evals, world)
    if cfg.eval_every == "auto":
        between = evals - 1 if step_zero else evals  # step 0's is one of them
        cfg.eval_every = eval_every(cfg.max_steps, between) if between > 0 else 0
    if seconds is not None:
        lines.append(f"time: {seconds:.2f} s a step (measured on a batch) -> "
                     f"~{minutes(seconds * cfg.max_steps + evals * per_eval)} with {evals} val evaluation"
                     f"{'' if evals == 1 else 's'} of ~{minutes(per_eval)} (time_budget_min={cfg.time_budget_min:g})")
    return {"lines": lines, "notes": notes, "evals": evals}


def eval_every(total_steps, evals):
    """Steps between val evaluations so that about `evals` fall in the run (besides step 0)."""
    return max(1, math.ceil(total_steps / max(evals, 1)))


def eta_line(steps, seconds, remaining):
    """The estimate a run prints after its first steps: measured, not probed."""
    per_step = seconds / max(steps, 1)
    return (f"time: {per_step:.2f} s a step over this run's first {steps} steps -> ~{minutes(per_step * remaining)} "
            f"for the {remaining} steps left, besides val")


ETA_AFTER = 10  # steps into a run when it prints eta_line


def minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def print_plan(name, lines, notes=()):
    """The plan, before the first step: one line per fact, then what sizing had to cut."""
    print(f"plan ({name}):")
    for line in lines:
        print(f"  {line}")
    for note in notes:
        if note:
            warn(note)
