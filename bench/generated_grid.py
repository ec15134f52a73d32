"""Generated questions as the index's memory, on val only: which round-trip filter and which strengths help
the zero-shot hybrid, per dataset (issue 50). What decision.NO_VAL_GENERATED and prepare_data's roundtrip_k
are chosen on; test is not read.

    python bench/generated_grid.py --data=data/scifact-val --cache=data/.cache/generated/scifact-<key>.jsonl

--data: a dataset prepared with --pseudo_queries=generate --val_queries=-1 (its val: the source's real train
questions); --cache: the questions prepare_data.py wrote for it (all of them, before any filter). Per round-trip k
(0 = every question the copy/repeat filters keep), the zero-shot hybrid (BM25 weight 0.3, what serves without val)
with the questions' memory at each dense strength and BM25 repeat; val nDCG@10, the gain over no memory and its
standard error (paired over val queries).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import decision, fusion  # noqa: E402
from common import memory as mem  # noqa: E402
from common.backends import load_encoder  # noqa: E402
from common.data import CorpusTexts, doc_text, load_beir  # noqa: E402
from common.metrics import ranked  # noqa: E402
from common.generator import DEFAULT_EXAMPLES, Filter  # noqa: E402
from common.retrievers import BM25, dense_run, encode_corpus  # noqa: E402
from common.significance import mean_and_se  # noqa: E402
from prepare_data import read_generated  # noqa: E402


def filtered_questions(cache, corpus, passages=None):
    """(written, kept): {doc id: [question]} prepare_data.py wrote to `cache` for corpus's passages (or those of
    `passages`, a sample of them), and those the copy/repeat filters keep with the built-in prompt's examples."""
    written = {d: questions for d, (_, questions) in read_generated(cache).items() if d in (passages or corpus)}
    with open(DEFAULT_EXAMPLES) as f:  # the built-in prompt's (--prompt_examples=0), whose copies are dropped
        examples = [json.loads(line)["question"] for line in f]
    return written, Filter(examples)(written, {d: doc_text(corpus[d]) for d in written})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--ks", default="0,1,3,10")
    p.add_argument("--dense", default="0,0.5,1")
    p.add_argument("--bm25", default="0,1,2")
    p.add_argument("--out", default="")
    args = p.parse_args()
    corpus, val_queries, val_qrels = load_beir(args.data, "val")
    doc_ids = list(corpus)
    texts = CorpusTexts(corpus, doc_ids)
    written, kept = filtered_questions(args.cache, corpus)
    print(f"{args.data}: {len(corpus):,} passages, {sum(map(len, written.values())):,} questions written, "
          f"{sum(map(len, kept.values())):,} after the copy/repeat filters; val {len(val_qrels):,} queries")
    encoder = load_encoder(args.model, "torch", "auto")
    emb = encode_corpus(encoder, texts, 64)
    vids = list(val_queries)
    v_emb = encoder.encode([val_queries[q] for q in vids], "query", 64)
    flat = {f"g{i}": (d, q) for i, (d, q) in enumerate((d, q) for d, qs in kept.items() for q in qs)}
    g_ids = list(flat)
    g_emb = encoder.encode([flat[g][1] for g in g_ids], "query", 64)
    # each question's rank of its passage under the zero-shot hybrid (dense + BM25 at the no-val weight)
    bm25 = BM25(doc_ids, texts)
    g_dense = dense_run(g_ids, g_emb, doc_ids, emb, fusion.HYBRID_DEPTH)
    g_bm25 = {g: dict(h) for g, h in zip(g_ids, bm25.search_many([flat[g][1] for g in g_ids], fusion.HYBRID_DEPTH))}
    g_run = fusion.hybrid(g_dense, g_bm25, decision.NO_VAL)
    rank = {}
    for g in g_ids:
        order = ranked(g_run.get(g, {}))
        rank[g] = order.index(flat[g][0]) + 1 if flat[g][0] in order else 10**9
    v_dense0 = dense_run(vids, v_emb, doc_ids, emb, fusion.HYBRID_DEPTH)
    bm25_runs = {0: {q: dict(h) for q, h in zip(vids, bm25.search_many([val_queries[q] for q in vids],
                                                                        fusion.HYBRID_DEPTH))}}
    base = decision.per_query(val_qrels, fusion.hybrid(v_dense0, bm25_runs[0], decision.NO_VAL))[1]
    base_mean = float(np.mean(list(base.values())))
    lines = ["| round trip k | questions kept | dense | BM25 repeat | val nDCG@10 | gain | stderr |", "|---" * 7 + "|",
             f"| – | 0 | 0 | 0 | {base_mean:.4f} | | |"]
    print(lines[-1])
    q_emb = {g: g_emb[i] for i, g in enumerate(g_ids)}
    for k in [int(x) for x in args.ks.split(",")]:
        keep = [g for g in g_ids if k == 0 or rank[g] <= k]
        memory = mem.Memory.from_qrels({g: flat[g][1] for g in keep}, {g: {flat[g][0]: 1} for g in keep}, doc_ids)[0]
        rows, dirs = mem.directions(memory, doc_ids, q_emb)
        runs_bm25 = {r: ({q: dict(h) for q, h in zip(vids, BM25(doc_ids, list(mem.expand(texts, doc_ids, memory, r)))
                                                      .search_many([val_queries[q] for q in vids], fusion.HYBRID_DEPTH))}
                         if r else bm25_runs[0]) for r in [int(x) for x in args.bm25.split(",")]}
        for s in [float(x) for x in args.dense.split(",")]:
            v_dense = dense_run(vids, v_emb, doc_ids, mem.edit(emb, rows, dirs, s), fusion.HYBRID_DEPTH) if s else v_dense0
            for r, b in runs_bm25.items():
                if not s and not r:
                    continue
                scored = decision.per_query(val_qrels, fusion.hybrid(v_dense, b, decision.NO_VAL))[1]
                gain, se = mean_and_se(np.array([scored[q] - base[q] for q in base]))
                lines.append(f"| {k or 'none'} | {len(keep):,} | {s:g} | {r} | {np.mean(list(scored.values())):.4f} "
                             f"| {gain:+.4f} | {se:.4f} |")
                print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
