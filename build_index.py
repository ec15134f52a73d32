"""Encode a corpus with a bi-encoder and build a FAISS index that search.py, evaluate.py --index and
common.retrievers.Retriever load in one line.

    # CPU: the default data with zero-shot MiniLM; "auto" is exact (Flat) under 100k docs
    python build_index.py
    # a fine-tuned encoder, an IVF-PQ index (nlist ~ 4 sqrt(N)), nprobe tuned to recall@10 >= 0.95
    python build_index.py --data=data/scifact --model=runs/scifact-all-MiniLM-L6-v2/encoder/best --factory=IVF,PQ32
    # one GPU: the corpus encodes on CUDA and, with faiss-gpu (`make setup-gpu`), IVF trains there too
    python build_index.py --data=data/scifact --factory=IVF,Flat
    # an ONNX export (export_onnx.py) embeds the corpus; no torch needed
    python build_index.py --backend=onnx --model=runs/onnx/encoder
    # another factory over the same vectors, without encoding again
    python build_index.py --embeddings=runs/scifact-all-MiniLM-L6-v2/index/embeddings.npy --factory=HNSW32 --out=...

One process does it all (torchrun adds nothing: FAISS uses every GPU it sees). The search settings
(nprobe for IVF, efSearch for HNSW) are tuned on `tune_split`'s queries, which need no labels, as the
smallest that reach `target_recall` recall@10 against exact search, and saved with the index.

Run directory (default runs/<dataset>-<model>/index), written whole or not at all: index.faiss,
doc_ids.txt, index.json (factory, dim, search settings, the encoder and its probe embedding),
embeddings.npy (keep_embeddings), metrics.json (build time, size, recall@10/@100 against exact
search and queries/s on `split`), config.json and command.txt.
"""
import os
import sys
import time

import numpy as np

from common import index as faiss_index
from common.backends import BACKENDS, load_encoder
from common.config import ConfigError, check_choice, load_config
from common.data import doc_text, read_corpus, read_qrels, read_queries, splits
from common.files import atomic_dir, write_json
from common.retrievers import encode_corpus
from common.run import UserError, cli, start_run, warn

DEFAULTS = dict(
    # data
    data="data/python-source",  # a directory prepared by prepare_data.py (BEIR layout)
    # encoder: embeds the corpus here, and the queries at search time
    model="all-MiniLM-L6-v2",  # a local directory, a hub name, a packaged short name, or an ONNX export
    backend="torch",  # torch | onnx | onnx-int8 (an export_onnx.py directory: no torch needed)
    batch_size=64,
    device="auto",  # auto | cpu | cuda (torch backend)
    embeddings="",  # a .npy of corpus embeddings in corpus order, indexed instead of encoding again
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


def corpus_vectors(cfg, encoder, texts, tmp):
    """The corpus embeddings, memory-mapped from tmp/embeddings.npy: encoded a chunk at a time, or
    read from cfg.embeddings."""
    path = os.path.join(tmp, "embeddings.npy")
    if not cfg.embeddings:
        t0 = time.perf_counter()
        emb = encode_corpus(encoder, texts, cfg.batch_size, path=path)
        return emb, {"encode_seconds": time.perf_counter() - t0}
    emb = np.load(cfg.embeddings, mmap_mode="r")
    if emb.ndim != 2 or emb.shape != (len(texts), encoder.dim):
        raise UserError(f"{cfg.embeddings}: shape {emb.shape}, but the corpus has {len(texts)} docs and the encoder "
                        f"makes {encoder.dim}-d vectors; pass the embeddings of this corpus and model")
    return emb, {"embeddings": os.path.abspath(cfg.embeddings)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    check_choice(cfg, "backend", BACKENDS)
    check_choice(cfg, "faiss_gpu", ("auto", "yes", "no"))
    if not 0 < cfg.target_recall <= 1:
        raise ConfigError(f"target_recall={cfg.target_recall}: a recall between 0 and 1")
    dataset = os.path.basename(os.path.normpath(cfg.data))
    cfg.out = cfg.out or os.path.join("runs", f"{dataset}-{os.path.basename(os.path.normpath(cfg.model))}", "index")
    corpus = read_corpus(os.path.join(cfg.data, "corpus.jsonl"))
    doc_ids = list(corpus)
    tune_texts, report_texts = split_queries(cfg.data, cfg.tune_split), split_queries(cfg.data, cfg.split)
    use_gpu = faiss_index.gpu_count() > 0 if cfg.faiss_gpu == "auto" else cfg.faiss_gpu == "yes"
    if use_gpu and faiss_index.gpu_count() == 0:
        raise ConfigError("faiss_gpu=yes, but FAISS sees no GPU: `make setup-gpu` installs faiss-gpu")
    factory = faiss_index.resolve_factory(cfg.factory, len(doc_ids))
    encoder = load_encoder(cfg.model, cfg.backend, cfg.device)  # a model that fails, fails before any work
    if cfg.dim < 0:
        raise ConfigError(f"dim={cfg.dim}: pass a number of dimensions, or 0 for all of them")
    if cfg.dim:
        trained = encoder.settings().get("matryoshka_dims") or []
        if not 0 < cfg.dim <= encoder.dim:
            raise ConfigError(f"dim={cfg.dim}: {cfg.model} embeds in {encoder.dim} dimensions; pass dim={encoder.dim} "
                              "or less (0 = all of them)")
        if cfg.dim < encoder.dim and cfg.dim not in trained:
            warn(f"dim={cfg.dim}: {cfg.model} was not trained for {cfg.dim} dimensions "
                 f"({'matryoshka_dims ' + str(trained) if trained else 'no matryoshka_dims'}); the index works, "
                 "but its first dimensions may rank worse than a model trained for them")
    print(f"{dataset}: {len(doc_ids)} docs, {factory} ({'GPU' if use_gpu else 'CPU'} FAISS) -> {cfg.out}")

    with atomic_dir(cfg.out) as tmp:  # a failure anywhere leaves the previous index, if any, as it was
        start_run(tmp, cfg, argv)
        emb, info = corpus_vectors(cfg, encoder, [doc_text(corpus[d]) for d in doc_ids], tmp)
        if cfg.dim:  # the index holds the cut vectors; embeddings.npy keeps the whole width for mining and rebuilds
            emb = faiss_index.truncate(emb, cfg.dim)
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
            "factory": factory, "model": encoder_name(cfg.model, cfg.backend), "backend": cfg.backend,
            "settings": encoder.settings(), "probe": [round(float(x), 6) for x in probe], "model_dim": encoder.dim})
        del emb  # the memory map, before the file under it goes
        if not cfg.keep_embeddings and not cfg.embeddings:
            os.remove(os.path.join(tmp, "embeddings.npy"))
        info["index_bytes"] = os.path.getsize(os.path.join(tmp, "index.faiss"))
        write_json(os.path.join(tmp, "metrics.json"), {"dataset": dataset, "docs": len(doc_ids), **info})
    print(f"wrote {cfg.out}: index.faiss {info['index_bytes'] / 2**20:.1f} MiB")
    return 0


def encoder_name(model, backend):
    """What index.json records as the encoder: an absolute path for local models, so the index
    finds it from any working directory, else the name."""
    if backend == "torch":
        from common.models import resolve_model

        model = resolve_model(model)
    return os.path.abspath(model) if os.path.isdir(model) else model


if __name__ == "__main__":
    cli(main)
