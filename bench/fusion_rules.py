"""Which rule should choose the hybrid's BM25 weight on val? Compared on val alone, by cross-validation
inside it; test is printed for the record, never used to choose (bench/results/hybrid-cpu.md).

    python bench/fusion_rules.py --case=label,DATA_DIR,BM25_VAL.trec,BM25_TEST.trec,DENSE_VAL.trec,DENSE_TEST.trec ...

Each case is a dataset and an encoder: BM25's and the encoder's top-100 runs on val and test (the
.trec files evaluate.py writes). For each rule and case: split val in two halves, choose on one, score
the choice on the other (against dense alone on that half), both ways, over `--repeats` random splits;
with --groups=title, halves keep the queries of one source module together (python-source splits by
file, so val and test differ by module, not by query). The rule with the best mean held-out gain over
every case, without a large loss on any, is the product's (common/decision.rerank).
"""
import argparse
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import fusion  # noqa: E402
from common.data import load_beir  # noqa: E402
from common.metrics import evaluate_run  # noqa: E402

COARSE = [round(0.1 * i, 1) for i in range(11)]
FINE = [round(0.05 * i, 2) for i in range(21)]


def read_trec(path):
    run = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            qid, _, doc, _, score, _ = line.split()
            run.setdefault(qid, {})[doc] = float(score)
    return run


def per_query(qrels, run):
    return {q: m["ndcg@10"] for q, m in evaluate_run(qrels, run, (10,))[1].items()}


class Case:
    """Per-query nDCG@10 of every candidate mix, on val and on test, computed once."""

    def __init__(self, label, data, bm25_val, bm25_test, dense_val, dense_test, groups):
        self.label = label
        corpus, _, self.val_qrels = load_beir(data, "val")
        _, _, self.test_qrels = load_beir(data, "test")
        self.groups = {}
        for q, row in self.val_qrels.items():  # a query's group: its first positive's top-level module
            doc = next(d for d, g in row.items() if g > 0)
            self.groups[q] = corpus[doc].get("title", "").split(".")[0] if groups == "title" else q
        self.keys = [("convex", w) for w in FINE] + [("rrf", fusion.RRF_K)]
        self.val, self.test = {}, {}
        for split, qrels, bm25, dense in (("val", self.val_qrels, bm25_val, dense_val),
                                          ("test", self.test_qrels, bm25_test, dense_test)):
            bm25, dense = read_trec(bm25), read_trec(dense)
            table = {}
            for method, value in self.keys:
                choice = {"method": "rrf", "rrf_k": value} if method == "rrf" else {"method": "convex", "weight": value}
                table[(method, value)] = per_query(qrels, fusion.hybrid(dense, bm25, choice, 100))
            getattr(self, split).update(table)
        self.qids = sorted(self.val[("convex", 0.0)])


def mean(table, key, qids):
    return float(np.mean([table[key][q] for q in qids]))


def paired(table, a, b, qids):
    diff = np.array([table[a][q] - table[b][q] for q in qids])
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0


BASE = ("convex", 0.0)


def rule_best(grid, with_rrf=False, z=0.0, shrink=1.0, one_se=False, lcb=None, folds=0, se_from_zero=False):
    """A rule: (table, qids, rng) -> the key it serves."""
    def choose(table, qids, rng):
        keys = [("convex", w) for w in grid] + ([("rrf", fusion.RRF_K)] if with_rrf else [])
        if se_from_zero:  # the lightest weight (dense alone included) within one standard error of the best
            best = max(keys, key=lambda k: mean(table, k, qids))
            for k in [BASE] + keys:
                behind, behind_se = paired(table, best, k, qids)
                if behind <= behind_se:
                    return k
        if lcb is not None:  # the largest lower bound of the gain over dense
            bounds = {k: (lambda g: g[0] - lcb * g[1])(paired(table, k, BASE, qids)) for k in keys}
            best = max(keys, key=lambda k: bounds[k])
            return best if bounds[best] > 0 else BASE
        if folds:  # must beat dense on every fold, then the best mean of those
            shuffled = list(qids)
            rng.shuffle(shuffled)
            parts = [shuffled[i::folds] for i in range(folds)]
            keys = [k for k in keys if all(mean(table, k, p) > mean(table, BASE, p) for p in parts)] or [BASE]
        best = max(keys, key=lambda k: mean(table, k, qids))
        gain, se = paired(table, best, BASE, qids)
        if gain <= 0 or gain < z * se:
            return BASE
        if one_se:
            for k in keys:
                behind, behind_se = paired(table, best, k, qids)
                if behind <= behind_se:
                    return k
        if shrink != 1.0 and best[0] == "convex":
            return ("convex", min(grid, key=lambda w: abs(w - shrink * best[1])))
        return best
    return choose


RULES = {
    "dense alone": lambda table, qids, rng: BASE,
    "rrf always": lambda table, qids, rng: ("rrf", fusion.RRF_K),
    "w=0.3 always": lambda table, qids, rng: ("convex", 0.3),
    "best of 0.1 grid": rule_best(COARSE),
    "best of 0.1 grid, z>=2 (reranker's rule)": rule_best(COARSE, z=2.0),
    "best of 0.05 grid, z>=2": rule_best(FINE, z=2.0),
    "best of 0.1 grid + rrf, z>=2": rule_best(COARSE, with_rrf=True, z=2.0),
    "z>=2, then halved": rule_best(COARSE, z=2.0, shrink=0.5),
    "z>=2, then one-SE toward dense": rule_best(COARSE, z=2.0, one_se=True),
    "z>=2 + rrf, then one-SE toward dense": rule_best(COARSE, with_rrf=True, z=2.0, one_se=True),
    "0.05 grid, z>=2, one-SE": rule_best(FINE, z=2.0, one_se=True),
    "one-SE toward dense, no gate": rule_best(COARSE, se_from_zero=True),
    "one-SE toward dense, no gate, + rrf": rule_best(COARSE, with_rrf=True, se_from_zero=True),
    "max gain - 0.5 SE": rule_best(COARSE, lcb=0.5),
    "max gain - 1 SE": rule_best(COARSE, lcb=1.0),
    "max gain - 1 SE, + rrf": rule_best(COARSE, with_rrf=True, lcb=1.0),
    "max gain - 2 SE": rule_best(COARSE, lcb=2.0),
    "wins on each of 4 folds": rule_best(COARSE, folds=4),
}


def held_out(case, rule, repeats, seed=0):
    """Mean over random half-splits of val (by group) of: the rule's choice on one half, scored on
    the other, minus dense alone there; both directions."""
    rng = random.Random(seed)
    groups = sorted(set(case.groups.values()))
    gains = []
    for _ in range(repeats):
        rng.shuffle(groups)
        half = set(groups[: len(groups) // 2])
        a = [q for q in case.qids if case.groups[q] in half]
        b = [q for q in case.qids if case.groups[q] not in half]
        for fit, score in ((a, b), (b, a)):
            if len(fit) < 2 or len(score) < 2:
                continue
            key = rule(case.val, fit, rng)
            gains.append(mean(case.val, key, score) - mean(case.val, BASE, score))
    return float(np.mean(gains)), float(np.min(gains))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True)
    parser.add_argument("--groups", default="query", choices=("query", "title"))
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    cases = []
    for spec in args.case:
        label, data, *files = spec.split(",")
        groups = "title" if args.groups == "title" and "python" in label else "query"
        cases.append(Case(label, data, *files, groups=groups))
        print(f"{label}: {len(cases[-1].qids)} val queries in {len(set(cases[-1].groups.values()))} groups, "
              f"{len(cases[-1].test[BASE])} test", flush=True)
    print("\nheld-out val gain over dense alone (mean over half-splits; worst split in brackets), then the")
    print("rule on all of val and its test gain (reported, not used to choose)\n")
    print("| rule | " + " | ".join(c.label for c in cases) + " | mean |")
    print("|---" * (len(cases) + 2) + "|")
    for name, rule in RULES.items():
        cells, means = [], []
        for case in cases:
            gain, worst = held_out(case, rule, args.repeats)
            key = rule(case.val, case.qids, random.Random(0))
            test_gain = mean(case.test, key, list(case.test[BASE])) - mean(case.test, BASE, list(case.test[BASE]))
            label = "dense" if key == BASE else f"rrf" if key[0] == "rrf" else f"w {key[1]:g}"
            cells.append(f"{gain:+.4f} ({worst:+.3f}); {label}: test {test_gain:+.4f}")
            means.append(gain)
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(means):+.4f} |", flush=True)
    print("\nper case, val and test nDCG@10 of dense, BM25 and each weight:")
    for case in cases:
        print(f"{case.label}: " + ", ".join(
            f"{'rrf' if m == 'rrf' else f'{v:g}'} {mean(case.val, (m, v), case.qids):.3f}/"
            f"{mean(case.test, (m, v), list(case.test[BASE])):.3f}" for m, v in case.keys if m == "rrf" or v in COARSE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
