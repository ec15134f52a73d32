"""What is served, and why: every choice the pipeline makes on val, made here from per-query scores.

Scripts make the candidates' val runs (build_index.py: each encoder, dense and mixed with BM25, each
memory strength; train_reranker.py: the reranker's fusions; train_encoder.py: its checkpoints) and call
one function here; what it returns goes into fusion.json with one line saying why, and every later
reader (evaluate.py, search.py, the reranker) serves that record instead of deciding again.

One rule decides them all (`select`, and RULE, which comparison.md quotes):

    A candidate is served over the base only when its mean per-query gain on val, less z standard errors,
    is above 0 (the best such bound wins), and it is kept out for the queries it cannot help only when
    it costs them beyond noise: a mean loss over 0.01 that stays a loss less 2 standard errors, on at
    least 10 such queries.

The gain is weighed over every val query, each part by its share (val is drawn as test is); the guard
protects the part a candidate cannot help (for a memory, the queries whose relevant documents no train
query found) from paying for the other part's gain, and like the gain it must be beyond noise: one
query, or a few whose loss is within noise, cannot veto (bench/results/decision-cpu.md).

The choices:
- `hybrid`: BM25's weight in the first stage (convex weights, RRF, or dense alone), z = HYBRID_Z;
- `memory`: the index memory's strengths and the mix served with them, z = MEMORY_Z, guarded;
- `encoder`: the fine-tuned encoder over the zero-shot bar, z = ENCODER_Z, guarded;
- `rerank`: the reranker's fusion weight and depth, z = RERANK_Z;
- `pooled`: which queries a choice is made on (val, or train + val where val is small);
- `can_judge` and `keep_training`: whether training can beat the bar, and whether to go on.
"""
import numpy as np

from common import fusion
from common.metrics import evaluate_run
from common.significance import mean_and_se

# How many standard errors a gain must clear. The reranker's and the memory's grids hold several times
# the candidates of the hybrid's, so their best bound is the more inflated by luck.
HYBRID_Z, MEMORY_Z, RERANK_Z, ENCODER_Z = 1.0, 2.0, 2.0, 1.0
# A bound this close to 0 is 0: a gain on one query of n (the rest tied) has a standard error equal to the gain, so
# at z = 1 its bound is 0 up to rounding, and one query is not beyond noise.
TIE = 1e-9
# The guard: a loss on the guarded queries vetoes a candidate only beyond noise (GUARD_Z standard errors),
# above GUARD_TOLERANCE, on at least GUARD_MIN of them (fewer tell no loss from chance).
GUARD_Z, GUARD_TOLERANCE, GUARD_MIN = 2.0, 0.01, 10
# Val under this many queries is too few to choose on alone: what can be chosen without retraining (the
# hybrid's weight, the memory's strengths) for an encoder that never saw train is chosen on train + val.
SMALL_VAL = 50
# What a hybrid serves when there is no val to choose on: the weight val chose most often across the
# datasets measured (bench/results/hybrid-cpu.md).
NO_VAL = {"method": "convex", "weight": 0.3, "depth": fusion.HYBRID_DEPTH, "default": True}
# What is served from generated questions (a train split prepare_data.py --pseudo_queries=generate wrote) when
# no real judged question is val to choose on: the encoder (the zero-shot one, or the one fine-tuned on them)
# and their memory's strengths. Measured on val across datasets (bench/results/generated-cpu.md), neither use
# helped the zero-shot hybrid: neither is served.
# The mix of dense and BM25, though, is chosen on them (pooled with val where val is small): on val across
# datasets the weight chosen on the half of them that reuse their passage's words least scored as well as or
# better than NO_VAL's, where the round-trip-kept ones (found first at NO_VAL's weight) would choose NO_VAL itself.
NO_VAL_GENERATED = {"encoder": "zero-shot", "memory": {"dense": 0.0, "bm25": 0}}
NO_VAL_WHY = ("generated questions, measured on val across datasets, helped the zero-shot hybrid neither as training "
              "data nor as memory (bench/results/generated-cpu.md): without a judged question to choose on, neither is "
              "served; judge a few questions (questions.jsonl) and val weighs them")
NO_VAL_GENERATED_WORTH = ("an estimate: generated questions favour BM25 as real ones do not; on val across datasets "
                          "their choice scored at least about as well as NO_VAL's weight, not always as val's own "
                          "(bench/results/generated-cpu.md)")
# Memory strengths: the dense step toward the remembered queries and the BM25 repeats val chooses among.
STRENGTHS = (0.0, 0.5, 1.0, 2.0, 4.0)
REPEATS = (0, 1, 2, 3, 5)
NO_MEMORY = {"dense": 0.0, "bm25": 0}
RULE = " ".join(__doc__.split("(`select`, and RULE, which comparison.md quotes):")[1].split("\n\n")[1].split())


def per_query(qrels, run, metric="ndcg@10"):
    """(mean, {qid: value}) of one metric over qrels' queries."""
    mean, rows = evaluate_run(qrels, run, (int(metric.rsplit("@", 1)[1]),))
    return mean[metric], {q: m[metric] for q, m in rows.items()}


def harm(diff):
    """(harms, mean loss, its standard error) of per-query differences (candidate - base) over a guarded
    part: harms only when the loss is over GUARD_TOLERANCE and beyond noise on GUARD_MIN or more queries."""
    mean, se = mean_and_se(diff)
    return len(diff) >= GUARD_MIN and -mean > GUARD_TOLERANCE and -mean - GUARD_Z * se > 0, -mean, se


def select(qrels, base, candidates, z, metric="ndcg@10", guard=()):
    """(key, report) of the candidate to serve over `base` by the rule above. `base` and each candidate are
    a val run, a function making one (made, scored and let go one at a time: a grid of hundreds over
    tens of thousands of queries never holds its runs at once), or {qid: metric value} already scored
    (a dict of floats). `guard`: the query ids the candidates must not cost beyond noise. key None: serve
    base. report: {"base", "grid": {key: val score}, "gain", "stderr"} of the candidate served (of the
    best-scoring one when none is), "chosen", and "guard": {"queries", "loss", "stderr", "vetoed"}."""
    base_mean, base_values = _scored(qrels, base, metric)
    order = list(base_values)
    base_arr = np.array([base_values[q] for q in order])
    grid, values = {}, {}
    for key, run in candidates.items():
        mean, scored = _scored(qrels, run, metric)
        grid[key] = mean
        values[key] = np.array([scored.get(q, 0.0) for q in order])
    rows = [i for i, q in enumerate(order) if q in set(guard)]
    report = {"base": base_mean, "grid": grid, "gain": 0.0, "stderr": 0.0, "chosen": None,
              "guard": {"queries": len(rows), "loss": 0.0, "stderr": 0.0, "vetoed": 0}}
    if not grid or len(order) < 2:  # one query has no standard error: nothing is beyond noise
        return None, report
    gains = {key: mean_and_se(values[key] - base_arr) for key in candidates}
    harms = {key: harm(values[key][rows] - base_arr[rows]) for key in candidates}
    eligible = [key for key in candidates if not harms[key][0]]
    report["guard"]["vetoed"] = len(candidates) - len(eligible)
    chosen = max(eligible, key=lambda key: gains[key][0] - z * gains[key][1]) if eligible else None  # first of equals
    if chosen is None or gains[chosen][0] - z * gains[chosen][1] <= TIE:
        best = max(grid, key=grid.get)
        report.update(gain=gains[best][0], stderr=gains[best][1])
        report["guard"].update(loss=harms[best][1], stderr=harms[best][2])
        return None, report
    report.update(gain=gains[chosen][0], stderr=gains[chosen][1], chosen=chosen)
    report["guard"].update(loss=harms[chosen][1], stderr=harms[chosen][2])
    return chosen, report


def _scored(qrels, run, metric):
    """(mean, {qid: value}) of a run, a function making one, or values already scored."""
    run = run() if callable(run) else run
    if run and all(isinstance(v, float) for v in run.values()):
        values = {q: run.get(q, 0.0) for q in qrels}
        return float(np.mean(list(values.values()))) if values else 0.0, values
    return per_query(qrels, run, metric)


def hybrid(qrels, dense, bm25, weights=fusion.HYBRID_WEIGHTS, metric="ndcg@10", given=None):
    """The hybrid to serve, chosen on val (`qrels`, and each val query's dense and BM25 top HYBRID_DEPTH)
    by `select`: a convex weight from `weights`, or RRF, or dense alone; or, with `given` (a choice), that
    one, scored. Returns the choice with "val": {"dense", "bm25", "served"} scores, "gain" and "stderr" of
    the best mix against dense, "queries" and "grid"."""
    if given is None and len(qrels) < 2:  # no weight can be told apart on one query: the default's
        given = {**NO_VAL, "one_query": True}
    if given is not None:
        candidates = {"given": fusion.hybrid(dense, bm25, given)}
    else:
        candidates = {f"{w:g}": lambda w=w: fusion.hybrid(dense, bm25, {"method": "convex", "weight": w})
                      for w in sorted(weights) if w > 0}
        candidates["rrf"] = lambda: fusion.hybrid(dense, bm25, {"method": "rrf", "rrf_k": fusion.RRF_K})
    key, report = select(qrels, dense, candidates, HYBRID_Z, metric)
    if given is not None:
        key, choice = "given", {**given, "depth": fusion.HYBRID_DEPTH, "given": not given.get("one_query")}
    else:
        choice = (dict(fusion.DENSE_ONLY) if key is None else
                  {"method": "rrf", "rrf_k": fusion.RRF_K, "depth": fusion.HYBRID_DEPTH} if key == "rrf" else
                  {"method": "convex", "weight": float(key), "depth": fusion.HYBRID_DEPTH})
    bm25_score = (None if not any(bm25.values()) else report["grid"]["1"] if "1" in report["grid"] else
                  per_query(qrels, fusion.hybrid(dense, bm25, {"method": "convex", "weight": 1.0}), metric)[0])
    served = report["grid"].get(key, report["base"]) if key is not None else report["base"]
    return {**choice, "metric": metric, "queries": len(qrels), "gain": report["gain"], "stderr": report["stderr"],
            "val": {"dense": report["base"], "bm25": bm25_score, "served": served}, "grid": report["grid"]}


def memory(qrels, dense_runs, bm25_runs, base, remembered, mixes=None, metric="ndcg@10"):
    """The memory to serve, chosen on val: `dense_runs` {strength: run} and `bm25_runs` {repeat: run}
    (None: dense alone) are val's top lists with each memory, `base` the hybrid choice without one
    (`hybrid`'s), `remembered` the val queries a memory can help. Every strength, repeat and mix (convex
    weights and RRF, or `mixes` when given) is a candidate against `base` (`select` at MEMORY_Z, the
    other queries guarded). Returns (strengths, the hybrid choice to serve with them, a report for
    fusion.json)."""
    if mixes is None:
        mixes = [{"method": "convex", "weight": w, "depth": fusion.HYBRID_DEPTH} for w in fusion.HYBRID_WEIGHTS]
        mixes.append({"method": "rrf", "rrf_k": fusion.RRF_K, "depth": fusion.HYBRID_DEPTH})
    base_run = fusion.hybrid(dense_runs[0.0], bm25_runs[0], base) if bm25_runs else dense_runs[0.0]
    candidates, keys = {}, {}
    for a, dense in dense_runs.items():
        for r, bm25 in (bm25_runs or {0: None}).items():
            for m, mix in enumerate(mixes if bm25 is not None else [fusion.DENSE_ONLY]):
                weight = mix.get("weight")
                if (a, r) == (0.0, 0) or (weight == 0 and r) or (weight == 1 and a):  # none, or a repeat of another
                    continue
                key = f"{a:g},{r},{m}"
                candidates[key] = (dense if bm25 is None else  # made when scored: hundreds of runs otherwise
                                   lambda dense=dense, bm25=bm25, mix=mix: fusion.hybrid(dense, bm25, mix))
                keys[key] = (a, r, mix)
    unseen = [q for q in qrels if q not in remembered]
    key, report = select(qrels, base_run, candidates, MEMORY_Z, metric, guard=unseen)
    best = key or max(report["grid"], key=report["grid"].get, default=None)
    summary = {"queries": len(qrels), "remembered": len(remembered), "gain": report["gain"],
               "stderr": report["stderr"], "without": report["base"], "guard": report["guard"],
               "best": {"strengths": dict(zip(("dense", "bm25"), keys[best][:2])), "val": report["grid"][best]}
               if best else None}
    if key is None:
        return dict(NO_MEMORY), base, {**summary, "served": report["base"]}
    a, r, mix = keys[key]
    return {"dense": a, "bm25": r}, dict(mix), {**summary, "served": report["grid"][key]}


def encoder(qrels, runs, bar, remembered=None, metric="ndcg@10"):
    """(label served, report): among `runs` {label: each encoder's val run as served, or its per-query
    values}, `bar` (the zero-shot encoder's label) unless another beats it beyond noise (`select` at
    ENCODER_Z), the queries no memory can help (val's outside `remembered`, when given) guarded: an
    encoder that forgets what the zero-shot one knew does not buy its gain with them."""
    others = {label: run for label, run in runs.items() if label != bar}
    guard = [q for q in qrels if q not in remembered] if remembered else ()  # none remembered: the gain is all
    key, report = select(qrels, runs[bar], others, ENCODER_Z, metric, guard=guard)
    return key or bar, report


def rerank(qrels, first, scores, depths, weights=fusion.WEIGHTS, metric="ndcg@10"):
    """(choice, grid) of the second stage, chosen on val by `select` at RERANK_Z: {"weight", "depth",
    "gain", "stderr"} (weight 0: the first stage alone) and {"weight,depth": val score} of every pair."""
    candidates = {(w, d): lambda w=w, d=d: fusion.fuse(first, scores, w, d) for w in sorted(weights) if w > 0
                  for d in sorted(depths)}
    key, report = select(qrels, first, candidates, RERANK_Z, metric)
    grid = {f"0,{d}": report["base"] for d in sorted(depths)} if 0 in weights else {}
    grid.update({f"{w:g},{d}": score for (w, d), score in report["grid"].items()})
    weight, depth = key or (0.0, min(depths))
    return {"weight": weight, "depth": depth, "gain": report["gain"], "stderr": report["stderr"]}, grid


def pooled(val, train, saw_train, generated=None):
    """(queries, qrels, how) that a choice needing no retraining is made on: `val` ((queries, qrels)), or,
    where val holds under SMALL_VAL queries (but some) and the encoder never saw the train split
    (`saw_train` false), `train`'s and val's together (train: (queries, qrels), or None without one).
    `generated` (queries, qrels): where a language model wrote the train split, the split of its questions
    the mix is chosen on (prepare_data.py's "generated"), pooled with val under SMALL_VAL queries, none
    included (NO_VAL_GENERATED); `train` is then never pooled. how: {"split": "val" | "train+val" |
    "generated+val", "queries", "val"} for the plan and the choice's record."""
    queries, qrels = val
    how = {"split": "val", "queries": len(qrels), "val": len(qrels)}
    if generated and generated[1] and not saw_train and len(qrels) < SMALL_VAL:
        joined = {**generated[1], **qrels}
        return {**generated[0], **queries}, joined, {**how, "split": "generated+val", "queries": len(joined)}
    if not qrels or len(qrels) >= SMALL_VAL or saw_train or generated or not train or not train[1]:
        return queries, qrels, how
    joined = {**train[1], **qrels}
    return {**train[0], **queries}, joined, {**how, "split": "train+val", "queries": len(joined)}


def can_judge(bar_values, z=ENCODER_Z):
    """(whether val can tell a better encoder from the bar, why): not when even an encoder that ranked every
    val query's relevant documents first (a gain of 1 - bar on each) would stay within noise of it."""
    values = np.asarray(list(bar_values), np.float64)
    if len(values) < 2:
        return False, (f"val cannot tell a better encoder from the bar: {len(values)} "
                       f"quer{'y' if len(values) == 1 else 'ies'} (a standard error needs two)")
    gain, se = mean_and_se(1.0 - values)
    if gain - z * se <= 0:
        return False, (f"val cannot tell a better encoder from the bar: {len(values)} queries scoring "
                       f"{values.mean() if len(values) else 0:.4f}, where even a perfect one's gain ({gain:+.4f}) "
                       f"is within noise (standard error {se:.4f})")
    return True, ""


def keep_training(history, total_steps, z=ENCODER_Z):
    """(go on, why) after a val evaluation: `history` [(step, per-query differences against the bar)], the
    first the step-0 model's (all 0). The gain's rise since the evaluation before, carried on at the same
    rate to the last step, is what training can still add. Stop when even that projected gain cannot
    clear z standard errors against the bar, or, once ahead of it, when what is left to add stays within
    the noise of the last rise: val stopped gaining, and the minutes left would buy nothing it can tell
    (the default data stopped so at step 42 of 61: val and test as at 61, bench/results/decision-cpu.md)."""
    if len(history) < 2:
        return True, ""
    (s0, d0), (s1, d1) = history[-2], history[-1]
    (g1, se), (rise, rise_se) = mean_and_se(d1), mean_and_se(np.subtract(d1, d0))
    more = max(0.0, rise / max(s1 - s0, 1)) * (total_steps - s1)
    if g1 + more - z * se <= 0:
        return False, (f"step {s1}: {g1:+.4f} against the bar (standard error {se:.4f}); projected to step "
                       f"{total_steps} {g1 + more:+.4f}, not beyond noise: stopping")
    best = max(float(np.mean(d)) for _, d in history)
    if best - z * se > 0 and more <= z * rise_se:
        return False, (f"step {s1}: val stopped gaining ({rise:+.4f} since step {s0}, standard error {rise_se:.4f}; "
                       f"{more:+.4f} more projected to step {total_steps}, within noise), the best {best:+.4f} "
                       "against the bar: stopping")
    return True, ""


# ---- one line each: what was chosen, and why
def chosen_cell(choice):
    """The "chosen on val" cell of a hybrid column in a report."""
    remembers = (f", memory: dense {choice['memory']['dense']:g}, BM25 x{choice['memory']['bm25']}"
                 if fusion.remembers(choice) else "")
    on = choice.get("chosen_on", {})
    remembers += (f" (on train + val: {on['queries']} queries)" if on.get("split") == "train+val" else
                  f" (on generated questions{' + val' if on.get('val') else ''}: {on['queries']} queries)"
                  if on.get("split") == "generated+val" else "")
    if choice.get("method") == "rrf":
        return "rrf" + remembers
    alone = {0: " (dense alone)", 1: " (BM25 alone)"}.get(choice["weight"], "")
    return (f"BM25 weight {choice['weight']:g}{alone}{remembers}"
            + (f" (the default: {'one val query' if choice.get('one_query') else 'no val'})" if choice.get("default")
               else ""))


def describe_hybrid(choice):
    """One line: what a hybrid serves, and why."""
    if choice.get("method") == "rrf":
        what = f"reciprocal-rank fusion of dense and BM25 (k={choice.get('rrf_k', fusion.RRF_K)})"
    elif choice["weight"] == 0:
        what = "dense alone"
    elif choice["weight"] == 1:
        what = "BM25 alone (dense for a query BM25 matches no word of)"
    else:
        what = f"dense and BM25 mixed, BM25 weight {choice['weight']:g}"
    on, metric = choice.get("chosen_on", {}), choice.get("metric", "ndcg@10")
    pooled_bm25 = f", BM25 {on['bm25']:.4f}" if on.get("bm25") is not None else ""
    if "val" not in choice and on:  # generated questions alone
        return (f"{what}: chosen on {on['queries']} generated questions, no judged val ({metric}: dense "
                f"{on['dense']:.4f}{pooled_bm25}, served {on['served']:.4f}; {NO_VAL_GENERATED_WORTH})")
    if "val" not in choice:
        return what + (" (the default: no val to choose on)" if choice.get("default") else "")
    v = choice["val"]
    bm25 = f", BM25 {v['bm25']:.4f}" if v.get("bm25") is not None else ""
    how = ("the default (one val query tells no weight from another); scored " if choice.get("one_query") else
           "as given; " if choice.get("given") else "chosen ")
    if on.get("split", "val") != "val":  # chosen on train (or generated questions) + val; scored on val as served
        pool = "generated questions" if on["split"].startswith("generated") else "train"
        return (f"{what}: {how}on {pool} + val ({on['queries']} queries: val's {on['val']} are too few alone; "
                f"{metric}: dense {on['dense']:.4f}{pooled_bm25}, served {on['served']:.4f}); on val: dense "
                f"{v['dense']:.4f}{bm25}, served {v['served']:.4f}" + (
                    f"; with the train queries' memory (dense strength {choice['memory']['dense']:g}, BM25 repeat "
                    f"{choice['memory']['bm25']})" if fusion.remembers(choice) else ""))
    why = (f"{how}on val ({choice['queries']} queries, {metric}: "
           f"dense {v['dense']:.4f}{bm25}, served {v['served']:.4f}")
    if choice.get("method") != "rrf" and choice["weight"] == 0 and choice["gain"] > 0 and not fusion.remembers(choice):
        why += f"; the best mix was {choice['gain']:+.4f}, within noise: standard error {choice['stderr']:.4f}"
    if fusion.remembers(choice):
        m = choice["memory"]
        what += f", with the train queries' memory (dense strength {m['dense']:g}, BM25 repeat {m['bm25']})"
        why = why.replace("served", f"{m.get('without', v['served']):.4f} without memory, served", 1) \
            if "without" in m else why
    return f"{what}: {why})"


def describe_memory(strengths, summary):
    """One line: the memory val chose, and why."""
    on = (f"train + val cross-validated in {summary['folds']} folds (each scored with the others' memory), "
          if "folds" in summary else "val ")
    why = (f"{on}{summary['queries']} queries ({summary['remembered']} with a remembered relevant doc): "
           f"{summary['without']:.4f} without memory")
    if strengths["dense"] or strengths["bm25"]:
        return (f"memory: dense strength {strengths['dense']:g}, BM25 repeat {strengths['bm25']}: {why}, "
                f"{summary['served']:.4f} with it (gain {summary['gain']:+.4f}, standard error "
                f"{summary['stderr']:.4f})" + describe_guard(summary.get("guard")))
    best = summary.get("best")
    if not best:
        ahead = ""
    elif best["val"] <= summary["without"]:
        ahead = f"; no memory scored higher (the best {best['val']:.4f})"
    elif summary.get("guard", {}).get("vetoed") and summary["gain"] - MEMORY_Z * summary["stderr"] > 0:
        g = summary["guard"]
        ahead = (f"; the best memory scored {best['val']:.4f}, but cost the {g['queries']} queries it cannot help "
                 f"{g['loss']:.4f} (standard error {g['stderr']:.4f}), beyond noise")
    else:
        ahead = (f"; the best memory scored {best['val']:.4f}, not beyond noise (gain {summary['gain']:+.4f}, "
                 f"standard error {summary['stderr']:.4f})")
    return f"memory: none served: {why}{ahead}"


def describe_guard(guard):
    """The guard's part of a line: what the served candidate costs the guarded queries, within noise."""
    if not guard or not guard.get("queries"):
        return ""
    if guard["loss"] <= 0:
        return f"; the {guard['queries']} queries it cannot help: {-guard['loss']:+.4f}"
    few = f", too few to tell (under {GUARD_MIN})" if guard["queries"] < GUARD_MIN else ", within noise"
    return (f"; the {guard['queries']} queries it cannot help: {-guard['loss']:+.4f} (standard error "
            f"{guard['stderr']:.4f}{few})")


def describe_rerank(choice):
    """One line for logs and reports: the reranker's fusion."""
    if choice["weight"] == 0:
        ahead = (f" (the best mix was {choice['gain']:+.4f} {choice.get('metric', 'nDCG@10')}, within noise: "
                 f"standard error {choice['stderr']:.4f})" if choice.get("gain", 0) > 0 else "")
        return f"fusion weight 0: the reranker does not help this first stage{ahead}; serving the first stage alone"
    if choice["weight"] == 1:
        return f"the reranker alone over the first stage's top {choice['depth']}"
    return f"fusion weight {choice['weight']:g} over the first stage's top {choice['depth']}"


def without_val(choice, how):
    """A `hybrid` choice made on pooled questions none of which is val's (generated ones alone, `how` pooled's):
    their scores are kept as what it was chosen on ("chosen_on"), never as val's."""
    return {**{k: v for k, v in choice.items() if k != "val"}, "chosen_on": {**how, **choice["val"]}}


def describe_pooled(how):
    """What a choice was made on, for a plan line."""
    if how["split"] == "val":
        return f"val ({how['queries']} queries)"
    if how["split"] == "generated+val":
        return (f"generated questions + val ({how['queries']} queries: val's {how['val']} are under {SMALL_VAL}; "
                "the mix alone, no memory)")
    return f"train + val ({how['queries']} queries: val's {how['val']} are under {SMALL_VAL})"
