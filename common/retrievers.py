"""First-stage retrievers: BM25 (rank-bm25 or a sparse matrix, saved beside an index), exact dense search
over embeddings, and Retriever: an index's served first stage (dense, BM25 or their mix), reranked."""
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from itertools import chain, islice

import numpy as np
import Stemmer
from rank_bm25 import BM25Okapi
from scipy import sparse
from tqdm.auto import tqdm

from common import fusion
from common import index as faiss_index
from common.backends import load_encoder, load_reranker
from common.data import CorpusTexts
from common.files import atomic_dir, atomic_open, file_sha1, write_json
from common.memory import Memory
from common.metrics import cut_run
from common.run import UserError, warn

# NLTK's English stopword list (179 words), chosen with k1/b on SciFact *train* over 32 settings
# (Lucene's 33-word list, Porter stemming included; all within 0.006 nDCG@10), never on test.
# Contractions appear without apostrophes too, since the tokenizer splits "don't" into don, t.
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
he him his himself she she's her hers herself it it's its itself they them their theirs themselves
what which who whom this that that'll these those am is are was were be been being have has had
having do does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on off over
under again further then once here there when where why how all any both each few more most other
some such no nor not only own same so than too very s t can will just don don't should should've
now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn
hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split())
_TOKEN = re.compile(r"[^\W_]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_stemmer = Stemmer.Stemmer("english")


def bm25_tokenize(text):
    """Lowercase words, English stopwords removed, Snowball-stemmed. Identifiers are split at
    underscores and camelCase (read_lines, readLines -> read, line): on python-source val that
    lifts nDCG@10 from 0.33 to 0.47 and leaves SciFact train as it was (0.698 -> 0.699)."""
    stems, out = _STEMS, []
    for word in _TOKEN.findall(_CAMEL.sub(" ", text).lower()):
        stem = stems.get(word)
        if stem is None:
            stem = _stem(word)
        if stem:
            out.append(stem)
    return out


# word -> its stem ("" for a stopword). Words repeat (Zipf), so most are looked up, not stemmed: that
# halves the tokenizer's time. Cleared when full, so a corpus of endless rare words stays bounded.
_STEMS, _STEMS_MAX = {}, 2_000_000


def _stem(word):
    if len(_STEMS) >= _STEMS_MAX:
        _STEMS.clear()
    stem = _STEMS[word] = "" if word in STOPWORDS else _stemmer.stemWord(word)
    return stem


# What a saved BM25 was tokenised by: loading one tokenised otherwise would score silently wrong.
TOKENIZER = hashlib.sha1(repr((sorted(STOPWORDS), _TOKEN.pattern, _CAMEL.pattern, "snowball-english"))
                         .encode()).hexdigest()[:12]
BM25_FILES = ("bm25.npz", "bm25.json")


class BM25:
    """Okapi BM25 over a corpus {doc id: text}, scored by rank-bm25 or by a sparse matrix.

    Both backends give rank_bm25.BM25Okapi's scores (to float rounding) and the same rankings,
    ties broken by document order. "sparse" (the default) precomputes every term's per-document
    weight, so a batch of queries is one sparse product: far faster, already at a few thousand documents.
    "rank_bm25" scores every document in Python per query: the reference the tests hold it to.
    """

    BACKENDS = ("rank_bm25", "sparse")

    def __init__(self, doc_ids, texts, k1=1.2, b=0.4, backend="sparse"):
        if backend not in self.BACKENDS:
            raise ValueError(f"BM25 backend {backend!r}: choose one of {', '.join(self.BACKENDS)}")
        self.doc_ids = list(doc_ids)
        self.backend, self.k1, self.b = backend, k1, b
        if backend == "rank_bm25":
            # rank-bm25 divides by the average length, so an all-empty corpus must not reach it.
            self.index = BM25Okapi([bm25_tokenize(t) or ["\0"] for t in texts], k1=k1, b=b)
        else:
            self.vocab, self._orders = {}, {}
            self.weights = _okapi_weights(texts, self.vocab, k1, b, total=len(self.doc_ids))

    def save(self, directory, corpus_file):
        """bm25.npz (the term x document weights) and bm25.json (vocabulary, k1, b, the tokenizer, and
        the corpus file it was built over, by path and content) into `directory`: what an index
        directory serves its hybrid from, with nothing to rebuild."""
        if self.backend != "sparse":
            raise ValueError("only the sparse backend's weights can be saved")
        w, path = self.weights, os.path.join(directory, BM25_FILES[0])
        with open(path + ".tmp", "wb") as f:  # a new file: one linked from another index stays as it was
            np.savez(f, data=w.data, indices=w.indices, indptr=w.indptr, shape=np.array(w.shape))
        os.replace(path + ".tmp", path)
        with atomic_open(os.path.join(directory, BM25_FILES[1])) as f:
            json.dump({"k1": self.k1, "b": self.b, "tokenizer": TOKENIZER, "docs": len(self.doc_ids),
                       "corpus": os.path.abspath(corpus_file), "corpus_sha1": file_sha1(corpus_file),
                       "terms": sorted(self.vocab, key=self.vocab.get)}, f, ensure_ascii=False)

    @classmethod
    def load(cls, directory, doc_ids, corpus_file):
        """The BM25 save() wrote into `directory`, checked to be over `corpus_file` (by content: the same
        ids with other texts would score the old texts) and tokenised as this code tokenises."""
        meta_file, weights_file = (os.path.join(directory, f) for f in reversed(BM25_FILES))
        try:
            with open(meta_file, encoding="utf-8") as f:
                meta = json.load(f)
            arrays = np.load(weights_file)
        except (OSError, ValueError) as e:
            raise UserError(f"{directory}: its BM25 ({', '.join(BM25_FILES)}) cannot be read ({e}); rebuild the "
                            "index with build_index.py") from None
        if meta["corpus_sha1"] != file_sha1(corpus_file) or meta["docs"] != len(doc_ids):
            raise UserError(f"{directory}: its BM25 was built over {meta['corpus']}, not over this corpus "
                            f"{os.path.abspath(corpus_file)} (their contents differ); rebuild the index for this "
                            "corpus (build_index.py --data=...), or search the corpus it was built over")
        if meta["tokenizer"] != TOKENIZER:
            raise UserError(f"{meta_file}: BM25 saved by another version of bm25_tokenize (common/retrievers.py); "
                            "rebuild the index with build_index.py")
        bm25 = cls.__new__(cls)
        bm25.doc_ids, bm25.backend, bm25.k1, bm25.b = list(doc_ids), "sparse", meta["k1"], meta["b"]
        bm25.vocab, bm25._orders = {t: i for i, t in enumerate(meta["terms"])}, {}
        bm25.weights = sparse.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                                         shape=tuple(arrays["shape"]))
        return bm25

    def scores(self, query, rows=None):
        """The score of every document in corpus order, or of the documents at positions `rows`."""
        if self.backend == "rank_bm25":
            tokens = bm25_tokenize(query)
            return (self.index.get_scores(tokens) if rows is None
                    else np.asarray(self.index.get_batch_scores(tokens, list(rows))))
        if rows is None:
            return (self._query_matrix([query]) @ self.weights).toarray()[0]
        # Only the query's terms, then only those columns: cheap at any corpus size.
        terms = [self.vocab[t] for t in bm25_tokenize(query) if t in self.vocab]
        if not terms:
            return np.zeros(len(rows))
        return np.asarray(self.weights[terms][:, list(rows)].sum(axis=0)).ravel()

    def search(self, query, k):
        """[(doc id, score)] best first."""
        if self.backend == "sparse":
            return self.search_many([query], k)[0]
        scores = self.scores(query)
        return [(self.doc_ids[i], float(scores[i])) for i in top_k(scores, k)]

    def search_many(self, queries, k, batch_size=256):
        """search() of every query. For "sparse", a batch of queries whose terms' posting lists are short is
        scored in one sparse product (memory: batch x the documents they touch); a query with long ones
        (a common word in a large corpus) by _top_k, which skips most postings. A thread per core: numpy
        and scipy let go of the GIL for the heavy part."""
        if self.backend == "rank_bm25":
            return [self.search(q, k) for q in queries]
        terms = [self._query_terms(q) for q in queries]
        postings = np.diff(self.weights.indptr)
        light = [i for i, c in enumerate(terms) if postings[list(c)].sum() <= PRUNE_ABOVE]
        heavy = sorted(set(range(len(queries))) - set(light))
        batches = [light[start:start + batch_size] for start in range(0, len(light), batch_size)]
        results = [None] * len(queries)
        one_task = len(heavy) + len(batches) <= 1  # a single query (search()): no threads to start
        with nullcontext() if one_task else ThreadPoolExecutor(usable_cores()) as pool:
            run = map if one_task else pool.map
            for i, (rows, scores) in zip(heavy, run(lambda i: self._top_k(terms[i], k), heavy)):
                results[i] = [(self.doc_ids[r], float(s)) for r, s in zip(rows, scores)]
            for batch, hits in zip(batches, run(lambda b: self._product_top_k([terms[i] for i in b], k), batches)):
                for i, (rows, scores) in zip(batch, hits):
                    results[i] = [(self.doc_ids[r], float(s)) for r, s in zip(rows, scores)]
        return results

    def _product_top_k(self, counts, k):
        """[(positions, scores)] of each query's k best documents, by one sparse product of their terms
        (`counts`: {term row: times in the query} a query) with every document."""
        scores = self._query_matrix(counts) @ self.weights
        scores.sort_indices()  # ties go by position, so columns must be in document order
        best = []
        for row in range(scores.shape[0]):
            cols = scores.indices[scores.indptr[row]:scores.indptr[row + 1]]
            vals = scores.data[scores.indptr[row]:scores.indptr[row + 1]]
            positive = vals > 0
            if positive.sum() >= k:
                # Every document left out scores 0, so the top k are all among these.
                cols, vals = cols[positive], vals[positive]
            else:
                cols, vals = np.arange(len(self.doc_ids)), scores[row].toarray()[0]
            top = top_k(vals, k)
            best.append((cols[top], vals[top]))
        return best

    def _top_k(self, counts, k, first_depth=256):
        """(positions, scores) of the k best documents, as top_k over every document's score would give them,
        without touching most postings (a threshold algorithm over impact-ordered postings): each query term's
        `depth` highest-weighted documents are candidates, scored exactly; a document outside every term's
        top `depth` scores at most the sum of the terms' weights at that depth, so once the k-th candidate
        beats that bound the top k are known. Otherwise depth grows, up to the terms' whole posting lists.
        `counts`: {term row: times in the query}."""
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        w = self.weights
        terms = np.fromiter(counts, np.int64, len(counts))
        starts, ends = w.indptr[terms], w.indptr[terms + 1]
        mult = np.fromiter(counts.values(), np.float64, len(counts))
        longest = int((ends - starts).max()) if len(terms) else 0
        depth = min(max(2 * k, first_depth), longest)
        while True:
            cand = np.unique(np.concatenate([w.indices[s + self._impact_order(t)[:depth]]
                                             for t, s in zip(terms, starts)] or [np.zeros(0, np.int32)]))
            scores = np.zeros(len(cand))
            for s, e, m in zip(starts, ends, mult):
                row = w.indices[s:e]  # sorted: CSR rows are in document order
                pos = np.searchsorted(row, cand).clip(max=len(row) - 1)
                hit = row[pos] == cand
                scores[hit] += m * w.data[s + pos[hit]]
            # (at least 0: a document without the term scores 0 for it, above a negative weight)
            bound = sum(m * max(w.data[s + self._impact_order(t)[depth]], 0.0)
                        for t, s, e, m in zip(terms, starts, ends, mult) if e - s > depth)
            if len(cand) >= k > 0 and np.partition(scores, len(cand) - k)[len(cand) - k] > bound:
                best = top_k(scores, k)
                return cand[best], scores[best]
            if depth >= longest:  # every posting seen; fewer than k documents score above 0
                full = np.zeros(len(self.doc_ids))
                full[cand] = scores
                best = top_k(full, k)
                return best, full[best]
            depth = min(4 * depth, longest)

    def _impact_order(self, term):
        """Positions in `term`'s posting list, its highest weights first (computed once a term, when a
        query first asks for it)."""
        order = self._orders.get(term)
        if order is None:
            w = self.weights
            data = w.data[w.indptr[term]:w.indptr[term + 1]]
            order = self._orders[term] = np.argsort(-data, kind="stable").astype(np.int32)
        return order

    def _query_terms(self, query):
        """{term row: times in the query} of the query's terms this corpus holds."""
        return Counter(self.vocab[t] for t in bm25_tokenize(query) if t in self.vocab)

    def _query_matrix(self, queries):
        """(queries x vocab) term counts, from query texts or {term row: count}s: a repeated query term
        counts twice, as in rank-bm25."""
        rows, cols, vals = [], [], []
        for row, query in enumerate(queries):
            counts = self._query_terms(query) if isinstance(query, str) else query
            rows += [row] * len(counts)
            cols += counts.keys()
            vals += counts.values()
        return sparse.csr_matrix((np.array(vals, np.float64), (rows, cols)), shape=(len(queries), len(self.vocab)))


# A query whose terms' posting lists hold more than this is scored by pruning (BM25._top_k), not a product
# over all of them: around here the two cost the same.
PRUNE_ABOVE = 100_000


def corpus_bm25(doc_ids, texts, corpus_file, k1=1.2, b=0.4, cache_dir=""):
    """BM25 (sparse) over corpus_file's documents `doc_ids` with `texts` (an iterable, read only when it
    is built): built once per corpus (by content), k1, b and tokenizer, and saved under cache_dir, where
    every later stage loads it (seconds, where a million documents take a minute to build). No
    cache_dir: built here and not kept."""
    if not cache_dir:
        return BM25(doc_ids, texts, k1, b)
    key = repr((file_sha1(corpus_file), len(doc_ids), float(k1), float(b), TOKENIZER))
    directory = os.path.join(cache_dir, "bm25-" + hashlib.sha1(key.encode()).hexdigest()[:16])
    rank, world = _shards()
    if world > 1:  # under torchrun: rank 0 loads or builds and saves it, then the others load it
        bm25 = _load_or_build(directory, doc_ids, texts, corpus_file, k1, b) if rank == 0 else None
        _broadcast(None)
        return bm25 or BM25.load(directory, doc_ids, corpus_file)
    return _load_or_build(directory, doc_ids, texts, corpus_file, k1, b)


def _load_or_build(directory, doc_ids, texts, corpus_file, k1, b):
    if os.path.isfile(os.path.join(directory, BM25_FILES[1])):
        try:
            bm25 = BM25.load(directory, doc_ids, corpus_file)
            print(f"BM25 from {directory}")
            return bm25
        except UserError as e:  # damaged: built again below
            warn(f"{e}; building it again")
    bm25 = BM25(doc_ids, texts, k1, b)
    try:
        with atomic_dir(directory) as tmp:
            bm25.save(tmp, corpus_file)
    except OSError:  # another process (a DDP rank, say) put the same one in place first: keep theirs
        if not os.path.isfile(os.path.join(directory, BM25_FILES[1])):
            raise
    return bm25


def _count_terms(texts):
    """Term counts of a chunk of documents: (its terms in first-seen order, each posting's term as a
    position in that list, the posting's count, each document's indptr and length)."""
    vocab, indptr, indices, counts, doc_len = {}, array("q", [0]), array("i"), array("i"), array("q")
    for text in texts:  # array, not lists: 4 bytes an entry, for corpora of millions of docs
        tokens = bm25_tokenize(text) or ["\0"]  # rank-bm25 divides by the average length: never all empty
        tf = Counter(tokens)
        indices.extend(vocab.setdefault(t, len(vocab)) for t in tf)
        counts.extend(tf.values())
        indptr.append(len(indices))
        doc_len.append(len(tokens))
    return list(vocab), *(np.frombuffer(a, np.int64 if a.typecode == "q" else np.int32)
                          for a in (indices, counts, indptr, doc_len))


def _chunks(items, size):
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


# Documents a tokenizing process takes at a time; below two chunks the corpus is tokenized in this process.
BUILD_CHUNK = 20_000


def _okapi_weights(texts, vocab, k1, b, epsilon=0.25, total=None):
    """(vocab x docs) CSR of each term's BM25Okapi score in each document; fills vocab {term: row}. The
    arithmetic follows rank_bm25.BM25Okapi term for term. A large corpus is tokenized by a process per
    core, a chunk at a time (ordered, so the rows are the same as one process makes)."""
    chunks = _chunks(texts, BUILD_CHUNK)
    first = next(chunks, [])
    second = next(chunks, None)
    # Forked, not spawned: a spawned process re-runs the caller's script, which need not guard its main().
    workers = (min(usable_cores(), 8)
               if second is not None and "fork" in multiprocessing.get_all_start_methods() else 1)
    bar = tqdm(desc="BM25 index", unit="doc", total=total, disable=second is None)  # total: an ETA
    parts = []  # a chunk's (each posting's term row, its count, the chunk's indptr, its documents' lengths)
    with multiprocessing.get_context("fork").Pool(workers) if workers > 1 else nullcontext() as pool:
        todo = chain([first], [second] if second is not None else [], chunks)
        counted = pool.imap(_count_terms, todo) if pool else map(_count_terms, todo)
        for terms, local, count, indptr, doc_len in counted:
            rows = np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms), np.int32, len(terms))
            parts.append((rows[local], count, indptr, doc_len))
            bar.update(len(doc_len))
    bar.close()
    df = sum(np.bincount(p[0], minlength=len(vocab)) for p in parts)
    doc_len = np.concatenate([p[3] for p in parts])
    n_docs, nnz = len(doc_len), int(df.sum())
    idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
    # Terms in more than half the documents get epsilon x the mean idf of all terms instead.
    idf[idf < 0] = epsilon * idf.mean()
    avgdl = int(doc_len.sum()) / n_docs
    # The CSR is filled directly, a chunk of documents at a time (a counting sort by term): converting a
    # document-major matrix would hold the postings three times over, more than RAM at millions of documents.
    index_type = np.int32 if max(nnz, n_docs) < 2**31 else np.int64
    indptr = np.zeros(len(vocab) + 1, index_type)
    np.cumsum(df, out=indptr[1:])
    free = indptr[:-1].astype(np.int64)  # each term's next empty slot
    indices, weights = np.empty(nnz, index_type), np.empty(nnz, np.float64)
    first_doc = 0
    for i, (rows, count, local_ptr, lengths) in enumerate(parts):
        parts[i] = None
        per_doc = np.diff(local_ptr)
        tf = count.astype(np.float64)
        part = tf * (k1 + 1)
        part /= tf + np.repeat(k1 * (1 - b + b * lengths / avgdl), per_doc)
        part *= idf[rows]
        order = np.argsort(rows, kind="stable")  # by term; within a term, documents stay in order
        rows = rows[order]
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        run = np.diff(np.append(starts, len(rows)))
        slots = free[rows] + np.arange(len(rows)) - np.repeat(starts, run)
        indices[slots] = np.repeat(np.arange(first_doc, first_doc + len(lengths), dtype=index_type), per_doc)[order]
        weights[slots] = part[order]
        free[rows[starts]] += run
        first_doc += len(lengths)
    return sparse.csr_matrix((weights, indices, indptr), shape=(len(vocab), n_docs))


def usable_cores():
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def top_k(scores, k):
    """Indices of the k best scores, best first, ties in index order. (argpartition alone would
    keep an arbitrary few of the documents tied at the cut.)"""
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    cut = np.partition(scores, len(scores) - k)[len(scores) - k]
    candidates = np.flatnonzero(scores >= cut)
    return candidates[np.argsort(-scores[candidates], kind="stable")[:k]]


def dense_search(query_emb, doc_emb, k, chunk=4096, query_batch=8192):
    """Exact inner-product top-k: (scores, indices), each [n_queries, k]. No copy of the vectors is made (a
    memory map is read as it goes) and memory stays bounded by query_batch queries' work, whatever the numbers.
    On a CPU, FAISS's brute-force kernel (a Flat index's, so ties fall as one would return them); on a GPU
    when torch sees one, the corpus `chunk` rows at a time."""
    import torch  # here, not at the top: an ONNX-backed search imports no torch

    if np.ndim(query_emb) == 2 and query_emb.shape[1] > doc_emb.shape[1]:  # vectors cut short (build_index --dim)
        query_emb = faiss_index.truncate(query_emb, doc_emb.shape[1])
    if len(query_emb) > query_batch:
        parts = [dense_search(query_emb[s:s + query_batch], doc_emb, k, chunk)
                 for s in range(0, len(query_emb), query_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    k = min(k, len(doc_emb))
    if not torch.cuda.is_available():
        faiss = faiss_index.faiss_module()
        docs = np.ascontiguousarray(doc_emb, dtype=np.float32)  # a float32 memory map as it is
        return faiss.knn(np.ascontiguousarray(query_emb, dtype=np.float32), docs, k, faiss.METRIC_INNER_PRODUCT)
    q = torch.from_numpy(np.ascontiguousarray(query_emb, dtype=np.float32)).cuda()
    best_scores = torch.full((len(q), k), -torch.inf, device=q.device)
    best_idx = torch.zeros((len(q), k), dtype=torch.long, device=q.device)
    for start in range(0, len(doc_emb), chunk):
        d = torch.from_numpy(np.array(doc_emb[start:start + chunk], dtype=np.float32)).cuda()  # a writable copy
        s, i = torch.topk(q @ d.T, min(k, len(d)), dim=1)
        merged_s = torch.cat([best_scores, s], dim=1)
        merged_i = torch.cat([best_idx, i + start], dim=1)
        best_scores, pos = torch.topk(merged_s, k, dim=1)
        best_idx = torch.gather(merged_i, 1, pos)
    return best_scores.cpu().numpy(), best_idx.cpu().numpy()


# Exact search of every query against every document while it takes at most EXACT_SECONDS on this machine
# (its rate measured on a slice); beyond that an IVF index whose nprobe reaches ANN_RECALL against exact
# search on a sample of the queries, that recall reported. Below EXACT_PAIRS query-document pairs exact
# search is taken without measuring: seconds on any machine.
EXACT_SECONDS = 900
ANN_RECALL = 0.95
EXACT_PAIRS = 10**10


def nearest(query_emb, doc_emb, k, max_seconds=EXACT_SECONDS, target=ANN_RECALL, sample=1000, seed=0):
    """(scores, rows, info) of every query's top k: dense_search's exact answer while it is affordable here,
    else an approximate one (IVF,Flat, tuned on `sample` of the queries, whose exact top k it is held to);
    info says which, with the estimated exact time and, for an ANN, its recall@k on the sample."""
    n_q, n = len(query_emb), len(doc_emb)
    k = min(k, n)
    info, seconds = {"search": "exact"}, 0.0
    if n_q * n > EXACT_PAIRS:
        probe, docs = query_emb[:256], doc_emb[:100_000]
        t0 = time.perf_counter()
        dense_search(probe, docs, k)
        seconds = (time.perf_counter() - t0) * n_q * n / (len(probe) * len(docs))
        info["exact_seconds_estimated"] = round(seconds, 1)
    if seconds <= max_seconds:
        return (*dense_search(query_emb, doc_emb, k), info)
    rows = np.sort(np.random.default_rng(seed).choice(n_q, min(n_q, sample), replace=False))
    exact = dense_search(query_emb[rows], doc_emb, k)[1]
    index, _ = faiss_index.build(doc_emb, faiss_index.resolve_factory("IVF,Flat", n), seed=seed)
    tried = faiss_index.tune(index, query_emb[rows], exact, target, k)
    scores, found = faiss_index.search(index, query_emb, k)
    info.update(search="IVF,Flat", **faiss_index.search_params(index), recall_at_k=round(tried[-1][1], 4),
                recall_queries=len(rows), k=k)
    print(f"dense search: exact would take ~{seconds / 60:.0f} min here; an IVF,Flat index "
          f"at nprobe {info.get('nprobe')} instead, recall@{k} {tried[-1][1]:.3f} against exact on {len(rows):,} "
          "sampled queries")
    return scores, found, info


def dense_run(query_ids, query_emb, doc_ids, doc_emb, depth):
    """{query id: {doc id: score}} of the exact top `depth` documents of every query."""
    scores, idx = dense_search(query_emb, doc_emb, depth)
    return {qid: {doc_ids[i]: float(s) for i, s in zip(idx[row], scores[row])} for row, qid in enumerate(query_ids)}


def encode_corpus(encoder, texts, batch_size=64, path=None, chunk=4096):
    """Passage embeddings [n, dim] float32, a chunk at a time: in RAM, or in a memory-mapped .npy at
    `path`, so a million passages (1.5 GB at 384-d) need not sit in memory beside everything else.
    With `path`, each chunk is flushed and then counted in <path>.rows.json, so an encode killed part way
    resumes from the chunks written, not from zero: where <path> is named by the encoder and the corpus
    (embeddings_cache), the rows are those. Under torchrun (a process group up), each rank encodes its
    slice of every chunk and the slices are gathered in corpus order: every rank returns all the vectors,
    rank 0 alone writes `path`."""
    rank, world = _shards()
    if world > 1 and path:
        path = _broadcast(path)  # the file rank 0 writes, wherever the others would have put theirs
    shape, start = (len(texts), encoder.dim), 0
    if path and rank == 0:
        start = _rows_written(path, shape)
        out = np.lib.format.open_memmap(path, "r+" if start else "w+", np.float32, shape)
        if start:
            print(f"corpus encode resumed at document {start:,} of {len(texts):,} (from {path})")
    else:
        out = np.empty(shape, np.float32) if not path else None
    if world > 1:
        start = _broadcast(start)
        print(f"corpus encode shared by {world} ranks, {chunk:,} documents each at a time")
    step = chunk * world
    with tqdm(total=len(texts), initial=start, desc=f"encode corpus ({encoder.precision()})", unit="doc",
              disable=len(texts) <= chunk or rank > 0) as bar:
        for begin in range(start, len(texts), step):
            mine = slice(min(begin + rank * chunk, len(texts)), min(begin + (rank + 1) * chunk, len(texts)))
            emb = encoder.encode(texts[mine], "passage", batch_size,
                                 show_progress=len(texts) <= chunk and len(texts) >= 2000) if texts[mine] else \
                np.zeros((0, encoder.dim), np.float32)
            end = min(begin + step, len(texts))
            if world > 1:
                emb = _gather_rows(emb, chunk, end - begin)
            if out is not None:
                out[begin:end] = emb
            if path and rank == 0:
                out.flush()  # the rows on disk before the record says they are there
                write_json(f"{path}.rows.json", {"shape": list(shape), "rows": end})
            bar.update(end - begin)
    if path and world > 1:  # the other ranks open the file rank 0 wrote, once it is whole
        _broadcast(None)
        out = out if rank == 0 else np.load(path, mmap_mode="r")
        _broadcast(None)  # and rank 0 may move it (corpus_embeddings does) only once they have it open
    return out


def _rows_written(path, shape):
    """How many rows of the .npy at `path` an earlier encode wrote (0: start afresh)."""
    try:
        with open(f"{path}.rows.json", encoding="utf-8") as f:
            done = json.load(f)
        same = done["shape"] == list(shape) and np.load(path, mmap_mode="r").shape == tuple(shape)
        return int(done["rows"]) if same else 0
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# Set by join_ranks in the scripts whose every rank encodes every corpus alike (evaluate.py, build_index.py,
# mine_negatives.py). Not by the training scripts: there rank 0 alone encodes (to evaluate, to re-mine) while
# the others wait, so a collective here would never be met.
SHARD_ENCODE = False


def join_ranks(cfg):
    """This process's rank. Under torchrun (WORLD_SIZE > 1, one machine) the process group starts and every
    corpus encode is shared out between the ranks (encode_corpus): every rank runs the whole script alike,
    rank 0 writes its outputs and the embeddings cache (cfg.cache_dir, resolved here so that every rank
    names the same one), the others write into a scratch directory removed at exit and print nothing. A
    plain run: rank 0, nothing changes."""
    global SHARD_ENCODE
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0
    import atexit
    import shutil
    import tempfile

    import torch.distributed as dist

    from common import run
    from common.training import setup_distributed

    rank = setup_distributed()[0]
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    SHARD_ENCODE = True
    run.SHARED_CACHE = run.cache_dir(cfg)  # before `out` moves below: every rank names rank 0's
    if hasattr(cfg, "cache_dir"):
        cfg.cache_dir = run.SHARED_CACHE
    if rank > 0:
        cfg.out = tempfile.mkdtemp(prefix=f"rank{rank}-")
        atexit.register(shutil.rmtree, cfg.out, True)
        sys.stdout = open(os.devnull, "w")
    return rank


def _shards():
    """(rank, world size) of a torchrun launch that shares its encodes out; (0, 1) otherwise."""
    dist = sys.modules.get("torch.distributed")  # not imported at all: an ONNX-backed search
    if not SHARD_ENCODE or dist is None or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _broadcast(value):
    """Rank 0's `value` on every rank (and a barrier: every rank waits for rank 0 to get here)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather_rows(emb, chunk, rows):
    """Every rank's rows (each at most `chunk`, `rows` in all), concatenated in rank order."""
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    padded = torch.zeros((chunk, emb.shape[1]), dtype=torch.float32, device=device)
    padded[:len(emb)] = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:rows].cpu().numpy()


def embeddings_cache(cache_dir, backend, encoder, corpus_file):
    """The .npy in cache_dir that holds corpus_file's embeddings by this encoder: named by what the
    encoder computes (its embedding of a fixed probe text), its backend,
    settings and precision, and the corpus by content. Not by path: a checkpoint holding the weights it
    started from (a fine-tuning whose best step on val was step 0) shares its starting model's vectors,
    and a model retrained in place gets new ones."""
    from common.index import probe_embedding

    probe = probe_embedding(encoder).tobytes()
    key = repr((backend, hashlib.sha1(probe).hexdigest(), encoder.settings(), encoder.precision(),
                file_sha1(corpus_file)))
    return os.path.join(cache_dir, hashlib.sha1(key.encode()).hexdigest()[:16] + ".npy")


def corpus_embeddings(encoder, texts, batch_size=64, path=None):
    """(embeddings [n, dim], info): memory-mapped from `path` when it holds n of the encoder's vectors
    (an earlier run's), else encoded (into <path>.partial.npy, swapped into place once whole, when given:
    a killed encode resumes there; else in RAM)."""
    shape = (len(texts), encoder.dim)
    if path and os.path.isfile(path):
        emb = np.load(path, mmap_mode="r")
        if emb.shape == shape:
            print(f"corpus embeddings from {path}")
            return emb, {"cached": True}
    t0 = time.perf_counter()
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        partial = f"{path}.partial.npy"
        emb = encode_corpus(encoder, texts, batch_size, partial)
        rank, world = _shards()
        if rank == 0:
            emb.flush()
            del emb  # the map, before the file under it moves
            os.replace(partial, path)
            os.remove(f"{partial}.rows.json")
        if world > 1:
            _broadcast(None)  # the others read it once it is in place
        emb = np.load(path, mmap_mode="r")
    else:
        emb = encode_corpus(encoder, texts, batch_size)
    seconds = time.perf_counter() - t0
    return emb, {"cached": False, "encode_seconds": seconds, "docs_per_s": len(texts) / max(seconds, 1e-9)}


def first_stage_run(spec, data_dir, corpus, queries, depth, device="auto", batch_size=64, bm25_backend="sparse"):
    """{qid: {doc id: score}}: each query's top `depth` documents by the first stage `spec`: "bm25", a
    build_index.py directory (its served first stage: its encoder through its index, its BM25, or their
    mix, as evaluate.py --index and Retriever serve it), or a bi-encoder (exact search over the corpus,
    encoded here). `corpus` is data_dir's. A query's own id is never retrieved (the BEIR convention
    evaluate.py follows)."""
    doc_ids, qids = list(corpus), list(queries)
    texts = [queries[q] for q in qids]
    if spec == "bm25":
        bm25 = BM25(doc_ids, CorpusTexts(corpus, doc_ids), backend=bm25_backend)
        run = {q: dict(hits) for q, hits in zip(qids, bm25.search_many(texts, depth + 1))}
    elif faiss_index.is_index(spec):
        retriever = Retriever.from_index(spec, os.path.join(data_dir, "corpus.jsonl"), corpus, device=device,
                                         batch_size=batch_size)
        run = {q: dict(hits) for q, hits in zip(qids, retriever.batch_retrieve(texts, depth + 1))}
    else:
        encoder = load_encoder(spec, "torch", device)
        doc_emb = encode_corpus(encoder, CorpusTexts(corpus, doc_ids), batch_size)
        scores, rows = dense_search(encoder.encode(texts, "query", batch_size), doc_emb, depth + 1)
        run = {q: {doc_ids[r]: float(s) for r, s in zip(rr, ss) if r >= 0} for q, rr, ss in zip(qids, rows, scores)}
    return cut_run(run, depth)


class Retriever:
    """Retrieval for a RAG system: an index's served first stage (a bi-encoder searched through FAISS,
    BM25 saved beside it, or the two mixed, as the index's fusion.json says: build_index.py chose it on
    val), then, optionally, a cross-encoder re-scoring the top candidates. Scores are the first stage's
    (inner products, cosine similarity when the model normalises, for dense alone; the mix's, in [0, 1],
    for a hybrid) for retrieve(), the fused score its reranker's fusion.json says to serve for
    retrieve_and_rerank() (the reranker's logits when it has none).

        r = Retriever.load("", "data/scifact", index_dir="runs/scifact/index", reranker="runs/scifact/reranker/best")
        r.retrieve("statins and dementia", k=5)     # [(doc id, score)], best first
        r.retrieve_and_rerank("statins and dementia", k_rerank=5)   # depth and mix as chosen on val
    """

    def __init__(self, encoder, doc_ids, texts, doc_emb=None, index=None, reranker=None, batch_size=64, bm25=None,
                 hybrid=None):
        """encoder: a BiEncoder; doc_ids, texts: the corpus, in index order; index: a FAISS index whose
        row i is doc_ids[i], or None to build an exact one from doc_emb (encoded here if None too);
        reranker: a CrossEncoder or None; bm25: a BM25 over the same corpus and hybrid: how its scores
        mix with the dense ones (common/fusion.py; None = dense alone). batch_size applies to encoding
        and reranking."""
        self.encoder, self.reranker, self.batch_size = encoder, reranker, batch_size
        self.doc_ids, self.texts = list(doc_ids), texts if isinstance(texts, Sequence) else list(texts)
        if len(self.doc_ids) != len(self.texts):
            raise ValueError(f"{len(self.doc_ids)} doc ids but {len(self.texts)} texts")
        self.hybrid, self.bm25 = dict(hybrid or fusion.DENSE_ONLY), bm25
        if fusion.uses_bm25(self.hybrid) and (bm25 is None or bm25.doc_ids != self.doc_ids):
            raise ValueError(f"hybrid {self.hybrid} needs a BM25 over these {len(self.doc_ids)} docs, in this order")
        self._row = {d: i for i, d in enumerate(self.doc_ids)}
        if index is None:
            emb = encode_corpus(encoder, self.texts, batch_size) if doc_emb is None else doc_emb
            index = faiss_index.flat_ip(emb)
        if index.ntotal != len(self.doc_ids) or index.d > encoder.dim:  # fewer: a --dim index (queries are cut)
            raise ValueError(f"the index holds {index.ntotal} vectors of dim {index.d}, but the corpus has "
                             f"{len(self.doc_ids)} docs and the encoder dim {encoder.dim}")
        self.index = index

    @classmethod
    def load(cls, model, corpus_path_or_beir_dir, index_dir="", reranker="", device="auto", batch_size=64,
             backend="torch"):
        """A Retriever from paths: a bi-encoder (a model dir, hub name or all-MiniLM-L6-v2; "" = the one
        index_dir was built with, by the backend it was built with), a corpus (a BEIR directory or a
        corpus.jsonl), a build_index.py directory ("" = encode the corpus and search exactly, dense
        alone) whose first stage is served as saved, and a cross-encoder ("" = none), run by torch or,
        with backend onnx / onnx-int8, from export_onnx.py directories by onnxruntime. Bad paths raise
        UserError naming the path and the fix."""
        from common.data import read_corpus

        path = corpus_path_or_beir_dir
        if os.path.isdir(path):
            path = os.path.join(path, "corpus.jsonl")
        if not os.path.isfile(path):  # before the models load, so a typo fails at once
            raise UserError(f"{corpus_path_or_beir_dir}: no corpus there; pass a BEIR directory (prepare_data.py "
                            "makes one) or a corpus.jsonl file")
        if not model and not index_dir:
            raise UserError("no model given: pass --model=<bi-encoder>, or --index=<build_index.py dir>, whose "
                            "encoder is then used")
        if index_dir:
            return cls.from_index(index_dir, path, read_corpus(path), model, reranker, device, batch_size, backend)
        encoder = load_encoder(model, backend, device)
        cross = load_reranker(reranker, backend, device) if reranker else None
        corpus = read_corpus(path)
        return cls(encoder, list(corpus), CorpusTexts(corpus, list(corpus)), reranker=cross,
                   batch_size=batch_size)

    @classmethod
    def from_index(cls, index_dir, corpus_file, corpus, model="", reranker="", device="auto", batch_size=64,
                   backend="torch", memory=True):
        """load() for a corpus already read ({doc id: doc}, from corpus_file) and a build_index.py
        directory: its encoder unless `model` names another, its BM25 when its first stage mixes it in.
        memory=False serves the same first stage without the index's memory (common/memory.py): the
        encoder's own vectors (embeddings.npy, searched exactly) and BM25 over the texts alone, as
        mining reads it (a remembered document must not come back as another query's negative)."""
        model, encoder_backend = (model, backend) if model else faiss_index.built_with(index_dir)
        encoder = load_encoder(model, encoder_backend, device)
        cross = load_reranker(reranker, backend, device) if reranker else None
        doc_ids = list(corpus)
        texts = CorpusTexts(corpus, doc_ids)
        index = faiss_index.load(index_dir, doc_ids, encoder)
        hybrid = fusion.load(index_dir, fusion.DENSE_ONLY)
        bm25 = BM25.load(index_dir, doc_ids, corpus_file) if fusion.uses_bm25(hybrid) else None
        remembered = Memory.load(index_dir)
        if not memory and remembered.on():
            if remembered.strengths["dense"]:
                emb = faiss_index.stored_embeddings(index_dir, len(doc_ids), encoder)
                if emb is None:
                    raise UserError(f"{index_dir}: its vectors hold a memory and it kept no embeddings.npy of the "
                                    "encoder's own; rebuild it with build_index.py --keep_embeddings=true")
                index = faiss_index.flat_ip(emb)
            if bm25 is not None and remembered.strengths["bm25"]:
                bm25 = BM25(doc_ids, texts, bm25.k1, bm25.b)
            remembered = Memory()
        retriever = cls(encoder, doc_ids, texts, index=index, reranker=cross, batch_size=batch_size, bm25=bm25,
                        hybrid=hybrid)
        retriever.memory = remembered
        return retriever

    memory = Memory()  # what the index remembers (from_index sets it): the queries behind a hit, why()

    def why(self, doc_id):
        """The remembered queries that lift a document in the index served: [(qid, text, grade)]."""
        return self.memory.why(doc_id) if self.memory.on() else []

    def passage(self, doc_id):
        """A document's record ({"title", "text", and where a folder's passage sits: "doc", "page", ...})."""
        corpus = getattr(self.texts, "corpus", None)
        return corpus[doc_id] if corpus is not None else {"text": self.text(doc_id)}

    def text(self, doc_id):
        """The text a document was indexed as (title + text), e.g. for a snippet or a RAG prompt."""
        return self.texts[self._row[doc_id]]

    def retrieve(self, query, k=10):
        """[(doc id, score)] of the k best documents for one query, best first."""
        return self.batch_retrieve([query], k)[0]

    def batch_retrieve(self, queries, k=10, batch_size=None):
        """retrieve() of every query: encoded batch_size at a time, then one FAISS search, and with a
        hybrid one BM25 search, the two lists of each query mixed (common.fusion.hybrid)."""
        k = min(k, len(self.doc_ids))
        if k < 1 or not queries:
            return [[] for _ in queries]
        mixed = fusion.uses_bm25(self.hybrid)
        depth = max(k, self.hybrid.get("depth", 100)) if mixed else k  # each list as deep as val chose over
        emb = self.encoder.encode(list(queries), "query", batch_size or self.batch_size)
        scores, rows = faiss_index.search(self.index, emb, min(depth, len(self.doc_ids)))
        # An approximate index may return fewer than k hits, padded with row -1.
        dense = {i: {self.doc_ids[r]: float(s) for r, s in zip(rr, ss) if r >= 0}
                 for i, (rr, ss) in enumerate(zip(rows, scores))}
        if mixed:
            bm25 = dict(enumerate(dict(hits) for hits in self.bm25.search_many(list(queries), depth)))
            dense = fusion.hybrid(dense, bm25, self.hybrid, k)
        # Stable: equal scores keep their list's order (FAISS's, or BM25's at weight 1).
        return [sorted(dense[i].items(), key=lambda item: -item[1])[:k] for i in range(len(queries))]

    def retrieve_and_rerank(self, query, k_retrieve=None, k_rerank=10):
        """The first stage's top k_retrieve (None: the depth chosen on val, saved with the reranker in
        fusion.json) re-scored by the cross-encoder and mixed with the first stage's score as that
        fusion says (common/fusion.py): [(doc id, score)] of the best k_rerank, best first. With a
        fusion weight of 0 the reranker is not run and these are the first stage's own hits."""
        if self.reranker is None:
            raise ValueError("retrieve_and_rerank needs a reranker: pass reranker= to Retriever or Retriever.load")
        mix = getattr(self.reranker, "fusion", fusion.RERANK_ONLY)
        depth = k_retrieve or mix["depth"]
        if mix["weight"] == 0:
            return self.retrieve(query, k_rerank)
        hits = self.retrieve(query, max(depth, k_rerank))
        top = hits[:depth]
        scores = self.reranker.score([query] * len(top), [self.text(d) for d, _ in top], self.batch_size)
        fused = fusion.fuse({"q": dict(hits)}, {"q": {d: float(s) for (d, _), s in zip(top, scores)}},
                            mix["weight"], depth)["q"]
        return sorted(fused.items(), key=lambda item: -item[1])[:k_rerank]
