"""First-stage retrievers: BM25 (rank-bm25) and exact dense search over embeddings."""
import re

import numpy as np
import Stemmer
import torch
from rank_bm25 import BM25Okapi

# Lucene's English stopword list (what Anserini/pyserini's BM25 uses), plus a few more function
# words; measured on SciFact val with Snowball stemming.
STOPWORDS = frozenset("""
a an and are as at be but by for if in into is it no not of on or such that the their then there
these they this to was will with
""".split())
_TOKEN = re.compile(r"\w+", re.UNICODE)
_stemmer = Stemmer.Stemmer("english")


def bm25_tokenize(text):
    """Lowercase words, English stopwords removed, Snowball-stemmed."""
    return _stemmer.stemWords([w for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS])


class BM25:
    """rank-bm25's Okapi BM25 over a corpus {doc id: text}."""

    def __init__(self, doc_ids, texts, k1=0.9, b=0.4):
        self.doc_ids = list(doc_ids)
        # rank-bm25 divides by the average length, so an all-empty corpus must not reach it.
        self.index = BM25Okapi([bm25_tokenize(t) or ["\0"] for t in texts], k1=k1, b=b)

    def search(self, query, k):
        """[(doc id, score)] best first."""
        scores = self.index.get_scores(bm25_tokenize(query))
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.doc_ids[i], float(scores[i])) for i in top]


def dense_search(query_emb, doc_emb, k, chunk=4096):
    """Exact inner-product top-k: (scores, indices), each [n_queries, k]. Chunked over the corpus so
    memory stays at queries x chunk, whatever the corpus size."""
    q = torch.from_numpy(np.ascontiguousarray(query_emb, dtype=np.float32))
    k = min(k, len(doc_emb))
    best_scores = torch.full((len(q), k), -torch.inf)
    best_idx = torch.zeros((len(q), k), dtype=torch.long)
    for start in range(0, len(doc_emb), chunk):
        d = torch.from_numpy(np.ascontiguousarray(doc_emb[start:start + chunk], dtype=np.float32))
        s, i = torch.topk(q @ d.T, min(k, len(d)), dim=1)
        merged_s = torch.cat([best_scores, s], dim=1)
        merged_i = torch.cat([best_idx, i + start], dim=1)
        best_scores, pos = torch.topk(merged_s, k, dim=1)
        best_idx = torch.gather(merged_i, 1, pos)
    return best_scores.numpy(), best_idx.numpy()
