"""nDCG@10 of trained encoders cut to fewer dimensions: as they are, and after a rotation onto the
principal axes of the corpus' embeddings (common.models.principal_axes, centred; and uncentred, the
variant it was chosen over). Exact search over the whole corpus; val by default (tune there).

    .venv/bin/python bench/matryoshka_rotation.py runs/a/encoder/best runs/b/encoder/best
    .venv/bin/python bench/matryoshka_rotation.py --data=data/scifact --dims=384,128 runs/x/encoder/best

Prints one markdown row per model and variant.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.data import doc_text, load_beir  # noqa: E402
from common.index import truncate  # noqa: E402
from common.metrics import cut_run, evaluate_run  # noqa: E402
from common.models import BiEncoder, principal_axes  # noqa: E402
from common.retrievers import dense_run  # noqa: E402


def uncentred_axes(emb):
    x = torch.as_tensor(emb, dtype=torch.float64)
    return torch.linalg.eigh(x.T @ x).eigenvectors.flip(1).T.float().numpy()


def ndcg_at(qids, q_emb, doc_ids, doc_emb, qrels, dim):
    run = cut_run(dense_run(qids, truncate(q_emb, dim), doc_ids, truncate(doc_emb, dim), 101), 100)
    return evaluate_run(qrels, run, (10,))[0]["ndcg@10"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="data/python-source")
    ap.add_argument("--split", default="val")
    ap.add_argument("--dims", default="384,256,128,64")
    args = ap.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    corpus, queries, qrels = load_beir(args.data, args.split)
    doc_ids, qids = list(corpus), list(queries)
    print(f"{args.data} {args.split}: {len(qids)} queries, {len(doc_ids)} docs; nDCG@10 at " + ", ".join(map(str, dims)))
    print("| model | variant | " + " | ".join(map(str, dims)) + " |\n|---|---|" + "---|" * len(dims))
    for model in args.models:
        encoder = BiEncoder.from_pretrained(model)
        doc_emb = encoder.encode([doc_text(corpus[d]) for d in doc_ids], "passage", show_progress=False)
        q_emb = encoder.encode([queries[q] for q in qids], "query", show_progress=False)
        for variant, axes in (("as trained", np.eye(encoder.dim, dtype=np.float32)),
                              ("rotated (centred)", principal_axes(doc_emb)),
                              ("rotated (uncentred)", uncentred_axes(doc_emb))):
            row = [ndcg_at(qids, q_emb @ axes.T, doc_ids, doc_emb @ axes.T, qrels, d) for d in dims]
            print(f"| {model} | {variant} | " + " | ".join(f"{v:.4f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
