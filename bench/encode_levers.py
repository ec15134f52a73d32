"""BiEncoder.encode's levers, one at a time: docs/s on a corpus sample and nDCG@10 on the test split,
beside sentence-transformers' encode of the same model when it is importable (`make bench-st`).

    # one GPU, SciFact: every lever, the whole corpus for nDCG@10
    python bench/encode_levers.py --data=../shared/data/scifact
    # the CPU: throughput only, on a sample (a whole-corpus pass takes minutes per row)
    python bench/encode_levers.py --data=../shared/data/scifact --limit=300 --ndcg=false --levers=serial,tokens

Rows, each adding one lever to the row before: `serial` (fp32, tokenise -> copy -> forward -> copy
back, one batch at a time: the encode of before issue 23), `bf16` (autocast at bf16), `overlap` (the
next batches tokenised on a thread, pinned non-blocking copies, embeddings copied back in chunks),
`tokens` (batches sized by padded tokens, max_tokens). Each row encodes the sample once to warm up,
then times `repeats` passes (the best is kept: timings vary run to run). Writes <out>/results.json and
prints a markdown table. Not a test.
"""
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import common.models as models  # noqa: E402
from common.config import check_choice, load_config  # noqa: E402
from common.data import doc_text, load_beir  # noqa: E402
from common.files import write_json  # noqa: E402
from common.metrics import evaluate_run  # noqa: E402
from common.retrievers import dense_run  # noqa: E402

LEVERS = ("serial", "bf16", "overlap", "tokens")
DEFAULTS = dict(
    data="../shared/data/scifact",
    model="all-MiniLM-L6-v2",
    levers=list(LEVERS),  # rows, cumulative in this order
    limit=0,  # docs timed: a seeded sample; 0 = the whole corpus
    batch_size=256,  # texts per batch (the rows before `tokens`)
    max_tokens=65_536,  # padded tokens per batch for the `tokens` row
    max_length=256,  # passage and query tokens, both libraries
    repeats=3,
    ndcg=True,  # nDCG@10 of each row on the test split (the whole corpus encoded)
    st=True,  # a sentence-transformers row, when it imports (PYTHONPATH=.bench-st or installed)
    st_path=".bench-st",
    device="auto",
    out="runs/bench/encode_levers",
)


def settings(lever_rows):
    """{row name: encode keyword arguments and whether the overlap is on}, cumulative."""
    rows, current = {}, dict(dtype="fp32", max_tokens=0, overlap=False)
    for lever in lever_rows:
        if lever == "bf16":
            current = {**current, "dtype": "bf16"}
        elif lever == "overlap":
            current = {**current, "overlap": True}
        elif lever == "tokens":
            current = {**current, "max_tokens": None}  # filled from cfg
        rows[lever] = dict(current)
    return rows


def timed(encode, texts, repeats, device):
    encode(texts[:256])
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        encode(texts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def ndcg(encode, corpus, queries, qrels):
    doc_ids, qids = list(corpus), list(queries)
    doc_emb = encode([doc_text(corpus[d]) for d in doc_ids])
    q_emb = encode([queries[q] for q in qids], "query")
    mean, _ = evaluate_run(qrels, dense_run(qids, q_emb, doc_ids, doc_emb, 100))
    return mean["ndcg@10"]


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    check_choice(cfg, "levers", LEVERS)
    device = models.pick_device(cfg.device)
    corpus, queries, qrels = load_beir(cfg.data, "test")
    texts = [doc_text(d) for d in corpus.values()]
    if cfg.limit:
        texts = random.Random(0).sample(texts, min(cfg.limit, len(texts)))
    encoder = models.BiEncoder.from_pretrained(cfg.model, max_query_length=cfg.max_length,
                                               max_passage_length=cfg.max_length).to(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{len(texts):,} docs from {cfg.data} on {gpu}; batch {cfg.batch_size} texts or {cfg.max_tokens:,} tokens")
    results, overlapped = [], models.overlapped
    for name, row in settings(cfg.levers).items():
        models.overlapped = (lambda d: True) if row["overlap"] else (lambda d: False)
        kwargs = dict(dtype=row["dtype"], max_tokens=cfg.max_tokens if row["max_tokens"] is None else 0)

        def encode(t, kind="passage"):
            return encoder.encode(t, kind, cfg.batch_size, show_progress=False, **kwargs)

        result = {"row": name, **kwargs, "overlap": row["overlap"], "docs_per_s": timed(encode, texts, cfg.repeats, device)}
        if cfg.ndcg:
            result["ndcg@10"] = ndcg(encode, corpus, queries, qrels)
        results.append(result)
        print(json.dumps(result), flush=True)
    models.overlapped = overlapped
    if cfg.st:
        results += st_row(cfg, texts, corpus, queries, qrels, device)
    base = results[0]["docs_per_s"]
    lines = ["| row | dtype | overlap | max_tokens | docs/s | x serial | nDCG@10 |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r.get('dtype', '')} | {r.get('overlap', '')} | {r.get('max_tokens', '')} | "
                     f"{r['docs_per_s']:.1f} | {r['docs_per_s'] / base:.2f} | {r.get('ndcg@10', float('nan')):.4f} |")
    print("\n".join(lines))
    write_json(os.path.join(cfg.out, "results.json"), {"config": vars(cfg), "device": gpu, "results": results})
    return 0


def st_row(cfg, texts, corpus, queries, qrels, device):
    """sentence-transformers' encode of the same model directory, at bf16 autocast on a GPU (fp32 on a CPU)."""
    sys.path.insert(0, os.path.abspath(cfg.st_path))
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("sentence-transformers not importable (make bench-st installs it into .bench-st): no ST row")
        return []
    model = SentenceTransformer(models.resolve_model(cfg.model), device=str(device))
    model.max_seq_length = cfg.max_length
    dtype = models.autocast_dtype("auto", device)

    def encode(t, kind="passage"):
        with models.autocast(device, dtype):
            return np.asarray(model.encode(t, batch_size=cfg.batch_size, convert_to_numpy=True), dtype=np.float32)

    result = {"row": "sentence-transformers", "dtype": str(dtype).removeprefix("torch."),
              "docs_per_s": timed(encode, texts, cfg.repeats, device)}
    if cfg.ndcg:
        result["ndcg@10"] = ndcg(encode, corpus, queries, qrels)
    print(json.dumps(result), flush=True)
    return [result]


if __name__ == "__main__":
    main()
