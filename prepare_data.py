"""Write a dataset in BEIR layout with reproducible train/val/test splits.

    python prepare_data.py --out=data/python-source                        # offline: local stdlib
    python prepare_data.py --source=../shared/data/scifact --out=data/scifact
    python prepare_data.py --beir=scifact --out=data/scifact               # downloads once
    python prepare_data.py --source=pairs.jsonl --out=data/pairs           # {"question", "answer"}
    python prepare_data.py --source=src/ --format=python-source --out=data/src
    python prepare_data.py --source=~/papers --out=data/papers             # a folder of documents
    # label-free: queries made from the corpus alone (any source; its own queries and qrels unread)
    python prepare_data.py --source=data/scifact --pseudo_queries=ict,crop --out=data/scifact-pseudo
    python prepare_data.py --source=corpus.jsonl --pseudo_queries=generate --generator=DOC2QUERY_T5_DIR

Sources (--format=auto picks one):
    BEIR directory   corpus.jsonl + queries.jsonl + qrels/*.tsv; existing splits are kept,
                     dev becomes val, and val is carved from train when there is none.
    QA pairs         .jsonl of {"question", "answer"} (or {"query", "positive"}), optional "title".
    code pairs       .jsonl of {"query", "code"}.
    python-source    docstring -> function pairs from a Python source tree (default: the stdlib),
                     split by module file so that no file lands in two splits.
    corpus           a corpus.jsonl alone ({"_id", "title", "text"} per line): only with pseudo_queries.
    documents        a folder (no corpus.jsonl) of PDF, HTML, Markdown, rST, DOCX and text files, read into
                     passages that fit --model's encoder (common/documents.py, common/folder.py); beside
                     them, questions.jsonl ({"question", "files": [paths in the folder], "page", "split"};
                     without files, a question without judgements) and questions.txt (one a line, unjudged).
                     Qrels name the file (or "file#page=N"); a hit on any of its passages counts for it.
                     A re-run parses only the files whose bytes changed, and rewrites nothing when none did.

With --pseudo_queries (common/pseudo_queries.py) only the source's documents are read. Each
document gives queries_per_doc (query, positive) pairs per method; the corpus written is those
positives, every positive made from one document counts as relevant to every query made from it,
and val is carved by document. There is no test split: test the adapted model on a labelled one
(`make adapt` evaluates on the source's test split, which it never trains or tunes on).

Output: DIR/corpus.jsonl, DIR/queries.jsonl, DIR/qrels/{train,val,test}.tsv, DIR/prepare.json (and for a
folder, DIR/documents.jsonl: each file's hash and passages; DIR/skipped.tsv: each file skipped, and why).
The directory is swapped into place only when complete, so a failed run leaves the old one.
Splits are seeded (--seed) and split by query, so the same seed gives the same files.
"""
import ast
import hashlib
import json
import os
import posixpath
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import textwrap
import time
import tokenize
import urllib.request
import warnings
import zipfile
from collections import Counter

from common import decision, folder
from common.config import ConfigError, check_choice, load_config
from common.data import (DataError, check_id, doc_text, document_units, field, page_unit, read_corpus, read_jsonl,
                         read_qrels, read_queries, splits, write_beir, write_jsonl)
from common.files import write_json
from common.pseudo_queries import METHODS, crop, ict, title_query
from common.run import UserError, cli, git_commit, warn

DEFAULTS = dict(
    # what to read
    source="python-source",  # BEIR dir, .jsonl of pairs, a .py tree (with format=python-source), or python-source
    format="auto",           # auto | beir | qa | code | python-source | documents
    beir="",                 # a BEIR dataset name to download instead, e.g. scifact
    beir_url="https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip",
    cache_dir="data/.cache",  # where --beir downloads are unzipped and reused
    # where to write
    out="",                  # default: data/<source name>
    # splits
    seed=0,
    val_fraction=0.1,        # of train queries (BEIR), of queries (pairs), of module files (python-source)
    test_fraction=0.1,       # unused for BEIR, whose test split is kept as shipped
    # python-source
    python_root="",          # source tree to scan; default: this Python's standard library
    min_query_words=4,       # shorter docstring summaries ("Return x.") make vague queries
    max_doc_chars=4000,      # the encoder sees ~256 tokens anyway; 0 keeps whole functions
    # documents (a folder of PDF, HTML, Markdown, rST, DOCX, text): passages sized to this model's tokenizer
    model="all-MiniLM-L6-v2",
    passage_tokens=0,        # 0: the model's own passage length, title and heading included
    passage_overlap=0,       # tokens of whole sentences repeated from one passage into the next: none, as 32 or
    #                          64 bought nothing beyond noise on SciFact's train split (bench/passage_overlap.sh)
    # label-free: training queries made from the documents (the source's own queries are not read)
    pseudo_queries=[],       # title | ict | crop | generate, e.g. --pseudo_queries=ict,crop; [] = the source's queries
    queries_per_doc=1,       # per method and document (title: one, the document has one title)
    max_pseudo_docs=0,       # > 0: a seeded sample of this many documents to make queries from
    ict_remove_prob=0.9,     # ict: how often the query sentence is cut out of its passage
    crop_min_ratio=0.1,      # crop: each of the two spans is crop_min_ratio..crop_max_ratio of the words
    crop_max_ratio=0.5,
    # generate: questions a language model writes for each passage become the train split (the source's corpus,
    # its judged questions as val and its test split kept; common/generator.py)
    generator="",            # gemma3-270m | smollm2 (offline packages), a .gguf file, a model directory or hub name:
    #                          a causal LM (few-shot prompt) or a seq2seq doc2query model (the passage alone)
    prompt="",               # "" = configs/prompts/question.txt; a file with {examples} and {passage}
    prompt_examples=3,       # few-shot examples from the data's own judged questions when it has them
    generator_batch_size=16,
    generator_passage_tokens=256,  # the passage as the generator reads it
    generator_new_tokens=32,  # a question's length at most
    generate_below=50,       # with a generator named, a source with fewer judged questions outside test than this gets
    #                          generated ones: to train on and remember, weighed on its judged ones (val), and with
    #                          none, to choose the mix of dense and BM25 on (common/decision.py pooled); 0 = only
    #                          --pseudo_queries=generate writes them
    generate_sample=1000,    # with no judged question to weigh them, only the mix is chosen on them: questions for a
    #                          seeded sample of this many passages choose it as all do (bench/results/generated-cpu.md),
    #                          in a fraction of the time; 0 = every passage
    roundtrip_k=1,           # keep a question only when the zero-shot hybrid ranks its passage in its top k; 0 = all.
    #                          1 lost least on val of 0, 1, 3, 10 (bench/results/generated-cpu.md)
    val_queries=-1,          # the source's judged questions (not test) as val: -1 all, 0 none (label-free), N a sample
    device="auto",           # where the generator runs
)

FORMATS = ("auto", "beir", "qa", "code", "python-source", "corpus", "documents")
SPLIT_ORDER = ("train", "val", "test")
# (query key, its aliases, document key, its aliases) per pairs format.
PAIR_KEYS = {"qa": ("question", ("query",), "answer", ("positive",)),
             "code": ("query", (), "code", ())}
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


# ---------------------------------------------------------------------------- splitting

def carve(ids, fractions, seed):
    """{split: ids} from a seeded shuffle of the sorted ids; each (split, fraction) takes its share
    in order and train keeps the rest. A non-zero fraction gets at least one id while train keeps one."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    parts, start = {}, 0
    for split, fraction in fractions:
        if fraction <= 0:
            continue
        want = max(1, round(fraction * len(order)))  # a small set still gets one
        k = max(0, min(want, len(order) - start - 1))  # and train always keeps one
        parts[split] = order[start:start + k]
        start += k
    parts["train"] = order[start:]
    return parts


def ordered(qrels_by_split):
    """train, val, test first, then any other split the source had, for stable files and printing."""
    rest = sorted(s for s in qrels_by_split if s not in SPLIT_ORDER)
    return {s: qrels_by_split[s] for s in (*SPLIT_ORDER, *rest) if s in qrels_by_split}


def build(rows, split_names, same_doc=lambda title, text: (title, text)):
    """(corpus, queries, qrels by split) from (split, query, title, text) rows. Documents with the
    same `same_doc` key become one (the first title wins), identical queries within a split become
    one with several positives; ids follow first appearance so the same rows give the same ids.
    Every split in `split_names` is present, empty or not, so that main can report empty ones."""
    corpus, doc_ids, queries, query_ids = {}, {}, {}, {}
    qrels = {split: {} for split in split_names}
    for split, query, title, text in rows:
        key = same_doc(title, text)
        doc_id = doc_ids.get(key)
        if doc_id is None:
            doc_id = doc_ids[key] = f"d{len(doc_ids)}"
            corpus[doc_id] = {"title": title, "text": text}
        qid = query_ids.get((split, query))
        if qid is None:
            qid = query_ids[split, query] = f"q{len(query_ids)}"
            queries[qid] = query
        qrels[split].setdefault(qid, {})[doc_id] = 1
    return corpus, queries, ordered(qrels)


def pair_fractions(cfg):
    return [("test", cfg.test_fraction), ("val", cfg.val_fraction)]


# ---------------------------------------------------------------------------- BEIR directory

def load_beir_dir(path, cfg):
    skipped = set()
    corpus = read_corpus(os.path.join(path, "corpus.jsonl"), skipped)
    all_queries = read_queries(os.path.join(path, "queries.jsonl"), skipped)
    units = document_units(corpus)
    names = splits(path)
    if not names:
        raise DataError(f"{path}/qrels: no <split>.tsv files; a BEIR directory needs qrels/train.tsv "
                        "and/or qrels/test.tsv")
    if "dev" in names and "val" in names:
        raise DataError(f"{path}/qrels: has both dev.tsv and val.tsv; dev is written as val, so remove one")
    qrels = {("val" if s == "dev" else s): read_qrels(os.path.join(path, "qrels", f"{s}.tsv"),
                                                      all_queries, corpus, skipped, units)
             for s in names}
    if "val" not in qrels:
        carve_val(qrels, cfg, path)
    used = {qid for rows in qrels.values() for qid in rows}
    queries = {qid: text for qid, text in all_queries.items() if qid in used}
    return corpus, queries, ordered(qrels), {"splits_in_source": names}


def carve_val(qrels, cfg, path):
    """Move a seeded share of train queries (with all their rows) into val."""
    if "train" not in qrels:
        print(f"note: {path} has no train split, so no val was carved; writing {', '.join(qrels)} as is")
        return
    val = set(carve(qrels["train"], [("val", cfg.val_fraction)], cfg.seed).get("val", ()))
    if not val:
        print(f"note: {path}: no val split carved (val_fraction={cfg.val_fraction}, "
              f"{len(qrels['train'])} train queries)")
        return
    train = qrels["train"]
    qrels["train"] = {q: row for q, row in train.items() if q not in val}
    qrels["val"] = {q: row for q, row in train.items() if q in val}


# ---------------------------------------------------------------------------- QA / code pairs

def read_pairs(path, fmt):
    """[(query, title, text)] from a pairs .jsonl; lines with an empty side are skipped and counted."""
    q_key, q_aliases, d_key, d_aliases = PAIR_KEYS[fmt]
    pairs, empty = [], 0
    for lineno, obj in read_jsonl(path):
        query = field(obj, q_key, path, lineno, aliases=q_aliases).strip()
        text = field(obj, d_key, path, lineno, aliases=d_aliases).strip()
        title = field(obj, "title", path, lineno, required=False).strip()
        if not query or not text:
            empty += 1
            continue
        pairs.append((query, title, text))
    if empty:
        warn(f"{path}: skipped {empty} line(s) with an empty {q_key} or {d_key}")
    if not pairs:
        raise DataError(f"{path}: no usable pairs; each line needs a non-empty {q_key!r} and {d_key!r}")
    return pairs


def load_pairs(path, cfg, fmt):
    pairs = read_pairs(path, fmt)
    # Split distinct query texts, so a question asked twice cannot sit in train and test.
    parts = carve({q for q, _, _ in pairs}, pair_fractions(cfg), cfg.seed)
    split_of = {q: split for split, qs in parts.items() for q in qs}
    corpus, queries, qrels = build(((split_of[q], q, title, text) for q, title, text in pairs), parts)
    return corpus, queries, qrels, {"pairs_read": len(pairs)}


# ---------------------------------------------------------------------------- python-source

def source_files(root):
    """Sorted relative paths ('/'-separated) of .py files outside test and install dirs."""
    files = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        rel = os.path.relpath(directory, root)
        files += [os.path.normpath(os.path.join(rel, n)).replace(os.sep, "/") for n in names if n.endswith(".py")]
    return sorted(files)


def module_name(rel_path):
    parts = rel_path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def parse_source(path):
    """(source lines, ast) or None when the file does not decode or parse."""
    try:
        with tokenize.open(path) as f:  # honours coding cookies; universal newlines
            text = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old escape sequences in third-party trees
            tree = ast.parse(text, filename=path)
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError):
        return None
    # Split on "\n" only: str.splitlines also breaks at form feeds, which ast does not count.
    return text.split("\n"), tree


def public_functions(body, qualname):
    """(qualified name, node) for public functions and methods of public classes, including those
    under module-level if/try (platform fallbacks); functions nested in functions are skipped."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.name.startswith("_"):
                yield f"{qualname}.{node.name}", node
        elif isinstance(node, ast.ClassDef):
            if not node.name.startswith("_"):
                yield from public_functions(node.body, f"{qualname}.{node.name}")
        elif isinstance(node, (ast.If, ast.Try, getattr(ast, "TryStar", ast.Try))):
            for block in (node.body, node.orelse, *(h.body for h in getattr(node, "handlers", ())),
                          getattr(node, "finalbody", ())):
                yield from public_functions(block, qualname)


def is_placeholder(stmt):
    return isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
                                          and stmt.value.value is Ellipsis)


def on_own_lines(stmt, lines):
    """Whether deleting the statement's lines deletes nothing else (`def f(): "doc"; x` would)."""
    before = lines[stmt.lineno - 1].encode()[:stmt.col_offset]  # ast offsets are UTF-8 bytes
    after = lines[stmt.end_lineno - 1].encode()[stmt.end_col_offset:].strip()
    return not before.strip() and (not after or after.startswith(b"#"))


def function_pair(node, lines, cfg):
    """(query, code) for one function, or a str saying why it is skipped."""
    doc = ast.get_docstring(node)
    if not doc or not doc.strip():
        return "no docstring"
    query = " ".join(re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0].split())
    if len(query.split()) < cfg.min_query_words:
        return "short docstring"
    if all(is_placeholder(s) for s in node.body[1:]):
        return "docstring-only body"
    docstring = node.body[0]
    if not on_own_lines(docstring, lines):
        return "docstring shares a line"
    start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    kept = lines[start - 1:docstring.lineno - 1] + lines[docstring.end_lineno:node.end_lineno]
    code = textwrap.dedent("\n".join(kept)).strip("\n")
    if cfg.max_doc_chars and len(code) > cfg.max_doc_chars:
        code = code[:cfg.max_doc_chars]
        code = code.rsplit("\n", 1)[0] if "\n" in code else code  # end on a whole line
    return query, code


def scan_tree(root, cfg):
    """{rel path: [(query, title, code)]} for files with at least one pair, and scan counts."""
    files, stats = {}, {"files_scanned": 0, "files_unreadable": 0, "functions_scanned": 0,
                        "functions_kept": 0, "skipped": {}}
    unreadable = []
    for rel in source_files(root):
        stats["files_scanned"] += 1
        parsed = parse_source(os.path.join(root, rel))
        if parsed is None:
            unreadable.append(rel)
            continue
        lines, tree = parsed
        for qualname, node in public_functions(tree.body, module_name(rel)):
            stats["functions_scanned"] += 1
            pair = function_pair(node, lines, cfg)
            if isinstance(pair, str):
                stats["skipped"][pair] = stats["skipped"].get(pair, 0) + 1
                continue
            stats["functions_kept"] += 1
            files.setdefault(rel, []).append((pair[0], qualname, pair[1]))
    if unreadable:
        stats["files_unreadable"] = len(unreadable)
        warn(f"{root}: skipped {len(unreadable)} file(s) that do not decode or parse, e.g. {unreadable[0]}")
    stats["files_kept"] = len(files)
    return files, stats


def load_python_source(root, cfg):
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a directory; python-source needs a tree of .py files "
                        "(--python_root=DIR or --source=DIR --format=python-source)")
    files, stats = scan_tree(root, cfg)
    skipped = ", ".join(f"{n:,} {why}" for why, n in sorted(stats["skipped"].items())) or "none"
    print(f"python-source: {stats['files_scanned']:,} files scanned, {stats['files_kept']:,} with pairs; "
          f"{stats['functions_scanned']:,} public functions, {stats['functions_kept']:,} kept (skipped: {skipped})")
    if not files:
        raise DataError(f"{root}: no public function has a docstring of at least {cfg.min_query_words} words "
                        "and a body; point --python_root at a tree of documented .py files")
    # Split whole files: functions of one module share helpers and wording, which would leak.
    parts = carve(files, pair_fractions(cfg), cfg.seed)
    split_of = {rel: split for split, rels in parts.items() for rel in rels}
    rows = ((split_of[rel], query, title, code) for rel in sorted(files) for query, title, code in files[rel])
    # Identical code under two names (aliases, copied helpers) is one thing to find.
    corpus, queries, qrels = build(rows, parts, same_doc=lambda title, code: code)
    stats["files_per_split"] = {split: len(parts[split]) for split in qrels}
    stats["python"] = sys.version.split()[0]
    return corpus, queries, qrels, stats


# ---------------------------------------------------------------------------- a folder of documents

SPLIT_NAMES = {"train": "train", "val": "val", "dev": "val", "test": "test"}


def load_documents(root, cfg, out):
    """(corpus of passages, queries, qrels by split naming documents, details, manifest, skips) of a folder of
    documents (common/folder.py) and the questions beside them (read_questions)."""
    got = folder.read(root, (cfg.model, cfg.passage_tokens, cfg.passage_overlap), out)
    old, skips = got["old"], got["skips"]
    corpus, manifest, formats, changes = {}, [], Counter(), {"added": [], "changed": [], "unchanged": 0}
    for r in got["results"]:
        if "skip" in r:
            skips.append((r["path"], r["skip"]))
            continue
        if r.get("unchanged"):
            records = r["records"]
            changes["unchanged"] += 1
        else:
            records = [folder.passage_record(r["path"], k, p) for k, p in enumerate(r["passages"])]
            changes["changed" if r["path"] in old else "added"].append(r["path"])
        corpus.update((rec["_id"], {k: v for k, v in rec.items() if k != "_id"}) for rec in records)
        formats[r["format"]] += 1
        manifest.append({"path": r["path"], "hash": r["hash"], "format": r["format"], "passages": len(records),
                         **({"edges": r["edges"], "dropped": r["dropped"]} if r.get("edges") else {})})
    read_paths = {m["path"] for m in manifest}
    removed = sorted(p for p in old if p not in read_paths)
    report_skips(skips, out)
    if not corpus:
        raise DataError(f"{root}: no readable document among {len(got['files']):,} file(s)"
                        f"{f' ({len(skips):,} skipped, listed above)' if skips else ''}; it reads PDF, HTML, "
                        "Markdown, reStructuredText, DOCX and text files (OCR is not done)")
    print(f"documents: {len(manifest):,} of {len(got['files']):,} files read "
          f"({', '.join(f'{f} {n:,}' for f, n in formats.most_common())}), {len(skips):,} skipped; "
          f"{len(corpus):,} passages of at most {cfg.passage_tokens or 'the encoder' + chr(39) + 's'} tokens")
    if old:
        print(f"  since the last read: {len(changes['added']):,} added, {len(changes['changed']):,} changed, "
              f"{len(removed):,} removed, {changes['unchanged']:,} unchanged (not parsed again)"
              + "".join(f"\n    {what}: {', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''}"
                        for what, paths in (("added", changes["added"]), ("changed", changes["changed"]),
                                            ("removed", removed)) if paths))
    queries, qrels, asked = read_questions(root, corpus, {p for p, _ in skips}, cfg)
    details = {"files": len(got["files"]), "read": len(manifest), "formats": dict(formats), "passages": len(corpus),
               "skipped": len(skips), "skip_reasons": dict(Counter(why for _, why in skips).most_common()),
               "added": len(changes["added"]), "changed": len(changes["changed"]), "removed": len(removed),
               "unchanged": changes["unchanged"], "passage_settings": got["settings"], "running_lines": got["running"],
               "questions": asked}
    return corpus, queries, qrels, details, manifest, skips


def report_skips(skips, out):
    """One line per skipped file; files that are not documents (images, archives, data): one line in all."""
    others = Counter()
    for path, why in skips:
        if why.startswith("not a document"):
            others[os.path.splitext(path.removesuffix(".gz"))[1] or "no extension"] += 1
        else:
            print(f"skipped {path}: {why}")
    if others:
        print(f"skipped {sum(others.values()):,} file(s) that are not documents (binaries, data, scripts): "
              + ", ".join(f"{ext} {n:,}" for ext, n in others.most_common()))
    if skips:
        print(f"  every skip, with its reason: {out}/skipped.tsv")


def unit_of(name, path, lineno):
    """The document or page a judgement names ("dir/file.pdf", "file.pdf#page=3")."""
    doc, _, page = name.replace("\\", "/").partition("#page=")
    doc = posixpath.normpath(doc.strip()).removeprefix("./")
    if page and not page.isdigit():
        raise DataError(f"{path}:{lineno}: {name!r}: a page is named as file.pdf#page=N, N a number from 1")
    return page_unit(doc, int(page)) if page else doc


def read_questions(root, corpus, skipped_files, cfg):
    """(queries, qrels by split, counts) from questions.jsonl ({"question", "files" or "file", "page",
    "split", "_id"}; a line without files is a question without judgements) and questions.txt (one
    question a line, no judgements) at the folder's top."""
    units = document_units(corpus)
    rows, counts = [], Counter()  # rows: (qid, text, split or None, {unit: 1})
    path = os.path.join(root, "questions.jsonl")
    if os.path.isfile(path):
        for lineno, obj in read_jsonl(path):
            text = " ".join(field(obj, "question", path, lineno, aliases=("query", "text")).split())
            if not text:
                counts["empty"] += 1
                continue
            qid = field(obj, "_id", path, lineno, required=False) or f"q{len(rows)}"
            check_id(qid, "_id", path, lineno)
            named = obj.get("files", obj.get("file", []))
            named = [named] if isinstance(named, str) else named
            if not isinstance(named, list) or not all(isinstance(n, str) for n in named):
                raise DataError(f"{path}:{lineno}: 'files' must be a file name or a list of them, relative to {root}")
            page = obj.get("page")
            if page is not None and (not isinstance(page, int) or isinstance(page, bool) or page < 1 or len(named) != 1):
                raise DataError(f"{path}:{lineno}: 'page' must be a page number from 1, beside one 'file'")
            split = obj.get("split")
            if split is not None and split not in SPLIT_NAMES:
                raise DataError(f"{path}:{lineno}: split {split!r}: expected one of {', '.join(SPLIT_NAMES)}")
            judged = {}
            for name in named:
                unit = unit_of(name + (f"#page={page}" if page else ""), path, lineno)
                doc = unit.split("#page=")[0]
                if unit in units:
                    judged[unit] = 1
                elif doc in skipped_files:
                    counts["judgement of a skipped file"] += 1
                elif doc in units:
                    counts["judgement of a page without text"] += 1
                else:
                    raise DataError(f"{path}:{lineno}: {name!r} is not a file under {root}; name files by their "
                                    "path relative to that folder, e.g. reports/q3.pdf")
            if named and not judged:
                counts["dropped: no judged file left"] += 1
                continue
            rows.append((qid, text, SPLIT_NAMES.get(split), judged))
    path_txt = os.path.join(root, "questions.txt")
    if os.path.isfile(path_txt):
        try:
            with open(path_txt, encoding="utf-8-sig") as f:
                lines = f.read().split("\n")
        except UnicodeDecodeError:
            raise DataError(f"{path_txt}: not UTF-8 text; save it as UTF-8, one question a line") from None
        rows += [(f"q{len(rows) + i}", " ".join(line.split()), None, {}) for i, line in enumerate(lines) if line.strip()]
    ids = Counter(qid for qid, *_ in rows)
    if any(n > 1 for n in ids.values()):
        raise DataError(f"{root}: question _id {next(q for q, n in ids.items() if n > 1)!r} is used twice; ids must be unique")
    judged_rows = [r for r in rows if r[3]]
    queries = {qid: text for qid, text, _, _ in rows}
    with_split = [r for r in judged_rows if r[2]]
    if with_split and len(with_split) != len(judged_rows):
        raise DataError(f"{root}/questions.jsonl: some judged questions name a 'split' and some do not; "
                        "give every judged line one (train, val or test), or none to have them carved")
    if with_split:
        qrels = {}
        for qid, _, split, judged in judged_rows:
            qrels.setdefault(split, {})[qid] = judged
        if "val" not in qrels:
            carve_val(qrels, cfg, root)
    else:  # carved by question text, so a question asked twice cannot sit in train and test
        parts = carve({text for _, text, _, j in judged_rows}, pair_fractions(cfg), cfg.seed) if judged_rows else {}
        split_of = {text: split for split, texts in parts.items() for text in texts}
        qrels = {}
        for qid, text, _, judged in judged_rows:
            qrels.setdefault(split_of[text], {})[qid] = judged
    counts.update(judged=len(judged_rows), unjudged=len(rows) - len(judged_rows))
    if rows:
        print(f"questions: {counts['judged']:,} judged, {counts['unjudged']:,} without judgements"
              + "".join(f"; {n:,} {why}" for why, n in counts.items() if why not in ("judged", "unjudged")))
    return queries, ordered(qrels), dict(counts)


# ---------------------------------------------------------------------------- label-free

def source_corpus(source, fmt, cfg):
    """The documents of any source, and nothing of its queries or qrels."""
    if fmt == "documents":
        return load_documents(source, cfg, os.devnull)[0]
    if fmt in ("beir", "corpus"):
        path = os.path.join(source, "corpus.jsonl") if fmt == "beir" else source
        return read_corpus(path)
    loader = load_python_source if fmt == "python-source" else lambda path, cfg: load_pairs(path, cfg, fmt)
    return loader(source, cfg)[0]


def pseudo_dataset(corpus, cfg):
    """(corpus of positives, queries, {train, val} qrels, details) made from the documents alone."""
    rng = random.Random(cfg.seed)
    doc_ids = sorted(corpus)
    if 0 < cfg.max_pseudo_docs < len(doc_ids):
        doc_ids = sorted(rng.sample(doc_ids, cfg.max_pseudo_docs))
    pairs = {d: [] for d in doc_ids}  # source doc -> [(query, positive's title, positive's text)]
    made = {m: 0 for m in cfg.pseudo_queries}
    # With title queries no positive keeps its title: every positive made from a document is relevant
    # to every query made from it, and a titled one would let the title query match by copying.
    title_of = (lambda d: "") if "title" in cfg.pseudo_queries else (lambda d: corpus[d].get("title", ""))
    if "title" in cfg.pseudo_queries:
        for d in doc_ids:
            pair = title_query(corpus[d].get("title", ""), corpus[d]["text"])
            if pair:
                pairs[d].append((pair[0], "", pair[1]))
                made["title"] += 1
    for method in ("ict", "crop"):
        if method not in cfg.pseudo_queries:
            continue
        for d in doc_ids:
            for _ in range(cfg.queries_per_doc):
                pair = (ict(corpus[d]["text"], rng, cfg.ict_remove_prob) if method == "ict" else
                        crop(corpus[d]["text"], rng, cfg.crop_min_ratio, cfg.crop_max_ratio))
                if pair:
                    pairs[d].append((pair[0], title_of(d), pair[1]))
                    made[method] += 1
    used = [d for d in doc_ids if pairs[d]]
    if not used:
        raise DataError(f"{cfg.source}: no document gave a pseudo-query ({', '.join(cfg.pseudo_queries)}): title "
                        "needs a title of 3+ words; ict two sentences, one of 4+ words; crop 8+ words; add "
                        "--pseudo_queries=generate")
    # Val by source document: queries made from one document share its words, which would leak.
    parts = carve(used, [("val", cfg.val_fraction)], cfg.seed)
    split_of = {d: split for split, ds in parts.items() for d in ds}
    out_corpus, doc_key, queries, qrels = {}, {}, {}, {s: {} for s in ("train", "val")}
    for d in used:
        family = []  # every positive made from d is relevant to every query made from d
        for _, title, positive in pairs[d]:
            key = (title, positive)
            if key not in doc_key:
                doc_key[key] = f"p{len(doc_key)}"
                out_corpus[doc_key[key]] = {"title": key[0], "text": positive}
            family.append(doc_key[key])
        for query, _, _ in pairs[d]:
            qid = f"q{len(queries)}"
            queries[qid] = query
            qrels[split_of[d]][qid] = dict.fromkeys(family, 1)
    details = {"label_free": True, "source_docs": len(corpus), "docs_used": len(used), "queries_made": made,
               "docs_without_a_query": len(doc_ids) - len(used)}
    return out_corpus, queries, {s: rows for s, rows in qrels.items() if rows}, details


# ---------------------------------------------------------------------------- generated questions

def generation_file(cfg, prompt, name):
    """Where the questions for this source, generator, prompt and settings are appended as they are written
    (data/.cache/generated/): a killed run goes on from there, and another run of the same settings reuses them."""
    key = json.dumps([cfg.generator, prompt.head if prompt else "", prompt.shot if prompt else "",
                      prompt.examples if prompt else [], cfg.queries_per_doc, cfg.seed, cfg.generator_passage_tokens,
                      cfg.generator_new_tokens])
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return os.path.join(cfg.cache_dir, "generated", f"{name}-{digest}.jsonl")


def text_hash(text):
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def read_generated(path):
    """{doc id: (passage hash, [question])} written so far; a last line cut short by a kill is left out."""
    done = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    done[row["_id"]] = (row["hash"], row["questions"])
                except (ValueError, KeyError, TypeError):
                    continue
    return done


def prompt_examples(corpus, queries, qrels, unjudged, cfg):
    """[(passage, question)] for the prompt from the data's own questions: judged ones with a passage they
    name, then unjudged ones with the passage BM25 finds for them; a seeded sample of prompt_examples."""
    from common.retrievers import BM25

    judged = [(qid, next(d for d, g in sorted(row.items(), key=lambda x: -x[1]) if g > 0))
              for rows in qrels.values() for qid, row in rows.items() if any(g > 0 for g in row.values())]
    rng = random.Random(cfg.seed)
    picked = [(doc_text(corpus[d]), queries[q])
              for q, d in rng.sample(sorted(judged), min(len(judged), cfg.prompt_examples)) if d in corpus]
    if len(picked) < cfg.prompt_examples and unjudged:
        doc_ids = list(corpus)
        bm25 = BM25(doc_ids, [doc_text(corpus[d]) for d in doc_ids])
        asked = rng.sample(sorted(unjudged), min(len(unjudged), cfg.prompt_examples - len(picked)))
        picked += [(doc_text(corpus[hits[0][0]]), q) for q, hits in zip(asked, bm25.search_many(asked, 1)) if hits]
    return picked


def generate_questions(corpus, cfg, generator_file, prompt):
    """{doc id: [question as written]} for every passage of corpus: those in generator_file already, the rest
    written by the generator and appended there batch by batch."""
    from tqdm import tqdm

    from common.generator import QuestionGenerator
    from common.models import autocast_dtype, pick_device

    done = read_generated(generator_file)
    texts = {d: doc_text(corpus[d]) for d in corpus}
    hashes = {d: text_hash(texts[d]) for d in corpus}
    # Batches are fixed slices of every passage in one order (longest first, so the first batch's time bounds the
    # plan), each seeded by its first passage: a killed run redoes the batch it was in, and writes what an unbroken
    # run would have.
    order = sorted(corpus, key=lambda d: (-len(texts[d]), d))
    size = cfg.generator_batch_size
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    todo = [b for b in batches if any(done.get(d, (None,))[0] != hashes[d] for d in b)]
    missing = sum(done.get(d, (None,))[0] != hashes[d] for d in corpus)
    print(f"generate: {len(corpus):,} passages, {len(corpus) - missing:,} with questions already "
          f"({generator_file}), {missing:,} to write with {cfg.generator}")
    if todo:
        device = pick_device(cfg.device)
        started = time.time()
        generator = QuestionGenerator(cfg.generator, device, prompt, os.path.join(cfg.cache_dir, "generators"),
                                      cfg.generator_passage_tokens, cfg.generator_new_tokens,
                                      autocast_dtype("auto", device))
        print(f"generate: {generator.kind} model loaded in {time.time() - started:.0f} s on {device.type}")
        os.makedirs(os.path.dirname(generator_file), exist_ok=True)
        cut_short = False
        if os.path.isfile(generator_file) and os.path.getsize(generator_file):
            with open(generator_file, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut_short = f.read(1) != b"\n"
        total = sum(map(len, todo))
        with open(generator_file, "a", encoding="utf-8") as f, tqdm(total=total, unit="passage", desc="generate",
                                                                      mininterval=5) as bar:
            if cut_short:  # a kill mid-line: that line is left out (read_generated), the next starts on its own
                f.write("\n")
            for i, batch in enumerate(todo):
                t0 = time.time()
                seed = cfg.seed + int(hashlib.blake2b(batch[0].encode(), digest_size=4).hexdigest(), 16)
                written = generator.generate([texts[d] for d in batch], cfg.queries_per_doc, seed)
                f.writelines(json.dumps({"_id": d, "hash": hashes[d], "questions": qs}) + "\n"
                             for d, qs in zip(batch, written))
                f.flush()
                done.update((d, (hashes[d], qs)) for d, qs in zip(batch, written))
                bar.update(len(batch))
                if i == 0 and len(todo) > 1:  # the longest passages: what is left takes at most this long
                    rate = len(batch) / (time.time() - t0)
                    tqdm.write(f"generate: {rate:.2f} passages/s on the longest; at most ~{total / rate / 60:.0f} min "
                               f"for all {total:,} (a killed run goes on from {generator_file})")
    return {d: done[d][1] for d in corpus}


def round_trip(corpus, questions, cfg):
    """({doc id: [question]} kept, {rank bucket: count}): a question is kept when the zero-shot hybrid (cfg.model's
    dense search mixed with BM25 at the weight served without val) ranks its passage in its top roundtrip_k."""
    from common import fusion
    from common.metrics import ranked
    from common.retrievers import first_stage_run

    flat = {f"r{i}": (d, q) for i, (d, q) in enumerate((d, q) for d, qs in questions.items() for q in qs)}
    asked = {qid: q for qid, (_, q) in flat.items()}
    depth = max(cfg.roundtrip_k, 10)
    run = fusion.hybrid(first_stage_run(cfg.model, "", corpus, asked, fusion.HYBRID_DEPTH, cfg.device),
                        first_stage_run("bm25", "", corpus, asked, fusion.HYBRID_DEPTH), decision.NO_VAL, depth)
    kept, ranks = {}, {"top 1": 0, f"top {cfg.roundtrip_k}": 0, f"below {cfg.roundtrip_k}": 0}
    for qid, (d, q) in flat.items():
        order = ranked(run.get(qid, {}))
        rank = order.index(d) + 1 if d in order else None
        ranks["top 1" if rank == 1 else f"top {cfg.roundtrip_k}" if rank and rank <= cfg.roundtrip_k
              else f"below {cfg.roundtrip_k}"] += 1
        if rank and rank <= cfg.roundtrip_k:
            kept.setdefault(d, []).append(q)
    return kept, {where: n for where, n in ranks.items() if n}


def with_generated(corpus, queries, qrels, unjudged, cfg, name):
    """(queries, qrels, details) of the dataset with generated questions as its train split: the source's judged
    questions other than test become val (all, none or a seeded sample: val_queries), test stays test."""
    from common.generator import DEFAULT_PROMPT, Filter, Prompt, least_overlapping, sample_passages

    real = {q: row for split, rows in qrels.items() if split != "test" for q, row in rows.items()}
    if cfg.val_queries >= 0 and len(real) > cfg.val_queries:
        real = {q: real[q] for q in sorted(random.Random(cfg.seed).sample(sorted(real), cfg.val_queries))}
    kept_qrels = {"val": real, "test": qrels.get("test", {})}
    used = {q for rows in kept_qrels.values() for q in rows}
    seeing = {"val": real} if cfg.val_queries != 0 else {}  # label-free: not even the prompt sees them
    examples = prompt_examples(corpus, queries, seeing, unjudged if cfg.val_queries != 0 else [], cfg)
    prompt = Prompt.read(cfg.prompt or DEFAULT_PROMPT, examples or None)
    passages = corpus if real else sample_passages(corpus, cfg.generate_sample, cfg.seed)
    if len(passages) < len(corpus):
        print(f"generate: no judged question to weigh them, so only the mix is chosen on them: a sample of "
              f"{len(passages):,} of the {len(corpus):,} passages (generate_sample={cfg.generate_sample}; 0 = all)")
    t0 = time.time()
    written = generate_questions(passages, cfg, generation_file(cfg, prompt, name), prompt)
    seconds = time.time() - t0
    filtered = Filter(examples=[q for _, q in prompt.examples])
    kept = filtered(written, {d: doc_text(corpus[d]) for d in passages})
    total = sum(len(qs) for qs in written.values())
    if not kept:
        raise DataError(f"{cfg.generator}: no usable question among the {total:,} written for {len(passages):,} passages "
                        f"({', '.join(f'{n:,} {why}' for why, n in filtered.dropped.items() if n)}); try another "
                        f"generator or prompt ({cfg.prompt or DEFAULT_PROMPT})")
    ranks, weigh = {}, least_overlapping(kept, {d: doc_text(corpus[d]) for d in kept})
    if cfg.roundtrip_k:
        kept, ranks = round_trip(corpus, kept, cfg)
    n_kept = sum(len(qs) for qs in kept.values())
    print(f"generate: {total:,} questions written, {n_kept:,} kept; dropped "
          + ", ".join(f"{n:,} {why}" for why, n in filtered.dropped.items() if n)
          + (f"; round trip (zero-shot hybrid): {', '.join(f'{n:,} {b}' for b, n in ranks.items())}"
             f"{f', kept those in the top {cfg.roundtrip_k}' if cfg.roundtrip_k else ''}" if ranks else ""))
    if not kept:
        raise DataError(f"{cfg.generator}: no generated question finds its passage in the zero-shot hybrid's top "
                        f"{cfg.roundtrip_k}; --roundtrip_k=0 keeps them all")
    out_queries = {q: queries[q] for q in used}
    # train: the kept questions; "generated": the half of those the filters kept that reuse their passage's words
    # least, what the hybrid's mix is chosen on where judged questions are too few (decision.pooled)
    train, weighing, ids = {}, {}, {}
    for split, questions, rows in (("train", kept, train), ("generated", weigh, weighing)):
        for d in sorted(questions):
            for q in questions[d]:
                qid = ids.setdefault((d, q), f"gen{len(ids)}")
                out_queries[qid] = q
                rows[qid] = {d: 1}
    details = {"generated": {"generator": cfg.generator, "prompt": cfg.prompt or DEFAULT_PROMPT,
                             "examples": "the data's own questions" if examples else "built-in",
                             "passages": len(passages), "corpus": len(corpus), "written": total, "kept": n_kept,
                             "dropped": filtered.dropped, "round_trip": ranks, "weighing": len(weighing), "seconds": round(seconds, 1),
                             "real_val_queries": len(real)}}
    return (out_queries, {s: rows for s, rows in {"train": train, **kept_qrels, "generated": weighing}.items() if rows},
            details)


# ---------------------------------------------------------------------------- --beir download

def fetch_beir(name, cfg):
    """Download and unzip a BEIR dataset into cache_dir once; return the dir holding corpus.jsonl."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"beir={name!r}: expected a BEIR dataset name such as scifact or nfcorpus")
    target = os.path.join(cfg.cache_dir, name)
    if os.path.isfile(os.path.join(target, "corpus.jsonl")):
        print(f"using cached {target}")
        return target
    os.makedirs(cfg.cache_dir, exist_ok=True)
    zip_path = os.path.join(cfg.cache_dir, f"{name}.zip")
    if not os.path.isfile(zip_path):
        download(cfg.beir_url.replace("{name}", name), zip_path)
    unzip_dataset(zip_path, target, name)
    os.remove(zip_path)  # the unzipped copy is what later runs reuse
    return target


def download(url, path):
    print(f"downloading {url}")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, f, 1 << 20)
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors; ValueError: a malformed URL
        os.remove(tmp)
        raise UserError(f"could not download {url} ({getattr(e, 'reason', None) or e}); to work offline, "
                        "download and unzip it elsewhere and pass --source=DIR") from None
    os.replace(tmp, path)


def unzip_dataset(zip_path, target, name):
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target) or ".", prefix=f".{name}.unzip.")
    try:
        try:
            with zipfile.ZipFile(zip_path) as z:
                z.extractall(tmp)  # extractall drops absolute and ".." parts of member names
        except zipfile.BadZipFile as e:
            os.remove(zip_path)  # so the next run downloads it again
            raise UserError(f"{zip_path}: not a valid zip ({e}); removed it, run again to re-download") from None
        found = next((d for d, _, names in sorted(os.walk(tmp)) if "corpus.jsonl" in names), None)
        if os.path.isfile(os.path.join(tmp, name, "corpus.jsonl")):
            found = os.path.join(tmp, name)
        if found is None:
            raise DataError(f"{zip_path}: no corpus.jsonl inside; expected {name}/corpus.jsonl")
        if os.path.exists(target):
            shutil.rmtree(target)  # a leftover without corpus.jsonl, or the cache hit above would have taken it
        os.replace(found, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- main

def check_config(cfg):
    check_choice(cfg, "format", FORMATS)
    for key in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: must be at least 0 and below 1")
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise ConfigError("val_fraction + test_fraction must be below 1, so that train keeps some queries")
    if cfg.beir and cfg.source != DEFAULTS["source"]:
        raise ConfigError("give either --source or --beir, not both")
    check_choice(cfg, "pseudo_queries", METHODS)
    if cfg.format == "corpus" and not cfg.pseudo_queries:
        raise ConfigError("format=corpus has documents but no queries: add --pseudo_queries=ict,crop (or generate)")
    if "generate" in cfg.pseudo_queries and not cfg.generator:
        raise ConfigError("pseudo_queries=generate needs generator=MODEL: name one (gemma3-270m, smollm2, a .gguf file, a "
                          "causal or seq2seq model directory or hub name), or drop generate")
    if "generate" in cfg.pseudo_queries and len(cfg.pseudo_queries) > 1:
        raise ConfigError("pseudo_queries=generate goes alone: it keeps the source's corpus and judged questions, "
                          "which title, ict and crop replace")
    for key in ("generator_batch_size", "generator_passage_tokens", "generator_new_tokens"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: must be at least 1")
    if (cfg.roundtrip_k < 0 or cfg.val_queries < -1 or cfg.prompt_examples < 0 or cfg.generate_below < 0
            or cfg.generate_sample < 0):
        raise ConfigError("roundtrip_k (0 = keep all), prompt_examples, generate_below, generate_sample (0 = all) and "
                          "val_queries (-1 = all) cannot be negative")
    if cfg.prompt and not os.path.isfile(cfg.prompt):
        raise ConfigError(f"prompt={cfg.prompt}: no such file; configs/prompts/question.txt shows the shape")
    if cfg.queries_per_doc < 1:
        raise ConfigError(f"queries_per_doc={cfg.queries_per_doc}: must be at least 1")
    if not 0 <= cfg.ict_remove_prob <= 1:
        raise ConfigError(f"ict_remove_prob={cfg.ict_remove_prob}: a probability, 0 to 1")
    if not 0 < cfg.crop_min_ratio <= cfg.crop_max_ratio <= 1:
        raise ConfigError(f"crop_min_ratio={cfg.crop_min_ratio}, crop_max_ratio={cfg.crop_max_ratio}: "
                          "need 0 < min <= max <= 1")


def detect_format(source, fmt):
    if fmt == "beir" and not os.path.isdir(source):
        raise DataError(f"{source}: not a directory; format=beir reads corpus.jsonl, queries.jsonl and qrels/ "
                        "from one")
    if fmt != "auto":
        return fmt
    if source == "python-source":
        return "python-source"
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, "corpus.jsonl")):
            return "beir"
        return "documents"  # a tree of .py files to pair docstrings with code: --format=python-source
    if not os.path.exists(source):
        raise DataError(f"{source}: not found; pass --source=DIR, --source=FILE.jsonl or --source=python-source")
    if not source.endswith(".jsonl"):
        raise DataError(f"{source}: expected a BEIR directory, a .jsonl file of pairs or python-source; "
                        "or pass --format")
    for lineno, obj in read_jsonl(source):
        if "code" in obj:
            return "code"
        if {"answer", "positive"} & obj.keys():
            return "qa"
        if "text" in obj and not {"question", "query"} & obj.keys():
            return "corpus"
        raise DataError(f"{source}:{lineno}: cannot tell the format from keys {sorted(obj)}; expected "
                        "question/answer or query/positive (qa), query/code (code) or _id/text (corpus), "
                        "or pass --format")
    raise DataError(f"{source}: empty file; it needs one JSON object per line")


def resolve_source(cfg):
    """(path to read, format, name for the default output dir) of a local source."""
    fmt = detect_format(cfg.source, cfg.format)
    if fmt == "python-source" and not cfg.python_root and cfg.source == "python-source":
        return sysconfig.get_paths()["stdlib"], fmt, "python-source"
    path = cfg.python_root if fmt == "python-source" and cfg.python_root else cfg.source
    return path, fmt, os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def check_out(out, source):
    """Refuse outputs whose atomic swap would delete something that is not an earlier dataset."""
    real_out, real_source = os.path.realpath(out), os.path.realpath(source)
    if real_source == real_out or real_source.startswith(real_out + os.sep):
        raise UserError(f"--out={out} would replace the source {source}; choose another output directory")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out={out} is a file; choose a directory")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, "corpus.jsonl")):
        raise UserError(f"--out={out} exists and is not a dataset (no corpus.jsonl), and would be replaced "
                        "whole; choose a new or empty directory")


def previous_digest(out):
    try:
        with open(os.path.join(out, "prepare.json"), encoding="utf-8") as f:
            return json.load(f).get("digest")
    except (OSError, ValueError):
        return None


def split_counts(qrels):
    return {"queries": len(qrels), "qrels": sum(len(row) for row in qrels.values()),
            "positive_pairs": sum(g > 0 for row in qrels.values() for g in row.values())}


def main(argv=None):
    cfg = load_config(DEFAULTS, argv if argv is not None else sys.argv[1:])
    check_config(cfg)
    started = time.time()
    if cfg.beir:
        out = cfg.out or os.path.join("data", cfg.beir)
        check_out(out, cfg.cache_dir)  # before a long download, not after
        source, fmt = fetch_beir(cfg.beir, cfg), "beir"
    else:
        source, fmt, name = resolve_source(cfg)
        out = cfg.out or os.path.join("data", name)
        check_out(out, source)
    generate = cfg.pseudo_queries == ["generate"]
    if cfg.pseudo_queries and not generate:
        corpus, queries, qrels, details = pseudo_dataset(source_corpus(source, fmt, cfg), cfg)
    elif fmt == "corpus" and not generate:
        raise DataError(f"{source}: a corpus without queries; add --pseudo_queries=ict,crop, or "
                        "--pseudo_queries=generate --generator=gemma3-270m, to make some")
    elif fmt == "corpus":
        corpus, queries, qrels, details = read_corpus(source), {}, {}, {}
    elif fmt == "beir":
        corpus, queries, qrels, details = load_beir_dir(source, cfg)
    elif fmt == "python-source":
        corpus, queries, qrels, details = load_python_source(source, cfg)
    elif fmt == "documents":
        corpus, queries, qrels, details, manifest, skips = load_documents(source, cfg, out)
    else:
        corpus, queries, qrels, details = load_pairs(source, cfg, fmt)
    real = sum(len(rows) for split, rows in qrels.items() if split != "test")
    few = not generate and cfg.generator and real < cfg.generate_below and not cfg.pseudo_queries
    missing = False
    if few:  # not asked for: without the generator installed, the pipeline goes on without them
        from common.generator import installed

        missing = not installed(cfg.generator)
        few = not missing
    generate = generate or few
    # A folder is prepared on every `make`: what it would write is hashed (with what generation would do to it), and
    # nothing is written when that is what the dataset holds (other sources are prepared only when make sees them change).
    generation = ({k: v for k, v in vars(cfg).items() if k.startswith(("generat", "prompt", "roundtrip", "val_queries",
                                                                       "queries_per_doc", "model", "seed"))}
                  if generate else None)
    digest = hashlib.blake2b(json.dumps([corpus, queries, qrels, generation], sort_keys=True).encode(),
                             digest_size=16).hexdigest() if fmt == "documents" else None
    if digest and previous_digest(out) == digest:
        # Nothing the later stages read has changed: the files they depend on keep their dates.
        print(f"{out}: unchanged since the last run ({len(corpus):,} passages, {time.time() - started:.1f} s); kept as is")
        return 0
    if missing:
        print(f"generate: not run: {source} has {real:,} judged question(s) outside test, fewer than generate_below="
              f"{cfg.generate_below}, but {cfg.generator} is not installed: `make setup-generate` installs it")
    if few:
        print(f"generate: {source} has {real:,} judged question(s) outside test, fewer than generate_below="
              f"{cfg.generate_below}: {cfg.generator} writes questions for its passages, "
              + ("to train on and remember; the judged ones are val and weigh them" if real else
                 "to choose the mix of dense and BM25 on (with no judged question nothing else of them is served)"))
    if generate:
        judged = {q for rows in qrels.values() for q in rows}
        unjudged = [text for q, text in queries.items() if q not in judged]
        queries, qrels, more_details = with_generated(corpus, queries, qrels, unjudged, cfg,
                                                      os.path.splitext(os.path.basename(os.path.normpath(source)))[0])
        details = {**details, **more_details}
    for split, rows in qrels.items():
        if not rows:
            fix = f"qrels/{split}.tsv needs rows" if fmt == "beir" else f"add data or set --{split}_fraction=0"
            raise DataError(f"{source}: split '{split}' would be empty; {fix}")
    counts = {split: split_counts(rows) for split, rows in qrels.items()}

    def more(tmp):
        if fmt == "documents":
            write_jsonl(os.path.join(tmp, "documents.jsonl"), manifest)
            with open(os.path.join(tmp, "skipped.tsv"), "w", encoding="utf-8") as f:
                f.write("path\treason\n" + "".join(f"{p}\t{why}\n" for p, why in skips))
        write_json(os.path.join(tmp, "prepare.json"), {
            "source": source, "format": fmt, "seed": cfg.seed,
            "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
            "corpus": len(corpus), "splits": counts, "details": details, "config": vars(cfg),
            **({"digest": digest} if digest else {}),
            "command": ["prepare_data.py", *(sys.argv[1:] if argv is None else argv)], "git": git_commit()})

    write_beir(out, corpus, queries, qrels, more)
    print(f"wrote {out} ({fmt}, {time.time() - started:.1f} s): corpus {len(corpus):,} "
          f"{'passages' if fmt == 'documents' else 'docs'}")
    for split, c in counts.items():
        print(f"  {split:<9} {c['queries']:>8,} queries {c['qrels']:>8,} qrels "
              f"{c['positive_pairs']:>8,} positive pairs")
    return 0


if __name__ == "__main__":
    cli(main)
