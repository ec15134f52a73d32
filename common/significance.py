"""Whether one run beats another on the same queries: paired tests over per-query scores, Holm's
correction across the columns compared, and wins / ties / losses.

    from common.significance import against
    rows = against({"bm25": {qid: 0.5, ...}, "dense": {...}}, baseline="bm25")

Two tests, both two-sided and paired by query: Student's paired t (scipy.stats.ttest_rel) and Fisher's
randomisation test (each query's difference keeps or flips its sign at random, 10,000 times, seeded:
the same p every run; exact over every sign pattern up to 2^12 of them). Holm–Bonferroni adjusts each
test's p-values across the columns compared to one baseline, so "p < 0.05" stays a 5% chance of any
false claim among them, not of each.
"""
import numpy as np
from scipy import stats

ROUNDS, SEED = 10_000, 0
EXACT_UP_TO = 12  # queries with a non-zero difference: 2^12 sign patterns are enumerated, not sampled


def mean_and_se(diff):
    """(mean, standard error) of per-query differences (0 error below two queries)."""
    diff = np.asarray(diff, np.float64)
    if len(diff) < 2:
        return float(diff.mean()) if len(diff) else 0.0, 0.0
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def paired_t(a, b):
    """Two-sided p of the paired t test of a against b (1.0 where every difference is 0)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if not diff.any():
        return 1.0
    if np.ptp(diff) <= 1e-12:  # no spread (to rounding): t is infinite, the difference certain
        return 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def randomization(a, b, rounds=ROUNDS, seed=SEED):
    """Two-sided p of Fisher's paired randomisation test: the share of sign flips of the per-query
    differences whose mean is at least as far from 0 as the observed one (the observed counted once,
    so p is never 0 from sampling). Exact below EXACT_UP_TO non-zero differences."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    diff = diff[diff != 0]  # a zero flips to itself
    if not len(diff):
        return 1.0
    observed = abs(diff.sum()) * (1 - 1e-12)  # floating-point sums of the same terms in another order
    if len(diff) <= EXACT_UP_TO:
        signs = 1 - 2 * ((np.arange(2 ** len(diff))[:, None] >> np.arange(len(diff))) & 1)
        return float(np.mean(np.abs(signs @ diff) >= observed))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, rounds, 1000):  # 1,000 rounds at a time: rounds x queries signs would be large
        signs = rng.integers(0, 2, size=(min(1000, rounds - start), len(diff)), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ diff) >= observed))
    return (hits + 1) / (rounds + 1)


def holm(pvalues):
    """Holm–Bonferroni adjusted p-values, in the order given: the i-th smallest of m is multiplied by
    m - i + 1, and each kept at least the one before it in that order (and at most 1)."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(p)
    out[order] = adjusted
    return out.tolist()


def wins_ties_losses(a, b):
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())


def against(per_query, baseline):
    """{column: {"queries", "dropped", "delta", "wins", "ties", "losses", "p_t", "p_rand" (Holm-adjusted
    across the columns), "why" (when no p)}} of every column of `per_query` {column: {qid: score}}
    against `baseline`, over the queries both scored. Fewer than two shared queries: no p-value."""
    base = per_query[baseline]
    out, tested = {}, []
    for name, scores in per_query.items():
        if name == baseline:
            continue
        shared = [q for q in base if q in scores]
        a = np.array([scores[q] for q in shared])
        b = np.array([base[q] for q in shared])
        row = {"queries": len(shared), "dropped": len(set(base) | set(scores)) - len(shared),
               "delta": float(a.mean() - b.mean()) if len(shared) else 0.0}
        row["wins"], row["ties"], row["losses"] = wins_ties_losses(a, b)
        if len(shared) < 2:
            row["why"] = f"{len(shared)} shared quer{'y' if len(shared) == 1 else 'ies'}: no test"
        else:
            row["p_t"], row["p_rand"] = paired_t(a, b), randomization(a, b)
            tested.append(name)
        out[name] = row
    for key in ("p_t", "p_rand"):
        for name, p in zip(tested, holm([out[n][key] for n in tested])):
            out[name][key] = p
    return out


def p_text(p):
    """A p-value to two significant figures ("<0.0001" below what 10,000 rounds resolve)."""
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"
