"""mine_negatives.py on a synthetic corpus of about a million passages: wall time, queries/s, peak RSS.

    # one GPU: 5,183 SciFact docs x 193 = 1.0M passages, dense negatives for the 728 train queries
    python bench/mining_scale.py --data=data/scifact --repeat_corpus=193 -- --strategy=dense --batch_size=256
    # the same with the sparse BM25 backend (CPU)
    python bench/mining_scale.py --repeat_corpus=193 -- --strategy=bm25 --bm25_backend=sparse
    # a quick check of the plumbing
    python bench/mining_scale.py --repeat_corpus=2 -- --strategy=bm25

Everything after `--` goes to mine_negatives.py. The synthetic corpus is bm25_speed.py's: the corpus,
then repeat_corpus - 1 copies each missing a random 10% of its words, so copies are near-duplicates
that compete with the originals (the hard case for a miner) but are not identical. It is written as a
BEIR directory (<out>/data: the corpus, the train queries and their qrels, so only originals are
positives), then mine_negatives.py runs on it in a child process, whose metrics.json holds its own
queries/s and peak RSS. Not a test: timings vary run to run.
"""
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bm25_speed import synthetic_corpus  # noqa: E402  (a sibling bench script)

from common.config import load_config  # noqa: E402
from common.data import load_beir, write_queries  # noqa: E402
from common.files import atomic_open, write_json  # noqa: E402
from common.run import cli  # noqa: E402

DEFAULTS = dict(data="data/scifact", split="train", repeat_corpus=193, drop=0.1, seed=0,
                out="runs/bench/mining_scale")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_synthetic(cfg, data_dir):
    corpus, queries, _ = load_beir(cfg.data, cfg.split)
    doc_ids, texts = synthetic_corpus(corpus, cfg.repeat_corpus, cfg.drop, cfg.seed)
    os.makedirs(os.path.join(data_dir, "qrels"), exist_ok=True)
    with atomic_open(os.path.join(data_dir, "corpus.jsonl")) as f:
        for doc_id, text in zip(doc_ids, texts):
            f.write(json.dumps({"_id": doc_id, "title": "", "text": text}, ensure_ascii=False) + "\n")
    write_queries(os.path.join(data_dir, "queries.jsonl"), queries)
    shutil.copyfile(os.path.join(cfg.data, "qrels", f"{cfg.split}.tsv"),
                    os.path.join(data_dir, "qrels", f"{cfg.split}.tsv"))
    return len(doc_ids), len(queries)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    cfg, mine_args = load_config(DEFAULTS, argv[:split]), argv[split + 1:]
    data_dir, mine_dir = os.path.join(cfg.out, "data"), os.path.join(cfg.out, "mine")
    t0 = time.perf_counter()
    docs, queries = write_synthetic(cfg, data_dir)
    build_s = time.perf_counter() - t0
    print(f"{data_dir}: {docs:,} passages, {queries} {cfg.split} queries, written in {build_s:.0f}s", flush=True)

    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "mine_negatives.py"), f"--data={data_dir}",
                    f"--split={cfg.split}", f"--out={mine_dir}", *mine_args], check=True)
    wall_s = time.perf_counter() - t0
    with open(os.path.join(mine_dir, "metrics.json"), encoding="utf-8") as f:
        mined = json.load(f)
    import torch

    summary = {"passages": docs, "queries": queries, "corpus_write_s": round(build_s, 1),
               "mine_wall_s": round(wall_s, 1), "mine_args": mine_args, "mined": mined,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "cpus": os.cpu_count()}
    write_json(os.path.join(cfg.out, "summary.json"), summary)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    cli(main)
