"""What a hybrid index costs to serve: load time and per-query latency (p50/p95) of Retriever with the
index's hybrid (BM25 loaded from the index, the two lists mixed) beside dense alone, on an index the
pipeline built and on a 1M-doc synthetic corpus (bench/results/hybrid-cpu.md).

    # an index as `make index` builds it
    python bench/hybrid_latency.py --data=data/python-source --index=runs/python-source-all-MiniLM-L6-v2/index
    # ~1M docs: the data's corpus `copies` times (every copy missing a random 10% of each document's words,
    # bench/bm25_speed.py), its vectors copied with noise (bench/index_scale.py), indexed by build_index.py
    python bench/hybrid_latency.py --data=data/scifact --index=runs/scifact-all-MiniLM-L6-v2/index --copies=193

Queries are the data's test queries, one at a time (retrieve(query, 10)), as a search service sees
them, after one warm-up query. Load time is Retriever.load's (corpus, encoder, FAISS index, and for the
hybrid BM25's weights), each measured in a fresh process; dense and hybrid alternate `rounds` times
and the last round is reported (the first pays for reading the files from disk). Not a test: timings vary run to run.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import decision, fusion  # noqa: E402
from common import index as faiss_index  # noqa: E402
from common.config import load_config  # noqa: E402
from common.data import load_beir, write_beir  # noqa: E402
from common.files import write_json  # noqa: E402
from common.run import cli  # noqa: E402

DEFAULTS = dict(data="data/python-source", index="runs/python-source-all-MiniLM-L6-v2/index", copies=1,
                noise=0.02, drop=0.1, queries=300, rounds=2, seed=0, out="runs/bench/hybrid_latency")

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from common.retrievers import Retriever
from common import decision, fusion
dense = sys.argv[3] == "dense"
if dense:  # the same index served as dense alone: its BM25 never read
    fusion_load = fusion.load
    fusion.load = lambda d, default=fusion.RERANK_ONLY: dict(fusion.DENSE_ONLY)
r = Retriever.load("", sys.argv[1], index_dir=sys.argv[2])
load = time.perf_counter() - t0
queries = json.load(open(sys.argv[4]))
r.retrieve(queries[0], 10)  # warm-up
seconds = []
for q in queries:
    t = time.perf_counter()
    r.retrieve(q, 10)
    seconds.append(time.perf_counter() - t)
print(json.dumps({"load_s": load, "seconds": seconds, "hybrid": r.hybrid}))
"""


def synthetic(cfg, out):
    """A data directory and index of ~copies x the corpus: noisy copies of its documents and vectors
    (an earlier run's, when its index is whole)."""
    from bench.bm25_speed import synthetic_corpus
    from common.backends import load_encoder

    data, index = os.path.join(out, "data"), os.path.join(out, "index")
    if faiss_index.is_index(index):
        return data, index, None
    corpus, queries, qrels = load_beir(cfg.data, "test")
    doc_ids, texts = synthetic_corpus(corpus, cfg.copies, cfg.drop, cfg.seed)
    write_beir(data, {d: {"title": "", "text": t} for d, t in zip(doc_ids, texts)}, queries, {"test": qrels})
    emb = np.load(os.path.join(cfg.index, "embeddings.npy"))
    rng = np.random.default_rng(cfg.seed)
    path = os.path.join(out, "embeddings.npy")
    big = np.lib.format.open_memmap(path, "w+", np.float32, (len(doc_ids), emb.shape[1]))
    big[:len(emb)] = emb
    for copy in range(1, cfg.copies):
        noisy = emb + cfg.noise * rng.standard_normal(emb.shape).astype(np.float32)
        big[copy * len(emb):(copy + 1) * len(emb)] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    big.flush()
    del big
    saved = fusion.load(cfg.index, fusion.DENSE_ONLY)
    model, backend = faiss_index.built_with(cfg.index)
    load_encoder(model, backend)  # fails early if the index's encoder is gone
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "build_index.py", f"--data={data}", f"--model={model}", f"--backend={backend}",
                    f"--embeddings={path}", "--split=none", "--tune_split=none", "--nprobe=8",
                    f"--hybrid_weight={saved.get('weight', 0.3) or 0.3}", f"--out={out}/index"], check=True)
    return data, os.path.join(out, "index"), time.perf_counter() - t0


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(cfg.out, exist_ok=True)
    data, index, build = cfg.data, cfg.index, None
    if cfg.copies > 1:
        data, index, build = synthetic(cfg, os.path.join(cfg.out, f"x{cfg.copies}"))
    _, queries, _ = load_beir(cfg.data, "test")
    texts = list(queries.values())[:cfg.queries]
    query_file = os.path.join(cfg.out, "queries.json")
    with open(query_file, "w") as f:
        json.dump(texts, f)
    rows = {}
    for kind in ("dense", "hybrid") * cfg.rounds:  # alternated; the last round's kept (the files in page cache)
        proc = subprocess.run([sys.executable, "-c", CHILD, data, index, kind, query_file], cwd=root,
                              capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        ms = np.asarray(result["seconds"]) * 1000
        rows[kind] = {"load_s": result["load_s"], "p50_ms": float(np.percentile(ms, 50)),
                      "p95_ms": float(np.percentile(ms, 95)), "served": decision.describe_hybrid(result["hybrid"])}
    docs = sum(1 for _ in open(os.path.join(data, "corpus.jsonl")))
    print(f"{docs:,} docs, {len(texts)} queries one at a time{f', index built in {build:.0f} s' if build else ''}")
    print("| served | load s | p50 ms | p95 ms |\n|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind}: {r['served']} | {r['load_s']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
    write_json(os.path.join(cfg.out, f"x{cfg.copies}.json"), {"docs": docs, "build_s": build, **rows})
    return 0


if __name__ == "__main__":
    cli(main)
