"""Weight-space interpolation (WiSE-FT, Wortsman et al. 2022; LM-Cocktail): the fine-tuned encoder mixed
with the model it started from, alpha on a grid, scored on val as the pipeline serves it, memory included,
over all val queries and apart over the ones no memory can help ("un-remembered"). Does a mix keep what the
zero-shot encoder knew where fine-tuning forgot it? (bench/results/decision-cpu.md)

    python bench/wise_ft.py --data=data/scifact --tuned=runs/scifact-all-MiniLM-L6-v2/encoder/best \
        --bar=runs/scifact-all-MiniLM-L6-v2/zero-shot

For each alpha, theta = (1 - alpha) * base + alpha * tuned (alpha 1: the fine-tuned model, 0: the one it
started from, both at the tuned model's settings), the whole corpus is encoded once and val (and test,
printed for the record, never chosen on) is searched exactly, then served as the bar's index serves: its
memory's dense strength (the remembered docs moved toward their train queries, as this encoder embeds them),
its BM25 (over the memory-expanded texts) mixed at its weight. Without --bar: dense and the hybrid with plain
BM25 at the weight common.decision.hybrid chooses on val. Ends with the alpha val chooses by
common.decision.select against alpha 1 (the remembered-less queries guarded).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import decision, fusion  # noqa: E402
from common import memory as mem  # noqa: E402
from common.data import CorpusTexts, load_beir  # noqa: E402
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
    parser.add_argument("--bar", default="", help="the zero-shot index (make pipeline's runs/<run>/zero-shot)")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    args = parser.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]
    corpus, val_queries, val_qrels = load_beir(args.data, "val")
    _, test_queries, test_qrels = load_beir(args.data, "test")
    train_qrels = load_beir(args.data, "train")[2]
    found = {d for row in train_qrels.values() for d, g in row.items() if g > 0}
    doc_ids = list(corpus)
    texts = CorpusTexts(corpus, doc_ids)
    splits = {"val": (val_queries, val_qrels), "test": (test_queries, test_qrels)}
    unseen = {s: [q for q in qrels if q not in mem.remembered_queries(found, qrels)]
              for s, (_, qrels) in splits.items()}
    if args.bar:
        choice = fusion.load(args.bar, fusion.DENSE_ONLY)
        memory = mem.Memory.load(args.bar)
        strength = choice.get("memory", {}).get("dense", 0.0)
        bm25 = (BM25.load(args.bar, doc_ids, os.path.join(args.data, "corpus.jsonl")) if fusion.uses_bm25(choice)
                else None)
        print(f"as {args.bar} serves: {decision.describe_hybrid({k: v for k, v in choice.items() if k != 'val'})}")
    else:
        choice, memory, strength, bm25 = None, mem.Memory(), 0.0, BM25(doc_ids, texts)
    lexical = {s: {q: dict(h) for q, h in zip(qs, bm25.search_many(list(qs.values()), fusion.HYBRID_DEPTH))}
               for s, (qs, _) in splits.items()} if bm25 is not None else None
    rows = {}
    for alpha in alphas:
        t0 = time.time()
        encoder = interpolated(args.base, args.tuned, alpha)
        emb = encode_corpus(encoder, texts, 64)
        if strength and not memory.empty():
            remembered = list(memory.queries)
            by_qid = dict(zip(remembered, encoder.encode([memory.queries[q] for q in remembered], "query", 64)))
            emb = mem.edit(emb, *mem.directions(memory, doc_ids, by_qid), strength)
        dense = {}
        for split, (queries, _) in splits.items():
            q_emb = encoder.encode(list(queries.values()), "query", 64)
            dense[split] = cut_run(dense_run(list(queries), q_emb, doc_ids, emb, fusion.HYBRID_DEPTH + 1),
                                   fusion.HYBRID_DEPTH)
        mix = choice or decision.hybrid(val_qrels, dense["val"], lexical["val"])
        row = {}
        for split, (_, qrels) in splits.items():
            run = fusion.hybrid(dense[split], lexical[split], mix) if lexical else dense[split]
            per_query = {q: m["ndcg@10"] for q, m in evaluate_run(qrels, run, (10,))[1].items()}
            row[split] = (per_query, np.mean(list(per_query.values())),
                          np.mean([per_query[q] for q in unseen[split]]) if unseen[split] else float("nan"))
        rows[alpha] = row
        print(f"alpha {alpha:g}: val {row['val'][1]:.4f} (un-remembered {row['val'][2]:.4f} of "
              f"{len(unseen['val'])}); test {row['test'][1]:.4f} (un-remembered {row['test'][2]:.4f} of "
              f"{len(unseen['test'])}) [{time.time() - t0:.0f}s]", flush=True)
    if 1.0 in rows:
        others = {a: rows[a]["val"][0] for a in alphas if a != 1.0}
        key, report = decision.select(val_qrels, rows[1.0]["val"][0], others, decision.ENCODER_Z,
                                      guard=unseen["val"])
        chosen = 1.0 if key is None else key
        print(f"val chooses alpha {chosen:g} (gain {report['gain']:+.4f} over alpha 1, standard error "
              f"{report['stderr']:.4f}{decision.describe_guard(report['guard'])}); test {rows[chosen]['test'][1]:.4f} "
              f"against alpha 1's {rows[1.0]['test'][1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
