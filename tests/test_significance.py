import itertools

import numpy as np
import pytest
from scipy import stats

from common import significance
from common.report import significance_table


def test_paired_t_is_scipys():
    rng = np.random.default_rng(1)
    a, b = rng.random(40), rng.random(40)
    assert significance.paired_t(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    steps = np.arange(10) / 8
    assert significance.paired_t(steps + 0.25, steps) == 0.0  # every difference the same: no spread, certain


def test_randomization_is_exact_on_few_queries():
    a, b = np.array([0.9, 0.4, 0.7, 0.1, 0.5]), np.array([0.3, 0.4, 0.2, 0.3, 0.6])
    diff = [d for d in a - b if d != 0]
    means = [abs(sum(s * d for s, d in zip(signs, diff))) for signs in itertools.product((1, -1), repeat=len(diff))]
    want = np.mean([m >= abs(sum(diff)) - 1e-12 for m in means])
    assert significance.randomization(a, b) == pytest.approx(want)
    # scipy's own exact paired permutation test agrees
    scipy_p = stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                     n_resamples=np.inf).pvalue
    assert significance.randomization(a, b) == pytest.approx(scipy_p)


def test_randomization_sampled_is_close_to_exact_and_seeded():
    rng = np.random.default_rng(2)
    a, b = rng.random(14), rng.random(14) * 0.8
    diff = a - b
    signs = 1 - 2 * ((np.arange(2 ** 14)[:, None] >> np.arange(14)) & 1)
    exact = np.mean(np.abs(signs @ diff) >= abs(diff.sum()) * (1 - 1e-12))
    sampled = significance.randomization(a, b)
    assert abs(sampled - exact) < 0.015
    assert significance.randomization(a, b) == sampled  # the same p every run


def test_holm_on_a_known_example():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06
    assert significance.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert significance.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_identical_runs_tie_everywhere_with_p_one():
    scores = {f"q{i}": i / 10 for i in range(10)}
    rows = significance.against({"bm25": scores, "same": dict(scores)}, "bm25")
    assert rows["same"]["p_t"] == 1.0 and rows["same"]["p_rand"] == 1.0
    assert (rows["same"]["wins"], rows["same"]["ties"], rows["same"]["losses"]) == (0, 10, 0)


def test_only_shared_queries_are_tested_and_too_few_get_no_p():
    base = {"q1": 0.1, "q2": 0.5, "q3": 0.2, "q4": 0.0}
    rows = significance.against({"bm25": base, "b": {"q1": 0.9, "q2": 0.7, "q5": 1.0},
                                 "c": {"q1": 1.0}}, "bm25")
    assert rows["b"]["queries"] == 2 and rows["b"]["dropped"] == 3 and "p_t" in rows["b"]
    assert rows["c"]["queries"] == 1 and "p_t" not in rows["c"] and rows["c"]["why"] == "1 shared query: no test"
    table = significance_table({n: {"per_query": {q: {"ndcg@10": s} for q, s in v.items()}} for n, v in
                                {"bm25": base, "c": {"q1": 1.0}}.items()}, "bm25")
    assert "1 shared query: no test" in table and "3 not shared, left out" in table


def test_a_real_gain_is_significant_and_holm_counts_the_columns():
    rng = np.random.default_rng(3)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(200) * 0.5)}
    better = {q: min(1.0, s + 0.2) for q, s in base.items()}
    noise = {q: float(np.clip(s + rng.normal(0, 0.05), 0, 1)) for q, s in base.items()}
    rows = significance.against({"bm25": base, "better": better, "noise": noise}, "bm25")
    assert rows["better"]["p_t"] < 1e-4 and rows["better"]["p_rand"] < 1e-3 and rows["better"]["losses"] == 0
    alone = significance.against({"bm25": base, "noise": noise}, "bm25")["noise"]
    assert rows["noise"]["p_t"] >= alone["p_t"]  # adjusted for two columns tested, not one
