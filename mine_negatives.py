"""Mine hard negatives for the training queries and write the training file train_encoder.py reads.

    # CPU: BM25 negatives for the default data (runs/<dataset>/mine-bm25/train.jsonl)
    python mine_negatives.py
    # dense negatives from a fine-tuned encoder, skipping its top 3 (likely unlabelled positives)
    python mine_negatives.py --data=data/scifact --strategy=dense --model=runs/scifact-all-MiniLM-L6-v2/encoder/best --skip_top=3
    # a mix: 10 BM25, 10 dense and 5 random negatives per query; one GPU encodes and searches
    python mine_negatives.py --strategy=bm25,dense,random --num_negatives=10,10,5
    # denoised by a cross-encoder, whose scores also feed margin_mse
    python mine_negatives.py --strategy=dense --teacher=runs/scifact-all-MiniLM-L6-v2/reranker/best
    # then train on them: k of each query's negatives are drawn every epoch
    python train_encoder.py --train_file=runs/scifact/mine-bm25/train.jsonl --hard_negatives=3
    # the reranker's training file (LCE): the first stage an index serves (build_index.py: its encoder,
    # BM25 or their mix, as val chose), its own candidates, with BM25's and random ones
    python mine_negatives.py --index=runs/scifact-all-MiniLM-L6-v2/index --strategy=index,bm25,random \
        --num_negatives=12,4,2 --sampling=random --max_rank=50 --out=runs/scifact-all-MiniLM-L6-v2/mine-reranker

One process does the work (torchrun is not needed: mining is encoding plus search, and one GPU
encodes a million passages in minutes). Run directory: train.jsonl, config.json (re-mining in
train_encoder.py reads the strategy and filters from it), command.txt, metrics.json (counts,
queries/s, peak memory).
"""
import os
import random
import resource
import sys
import tempfile
import time

import torch

from common import index as faiss_index
from common import mining
from common.config import Auto, ConfigError, check_choice, load_config
from common.data import load_beir
from common.files import write_json
from common.memory import Memory
from common.models import BiEncoder, CrossEncoder, autocast, autocast_dtype, dtype_name, pick_device, slow_autocast
from common.retrievers import Retriever, join_ranks
from common.run import cache_dir, cli, start_run, warn

DEFAULTS = dict(
    # data
    data="data/python-source",  # a directory prepared by prepare_data.py (BEIR layout)
    split="train",  # whose queries get negatives; never mine test
    max_queries=Auto(int),  # > 0: a seeded sample of this many queries; 0 = all; auto = all, but with a
    #                        teacher on a CPU (slow: a cross-encoder per pair) as many as it scores in about 10 minutes
    out="",  # run directory; "" = runs/<dataset>/mine-<strategies>
    # what to mine: one count per strategy, e.g. strategy=bm25,dense,random num_negatives=10,10,5
    strategy=["bm25"],  # bm25 | dense | random | semi-hard (dense candidates just below the positive) |
    #                    index (the first stage --index serves: its encoder, BM25 or their mix)
    num_negatives=[30],  # kept per query and strategy; train_encoder.py draws hard_negatives of them per epoch
    sampling="top",  # top | random: which candidates of the rank window are kept
    # false negatives: a labelled positive is never a negative; beyond that
    skip_top=0,  # skip each retriever's top ranks, where unlabelled positives sit
    max_rank=100,  # candidates come from ranks skip_top+1 .. max_rank
    max_score_ratio=0.0,  # > 0: drop candidates scoring above this fraction of the positive's score
    semi_hard_margin=0.1,  # semi-hard: s(q,p) - margin < s(q,n) < s(q,p), in cosine similarity
    teacher="",  # a cross-encoder directory: drop what it scores as relevant, and keep its scores
    teacher_margin=0.0,  # drop candidates the teacher scores above (best positive - margin)
    # dense
    model="",  # the encoder for dense and semi-hard; "" = the one `index` was built with, else all-MiniLM-L6-v2
    index="",  # a build_index.py directory over this corpus: dense searches it (its embeddings.npy is
    #            reused: nothing is encoded but the queries), index serves its first stage; "" = exact search
    batch_size=64,
    device="auto",
    dtype="auto",  # auto | fp32 | bf16 | fp16 for encoding and scoring: auto as train_encoder.py
    # bm25
    bm25_k1=1.2,
    bm25_b=0.4,
    bm25_backend="sparse",  # sparse (scipy, one sparse product a batch) | rank_bm25 (the reference: the same scores, far slower)
    seed=42,
)
CPU_TEACHER_PAIRS = 6_000  # what a CPU teacher scores in about 10 minutes (max_queries=auto)


def check_config(cfg):
    check_choice(cfg, "strategy", mining.STRATEGIES)
    check_choice(cfg, "sampling", ("top", "random"))
    check_choice(cfg, "bm25_backend", ("rank_bm25", "sparse"))
    check_choice(cfg, "dtype", ("auto", "fp32", "bf16", "fp16"))
    if len(cfg.num_negatives) != len(cfg.strategy):
        raise ConfigError(f"strategy={cfg.strategy} needs one count each, got num_negatives={cfg.num_negatives}")
    if len(set(cfg.strategy)) != len(cfg.strategy):
        raise ConfigError(f"strategy={cfg.strategy} names a strategy twice; give it one larger count instead")
    if any(n < 1 for n in cfg.num_negatives):
        raise ConfigError(f"num_negatives={cfg.num_negatives}: every count must be at least 1")
    if not 0 <= cfg.skip_top < cfg.max_rank:
        raise ConfigError(f"skip_top={cfg.skip_top}, max_rank={cfg.max_rank}: need 0 <= skip_top < max_rank")
    if cfg.max_queries != "auto" and cfg.max_queries < 0:
        raise ConfigError(f"max_queries={cfg.max_queries}: 0 mines every query, > 0 a sample of that many")
    if cfg.split == "test":
        raise ConfigError("split=test: negatives are for training; mine train (or val for a held-out check)")
    if "index" in cfg.strategy and not cfg.index:
        raise ConfigError("strategy=index mines the first stage a build_index.py directory serves: pass --index=DIR")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    check_config(cfg)
    dataset = os.path.basename(os.path.normpath(cfg.data))
    cfg.out = cfg.out or os.path.join("runs", dataset, "mine-" + "-".join(cfg.strategy))
    join_ranks(cfg)  # under torchrun: the corpus encoded by every rank, a slice each
    corpus, queries, qrels = load_beir(cfg.data, cfg.split)
    device = pick_device(cfg.device)
    if cfg.max_queries == "auto":
        # A teacher scores each query's positives and 2 x num_negatives candidates per strategy.
        pairs = 1 + 2 * sum(cfg.num_negatives)
        cfg.max_queries = CPU_TEACHER_PAIRS // pairs if cfg.teacher and device.type == "cpu" else 0
        if cfg.max_queries and cfg.max_queries < len(queries):
            warn(f"teacher on a CPU: scoring {cfg.max_queries:,} of the {len(queries):,} {cfg.split} queries "
                 "(~10 minutes); max_queries=0 scores them all")
    if 0 < cfg.max_queries < len(queries):
        kept = sorted(random.Random(cfg.seed).sample(sorted(queries), cfg.max_queries))
        queries = {q: queries[q] for q in kept}
    positives = {q: {d for d, g in row.items() if g >= 1} for q, row in qrels.items()}
    dtype = autocast_dtype(cfg.dtype, device)
    if slow_autocast(dtype, device):
        warn(f"dtype={cfg.dtype} on a CPU without native bf16: autocast is emulated there, slower than fp32")
    cfg.dtype = dtype_name(dtype)  # resolved before any work, as the run's config saves it
    needs_dense = bool({"dense", "semi-hard"} & set(cfg.strategy))
    cfg.model = cfg.model or (faiss_index.built_with(cfg.index)[0] if cfg.index else "all-MiniLM-L6-v2")
    encoder = BiEncoder.from_pretrained(cfg.model).to(device) if needs_dense else None
    if encoder is not None:
        encoder.encode_dtype = cfg.dtype  # the encoding is the dense part's cost
    teacher = CrossEncoder.from_pretrained(cfg.teacher).to(device) if cfg.teacher else None
    if teacher is not None:
        teacher.score_dtype = cfg.dtype
    index = faiss_index.load(cfg.index, list(corpus), encoder) if cfg.index and needs_dense else None
    doc_emb = faiss_index.stored_embeddings(cfg.index, len(corpus), encoder) if index is not None else None
    if index is not None and Memory.load(cfg.index).strengths["dense"] and doc_emb is not None:
        index = None  # its vectors hold a memory: mine the encoder's own (exact search over embeddings.npy)
    start_run(cfg.out, cfg, argv)
    print(f"{dataset}/{cfg.split}: {len(queries)} queries, {len(corpus)} docs; "
          + ", ".join(f"{n} {s}" for s, n in zip(cfg.strategy, cfg.num_negatives)) + " negatives each")

    t0 = time.time()
    first_stage = (Retriever.from_index(cfg.index, os.path.join(cfg.data, "corpus.jsonl"), corpus, device=cfg.device,
                                        batch_size=cfg.batch_size, memory=False) if "index" in cfg.strategy else None)
    sources = mining.Sources(cfg, corpus, first_stage, os.path.join(cfg.data, "corpus.jsonl"), cache_dir(cfg))
    with (tempfile.TemporaryDirectory(dir=cfg.out, prefix=".emb-") as tmp,  # removed even on Ctrl-C
          autocast(device, dtype)):
        records, stats = mining.mine(cfg, corpus, queries, positives, sources, encoder, teacher, index,
                                     os.path.join(tmp, "corpus.npy"), cfg.batch_size, doc_emb)
    seconds = time.time() - t0
    path = os.path.join(cfg.out, "train.jsonl")
    mining.write_records(path, records)

    if stats["skipped_no_positive"]:
        warn(f"{cfg.data}: {stats['skipped_no_positive']} {cfg.split} queries without a positive were skipped")
    if stats["short_queries"]:
        warn(f"{stats['short_queries']} (query, strategy) lists got fewer negatives than asked (the rank window "
             f"{cfg.skip_top + 1}..{cfg.max_rank} after filtering is too small): raise max_rank or lower skip_top")
    stats.update(seconds=round(seconds, 2), queries_per_s=round(stats["queries"] / max(seconds, 1e-9), 2),
                 peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                 negatives_per_query=round(stats["negatives"] / max(stats["queries"], 1), 2))
    write_json(os.path.join(cfg.out, "metrics.json"), stats)
    print(f"wrote {path}: {stats['queries']} queries, {stats['negatives_per_query']} negatives each, "
          f"{stats['queries_per_s']} queries/s, peak RSS {stats['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    cli(main)
