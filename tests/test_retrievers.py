import numpy as np

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


def test_dense_search_equals_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(1000, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    scores, idx = dense_search(queries, docs, k=10, chunk=64)
    full = queries @ docs.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), rtol=1e-5)
    assert dense_search(queries, docs[:3], k=10)[1].shape == (7, 3)
