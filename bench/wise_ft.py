"""Weight-space interpolation (WiSE-FT, Wortsman et al. 2022; LM-Cocktail): the fine-tuned encoder mixed
with the model it started from, alpha on a grid, chosen on val. Does it beat the fine-tuned model beyond
noise? (bench/results/hybrid-cpu.md; the product ships it only if it does on two datasets.)

    python bench/wise_ft.py --data=data/python-source --tuned=runs/python-source-all-MiniLM-L6-v2/encoder/best

For each alpha, theta = (1 - alpha) * base + alpha * tuned (alpha 1: the fine-tuned model, 0: the one
it started from, both at the tuned model's settings), the whole corpus is encoded once and val and
test are searched exactly: dense alone and the hybrid with BM25 (its weight chosen on val, as
build_index.py chooses it). Prints per alpha val and test nDCG@10, then the alpha val chooses under
common.fusion.select's rule against alpha 1, and its test. Test is printed for the record, not used.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from common import fusion  # noqa: E402
from common.data import doc_text, load_beir  # noqa: E402
from common.metrics import cut_run, evaluate_run  # noqa: E402
from common.models import BiEncoder  # noqa: E402
from common.retrievers import BM25, dense_run, encode_corpus  # noqa: E402


def interpolated(base, tuned, alpha):
    """The tuned model with every floating-point weight w_tuned replaced by (1 - a) w_base + a w_tuned."""
    out = BiEncoder.from_pretrained(tuned)
    base_state = BiEncoder.from_pretrained(base).model.state_dict()
    with torch.no_grad():
        for name, value in out.model.state_dict().items():
            if value.is_floating_point():
                value.copy_((1 - alpha) * base_state[name] + alpha * value)
    return out.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--tuned", required=True)
    parser.add_argument("--base", default="all-MiniLM-L6-v2")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    args = parser.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]
    corpus, val_queries, val_qrels = load_beir(args.data, "val")
    _, test_queries, test_qrels = load_beir(args.data, "test")
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    bm25 = BM25(doc_ids, texts)
    splits = {"val": (val_queries, val_qrels), "test": (test_queries, test_qrels)}
    lexical = {s: {q: dict(h) for q, h in zip(qs, bm25.search_many(list(qs.values()), fusion.HYBRID_DEPTH))}
               for s, (qs, _) in splits.items()}
    rows = {}
    for alpha in alphas:
        t0 = time.time()
        encoder = interpolated(args.base, args.tuned, alpha)
        emb = encode_corpus(encoder, texts, 64)
        row = {}
        for split, (queries, qrels) in splits.items():
            q_emb = encoder.encode(list(queries.values()), "query", 64)
            dense = cut_run(dense_run(list(queries), q_emb, doc_ids, emb, fusion.HYBRID_DEPTH + 1), fusion.HYBRID_DEPTH)
            row[split] = {"dense": dense}
        choice = fusion.choose_hybrid(val_qrels, row["val"]["dense"], lexical["val"])
        for split, (queries, qrels) in splits.items():
            row[split]["hybrid"] = fusion.hybrid(row[split]["dense"], lexical[split], choice)
            for name in ("dense", "hybrid"):
                row[split][name] = evaluate_run(qrels, row[split][name], fusion.KS)
        rows[alpha] = (row, choice)
        print(f"alpha {alpha:g}: val dense {row['val']['dense'][0]['ndcg@10']:.4f}, hybrid "
              f"{row['val']['hybrid'][0]['ndcg@10']:.4f} ({fusion.describe_hybrid({k: v for k, v in choice.items() if k != 'val'})}); "
              f"test dense {row['test']['dense'][0]['ndcg@10']:.4f}, hybrid {row['test']['hybrid'][0]['ndcg@10']:.4f} "
              f"[{time.time() - t0:.0f}s]", flush=True)
    if 1.0 not in rows:
        return 0
    for name in ("dense", "hybrid"):
        tuned_pq = rows[1.0][0]["val"][name][1]
        candidates = {a: rows[a][0]["val"][name][1] for a in alphas if a != 1.0}
        key, report = select_on_per_query(tuned_pq, candidates)
        chosen = 1.0 if key is None else key
        print(f"{name}: val chooses alpha {chosen:g} (best mix {report['gain']:+.4f} over alpha 1, standard error "
              f"{report['stderr']:.4f}); test {rows[chosen][0]['test'][name][0]['ndcg@10']:.4f} against alpha 1's "
              f"{rows[1.0][0]['test'][name][0]['ndcg@10']:.4f}")
    return 0


def select_on_per_query(base, candidates, metric="ndcg@10", min_z=2.0):
    """common.fusion.select's rule on per-query metrics: the best candidate only when its gain over
    base is min_z standard errors; then the first (alpha ascending) within one standard error of it."""
    import numpy as np

    def paired(a, b):
        diff = np.array([a[q][metric] - b[q][metric] for q in b])
        return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
    means = {k: float(np.mean([pq[q][metric] for q in base])) for k, pq in candidates.items()}
    best = max(means, key=means.get)
    gain, stderr = paired(candidates[best], base)
    report = {"gain": gain, "stderr": stderr}
    if gain <= 0 or gain < min_z * stderr:
        return None, report
    for key in sorted(candidates, reverse=True):  # nearest the tuned model first
        behind, behind_se = paired(candidates[best], candidates[key])
        if behind <= behind_se:
            return key, report
    return best, report


if __name__ == "__main__":
    sys.exit(main())
