"""FAISS indexes: built from an index_factory string, tuned against exact search, saved and loaded
with the doc-id map and the settings that make them searchable in one line.

An index directory (build_index.py writes one) holds:
  index.faiss   the FAISS index, always on the CPU (moved to GPUs at load when asked)
  doc_ids.txt   one doc id per line: row i of the index is line i
  index.json    factory, dim, metric, nprobe / efSearch, and the encoder that made the vectors
                (its path, settings, and the embedding of PROBE_TEXT, to refuse another encoder)
"""
import json
import math
import os
import re
import time

import numpy as np
from tqdm.auto import tqdm

from common.run import UserError

PROBE_TEXT = "A probe passage: an index is only as good as the encoder that embedded its documents."
# Two encoders whose probe embeddings agree this closely are taken to be the same model (an ONNX
# export, int8 included, stays above 0.99; a different fine-tune or model is far below).
PROBE_MIN_COSINE = 0.98


def faiss_module():
    import faiss

    return faiss


def gpu_count():
    return getattr(faiss_module(), "get_num_gpus", lambda: 0)()


def resolve_factory(factory, n):
    """A concrete index_factory string for n vectors: "auto" picks one by size, and an IVF without a
    list count ("IVF,PQ32") gets nlist ~ 4 sqrt(n), the FAISS guideline for up to ~1M vectors."""
    nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))  # FAISS wants >= 39 training points per list
    if factory == "auto":
        # Exact search is fast enough and has perfect recall until the corpus is large.
        factory = "Flat" if n < 100_000 else "IVF,Flat"
    return re.sub(r"IVF(?=[,_]|$)", f"IVF{nlist}", factory)


def vector_bytes(factory, dim):
    """About what one vector takes in RAM in an index of `factory`: its code (4 bytes a dimension flat, 1 with
    SQ8, m with PQm), an IVF list's 8-byte id, HNSW's links."""
    pq, hnsw = re.search(r"PQ(\d+)", factory), re.search(r"HNSW(\d+)", factory)
    code = (int(pq[1]) if pq else dim if "SQ8" in factory else dim // 2 if "SQ4" in factory
            else 2 * dim if "SQfp16" in factory else 4 * dim)
    return code + (8 if "IVF" in factory else 0) + (8 * int(hnsw[1]) if hnsw else 0)


# What the rest of a stage holds beside the index, in bytes per byte of corpus.jsonl: the corpus read into
# Python and BM25 while it is built (measured at 5M documents, bench/results/scale-cpu.md: 5.3; the 8 measured
# at 1M before BM25 filled its CSR directly refused a 5M index that fit).
CORPUS_RAM_FACTOR = 6


def check_fits(factory, n, dim, corpus_bytes, where):
    """One error before any work when the index plus the corpus's share will not fit in the memory this
    machine has free, naming a factory that fits. (The vectors themselves are memory-mapped.) What this
    process holds already (the corpus, read before) counts as free: it is part of that share."""
    available = memory_available()
    if available is None:
        return
    available += resident_bytes()
    rest = CORPUS_RAM_FACTOR * corpus_bytes
    need = rest + n * vector_bytes(factory, dim)
    if need <= available:
        return
    gb = lambda b: f"{b / 2**30:.1f} GB"  # noqa: E731
    m = next((m for m in (64, 48, 32, 16, 8) if m <= dim and dim % m == 0
              and rest + n * vector_bytes(f"IVF,PQ{m}", dim) <= available), None)
    fix = (f"--factory=IVF,PQ{m} holds them in {gb(n * vector_bytes(f'IVF,PQ{m}', dim))}" if m else
           "the corpus alone needs more than that: run on a machine with more memory, or split the corpus")
    raise UserError(f"{where}: {n:,} documents need about {gb(need)} of memory at factory={factory} (the vectors "
                    f"{gb(n * vector_bytes(factory, dim))}, the corpus and BM25 {gb(rest)}), and {gb(available)} is "
                    f"free; {fix}")


def resident_bytes():
    """This process's resident memory in bytes (0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_available():
    """Bytes of memory free for a new process (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def build(emb, factory, train_size=0, seed=0, use_gpu=False, chunk=65536):
    """(CPU index over emb's rows, info): trained on a random sample of train_size rows (0 = enough
    for the index), filled a chunk at a time so emb may be a memory map larger than RAM."""
    faiss = faiss_module()
    n, dim = emb.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise UserError(f"factory={factory!r} is not a FAISS index_factory string ({str(e).strip().splitlines()[-1]});"
                        " try Flat, IVF,Flat, IVF,PQ32, IVF,SQ8, HNSW32 or OPQ32,IVF,PQ32") from None
    info = {"factory": factory, "n": n, "dim": dim, "device": "cpu"}
    # HNSW has no GPU version, and PQ codes of some sizes neither: those stay on the CPU.
    work = index
    if use_gpu and "HNSW" not in factory:
        try:
            work = faiss.index_cpu_to_all_gpus(index)
            info["device"] = f"{gpu_count()} GPU(s)"
        except RuntimeError as e:
            info["device"] = f"cpu (GPU refused: {str(e).strip().splitlines()[-1][:120]})"
    t0 = time.perf_counter()
    if not index.is_trained:
        size = train_size or min(n, max(256 * 64, 64 * _nlist(index)))
        rows = np.sort(np.random.default_rng(seed).choice(n, min(size, n), replace=False))
        sample = np.ascontiguousarray(emb[rows], dtype=np.float32)
        if len(sample) < _nlist(index):
            raise UserError(f"{factory}: {len(sample)} training vectors for {_nlist(index)} lists; use fewer lists "
                            "(IVF<n>) or Flat for a corpus this small")
        work.train(sample)
        info["train_vectors"] = len(sample)
    info["train_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in tqdm(range(0, n, chunk), desc="add", unit="chunk", disable=n <= chunk):
        work.add(np.ascontiguousarray(emb[start:start + chunk], dtype=np.float32))
    info["add_seconds"] = time.perf_counter() - t0
    if work is not index:
        index = faiss.index_gpu_to_cpu(work)
    return index, info


def _ivf(index):
    try:
        return faiss_module().extract_index_ivf(index)
    except RuntimeError:
        return None


def _nlist(index):
    ivf = _ivf(index)
    return ivf.nlist if ivf is not None else 0


def _hnsw(index):
    faiss = faiss_module()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    return inner.hnsw if hasattr(inner, "hnsw") else None


def search_params(index):
    """{"nprobe": n} for IVF, {"ef_search": n} for HNSW, {} for exact indexes."""
    if _ivf(index) is not None:
        return {"nprobe": int(_ivf(index).nprobe)}
    if _hnsw(index) is not None:
        return {"ef_search": int(_hnsw(index).efSearch)}
    return {}


def set_search_params(index, nprobe=0, ef_search=0):
    if nprobe and _ivf(index) is not None:
        _ivf(index).nprobe = min(nprobe, _ivf(index).nlist)
    if ef_search and _hnsw(index) is not None:
        _hnsw(index).efSearch = ef_search


def recall_at(ann_rows, exact_rows, k):
    """Mean fraction of each query's exact top k that the approximate top k also holds."""
    hits = [len(set(a[:k]) & set(e[:k])) / k for a, e in zip(ann_rows, exact_rows)]
    return float(np.mean(hits)) if hits else 0.0


def tune(index, query_emb, exact_rows, target, k=10):
    """The smallest nprobe (IVF) or efSearch (HNSW), in powers of two, whose recall@k against exact
    search reaches `target` on these queries; the largest tried when none does. Returns
    [(value, recall)] of every value tried."""
    tried = []
    if _ivf(index) is not None:
        nlist, values, key = _ivf(index).nlist, [], "nprobe"
        v = 1
        while v < nlist:
            values.append(v)
            v *= 2
        values.append(nlist)
    elif _hnsw(index) is not None:
        values, key = [16, 32, 64, 128, 256, 512, 1024], "ef_search"
    else:
        return tried
    for v in values:
        set_search_params(index, **{key: max(v, k) if key == "ef_search" else v})
        _, rows = search(index, query_emb, k)
        tried.append((int(search_params(index)[key]), recall_at(rows, exact_rows, k)))
        if tried[-1][1] >= target:
            break
    return tried


def flat_ip(emb, chunk=65536):
    """An exact inner-product FAISS index over `emb` (rows = corpus order), added a chunk at a time
    from a memory map; on every GPU when faiss-gpu sees one."""
    faiss = faiss_module()
    index = faiss.IndexFlatIP(emb.shape[1])
    for start in range(0, len(emb), chunk):
        index.add(np.ascontiguousarray(emb[start:start + chunk], dtype=np.float32))
    if gpu_count() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def truncate(emb, dim, chunk=65536):
    """The first `dim` values of each row, renormalised (a Matryoshka embedding's smaller self), as
    float32; a chunk at a time, so emb may be a memory map."""
    out = np.empty((len(emb), dim), np.float32)
    for start in range(0, len(emb), chunk):
        part = np.asarray(emb[start:start + chunk, :dim], dtype=np.float32)
        out[start:start + chunk] = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
    return out


def search(index, query_emb, k, batch_size=1024):
    """(scores, rows), each [n_queries, k], searched a batch of queries at a time; rows are -1 where
    the index holds fewer than k vectors (or an approximate index found fewer). Queries wider than an
    index of truncated vectors (build_index.py --dim) are truncated alike."""
    if query_emb.ndim == 2 and query_emb.shape[1] > index.d:
        query_emb = truncate(query_emb, index.d)
    scores, rows = [], []
    for start in tqdm(range(0, len(query_emb), batch_size), desc="search", unit="batch",
                      disable=len(query_emb) <= batch_size):
        s, r = index.search(np.ascontiguousarray(query_emb[start:start + batch_size], dtype=np.float32), k)
        scores.append(s)
        rows.append(r)
    if not rows:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(rows)


def timed_search(index, query_emb, k, min_seconds=1.0):
    """(rows, queries/s): the whole query set searched in batches, repeated until min_seconds have
    passed, so small query sets still give a steady rate."""
    runs, t0 = 0, time.perf_counter()
    while True:
        _, rows = search(index, query_emb, k)
        runs += 1
        if time.perf_counter() - t0 >= min_seconds:
            return rows, runs * len(query_emb) / (time.perf_counter() - t0)


def replace_rows(index, rows, vectors, emb, chunk=65536):
    """The index with rows `rows` holding `vectors` instead, every other row as it was: in place for
    an exact index; an IVF, PQ or HNSW one keeps its training and is refilled from `emb` (the corpus's
    vectors as the index holds them elsewhere) with the new rows in."""
    faiss = faiss_module()
    if isinstance(index, faiss.IndexFlat):
        current = index.reconstruct_n(0, index.ntotal)
        current[rows] = vectors
        index.reset()
        index.add(current)
        return index
    index.reset()
    where = dict(zip(rows.tolist(), range(len(rows))))
    for start in range(0, len(emb), chunk):
        part = np.array(emb[start:start + chunk], dtype=np.float32)
        if part.shape[1] > index.d:  # an index of cut vectors (build_index.py --dim)
            part = truncate(part, index.d)
        for r in [r for r in where if start <= r < start + len(part)]:
            part[r - start] = vectors[where[r]]
        index.add(part)
    return index


def write(out_dir, index):
    """index.faiss into out_dir (a CPU index), as a new file: one linked from another index stays as it was."""
    path = os.path.join(out_dir, "index.faiss")
    faiss_module().write_index(index, path + ".tmp")
    os.replace(path + ".tmp", path)


def save(out_dir, index, doc_ids, settings):
    """index.faiss, doc_ids.txt and index.json (settings, plus the index's own search parameters)
    into out_dir, which the caller creates (atomically: common.files.atomic_dir)."""
    write(out_dir, index)
    with open(os.path.join(out_dir, "doc_ids.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{d}\n" for d in doc_ids)
    meta = {**settings, "dim": index.d, "ntotal": int(index.ntotal), "metric": "inner_product",
            **search_params(index)}
    with open(os.path.join(out_dir, "index.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def probe_embedding(encoder):
    return encoder.encode([PROBE_TEXT], "passage")[0].astype(np.float32)


def embeds_as_built(path, encoder, atol=1e-4):
    """Whether `encoder` embeds the probe as the encoder the index at `path` was built with did, value for
    value: the same weights (a fine-tuning that kept step 0), not merely a model close enough to search it."""
    with open(os.path.join(path, "index.json"), encoding="utf-8") as f:
        probe = np.asarray(json.load(f).get("probe", []), np.float32)
    return probe.shape == (encoder.dim,) and bool(np.allclose(probe_embedding(encoder), probe, atol=atol))


def is_index(path):
    """Whether path is a build_index.py directory."""
    return os.path.isfile(os.path.join(path, "index.json"))


def built_with(path):
    """(model, backend) of the encoder a build_index.py directory was built with."""
    meta_file = os.path.join(path, "index.json")
    try:
        with open(meta_file, encoding="utf-8") as f:
            meta = json.load(f)
        return meta["model"], meta.get("backend", "torch")
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{meta_file}: cannot read the encoder the index was built with ({e}); pass --model "
                        "or rebuild the index with build_index.py") from None


def stored_embeddings(path, n, encoder):
    """The corpus vectors build_index.py kept beside its index (embeddings.npy, memory-mapped), or
    None when it kept none or they do not fit this corpus and encoder (load() has checked the probe)."""
    file = os.path.join(path, "embeddings.npy")
    if not os.path.isfile(file):
        return None
    emb = np.load(file, mmap_mode="r")
    return emb if emb.shape == (n, encoder.dim) else None


def load(path, doc_ids, encoder=None, use_gpu=None):
    """A build_index.py directory (or any index.faiss + doc_ids.txt), checked to cover exactly this
    corpus in this order and, when index.json names its encoder, to have been built by `encoder`;
    its saved nprobe / efSearch set. use_gpu: None = when faiss-gpu sees a GPU."""
    faiss = faiss_module()
    ids_file, index_file = os.path.join(path, "doc_ids.txt"), os.path.join(path, "index.faiss")
    if not os.path.isdir(path):
        raise UserError(f"{path}: no index directory there; build one with build_index.py, or leave index empty "
                        "to search exactly")
    for file, what in ((index_file, "the FAISS index"), (ids_file, "the doc-id map (one id per line, in index order)")):
        if not os.path.isfile(file):
            raise UserError(f"{file}: missing ({what}); rebuild the directory with build_index.py")
    with open(ids_file, encoding="utf-8") as f:
        ids = [line.rstrip("\n") for line in f]
    if ids != list(doc_ids):
        raise UserError(f"{ids_file}: the index covers {len(ids)} docs that are not this corpus's {len(doc_ids)} in "
                        "order; rebuild it for this dataset")
    index = faiss.read_index(index_file)
    if index.ntotal != len(ids):
        raise UserError(f"{index_file}: {index.ntotal} vectors but {len(ids)} ids in {ids_file}; rebuild the index")
    meta_file = os.path.join(path, "index.json")
    meta = {}
    if os.path.isfile(meta_file):
        with open(meta_file, encoding="utf-8") as f:
            meta = json.load(f)
    if encoder is not None:
        if meta.get("model_dim", index.d) != encoder.dim:  # model_dim: what the vectors were cut from (--dim)
            raise UserError(f"{path}: the index holds {meta.get('model_dim', index.d)}-d vectors but the encoder "
                            f"makes {encoder.dim}-d "
                            "ones; rebuild the index with this model, or pass the model it was built with "
                            f"({meta.get('model', 'see index.json')})")
        if meta.get("probe"):
            cosine = float(np.dot(probe_embedding(encoder), np.asarray(meta["probe"], np.float32)))
            if cosine < PROBE_MIN_COSINE:
                raise UserError(f"{path}: built with the encoder {meta.get('model')}, and this one embeds differently "
                                f"(probe cosine {cosine:.3f}); pass --model={meta.get('model')} or rebuild the index")
    set_search_params(index, meta.get("nprobe", 0), meta.get("ef_search", 0))
    if (gpu_count() > 0 if use_gpu is None else use_gpu) and "HNSW" not in meta.get("factory", ""):
        index = _to_gpus(index, meta)
    return index


def _to_gpus(index, meta):
    faiss = faiss_module()
    try:
        gpu = faiss.index_cpu_to_all_gpus(index)
    except RuntimeError:
        return index  # a layout the GPU code lacks: searching on the CPU is slower, not wrong
    if meta.get("nprobe"):
        faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", meta["nprobe"])
    return gpu
