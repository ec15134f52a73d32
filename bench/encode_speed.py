"""Encoding throughput (docs/s): length-sorted vs unsorted batches, and the padding each wastes;
then cross-encoder scoring throughput (pairs/s) and the share of it spent tokenizing.

    python bench/encode_speed.py --data=data/scifact --limit=1000     # a seeded sample of the corpus
    python bench/encode_speed.py --data=data/scifact --limit=0        # the whole corpus (CPU: ~10 min)
    python bench/encode_speed.py --limit=4000 --batch_size=256 --dtype=bfloat16   # on one GPU

Not a test: timings vary ±20% run to run on a shared CPU; read the ratio, not the absolute.
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.config import load_config  # noqa: E402
from common.data import doc_text, read_corpus  # noqa: E402
from common.models import BiEncoder, CrossEncoder, pick_device  # noqa: E402

DEFAULTS = dict(data="data/scifact", model="all-MiniLM-L6-v2", limit=1000, batch_size=64, seed=0, device="auto",
                dtype="float32")  # bfloat16/float16: autocast, as the trainers run on a GPU


def padding_fraction(encoder, texts, batch_size, sort):
    order = np.argsort([-len(t) for t in texts], kind="stable") if sort else np.arange(len(texts))
    real = padded = 0
    for start in range(0, len(texts), batch_size):
        mask = encoder.tokenize([texts[i] for i in order[start:start + batch_size]], "passage")["attention_mask"]
        real += int(mask.sum())
        padded += mask.numel()
    return 1 - real / padded


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    corpus = read_corpus(os.path.join(cfg.data, "corpus.jsonl"))
    texts = [doc_text(d) for d in corpus.values()]
    if cfg.limit:
        texts = random.Random(cfg.seed).sample(texts, min(cfg.limit, len(texts)))
    device, dtype = pick_device(cfg.device), getattr(torch, cfg.dtype)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        measure(cfg, texts, device)
    return 0


def measure(cfg, texts, device):
    encoder = BiEncoder.from_pretrained(cfg.model).to(device)
    print(f"{len(texts)} docs from {cfg.data}, batch {cfg.batch_size}, {encoder.device}, "
          f"{torch.get_num_threads()} threads, max length {encoder.max_length['passage']}")
    encoder.encode(texts[:cfg.batch_size], batch_size=cfg.batch_size)  # warm-up
    rates = {}
    for sort in (True, False):
        t0 = time.perf_counter()
        encoder.encode(texts, batch_size=cfg.batch_size, sort_by_length=sort, show_progress=False)
        seconds = time.perf_counter() - t0
        rates[sort] = len(texts) / seconds
        print(f"{'length-sorted' if sort else 'unsorted':>14}: {rates[sort]:7.1f} docs/s  ({seconds:.1f} s)  "
              f"padding {padding_fraction(encoder, texts, cfg.batch_size, sort):.1%} of tokens")
    print(f"speed-up from sorting: {rates[True] / rates[False]:.2f}x")

    # a reranker's and a teacher's inner loop: (query, passage) pairs, the query cut from the passage
    cross, queries = CrossEncoder.from_pretrained(cfg.model, max_length=256).to(device), [t[:80] for t in texts]
    cross.score(queries[:cfg.batch_size], texts[:cfg.batch_size], batch_size=cfg.batch_size)  # warm-up
    t0 = time.perf_counter()
    cross.score(queries, texts, batch_size=cfg.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, len(texts), cfg.batch_size):
        cross.tokenize(queries[start:start + cfg.batch_size], texts[start:start + cfg.batch_size])
    print(f"cross-encoder: {len(texts) / seconds:7.1f} pairs/s  ({seconds:.1f} s, "
          f"{(time.perf_counter() - t0) / seconds:.0%} of it tokenizing)")


if __name__ == "__main__":
    main()
