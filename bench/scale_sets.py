"""Synthetic collections of 100k to millions of documents, and a tiny encoder, for measuring what every stage
costs as the corpus grows (issue 39): the model's share is made small so that the rest is what is measured.

    python bench/scale_sets.py --docs=1000000 --out=data/scale/synth-1m     # a BEIR directory
    python bench/scale_sets.py --tiny_model=runs/bench/tiny-minilm          # 2 layers x 32 wide, MiniLM's tokenizer
    make pipeline DATA=data/scale/synth-1m MODEL=runs/bench/tiny-minilm

Documents: lengths log-normal (median ~70 words, a long tail), words from a 50,000-word vocabulary of made-up
words with a Zipf distribution (s = 1.07, as English text), and a quarter of each document's words from one of
500 topics (200 words each) so that documents are not independent draws and a dense encoder has something to
learn. Queries: 2 to 6 distinct words of one document, its rarer words more likely (a person asks with the words
that tell the document apart), one in five with a word the document does not hold; that document is its one
relevant document. The same seed gives the same files; queries split --train/--val/--test.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

VOCAB, ZIPF_S, TOPICS, TOPIC_WORDS, TOPIC_SHARE = 50_000, 1.07, 500, 200, 0.25
ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fl gr kl pr st tr".split()
VOWELS = "a e i o u ai ea io ou".split()
CODAS = ["", "", "n", "r", "l", "m", "x", "nd", "rt", "sk"]


def vocabulary(rng, size=VOCAB):
    """`size` distinct made-up lowercase words of 1 to 4 syllables (none an English stopword)."""
    words, seen = [], set()
    while len(words) < size:
        n = rng.choice([1, 2, 3, 4], p=[0.3, 0.4, 0.2, 0.1])
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(n)) + rng.choice(CODAS)
        if w not in seen and len(w) > 2:
            seen.add(w)
            words.append(w)
    words.sort(key=len)  # the commonest words the shortest, as in any language
    return np.array(words, dtype=object)


def documents(rng, n_docs, chunk=200_000):
    """Yields (word ids, doc lengths) a chunk of documents at a time (bounded memory at any n_docs)."""
    p = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF_S
    cdf = np.cumsum(p / p.sum())
    topic_words = rng.integers(0, VOCAB, size=(TOPICS, TOPIC_WORDS))
    for start in range(0, n_docs, chunk):
        n = min(chunk, n_docs - start)
        lengths = np.clip(rng.lognormal(np.log(70), 0.6, n).astype(np.int64), 5, 1000)
        total = int(lengths.sum())
        ids = np.searchsorted(cdf, rng.random(total)).clip(max=VOCAB - 1).astype(np.int32)
        topic = np.repeat(rng.integers(0, TOPICS, n), lengths)
        from_topic = rng.random(total) < TOPIC_SHARE
        ids[from_topic] = topic_words[topic[from_topic], rng.integers(0, TOPIC_WORDS, int(from_topic.sum()))]
        yield ids, lengths


def make_query(rng, doc_words, df, vocab):
    distinct = np.unique(doc_words)
    weights = 1.0 / np.sqrt(df[distinct] + 1.0)  # rarer words more likely
    n = min(len(distinct), int(rng.integers(2, 7)))
    words = list(vocab[rng.choice(distinct, size=n, replace=False, p=weights / weights.sum())])
    if rng.random() < 0.2:
        words.insert(int(rng.integers(0, len(words) + 1)), vocab[rng.integers(0, VOCAB)])
    return " ".join(words)


def write_set(out, n_docs, n_queries, seed):
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "qrels"))
    total_queries = sum(n_queries)
    # Which documents get a query, chosen up front so that each chunk keeps its own documents' words.
    query_docs = np.sort(rng.choice(n_docs, size=total_queries, replace=False))
    picked, df = {}, np.zeros(VOCAB, np.int64)
    t0 = time.time()
    with open(os.path.join(tmp, "corpus.jsonl"), "w", encoding="utf-8") as f:
        start = 0
        for ids, lengths in documents(rng, n_docs):
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            words = vocab[ids]
            lines = []
            for i in range(len(lengths)):
                doc = start + i
                text = " ".join(words[bounds[i]:bounds[i + 1]])
                lines.append(f'{{"_id": "d{doc}", "title": "", "text": "{text}"}}\n')
            f.writelines(lines)
            doc_word_ids = np.split(ids, bounds[1:-1])
            df += np.bincount(np.concatenate([np.unique(w) for w in doc_word_ids]), minlength=VOCAB)
            lo, hi = np.searchsorted(query_docs, [start, start + len(lengths)])
            for doc in query_docs[lo:hi]:
                picked[int(doc)] = doc_word_ids[doc - start]
            start += len(lengths)
            print(f"{out}: {start:,} / {n_docs:,} documents ({time.time() - t0:.0f} s)", file=sys.stderr)
    order = rng.permutation(total_queries)
    splits = np.split(order, np.cumsum(n_queries)[:-1])
    with open(os.path.join(tmp, "queries.jsonl"), "w", encoding="utf-8") as f:
        for q, doc in enumerate(query_docs):
            f.write(json.dumps({"_id": f"q{q}", "text": make_query(rng, picked[int(doc)], df, vocab)}) + "\n")
    for name, qs in zip(("train", "dev", "test"), splits):
        with open(os.path.join(tmp, "qrels", f"{name}.tsv"), "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"q{q}\td{query_docs[q]}\t1\n" for q in sorted(qs))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"{out}: {n_docs:,} documents, {' / '.join(map(str, n_queries))} train / val / test queries "
          f"({time.time() - t0:.0f} s)", file=sys.stderr)


def tiny_model(path, hidden=32, layers=2, seed=0):
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer (fast, WordPiece): the encoder's share of every stage
    made small, the tokenizer's left as a real run's."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from common.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"{path}: tiny encoder ({layers} layers x {hidden}) with MiniLM's tokenizer", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--tiny_model", default="", help="also (or only) write the tiny encoder here")
    args = p.parse_args(argv)
    if args.tiny_model:
        tiny_model(args.tiny_model)
    if args.out or not args.tiny_model:
        write_set(args.out or f"data/scale/synth-{args.docs // 1000}k", args.docs,
                  (args.train, args.val, args.test), args.seed)


if __name__ == "__main__":
    main()
