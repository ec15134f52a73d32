"""FAISS index types against exact search: on SciFact, and on a 1M x 384 set with the structure of
real text embeddings. Recall@10/@100 against exact search, queries/s, build time and size.

    # 1) embed SciFact once (build_index.py keeps embeddings.npy beside the index)
    python build_index.py --data=data/scifact --factory=Flat --out=runs/bench/index/scifact
    # 2) every factory over those vectors, and over 193 noisy copies of each (1.0M vectors)
    python bench/index_scale.py --index=runs/bench/index/scifact
    # a quick check of the plumbing
    python bench/index_scale.py --index=runs/bench/index/scifact --copies=2 --factories="Flat;IVF,Flat"

The 1M set: every SciFact corpus embedding copied `copies` times, each copy plus Gaussian noise
(`noise` per dimension) and renormalised, so the copies of a document stay near each other and near
their queries, the way a large real corpus holds near-duplicates. Uniformly random unit vectors
would have no structure for an ANN index to exploit. The queries are the SciFact test queries'
embeddings (the report) and the train queries' (nprobe / efSearch tuned on them to
`target_recall`, never on test). Queries/s is for the whole query set searched in batches, on
this machine's threads. Not a test: timings vary run to run.
"""
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import index as faiss_index  # noqa: E402
from common.backends import load_encoder  # noqa: E402
from common.config import load_config  # noqa: E402
from common.data import read_qrels, read_queries  # noqa: E402
from common.files import atomic_open, write_json  # noqa: E402
from common.run import cli  # noqa: E402

DEFAULTS = dict(
    index="runs/bench/index/scifact",  # a build_index.py directory with embeddings.npy
    data="data/scifact",
    factories="Flat;IVF,Flat;IVF,SQ8;IVF,PQ32;OPQ32,IVF,PQ32;HNSW32",  # ";"-separated: factories hold commas
    copies=193,  # 5,183 docs x 193 = 1.0M vectors
    noise=0.02,  # per-dimension std of the noise added to each copy, before renormalising
    target_recall=0.95,
    seed=0,
    out="runs/bench/index_scale",
)


def split_texts(data, split):
    queries = read_queries(os.path.join(data, "queries.jsonl"))
    return [queries[q] for q in read_qrels(os.path.join(data, "qrels", f"{split}.tsv"), queries)]


def noisy_copies(emb, copies, noise, path, seed):
    """copies x len(emb) rows into a memory-mapped .npy: copy 0 is emb itself, the others noisy."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, "w+", np.float32, (copies * len(emb), emb.shape[1]))
    for c in range(copies):
        x = emb if c == 0 else emb + rng.normal(0, noise, emb.shape).astype(np.float32)
        out[c * len(emb):(c + 1) * len(emb)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return out


def index_bytes(index):
    return int(faiss_index.faiss_module().serialize_index(index).nbytes)


def bench(name, emb, tune_q, test_q, cfg):
    n = len(emb)
    print(f"\n== {name}: {n:,} x {emb.shape[1]}", flush=True)
    t0 = time.perf_counter()
    exact = faiss_index.flat_ip(emb)
    exact_tune = faiss_index.search(exact, tune_q, 10)[1]
    exact_test, exact_qps = faiss_index.timed_search(exact, test_q, 100, min_seconds=2.0)
    flat_bytes = index_bytes(exact)
    del exact
    print(f"exact: {exact_qps:.0f} queries/s ({time.perf_counter() - t0:.0f}s with the ground truth)", flush=True)
    rows = []
    for spec in cfg.factories.split(";"):
        factory = faiss_index.resolve_factory(spec, n)
        if factory == "Flat":
            rows.append(dict(factory="Flat", build_s=0.0, size_mb=flat_bytes / 2**20, param="", recall10=1.0,
                             recall100=1.0, qps=exact_qps, speedup=1.0))
            continue
        t0 = time.perf_counter()
        index, _ = faiss_index.build(emb, factory, seed=cfg.seed)
        build_s = time.perf_counter() - t0
        tried = faiss_index.tune(index, tune_q, exact_tune, cfg.target_recall)
        got, rate = faiss_index.timed_search(index, test_q, 100, min_seconds=2.0)
        row = dict(factory=factory, build_s=build_s, size_mb=index_bytes(index) / 2**20,
                   param=", ".join(f"{k}={v}" for k, v in faiss_index.search_params(index).items()),
                   tune_recall10=tried[-1][1] if tried else 1.0,
                   recall10=faiss_index.recall_at(got, exact_test, 10),
                   recall100=faiss_index.recall_at(got, exact_test, 100), qps=rate, speedup=rate / exact_qps)
        rows.append(row)
        print(f"{factory:>22}: built {build_s:6.0f}s, {row['size_mb']:7.0f} MiB, {row['param']:>14}, test recall@10 "
              f"{row['recall10']:.3f} @100 {row['recall100']:.3f}, {rate:8.0f} q/s ({row['speedup']:.1f}x exact)",
              flush=True)
        del index
    return rows


def table(name, rows):
    lines = [f"### {name}", "", "| index | build s | size MiB | search setting | recall@10 | recall@100 | queries/s "
             "| × Flat |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['factory']} | {r['build_s']:.0f} | {r['size_mb']:.0f} | {r['param']} | {r['recall10']:.3f} "
                     f"| {r['recall100']:.3f} | {r['qps']:.0f} | {r['speedup']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    with open(os.path.join(cfg.index, "index.json"), encoding="utf-8") as f:
        meta = json.load(f)
    emb = np.load(os.path.join(cfg.index, "embeddings.npy"))
    encoder = load_encoder(meta["model"], meta.get("backend", "torch"))
    tune_q = encoder.encode(split_texts(cfg.data, "train"), "query")
    test_q = encoder.encode(split_texts(cfg.data, "test"), "query")
    threads = faiss_index.faiss_module().omp_get_max_threads()
    print(f"{meta['model']}: {len(tune_q)} train queries (tuning), {len(test_q)} test queries (report); "
          f"FAISS on {threads} threads")
    os.makedirs(cfg.out, exist_ok=True)
    results = {"scifact": bench("SciFact", emb, tune_q, test_q, cfg)}
    with tempfile.TemporaryDirectory(dir=cfg.out, prefix=".vectors-") as tmp:
        big = noisy_copies(emb, cfg.copies, cfg.noise, os.path.join(tmp, "big.npy"), cfg.seed)
        name = f"{len(big) / 1e6:.1f}M (SciFact x {cfg.copies}, noise {cfg.noise})"
        results["big"] = bench(name, big, tune_q, test_q, cfg)
        del big
    text = (f"FAISS on {threads} threads; nprobe / efSearch tuned on {len(tune_q)} train queries to recall@10 >= "
            f"{cfg.target_recall} against exact search; recall and queries/s on {len(test_q)} test queries.\n\n"
            + table("SciFact", results["scifact"]) + "\n" + table(name, results["big"]))
    print("\n" + text)
    with atomic_open(os.path.join(cfg.out, "results.md")) as f:
        f.write(text)
    write_json(os.path.join(cfg.out, "results.json"), {"config": vars(cfg), **results})
    return 0


if __name__ == "__main__":
    cli(main)
