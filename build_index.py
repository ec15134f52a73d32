"""Build the first stage a pipeline serves: a corpus encoded by a bi-encoder into a FAISS index, with
BM25 saved beside it and the mix of the two chosen on val, which search.py, evaluate.py --index and
common.retrievers.Retriever load in one line.

    # CPU: the default data with zero-shot MiniLM; "auto" is exact (Flat) under 100k docs
    python build_index.py
    # what `make index` does: the fine-tuned encoder, unless the zero-shot one (with BM25 mixed in as
    # val chooses for each) scores as well on val, in which case that one is indexed, saying so
    python build_index.py --data=data/scifact --model=runs/scifact-all-MiniLM-L6-v2/encoder/best \
        --baseline=all-MiniLM-L6-v2
    # an IVF-PQ index (nlist ~ 4 sqrt(N)), nprobe tuned to recall@10 >= 0.95; dense alone, no BM25
    python build_index.py --data=data/scifact --factory=IVF,PQ32 --hybrid=false
    # one GPU: the corpus encodes on CUDA and, with faiss-gpu (`make setup-gpu`), IVF trains there too
    python build_index.py --data=data/scifact --factory=IVF,Flat
    # an ONNX export (export_onnx.py) embeds the corpus and val's queries; no torch needed
    python build_index.py --backend=onnx --model=runs/onnx/encoder
    # another factory over the same vectors, without encoding again
    python build_index.py --embeddings=runs/scifact-all-MiniLM-L6-v2/index/embeddings.npy --factory=HNSW32 --out=...

The first stage served: each candidate encoder (model, and baseline when given) is scored on the val
split alone, dense and mixed with BM25, with and without the memory, and common/decision.py chooses
what is served: the mix, the memory's strengths, and the fine-tuned model only when it beats the
baseline beyond noise. A baseline that is an index directory (`make index`: the zero-shot index built
before training, the bar) is read, not rebuilt: its choice and its val scores (val.json) are weighed
against the model's, and where the model does not beat it, its files are the index. Without a val split
the model is indexed with BM25 at the default weight, saying so.
One process does it all (torchrun adds nothing: FAISS uses every GPU it sees). The search settings
(nprobe for IVF, efSearch for HNSW) are tuned on `tune_split`'s queries, which need no labels, as the
smallest that reach `target_recall` recall@10 against exact search, and saved with the index.

Run directory (default runs/<dataset>-<model>/index), written whole or not at all: index.faiss,
doc_ids.txt, index.json (factory, dim, search settings, the encoder and its probe embedding),
fusion.json (the first stage served and the val scores behind the choice), bm25.npz and bm25.json
(BM25 over the corpus, and which corpus), embeddings.npy (the served encoder's corpus vectors, for
rebuilds and mining), metrics.json (timings, index size, recall against exact search and queries/s
on `split`), config.json and command.txt. Corpus embeddings are shared with evaluate.py through the
run directory's parent's .cache/, so an encoder the baseline evaluation encoded is not encoded again.
"""
import json
import os
import shutil
import sys
import time

import numpy as np

from common import decision, fusion
from common import index as faiss_index
from common import memory as mem
from common.backends import BACKENDS, encoder_name, load_encoder
from common.config import Auto, ConfigError, check_choice, check_range, load_config
from common.data import (CorpusTexts, folds, generated, load_beir, load_val, pool_sources, read_corpus, read_qrels,
                         read_queries, splits)
from common.files import atomic_dir, write_json
from common.metrics import cut_run, evaluate_run
from common.report import write_results
from common.retrievers import (BM25, BM25_FILES, corpus_bm25, corpus_embeddings, dense_search, embeddings_cache,
                               join_ranks)
from common.run import UserError, cli, start_run, trained_on, warn
from common.run import cache_dir as run_cache_dir

DEFAULTS = dict(
    # data
    data="data/python-source",  # a directory prepared by prepare_data.py (BEIR layout)
    # encoder: embeds the corpus here, and the queries at search time
    model="all-MiniLM-L6-v2",  # a local directory, a hub name, a packaged short name, or an ONNX export
    backend="torch",  # torch | onnx | onnx-int8 (an export_onnx.py directory: no torch needed)
    batch_size=64,
    device="auto",  # auto | cpu | cuda (torch backend)
    embeddings="",  # a .npy of the model's corpus embeddings in corpus order, indexed instead of encoding again
    cache_embeddings=True,  # share corpus embeddings with evaluate.py: reused, not encoded again
    cache_dir="",  # where they are kept; "" = <out>/../.cache, where evaluate.py keeps a sibling run's
    # the first stage served, chosen on the val split
    baseline="",  # another encoder (the one `model` was fine-tuned from): indexed instead when `model`, its
    #               hybrid included, does not beat it on val; "" = none
    hybrid=True,  # save BM25 beside the index and mix it in as val chooses (fusion.json); false = dense alone
    hybrid_weight=Auto(float),  # BM25's share of the mix, 0 = dense alone, 1 = BM25 alone; auto = chosen on val
    bm25_k1=1.2,  # chosen on SciFact train (common/retrievers.py)
    bm25_b=0.4,
    # memory: what the train split's judged queries found, written into the index (common/memory.py):
    # each judged doc's vector moved toward its queries, its BM25 text expanded by them; the encoder is
    # unchanged, and val never feeds the memory it scores
    memory=True,  # false = an index without memory
    memory_dense=Auto(float),  # the vectors' step toward their queries, 0 = none; auto = chosen on val
    memory_bm25=Auto(int),  # times each doc's queries are appended to its BM25 text, 0 = none; auto = on val
    memory_val=True,  # once val has chosen, the index also remembers val's judged queries (every label used; the
    #                   val scores reported are the choice's, train's memory alone); false = train's alone (the bar
    #                   training is scored against, and a first stage a reranker chooses its fusion over on val)
    add_queries="",  # a file of judged queries (TREC qrels over data's queries.jsonl, or JSONL {"query",
    #                  "doc_id", "grade"}) remembered by the index at `out`, updated in place: nothing else
    #                  re-encoded, the strengths it was built with kept (unless memory_* are given)
    # index
    factory="auto",  # FAISS index_factory: Flat, IVF<n>,Flat, IVF,PQ32, IVF,SQ8, HNSW32, OPQ32,IVF,PQ32;
    #                  "IVF," gets nlist ~ 4 sqrt(N); auto = Flat under 100k docs, else IVF,Flat
    train_size=0,  # vectors sampled to train IVF / PQ; 0 = max(16k, 64 x nlist), at most N
    nprobe=0,  # IVF lists searched per query; 0 = tuned (see target_recall)
    ef_search=0,  # HNSW candidate list; 0 = tuned
    target_recall=0.95,  # recall@10 against exact search that tuning looks for
    tune_split="train",  # its queries (labels unused) tune nprobe / efSearch; never the report split
    faiss_gpu="auto",  # auto | yes | no: auto = when faiss-gpu sees a GPU
    seed=0,
    # report and output
    split="test",  # queries for recall@10/@100 against exact search and queries/s
    dim=0,  # > 0: index the first `dim` values of each embedding, renormalised (a Matryoshka model's smaller
    #         embedding: a smaller index); queries are cut alike at search time. 0 = the model's whole width
    keep_embeddings=True,  # embeddings.npy in out: 4 x dim bytes per doc, for rebuilding without encoding
    out="",  # "" = runs/<dataset>-<model>/index
)


def split_queries(data, split):
    """Query texts of a split (labels are not needed), [] when the directory has no such split."""
    if split not in splits(data):
        return []
    skipped = set()  # empty queries: their qrels rows are dropped with a warning, as load_beir does
    queries = read_queries(os.path.join(data, "queries.jsonl"), skipped)
    qrels = read_qrels(os.path.join(data, "qrels", f"{split}.tsv"), queries, skipped=skipped)
    return [queries[q] for q in qrels]


def check_config(cfg):
    check_choice(cfg, "backend", BACKENDS)
    check_choice(cfg, "faiss_gpu", ("auto", "yes", "no"))
    check_range(cfg, "hybrid_weight", 0, 1)
    check_range(cfg, ["memory_dense", "memory_bm25"], 0)
    if not cfg.memory and (cfg.memory_dense != "auto" or cfg.memory_bm25 != "auto"):
        raise ConfigError("memory=false builds no memory: drop memory_dense / memory_bm25, or set memory=true")
    if cfg.hybrid and (cfg.memory_dense == "auto") != (cfg.memory_bm25 == "auto"):
        raise ConfigError(f"memory_dense={cfg.memory_dense}, memory_bm25={cfg.memory_bm25}: give both strengths "
                          "(0 = none), or neither for val to choose them")
    if not 0 < cfg.target_recall <= 1:
        raise ConfigError(f"target_recall={cfg.target_recall}: a recall between 0 and 1")
    if cfg.dim < 0:
        raise ConfigError(f"dim={cfg.dim}: pass a number of dimensions, or 0 for all of them")
    if not cfg.hybrid and cfg.hybrid_weight != "auto":
        raise ConfigError(f"hybrid=false serves dense alone: drop hybrid_weight={cfg.hybrid_weight}, or set "
                          "hybrid=true")
    if cfg.embeddings and cfg.baseline:
        raise ConfigError("embeddings= indexes given vectors of one model; drop baseline= (nothing to compare it with "
                          "on val but by encoding)")


def corpus_vectors(cfg, encoder, model, texts):
    """(embeddings, info) of the corpus by one encoder: cfg.embeddings for the model when given, else
    from the shared cache (or encoded into it), else encoded in RAM."""
    if cfg.embeddings and model == cfg.model:
        emb = np.load(cfg.embeddings, mmap_mode="r")
        if emb.ndim != 2 or emb.shape != (len(texts), encoder.dim):
            raise UserError(f"{cfg.embeddings}: shape {emb.shape}, but the corpus has {len(texts)} docs and the "
                            f"encoder makes {encoder.dim}-d vectors; pass the embeddings of this corpus and model")
        return emb, {"embeddings": os.path.abspath(cfg.embeddings)}
    cache_dir = run_cache_dir(cfg)
    cache = (embeddings_cache(cache_dir, cfg.backend, encoder, os.path.join(cfg.data, "corpus.jsonl"))
             if cfg.cache_embeddings else None)
    return corpus_embeddings(encoder, texts, cfg.batch_size, cache)


def memory_runs(cfg, doc_ids, encoder, emb, directions, queries, strengths):
    """{strength: val run} of dense search over the corpus vectors with each memory strength (the
    remembered docs' `directions`, memory_directions'): each query's top HYBRID_DEPTH."""
    qids = list(queries)
    q_emb = encoder.encode([queries[q] for q in qids], "query", cfg.batch_size)
    return {a: search_runs(doc_ids, mem.edit(emb, *directions, a) if a else emb, q_emb, qids) for a in strengths}


def memory_directions(cfg, doc_ids, encoder, memory):
    """(rows, unit directions) of the remembered docs, their queries encoded by `encoder`."""
    qids = list(memory.queries)
    q_emb = dict(zip(qids, encoder.encode([memory.queries[q] for q in qids], "query", cfg.batch_size)))
    return mem.directions(memory, doc_ids, q_emb)


def given_memory(cfg):
    """The strengths given in the config ({"dense", "bm25"}), or None when val is to choose them."""
    if cfg.memory_dense == "auto":
        return None
    return {"dense": float(cfg.memory_dense), "bm25": cfg.memory_bm25 if cfg.hybrid else 0}


def no_val_memory(cfg, memory, say=False):
    """The memory's strengths where no val can choose them: a generated train split's, as measured across datasets
    (decision.NO_VAL_GENERATED); judged queries', none (a memory of real queries is served only as val shows)."""
    gen = generated(cfg.data) and not memory.empty()
    strengths = {**decision.NO_VAL_GENERATED["memory"], "why": decision.NO_VAL_WHY} if gen else {**mem.NONE}
    if not cfg.hybrid:
        strengths["bm25"] = 0
    if say:
        shown = f"dense {strengths['dense']:g}, BM25 {strengths['bm25']}" if strengths["dense"] or strengths["bm25"] else "none"
        print(f"memory: {shown} served: no val to choose its strengths on; "
              + (decision.NO_VAL_WHY if gen else "--memory_dense and --memory_bm25 serve one as given"))
    return strengths


def memory_grid(cfg, memory, val_qrels):
    """(dense strengths, BM25 repeats) of the memories worth building: none always; the given ones, or
    the table's where some val query has a relevant document a train query found (where none has, val
    cannot show a memory helping, and none is built: val_choice says so)."""
    given = given_memory(cfg)
    if memory.empty() or not (given or mem.remembered_queries(memory.found, val_qrels)):
        return (0.0,), (0,)
    if given:
        return tuple(sorted({0.0, given["dense"]})), tuple(sorted({0, given["bm25"]}))
    return decision.STRENGTHS, (decision.REPEATS if cfg.hybrid else (0,))


def bm25_val_runs(val_queries, bm25_of, repeats, keep):
    """({repeat: val run}, {repeat: BM25}) of BM25 over the texts expanded `repeat` times: each built in
    turn and searched for val's top HYBRID_DEPTH, only the `keep` one held (at a million documents each
    BM25 takes gigabytes)."""
    qids, runs, kept = list(val_queries), {}, {}
    for r in repeats:
        bm25 = bm25_of(r)
        runs[r] = {q: dict(hits) for q, hits in zip(qids, bm25.search_many([val_queries[q] for q in qids],
                                                                           fusion.HYBRID_DEPTH))}
        if r == keep:
            kept[r] = bm25
    return runs, kept


def search_runs(doc_ids, vectors, q_emb, qids):
    """{qid: {doc id: score}}: each query's top HYBRID_DEPTH by exact search over `vectors`."""
    scores, hits = dense_search(q_emb, vectors, fusion.HYBRID_DEPTH)  # no second copy of the vectors
    return {q: {doc_ids[r]: float(s) for r, s in zip(rr, ss) if r >= 0} for q, rr, ss in zip(qids, hits, scores)}


def pooled_choice(cfg, doc_ids, texts, encoder, emb, pooled, val, given, bm25_of, train_memory):
    """The hybrid and memory choice of an encoder that never saw the train split, where val is small:
    the mix chosen on `pooled` ((queries, qrels, how): train + val), the memory's strengths cross-validated
    over them (each fold searched with the memory of the other folds' judgements, so no query is scored
    with its own); then scored on val as the index will serve it (`train_memory`, the train split's, and
    `bm25_of(repeat)`). Returns (the choice, "val" holding val's scores and "chosen_on" the pooled ones;
    its val run)."""
    queries, qrels, how = pooled
    qids = list(queries)
    q_emb = encoder.encode([queries[q] for q in qids], "query", cfg.batch_size)
    by_qid, rows_of = dict(zip(qids, q_emb)), {q: i for i, q in enumerate(qids)}
    dense = {0.0: search_runs(doc_ids, emb, q_emb, qids)}
    bm25 = {0: {q: dict(h) for q, h in zip(qids, bm25_of(0).search_many([queries[q] for q in qids],
                                                                       fusion.HYBRID_DEPTH))}} if cfg.hybrid else None
    choice = decision.hybrid(qrels, dense[0.0], bm25[0] if bm25 else {}, given=given if bm25 else fusion.DENSE_ONLY)
    fixed, remembered, parts = given_memory(cfg), set(), folds(qids)
    if not fixed and not train_memory.empty():
        for fold in parts:  # the memory of the other folds, searched by this one's queries
            held = sorted(fold, key=rows_of.get)
            other = mem.Memory.from_qrels(queries, {q: r for q, r in qrels.items() if q not in fold}, doc_ids)[0]
            remembered |= mem.remembered_queries(other.found, {q: qrels[q] for q in held})
            rows, dirs = mem.directions(other, doc_ids, by_qid)
            fold_emb = q_emb[[rows_of[q] for q in held]]
            for a in decision.STRENGTHS[1:]:
                dense.setdefault(a, {}).update(search_runs(doc_ids, mem.edit(emb, rows, dirs, a), fold_emb, held))
            for r in (decision.REPEATS[1:] if bm25 else ()):
                expanded = BM25(doc_ids, mem.expand(texts, doc_ids, other, r), cfg.bm25_k1, cfg.bm25_b)
                bm25.setdefault(r, {}).update(zip(held, map(dict, expanded.search_many(
                    [queries[q] for q in held], fusion.HYBRID_DEPTH))))
    strength, report = fixed or dict(mem.NONE), None
    if remembered:
        strength, mix, report = decision.memory(qrels, dense, bm25, choice, remembered,
                                                mixes=[given] if given else None)
        plain, choice = plain_mix(choice), {**choice, **mix}
    # as served: on val (pooled: its runs without memory are in hand), with the memory of train alone (its
    # queries are pooled too: their embeddings in hand)
    val_queries, val_qrels = val
    if not val_qrels:  # generated questions alone: their scores are what the choice was made on, not val's
        return decision.without_val(choice, how), None
    vids = list(val_queries)
    v_dense = {q: dense[0.0][q] for q in vids}
    v_bm25 = {0: {q: bm25[0][q] for q in vids}} if bm25 else {}
    if bm25 and strength["bm25"]:
        v_bm25[strength["bm25"]] = {q: dict(h) for q, h in zip(vids, bm25_of(strength["bm25"]).search_many(
            [val_queries[q] for q in vids], fusion.HYBRID_DEPTH))}
    served = (search_runs(doc_ids, mem.edit(emb, *mem.directions(train_memory, doc_ids, by_qid), strength["dense"]),
                          q_emb[[rows_of[q] for q in vids]], vids) if strength["dense"] else v_dense)
    served = fusion.hybrid(served, v_bm25[strength["bm25"]], choice) if v_bm25 else served
    score = lambda run: decision.per_query(val_qrels, run)[0]  # noqa: E731
    chosen_on = {**how, **choice["val"], "served": report["served"] if report else choice["val"]["served"]}
    on_val = {"dense": score(v_dense), "bm25": score(fusion.hybrid(v_dense, v_bm25[0], {"weight": 1.0})) if v_bm25
              else None}
    choice = {**choice, "queries": len(val_qrels), "chosen_on": chosen_on, "val": {**on_val, "served": score(served)}}
    if report:  # the mix without memory, scored on val alone: what a hybrid column of this encoder serves
        choice["plain"] = {**plain, "val": {**on_val, "served": score(fusion.hybrid(v_dense, v_bm25[0], plain))
                                            if v_bm25 else on_val["dense"]}}
    if not train_memory.empty():
        choice["memory"] = ({**fixed, "given": True} if fixed else {**strength, **report, "folds": len(parts)}
                            if report else {**mem.NONE, "queries": len(qrels), "remembered": 0, "folds": len(parts)})
    return choice, served


def plain_mix(choice):
    """The mix of a hybrid choice, as served without memory (what evaluate.py's hybrid columns serve)."""
    return {k: choice[k] for k in ("method", "weight", "rrf_k", "depth") if k in choice}


def val_choice(cfg, doc_ids, candidates, bm25_runs, val, given, memory, directions, strengths, texts, bm25_of,
               bar=None):
    """Score each candidate {label: (model, encoder, vectors in doc_ids' order)} on val, dense and mixed
    with BM25 (as `given`, or chosen), each with the memory at every strength (`bm25_runs`: {repeat: val
    run of BM25 over the texts expanded so}, None for dense alone; `directions` {label:
    memory_directions'}; `strengths` memory_grid's); return (label served, its hybrid choice, {label:
    choice}, the served val run). `bar` (label, its choice, its val per-query scores), the zero-shot
    index built before training, joins them as it was chosen. The zero-shot candidate (the bar) is served
    unless another beats it beyond noise (common.decision.encoder). A candidate that never saw the train
    split, where val is small, chooses on train + val (pooled_choice: `texts`, `bm25_of(repeat)`)."""
    val_queries, val_qrels = val
    remembered = mem.remembered_queries(memory.found, val_qrels)
    choices, runs = {}, {}  # each candidate's choice, and its val run as served
    train, gen = pool_sources(cfg.data)
    for label, (model, encoder, emb) in candidates.items():
        queries, qrels, how = decision.pooled(val, train, trained_on(model, cfg.data), gen)
        print(f"{label} ({model}): its mix and memory are chosen on {decision.describe_pooled(how)}")
        if how["split"] != "val":  # generated questions choose no memory: they are their own passages' memory
            choices[label], run = pooled_choice(cfg, doc_ids, texts, encoder, emb, (queries, qrels, how), val, given,
                                                bm25_of, mem.Memory() if gen else memory)
            runs[label] = cut_run(run, fusion.HYBRID_DEPTH, True)
            print(f"{label} ({model}): {decision.describe_hybrid(choices[label])}")
            m = choices[label].get("memory", {})
            if "without" in m:
                print(f"  {decision.describe_memory(m, m)}")
            elif "folds" in m:
                print(f"  memory: none served: cross-validated in {m['folds']} folds of train + val, no query has a "
                      "relevant document another fold's query found, so nothing shows it helping")
            continue
        dense_runs = memory_runs(cfg, doc_ids, encoder, emb, directions[label], val_queries, strengths)
        if bm25_runs is None:  # dense alone, scored
            choice = decision.hybrid(val_qrels, dense_runs[0.0], {}, given=fusion.DENSE_ONLY)
        else:
            choice = decision.hybrid(val_qrels, dense_runs[0.0], bm25_runs[0], given=given)
        print(f"val of {cfg.data}, {label} ({candidates[label][0]}): {decision.describe_hybrid(choice)}")
        fixed = given_memory(cfg)
        if memory.empty():
            print("  memory: none: " + ("memory=false" if not cfg.memory else "no judged train query to remember"))
        elif not fixed and not remembered:  # nothing to measure it on: every val query is one it cannot help
            choice["memory"] = {**mem.NONE, "queries": len(val_qrels), "remembered": 0}
            print(f"  memory: none served: no val query has a relevant document a train query found, so val "
                  f"cannot show it helping ({len(memory.found)} docs remembered, none of val's)")
        elif fixed:  # as given: the hybrid's mix chosen with it
            with_memory = decision.hybrid(val_qrels, dense_runs[fixed["dense"]],
                                          bm25_runs[fixed["bm25"]] if bm25_runs else {},
                                          given=given if bm25_runs else fusion.DENSE_ONLY)
            choice = {**with_memory, "memory": {**fixed, "given": True},
                      "plain": {**plain_mix(choice), "val": choice["val"]}}
            print(f"  memory as given: {decision.describe_hybrid(choice)}")
        else:
            strength, mix, report = decision.memory(val_qrels, dense_runs, bm25_runs, choice, remembered,
                                                    mixes=[given] if given else None)
            print(f"  {decision.describe_memory(strength, report)}")
            if strength != mem.NONE:
                choice = {**choice, **mix, "plain": {**plain_mix(choice), "val": choice["val"]},
                          "val": {**choice["val"], "served": report["served"]}}
            choice["memory"] = {**strength, **report}
        choices[label] = choice
        m = choice.get("memory", mem.NONE)
        runs[label] = cut_run(fusion.hybrid(dense_runs[m["dense"]], bm25_runs[m["bm25"]], choice) if bm25_runs
                              else dense_runs[m["dense"]], fusion.HYBRID_DEPTH, True)  # as evaluate.py scores it
    if bar is not None:
        label, choices[label], runs[label] = bar
    served, report = (decision.encoder(val_qrels, runs, "baseline", remembered if not memory.empty() else None)
                      if "baseline" in choices else ("model", None))
    if report is not None:
        why = (f"the {'fine-tuned' if served == 'model' else 'zero-shot'} encoder: {candidates['model'][0]} scores "
               f"{choices['model']['val']['served']:.4f} on val against the zero-shot's "
               f"{choices['baseline']['val']['served']:.4f} (gain {report['gain']:+.4f}, standard error "
               f"{report['stderr']:.4f}{decision.describe_guard(report['guard'])})"
               + ("" if served == "model" else ", one val query: nothing is beyond noise" if len(val_qrels) < 2 else
                  ", not beyond noise" if not report["guard"]["vetoed"] else
                  ", at a cost beyond noise to the queries no memory can help"))
        print(f"encoder served: {why}")
        choices[served] = {**choices[served], "encoder": {"gain": report["gain"], "stderr": report["stderr"],
                                                          "guard": report["guard"], "why": why}}
    return served, choices[served], choices, runs[served]


def train_memory(cfg, doc_ids):
    """The memory of the train split's judged pairs (empty without a train split)."""
    if "train" not in splits(cfg.data):
        return mem.Memory()
    _, queries, qrels = load_beir(cfg.data, "train")
    return mem.Memory.from_qrels(queries, qrels, doc_ids)[0]


def add_queries(cfg, argv):
    """Remember more judged queries in the index at cfg.out, in place: the queries are encoded, the
    vectors of the documents they name moved and the BM25 rebuilt over the expanded texts; nothing
    else is re-encoded. Written whole or not at all."""
    if not cfg.out or not faiss_index.is_index(cfg.out):
        raise UserError(f"add_queries: --out={cfg.out or '(empty)'} is not a build_index.py directory; pass the "
                        "index to update (e.g. runs/<dataset>-<model>/index)")
    corpus_file = os.path.join(cfg.data, "corpus.jsonl")
    corpus = read_corpus(corpus_file)
    doc_ids = list(corpus)
    # an index over another corpus is one error naming both (its BM25 knows its corpus by content; an
    # index without BM25 is checked by its doc ids when it loads)
    has_bm25 = os.path.isfile(os.path.join(cfg.out, BM25_FILES[1]))
    old_bm25 = BM25.load(cfg.out, doc_ids, corpus_file) if has_bm25 else None
    t0 = time.perf_counter()
    queries, qrels, counts = mem.read_judgements(cfg.add_queries, os.path.join(cfg.data, "queries.jsonl"))
    model, backend = faiss_index.built_with(cfg.out)
    encoder = load_encoder(model, backend, cfg.device)
    index = faiss_index.load(cfg.out, doc_ids, encoder, use_gpu=False)
    memory = mem.Memory.load(cfg.out)
    stats = memory.add(queries, qrels, doc_ids)
    if given_memory(cfg):
        memory.strengths = given_memory(cfg)
    print(f"{cfg.add_queries}: {counts['rows']} judgements, {stats['pairs']} remembered ({stats['new']} new"
          + (f", {counts['duplicates']} duplicates counted once" if counts["duplicates"] else "")
          + f"); skipped: {counts['unknown_query']} naming no query of {cfg.data}, {stats['skipped_doc']} naming no "
          f"document, {stats['skipped_grade']} with grade <= 0")
    if not stats["new"] and not given_memory(cfg):
        print(f"nothing new to remember: {cfg.out} is unchanged")
        return 0
    if not memory.on():
        warn(f"{cfg.out} serves its memory at strength 0 (val chose none): the queries are remembered in "
             f"{mem.FILE}, and serve nothing until memory_dense= and memory_bm25= are given")
    touched = mem.touched(memory, qrels)
    with atomic_dir(cfg.out) as tmp:
        copy_index(cfg.out, tmp)
        added = mem.saved_extra(cfg.out).get("added", []) + [{"file": os.path.abspath(cfg.add_queries), **counts,
                                                              **stats}]
        write_memory(cfg, cfg.out, tmp, memory, touched, corpus, encoder, index, old_bm25, {"added": added})
        with open(os.path.join(tmp, "command.txt"), "a", encoding="utf-8") as f:
            f.write(f"added: {' '.join(argv)}\n")
    print(f"{cfg.out}: {memory.describe()}; {len(touched)} documents updated in {time.perf_counter() - t0:.1f} s")
    return 0


def write_memory(cfg, source, tmp, memory, touched, corpus, encoder, index, bm25, extra):
    """Into `tmp`, a copy of the index directory `source` (its files copied or linked), what `memory` serves at
    its strengths: the vectors of the documents `touched` moved toward their queries (every remembered one
    where the index is not exact: refilled), BM25 (`bm25`'s k1 and b; None: the index has none) over the
    texts expanded, the strengths in fusion.json, and memory.json with `extra`."""
    doc_ids, corpus_file = list(corpus), os.path.join(cfg.data, "corpus.jsonl")
    if memory.strengths["dense"]:
        emb = faiss_index.stored_embeddings(source, len(doc_ids), encoder)
        if emb is None:
            raise UserError(f"{source}: no embeddings.npy of the encoder's own vectors to move; rebuild the index "
                            "with --keep_embeddings=true")
        exact = isinstance(index, faiss_index.faiss_module().IndexFlat)  # else refilled: every memory row
        sub = mem.Memory(memory.queries, {d: memory.found[d] for d in (touched if exact else memory.found)})
        rows, dirs = memory_directions(cfg, doc_ids, encoder, sub)
        own = np.asarray(emb[rows], dtype=np.float32)
        own = faiss_index.truncate(own, index.d) if own.shape[1] > index.d else own  # a --dim index
        faiss_index.replace_rows(index, rows, mem.edit(own, np.arange(len(rows)), dirs, memory.strengths["dense"]),
                                 emb)
        faiss_index.write(tmp, index)
    if bm25 is not None:
        texts = CorpusTexts(corpus, doc_ids)
        BM25(doc_ids, mem.expand(texts, doc_ids, memory, memory.strengths["bm25"]), bm25.k1, bm25.b).save(
            tmp, corpus_file)
    saved = fusion.load(tmp, fusion.DENSE_ONLY)  # the copy's: what this run wrote there stays
    fusion.save(tmp, {**saved, "memory": {**saved.get("memory", {}), **memory.strengths}})
    memory.save(tmp, {**mem.saved_extra(source), **extra})


def remember_val(cfg, memory, val, doc_ids):
    """Once val has chosen, the served memory also holds val's judged queries (every label used), where a
    memory is served at all; the val scores reported stay the choice's, with train's memory alone. Returns
    the documents val's queries touched."""
    if not (cfg.memory_val and val[1] and memory.on()):
        return []
    stats = memory.add(*val, doc_ids)
    print(f"memory: val's {len(val[1])} judged queries remembered too, now that val has chosen ({stats['new']} new "
          "pairs); the val scores above are those of train's memory alone")
    return mem.touched(memory, val[1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    check_config(cfg)
    if cfg.add_queries:
        return add_queries(cfg, argv)
    dataset = os.path.basename(os.path.normpath(cfg.data))
    cfg.out = cfg.out or os.path.join("runs", f"{dataset}-{os.path.basename(os.path.normpath(cfg.model))}", "index")
    join_ranks(cfg)  # under torchrun: the corpus encoded by every rank, a slice each
    corpus_file = os.path.join(cfg.data, "corpus.jsonl")
    corpus = read_corpus(corpus_file)
    doc_ids = list(corpus)
    tune_texts, report_texts = split_queries(cfg.data, cfg.tune_split), split_queries(cfg.data, cfg.split)
    use_gpu = faiss_index.gpu_count() > 0 if cfg.faiss_gpu == "auto" else cfg.faiss_gpu == "yes"
    if use_gpu and faiss_index.gpu_count() == 0:
        raise ConfigError("faiss_gpu=yes, but FAISS sees no GPU: `make setup-gpu` installs faiss-gpu")
    factory = faiss_index.resolve_factory(cfg.factory, len(doc_ids))
    # Models that fail, fail before any work.
    candidates = {"model": (cfg.model, load_encoder(cfg.model, cfg.backend, cfg.device))}
    encoder = candidates["model"][1]
    bar = read_bar(cfg.baseline, encoder) if cfg.baseline and faiss_index.is_index(cfg.baseline) else None
    if cfg.baseline and not bar and os.path.abspath(cfg.baseline) != os.path.abspath(cfg.model):
        candidates["baseline"] = (cfg.baseline, load_encoder(cfg.baseline, cfg.backend, cfg.device))
    if bar and bar["same"]:  # nothing to choose: the model is the one the bar was built with
        val = load_val(cfg.data, f"serving the zero-shot index {cfg.baseline}")
        why = (f"{cfg.model} embeds as the zero-shot encoder {bar['model']} does (training kept step 0, or stopped "
               "before it): serving the zero-shot index")
        print(f"encoder served: {why}")
        with atomic_dir(cfg.out) as tmp:
            serve_bar(cfg, tmp, argv, bar, {}, {"why": why}, corpus, val)
        return 0
    if cfg.dim:
        trained = encoder.settings().get("matryoshka_dims") or []
        if not 0 < cfg.dim <= encoder.dim:
            raise ConfigError(f"dim={cfg.dim}: {cfg.model} embeds in {encoder.dim} dimensions; pass dim={encoder.dim} "
                              "or less (0 = all of them)")
        if cfg.dim < encoder.dim and cfg.dim not in trained:
            warn(f"dim={cfg.dim}: {cfg.model} was not trained for {cfg.dim} dimensions "
                 f"({'matryoshka_dims ' + str(trained) if trained else 'no matryoshka_dims'}); the index works, "
                 "but its first dimensions may rank worse than a model trained for them")
    val = ({}, {})
    given = None if cfg.hybrid_weight == "auto" else {"method": "convex", "weight": cfg.hybrid_weight,
                                                      "depth": fusion.HYBRID_DEPTH}
    if (cfg.hybrid and given is None) or len(candidates) > 1 or bar:
        without = f"serving {cfg.model}" + ("" if not cfg.hybrid else ", its mix chosen on the generated questions"
                                            if generated(cfg.data) else
                                            f", {decision.describe_hybrid(decision.NO_VAL)}, measured across datasets")
        val = load_val(cfg.data, without)
    print(f"{dataset}: {len(doc_ids)} docs, {factory} ({'GPU' if use_gpu else 'CPU'} FAISS) -> {cfg.out}")
    faiss_index.check_fits(factory, len(doc_ids), cfg.dim or encoder.dim, os.path.getsize(corpus_file), corpus_file)

    memory = train_memory(cfg, doc_ids) if cfg.memory else mem.Memory()
    with atomic_dir(cfg.out) as tmp:  # a failure anywhere leaves the previous index, if any, as it was
        start_run(tmp, cfg, argv)
        texts = CorpusTexts(corpus, doc_ids)
        t0 = time.perf_counter()
        strengths, repeats = memory_grid(cfg, memory, val[1])

        def bm25_of(r):  # the corpus as it is: built once for every stage (cached); with a memory: here
            return (corpus_bm25(doc_ids, texts, corpus_file, cfg.bm25_k1, cfg.bm25_b, run_cache_dir(cfg)) if r == 0
                    else BM25(doc_ids, mem.expand(texts, doc_ids, memory, r), cfg.bm25_k1, cfg.bm25_b))
        if not cfg.hybrid:
            bm25_runs, bm25s = None, {}
        elif val[0]:
            bm25_runs, bm25s = bm25_val_runs(val[0], bm25_of, repeats, keep=0)
        else:  # no val: the given repeat, or the default's
            r = (given_memory(cfg) or no_val_memory(cfg, memory))["bm25"]
            bm25_runs, bm25s = None, {r: bm25_of(r)}
        info = {"bm25_seconds": time.perf_counter() - t0} if cfg.hybrid else {}
        vectors, searched = {}, {}
        for label, (model, enc) in candidates.items():
            vectors[label], info[f"{label}_embeddings"] = corpus_vectors(cfg, enc, model, texts)
            # the model's index holds the cut vectors (--dim); embeddings.npy keeps the whole width
            cut = cfg.dim and label == "model"
            searched[label] = (model, enc, faiss_index.truncate(vectors[label], cfg.dim) if cut else vectors[label])
        # each candidate encoder's embeddings of the remembered queries, summed per doc
        directions = {label: memory_directions(cfg, doc_ids, enc, memory) if max(strengths) > 0 else
                      (np.zeros(0, np.int64), np.zeros((0, enc.dim), np.float32))
                      for label, (_, enc, _) in searched.items()}
        val_run = None
        if bar and val[0] and not bar["values"]:
            warn(f"{cfg.baseline} holds no val scores ({VAL_FILE}: an index built before the bar kept them, or without "
                 f"val): {cfg.model} is served without being weighed against it")
        if val[0]:
            served, choice, choices, val_run = val_choice(
                cfg, doc_ids, searched, bm25_runs, val, given, memory, directions, strengths, texts, bm25_of,
                bar=("baseline", bar["choice"], bar["values"]) if bar and bar["values"] else None)
        else:
            served, choice, choices = "model", given or (decision.NO_VAL if cfg.hybrid else fusion.DENSE_ONLY), {}
            gen = pool_sources(cfg.data)[1] if cfg.hybrid and given is None else None
            if gen and not trained_on(cfg.model, cfg.data):  # the mix on the generated questions (decision.pooled)
                pooled = decision.pooled(({}, {}), None, False, gen)
                choice = pooled_choice(cfg, doc_ids, texts, searched["model"][1], searched["model"][2], pooled,
                                       ({}, {}), None, bm25_of, mem.Memory())[0]
                choices = {"model": choice}  # saved as the encoder's: evaluate.py's columns read it, not choose again
                print(f"hybrid: {decision.describe_hybrid(choice)}")
            if not memory.empty():  # strengths as given, or the default's: nothing to choose them on
                choice = {**choice, "memory": given_memory(cfg) or no_val_memory(cfg, memory, say=True)}
            if bar:  # nothing to weigh the model against the bar on: training had no val to stop on either
                why = f"{cfg.model}, as given: no val to weigh it against the zero-shot index {cfg.baseline}"
                print(f"encoder served: {why}")
                choice = {**choice, "encoder": {"why": why}}
        if bar and served == "baseline":
            return serve_bar(cfg, tmp, argv, bar, choices["model"], choice["encoder"], corpus, val)
        model, encoder, emb = searched[served]
        memory.strengths = {k: choice.get("memory", mem.NONE)[k] for k in mem.NONE}
        if val_run is not None:  # the choice's val scores, before val's queries join the memory
            write_val_record(tmp, cfg, dataset, val[1], val_run, choice)
        val_touched = remember_val(cfg, memory, val, doc_ids)
        r = memory.strengths["bm25"]
        bm25 = (bm25s[r] if r in bm25s else bm25_of(r)) if cfg.hybrid else None
        if memory.strengths["dense"]:  # the index holds the moved vectors; embeddings.npy keeps the encoder's own
            moved = (directions[served] if len(directions[served][0]) and not val_touched
                     else memory_directions(cfg, doc_ids, encoder, memory))
            emb = mem.edit(emb, *moved, memory.strengths["dense"])
        if not memory.empty():
            print(memory.describe())
        if cfg.hybrid and not fusion.uses_bm25(choice):
            print(f"BM25 does not help this encoder on {'val' if val[0] else 'the generated questions'}: the index "
                  "serves dense alone (its BM25 is saved all the same)")

        t0 = time.perf_counter()
        index, build_info = faiss_index.build(emb, factory, cfg.train_size, cfg.seed, use_gpu)
        info.update(build_info, build_seconds=time.perf_counter() - t0)
        print(f"built in {info['build_seconds']:.1f} s on {info['device']}")

        # Exact search to hold the index to: over the vectors as they are (a memory map), not a second copy.
        ann = factory != "Flat"
        if cfg.nprobe or cfg.ef_search:
            faiss_index.set_search_params(index, cfg.nprobe, cfg.ef_search)
        elif ann and tune_texts:
            tune_emb = encoder.encode(tune_texts, "query", cfg.batch_size)
            tried = faiss_index.tune(index, tune_emb, dense_search(tune_emb, emb, 10)[1], cfg.target_recall)
            info["tuning"] = {"split": cfg.tune_split, "queries": len(tune_texts), "recall@10": tried}
            if tried:
                print(f"tuned on {len(tune_texts)} {cfg.tune_split} queries: {faiss_index.search_params(index)}, "
                      f"recall@10 {tried[-1][1]:.3f} against exact")
            if tried and tried[-1][1] < cfg.target_recall:
                warn(f"{factory} reaches recall@10 {tried[-1][1]:.3f} at most, below target_recall="
                     f"{cfg.target_recall}: PQ codes this short lose near neighbours; try IVF,SQ8 or IVF,Flat")
        info.update(faiss_index.search_params(index))

        if report_texts:
            report_emb = encoder.encode(report_texts, "query", cfg.batch_size)
            rows, qps = faiss_index.timed_search(index, report_emb, 100)
            report = {"split": cfg.split, "queries": len(report_texts), "queries_per_s": qps}
            if ann:
                t0 = time.perf_counter()
                exact_rows = dense_search(report_emb, emb, 100)[1]
                exact_qps = len(report_emb) / (time.perf_counter() - t0)
                report.update({f"recall@{k}": faiss_index.recall_at(rows, exact_rows, k) for k in (10, 100)},
                              exact_queries_per_s=exact_qps)
            else:
                report.update({"recall@10": 1.0, "recall@100": 1.0, "exact_queries_per_s": qps})
            info["report"] = report
            print(f"{cfg.split}: recall@10 {report['recall@10']:.3f}, @100 {report['recall@100']:.3f} against exact; "
                  f"{qps:.0f} queries/s (exact {report['exact_queries_per_s']:.0f})")

        probe = faiss_index.probe_embedding(encoder)
        faiss_index.save(tmp, index, doc_ids, {
            "factory": factory, "model": encoder_name(model, cfg.backend), "backend": cfg.backend,
            "settings": encoder.settings(), "probe": [round(float(x), 6) for x in probe], "model_dim": encoder.dim})
        if bm25 is not None:
            bm25.save(tmp, corpus_file)
        if not memory.empty():
            memory.save(tmp, {"split": "train+val" if val_touched else "train", "model": model})
        names = {**{label: m for label, (m, _) in candidates.items()}, **({"baseline": bar["model"]} if bar else {})}
        fusion.save(tmp, {**choice, "model": model, "candidates": {
            names[label]: {k: v for k, v in c.items() if k != "grid"} for label, c in choices.items()}})
        if cfg.keep_embeddings:
            keep_vectors(vectors[served], os.path.join(tmp, "embeddings.npy"))
        del emb, vectors, searched  # the memory maps, before the files under them go
        info["index_bytes"] = os.path.getsize(os.path.join(tmp, "index.faiss"))
        write_json(os.path.join(tmp, "metrics.json"), {"dataset": dataset, "docs": len(doc_ids), "served": model,
                                                       "hybrid": choice, **info})
    print(f"wrote {cfg.out}: index.faiss {info['index_bytes'] / 2**20:.1f} MiB; serving {model}, "
          f"{decision.describe_hybrid({k: v for k, v in choice.items() if k != 'val'})}")
    return 0


VAL_FILE = "val.json"  # the served first stage's nDCG@10 on each val query


def read_bar(directory, encoder):
    """The zero-shot index built before training (`make index` weighs the fine-tuned encoder against it):
    {"dir", "model", "choice" (its fusion.json), "values" ({qid: val nDCG@10} as served, {} without val),
    "same": whether `encoder` embeds as its encoder does (a fine-tuning that kept step 0)}."""
    with open(os.path.join(directory, "index.json"), encoding="utf-8") as f:
        meta = json.load(f)
    values = {}
    if os.path.isfile(os.path.join(directory, VAL_FILE)):
        with open(os.path.join(directory, VAL_FILE), encoding="utf-8") as f:
            values = json.load(f)["per_query"]
    return {"dir": directory, "model": meta["model"], "choice": fusion.load(directory, fusion.DENSE_ONLY),
            "values": values, "same": faiss_index.embeds_as_built(directory, encoder)}


def serve_bar(cfg, tmp, argv, bar, tuned, report, corpus, val):
    """The index directory `tmp` made the bar's (its large files linked, nothing rebuilt), with this run's
    provenance and a fusion.json saying why (`report`: common.decision.encoder's, its "why"): the fine-tuned
    encoder (`tuned`: its choice on val, {} when not scored) did not beat the zero-shot one beyond noise.
    With memory_val, val's judged queries join its memory (remember_val), as the bar's encoder embeds them."""
    copy_index(bar["dir"], tmp)
    start_run(tmp, cfg, argv)
    saved = bar["choice"]
    candidates = {**saved.get("candidates", {}), **({cfg.model: {k: v for k, v in tuned.items() if k != "grid"}}
                                                     if tuned else {})}
    fusion.save(tmp, {**saved, "candidates": candidates, "encoder": report, "bar": os.path.abspath(bar["dir"])})
    if os.path.isfile(os.path.join(tmp, "val", "metrics.json")):  # the record names the index that serves it
        with open(os.path.join(tmp, "val", "metrics.json"), encoding="utf-8") as f:
            record = json.load(f)
        for result in record["results"].values():
            result["index"] = os.path.abspath(cfg.out)
        write_json(os.path.join(tmp, "val", "metrics.json"), record)
    memory = mem.Memory.load(bar["dir"])
    touched = remember_val(cfg, memory, val, list(corpus))
    if touched:
        has_bm25 = os.path.isfile(os.path.join(bar["dir"], BM25_FILES[1]))
        encoder = load_encoder(*faiss_index.built_with(bar["dir"]), cfg.device)
        write_memory(cfg, bar["dir"], tmp, memory, touched, corpus, encoder,
                     faiss_index.load(bar["dir"], list(corpus), encoder, use_gpu=False),
                     BM25.load(bar["dir"], list(corpus), os.path.join(cfg.data, "corpus.jsonl")) if has_bm25 else None,
                     {"split": "train+val"})
    print(f"wrote {cfg.out}: the zero-shot index {bar['dir']}, "
          f"{decision.describe_hybrid({k: v for k, v in saved.items() if k != 'val'})}")
    return 0


def copy_index(source, tmp):
    """Into `tmp`, the index directory `source`: its large files linked (every write of them makes a new
    file, so rewriting the copy leaves `source` as it was), the rest copied (their times this run's: make
    reads index.json's), val/ (the choice's record) too."""
    for name in os.listdir(source):
        path, target = os.path.join(source, name), os.path.join(tmp, name)
        if name in ("index.faiss", "embeddings.npy", BM25_FILES[0]):
            keep_vectors(None, target, path)
        elif os.path.isfile(path):
            shutil.copyfile(path, target)
        elif os.path.isdir(path):
            shutil.copytree(path, target)


def write_val_record(tmp, cfg, dataset, qrels, run, choice):
    """val/ in the index directory: the served first stage's val run as the choice scored it (train's memory
    alone), in evaluate.py's layout (comparison.md reads it as the served column's val), and val.json: its
    nDCG@10 per query, what a later build weighs against this one (read_bar)."""
    mean, per_query = evaluate_run(qrels, run, fusion.KS)
    write_results(os.path.join(tmp, "val"), dataset, "val", {"hybrid": {
        "metrics": mean, "queries": len(per_query), "per_query": per_query, "run": run,
        "index": os.path.abspath(cfg.out), "hybrid": {k: v for k, v in choice.items() if k != "grid"},
        "chosen": decision.chosen_cell(choice), "note": decision.describe_hybrid(choice)}})
    write_json(os.path.join(tmp, VAL_FILE), {"split": "val", "metric": "ndcg@10",
                                             "per_query": {q: m["ndcg@10"] for q, m in per_query.items()}})


def keep_vectors(emb, path, source=None):
    """embeddings.npy: the served encoder's whole-width corpus vectors (mining reads them), linked to
    the file they were read from (or `source`) when there is one (no second copy on disk)."""
    source = source or getattr(emb, "filename", None)
    if source and os.path.isfile(source):
        try:
            os.link(source, path)
            return
        except OSError:  # another file system
            shutil.copyfile(source, path)
            return
    np.save(path, np.asarray(emb, dtype=np.float32))


if __name__ == "__main__":
    cli(main)
