"""Generated questions as a stand-in val for the hybrid's mix, on val only (issue 50): does the BM25 weight the
generated questions would choose score better on the real val questions than the weight served without val
(decision.NO_VAL)? Test is not read.

    python bench/generated_mix.py --data=data/scifact-val --cache=data/.cache/generated/scifact-<key>.jsonl

--data: a dataset prepared with --pseudo_queries=generate --val_queries=-1 (its val: the source's real train
questions); --cache: the questions prepare_data.py wrote for it (all of them, before any filter). Prints, per mix
(dense alone, convex weights, RRF), nDCG@10 on the real val questions and on the generated ones (every question the
copy/repeat filters keep; the half reusing their passage's words least, prepare_data.py's "generated" split; the
round trip's kept ones), and what each way of choosing the weight serves on real val; then, for a few judged
questions drawn from val as the only val (--small, --draws), what is chosen on them alone and on them pooled with
the generated split (what the pipeline does), scored on the val questions not drawn.
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import decision, fusion  # noqa: E402
from common.backends import load_encoder  # noqa: E402
from common.data import CorpusTexts, doc_text, load_beir  # noqa: E402
from common.generator import least_overlapping, sample_passages  # noqa: E402
from common.metrics import ranked  # noqa: E402
from common.retrievers import BM25, dense_run, encode_corpus  # noqa: E402
from generated_grid import filtered_questions  # noqa: E402


def mix_key(choice):
    return "rrf" if choice.get("method") == "rrf" else "dense" if choice["weight"] == 0 else f"{choice['weight']:g}"


def runs(encoder, bm25, doc_ids, emb, queries):
    ids = list(queries)
    q_emb = encoder.encode([queries[q] for q in ids], "query", 64)
    dense = dense_run(ids, q_emb, doc_ids, emb, fusion.HYBRID_DEPTH)
    lexical = {q: dict(h) for q, h in zip(ids, bm25.search_many([queries[q] for q in ids], fusion.HYBRID_DEPTH))}
    return dense, lexical


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--sample", type=int, default=0, help="only the questions of prepare_data's seeded sample of this "
                   "many passages (its generate_sample, where no judged question is val); 0 = all")
    p.add_argument("--small", default="10,30", help="sizes of a few judged questions drawn from val as its only val")
    p.add_argument("--draws", type=int, default=30)
    p.add_argument("--out", default="")
    args = p.parse_args()
    corpus, val_queries, val_qrels = load_beir(args.data, "val")
    doc_ids = list(corpus)
    texts = CorpusTexts(corpus, doc_ids)
    kept = filtered_questions(args.cache, corpus, sample_passages(corpus, args.sample))[1]
    flat = [(d, q) for d, qs in kept.items() for q in qs]
    gen_queries = {f"g{i}": q for i, (d, q) in enumerate(flat)}
    gen_qrels = {f"g{i}": {d: 1} for i, (d, q) in enumerate(flat)}
    # the half reusing their passage's words least: prepare_data.py's "generated" split
    least = least_overlapping(kept, {d: doc_text(corpus[d]) for d in kept})
    low = {g: gen_qrels[g] for g, (d, q) in zip(gen_queries, flat) if q in least.get(d, ())}
    encoder = load_encoder(args.model, "torch", "auto")
    emb = encode_corpus(encoder, texts, 64)
    bm25 = BM25(doc_ids, texts)
    sets = {"val": (val_qrels, *runs(encoder, bm25, doc_ids, emb, val_queries)),
            "generated": (gen_qrels, *runs(encoder, bm25, doc_ids, emb, gen_queries))}
    sets["low overlap"] = (low, {g: sets["generated"][1][g] for g in low}, {g: sets["generated"][2][g] for g in low})
    # the round trip's kept ones (prepare_data's roundtrip_k=1: their passage first under the no-val hybrid)
    first = fusion.hybrid(sets["generated"][1], sets["generated"][2], decision.NO_VAL)
    trip = {g: gen_qrels[g] for g in gen_qrels if first.get(g) and ranked(first[g], 1)[0] in gen_qrels[g]}
    sets["round trip 1"] = (trip, {g: sets["generated"][1][g] for g in trip}, {g: sets["generated"][2][g] for g in trip})
    mixes = {"dense": {"method": "convex", "weight": 0.0}}
    mixes.update({f"{w:g}": {"method": "convex", "weight": w} for w in fusion.HYBRID_WEIGHTS if w > 0})
    mixes["rrf"] = {"method": "rrf", "rrf_k": fusion.RRF_K}
    print(f"{args.data}: {len(corpus):,} passages; val {len(val_qrels):,} real questions; {len(gen_qrels):,} generated "
          f"(after the copy/repeat filters), {len(low):,} of them reusing their passage's words least")
    scores = {name: {m: decision.per_query(qrels, fusion.hybrid(dense, lexical, choice))[0]
                     for m, choice in mixes.items()} for name, (qrels, dense, lexical) in sets.items()}
    lines = ["| mix | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{scores[s][m]:.4f}" for s in sets) + " |" for m in mixes]
    # each way of choosing: the rule val uses (decision.hybrid), run on each question set, scored on real val
    lines += ["", "| chosen on | choice | real val nDCG@10 | against the no-val weight |", "|---|---|---|---|"]
    no_val = scores["val"][f"{decision.NO_VAL['weight']:g}"]
    lines.append(f"| nothing (decision.NO_VAL) | {decision.NO_VAL['weight']:g} | {no_val:.4f} | |")
    for name, (qrels, dense, lexical) in sets.items():
        choice = decision.hybrid(qrels, dense, lexical)
        key = mix_key(choice)
        lines.append(f"| {name} | {key} | {scores['val'][key]:.4f} | {scores['val'][key] - no_val:+.4f} |")
    # a few judged questions as val (decision.SMALL_VAL): drawn from the real ones, the rest held out to score what
    # each rule chose: those few alone, or pooled with the generated split (decision.pooled, as the pipeline does)
    _, v_dense, v_bm25 = sets["val"]
    per_q = {m: decision.per_query(val_qrels, fusion.hybrid(v_dense, v_bm25, choice))[1] for m, choice in mixes.items()}
    gen_split = ({g: gen_queries[g] for g in low}, low)
    g_dense, g_bm25 = sets["low overlap"][1:]
    lines += ["", f"| judged val | draws | NO_VAL's weight | chosen on them alone | pooled with the generated split "
              "(the pipeline) |", "|---|---|---|---|---|"]
    for n in [int(x) for x in args.small.split(",") if x]:
        held_out = {"no-val": [], "alone": [], "pooled": []}
        for draw in range(args.draws):
            few = sorted(random.Random(draw).sample(sorted(val_qrels), n))
            rest = [q for q in val_qrels if q not in set(few)]
            small = ({q: val_queries[q] for q in few}, {q: val_qrels[q] for q in few})
            alone = decision.hybrid(small[1], {q: v_dense[q] for q in few}, {q: v_bm25[q] for q in few})
            _, pooled_qrels, _ = decision.pooled(small, None, False, gen_split)
            dense = {q: v_dense[q] if q in small[1] else g_dense[q] for q in pooled_qrels}
            lexical = {q: v_bm25[q] if q in small[1] else g_bm25[q] for q in pooled_qrels}
            pooled = decision.hybrid(pooled_qrels, dense, lexical)
            for name, key in (("no-val", f"{decision.NO_VAL['weight']:g}"), ("alone", mix_key(alone)),
                              ("pooled", mix_key(pooled))):
                held_out[name].append(sum(per_q[key][q] for q in rest) / len(rest))
        mean = {k: sum(v) / len(v) for k, v in held_out.items()}
        worst = {k: min(v) for k, v in held_out.items()}
        lines.append(f"| {n} | {args.draws} | {mean['no-val']:.4f} | {mean['alone']:.4f} (worst {worst['alone']:.4f}) "
                     f"| {mean['pooled']:.4f} (worst {worst['pooled']:.4f}) |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
