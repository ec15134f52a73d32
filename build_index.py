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
split alone, dense and mixed with BM25 (common.fusion.choose_hybrid: a convex weight or RRF, kept
only when it beats dense beyond noise); the best is indexed, the fine-tuned model only when it beats
the baseline. Without a val split the model is indexed with BM25 at the default weight, saying so.
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
import os
import shutil
import sys
import time

import numpy as np

from common import fusion
from common import index as faiss_index
from common.backends import BACKENDS, load_encoder
from common.config import Auto, ConfigError, check_choice, check_range, load_config
from common.data import doc_text, load_val, read_corpus, read_qrels, read_queries, splits
from common.files import atomic_dir, write_json
from common.retrievers import BM25, corpus_embeddings, embeddings_cache
from common.run import UserError, cli, start_run, warn

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
    cache_dir = cfg.cache_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.out)), ".cache")
    cache = (embeddings_cache(cache_dir, model, cfg.backend, encoder, os.path.join(cfg.data, "corpus.jsonl"))
             if cfg.cache_embeddings else None)
    return corpus_embeddings(encoder, texts, cfg.batch_size, cache)


def val_choice(cfg, doc_ids, candidates, bm25, val, given):
    """Score each candidate {label: (model, encoder, vectors in doc_ids' order)} on val, dense and mixed
    with BM25 (as `given`, or chosen); return (label served, its hybrid choice, {label: choice}). The
    first candidate is served unless a later one scores higher."""
    val_queries, val_qrels = val
    qids = list(val_queries)
    bm25_run = ({q: dict(hits) for q, hits in zip(qids, bm25.search_many([val_queries[q] for q in qids],
                                                                         fusion.HYBRID_DEPTH))} if bm25 else None)
    choices = {}
    for label, (_, encoder, emb) in candidates.items():
        scores, rows = faiss_index.search(faiss_index.flat_ip(emb), encoder.encode(
            [val_queries[q] for q in qids], "query", cfg.batch_size), fusion.HYBRID_DEPTH)
        dense = {q: {doc_ids[r]: float(s) for r, s in zip(rr, ss) if r >= 0} for q, rr, ss in zip(qids, rows, scores)}
        if bm25 is None:  # dense alone, scored
            choice = fusion.choose_hybrid(val_qrels, dense, {}, given=fusion.DENSE_ONLY)
        else:
            choice = fusion.choose_hybrid(val_qrels, dense, bm25_run, given=given)
        choices[label] = choice
        print(f"val of {cfg.data}, {label} ({candidates[label][0]}): {fusion.describe_hybrid(choice)}")
    served = max(choices, key=lambda label: choices[label]["val"]["served"])  # the first of equals
    return served, choices[served], choices


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    check_config(cfg)
    dataset = os.path.basename(os.path.normpath(cfg.data))
    cfg.out = cfg.out or os.path.join("runs", f"{dataset}-{os.path.basename(os.path.normpath(cfg.model))}", "index")
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
    if cfg.baseline and os.path.abspath(cfg.baseline) != os.path.abspath(cfg.model):
        candidates["baseline"] = (cfg.baseline, load_encoder(cfg.baseline, cfg.backend, cfg.device))
    encoder = candidates["model"][1]
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
    if (cfg.hybrid and given is None) or len(candidates) > 1:
        without = f"serving {cfg.model}" + (f", {fusion.describe_hybrid(fusion.NO_VAL)}, measured across datasets"
                                            if cfg.hybrid else "")
        val = load_val(cfg.data, without)
    print(f"{dataset}: {len(doc_ids)} docs, {factory} ({'GPU' if use_gpu else 'CPU'} FAISS) -> {cfg.out}")

    with atomic_dir(cfg.out) as tmp:  # a failure anywhere leaves the previous index, if any, as it was
        start_run(tmp, cfg, argv)
        texts = [doc_text(corpus[d]) for d in doc_ids]
        t0 = time.perf_counter()
        bm25 = BM25(doc_ids, texts, cfg.bm25_k1, cfg.bm25_b) if cfg.hybrid else None
        info = {"bm25_seconds": time.perf_counter() - t0} if bm25 else {}
        vectors, searched = {}, {}
        for label, (model, enc) in candidates.items():
            vectors[label], info[f"{label}_embeddings"] = corpus_vectors(cfg, enc, model, texts)
            # the model's index holds the cut vectors (--dim); embeddings.npy keeps the whole width
            cut = cfg.dim and label == "model"
            searched[label] = (model, enc, faiss_index.truncate(vectors[label], cfg.dim) if cut else vectors[label])
        if val[0]:
            served, choice, choices = val_choice(cfg, doc_ids, searched, bm25, val, given)
        else:
            served, choice, choices = "model", given or (fusion.NO_VAL if cfg.hybrid else fusion.DENSE_ONLY), {}
        model, encoder, emb = searched[served]
        if served != "model":
            print(f"{cfg.model} does not beat {model} on val ({choices['model']['val']['served']:.4f} against "
                  f"{choice['val']['served']:.4f}): indexing {model}")
        if cfg.hybrid and not fusion.uses_bm25(choice):
            print("BM25 does not help this encoder on val: the index serves dense alone (its BM25 is saved all "
                  "the same)")

        t0 = time.perf_counter()
        index, build_info = faiss_index.build(emb, factory, cfg.train_size, cfg.seed, use_gpu)
        info.update(build_info, build_seconds=time.perf_counter() - t0)
        print(f"built in {info['build_seconds']:.1f} s on {info['device']}")

        exact = faiss_index.flat_ip(emb) if (tune_texts or report_texts) and factory != "Flat" else None
        if cfg.nprobe or cfg.ef_search:
            faiss_index.set_search_params(index, cfg.nprobe, cfg.ef_search)
        elif exact is not None and tune_texts:
            tune_emb = encoder.encode(tune_texts, "query", cfg.batch_size)
            tried = faiss_index.tune(index, tune_emb, faiss_index.search(exact, tune_emb, 10)[1], cfg.target_recall)
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
            if exact is not None:
                exact_rows, exact_qps = faiss_index.timed_search(exact, report_emb, 100)
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
        fusion.save(tmp, {**choice, "model": model, "candidates": {
            candidates[label][0]: {k: v for k, v in c.items() if k != "grid"} for label, c in choices.items()}})
        if cfg.keep_embeddings:
            keep_vectors(vectors[served], os.path.join(tmp, "embeddings.npy"))
        del emb, vectors, searched  # the memory maps, before the files under them go
        info["index_bytes"] = os.path.getsize(os.path.join(tmp, "index.faiss"))
        write_json(os.path.join(tmp, "metrics.json"), {"dataset": dataset, "docs": len(doc_ids), "served": model,
                                                       "hybrid": choice, **info})
    print(f"wrote {cfg.out}: index.faiss {info['index_bytes'] / 2**20:.1f} MiB; serving {model}, "
          f"{fusion.describe_hybrid({k: v for k, v in choice.items() if k != 'val'})}")
    return 0


def keep_vectors(emb, path):
    """embeddings.npy: the served encoder's whole-width corpus vectors (mining reads them), linked to
    the file they were read from when there is one (no second copy on disk)."""
    source = getattr(emb, "filename", None)
    if source and os.path.isfile(source):
        try:
            os.link(source, path)
            return
        except OSError:  # another file system
            shutil.copyfile(source, path)
            return
    np.save(path, np.asarray(emb, dtype=np.float32))


def encoder_name(model, backend):
    """What index.json records as the encoder: an absolute path for local models, so the index
    finds it from any working directory, else the name."""
    if backend == "torch":
        from common.models import resolve_model

        model = resolve_model(model)
    return os.path.abspath(model) if os.path.isdir(model) else model


if __name__ == "__main__":
    cli(main)
