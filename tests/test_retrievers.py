import numpy as np
import pytest

from common.retrievers import BM25, bm25_tokenize, dense_search


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
        shallow = [[(doc_ids[r], s) for r, s in zip(*fast._top_k(fast._query_terms(q), k, first_depth=1))] for q in queries]
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


def test_bm25_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="rank_bm25, sparse"):
        BM25(["a"], ["text"], backend="lucene")


def test_dense_search_equals_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(1000, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    scores, idx = dense_search(queries, docs, k=10, chunk=64)
    full = queries @ docs.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), rtol=1e-5)
    assert dense_search(queries, docs[:3], k=10)[1].shape == (7, 3)
