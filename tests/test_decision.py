"""common/decision.py's rules on small synthetic per-query score tables: no model, no data, milliseconds each."""
import numpy as np
import pytest

from common import decision, fusion


def scores(n, value, rng=None, spread=0.0, prefix="q"):
    """{qid: nDCG@10} of n queries around `value`."""
    rng = rng or np.random.default_rng(0)
    return {f"{prefix}{i}": float(np.clip(value + spread * rng.normal(), 0, 1)) for i in range(n)}


def qrels_of(values):
    return {q: {"rel": 1} for q in values}


def run_at(ranks):
    """A run whose query q ranks its relevant doc "rel" at ranks[q] (1-based; 0: not retrieved)."""
    out = {}
    for q, rank in ranks.items():
        docs = [f"x{j}" for j in range(12)]
        if rank:
            docs.insert(rank - 1, "rel")
        out[q] = {d: 1.0 - 0.01 * k for k, d in enumerate(docs)}
    return out


def test_one_query_cannot_veto_a_gain_beyond_noise():
    """The issue's case: 323 queries gain, the one the candidate cannot help loses 0.93 -> 0.17."""
    base = {**scores(323, 0.35, spread=0.2), "lone": 0.93}
    better = {q: min(1.0, v + 0.05) for q, v in base.items() if q != "lone"} | {"lone": 0.17}
    key, report = decision.select(qrels_of(base), base, {"memory": better}, z=2.0, guard=["lone"])
    assert key == "memory" and report["guard"] == {"queries": 1, "loss": pytest.approx(0.76), "stderr": 0.0,
                                                   "vetoed": 0}
    assert "too few to tell" in decision.describe_guard(report["guard"])


def test_a_loss_beyond_noise_on_enough_guarded_queries_vetoes_however_large_the_gain():
    rng = np.random.default_rng(1)
    base = scores(200, 0.5, rng, 0.2)
    guarded = [f"q{i}" for i in range(40)]
    cand = {q: (v - 0.3 if q in guarded else min(1.0, v + 0.4)) for q, v in base.items()}
    key, report = decision.select(qrels_of(base), base, {"c": cand}, z=2.0, guard=guarded)
    assert report["gain"] > 0.2 and key is None and report["guard"]["vetoed"] == 1
    # the same loss on fewer than GUARD_MIN guarded queries is not enough to tell
    few = guarded[:decision.GUARD_MIN - 1]
    cand = {q: (v - 0.3 if q in few else min(1.0, v + 0.4)) for q, v in base.items()}
    assert decision.select(qrels_of(base), base, {"c": cand}, z=2.0, guard=few)[0] == "c"
    # a loss within noise does not veto: half the guarded lose 0.1, half gain 0.08
    noisy = {q: (v + (-0.1 if i % 2 else 0.08) if q in guarded else min(1.0, v + 0.4))
             for i, (q, v) in enumerate(base.items())}
    key, report = decision.select(qrels_of(base), base, {"c": noisy}, z=2.0, guard=guarded)
    assert key == "c" and report["guard"]["loss"] > 0 and report["guard"]["vetoed"] == 0
    # and neither does one under the tolerance, however sure
    slight = {q: (v - 0.005 if q in guarded else min(1.0, v + 0.4)) for q, v in base.items()}
    assert decision.select(qrels_of(base), base, {"c": slight}, z=2.0, guard=guarded)[0] == "c"


def test_a_gain_within_noise_is_not_served_and_the_best_bound_wins():
    rng = np.random.default_rng(2)
    base = scores(60, 0.5, rng, 0.25)
    noise = {q: float(np.clip(v + rng.normal(0, 0.2) + 0.01, 0, 1)) for q, v in base.items()}
    key, report = decision.select(qrels_of(base), base, {"noise": noise}, z=1.0)
    assert key is None and abs(report["gain"]) < report["stderr"]
    steady = {q: v + 0.02 for q, v in base.items()}  # smaller, but on every query
    key, _ = decision.select(qrels_of(base), base, {"noise": noise, "steady": steady}, z=1.0)
    assert key == "steady"
    assert decision.select({"q0": {"rel": 1}}, {"q0": 0.1}, {"c": {"q0": 1.0}}, z=1.0)[0] is None  # one query


def test_the_memory_guards_the_queries_it_cannot_help():
    n, remembered = 60, {f"q{i}" for i in range(30)}
    qrels = {f"q{i}": {"rel": 1} for i in range(n)}
    without = run_at({q: 3 for q in qrels})
    lifted = run_at({q: 1 if q in remembered else 3 for q in qrels})
    strengths, _, report = decision.memory(qrels, {0.0: without, 1.0: lifted}, None, dict(fusion.DENSE_ONLY),
                                           remembered)
    assert strengths["dense"] == 1.0 and report["gain"] > 0 and report["guard"]["queries"] == 30
    crowded = run_at({q: 1 if q in remembered else (11 if int(q[1:]) < 40 else 3) for q in qrels})  # 10 of 30 lose
    strengths, _, report = decision.memory(qrels, {0.0: without, 1.0: crowded}, None, dict(fusion.DENSE_ONLY),
                                           remembered)
    assert strengths == decision.NO_MEMORY and report["best"]["strengths"]["dense"] == 1.0
    assert "cost the 30 queries it cannot help" in decision.describe_memory(strengths, report)
    one_lost = run_at({q: 1 if q in remembered else (11 if q == "q59" else 3) for q in qrels})  # one query
    assert decision.memory(qrels, {0.0: without, 1.0: one_lost}, None, dict(fusion.DENSE_ONLY),
                           remembered)[0]["dense"] == 1.0


def test_small_val_is_pooled_with_train_where_val_alone_cannot_tell():
    """5 val queries cannot show a memory helping; pooled with 40 train queries (each scored with the other
    folds' memory, as build_index.py makes the runs) the same effect is beyond noise."""
    val = ({f"v{i}": "text" for i in range(5)}, {f"v{i}": {"rel": 1} for i in range(5)})
    train = ({f"t{i}": "text" for i in range(40)}, {f"t{i}": {"rel": 1} for i in range(40)})
    queries, qrels, how = decision.pooled(val, train, saw_train=False)
    assert how["split"] == "train+val" and len(qrels) == 45
    assert decision.pooled(val, train, saw_train=True)[2]["split"] == "val"
    for chosen_on, expect in ((val[1], decision.NO_MEMORY["dense"]), (qrels, 1.0)):
        ranks = {q: (1 if i % 3 else 11) for i, q in enumerate(chosen_on)}  # two in three up to the top, one out
        with_memory = run_at(ranks)
        strengths, _, _ = decision.memory(chosen_on, {0.0: run_at({q: 3 for q in chosen_on}), 1.0: with_memory},
                                          None, dict(fusion.DENSE_ONLY), set(chosen_on))
        assert strengths["dense"] == expect


def test_the_fine_tuned_encoder_is_served_only_beyond_noise_and_not_at_the_unremembered_queries_cost():
    rng = np.random.default_rng(3)
    bar = scores(100, 0.6, rng, 0.2)
    qrels, remembered = qrels_of(bar), {f"q{i}" for i in range(50)}
    within = {q: v + (0.1025 if i % 2 else -0.0975) for i, (q, v) in enumerate(bar.items())}  # +0.0025, se 0.01
    assert decision.encoder(qrels, {"zs": bar, "ft": within}, "zs", remembered)[0] == "zs"
    better = {q: min(1.0, v + 0.08) for q, v in bar.items()}
    assert decision.encoder(qrels, {"zs": bar, "ft": better}, "zs", remembered)[0] == "ft"
    forgets = {q: (min(1.0, v + 0.3) if q in remembered else v - 0.1) for q, v in bar.items()}
    label, report = decision.encoder(qrels, {"zs": bar, "ft": forgets}, "zs", remembered)
    assert label == "zs" and report["gain"] > 0.05 and report["guard"]["vetoed"] == 1
    assert decision.encoder(qrels, {"zs": bar, "ft": forgets}, "zs", None)[0] == "ft"  # nothing remembered: no guard


def test_training_stops_when_it_cannot_beat_the_bar_or_stopped_gaining():
    rng = np.random.default_rng(4)
    zero = np.zeros(100)
    rising = rng.normal(0.03, 0.1, 100)
    assert decision.keep_training([(0, zero)], 60) == (True, "")
    assert decision.keep_training([(0, zero), (15, rising)], 60)[0]  # +0.03 at 15 projects to +0.12 at 60
    falling = rng.normal(-0.02, 0.1, 100)
    go, why = decision.keep_training([(0, zero), (15, falling)], 60)
    assert not go and "not beyond noise: stopping" in why
    flat = np.array([0.201, -0.199] * 50)  # +0.001, standard error 0.02
    assert not decision.keep_training([(0, zero), (45, flat)], 60)[0]  # little gain and few steps left
    first = rng.normal(0.10, 0.05, 100)
    assert decision.keep_training([(0, zero), (15, first)], 60)[0]  # ahead, and rising fast
    plateau = [(0, zero), (15, first), (30, first + np.array([0.041, -0.039] * 50))]  # +0.001, se 0.004
    go, why = decision.keep_training(plateau, 60)
    assert not go and "val stopped gaining" in why  # ahead of the bar, but what is left to add is within noise
    fell = [(0, zero), (15, first), (30, first - 0.01)]
    assert "val stopped gaining" in decision.keep_training(fell, 60)[1]
    climbing = [(0, zero), (15, first), (30, first + 0.05)]
    assert decision.keep_training(climbing, 60)[0]


def test_val_that_cannot_judge_says_so():
    assert not decision.can_judge([0.4])[0]  # one query
    assert not decision.can_judge([1.0] * 30)[0]  # nothing left to gain
    assert not decision.can_judge([1.0, 1.0, 0.6])[0]  # a perfect encoder's gain is within noise
    ok, why = decision.can_judge(scores(20, 0.5).values())
    assert ok and why == ""


def test_choices_are_deterministic():
    rng = np.random.default_rng(5)
    base = scores(80, 0.5, rng, 0.2)
    cands = {f"c{k}": {q: v + rng.normal(0.02, 0.05) for q, v in base.items()} for k in range(5)}
    first = decision.select(qrels_of(base), base, cands, z=1.0)
    assert all(decision.select(qrels_of(base), base, cands, z=1.0) == first for _ in range(3))


def test_a_gain_on_one_query_of_many_is_not_beyond_noise():
    """One query gains, the rest tie: its standard error equals the gain, so at z = 1 the bound is 0 up to rounding
    (ten val questions served a fine-tuned encoder on one query's +0.27 that way): never chosen."""
    base = {f"q{i}": 0.5 for i in range(10)}
    for gain in (0.2688, 0.1, 0.73, 1 / 3):
        one = {**base, "q3": 0.5 + gain / 2}
        assert decision.select(qrels_of(base), base, {"c": one}, z=1.0)[0] is None
    two = {**base, "q3": 0.9, "q7": 0.9}  # two queries gain: beyond one standard error
    assert decision.select(qrels_of(base), base, {"c": two}, z=1.0)[0] == "c"
