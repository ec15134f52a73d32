import os

import numpy as np
import pytest

from common.retrievers import BM25, bm25_tokenize, dense_search, nearest
from common.retrievers import encode_corpus as real_encode_corpus


def test_bm25_tokenize_stems_drops_stopwords_and_splits_identifiers():
    assert bm25_tokenize("The Cats are RUNNING") == ["cat", "run"]
    assert bm25_tokenize("def read_lines(path): return readLines(path)") == \
        ["def", "read", "line", "path", "return", "read", "line", "path"]
    assert bm25_tokenize("IL-6 levels, HTTPServer") == ["il", "6", "level", "httpserver"]


def test_bm25_ranks_the_matching_doc_first_and_handles_empty_docs():
    index = BM25(["a", "b", "c"], ["merge sort of a list", "hash table buckets", "the of and"])
    hits = index.search("sorting lists", 3)
    assert hits[0][0] == "a" and hits[0][1] > hits[1][1]
    assert len(index.search("sorting", 10)) == 3


def random_corpus(n_docs=300, vocab=40, seed=0):
    """Docs of Zipf-distributed words w0, w1, ...: w0 and w1 are in over half the docs (negative
    idf), the tail words in a few; doc 0 is empty. Queries repeat terms and use unknown words."""
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, vocab + 1) ** 1.1
    docs = [" ".join(f"w{i}" for i in rng.choice(vocab, size=n, p=p / p.sum())) for n in rng.integers(1, 30, n_docs)]
    docs[0] = ""
    queries = [" ".join(f"w{i}" for i in rng.integers(0, vocab, size=rng.integers(1, 6))) for _ in range(40)]
    queries += ["w3 w3 w7", "w0", "w0 w1 w0", "w39 unknownword", "unknownword", "", "w38"]
    return [f"d{i}" for i in range(n_docs)], docs, queries


def test_bm25_sparse_scores_equal_rank_bm25():
    doc_ids, docs, queries = random_corpus()
    assert sum("w0" in d.split() for d in docs) > len(docs) / 2
    ref, fast = BM25(doc_ids, docs, backend="rank_bm25"), BM25(doc_ids, docs, backend="sparse")
    assert ref.index.idf["w0"] == 0.25 * ref.index.average_idf  # floored: the negative-idf path
    for query in queries:
        np.testing.assert_allclose(fast.scores(query), ref.scores(query), rtol=1e-5, err_msg=query)
    assert fast.scores("w3 w3").max() > fast.scores("w3").max() > 0  # a repeated term counts twice
    rows = [5, 0, 17, 17]  # a few documents' scores alone, as mining asks for the positives'
    for index in (fast, ref):
        np.testing.assert_allclose(index.scores("w3 w3 w7 nosuchword", rows), ref.scores("w3 w3 w7 nosuchword")[rows],
                                   rtol=1e-5)


@pytest.mark.parametrize("k1,b", [(1.2, 0.4), (0.9, 0.75)])
def test_bm25_backends_rank_identically(k1, b):
    doc_ids, docs, queries = random_corpus(seed=1)
    ref, fast = (BM25(doc_ids, docs, k1=k1, b=b, backend=name) for name in ("rank_bm25", "sparse"))
    for k in (1, 10, 400):
        expected = [ref.search(q, k) for q in queries]
        shallow = [[(doc_ids[r], s) for r, s in zip(*fast._top_k(fast._query_terms(q), k, first_depth=1))]
                   for q in queries]
        for hits in (ref.search_many(queries, k), fast.search_many(queries, k), [fast.search(q, k) for q in queries],
                     shallow):  # shallow: the pruned search's depth grows from 1, every bound tested on the way
            assert [[d for d, _ in h] for h in hits] == [[d for d, _ in h] for h in expected]
            for got, want in zip(hits, expected):
                np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
    assert [d for d, _ in fast.search("unknownword", 3)] == ["d0", "d1", "d2"]  # all tied: document order


def test_bm25_pruned_top_k_equals_scoring_every_document(monkeypatch):
    """Thousands of documents, ties included (duplicated documents): the top k without touching every posting
    are the top k of every document's score, in the same order. Built by forked processes a chunk at a time,
    the index is the one a single process builds."""
    from common import retrievers

    doc_ids, docs, queries = random_corpus(n_docs=3000, vocab=400, seed=2)
    docs[100:110] = [docs[7]] * 10
    single = BM25(doc_ids, docs)
    monkeypatch.setattr(retrievers, "BUILD_CHUNK", 700)
    index = BM25(doc_ids, docs)
    assert index.vocab == single.vocab and (index.weights != single.weights).nnz == 0
    queries += [docs[7], " ".join(docs[7].split()[:2])]
    for k in (1, 10, 100):
        for q in queries:
            full = index.scores(q)
            want = retrievers.top_k(full, k)
            for depth in (1, 256):
                rows, scores = index._top_k(index._query_terms(q), k, first_depth=depth)
                assert list(rows) == list(want), q
                np.testing.assert_allclose(scores, full[want], rtol=1e-9)
        product = index.search_many(queries, k)
        monkeypatch.setattr(retrievers, "PRUNE_ABOVE", 0)  # every query pruned
        pruned = index.search_many(queries, k)
        monkeypatch.undo()
        assert [[d for d, _ in h] for h in pruned] == [[d for d, _ in h] for h in product]
    # Nearly every word in most documents: the floored idf is negative, and so are the weights; the bound
    # still holds (a document without a term scores 0 for it, above them).
    small = BM25([f"s{i}" for i in range(6)], ["a b", "a b", "a c", "a b d", "a b", "a b c"])
    assert small.weights.data.min() < 0
    for q in ("a", "a b", "b c", "d a", "c"):
        full = small.scores(q)
        for n in (1, 3, 6):
            assert list(small._top_k(small._query_terms(q), n, first_depth=1)[0]) == list(retrievers.top_k(full, n))


def test_bm25_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="rank_bm25, sparse"):
        BM25(["a"], ["text"], backend="lucene")


def test_dense_search_equals_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(1000, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    scores, idx = dense_search(queries, docs, k=10, chunk=64)
    full = queries @ docs.T
    batched = dense_search(queries, docs, k=10, chunk=64, query_batch=3)  # 7 queries: batches of 3, 3, 1
    np.testing.assert_array_equal(batched[1], idx)
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), rtol=1e-5)
    assert dense_search(queries, docs[:3], k=10)[1].shape == (7, 3)


def test_dense_search_ties_fall_as_a_flat_index_returns_them():
    """Mining searched a FAISS Flat copy of the vectors; it now searches them in place, and coarse (bf16-like)
    vectors with many equal scores must come back in the same order."""
    import faiss

    rng = np.random.default_rng(1)
    docs = (np.round(rng.normal(size=(3000, 8)) * 2) / 2).astype(np.float32)
    queries = (np.round(rng.normal(size=(40, 8)) * 2) / 2).astype(np.float32)
    flat = faiss.IndexFlatIP(8)
    flat.add(docs)
    want_scores, want_rows = flat.search(queries, 50)
    scores, rows = dense_search(queries, docs, 50)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)


def test_nearest_is_exact_while_affordable_else_an_ann_that_states_its_recall(monkeypatch):
    from common import retrievers

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(64, 16))
    docs = centres[rng.integers(0, 64, 20000)] + 0.3 * rng.normal(size=(20000, 16))
    docs = (docs / np.linalg.norm(docs, axis=1, keepdims=True)).astype(np.float32)
    queries = docs[rng.integers(0, 20000, 600)] + 0.1 * rng.normal(size=(600, 16)).astype(np.float32)
    exact_scores, exact_rows = dense_search(queries, docs, 20)
    scores, rows, info = nearest(queries, docs, 20)
    assert info == {"search": "exact"}
    np.testing.assert_array_equal(rows, exact_rows)

    monkeypatch.setattr(retrievers, "EXACT_PAIRS", 0)  # measure the exact rate, and find it too slow
    scores, rows, info = nearest(queries, docs, 20, max_seconds=0, sample=200)
    assert info["search"] == "IVF,Flat" and "exact_seconds_estimated" in info and info["recall_queries"] == 200
    assert info["recall_at_k"] >= retrievers.ANN_RECALL
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(rows, exact_rows)])
    assert recall >= retrievers.ANN_RECALL - 0.03  # the sample's recall holds for every query
    assert recall < 1  # approximate indeed: what the info reports is not a formality


def test_a_killed_corpus_encode_resumes_from_the_chunks_written(tiny_model, fp32_cpu, tmp_path, monkeypatch):
    """Killed after two chunks, the encode picks up at the third; the vectors equal an uninterrupted
    encode's. A record of another shape starts afresh."""
    from common import retrievers
    from common.backends import load_encoder

    encoder = load_encoder(tiny_model, device="cpu")
    texts = [f"document number {i} about {'sorting' if i % 2 else 'hashing'}" for i in range(50)]
    whole = retrievers.encode_corpus(encoder, texts, 8, chunk=10)
    path = str(tmp_path / "emb.npy")
    calls, real = [], encoder.encode

    def dies_on_third(batch, *args, **kwargs):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(encoder, "encode", dies_on_third)
    monkeypatch.setattr(retrievers, "encode_corpus", lambda *a, **kw: real_encode_corpus(*a, **kw, chunk=10))
    with pytest.raises(KeyboardInterrupt):
        retrievers.corpus_embeddings(encoder, texts, 8, path)
    monkeypatch.setattr(encoder, "encode", lambda batch, *a, **kw: calls.append(len(batch)) or real(batch, *a, **kw))
    calls.clear()
    emb, info = retrievers.corpus_embeddings(encoder, texts, 8, path)
    assert calls == [10, 10, 10] and not info["cached"]  # rows 20..49: the first two chunks were kept
    np.testing.assert_array_equal(np.asarray(emb), whole)
    assert sorted(os.listdir(tmp_path)) == ["emb.npy"]  # the partial file and its record are gone
    partial = str(tmp_path / "other.npy")
    retrievers.write_json(f"{partial}.rows.json", {"shape": [49, encoder.dim], "rows": 40})
    np.lib.format.open_memmap(partial, "w+", np.float32, (49, encoder.dim))
    calls.clear()
    real_encode_corpus(encoder, texts, 8, partial, chunk=10)
    assert len(calls) == 5  # rows of a 49-document corpus are not these 50's: all encoded again


def _encode_on_rank(rank, world, model, texts, out_dir, port):
    from types import SimpleNamespace

    import functools

    from common import models, retrievers
    from common.backends import load_encoder
    from common.retrievers import corpus_embeddings, join_ranks

    models.cpu_flags = lambda: set()  # fp32: the vectors compared exactly
    retrievers.encode_corpus = functools.partial(real_encode_corpus, chunk=5)  # 23 texts: 3 steps of 2 x 5
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    cfg = SimpleNamespace(out=os.path.join(out_dir, "run"), cache_dir="")
    assert join_ranks(cfg) == rank and cfg.cache_dir == os.path.join(out_dir, ".cache")
    assert (cfg.out == os.path.join(out_dir, "run")) == (rank == 0)  # the others write into scratch
    emb, _ = corpus_embeddings(load_encoder(model, device="cpu"), texts, 4, os.path.join(cfg.cache_dir, "emb.npy"))
    np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.asarray(emb))


def test_two_gloo_ranks_encode_the_corpus_as_one_process_does(tiny_model, fp32_cpu, tmp_path):
    """torchrun's way (common.retrievers.join_ranks, as evaluate.py, build_index.py and mine_negatives.py start):
    each rank encodes its slice of every chunk, and every rank ends with all the vectors in corpus order
    (rank 0 wrote the cache file); they equal one process's."""
    import socket

    import torch.multiprocessing as mp

    from common.backends import load_encoder

    texts = [f"passage {i}: {'merge sort' if i % 3 else 'hash table'} number {i * 7}" for i in range(23)]
    one = real_encode_corpus(load_encoder(tiny_model, device="cpu"), texts, 4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_encode_on_rank, args=(2, tiny_model, texts, str(tmp_path), port), nprocs=2,
                       start_method="spawn")  # a forked child of a process that ran torch can hang
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / ".cache" / "emb.npy"), one, rtol=1e-5, atol=1e-6)


def test_corpus_bm25_is_built_once_and_loaded_by_later_stages(tmp_path, capsys):
    from common.retrievers import corpus_bm25

    doc_ids, docs, queries = random_corpus(seed=3)
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(f'{{"_id": "{d}", "text": "{t}"}}\n' for d, t in zip(doc_ids, docs)))
    built = corpus_bm25(doc_ids, iter(docs), str(corpus_file), cache_dir=str(tmp_path / "cache"))

    def unread():
        raise AssertionError("the texts were read: BM25 was built again")
        yield

    loaded = corpus_bm25(doc_ids, unread(), str(corpus_file), cache_dir=str(tmp_path / "cache"))
    assert "BM25 from" in capsys.readouterr().out
    assert loaded.search_many(queries, 10) == built.search_many(queries, 10)
    other_k1 = corpus_bm25(doc_ids, iter(docs), str(corpus_file), k1=0.9, cache_dir=str(tmp_path / "cache"))
    assert other_k1.k1 == 0.9 and len(os.listdir(tmp_path / "cache")) == 2  # k1 is in the key
    corpus_file.write_text(corpus_file.read_text().replace("w1", "w2"))  # new texts, same ids: a new key
    again = corpus_bm25(doc_ids, iter(d.replace("w1", "w2") for d in docs), str(corpus_file),
                        cache_dir=str(tmp_path / "cache"))
    assert "w1" not in again.vocab and len(os.listdir(tmp_path / "cache")) == 3
