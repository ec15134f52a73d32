"""Memory: what labelled queries found, written into the index that serves queries like them.

A judged (query, document) pair says as directly as any label can that queries like this one want this
document. Gradient steps teach that to the encoder a little at a time; the memory writes it into what
is served, and the encoder stays as it was (nothing is re-encoded):

- dense: each judged document's stored vector moved toward its queries' embeddings,
  d' = normalise(d + strength * normalise(sum of grade * q)) (NUDGE's closed-form edit, normalised:
  Zeighami et al., ICLR 2025; bench/results/memory-cpu.md compares the variants);
- BM25: each judged document's indexed text followed by its queries' text, `repeat` times (document
  expansion, as doc2query does with generated queries; here they are real).

Strengths are chosen on val (common.decision.memory: none is always a candidate), and never from val's
or test's own judgements. A document no query found keeps its vector bit for bit.
An index directory holds its memory in memory.json: the queries, what each found, the strengths.
"""
import hashlib
import json
import os

import numpy as np

from common.data import DataError, _open_lines, read_jsonl, read_qrels, read_queries
from common.files import atomic_open

FILE = "memory.json"
NONE = {"dense": 0.0, "bm25": 0}


class Memory:
    """The judged pairs an index remembers: queries {qid: text} and found {doc id: {qid: grade}}
    (grades > 0 only), plus the strengths it is served at."""

    def __init__(self, queries=None, found=None, strengths=None):
        self.queries, self.found = dict(queries or {}), {d: dict(r) for d, r in (found or {}).items()}
        self.strengths = dict(strengths or NONE)

    @classmethod
    def from_qrels(cls, queries, qrels, doc_ids):
        """The memory of judged pairs {qid: {doc id: grade}}: a grade <= 0 or a document outside
        `doc_ids` adds nothing (counted in the returned skips)."""
        memory = cls()
        return memory, memory.add(queries, qrels, doc_ids)

    def add(self, queries, qrels, doc_ids):
        """Remember more judged pairs; returns {"pairs", "new", "skipped_grade", "skipped_doc"}: a pair
        already remembered counts once (its higher grade kept)."""
        known = doc_ids if isinstance(doc_ids, (set, dict)) else set(doc_ids)
        stats = {"pairs": 0, "new": 0, "skipped_grade": 0, "skipped_doc": 0}
        for qid, row in qrels.items():
            for doc_id, grade in row.items():
                if grade <= 0:
                    stats["skipped_grade"] += 1
                elif doc_id not in known:
                    stats["skipped_doc"] += 1
                else:
                    stats["pairs"] += 1
                    found = self.found.setdefault(doc_id, {})
                    stats["new"] += qid not in found
                    found[qid] = max(grade, found.get(qid, 0))
                    self.queries[qid] = queries[qid]
        return stats

    def __len__(self):
        return sum(len(r) for r in self.found.values())

    def empty(self):
        return not self.found

    def rows(self, doc_ids):
        """Positions in `doc_ids` of the remembered documents, in that order."""
        return [i for i, d in enumerate(doc_ids) if d in self.found]

    def on(self):
        """Whether the strengths serve any of it."""
        return bool(self.strengths["dense"] or self.strengths["bm25"]) and not self.empty()

    def describe(self):
        if self.empty():
            return "no memory"
        what = f"{len(self.queries)} queries remembered for {len(self.found)} docs"
        if not self.on():
            return f"{what}, served at strength 0 (no memory)"
        return f"{what}: dense strength {self.strengths['dense']:g}, BM25 repeat {self.strengths['bm25']}"

    def save(self, directory, extra=None):
        with atomic_open(os.path.join(directory, FILE)) as f:
            json.dump({"strengths": self.strengths, "queries": len(self.queries), "docs": len(self.found),
                       "pairs": len(self), **(extra or {}), "query_text": self.queries, "found": self.found},
                      f, ensure_ascii=False)
            f.write("\n")

    @classmethod
    def load(cls, directory):
        """The memory saved in an index directory; an empty one when it has none."""
        path = os.path.join(directory, FILE)
        if not os.path.isfile(path):
            return cls()
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        return cls(saved["query_text"], saved["found"], saved["strengths"])

    def why(self, doc_id):
        """The remembered queries that lift a document, best grade first: [(qid, text, grade)]."""
        row = self.found.get(doc_id, {})
        return [(q, self.queries[q], g) for q, g in sorted(row.items(), key=lambda item: -item[1])]


def read_judgements(path, queries_file):
    """(queries {qid: text}, qrels {qid: {doc id: grade}}, counts {"rows", "duplicates",
    "unknown_query"}) from a file of judged queries:
    JSONL {"query": text, "doc_id": id, "grade": 1} per line (grade optional; "query_id" optional,
    else one is made from the text), or TREC / BEIR qrels (qid [0] doc-id grade) whose query ids name
    `queries_file`'s queries. A row naming an unknown query id is a counted skip; a duplicate counts
    once. An empty file is a DataError."""
    first = next(_open_lines(path), None)
    if first is None:
        raise DataError(f"{path}: empty; --add_queries needs judged queries: JSONL "
                        '{"query": ..., "doc_id": ..., "grade": 1} per line, or qrels (query-id doc-id grade)')
    queries, qrels, counts = {}, {}, {"rows": 0, "duplicates": 0, "unknown_query": 0}
    if first[1].lstrip().startswith("{"):
        for lineno, obj in read_jsonl(path):
            text, doc_id, grade = obj.get("query"), obj.get("doc_id"), obj.get("grade", 1)
            if not isinstance(text, str) or not text.strip() or doc_id in (None, ""):
                raise DataError(f"{path}:{lineno}: each line needs a non-empty \"query\" text and a \"doc_id\" "
                                '(and optionally "grade", an integer, 1 by default)')
            if not isinstance(grade, int) or isinstance(grade, bool):
                raise DataError(f"{path}:{lineno}: grade {grade!r} is not an integer; use 1+ for found, 0 for not")
            qid = str(obj.get("query_id") or "added-" + hashlib.sha1(text.strip().encode()).hexdigest()[:12])
            queries[qid] = text.strip()
            row = qrels.setdefault(qid, {})
            counts["rows"] += 1
            counts["duplicates"] += str(doc_id) in row
            row[str(doc_id)] = max(grade, row.get(str(doc_id), grade))
        return queries, qrels, counts
    known = read_queries(queries_file)
    for qid, row in read_qrels(path).items():  # a duplicate row there is counted by its warning
        counts["rows"] += len(row)
        if qid in known:
            queries[qid], qrels[qid] = known[qid], row
        else:
            counts["unknown_query"] += len(row)
    return queries, qrels, counts


def saved_extra(directory):
    """What memory.json holds beside the pairs (split, model, the files added since)."""
    path = os.path.join(directory, FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return {k: v for k, v in saved.items()
            if k not in ("strengths", "queries", "docs", "pairs", "query_text", "found")}


def directions(memory, doc_ids, query_emb):
    """(rows, [n, dim] unit directions): for each remembered document (its row in doc_ids), the
    normalised grade-weighted sum of its queries' embeddings (`query_emb` {qid: vector})."""
    rows = memory.rows(doc_ids)
    dim = len(next(iter(query_emb.values()))) if query_emb else 0
    out = np.zeros((len(rows), dim), np.float32)
    for i, r in enumerate(rows):
        for qid, grade in memory.found[doc_ids[r]].items():
            out[i] += grade * query_emb[qid]
    return np.asarray(rows, np.int64), _normalise(out)


def edit(emb, rows, dirs, strength):
    """A float32 copy of emb with the rows `rows` moved toward `dirs` by `strength` and renormalised;
    strength 0 returns emb's values unchanged, every other row is copied bit for bit. Directions wider
    than emb (an index of cut vectors: build_index.py --dim) are cut alike."""
    out = np.array(emb, dtype=np.float32)
    if strength and len(rows):
        if dirs.shape[1] > out.shape[1]:
            dirs = _normalise(dirs[:, :out.shape[1]])
        out[rows] = _normalise(out[rows] + strength * dirs)
    return out


def expand(texts, doc_ids, memory, repeat):
    """Each document's text followed by its remembered queries' text, `repeat` times (0: texts as given),
    made one at a time as they are read (BM25 reads them once)."""
    found = {r: " " + " ".join(memory.queries[q] for q in memory.found[doc_ids[r]])
             for r in memory.rows(doc_ids)} if repeat else {}
    for r, text in enumerate(texts):
        yield text + found[r] * repeat if r in found else text


def touched(memory, qrels):
    """The remembered documents `qrels` judged relevant (grade > 0), sorted: those whose memory adding
    them changed."""
    return sorted({d for row in qrels.values() for d, g in row.items() if g > 0 and d in memory.found})


def remembered_queries(found, qrels):
    """The queries of `qrels` with a relevant document among `found` (a memory's found docs, or the
    train split's relevant ones): what a memory can help, and their part of a report."""
    return {q for q, row in qrels.items() if any(g > 0 and d in found for d, g in row.items())}


def _normalise(x):
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
