"""Search a corpus from the command line: an index's first stage (a bi-encoder over FAISS, BM25, or the
two mixed as build_index.py chose on val), optionally reranked by a cross-encoder.

    # CPU (or one GPU, picked automatically): exact search of a BEIR directory's corpus
    python search.py --data=data/scifact --model=runs/scifact-all-MiniLM-L6-v2/encoder/best --query="statin use"
    # queries one per line on stdin, over a prebuilt index (build_index.py), reranked by a cross-encoder
    python search.py --data=data/scifact --index=runs/scifact/index \
        --rerank=runs/scifact-all-MiniLM-L6-v2/reranker/best < questions.txt
    # without torch: an index built from an ONNX export (build_index.py --backend=onnx), whose encoder it reuses
    python search.py --data=data/scifact --index=runs/scifact-onnx/index --query="statin use"
    # with the remembered train queries that lifted each hit (an index with memory: common/memory.py)
    python search.py --data=data/scifact --index=runs/scifact-all-MiniLM-L6-v2/index --query="statin use" --why=true
    # interactive: type a query at the prompt; Ctrl-D ends
    python search.py --data=data/python-source
    # a folder of documents (prepare_data.py --source=DIR): one line per file, its best passage
    python search.py --data=data/papers --index=runs/papers-all-MiniLM-L6-v2/index --per_document=true

For each query, a `# query` line, then one line per hit: rank, doc id, score (the first stage's: the
bi-encoder's inner product, or the hybrid's mix; with --rerank, the score the reranker's fusion.json
says to serve: the first stage's and the reranker's mixed as val chose, common/fusion.py) and a
one-line snippet, tab-separated (for a corpus read from a folder of documents, the file, page, heading and
anchor the passage comes from too, before the snippet); progress and
prompts go to stderr. One process does it all: torchrun adds nothing to a search (encoding a query takes
milliseconds, and FAISS uses every GPU it sees). Without --index the corpus is encoded at every start.
"""
import sys

from common.backends import BACKENDS
from common.config import ConfigError, check_choice, load_config
from common.data import place
from common.decision import describe_hybrid
from common.retrievers import Retriever
from common.run import cli

DEFAULTS = dict(
    model="",  # the bi-encoder: a local directory, a hub name, a packaged short name or an ONNX export;
    #            "" = the one --index was built with (model and backend), else all-MiniLM-L6-v2
    backend="torch",  # torch | onnx | onnx-int8: export_onnx.py directories run by onnxruntime, no torch
    data="data/python-source",  # a BEIR directory (its corpus.jsonl is searched) or a corpus.jsonl file
    index="",  # a build_index.py directory over this corpus, served as it saved (dense, BM25 or their mix);
    #            "" = encode the corpus and search it exactly, dense alone
    rerank="",  # a cross-encoder directory; "" = no reranking
    query="",  # one query; "" = one per line from stdin, or a prompt when stdin is a terminal
    k=10,  # hits printed per query
    k_retrieve=0,  # with rerank: candidates the cross-encoder re-scores; 0 = the depth chosen on val (fusion.json)
    snippet=160,  # characters of each hit's text to print; 0 = none
    per_document=False,  # a corpus of passages of documents: one line per document, its best passage
    why=False,  # under each hit the index remembers (common/memory.py), the remembered queries that lift it
    batch_size=64,
    device="auto",  # auto | cpu | cuda | cuda:1
)


def snippet(text, width):
    """One line: whitespace collapsed, cut to `width` characters (with "..." when cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:max(width - 3, 0)].rstrip() + "..."


# per_document: passages fetched for each document shown, so that k distinct documents are among them
PASSAGES_PER_DOCUMENT = 10


def answer(retriever, queries, cfg):
    """[(doc id, score)] for each query: reranked when a reranker is loaded; with per_document, each
    document's best passage only."""
    k = cfg.k * PASSAGES_PER_DOCUMENT if cfg.per_document else cfg.k
    if retriever.reranker is not None:
        hits = [retriever.retrieve_and_rerank(q, cfg.k_retrieve or None, k) for q in queries]
    else:
        hits = retriever.batch_retrieve(queries, k, cfg.batch_size)
    if not cfg.per_document:
        return hits
    out = []
    for row in hits:
        seen, best = set(), []
        for doc_id, score in row:
            doc = retriever.passage(doc_id).get("doc", doc_id)
            if doc not in seen:
                seen.add(doc)
                best.append((doc_id, score))
        out.append(best[:cfg.k])
    return out


def show(retriever, query, hits, cfg):
    print(f"# {query}")
    for rank, (doc_id, score) in enumerate(hits, 1):
        text = "\t" + snippet(retriever.text(doc_id), cfg.snippet) if cfg.snippet > 0 else ""
        where = place(retriever.passage(doc_id))
        print(f"{rank}\t{doc_id}\t{score:.4f}{chr(9) + where if where else ''}{text}")
        for qid, remembered, _ in retriever.why(doc_id)[:3] if cfg.why else ():
            print(f"\t\tremembered: {snippet(remembered, cfg.snippet or 160)} ({qid})")
    sys.stdout.flush()  # so a pipe sees each query's hits as they come


def stdin_batches(size):
    """Non-blank stdin lines, batch by batch, so piped queries are encoded together yet print early."""
    batch = []
    for line in sys.stdin:
        if line.strip():
            batch.append(line.strip())
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def interactive():
    """Queries typed at a prompt (on stderr, so stdout holds only results) until Ctrl-D or Ctrl-C."""
    while True:
        try:
            print("query> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            line = ""
        if not line:
            print(file=sys.stderr)
            return
        if line.strip():
            yield [line.strip()]


def main(argv=None):
    cfg = load_config(DEFAULTS, sys.argv[1:] if argv is None else argv)
    if cfg.k < 1 or cfg.batch_size < 1:
        raise ConfigError(f"k={cfg.k}, batch_size={cfg.batch_size}: both must be at least 1")
    if cfg.rerank and 0 < cfg.k_retrieve < cfg.k:
        raise ConfigError(f"k_retrieve={cfg.k_retrieve} < k={cfg.k}: the reranker can only return what was retrieved")
    check_choice(cfg, "backend", BACKENDS)
    model = cfg.model or ("" if cfg.index else "all-MiniLM-L6-v2")  # "" with an index: the index's encoder
    retriever = Retriever.load(model, cfg.data, cfg.index, cfg.rerank, cfg.device, cfg.batch_size, cfg.backend)
    print(f"{len(retriever.doc_ids)} docs from {cfg.data}, "
          + (f"index {cfg.index}: {describe_hybrid(retriever.hybrid)}; {retriever.memory.describe()}"
             if cfg.index else "exact search")
          + (f", reranked by {cfg.rerank}" if cfg.rerank else ""), file=sys.stderr)
    if cfg.query:
        batches = [[cfg.query]]
    elif sys.stdin.isatty():
        batches = interactive()
    else:
        batches = stdin_batches(cfg.batch_size)
    for queries in batches:
        for query, hits in zip(queries, answer(retriever, queries, cfg)):
            show(retriever, query, hits, cfg)
    return 0


if __name__ == "__main__":
    cli(main)
