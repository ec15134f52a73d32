"""Evaluate retrievers on a split of a prepared BEIR directory.

Writes metrics.json, one TREC run file per retriever (`qid Q0 docid rank score tag`) and the
per-query latency p50/p95 into the run directory, and prints the retrievers side by side. The
retrievers: BM25, dense (the encoder, exactly or through a build_index.py index) and hybrid: the two
mixed (common/fusion.py) as the index saved it (build_index.py chose it on val), else as chosen here on
the data's val split. With `rerank` set, each first stage R is also reported as `R+rerank`: its top
rerank_depth re-scored by a cross-encoder (latency = reranking time per query), and as `R+fused`: the
two scores mixed with the weight and depth chosen on val and saved with the reranker (fusion.json),
next to R in the table and metrics.json. `--compare` with `--compare_val` makes the pipeline's
comparison.md.

    # CPU (or one GPU, picked automatically): BM25 and zero-shot MiniLM on the default data
    python evaluate.py --data=data/python-source --retrievers=bm25,dense
    # SciFact test with a fine-tuned model, into a chosen run directory
    python evaluate.py --data=data/scifact --model=runs/scifact/best --out=runs/scifact/eval
    # settings shared by several runs live in a yaml file; --key=value overrides it
    python evaluate.py configs/bm25-only.yaml --split=val
    # earlier runs side by side, as a markdown table (also written to --out/comparison.md)
    python evaluate.py --compare=zero-shot=runs/a/test/metrics.json,fine-tuned=runs/b/encoder/test/metrics.json
    # hybrid: BM25 and dense mixed with the weight val chooses (or given: 0 = dense, 1 = BM25; or RRF)
    python evaluate.py --data=data/scifact --retrievers=bm25,dense,hybrid
    python evaluate.py --data=data/scifact --retrievers=hybrid --hybrid_weight=0.3
    python evaluate.py --data=data/scifact --retrievers=hybrid --hybrid_method=rrf
    # two-stage: BM25's top 100 reranked by a cross-encoder (columns bm25 and bm25+rerank)
    python evaluate.py --data=data/scifact --retrievers=bm25 --rerank=runs/scifact-all-MiniLM-L6-v2/reranker/best --rerank_depth=100
    # through an index (build_index.py): its encoder (when --model is not given), its BM25 and its hybrid
    python evaluate.py --data=data/scifact --index=runs/scifact-all-MiniLM-L6-v2/index
    # what the pipeline serves: the index's first stage, its top reranked and fused as val chose
    python evaluate.py --data=data/scifact --retrievers=hybrid --index=runs/scifact-all-MiniLM-L6-v2/index \
        --rerank=runs/scifact-all-MiniLM-L6-v2/reranker/best
    # no torch at all: ONNX exports (export_onnx.py) of the encoder and the reranker, int8-quantised
    python evaluate.py --data=data/scifact --backend=onnx-int8 --model=runs/onnx/encoder --rerank=runs/onnx/reranker
    # every first stage reranked, the cross-encoder reading at most 256 tokens a pair
    python evaluate.py --data=data/scifact --retrievers=bm25,dense,hybrid --rerank=runs/scifact-all-MiniLM-L6-v2/reranker/best --rerank_max_length=256

Evaluation is a single process; under torchrun only rank 0 would be needed, so run it plainly.
"""
import json
import os
import sys
import time

import numpy as np

from common import backends, decision, fusion, memory, report, retrievers
from common.backends import encoder_name
from common import index as faiss_index
from common.config import Auto, ListOf, check_choice, check_range, load_config
from common.data import (CorpusTexts, doc_snippets, doc_text, generated, load_beir, load_val, pool_sources, read_qrels,
                         read_queries, splits)
from common.files import append_csv_row, atomic_open
from common.metrics import cut_run, evaluate_run, read_trec
from common.retrievers import BM25, BM25_FILES, corpus_bm25, dense_run, embeddings_cache, join_ranks, nearest
from common.run import UserError, cli, start_run, trained_on, warn
from common.run import cache_dir as run_cache_dir

DEFAULTS = dict(
    # data
    data="data/python-source",  # a directory prepared by prepare_data.py (BEIR layout)
    split="test",
    # retrievers, several side by side
    retrievers=["bm25", "dense", "hybrid"],  # bm25 | dense | hybrid (the two mixed, common/fusion.py)
    # dense: the model and its encoding; 0 or "" keeps what was saved with the model
    model="",  # a local directory, a hub name, a packaged short name or an ONNX export; "" = the index's
    #            encoder (model and backend) with --index, else all-MiniLM-L6-v2
    backend="torch",  # torch | onnx | onnx-int8: export_onnx.py directories run by onnxruntime, no torch
    index="",  # a build_index.py directory over this corpus; "" = exact search over the embeddings
    choices="",  # a build_index.py directory whose choice for `model` the hybrid column serves (its mix without
    #              memory: `make pipeline` decides once, there); "" or none made for this model = chosen on val here
    pooling="",  # mean | cls | max
    max_query_length=0,
    max_passage_length=0,
    query_prefix="",
    passage_prefix="",
    batch_size=64,
    device="auto",  # auto | cpu | cuda | cuda:1
    cache_embeddings=True,  # reuse corpus embeddings of the same model, settings and corpus
    cache_dir="",  # where they are kept (build_index.py shares them); "" = <out>/../.cache
    # bm25: k1 and b chosen on SciFact train (see common/retrievers.py); with --index, the BM25 saved there
    bm25_k1=1.2,
    bm25_b=0.4,
    # rank_bm25 scores every doc in Python per query: fine for small corpora; "sparse" for large ones
    bm25_backend="sparse",  # sparse | rank_bm25 (the reference: the same scores, far slower)
    # hybrid: each query's dense and BM25 top 100, min-max normalised, mixed (common/fusion.py)
    hybrid_method="auto",  # auto | convex | rrf: auto = the index's fusion.json (chosen on val by
    #                        build_index.py), else chosen here on the val split (convex weights and RRF)
    hybrid_weight=Auto(float),  # convex: BM25's share, 0 = dense alone, 1 = BM25 alone; auto = as above
    rrf_k=60,  # rrf: the paper's constant (it damps the top ranks' lead)
    # reranking: a second stage over each first stage's top rerank_depth, reported as <retriever>+rerank
    rerank="",  # a cross-encoder directory or hub name; "" = off. Reported as <retriever>+rerank (its
    #             scores alone) and <retriever>+fused (mixed with the first stage's, common/fusion.py)
    rerank_depth=Auto(int),  # docs below it keep their first-stage order, so recall@k stays comparable;
    #                          auto = the depth chosen on val (the reranker's fusion.json), else 100
    fusion_weight=Auto(float),  # the reranker's share of the fused score; auto = chosen on val, else 1
    rerank_batch_size=32,  # (query, passage) pairs per forward pass
    rerank_max_length=0,  # tokens per pair; 0 = the model's own (at most 512)
    # evaluation
    dims=ListOf(int),  # e.g. [384, 256, 128, 64]: also dense@<d>, exact search on embeddings cut to their first d
    #          values and renormalised (a Matryoshka model's smaller embeddings), side by side
    k=100,  # retrieval depth, and the depth of the TREC run files
    ks=[1, 3, 5, 10, 100],  # cut-offs for every metric
    ignore_identical_ids=True,  # BEIR: a query never retrieves the doc that has its own id
    latency=True,  # each query searched alone, as a service sees them, for p50/p95 latency; false = in
    #                batches, faster, no latency (the reranker's is measured either way)
    baseline="",  # the column every other is tested against, query by query (paired t and randomisation,
    #               Holm-corrected); "" = the served column with --served, else bm25, else the first
    out="",  # run directory; "" = runs/<dataset>-<model>/<split>
    # report only: print earlier runs side by side (label=path/metrics.json,...) and write comparison.md
    compare=[],
    compare_val=[],  # compare only: the same labels' val metrics (label=path/metrics.json,...), for the
    #                  val score and what val chose beside each test column
    served="",  # compare only: the label whose last column is what is served, marked in the table
    results_csv="",  # compare only: append one row (time, commit, data, hparams, metrics) to this CSV
    #                  (compare also reads `data`'s qrels: each split's queries a train query's relevant
    #                  documents cover, "remembered", shown apart from the rest)
    hparams=[],  # compare only: config.json files of the runs compared, whose settings go in that row
    #              (its wall time: from the first compared stage's start to now)
    per_query_changes=10,  # compare: the queries the served column gained and lost most on against the zero-shot
    #                        encoder (per_query.md beside comparison.md, and TensorBoard text); 0 = none
    # report only: two TREC run files (label=path or path) scored on `data`'s `split` side by side, tested
    # against each other, and the queries that changed most between them
    compare_runs=[],
    unjudged="",  # report only: an index of data with no test split: comparison.md says what it serves and
    #               how to measure it
    results="",  # report only: a results.csv (`make results`: runs/results.csv) printed as a table, newest last
)


def percentiles_ms(seconds):
    ms = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95))}


def first_stages(queries, searchers, depth, timed=True):
    """{"bm25" | "dense": (run of each query's top `depth`, per-query seconds, info)} of the first stages
    the retrievers need: searched one query at a time as a search service sees them, or (timed=False,
    no latencies) in batches."""
    out = {}
    for name, (one, many, info) in searchers.items():
        if not timed:
            out[name] = (dict(zip(queries, many(list(queries.values()), depth))), [], info)
            continue
        run, latencies = {}, []
        for qid, text in queries.items():
            t = time.perf_counter()
            run[qid] = one(text, depth)
            latencies.append(time.perf_counter() - t)
        out[name] = (run, latencies, info)
    return out


def bm25_searcher(cfg, corpus):
    """(search one text, search many, info), each search(..., depth) -> {doc id: score}: the index's
    saved BM25 with --index (nothing to build), else one built here."""
    t0 = time.perf_counter()
    if cfg.index and os.path.isfile(os.path.join(cfg.index, BM25_FILES[1])):
        index = BM25.load(cfg.index, list(corpus), os.path.join(cfg.data, "corpus.jsonl"))
        info = {"bm25": f"saved with {cfg.index}", "k1": index.k1, "b": index.b}
    else:
        texts = (doc_text(d) for d in corpus.values())  # read only where BM25 is built, not loaded
        index = (corpus_bm25(list(corpus), texts, os.path.join(cfg.data, "corpus.jsonl"), cfg.bm25_k1, cfg.bm25_b,
                             run_cache_dir(cfg)) if cfg.bm25_backend == "sparse"
                 else BM25(corpus.keys(), texts, cfg.bm25_k1, cfg.bm25_b, cfg.bm25_backend))
        info = {"k1": cfg.bm25_k1, "b": cfg.bm25_b}
    info["index_seconds"] = time.perf_counter() - t0
    return ((lambda text, depth: dict(index.search(text, depth))),
            (lambda texts, depth: [dict(hits) for hits in index.search_many(texts, depth)]), info)


def dense_searcher(cfg, corpus, encoder):
    """(search one text, search many, info), as bm25_searcher: the encoder through the index, or a search
    over the corpus embeddings (cached), exact where that is affordable (common.retrievers.nearest)."""
    doc_ids = list(corpus)
    if cfg.index:
        index = faiss_index.load(cfg.index, doc_ids, encoder)
        search = lambda emb, depth: faiss_index.search(index, emb, depth)  # noqa: E731
        info = {"index": cfg.index, **faiss_index.search_params(index)}
    else:
        doc_emb, info = corpus_embeddings(cfg, encoder, doc_ids, CorpusTexts(corpus, doc_ids))

        def search(emb, depth):  # exact while affordable here, else an ANN whose recall goes in info
            scores, rows, how = nearest(emb, doc_emb, depth)
            if how["search"] != "exact" or "search" not in info:  # one query at a time (latency) is always exact
                info.update(how)
            return scores, rows
    info.update(model=cfg.model, backend=cfg.backend, settings=encoder.settings())

    def many(texts, depth):
        scores, idx = search(encoder.encode(texts, kind="query", batch_size=cfg.batch_size), depth)
        # An approximate index may find fewer than depth documents (row -1).
        return [{doc_ids[i]: float(s) for i, s in zip(ii, ss) if i >= 0} for ii, ss in zip(idx, scores)]
    return (lambda text, depth: many([text], depth)[0]), many, info


def hybrid_choice(cfg, searchers, split_runs):
    """The hybrid's mix: as given (hybrid_method / hybrid_weight), the index's saved one, the one build_index.py
    chose for this encoder (`choices`: its mix without memory), or chosen on the val split
    (common.decision.hybrid) from val runs searched like this split's. One line says which."""
    depth = fusion.HYBRID_DEPTH
    if cfg.hybrid_method == "rrf":
        return {"method": "rrf", "rrf_k": cfg.rrf_k, "depth": depth}
    if cfg.hybrid_weight != "auto":
        return {"method": "convex", "weight": cfg.hybrid_weight, "depth": depth}
    if cfg.index and os.path.isfile(os.path.join(cfg.index, fusion.FILE)):
        saved = fusion.load(cfg.index, fusion.DENSE_ONLY)
        print(f"hybrid: {decision.describe_hybrid(saved)} (saved with {cfg.index})")
        return saved
    chosen = chosen_for(cfg.choices, cfg.model, cfg.backend) if cfg.choices else None
    if chosen is not None:
        print(f"hybrid: {decision.describe_hybrid(chosen)} (chosen for {cfg.model} by {cfg.choices})")
        return chosen
    train, gen = pool_sources(cfg.data)
    val_queries, val_qrels = load_val(cfg.data, "hybrid: " + ("its mix chosen on the generated questions" if gen else
                                                              f"{decision.describe_hybrid(decision.NO_VAL)}, measured "
                                                              "across datasets"))
    # an encoder that never saw the train split chooses on train (or generated questions) + val where val is small
    # (build_index.py alike)
    queries, qrels, how = decision.pooled((val_queries, val_qrels), train, trained_on(cfg.model, cfg.data), gen)
    if not qrels:
        return dict(decision.NO_VAL)
    runs = split_runs if cfg.split == "val" and how["split"] == "val" else first_stages(queries, searchers, depth,
                                                                                         timed=False)
    dense, bm25 = cut_run(runs["dense"][0], depth, False), cut_run(runs["bm25"][0], depth, False)
    choice = decision.hybrid(qrels, dense, bm25)
    if not val_qrels:  # generated questions alone: their scores are what the choice was made on, not val's
        choice = decision.without_val(choice, how)
    elif how["split"] != "val":  # the choice's scores on val alone, beside those it was chosen on
        on_val = decision.hybrid(val_qrels, {q: dense[q] for q in val_qrels}, {q: bm25[q] for q in val_qrels},
                                 given=choice)
        choice = {**choice, "chosen_on": {**how, **choice["val"]}, "val": on_val["val"], "queries": len(val_qrels)}
    print(f"hybrid: {decision.describe_hybrid(choice)}")
    return choice


def chosen_for(index, model, backend):
    """The hybrid choice build_index.py made for `model` in an index directory's fusion.json (its mix without
    memory: what a hybrid column of this encoder alone serves), or None when it holds none for it."""
    saved = fusion.load(index, {}) if os.path.isdir(index) else {}
    name = encoder_name(model, backend)
    for candidate, choice in saved.get("candidates", {}).items():
        if candidate in (name, model) and ("val" in choice or "chosen_on" in choice):
            kept = {k: v for k, v in choice.items() if k not in ("memory", "plain", "encoder")}
            return {**kept, **choice.get("plain", {})}
    return None


def corpus_embeddings(cfg, encoder, doc_ids, texts):
    """Encode the corpus, or load it from the cache (cache_dir, which build_index.py shares) when
    model, settings and corpus are unchanged."""
    cache_dir = run_cache_dir(cfg)
    cache = (embeddings_cache(cache_dir, cfg.backend, encoder, os.path.join(cfg.data, "corpus.jsonl"))
             if cfg.cache_embeddings else None)
    return retrievers.corpus_embeddings(encoder, texts, cfg.batch_size, cache)


def load_encoder(cfg):
    return backends.load_encoder(cfg.model, cfg.backend, cfg.device, pooling=cfg.pooling or None,
                                   max_query_length=cfg.max_query_length or None,
                                   max_passage_length=cfg.max_passage_length or None,
                                   query_prefix=cfg.query_prefix or None, passage_prefix=cfg.passage_prefix or None)


def load_reranker(cfg, backend):
    if backend != "torch":  # before importing models.py, which imports torch
        return backends.load_reranker(cfg.rerank, backend, max_length=cfg.rerank_max_length or None)
    from common.models import ModelNotFound

    try:
        return backends.load_reranker(cfg.rerank, backend, cfg.device, cfg.rerank_max_length or None)
    except ModelNotFound as e:
        # Not models.py's hint: the packaged bi-encoder it names would load here with an untrained head.
        raise ModelNotFound(f"rerank={cfg.rerank}: {e.reason}", "pass a trained cross-encoder directory (e.g. "
                            "runs/<dataset>-<model>/reranker/best) or hub name, or rerank= to skip it") from None


def chosen_by_training(model):
    """{"chosen": "step N of M"} for a model a training script kept as best/ on val (its run's
    metrics.json beside it says which step), else {}."""
    if not model or os.path.basename(os.path.normpath(model)) != "best":
        return {}
    try:
        with open(os.path.join(os.path.dirname(os.path.normpath(model)), "metrics.json"), encoding="utf-8") as f:
            summary = json.load(f)
        return {"chosen": f"step {summary['best_step']} of {summary['steps']}"}
    except (OSError, ValueError, KeyError):
        return {}


def rerank(cfg, reranker, doc_texts, queries, run):
    """(run, per-query seconds, info): each query's top rerank_depth ordered by the cross-encoder,
    the rest below them in first-stage order."""
    out, latencies = reranker.rerank(queries, run, doc_texts, cfg.rerank_depth, cfg.rerank_batch_size)
    pairs = sum(min(len(row), cfg.rerank_depth) for row in run.values())
    info = {"reranker": cfg.rerank, "rerank_depth": min(cfg.rerank_depth, cfg.k), "max_length": reranker.max_length,
            "pairs_per_s": pairs / max(sum(latencies), 1e-9), **chosen_by_training(cfg.rerank)}
    return out, latencies, info


def dense_at_dims(cfg, corpus, queries, encoder):
    """(name, run, info) of dense@<d> for each of cfg.dims: exact search with the corpus and query
    embeddings cut to their first d values and renormalised. A width the model was not trained for
    (its matryoshka_dims) is still evaluated, with a warning."""
    doc_ids, qids = list(corpus), list(queries)
    doc_emb, _ = corpus_embeddings(cfg, encoder, doc_ids, CorpusTexts(corpus, doc_ids))
    q_emb = encoder.encode([queries[q] for q in qids], kind="query", batch_size=cfg.batch_size)
    trained = encoder.settings().get("matryoshka_dims") or []
    depth = cfg.k + 1 if cfg.ignore_identical_ids else cfg.k
    for dim in cfg.dims:
        if dim < encoder.dim and dim not in trained:
            warn(f"dims: {cfg.model} was not trained for {dim} dimensions "
                 f"({'matryoshka_dims ' + str(trained) if trained else 'no matryoshka_dims'}); evaluated all the same")
        run = dense_run(qids, faiss_index.truncate(q_emb, dim), doc_ids, faiss_index.truncate(doc_emb, dim), depth)
        yield (f"dense@{dim}", cut_run(run, cfg.k, cfg.ignore_identical_ids),
               {"dim": dim, "model": cfg.model, "index_bytes_per_doc": 4 * dim})


def compare(cfg):
    """Earlier runs side by side: `label=path/metrics.json`, one column per label and retriever; with
    compare_val, the same labels' val metrics.json files, for the val scores and what val chose."""
    results = report.read_results(cfg.compare, "compare", per_query=True)
    val = report.read_results(cfg.compare_val, "compare_val", per_query=True)
    served = report.served_column(results, cfg.served) if cfg.served else None
    remembered = remembered_parts(cfg.data) if val else None
    text = (report.summary_table(results, val, served, remembered=remembered) + "\n" if val else "") + \
        report.table(results)
    tests = report.significance_table(results, report.baseline_column(results, cfg.baseline or cfg.served))
    text += f"\nOn {'test' if val else 'these runs'}: {tests}" if tests else ""
    memory_line = served_choices(cfg.compare_val + cfg.compare, cfg.served) if cfg.served else ""
    text += f"\n{memory_line}\n" if memory_line else ""
    text += generated_paragraph(cfg.data)
    print(text, end="")
    if cfg.out:
        with atomic_open(os.path.join(cfg.out, "comparison.md")) as f:
            f.write(text)
    zero_shot = next((n for n in results if n.endswith(" dense")), None)  # the first label's: the baseline's
    if (cfg.out and served and zero_shot and cfg.per_query_changes and os.path.isdir(cfg.data)
            and all(os.path.isfile(results[n]["trec"]) for n in (zero_shot, served))):
        runs = [(n, results[n]["per_query"], read_trec(results[n]["trec"])) for n in (zero_shot, served)]
        changes = query_changes(cfg, results[served]["split"] or "test", runs)
        with atomic_open(os.path.join(cfg.out, "per_query.md")) as f:
            f.write(changes)
        report.tensorboard_text(cfg.out, "per_query", changes)
        print(f"the queries {served} gained and lost most on against {zero_shot}: {cfg.out}/per_query.md")
    if cfg.results_csv:
        started = [os.path.getmtime(p) for item in cfg.compare_val + cfg.compare
                   if os.path.isfile(p := os.path.join(os.path.dirname(item.rpartition("=")[2]), "command.txt"))]
        append_csv_row(cfg.results_csv, report.results_row(
            cfg.out, cfg.hparams, results, os.path.basename(os.path.normpath(cfg.data)), served,
            time.time() - min(started) if started else None))
        print(f"appended a row to {cfg.results_csv}")
    return 0


def generated_paragraph(data_dir):
    """comparison.md's paragraph on generated training questions, or "" where the train questions are real."""
    details = generated(data_dir) if data_dir and os.path.isdir(data_dir) else None
    if not details:
        return ""
    val = load_val(data_dir, "")[1] if "val" in splits(data_dir) else {}
    return "\n" + report.generated_line(details, len(val), decision.NO_VAL_WHY, decision.NO_VAL_GENERATED_WORTH,
                                        decision.SMALL_VAL)


def unjudged(cfg):
    """comparison.md of data with no test split: nothing to score; what the index serves, and how to judge it."""
    try:
        with open(os.path.join(cfg.unjudged, "index.json"), encoding="utf-8") as f:
            index = json.load(f)
        with open(os.path.join(cfg.unjudged, "fusion.json"), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"unjudged={cfg.unjudged}: not an index built by build_index.py ({e}); build one first") from None
    hybrid = decision.describe_hybrid({k: v for k, v in saved.items() if k != "val"})
    text = (f"# {os.path.basename(os.path.normpath(cfg.data))}: nothing judged to test on\n\n"
            f"{cfg.data} has no test split (no judged questions held out), so no column is scored. The index "
            f"{cfg.unjudged} serves {index['model']} over {index['ntotal']:,} passages, {hybrid}.\n\n"
            "To measure it, give questions with the files that answer them (questions.jsonl beside the documents: "
            '{"question": "...", "files": ["path/in/the/folder.pdf"]}, or qrels/test.tsv in a BEIR directory) '
            "and run `make pipeline` again.\n") + generated_paragraph(cfg.data)
    print(text, end="")
    if cfg.out:
        with atomic_open(os.path.join(cfg.out, "comparison.md")) as f:
            f.write(text)
    return 0


def compare_runs(cfg):
    """Two TREC run files scored on data's split, side by side: metrics, paired tests, the queries that
    changed most (printed; with --out, also comparison.md and per_query.md there)."""
    if len(cfg.compare_runs) != 2:
        raise UserError(f"compare_runs: {len(cfg.compare_runs)} run file(s); give two, --compare_runs=A.trec,B.trec "
                        "(or label=A.trec,label=B.trec)")
    _, queries, qrels = load_beir(cfg.data, cfg.split)
    results, runs = {}, []
    for item in cfg.compare_runs:
        label, _, path = item.rpartition("=")
        try:
            run = read_trec(path)
        except ValueError as e:
            raise UserError(str(e)) from None
        label = label or os.path.splitext(os.path.basename(path))[0]
        mean, per_query = evaluate_run(qrels, run, cfg.ks)
        results[label] = {"metrics": mean, "per_query": per_query}
        runs.append((label, per_query, run))
    tests = report.significance_table(results, report.baseline_column(results, cfg.baseline or runs[0][0]))
    text = f"{cfg.data} {cfg.split}, {len(qrels)} queries\n\n{report.table(results)}\n{tests}"
    changes = query_changes(cfg, cfg.split, runs) if cfg.per_query_changes else ""
    print(f"{text}\n{changes}", end="")
    if cfg.out:
        os.makedirs(cfg.out, exist_ok=True)
        for name, content in (("comparison.md", text), ("per_query.md", changes)):
            with atomic_open(os.path.join(cfg.out, name)) as f:
                f.write(content)
    return 0


def query_changes(cfg, split, runs):
    """report.query_changes of two (name, per-query metrics, run) on data's split: its queries' texts and
    the relevant documents' titles (or first words) read from the data."""
    queries = read_queries(os.path.join(cfg.data, "queries.jsonl"))
    qrels = read_qrels(os.path.join(cfg.data, "qrels", f"{split}.tsv"))
    # the titles of only the documents shown: those of the most changed queries (a corpus may be millions)
    gained, lost = report.most_changed(runs[0][1], runs[1][1], n=cfg.per_query_changes)
    docs = {d for q in gained + lost for d, g in qrels.get(q, {}).items() if g > 0}
    return report.query_changes(*runs, qrels, queries, doc_snippets(os.path.join(cfg.data, "corpus.jsonl"), docs),
                                n=cfg.per_query_changes)


def remembered_parts(data):
    """{"val", "test": query ids with a relevant document some train query also found} of a prepared
    directory (what an index memory can help), or None without one or without a train split."""
    if not os.path.isdir(data) or not {"train", "val", "test"} <= set(splits(data)):
        return None
    train = read_qrels(os.path.join(data, "qrels", "train.tsv"))
    found = {d for row in train.values() for d, g in row.items() if g > 0}
    return {k: memory.remembered_queries(found, read_qrels(os.path.join(data, "qrels", f"{k}.tsv")))
            for k in ("val", "test")}


def served_choices(items, label):
    """comparison.md's lines on what the served column's index decided (its val run's metrics.json names the
    index): the encoder and why, the memory it holds, and the rule behind both; "" without an index."""
    for item in items:
        name, _, path = item.rpartition("=")
        if name != label:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                index = next((r.get("index") for r in json.load(f)["results"].values() if r.get("index")), "")
        except (OSError, ValueError, KeyError):
            continue
        if not index or not os.path.isfile(os.path.join(index, fusion.FILE)):
            continue
        saved = fusion.load(index, fusion.DENSE_ONLY)
        lines = [f"Encoder served: {saved['encoder']['why']}."] if saved.get("encoder", {}).get("why") else []
        if os.path.isfile(os.path.join(index, memory.FILE)):
            chosen, held = saved.get("memory", {}), memory.Memory.load(index)
            if "without" in chosen:
                line = decision.describe_memory({k: chosen.get(k, 0) for k in memory.NONE}, chosen)
            elif chosen.get("remembered") == 0:
                line = ("none served: no val query has a relevant document a train query found, so val cannot "
                        "show it helping")
            else:
                line = "served at " + (f"dense {chosen['dense']:g}, BM25 repeat {chosen['bm25']}: "
                                       + chosen.get("why", "the strengths given") if fusion.remembers(saved)
                                       else "strength 0 (none)")
            each = "; ".join(f"{model}: {c['memory']['without']:.4f} without memory, {c['val']['served']:.4f} served"
                             for model, c in saved.get("candidates", {}).items() if "without" in c.get("memory", {}))
            whose = " (train's and val's: val's added once val had chosen)" if memory.saved_extra(index).get(
                "split") == "train+val" else ""
            lines.append(f"Index memory ({index}, {len(held.queries)} queries remembered{whose} for "
                         f"{len(held.found)} docs): {line.removeprefix('memory: ')}."
                         + (f" Each encoder's hybrid on val: {each}." if each else "")
                         + " \"Remembered\": the queries with a relevant document some train query also found.")
        return "\n\n".join(lines + [f"The rule behind every choice on val (common/decision.py): {decision.RULE}"])
    return ""


def check_config(cfg):
    """Settings no run can use: one error before any work."""
    check_choice(cfg, "retrievers", ("bm25", "dense", "hybrid"))
    check_choice(cfg, "bm25_backend", BM25.BACKENDS)
    check_choice(cfg, "backend", backends.BACKENDS)
    check_choice(cfg, "hybrid_method", ("auto", "convex", "rrf"))
    check_range(cfg, ["fusion_weight", "hybrid_weight"], 0, 1)
    check_range(cfg, ["k", "rrf_k"], 1)
    if len(set(cfg.retrievers)) != len(cfg.retrievers) or not cfg.retrievers:
        raise UserError(f"retrievers={','.join(cfg.retrievers)}: name each of bm25, dense, hybrid at most once, "
                        "and at least one")
    hybrid_set = [f"{k}={getattr(cfg, k)}" for k in ("hybrid_method", "hybrid_weight") if getattr(cfg, k) != "auto"]
    if hybrid_set and "hybrid" not in cfg.retrievers:
        raise UserError(f"{', '.join(hybrid_set)} but retrievers={','.join(cfg.retrievers)} has no hybrid; add "
                        "hybrid to retrievers or drop the setting")
    if cfg.hybrid_method == "rrf" and cfg.hybrid_weight != "auto":
        raise UserError(f"hybrid_method=rrf mixes ranks, not weighted scores: drop hybrid_weight={cfg.hybrid_weight}, "
                        "or set hybrid_method=convex")
    if cfg.rerank and cfg.rerank_depth != "auto" and cfg.rerank_depth < 1:
        raise UserError(f"rerank_depth={cfg.rerank_depth}: rerank at least the top 1 (or rerank= to turn it off)")


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    if cfg.compare:
        return compare(cfg)
    if cfg.compare_runs:
        return compare_runs(cfg)
    if cfg.unjudged:
        return unjudged(cfg)
    if cfg.results:
        print(report.results_table(cfg.results), end="")
        return 0
    check_config(cfg)
    rerank_backend = cfg.backend  # the encoder's may come from the index instead
    if not cfg.model:
        cfg.model, cfg.backend = faiss_index.built_with(cfg.index) if cfg.index else ("all-MiniLM-L6-v2", cfg.backend)
    dataset = os.path.basename(os.path.normpath(cfg.data))
    model_name = os.path.basename(os.path.normpath(cfg.model))
    cfg.out = cfg.out or os.path.join("runs", f"{dataset}-{model_name}", cfg.split)
    join_ranks(cfg)  # under torchrun: the corpus encoded by every rank, a slice each
    corpus, queries, qrels = load_beir(cfg.data, cfg.split)
    # A model that does not load must fail before any output is written or BM25 has run.
    needs = {"bm25", "dense"} if "hybrid" in cfg.retrievers else set(cfg.retrievers)
    encoder = load_encoder(cfg) if "dense" in needs or cfg.dims else None
    if cfg.dims and not all(0 < d <= encoder.dim for d in cfg.dims):
        raise UserError(f"dims={cfg.dims}: {cfg.model} embeds in {encoder.dim} dimensions; pass each from 1 to "
                        f"{encoder.dim}")
    reranker = load_reranker(cfg, rerank_backend) if cfg.rerank else None
    saved = getattr(reranker, "fusion", fusion.RERANK_ONLY)  # chosen on val by train_reranker.py
    cfg.rerank_depth = saved["depth"] if cfg.rerank_depth == "auto" else cfg.rerank_depth
    cfg.fusion_weight = saved["weight"] if cfg.fusion_weight == "auto" else cfg.fusion_weight
    start_run(cfg.out, cfg, sys.argv[1:] if argv is None else argv)
    print(f"{dataset}/{cfg.split}: {len(queries)} queries, {len(corpus)} docs -> {cfg.out}")

    searchers = {}
    if "bm25" in needs:
        searchers["bm25"] = bm25_searcher(cfg, corpus)
    if "dense" in needs:
        searchers["dense"] = dense_searcher(cfg, corpus, encoder)
    # One extra hit, so dropping a query's own id still leaves k results; a hybrid mixes the top
    # HYBRID_DEPTH of each, as an index serves it.
    depth = max(cfg.k + 1 if cfg.ignore_identical_ids else cfg.k,
                fusion.HYBRID_DEPTH if "hybrid" in cfg.retrievers else 0)
    parts = first_stages(queries, searchers, depth, timed=cfg.latency)
    if "hybrid" in cfg.retrievers:
        choice = hybrid_choice(cfg, searchers, parts)
        t0 = time.perf_counter()
        run = fusion.hybrid(*(cut_run(parts[p][0], choice["depth"], False) for p in ("dense", "bm25")), choice)
        mixing = (time.perf_counter() - t0) / max(len(queries), 1)
        # One after the other, as a single service would.
        latencies = [b + d + mixing for b, d in zip(parts["bm25"][1], parts["dense"][1])] if cfg.latency else []
        parts["hybrid"] = (run, latencies, {**parts["dense"][2], "hybrid": choice,
                                            "chosen": decision.chosen_cell(choice),
                                            "note": decision.describe_hybrid(choice)})

    results = {}
    doc_texts = {d: doc_text(doc) for d, doc in corpus.items()} if reranker is not None else None
    for first in cfg.retrievers:
        run, latencies, info = parts[first]
        run = cut_run(run, cfg.k, cfg.ignore_identical_ids)
        # the dense column's "chosen" is the encoder's step; the hybrid's, its weight
        step = chosen_by_training(info.get("model")) if first == "dense" else {}
        stages = [(first, run, latencies, {**info, **step})]
        if reranker is not None:
            reranked, rerank_latencies, rerank_info = rerank(cfg, reranker, doc_texts, queries, run)
            stages.append((f"{first}+rerank", reranked, rerank_latencies, rerank_info))
            if cfg.fusion_weight != 1:
                mix = {"weight": cfg.fusion_weight, "depth": cfg.rerank_depth}
                stages.append((f"{first}+fused", fusion.fuse(run, reranked, **mix),
                               latencies if cfg.fusion_weight == 0 else [a + b for a, b in zip(latencies, rerank_latencies)],
                               {**rerank_info, "fusion": mix, "chosen": f"weight {mix['weight']:g}, depth {mix['depth']}",
                                "note": decision.describe_rerank(mix)}))
        for name, run, latencies, info in stages:
            mean, per_query = evaluate_run(qrels, run, cfg.ks)
            timed = {"latency_ms": percentiles_ms(latencies)} if latencies else {}
            results[name] = {"metrics": mean, **timed, "queries": len(per_query), **info, "per_query": per_query,
                             "run": run}
    for name, run, info in dense_at_dims(cfg, corpus, queries, encoder) if cfg.dims else ():
        mean, per_query = evaluate_run(qrels, run, cfg.ks)
        results[name] = {"metrics": mean, "queries": len(per_query), **info, "per_query": per_query, "run": run}
    report.write_results(cfg.out, dataset, cfg.split, results)
    print(report.table(results), end="")
    tests = report.significance_table(results, report.baseline_column(results, cfg.baseline))
    print(f"\n{tests}" if tests else "", end="")
    return 0


if __name__ == "__main__":
    cli(main)
