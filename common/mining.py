"""Hard-negative mining: candidates from retrievers, the false-negative filters, training records.

mine_negatives.py writes a training file with it once; train_encoder.py calls it again every
`remine_every` steps with the model it is training (ANCE), so both apply one strategy and one set
of filters. A record is what common.data.read_training_file reads:

    {"qid": "q1", "query": "...", "positives": ["d1"],
     "negatives": [{"id": "d7", "score": 12.3, "rank": 4, "source": "bm25"}, ...],
     "teacher": {"d1": 7.2, "d7": -1.3}}          # only with a teacher

Ranks are 1-based positions in the source's own ranking, labelled positives included, so
`skip_top=3` means "never take the retriever's top 3".
"""
import json
import random
from types import SimpleNamespace

import numpy as np
from tqdm.auto import tqdm

from common import index as faiss_index
from common.data import CorpusTexts, doc_text
from common.files import atomic_open
from common.retrievers import BM25, corpus_bm25, encode_corpus, nearest

STRATEGIES = ("bm25", "dense", "random", "semi-hard", "index")
# The settings mine() reads; mine_negatives.py declares their defaults and writes them to the
# run's config.json, which is where re-mining in train_encoder.py finds them again.
SETTINGS = ("strategy", "num_negatives", "sampling", "skip_top", "max_rank", "max_score_ratio",
            "semi_hard_margin", "teacher_margin", "bm25_k1", "bm25_b", "bm25_backend", "seed")


def settings_of(config):
    """The mining settings out of a mine_negatives.py config dict (an error names a missing one)."""
    missing = [k for k in SETTINGS if k not in config]
    if missing:
        raise KeyError(missing[0])
    return SimpleNamespace(**{k: config[k] for k in SETTINGS})


class Sources:
    """The candidate lists of every query from each retriever a strategy needs, built once.

    bm25: the index is built once and reused by every re-mine (it never changes). dense: the corpus
    is encoded by `encoder` (to a memory-mapped file when `emb_path` is given, so a million passages
    do not need to fit in RAM twice) and searched over those vectors, exactly where that is affordable
    (retrievers.nearest, which says how it searched in dense_info). index: `first_stage`, a Retriever
    over a build_index.py directory, serves its first stage (dense, BM25 or their mix): the candidates
    a reranker for that stage learns from (LCE).
    """

    def __init__(self, cfg, corpus, first_stage=None, corpus_file="", cache_dir=""):
        self.cfg, self.corpus, self.doc_ids = cfg, corpus, list(corpus)
        self.row = {d: i for i, d in enumerate(self.doc_ids)}
        self.first_stage, self.dense_info = first_stage, {}
        if "index" in cfg.strategy and first_stage is None:
            raise ValueError("strategy index needs the Retriever of a build_index.py directory (first_stage=)")
        self.bm25 = None
        if "bm25" in cfg.strategy:
            texts = (doc_text(corpus[d]) for d in self.doc_ids)
            self.bm25 = (corpus_bm25(self.doc_ids, texts, corpus_file, cfg.bm25_k1, cfg.bm25_b, cache_dir)
                         if cfg.bm25_backend == "sparse" and corpus_file
                         else BM25(self.doc_ids, texts, cfg.bm25_k1, cfg.bm25_b, backend=cfg.bm25_backend))

    def bm25_lists(self, texts, positives):
        """Per query: (ranked doc rows [max_rank], their scores, best positive score)."""
        out, batch = [], 256
        with tqdm(total=len(texts), desc="bm25", unit="query", mininterval=5) as bar:
            for start in range(0, len(texts), batch):
                ranked = self.bm25.search_many(texts[start:start + batch], self.cfg.max_rank)
                for text, pos, hits in zip(texts[start:start + batch], positives[start:start + batch], ranked):
                    best_positive = float(self.bm25.scores(text, [self.row[p] for p in pos]).max())
                    out.append((np.array([self.row[d] for d, _ in hits]), np.array([s for _, s in hits]),
                                best_positive))
                bar.update(len(ranked))
        return out

    def index_lists(self, texts):
        """Per query: (ranked doc rows, their scores, inf) as the index serves them. The served score
        (a mix's, say) is no similarity to a positive's, so max_score_ratio and semi-hard do not apply."""
        hits = self.first_stage.batch_retrieve(texts, self.cfg.max_rank)
        return [(np.array([self.row[d] for d, _ in h], dtype=np.int64), np.array([s for _, s in h]), np.inf)
                for h in hits]

    def dense_lists(self, encoder, texts, positives, batch_size, index=None, emb_path=None, doc_emb=None):
        """Per query: (ranked doc rows, their scores, best positive score) from `encoder`, searched
        in `index` (a FAISS index over this corpus, in corpus order) or in a fresh exact index over
        `doc_emb` (the corpus's embeddings by this encoder, encoded here when None)."""
        pos_ids = sorted({p for pos in positives for p in pos})
        if index is None and doc_emb is None:
            doc_emb = encode_corpus(encoder, CorpusTexts(self.corpus, self.doc_ids), batch_size, emb_path)
        if doc_emb is not None:
            pos_emb = {p: doc_emb[self.row[p]] for p in pos_ids}
        else:  # a given index may be approximate: the positives' own scores come from encoding them
            pos_emb = dict(zip(pos_ids, encoder.encode([doc_text(self.corpus[p]) for p in pos_ids], "passage",
                                                       batch_size)))
        q_emb = encoder.encode(texts, "query", batch_size)
        if index is None:  # exact over the vectors as they are, no copy, while that is affordable here
            scores, rows, self.dense_info = nearest(q_emb, doc_emb, self.cfg.max_rank)
        else:
            scores, rows = faiss_index.search(index, q_emb, self.cfg.max_rank)
        return [(r[r >= 0], s[r >= 0], max(float(q @ pos_emb[p]) for p in pos))
                for r, s, q, pos in zip(rows, scores, q_emb, positives)]


# A teacher scores this many queries' pairs per call: one query's few pairs at a time leave a GPU idle.
# The filtering is still per query, in strategy order.
TEACHER_CHUNK = 512


def mine(cfg, corpus, queries, positives, sources, encoder=None, teacher=None, index=None, emb_path=None,
         batch_size=64, doc_emb=None):
    """(records, stats) for every query in `queries` {qid: text} with `positives` {qid: set of ids}.

    Each strategy contributes its own count of negatives (cfg.strategy[i] -> cfg.num_negatives[i]);
    a document already taken by an earlier strategy is not taken twice. Filters, in order: labelled
    positives never; ranks skip_top+1..max_rank only; max_score_ratio > 0 drops candidates scoring
    above that fraction of the best positive's score; semi-hard keeps dense candidates scoring below
    the positive but within semi_hard_margin of it; with a teacher (cross-encoder), candidates it
    scores within teacher_margin of the best positive, or above it, are dropped as unlabelled
    positives (RocketQA's denoising) and every kept pair carries its teacher score.
    """
    qids = [q for q in queries if positives.get(q)]
    texts = [queries[q] for q in qids]
    pos_sets = [set(positives[q]) for q in qids]
    lists = {}
    if "bm25" in cfg.strategy:
        lists["bm25"] = sources.bm25_lists(texts, pos_sets)
    if "index" in cfg.strategy:
        lists["index"] = sources.index_lists(texts)
    if {"dense", "semi-hard"} & set(cfg.strategy):
        lists["dense"] = lists["semi-hard"] = sources.dense_lists(encoder, texts, pos_sets, batch_size, index,
                                                                  emb_path, doc_emb)
    rng = random.Random(cfg.seed)
    stats = dict(queries=len(qids), skipped_no_positive=len(queries) - len(qids), negatives=0,
                 short_queries=0, dropped_over_ratio=0, dropped_outside_semi_hard=0, dropped_by_teacher=0)
    if "dense" in lists and sources.dense_info:
        stats["dense_search"] = dict(sources.dense_info)  # exact, or the ANN used and its recall
    chunk = TEACHER_CHUNK if teacher is not None else 1
    taken = [set(p) for p in pos_sets]
    negatives = [[] for _ in qids]
    teacher_scores = [{} for _ in qids]

    def score(pairs):  # [(n, doc id)] -> their teacher scores, one batched call
        return teacher.score([texts[n] for n, _ in pairs], [doc_text(corpus[d]) for _, d in pairs], batch_size)

    with tqdm(total=len(qids), desc="select", unit="query", mininterval=5) as bar:
        for first in range(0, len(qids), chunk):
            part = range(first, min(first + chunk, len(qids)))
            if teacher is not None:
                pairs = [(n, p) for n in part for p in sorted(pos_sets[n])]
                for (n, p), s in zip(pairs, score(pairs)):
                    teacher_scores[n][p] = float(s)
            for source, count in zip(cfg.strategy, cfg.num_negatives):
                windows = {}
                for n in part:
                    window = _window(cfg, source, lists[source][n] if source in lists else None, sources, taken[n],
                                     rng, count, stats)
                    # A teacher scores twice as many as needed, so dropping the suspect ones still leaves enough.
                    pool = 2 * count if teacher is not None else count
                    if cfg.sampling == "random" and len(window) > pool:
                        window = sorted(rng.sample(window, pool), key=lambda c: c["rank"] or 0)
                    windows[n] = window[:pool] if teacher is not None else window
                if teacher is not None:
                    pairs = [(n, c["id"]) for n in part for c in windows[n]]
                    scored = iter(score(pairs))
                    for n in part:
                        t = [float(next(scored)) for _ in windows[n]]
                        limit = max(teacher_scores[n].values()) - cfg.teacher_margin
                        kept = [(c, s) for c, s in zip(windows[n], t) if s < limit]
                        stats["dropped_by_teacher"] += len(windows[n]) - len(kept)
                        windows[n] = [c for c, _ in kept]
                        teacher_scores[n].update((c["id"], s) for c, s in kept[:count])
                for n in part:
                    chosen = windows[n][:count]
                    taken[n].update(c["id"] for c in chosen)
                    negatives[n] += chosen
                    stats["short_queries"] += len(chosen) < count
            bar.update(len(part))
    records = []
    for n, (qid, text, pos) in enumerate(zip(qids, texts, pos_sets)):
        record = dict(qid=qid, query=text, positives=sorted(pos), negatives=negatives[n])
        if teacher is not None:
            record["teacher"] = teacher_scores[n]
        records.append(record)
        stats["negatives"] += len(negatives[n])
    return records, stats


def _window(cfg, source, ranked, sources, taken, rng, count, stats):
    """The candidates of one source that pass the rank, ratio and semi-hard filters, best first."""
    if source == "random":
        picked = []
        while len(picked) < count and len(taken) + len(picked) < len(sources.doc_ids):
            d = sources.doc_ids[rng.randrange(len(sources.doc_ids))]
            if d not in taken and all(d != c["id"] for c in picked):
                picked.append(dict(id=d, score=None, rank=None, source="random"))
        return picked
    rows, scores, best_positive = ranked
    out = []
    for rank, (row, score) in enumerate(zip(rows, scores), start=1):
        doc = sources.doc_ids[row]
        if rank <= cfg.skip_top or doc in taken:
            continue
        if cfg.max_score_ratio > 0 and score > cfg.max_score_ratio * best_positive:
            stats["dropped_over_ratio"] += 1
            continue
        if source == "semi-hard" and not best_positive - cfg.semi_hard_margin < score < best_positive:
            stats["dropped_outside_semi_hard"] += 1
            continue
        out.append(dict(id=doc, score=round(float(score), 6), rank=rank, source=source))
    return out


def write_records(path, records):
    """A training file, one record per line, swapped into place whole."""
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
