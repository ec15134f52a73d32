import io
import os
import subprocess
import sys

import numpy as np
import pytest

import search
from common.data import doc_text, read_corpus
from common.models import BiEncoder, CrossEncoder
from common.retrievers import Retriever
from common.run import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def encoder(tiny_model):
    # A query prefix, so encoding queries as passages (or the reverse) would change the ranking.
    return BiEncoder.from_pretrained(tiny_model, query_prefix="query: ")


@pytest.fixture(scope="module")
def cross_dir(tiny_model, tmp_path_factory):
    return CrossEncoder.from_pretrained(tiny_model).save(str(tmp_path_factory.mktemp("cross") / "reranker"))


def corpus_of(beir_dir):
    corpus = read_corpus(os.path.join(beir_dir, "corpus.jsonl"))
    return list(corpus), [doc_text(d) for d in corpus.values()]


def brute_force(encoder, texts, queries, k):
    """(rows, scores) of the top k by a plain numpy dot product of the encoder's own embeddings."""
    scores = encoder.encode(queries, "query") @ encoder.encode(texts, "passage").T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


def test_batch_retrieve_equals_retrieve_and_brute_force(encoder, train_beir):
    doc_ids, texts = corpus_of(train_beir)
    queries = [t.split()[0] + " " + t.split()[-1] for t in texts[:16]]
    retriever = Retriever(encoder, doc_ids, texts, batch_size=5)  # batches of 5 queries: 3 full, 1 short
    batched = retriever.batch_retrieve(queries, k=10)
    rows, scores = brute_force(encoder, texts, queries, 10)
    for query, hits, want_rows, want_scores in zip(queries, batched, rows, scores):
        assert [d for d, _ in hits] == [doc_ids[r] for r in want_rows]
        np.testing.assert_allclose([s for _, s in hits], want_scores, atol=1e-5)
        single = retriever.retrieve(query, k=10)
        assert [d for d, _ in single] == [d for d, _ in hits]
        np.testing.assert_allclose([s for _, s in single], [s for _, s in hits], atol=1e-5)
    assert len(retriever.retrieve(queries[0], k=1000)) == len(doc_ids)  # k beyond the corpus: all of it
    assert retriever.batch_retrieve([], k=5) == [] and retriever.text(doc_ids[3]) == texts[3]


def test_retrieve_and_rerank_orders_by_the_cross_encoder(encoder, toy_beir, cross_dir):
    doc_ids, texts = corpus_of(toy_beir)
    cross = CrossEncoder.from_pretrained(cross_dir)
    retriever = Retriever(encoder, doc_ids, texts, reranker=cross)
    for query in ("how does merge sort work", "parse a date string", "tcp connection"):
        candidates = [d for d, _ in retriever.retrieve(query, k=4)]
        direct = cross.score([query] * 4, [retriever.text(d) for d in candidates])
        want = sorted(zip(candidates, direct.tolist()), key=lambda hit: -hit[1])[:3]
        got = retriever.retrieve_and_rerank(query, k_retrieve=4, k_rerank=3)
        assert [d for d, _ in got] == [d for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    with pytest.raises(ValueError, match="needs a reranker"):
        Retriever(encoder, doc_ids, texts).retrieve_and_rerank("merge sort")


def test_load_with_a_faiss_index_equals_exact_search(tiny_model, encoder, toy_beir, tmp_path):
    import faiss

    doc_ids, texts = corpus_of(toy_beir)
    index = faiss.IndexFlatIP(encoder.dim)
    index.add(encoder.encode(texts, "passage"))
    (tmp_path / "index").mkdir()
    faiss.write_index(index, str(tmp_path / "index" / "index.faiss"))
    (tmp_path / "index" / "doc_ids.txt").write_text("".join(d + "\n" for d in doc_ids))

    exact = Retriever.load(tiny_model, os.path.join(toy_beir, "corpus.jsonl"))  # a corpus.jsonl path works too
    indexed = Retriever.load(tiny_model, toy_beir, index_dir=str(tmp_path / "index"))
    assert indexed.index.ntotal == len(doc_ids) and indexed.doc_ids == exact.doc_ids == doc_ids
    queries = ["merge sort", "hash buckets", "read the lines of a file"]
    for got, want in zip(indexed.batch_retrieve(queries, k=6), exact.batch_retrieve(queries, k=6)):
        assert [d for d, _ in got] == [d for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)

    (tmp_path / "index" / "doc_ids.txt").write_text("".join(d + "\n" for d in reversed(doc_ids)))
    with pytest.raises(UserError, match="rebuild it for this dataset"):
        Retriever.load(tiny_model, toy_beir, index_dir=str(tmp_path / "index"))
    narrow = faiss.IndexFlatIP(8)
    narrow.add(np.eye(len(doc_ids), 8, dtype=np.float32))
    faiss.write_index(narrow, str(tmp_path / "index" / "index.faiss"))
    (tmp_path / "index" / "doc_ids.txt").write_text("".join(d + "\n" for d in doc_ids))
    with pytest.raises(UserError, match="rebuild the index with this model"):
        Retriever.load(tiny_model, toy_beir, index_dir=str(tmp_path / "index"))
    with pytest.raises(UserError, match="no corpus there"):
        Retriever.load(tiny_model, str(tmp_path / "nowhere"))


def hit_blocks(out):
    """{query: [(rank, doc id, score, snippet)]} from search.py's output."""
    blocks = {}
    for line in out.splitlines():
        if line.startswith("# "):
            hits = blocks.setdefault(line[2:], [])
        else:
            rank, doc_id, score, snippet = line.split("\t")
            hits.append((int(rank), doc_id, float(score), snippet))
    return blocks


def test_search_answers_piped_queries_and_query(tiny_model, toy_beir, monkeypatch, capsys):
    args = [f"--model={tiny_model}", f"--data={toy_beir}", "--k=3", "--snippet=20", "--batch_size=2"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("merge sort\n\n  tcp sockets \nparse a date\n"))
    assert search.main(args) == 0
    blocks = hit_blocks(capsys.readouterr().out)
    assert list(blocks) == ["merge sort", "tcp sockets", "parse a date"]  # blank lines skipped, text stripped
    retriever = Retriever.load(tiny_model, toy_beir)
    for hits, want in zip(blocks.values(), retriever.batch_retrieve(list(blocks), k=3)):
        assert [(rank, d) for rank, d, _, _ in hits] == [(1, want[0][0]), (2, want[1][0]), (3, want[2][0])]
        np.testing.assert_allclose([s for _, _, s, _ in hits], [s for _, s in want], atol=1e-4)
        assert [s for _, _, _, s in hits] == [search.snippet(retriever.text(d), 20) for d, _ in want]

    assert search.main(args + ["--query=hash function", "--k=5"]) == 0
    blocks = hit_blocks(capsys.readouterr().out)
    assert list(blocks) == ["hash function"] and [h[0] for h in blocks["hash function"]] == [1, 2, 3, 4, 5]


def test_search_reranks_with_the_cross_encoder(tiny_model, toy_beir, cross_dir, capsys):
    assert search.main([f"--model={tiny_model}", f"--data={toy_beir}", f"--rerank={cross_dir}", "--k=2",
                        "--k_retrieve=4", "--query=merge sort"]) == 0
    hits = hit_blocks(capsys.readouterr().out)["merge sort"]
    retriever = Retriever.load(tiny_model, toy_beir, reranker=cross_dir)
    want = retriever.retrieve_and_rerank("merge sort", k_retrieve=4, k_rerank=2)
    assert [(d, round(s, 4)) for _, d, s, _ in hits] == [(d, round(s, 4)) for d, s in want]


def test_snippet_collapses_whitespace_and_cuts():
    assert search.snippet("a\tb\n\n  c", 160) == "a b c"
    assert search.snippet("merge sort splits a list in halves", 14) == "merge sort..."
    assert len(search.snippet("x" * 500, 160)) == 160


def test_missing_model_is_one_line_and_exit_2(toy_beir, tmp_path):
    proc = subprocess.run([sys.executable, "search.py", f"--model={tmp_path}/no-model", f"--data={toy_beir}",
                           "--query=merge sort"], cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{tmp_path}/no-model" in lines[0]
