"""BEIR-layout data I/O: the one internal format every script reads and writes.

    <dir>/corpus.jsonl        {"_id", "title", "text"}   (title optional)
    <dir>/queries.jsonl       {"_id", "text"}
    <dir>/qrels/<split>.tsv   query-id <tab> corpus-id <tab> score, with a header line

A corpus prepared from a folder of documents (prepare_data.py) holds passages that name their
document: {"_id", "title", "text", "doc", "page", "section", "anchor"}. Its qrels may then name a
document ("manual.pdf") or one of its pages ("manual.pdf#page=3") instead of a passage: the row holds
every passage of it (what training and the memory use) and is scored at the document or page it names,
a ranking's best passage of each standing for it (`Judged`).

Readers accept CRLF line endings and a UTF-8 BOM. Bad input raises DataError naming the file,
the line and the fix (a last line cut short says the file looks truncated); empty texts are
skipped with one counted warning, as BEIR users expect. Unknown fields ("metadata") are ignored.
Writers go through a temporary name and a rename, so a failure never leaves a half-written file.
"""
import json
import math
import os
import random
import re
from collections.abc import Sequence

from tqdm import tqdm

from common.files import atomic_dir, atomic_open
from common.run import UserError, warn


class DataError(UserError, ValueError):
    pass


class EmptySplit(DataError):
    """A split whose qrels hold no relevant row: nothing to train on or evaluate."""


# Appended to an error on the last line when the file does not end with a newline.
TRUNCATED = "; the file ends mid-line, so it looks truncated: write or download it again"


def _open_lines(path):
    """Yield (line number, text, whether a newline ended it) with the BOM and line endings removed;
    blank lines skipped. Only a file's last line can lack its newline."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a file")
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    size = os.path.getsize(path)
    # A corpus of millions of lines takes a while to read: a bar with an ETA, by bytes, updated every
    # 10,000 lines (per line would cost more than the reading).
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"read {os.path.basename(path)}",
                                     disable=size < BAR_ABOVE, leave=False) as bar:
        done = 0
        for lineno, raw in enumerate(f, 1):
            done += len(raw)
            if lineno % 10_000 == 0:
                bar.update(done - bar.n)
            ended = raw.endswith(b"\n")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                cut = not ended and e.reason == "unexpected end of data"  # a multi-byte character cut short
                raise DataError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}"
                                f"{TRUNCATED if cut else '; re-save the file as UTF-8'}") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line, ended


BAR_ABOVE = 256 * 2**20  # bytes: a file this large is read with a progress bar


def read_jsonl(path):
    """Yield (line number, dict) for each non-blank line of a JSONL file."""
    for lineno, line, ended in _open_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            cut = not ended and (e.msg.startswith("Unterminated") or e.pos >= len(line.rstrip()))
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
                            f"{TRUNCATED if cut else '; each line must be one complete JSON object'}") from None
        except (ValueError, RecursionError) as e:  # json.loads' other failures: past int's digit limit, deep nesting
            what = "is nested too deeply" if isinstance(e, RecursionError) else "holds a number too long to read"
            raise DataError(f"{path}:{lineno}: the JSON {what}; each line must be one plain JSON object") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def field(obj, name, path, lineno, required=True, aliases=()):
    """A string field of a JSON record; ids may be given as numbers."""
    for key in (name, *aliases):
        if key in obj and obj[key] is not None:
            value = obj[key]
            if (isinstance(value, bool) or not isinstance(value, (str, int, float))
                    or isinstance(value, float) and not math.isfinite(value)):  # json.loads takes NaN, Infinity
                got = repr(value) if isinstance(value, float) else type(value).__name__
                raise DataError(f"{path}:{lineno}: field '{key}' must be a string, got {got}")
            value = str(value)
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:  # a JSON "\ud800" escape: no writer or tokenizer takes it
                    raise DataError(f"{path}:{lineno}: field '{key}' holds an unpaired surrogate "
                                    f"\\u{ord(value[e.start]):04x}, which is not text; fix or remove it") from None
            return value
    if required:
        names = " or ".join(repr(k) for k in (name, *aliases))
        raise DataError(f"{path}:{lineno}: missing field {names}; add it to every line")
    return ""


def check_id(value, what, path, lineno):
    """Ids go into tab-separated qrels and one-per-line id files, where these would not survive."""
    if not value or value != value.strip() or any(c in value for c in "\t\r\n"):
        raise DataError(f"{path}:{lineno}: {what} {value!r} is empty or has a tab, a line break or spaces "
                        "at either end; ids must survive tab-separated qrels files")
    return value


PASSAGE_FIELDS = {"doc": str, "page": int, "section": str, "anchor": str}  # kept where a line has them


def read_corpus(path, skipped=None):
    """{doc id: {"title", "text"}, plus PASSAGE_FIELDS where the line has them}. Empty docs are skipped
    (their ids added to `skipped`)."""
    corpus, empty, skipped = {}, 0, set() if skipped is None else skipped
    for lineno, obj in read_jsonl(path):
        doc_id = check_id(field(obj, "_id", path, lineno), "_id", path, lineno)
        title = field(obj, "title", path, lineno, required=False).strip()
        text = field(obj, "text", path, lineno).strip()
        if doc_id in corpus or doc_id in skipped:
            raise DataError(f"{path}:{lineno}: duplicate _id '{doc_id}'; ids must be unique")
        if not text and not title:
            empty += 1
            skipped.add(doc_id)
            continue
        corpus[doc_id] = {"title": title, "text": text}
        for key, kind in PASSAGE_FIELDS.items():
            if key in obj:
                value = obj[key]
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise DataError(f"{path}:{lineno}: {key!r} should be a {kind.__name__}, got {value!r}")
                corpus[doc_id][key] = value
    if empty:
        warn(f"{path}: skipped {empty} empty document(s)")
    if not corpus:
        raise DataError(f"{path}: no documents; the corpus needs at least one non-empty line")
    return corpus


def read_queries(path, skipped=None):
    """{query id: text}. Empty queries are skipped (their ids added to `skipped`)."""
    queries, empty, skipped = {}, 0, set() if skipped is None else skipped
    for lineno, obj in read_jsonl(path):
        qid = check_id(field(obj, "_id", path, lineno), "_id", path, lineno)
        text = field(obj, "text", path, lineno).strip()
        if qid in queries or qid in skipped:
            raise DataError(f"{path}:{lineno}: duplicate _id '{qid}'; ids must be unique")
        if not text:
            empty += 1
            skipped.add(qid)
            continue
        queries[qid] = text
    if empty:
        warn(f"{path}: skipped {empty} empty quer(y/ies)")
    if not queries:
        raise DataError(f"{path}: no queries; the file needs at least one line with a non-empty text")
    return queries


def read_qrels(path, queries=None, corpus=None, skipped=(), units=()):
    """{query id: {doc id: grade}}. Ids are checked against `queries`/`corpus` when given (or `units`:
    the documents and pages of a corpus of passages); rows naming a skipped (empty) query or doc are
    dropped with a counted warning."""
    qrels, dropped, dupes, first = {}, 0, 0, True
    for lineno, line, ended in _open_lines(path):
        line = line.rstrip()  # a trailing tab is not an empty fourth column
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) == 4:  # TREC qrels: qid iter docid grade
            cols = [cols[0], cols[2], cols[3]]
        if len(cols) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns "
                            f"(query-id, corpus-id, score), got {len(cols)}{'' if ended else TRUNCATED}")
        qid, doc_id, grade_text = (c.strip() for c in cols)
        header, first = first, False
        try:
            grade_float = float(grade_text)
            if not grade_float.is_integer():
                raise ValueError
            grade = int(grade_float)
        except ValueError:
            if header and not (queries is not None and qid in queries):  # a header, not a known row's bad score
                continue
            shown = grade_text if len(grade_text) <= 20 else grade_text[:20] + "..."
            raise DataError(f"{path}:{lineno}: score {shown!r} is not an integer grade; "
                            f"use 0 for not relevant, 1+ for relevant{'' if ended else TRUNCATED}") from None
        if not qid or not doc_id:
            raise DataError(f"{path}:{lineno}: empty {'query-id' if not qid else 'corpus-id'}; every row names both")
        if qid in skipped or doc_id in skipped:
            dropped += 1
            continue
        if queries is not None and qid not in queries:
            raise DataError(f"{path}:{lineno}: query-id '{qid}' is not in queries.jsonl; "
                            "add the query or remove the row")
        if corpus is not None and doc_id not in corpus and doc_id not in units:
            raise DataError(f"{path}:{lineno}: corpus-id '{doc_id}' is not in corpus.jsonl; "
                            "add the document or remove the row")
        row = qrels.setdefault(qid, {})
        if doc_id in row:
            dupes += 1
        row[doc_id] = grade
    if dropped:
        warn(f"{path}: dropped {dropped} row(s) naming an empty query or document")
    if dupes:
        warn(f"{path}: {dupes} duplicate (query-id, corpus-id) row(s); the last grade wins")
    return qrels


def page_unit(doc, page):
    return f"{doc}#page={page}"


def document_units(corpus):
    """{document or page: [its passage ids]} of a corpus of passages; {} for a corpus of documents."""
    units = {}
    for pid, p in corpus.items():
        if "doc" in p:
            units.setdefault(p["doc"], []).append(pid)
            if p.get("page"):
                units.setdefault(page_unit(p["doc"], p["page"]), []).append(pid)
    return units


class Judged(dict):
    """A qrels row that names documents or pages: as a dict, every passage of them with its grade (what
    training and the memory read); `units`, the judgements as made; `best_per_unit`, a run row scored the
    way passage retrieval of long documents is: each document's (or judged page's) best passage stands
    for it (metrics.query_metrics reads both)."""

    def __init__(self, row, units, corpus):
        super().__init__()
        named = {u for u in row if u in units and u not in corpus}  # documents and pages; the rest are passages
        self.corpus, self.units = corpus, {}
        self.paged = {u.rsplit("#page=", 1)[0] for u in named if "#page=" in u}
        for unit, grade in row.items():
            for pid in units[unit] if unit in named else [unit]:
                self[pid] = max(grade, self.get(pid, grade))
            key = unit if unit in named else self.unit(unit)
            self.units[key] = max(grade, self.units.get(key, grade))

    def unit(self, pid):
        p = self.corpus.get(pid)
        if p is None or "doc" not in p:
            return pid
        return page_unit(p["doc"], p.get("page", 0)) if p["doc"] in self.paged else p["doc"]

    def best_per_unit(self, run_row):
        best = {}
        for pid, score in run_row.items():
            unit = self.unit(pid)
            if unit not in best or score > best[unit]:
                best[unit] = score
        return best


def place(passage):
    """Where a passage sits, for a person: "manual.pdf p.3 › Installing #install"; "" for a corpus of documents."""
    if "doc" not in passage:
        return ""
    return (passage["doc"] + (f" p.{passage['page']}" if passage.get("page") else "")
            + (f" › {passage['section']}" if passage.get("section") else "")
            + (f" #{passage['anchor']}" if passage.get("anchor") else ""))


def judged(qrels, corpus, units):
    """`qrels` with each row that names a document or a page (in `units`) made `Judged`."""
    if units:
        for qid, row in qrels.items():
            if any(d in units and d not in corpus for d in row):
                qrels[qid] = Judged(row, units, corpus)
    return qrels


def splits(data_dir):
    qdir = os.path.join(data_dir, "qrels")
    if not os.path.isdir(qdir):
        return []
    return sorted(f[:-4] for f in os.listdir(qdir) if f.endswith(".tsv"))


def sample_queries(queries, qrels, n, seed=0):
    """(queries, qrels) of a seeded sample of n queries (all of them when n is 0 or covers them). Ids
    follow the corpus's order (a BEIR file, or prepare_data.py's), so the first n would come from a
    few documents or modules, not from the whole split."""
    if not n or len(queries) <= n:
        return queries, qrels
    keep = sorted(random.Random(seed).sample(sorted(queries), n))
    return {q: queries[q] for q in keep}, {q: qrels[q] for q in keep}


def generated(data_dir):
    """What prepare_data.py says of a dataset whose train split a language model wrote
    (--pseudo_queries=generate: its generator, counts and settings), or None for judged train queries."""
    try:
        with open(os.path.join(data_dir, "prepare.json"), encoding="utf-8") as f:
            return json.load(f).get("details", {}).get("generated")
    except (OSError, ValueError):
        return None


def load_val(data_dir, without):
    """(queries, qrels) of the val split, or ({}, {}) when there is none or it is empty, with one
    warning saying so and what the caller does `without` it."""
    if "val" in splits(data_dir):
        try:
            return load_beir(data_dir, "val")[1:]
        except EmptySplit as e:
            warn(f"{e}: {without}")
            return {}, {}
    warn(f"{data_dir}: no val split: {without}")
    return {}, {}


FOLDS = 5  # pooled choices' memory is cross-validated in this many folds (common/decision.py)


def load_train(data_dir):
    """(queries, qrels) of the train split, or None when there is none or it is empty."""
    return load_split(data_dir, "train")


def load_split(data_dir, split):
    """(queries, qrels) of a split, or None when there is none or it is empty."""
    if split not in splits(data_dir):
        return None
    try:
        return load_beir(data_dir, split)[1:]
    except EmptySplit:
        return None


def pool_sources(data_dir):
    """(train, generated): what common.decision.pooled pools a small val with. The train split's (queries, qrels),
    or, where a language model wrote it, None and the "generated" split's: the questions prepare_data.py keeps for
    choosing the mix (they reuse their passage's words least); a generated train split is never pooled."""
    if generated(data_dir):
        return None, load_split(data_dir, "generated")
    return load_train(data_dir), None


def folds(qids, k=FOLDS, seed=0):
    """`qids` dealt into k seeded folds of near-equal size (fewer when there are fewer queries)."""
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    k = max(1, min(k, len(order)))
    return [set(order[i::k]) for i in range(k)]


def load_beir(data_dir, split):
    """(corpus, queries of the split, qrels of the split) from a BEIR directory."""
    qrels_path = os.path.join(data_dir, "qrels", f"{split}.tsv")
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: not a directory; --data needs a BEIR directory (corpus.jsonl, queries.jsonl, "
                        "qrels/), e.g. one written by prepare_data.py")
    if not os.path.exists(qrels_path):  # a directory in its place gets read_qrels' error
        have = ", ".join(splits(data_dir)) or "none"
        raise DataError(f"{qrels_path}: no such split (this directory has: {have}); "
                        "run prepare_data.py on the source to make train/val/test")
    skipped = set()
    corpus = read_corpus(os.path.join(data_dir, "corpus.jsonl"), skipped)
    queries = read_queries(os.path.join(data_dir, "queries.jsonl"), skipped)
    units = document_units(corpus)
    qrels = judged(read_qrels(qrels_path, queries, corpus, skipped, units), corpus, units)
    if not any(g > 0 for row in qrels.values() for g in row.values()):
        raise EmptySplit(f"{qrels_path}: split '{split}' has no relevant (score > 0) rows; nothing to "
                         f"{'train on' if split == 'train' else 'evaluate'}")
    return corpus, {q: queries[q] for q in qrels}, qrels


def _finite_number(v):
    """json.loads also gives NaN, Infinity and ints past float's range; none is a usable score."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def read_training_file(path, corpus):
    """Training records of a mined file (one JSON object per line, written by mine_negatives.py):

        {"qid": "q1", "query": "text", "positives": ["d1"], "negatives": ["d7", {"id": "d9", ...}],
         "teacher": {"d1": 7.2, "d7": 1.3}}            # teacher: optional, for margin_mse

    Negatives are ids or objects with an "id" (their mining scores and ranks ride along unused).
    """
    records, first_line = [], {}
    for lineno, obj in read_jsonl(path):
        qid = field(obj, "qid", path, lineno, aliases=("query_id", "_id"))
        query = field(obj, "query", path, lineno, aliases=("text",))
        if qid in first_line:  # a second line would train on the query twice
            raise DataError(f"{path}:{lineno}: query '{qid}' again (first on line {first_line[qid]}); "
                            "each query once per file: mine again")
        first_line[qid] = lineno
        if not query.strip():
            raise DataError(f"{path}:{lineno}: query '{qid}' has an empty text; mine again from non-empty queries")
        ids = {}
        for key in ("positives", "negatives"):
            value = obj.get(key, [])
            if not isinstance(value, list):
                raise DataError(f"{path}:{lineno}: '{key}' must be a list of doc ids, got {type(value).__name__}")
            ids[key] = []
            for v in value:
                doc = v.get("id") if isinstance(v, dict) else v
                if isinstance(doc, bool) or not isinstance(doc, (str, int)):
                    raise DataError(f"{path}:{lineno}: '{key}' holds {json.dumps(v)[:60]}; each item is a doc id "
                                    'or an object with an "id"')
                ids[key].append(str(doc))
            unknown = [d for d in ids[key] if d not in corpus]
            if unknown:
                raise DataError(f"{path}:{lineno}: {key} id '{unknown[0]}' is not in the corpus; mine again "
                                "against this dataset's corpus.jsonl")
        if not ids["positives"]:
            raise DataError(f"{path}:{lineno}: query '{qid}' has no positives; every line needs at least one")
        teacher = obj.get("teacher")
        teacher = {} if teacher is None else teacher
        if not isinstance(teacher, dict) or not all(_finite_number(v) for v in teacher.values()):
            raise DataError(f"{path}:{lineno}: 'teacher' must map doc ids to finite numeric scores")
        negatives = [d for d in ids["negatives"] if d not in set(ids["positives"])]
        records.append(dict(qid=qid, query=query, positives=ids["positives"], negatives=negatives,
                            teacher={str(k): float(v) for k, v in teacher.items()}, line=lineno))
    if not records:
        raise DataError(f"{path}: no training records; run mine_negatives.py again")
    return records


def doc_text(doc):
    """The text a document is encoded and indexed as: title + " " + text."""
    return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]


def doc_snippets(corpus_file, doc_ids, words=12):
    """{doc id: its title, or its first `words` words} of the few `doc_ids`, read from corpus_file without
    parsing the other lines (a report names a handful of documents of a corpus of millions)."""
    wanted, found = set(doc_ids), {}
    if not wanted:
        return found
    with open(corpus_file, encoding="utf-8") as f:
        for line in f:
            key = _unescaped(m.group(1)) if (m := _ID.match(line)) else None
            if key is not None and key not in wanted:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("_id") in wanted:
                text = (doc.get("title") or "").strip() or " ".join(str(doc.get("text", "")).split()[:words])
                found[doc["_id"]] = text
                if len(found) == len(wanted):
                    break
    return found


_ID = re.compile(r'\s*\{\s*"_id"\s*:\s*"((?:[^"\\]|\\.)*)"')  # a line that opens with its id (as written here)


def _unescaped(raw):
    """A JSON string's contents, unescaped; None where an escape is not valid JSON (the line is then parsed
    whole)."""
    try:
        return json.loads(f'"{raw}"')
    except ValueError:
        return None


class CorpusTexts(Sequence):
    """doc_text of each of `doc_ids` in `corpus`, made when asked (an index, a slice, an iteration): a list
    of them would hold a second copy of every titled document beside the corpus."""

    def __init__(self, corpus, doc_ids):
        self.corpus, self.doc_ids = corpus, doc_ids

    def __len__(self):
        return len(self.doc_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [doc_text(self.corpus[d]) for d in self.doc_ids[i]]
        return doc_text(self.corpus[self.doc_ids[i]])


# ---------------------------------------------------------------------------- writing

def write_jsonl(path, records):
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_corpus(path, corpus):
    write_jsonl(path, ({"_id": i, "title": d.get("title", ""), "text": d["text"],
                        **{k: d[k] for k in PASSAGE_FIELDS if k in d}} for i, d in corpus.items()))


def write_queries(path, queries):
    write_jsonl(path, ({"_id": q, "text": t} for q, t in queries.items()))


def write_qrels(path, qrels):
    with atomic_open(path) as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, row in qrels.items():
            for doc_id, grade in row.items():
                f.write(f"{qid}\t{doc_id}\t{grade}\n")


def write_beir(out_dir, corpus, queries, qrels_by_split, more=None):
    """Write a whole BEIR directory atomically (the old one stays until the new one is complete); `more(tmp)`
    writes what else belongs in it."""
    with atomic_dir(out_dir) as tmp:
        if more:
            more(tmp)
        write_corpus(os.path.join(tmp, "corpus.jsonl"), corpus)
        write_queries(os.path.join(tmp, "queries.jsonl"), queries)
        for split, qrels in qrels_by_split.items():
            write_qrels(os.path.join(tmp, "qrels", f"{split}.tsv"), qrels)
