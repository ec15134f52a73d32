"""The bi-encoder's backends on this CPU: PyTorch fp32, PyTorch bf16 autocast, ONNX fp32 and ONNX int8
(export_onnx.py --quantize=true): passages encoded a second at the same batch, alternated, and test
nDCG@10 with the whole corpus and the queries embedded by each.

    # the pipeline's encoder and its export (make pipeline writes both), on the default data
    python bench/onnx_speed.py --model=runs/python-source-all-MiniLM-L6-v2/encoder/best \
        --onnx=runs/python-source-all-MiniLM-L6-v2/onnx-encoder --data=data/python-source
    # zero-shot MiniLM on SciFact
    python export_onnx.py --model=all-MiniLM-L6-v2 --quantize=true --data=data/scifact --out=runs/bench/onnx/minilm
    python bench/onnx_speed.py --model=all-MiniLM-L6-v2 --onnx=runs/bench/onnx/minilm --data=data/scifact

Speed: the first `docs` passages of the corpus (every backend reads the same text), in length-sorted
batches of `batch_size`, one warm-up pass each, then `rounds` rounds in which every backend encodes
them once in turn (drift on a shared machine hits them alike); the median is kept. nDCG@10: the
corpus and the test queries encoded by each backend, exact search, as evaluate.py scores it. A
backend whose CPU lacks the units for it (bf16 without AVX512_BF16 or AMX) is measured all the same
and says so. Not a test.
"""
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
from common.models import native_bf16  # noqa: E402
from common.retrievers import dense_run  # noqa: E402
from common.run import cli  # noqa: E402

DEFAULTS = dict(
    model="all-MiniLM-L6-v2",  # the PyTorch model
    onnx="runs/bench/onnx/minilm",  # its export_onnx.py directory, with model.onnx and model.int8.onnx
    data="data/scifact",
    docs=512,
    batch_size=32,
    rounds=3,
    ndcg=True,  # also encode the whole corpus with each backend for test nDCG@10
    backends=["torch fp32", "torch bf16", "onnx fp32", "onnx int8"],  # of BACKENDS; torch fp32 always runs
    out="runs/bench/onnx_speed",
)
BACKENDS = {"torch fp32": ("torch", "fp32"), "torch bf16": ("torch", "bf16"), "onnx fp32": ("onnx", None),
            "onnx int8": ("onnx-int8", None)}


def encode(encoder, dtype, texts, kind, batch_size):
    return encoder.encode(texts, kind, batch_size, **({"dtype": dtype} if dtype else {}))


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    corpus, queries, qrels = load_beir(cfg.data, "test")
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    unknown = sorted(set(cfg.backends) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"onnx_speed.py: unknown backends {unknown}; choose from {list(BACKENDS)}")
    names = ["torch fp32"] + [n for n in BACKENDS if n in cfg.backends and n != "torch fp32"]  # the reference first
    encoders = {name: load_encoder(cfg.model if BACKENDS[name][0] == "torch" else cfg.onnx, BACKENDS[name][0], "cpu")
                for name in names}
    sample = texts[:cfg.docs]
    seconds = {name: [] for name in encoders}
    for name, encoder in encoders.items():  # warm-up: allocations, kernel choice
        encode(encoder, BACKENDS[name][1], sample[:cfg.batch_size], "passage", cfg.batch_size)
    for _ in range(cfg.rounds):
        for name, encoder in encoders.items():
            t0 = time.perf_counter()
            encode(encoder, BACKENDS[name][1], sample, "passage", cfg.batch_size)
            seconds[name].append(time.perf_counter() - t0)
    rows = {name: {"docs_per_s": len(sample) / float(np.median(s)), "seconds": s} for name, s in seconds.items()}
    for name, row in rows.items():
        row["speedup"] = row["docs_per_s"] / rows["torch fp32"]["docs_per_s"]
        print(f"{name}: {row['docs_per_s']:.1f} docs/s, x{row['speedup']:.2f} ({len(sample)} docs, batch "
              f"{cfg.batch_size}, median of {cfg.rounds})", flush=True)

    if cfg.ndcg:
        qids = list(queries)
        for name, encoder in encoders.items():
            dtype = BACKENDS[name][1]
            emb = encode(encoder, dtype, texts, "passage", cfg.batch_size)
            q_emb = encode(encoder, dtype, [queries[q] for q in qids], "query", cfg.batch_size)
            run = cut_run(dense_run(qids, q_emb, doc_ids, emb, 101), 100)  # as evaluate.py: no own-id hits
            metrics, _ = evaluate_run(qrels, run, [10, 100])
            rows[name].update(ndcg10=metrics["ndcg@10"], recall100=metrics["recall@100"])
            if name == "torch fp32":
                reference = emb
            rows[name]["min_cosine_to_fp32"] = float(np.min(np.sum(emb * reference, 1) /
                                                            (np.linalg.norm(emb, axis=1) * np.linalg.norm(reference, axis=1))))
            print(f"{name}: test nDCG@10 {metrics['ndcg@10']:.4f}, recall@100 {metrics['recall@100']:.4f}, "
                  f"min cosine to torch fp32 {rows[name]['min_cosine_to_fp32']:.4f}", flush=True)

    dataset = os.path.basename(os.path.normpath(cfg.data))
    lines = [f"{dataset}, {cfg.model}: {len(sample)} passages, batch {cfg.batch_size}, median of {cfg.rounds} "
             f"alternated rounds, {os.cpu_count()} cores, native bf16: {native_bf16() or 'no'}", "",
             "| backend | docs/s | x torch fp32 | test nDCG@10 | test R@100 | min cosine to fp32 |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        cells = [f"{row[k]:.4f}" if k in row else "-" for k in ("ndcg10", "recall100", "min_cosine_to_fp32")]
        lines.append(f"| {name} | {row['docs_per_s']:.1f} | {row['speedup']:.2f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    os.makedirs(cfg.out, exist_ok=True)
    with atomic_open(os.path.join(cfg.out, f"{dataset}.md")) as f:
        f.write(text)
    write_json(os.path.join(cfg.out, f"{dataset}.json"), {"config": vars(cfg), "results": rows})
    return 0


if __name__ == "__main__":
    cli(main)
