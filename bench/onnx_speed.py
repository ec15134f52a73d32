"""PyTorch fp32 vs ONNX fp32 vs ONNX int8 (export_onnx.py --quantize=true) for the bi-encoder on CPU:
docs/s at the same batch on the same SciFact passages, and SciFact test nDCG@10 with each.

    # 1) export the encoder (and its int8 twin); 2) embed SciFact with torch once (build_index.py)
    python export_onnx.py --model=all-MiniLM-L6-v2 --quantize=true --data=data/scifact --out=runs/bench/onnx/minilm
    python build_index.py --data=data/scifact --factory=Flat --out=runs/bench/index/scifact
    # 3) speed on 512 passages, then nDCG@10 with the whole corpus re-embedded by int8 (and fp32 ONNX)
    python bench/onnx_speed.py --onnx=runs/bench/onnx/minilm --index=runs/bench/index/scifact

Speed: `docs` passages (the first of the corpus, so every backend reads the same text), encoded in
length-sorted batches of `batch_size`, each backend timed `repeats` times after one warm-up pass;
the best time is kept (the machine's noise only ever adds). nDCG@10: the torch embeddings come
from build_index.py's embeddings.npy (same model), the ONNX ones are encoded here. Not a test.
"""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.backends import load_encoder  # noqa: E402
from common.config import load_config  # noqa: E402
from common.data import doc_text, load_beir  # noqa: E402
from common.files import atomic_open, write_json  # noqa: E402
from common.metrics import cut_run, evaluate_run  # noqa: E402
from common.retrievers import dense_run  # noqa: E402
from common.run import cli  # noqa: E402

DEFAULTS = dict(
    onnx="runs/bench/onnx/minilm",  # an export_onnx.py directory with model.onnx and model.int8.onnx
    index="runs/bench/index/scifact",  # build_index.py directory of the same model: embeddings.npy
    data="data/scifact",
    docs=512,
    batch_size=32,
    repeats=3,
    ndcg=True,  # also re-embed the corpus with each ONNX model for test nDCG@10
    out="runs/bench/onnx_speed",
)


def docs_per_s(encoder, texts, batch_size, repeats):
    encoder.encode(texts[:batch_size], "passage", batch_size)  # warm-up: allocations, kernel choice
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode(texts, "passage", batch_size)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    corpus, queries, qrels = load_beir(cfg.data, "test")
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    with open(os.path.join(cfg.index, "index.json"), encoding="utf-8") as f:
        torch_model = json.load(f)["model"]
    backends = {"torch fp32": (torch_model, "torch"), "onnx fp32": (cfg.onnx, "onnx"),
                "onnx int8": (cfg.onnx, "onnx-int8")}
    encoders = {name: load_encoder(model, backend, "cpu") for name, (model, backend) in backends.items()}

    rows = {}
    sample = texts[:cfg.docs]
    for name, encoder in encoders.items():
        rows[name] = {"docs_per_s": docs_per_s(encoder, sample, cfg.batch_size, cfg.repeats)}
        print(f"{name}: {rows[name]['docs_per_s']:.1f} docs/s ({len(sample)} docs, batch {cfg.batch_size})", flush=True)
    base = rows["torch fp32"]["docs_per_s"]
    for row in rows.values():
        row["speedup"] = row["docs_per_s"] / base

    if cfg.ndcg:
        qids = list(queries)
        for name, encoder in encoders.items():
            if name == "torch fp32":
                emb = np.load(os.path.join(cfg.index, "embeddings.npy"))
            else:
                emb = encoder.encode(texts, "passage", cfg.batch_size, show_progress=True)
            q_emb = encoder.encode([queries[q] for q in qids], "query", cfg.batch_size)
            run = cut_run(dense_run(qids, q_emb, doc_ids, emb, 101), 100)  # as evaluate.py: no own-id hits
            metrics, _ = evaluate_run(qrels, run, [10, 100])
            rows[name].update(ndcg10=metrics["ndcg@10"], recall100=metrics["recall@100"])
            print(f"{name}: test nDCG@10 {metrics['ndcg@10']:.4f}, recall@100 {metrics['recall@100']:.4f}", flush=True)

    lines = [f"SciFact passages, batch {cfg.batch_size}, {len(sample)} docs, best of {cfg.repeats}, "
             f"every core ({os.cpu_count()})", "",
             "| backend | docs/s | × torch fp32 | test nDCG@10 | test R@100 |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['docs_per_s']:.1f} | {row['speedup']:.2f} | {row.get('ndcg10', float('nan')):.4f} "
                     f"| {row.get('recall100', float('nan')):.4f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    os.makedirs(cfg.out, exist_ok=True)
    with atomic_open(os.path.join(cfg.out, "results.md")) as f:
        f.write(text)
    write_json(os.path.join(cfg.out, "results.json"), {"config": vars(cfg), "results": rows})
    return 0


if __name__ == "__main__":
    cli(main)
