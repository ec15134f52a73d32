"""Index memory (common/memory.py) on val: each dense edit and BM25 expansion at each strength, alone and
mixed as the hybrid mixes them, over all val queries and split into remembered (a relevant document some
train query found) and un-remembered ones. The encoder is not trained here: pass the zero-shot model or
a fine-tuned best/.

    python bench/memory_sweep.py --data=data/scifact --model=all-MiniLM-L6-v2
    python bench/memory_sweep.py --data=data/scifact --model=runs/scifact-all-MiniLM-L6-v2/encoder/best --split=val

Dense edits compared: "step" d' = normalise(d + a g) (what build_index.py ships), "nudge-m" (NUDGE-M:
d + a g, its norm left to grow), "rotate" (NUDGE-N's bounded form: d turned toward g by at most the angle
a chord of length a spans, staying on the sphere),
and "field" for BM25: a second BM25 over each document's remembered queries alone, added with weight a,
against "repeat" (the queries appended to the text r times, shipped). --split=test reports test once.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import decision, fusion, memory as mem  # noqa: E402
from common.backends import load_encoder  # noqa: E402
from common.data import doc_text, load_beir  # noqa: E402
from common.metrics import evaluate_run  # noqa: E402
from common.retrievers import BM25, corpus_embeddings, dense_run, embeddings_cache  # noqa: E402


def rotate(emb, rows, dirs, chord):
    out = np.array(emb, dtype=np.float32)
    d = out[rows]
    cos = np.clip((d * dirs).sum(1), -1, 1)
    phi = np.arccos(cos)
    theta = np.minimum(phi, 2 * np.arcsin(min(chord / 2, 1.0)))
    u = dirs - cos[:, None] * d
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    out[rows] = np.cos(theta)[:, None] * d + np.sin(theta)[:, None] * u
    return out


def parts(qrels, run, remembered):
    _, per = evaluate_run(qrels, run, (10,))
    all_ = np.mean([per[q]["ndcg@10"] for q in per])
    rem = [per[q]["ndcg@10"] for q in per if q in remembered]
    un = [per[q]["ndcg@10"] for q in per if q not in remembered]
    return all_, (np.mean(rem) if rem else float("nan")), (np.mean(un) if un else float("nan"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--split", default="val")
    ap.add_argument("--cache_dir", default="")
    args = ap.parse_args()
    t0 = time.perf_counter()
    corpus, train_q, train_qrels = load_beir(args.data, "train")
    _, queries, qrels = load_beir(args.data, args.split)
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    memory, skips = mem.Memory.from_qrels(train_q, train_qrels, doc_ids)
    remembered = mem.remembered_queries(memory.found, qrels)
    print(f"{args.data} {args.split}: {len(queries)} queries, {len(remembered)} remembered; memory: "
          f"{memory.describe()} {skips}")
    encoder = load_encoder(args.model)
    dataset = os.path.basename(os.path.normpath(args.data))
    cache_dir = args.cache_dir or os.path.join("runs", f"{dataset}-{os.path.basename(os.path.normpath(args.model))}",
                                               ".cache")
    cache = embeddings_cache(cache_dir, "torch", encoder, os.path.join(args.data, "corpus.jsonl"))
    emb, _ = corpus_embeddings(encoder, texts, 64, cache)
    tq = list(memory.queries)
    tq_emb = dict(zip(tq, encoder.encode([memory.queries[q] for q in tq], "query")))
    rows, dirs = mem.directions(memory, doc_ids, tq_emb)
    qids = list(queries)
    q_emb = encoder.encode([queries[q] for q in qids], "query")
    depth = fusion.HYBRID_DEPTH
    dense_runs = {}
    for a in (0.0, 0.5, 1.0, 2.0, 4.0):
        dense_runs[f"step {a:g}"] = dense_run(qids, q_emb, doc_ids, mem.edit(emb, rows, dirs, a), depth)
    for c in (0.25, 0.5, 1.0):
        dense_runs[f"rotate {c:g}"] = dense_run(qids, q_emb, doc_ids, rotate(emb, rows, dirs, c), depth)
    for g in (0.1, 0.25, 0.5):  # NUDGE-M: d + g * direction, the norm left to grow
        moved = np.array(emb, dtype=np.float32)
        moved[rows] += g * dirs
        dense_runs[f"nudge-m {g:g}"] = dense_run(qids, q_emb, doc_ids, moved, depth)
    bm25_runs = {}
    for r in (0, 1, 2, 3, 5):
        bm25 = BM25(doc_ids, mem.expand(texts, doc_ids, memory, r))
        bm25_runs[f"repeat {r}"] = {q: dict(h) for q, h in zip(qids, bm25.search_many([queries[q] for q in qids],
                                                                                       depth))}
    base = BM25(doc_ids, texts)
    field_ids = [doc_ids[r] for r in rows]
    field = BM25(field_ids, [" ".join(memory.queries[q] for q in memory.found[d]) for d in field_ids])
    for beta in (0.5, 1.0, 2.0):
        run = {}
        for q, hits in zip(qids, field.search_many([queries[q] for q in qids], depth)):
            text_hits = dict(base.search(queries[q], depth))
            cand = set(text_hits) | {d for d, s in hits if s > 0}
            pos = [doc_ids.index(d) for d in cand]
            s_text = base.scores(queries[q], pos)
            fh = dict(hits)
            row = {d: float(s) + beta * fh.get(d, 0.0) for d, s in zip(cand, s_text)}
            run[q] = dict(sorted(row.items(), key=lambda x: -x[1])[:depth])
        bm25_runs[f"field {beta:g}"] = run
    print(f"built in {time.perf_counter() - t0:.0f} s")
    print("| dense | all | remembered | un-remembered |\n|---|---|---|---|")
    for k, run in dense_runs.items():
        print(f"| {k} | " + " | ".join(f"{x:.4f}" for x in parts(qrels, run, remembered)) + " |")
    print("| bm25 | all | remembered | un-remembered |\n|---|---|---|---|")
    for k, run in bm25_runs.items():
        print(f"| {k} | " + " | ".join(f"{x:.4f}" for x in parts(qrels, run, remembered)) + " |")
    print("| dense x bm25: best weight (select) | all | remembered | un-remembered |\n|---|---|---|---|")
    for dk in ("step 0", "step 1", "step 2", "rotate 0.5", "rotate 1"):
        for bk in ("repeat 0", "repeat 2", "repeat 3", "field 1"):
            choice = decision.hybrid(qrels, dense_runs[dk], bm25_runs[bk])
            run = fusion.hybrid(dense_runs[dk], bm25_runs[bk], choice)
            w = decision.chosen_cell(choice)
            print(f"| {dk} / {bk} (w {w}) | " + " | ".join(f"{x:.4f}" for x in parts(qrels, run, remembered))
                  + " |")


if __name__ == "__main__":
    main()
