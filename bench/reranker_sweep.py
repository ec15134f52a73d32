"""The reranker's evidence in one run: train cross-encoders, rerank with the best, distil it.

    # one GPU, several runs at a time (each is small next to an H100)
    python bench/reranker_sweep.py --data=data/scifact --workers=7
    # a CPU check of the plumbing: a tiny model, one run per grid
    python bench/reranker_sweep.py --model=<tiny model dir> --lrs=5e-5 --negatives=3 --epochs=1 \
        --distill=mm-lr5e-5 --encoder_epochs=1 --workers=2

1. BM25 negatives for the train queries (mine_negatives.py, 30 per query).
2. A grid of rerankers (learning rate x negatives per group), beside the bi-encoder recipe that was
   best in bench/negatives_sweep.py (BM25 negatives, 3 per query, lr 5e-5, 3 epochs), retrained.
3. The reranker with the best val nDCG@10 (BM25 top val_depth reranked) reranks the test top
   rerank_depth of BM25, of the bi-encoder and of their RRF fusion (evaluate.py).
4. The same BM25 negatives mined again with that reranker as teacher (its scores kept).
5. Bi-encoders distilled from it (margin-MSE alone and with infonce, settings in DISTILL); per loss
   the best on val, and only it, is evaluated on test.
Test never chooses anything. Runs start in order and none starts after `deadline_s`.
Writes <out>/summary.json and <out>/summary.md. Not a test: it trains a dozen models.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.jobs import ROOT, read_json, run_all, thread_env  # noqa: E402
from common.config import load_config  # noqa: E402
from common.files import write_json  # noqa: E402
from common.run import cli  # noqa: E402

DEFAULTS = dict(
    data="data/scifact",
    model="all-MiniLM-L6-v2",
    out="runs/bench/reranker_sweep",
    # rerankers: every lr x negatives, listwise loss
    lrs=[2e-5, 5e-5, 1e-4],
    negatives=[7, 15],
    epochs=6,
    reranker_args=["--batch_size=16", "--eval_every=23", "--save_every=0", "--eval_batch_size=256"],
    rerank_depth=100,  # 0 = skip step 3
    # bi-encoders: the infonce recipe, and the distilled ones (names of DISTILL)
    encoder_epochs=3,  # 0 = skip the infonce bi-encoder
    distill=["mm-lr5e-5", "mm-lr1e-4", "in+mm-lr5e-5", "in+mm0.1-lr5e-5"],
    distill_epochs=5,
    encoder_args=["--symmetric=true", "--batch_size=32", "--hard_negatives=3", "--val_full_corpus=true",
                  "--eval_batch_size=256", "--eval_every=12", "--save_every=0"],
    workers=4,
    deadline_s=0,  # > 0: start no run after this many seconds
)
# train_encoder.py settings of the distilled bi-encoders, by name
DISTILL = {
    "mm-lr5e-5": ["--loss=margin_mse", "--lr=5e-5"],
    "mm-lr1e-4": ["--loss=margin_mse", "--lr=1e-4"],
    "in+mm-lr5e-5": ["--loss=infonce,margin_mse", "--loss_weights=1,1", "--lr=5e-5"],
    "in+mm0.1-lr5e-5": ["--loss=infonce,margin_mse", "--loss_weights=1,0.1", "--lr=5e-5"],
}


def val_of(path):
    m = read_json(path)
    return None if m is None or not m.get("val") else m["val"]["ndcg@10"]


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    t_start = time.time()
    deadline = t_start + cfg.deadline_s if cfg.deadline_s > 0 else None
    env = thread_env(cfg.workers)
    py, out, data = sys.executable, cfg.out, f"--data={cfg.data}"
    summary = {"config": vars(cfg)}

    def save():
        summary["seconds"] = time.time() - t_start
        write_json(f"{out}/summary.json", summary)
        write_markdown(f"{out}/summary.md", summary)

    def mine(name, *args):
        cmd = [py, "mine_negatives.py", data, f"--model={cfg.model}", f"--out={out}/mine/{name}", "--strategy=bm25",
               "--bm25_backend=sparse", "--num_negatives=30", "--batch_size=256", *args]
        code = run_all([(name, cmd, f"{out}/logs/mine-{name}.log")], 1, env)[name]
        summary.setdefault("mined", {})[name] = read_json(f"{out}/mine/{name}/metrics.json") if code == 0 else None
        return code == 0

    def test_eval(name, *args):
        """evaluate.py on test; its results, or None."""
        cmd = [py, "evaluate.py", data, "--split=test", f"--out={out}/test/{name}", "--batch_size=256",
               "--rerank_batch_size=256", "--cache_embeddings=false", *args]
        code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        m = read_json(f"{out}/test/{name}/metrics.json") if code == 0 else None
        return m and {k: {**v["metrics"], **({"ms_per_query": v["latency_ms"]["p50"]} if "+rerank" in k else {})}
                      for k, v in m["results"].items()}

    # 1. BM25 negatives
    if not mine("bm25"):
        save()
        return 1
    train_file = f"--train_file={out}/mine/bm25/train.jsonl"

    # 2. rerankers, and the infonce bi-encoder beside them
    rerankers = [(f"rr-lr{lr:g}-n{n}", [py, "train_reranker.py", data, f"--model={cfg.model}", train_file,
                                         f"--out={out}/runs/rr-lr{lr:g}-n{n}", f"--lr={lr}", f"--negatives={n}",
                                         f"--epochs={cfg.epochs}", "--test_eval=false", *cfg.reranker_args],
                  f"{out}/logs/rr-lr{lr:g}-n{n}.log") for lr in cfg.lrs for n in cfg.negatives]
    encoder = [("infonce", [py, "train_encoder.py", data, f"--model={cfg.model}", train_file,
                            f"--out={out}/runs/infonce", "--lr=5e-5", f"--epochs={cfg.encoder_epochs}",
                            "--test_eval=false", *cfg.encoder_args], f"{out}/logs/infonce.log")]
    codes = run_all((encoder if cfg.encoder_epochs > 0 else []) + rerankers, cfg.workers, env, deadline)
    summary["rerankers"] = {name: {"status": "not run" if codes[name] is None else "failed" if codes[name] else "done",
                                   "val_ndcg@10": val_of(f"{out}/runs/{name}/metrics.json"),
                                   "metrics": read_json(f"{out}/runs/{name}/metrics.json")}
                            for name, _, _ in rerankers}
    scored = {n: r["val_ndcg@10"] for n, r in summary["rerankers"].items() if r["val_ndcg@10"] is not None}
    if not scored:
        save()
        return 1
    chosen = summary["chosen_reranker"] = max(scored, key=scored.get)
    teacher = f"{out}/runs/{chosen}/best"
    summary["encoders"] = {"infonce": {"val_ndcg@10": val_of(f"{out}/runs/infonce/metrics.json"),
                                       "settings": f"infonce lr 5e-5, {cfg.encoder_epochs} epochs"}
                           } if cfg.encoder_epochs > 0 else {}

    # 3. two-stage retrieval on test: BM25, the bi-encoder and their fusion, each reranked
    encoder_model = f"{out}/runs/infonce/best" if codes.get("infonce") == 0 else cfg.model
    summary["two_stage"] = cfg.rerank_depth > 0 and test_eval("two-stage", "--retrievers=bm25,dense,hybrid", f"--model={encoder_model}",
                                     f"--rerank={teacher}", f"--rerank_depth={cfg.rerank_depth}")
    summary["two_stage_encoder"] = encoder_model
    save()

    # 4. teacher scores on the same negatives; 5. distilled bi-encoders
    if not mine("bm25-teacher", f"--teacher={teacher}"):
        save()
        return 1
    jobs = [(name, [py, "train_encoder.py", data, f"--model={cfg.model}", f"--out={out}/runs/{name}",
                    f"--train_file={out}/mine/bm25-teacher/train.jsonl", f"--epochs={cfg.distill_epochs}",
                    "--test_eval=false", *cfg.encoder_args, *DISTILL[name]], f"{out}/logs/{name}.log")
            for name in cfg.distill]
    codes.update(run_all(jobs, cfg.workers, env, deadline))
    for name in cfg.distill:
        summary["encoders"][name] = {"val_ndcg@10": val_of(f"{out}/runs/{name}/metrics.json"),
                                     "settings": f"{' '.join(DISTILL[name])}, {cfg.distill_epochs} epochs",
                                     "status": "not run" if codes[name] is None else "failed" if codes[name] else "done"}
    by_loss = {}
    for name, r in summary["encoders"].items():
        if r["val_ndcg@10"] is not None:
            loss = "infonce" if name == "infonce" else DISTILL[name][0].split("=")[1]
            by_loss.setdefault(loss, []).append((r["val_ndcg@10"], name))
    for loss, runs in sorted(by_loss.items()):
        name = max(runs)[1]
        if name == "infonce" and summary["two_stage"] and encoder_model != cfg.model:  # already on test, as the two-stage first stage
            summary["encoders"][name]["test"] = summary["two_stage"]["dense"]
        else:
            result = test_eval(name, "--retrievers=dense", f"--model={out}/runs/{name}/best")
            summary["encoders"][name]["test"] = result and result["dense"]
        summary["encoders"][name]["chosen"] = True
    save()
    with open(f"{out}/summary.md", encoding="utf-8") as f:
        print(f.read())
    return 0


def write_markdown(path, summary):
    lines = ["## Rerankers (val: BM25 top 30 reranked; chosen on val)", "",
             "| run | best step | val nDCG@10 | pairs/s (train) |", "|---|---|---|---|"]
    for name, r in sorted(summary.get("rerankers", {}).items(), key=lambda kv: -(kv[1]["val_ndcg@10"] or -1)):
        m = r["metrics"] or {}
        mark = " ← chosen" if name == summary.get("chosen_reranker") else ""
        val = f"{r['val_ndcg@10']:.4f}" if r["val_ndcg@10"] is not None else r["status"]
        lines.append(f"| {name}{mark} | {m.get('best_step', '')} | {val} | {m.get('pairs_per_s', 0):.0f} |")
    if summary.get("two_stage"):
        lines += ["", f"## Test, top {summary['config']['rerank_depth']} reranked by the chosen reranker "
                  f"(first stage bi-encoder: {summary['two_stage_encoder']})", "",
                  "| retriever | nDCG@10 | R@10 | R@100 | rerank ms/query |", "|---|---|---|---|---|"]
        for name, m in summary["two_stage"].items():
            ms = f"{m['ms_per_query']:.0f}" if "ms_per_query" in m else ""
            lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['recall@100']:.4f} | {ms} |")
    if summary.get("encoders"):
        lines += ["", "## Bi-encoders (BM25 negatives, 3 per query; chosen on val per loss)", "",
                  "| run | settings | val nDCG@10 | test nDCG@10 | test R@100 |", "|---|---|---|---|---|"]
        for name, r in summary["encoders"].items():
            test = r.get("test") or {}
            val = f"{r['val_ndcg@10']:.4f}" if r["val_ndcg@10"] is not None else r.get("status", "")
            lines.append(f"| {name}{' ← chosen' if r.get('chosen') else ''} | {r['settings']} | {val} | "
                         + (f"**{test['ndcg@10']:.4f}** | {test['recall@100']:.4f} |" if test else " | |"))
    for name, m in (summary.get("mined") or {}).items():
        if m:
            lines.append(f"\nmine {name}: {m['queries']} queries, {m['queries_per_s']} q/s")
    lines.append(f"\n{summary.get('seconds', 0):.0f} s in all")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli(main)
