"""BM25 backends side by side: index build time, search_many throughput at k=100, peak memory.

    python bench/bm25_speed.py --data=data/scifact --queries=50               # SciFact as it is
    python bench/bm25_speed.py --repeat_corpus=193 --backends=sparse          # ~1M passages
    python bench/bm25_speed.py --data=data/scale/synth-1m --backends=sparse --queries=1000 --doc_queries=1000

--repeat_corpus=R makes a synthetic large corpus: the corpus R times, every copy after the first
with a random ~10% of each document's words dropped, so the copies are not identical. rank_bm25 is
skipped above --max_rank_bm25_docs, where it would take hours. Each backend runs in its own forked
process, so its peak RSS is its own (ru_maxrss only grows); that includes the corpus text, loaded
before the fork, which the header line measures alone (CODE=<checkout> python bench/bm25_speed.py ...
times another checkout's BM25, an older commit's, on the same data). --doc_queries=N adds N queries of words drawn
from random documents (common words included: the longest posting lists); the sparse backend's search is
timed as served (pruned where that pays) and scoring every posting. Not a test: timings vary run to run.

--backends=bm25s adds the PyPI `bm25s` library as a peer (not a project dependency: install it apart, e.g.
`pip install --no-deps --target /tmp/bm25s-site bm25s` and PYTHONPATH=/tmp/bm25s-site), fed our own tokens
(tokenize_s, one process) so its index and search are what is compared; method "robertson", rank-bm25's
formula but for the idf floor; overlap_at_k: the share of our top k it returns too.
"""
import multiprocessing
import os
import random
import resource
import sys
import time
from itertools import compress

# CODE=<another checkout> (a `git worktree` of an older commit, say) times that checkout's BM25 on the same data.
sys.path.insert(0, os.environ.get("CODE") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common.config import check_choice, load_config  # noqa: E402
from common.data import doc_text, load_beir  # noqa: E402
from common.files import write_json  # noqa: E402
from common import retrievers  # noqa: E402
from common.retrievers import BM25  # noqa: E402
from common.run import cli  # noqa: E402

DEFAULTS = dict(data="data/scifact", split="test", queries=300, repeat_corpus=1, drop=0.1, doc_queries=0,
                backends=["rank_bm25", "sparse"], max_rank_bm25_docs=200000, k=100,
                seed=0, out="runs/bench/bm25_speed.json")


def synthetic_corpus(corpus, repeat, drop, seed):
    """(doc ids, texts): the corpus, then repeat - 1 copies each missing a random `drop` of its words."""
    rng = np.random.default_rng(seed)
    ids, texts = list(corpus), [doc_text(d) for d in corpus.values()]
    all_ids, all_texts = list(ids), list(texts)
    for copy in range(1, repeat):
        all_ids += [f"{i}~{copy}" for i in ids]
        for text in texts:
            words = text.split()
            all_texts.append(" ".join(compress(words, rng.random(len(words)) >= drop)))
    return all_ids, all_texts


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name}, {os.cpu_count()} cores{', avx512_bf16' if 'avx512_bf16' in info else ''}"


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def doc_word_queries(texts, n, seed):
    """n queries of 2 to 6 words drawn from random documents, common words as likely as they are in text:
    the queries whose terms have the longest posting lists."""
    rng = np.random.default_rng(seed)
    queries = []
    for i in rng.integers(0, len(texts), n):
        words = texts[i].split()
        queries.append(" ".join(rng.choice(words, size=min(len(words), int(rng.integers(2, 7))), replace=False)))
    return queries


def measure(backend, doc_ids, texts, query_sets, cfg):
    served = getattr(retrievers, "PRUNE_ABOVE", None)  # the served setting, before the loop below changes it
    t0 = time.perf_counter()
    index = BM25(doc_ids, texts, backend=backend)
    result = {"build_s": time.perf_counter() - t0}
    for name, queries in query_sets.items():
        if not queries:
            continue
        # sparse: pruned where it pays (the default), then every posting scored, for the ratio
        for label, prune_above in ([("", served), ("_unpruned", float("inf"))]
                                   if backend == "sparse" and served is not None else [("", None)]):
            if prune_above is not None:
                retrievers.PRUNE_ABOVE = prune_above
            # Unpruned, common words touch most documents: a batch's scores are batch x docs, so fewer at a time
            # (the served search only batches queries whose postings are short).
            batch = 256 if label == "" else max(1, min(256, 2**30 // (12 * len(doc_ids))))
            t0 = time.perf_counter()
            index.search_many(queries, cfg.k, batch_size=batch)
            result[f"{name}_ms_per_query{label}"] = 1000 * (time.perf_counter() - t0) / len(queries)
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def measure_bm25s(doc_ids, texts, query_sets, cfg):
    import bm25s  # a peer measured here, never imported by the project

    t0 = time.perf_counter()
    tokens = [retrievers.bm25_tokenize(t) or ["\0"] for t in texts]
    result = {"tokenize_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    index = bm25s.BM25(method="robertson", k1=1.2, b=0.4)  # our BM25's defaults
    index.index(tokens, show_progress=False)
    result["build_s"] = time.perf_counter() - t0
    del tokens
    ours = BM25(doc_ids, texts) if query_sets["split"] else None
    for name, queries in query_sets.items():
        if not queries:
            continue
        q_tokens = [retrievers.bm25_tokenize(q) or ["\0"] for q in queries]
        t0 = time.perf_counter()
        rows, _ = index.retrieve(q_tokens, k=cfg.k, n_threads=retrievers.usable_cores(), show_progress=False)
        result[f"{name}_ms_per_query"] = 1000 * (time.perf_counter() - t0) / len(queries)
        want = ours.search_many(queries, cfg.k)
        result[f"{name}_overlap_at_k"] = float(np.mean([len({doc_ids[r] for r in got} & {d for d, _ in w})
                                                        / max(len(w), 1) for got, w in zip(rows, want)]))
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def in_child(fn, *args):
    """fn(*args) in a forked process: it shares the loaded corpus, but its ru_maxrss is its own."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=lambda: queue.put(fn(*args)))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    check_choice(cfg, "backends", (*BM25.BACKENDS, "bm25s"))
    corpus, queries, _ = load_beir(cfg.data, cfg.split)
    queries = list(queries.values())
    queries = random.Random(cfg.seed).sample(queries, min(cfg.queries, len(queries)))
    t0 = time.perf_counter()
    doc_ids, texts = synthetic_corpus(corpus, cfg.repeat_corpus, cfg.drop, cfg.seed)
    print(f"{cfg.data} x{cfg.repeat_corpus}: {len(texts):,} docs ({time.perf_counter() - t0:.1f} s to make), "
          f"{len(queries)} {cfg.split} queries, k={cfg.k}; peak RSS with just the corpus {in_child(peak_rss_gb):.2f} GB")
    results = {}
    for backend in cfg.backends:
        if backend == "rank_bm25" and len(texts) > cfg.max_rank_bm25_docs:
            print(f"rank_bm25 skipped: {len(texts):,} docs > --max_rank_bm25_docs={cfg.max_rank_bm25_docs:,}")
            continue
        query_sets = {"split": queries, "doc_words": doc_word_queries(texts, cfg.doc_queries, cfg.seed)}
        results[backend] = (in_child(measure_bm25s, doc_ids, texts, query_sets, cfg) if backend == "bm25s"
                            else in_child(measure, backend, doc_ids, texts, query_sets, cfg))
    cols = [c for c in ("split_ms_per_query", "split_ms_per_query_unpruned", "doc_words_ms_per_query",
                        "doc_words_ms_per_query_unpruned", "split_overlap_at_k", "doc_words_overlap_at_k")
            if any(c in r for r in results.values())]
    rows = [f"| backend | docs | build s | {' | '.join(cols)} | peak RSS GB |", "|---" * (len(cols) + 4) + "|"]
    rows += [f"| {name} | {len(texts):,} | {r['build_s']:.1f} | "
             + " | ".join(f"{r[c]:.2f}" if c in r else "" for c in cols) + f" | {r['peak_rss_gb']:.2f} |"
             for name, r in results.items()]
    print("\n".join(rows))
    write_json(cfg.out, {"data": cfg.data, "split": cfg.split, "repeat_corpus": cfg.repeat_corpus,
                         "docs": len(texts), "queries": len(queries), "doc_queries": cfg.doc_queries, "k": cfg.k,
                         "cpu": cpu_name(), "results": results})
    print(f"-> {cfg.out}")
    return 0


if __name__ == "__main__":
    cli(main)
