"""Which negatives help: in-batch only, + BM25 negatives, + dense negatives, + periodic re-mining.

    # one GPU, several runs at a time (each is small next to an H100)
    python bench/negatives_sweep.py --data=data/scifact --workers=6
    # a CPU check of the plumbing: one tiny run per condition
    python bench/negatives_sweep.py --model=<tiny model dir> --lrs=2e-5 --hard_negatives=1 \
        --mines=bm25,dense-skip3 --epochs=1 --workers=1

Every condition has a small grid (learning rate x hard negatives per query x how the negatives were
mined). Each run keeps its best val step (train_encoder.py's best/); per condition the run with the
best val nDCG@10 is chosen, and only the chosen run is evaluated on test. Test never picks anything.
Runs start in rounds (the first setting of every condition, then the second, ...) so that at
`deadline_s` every condition has had its most likely settings tried; no run starts after it.

Writes <out>/summary.json and <out>/summary.md; each run's directory is under <out>/runs.
Not a test: it trains dozens of models.
"""
import itertools
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.jobs import ROOT, run_all, thread_env  # noqa: E402
from common.config import load_config  # noqa: E402
from common.files import write_json  # noqa: E402
from common.run import cli  # noqa: E402

DEFAULTS = dict(
    data="data/scifact",
    model="all-MiniLM-L6-v2",
    out="runs/bench/negatives_sweep",
    conditions=["in-batch", "bm25", "dense", "remine"],
    lrs=[2e-5, 5e-5],
    hard_negatives=[1, 3],
    mines=["bm25", "bm25-skip3", "dense-skip3", "dense-skip10"],  # of MINES, for the conditions that use them
    remine_every=12,  # steps, about half an epoch of SciFact at batch 32
    epochs=3,
    eval_every=12,
    workers=4,
    deadline_s=0,  # > 0: start no run after this many seconds; the rest is reported as not run
    train_args=["--symmetric=true", "--batch_size=32", "--val_full_corpus=true", "--eval_batch_size=256",
                "--save_every=0"],
)
# mine_negatives.py settings, by name; 30 negatives per query, of which each epoch draws hard_negatives
MINES = {
    "bm25": ["--strategy=bm25", "--bm25_backend=sparse"],
    "bm25-skip3": ["--strategy=bm25", "--bm25_backend=sparse", "--skip_top=3"],
    "dense-skip3": ["--strategy=dense", "--skip_top=3"],
    "dense-skip10": ["--strategy=dense", "--skip_top=10"],
}


def grid(cfg):
    """{condition: [(run name, mine name or None, train_encoder.py args)]}, likeliest settings first."""
    out = {}
    for cond in cfg.conditions:
        mines = [None] if cond == "in-batch" else [m for m in cfg.mines if (m.startswith("bm25") == (cond == "bm25"))]
        hns = [0] if cond == "in-batch" else cfg.hard_negatives
        runs = []
        for lr, hn, mine in itertools.product(cfg.lrs, hns, mines):
            args = [f"--lr={lr}", f"--epochs={cfg.epochs}", f"--eval_every={cfg.eval_every}"]
            if mine:
                args += [f"--train_file={cfg.out}/mine/{mine}/train.jsonl", f"--hard_negatives={hn}"]
            if cond == "remine":
                args.append(f"--remine_every={cfg.remine_every}")
            name = f"{cond}-lr{lr:g}" + (f"-hn{hn}-{mine}" if mine else "")
            runs.append((name, mine, args))
        out[cond] = runs
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    t_start = time.time()
    deadline = t_start + cfg.deadline_s if cfg.deadline_s > 0 else None
    env = thread_env(cfg.workers)
    runs = grid(cfg)
    py = sys.executable

    # 1. mine what the grid uses (once per setting)
    needed = sorted({m for cond in runs.values() for _, m, _ in cond if m})
    codes = run_all([(m, [py, "mine_negatives.py", f"--data={cfg.data}", f"--model={cfg.model}",
                          f"--out={cfg.out}/mine/{m}", "--batch_size=256", *MINES[m]],
                      f"{cfg.out}/logs/mine-{m}.log") for m in needed], cfg.workers, env)
    mined = {}
    for m in needed:
        if codes[m] == 0:
            with open(f"{cfg.out}/mine/{m}/metrics.json", encoding="utf-8") as f:
                mined[m] = json.load(f)

    # 2. train, in rounds across conditions
    rounds = itertools.zip_longest(*runs.values())
    jobs = [(name, [py, "train_encoder.py", f"--data={cfg.data}", f"--model={cfg.model}",
                    f"--out={cfg.out}/runs/{name}", "--test_eval=false", *cfg.train_args, *args],
             f"{cfg.out}/logs/{name}.log")
            for r in rounds for job in r if job for name, mine, args in [job] if mine is None or mine in mined]
    codes = run_all(jobs, cfg.workers, env, deadline)

    # 3. per condition: the best run on val, and only it on test
    summary = {"config": vars(cfg), "mined": mined, "conditions": {}}
    for cond, cond_runs in runs.items():
        results = []
        for name, _, args in cond_runs:
            path = f"{cfg.out}/runs/{name}/metrics.json"
            if codes.get(name) == 0 and os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    m = json.load(f)
                results.append({"run": name, "args": args, "best_step": m["best_step"],
                                "val_ndcg@10": m["val"]["ndcg@10"], "train_seconds": m["train_seconds"],
                                "examples_per_s": m["examples_per_s"], "peak_memory_mb": m["peak_memory_mb"]})
            else:
                results.append({"run": name, "args": args, "status": "not run" if codes.get(name) is None
                                else "failed"})
        done = [r for r in results if "val_ndcg@10" in r]
        entry = {"runs": results}
        if done:
            chosen = max(done, key=lambda r: r["val_ndcg@10"])
            test_dir = f"{cfg.out}/runs/{chosen['run']}/test-eval"
            code = subprocess.run([py, "evaluate.py", f"--data={cfg.data}", "--split=test", "--retrievers=dense",
                                   f"--model={cfg.out}/runs/{chosen['run']}/best", f"--out={test_dir}",
                                   "--batch_size=256", "--cache_embeddings=false"], cwd=ROOT, env=env).returncode
            entry["chosen"] = chosen["run"]
            if code == 0:
                with open(f"{test_dir}/metrics.json", encoding="utf-8") as f:
                    entry["test"] = json.load(f)["results"]["dense"]["metrics"]
        summary["conditions"][cond] = entry
    summary["seconds"] = time.time() - t_start
    write_json(f"{cfg.out}/summary.json", summary)
    write_markdown(f"{cfg.out}/summary.md", summary)
    with open(f"{cfg.out}/summary.md", encoding="utf-8") as f:
        print(f.read())
    return 0


def write_markdown(path, summary):
    lines = ["| condition | run | best step | val nDCG@10 | test nDCG@10 | test R@100 |", "|---|---|---|---|---|---|"]
    for cond, entry in summary["conditions"].items():
        for r in sorted(entry["runs"], key=lambda r: -r.get("val_ndcg@10", -1)):
            chosen = r["run"] == entry.get("chosen")
            test = entry.get("test", {}) if chosen else {}
            val = f"{r['val_ndcg@10']:.4f}" if "val_ndcg@10" in r else r["status"]
            lines.append(f"| {cond} | {r['run']}{' ← chosen' if chosen else ''} | {r.get('best_step', '')} | {val} | "
                         + (f"**{test['ndcg@10']:.4f}** | {test['recall@100']:.4f} |" if test else " | |"))
    for m, stats in summary["mined"].items():
        lines.append(f"\nmine {m}: {stats['queries']} queries, {stats['queries_per_s']} q/s, "
                     f"peak RSS {stats['peak_rss_mb']} MB")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli(main)
