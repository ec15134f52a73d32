"""A folder of documents read into passages: which files, read on every core, and on a later run only the
files whose bytes changed.

`read(root, args, out)` walks `root` (hidden files left out, linked folders followed once), reads each
file with common/documents.py into passages sized by `args` (model, passage tokens, overlap: a
documents.Splitter per process) and returns them with what changed since the dataset `out` was written.
The running heads of short PDFs show only across the folder (`running_lines`): once known, the files they
apply to are read again without them.
"""
import gc
import hashlib
import json
import multiprocessing
import os
from collections import Counter

from tqdm import tqdm

from common import documents
from common.data import read_jsonl
from common.run import UserError

QUESTION_FILES = ("questions.jsonl", "questions.txt")  # beside the documents, not documents (prepare_data.py)
PARALLEL_FROM = 64  # files: fewer are read in this process (a pool's start costs more than they do)
RUNNING_FILES, RUNNING_SHARE = 5, 0.05  # running_lines
_splitter = None    # (its arguments, a documents.Splitter): a worker's made once, this process's when they change


def files(root):
    """(sorted relative paths of the files under `root`, [(path, reason)] of what could not be walked).
    Hidden files and folders are left out; a linked folder is followed once (a loop is a skip)."""
    files, skips, seen = [], [], set()

    def unwalkable(e):
        skips.append((os.path.relpath(e.filename, root).replace(os.sep, "/"), f"cannot be listed ({e.strerror})"))

    for directory, dirs, names in os.walk(root, followlinks=True, onerror=unwalkable):
        rel_dir = os.path.relpath(directory, root).replace(os.sep, "/")
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in seen:
            skips.append((rel_dir, "links to a folder already read (a symlink loop or a second name): read once"))
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if name.startswith(".") or (rel_dir == "." and name in QUESTION_FILES):
                continue
            if any(c in rel for c in "\t\r\n") or rel != rel.strip():
                skips.append((rel.replace("\n", "\\n"), "its name has a tab, a line break or edge spaces, "
                                                       "which passage ids cannot hold: rename it"))
                continue
            files.append(rel)
    return sorted(files), skips


def make_splitter(model, passage_tokens, overlap):
    """A documents.Splitter sized to `model`'s tokenizer and passage length (or `passage_tokens`)."""
    from transformers import AutoConfig, AutoTokenizer

    from common.models import load_pretrained, read_settings, resolve_model

    path = resolve_model(model)
    tokenizer = load_pretrained(model, AutoTokenizer, path)
    tokenizer.model_max_length = 1 << 40  # counting a long text is not encoding it: no truncation warning
    limit = passage_tokens or read_settings(path, load_pretrained(model, AutoConfig, path))["max_passage_length"]
    return documents.Splitter(tokenizer, limit - tokenizer.num_special_tokens_to_add(), overlap)


def use_splitter(*args):
    global _splitter
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # a pool is the parallelism, and forks must not hold its threads
    if _splitter is None or _splitter[0] != args:
        _splitter = (args, make_splitter(*args))


def read_document(task):
    """{"path", "hash", and "unchanged", or "format", "title", "passages", "edges", "dropped"} of one file, or
    {"path", "skip"}. task: (relative path, path, the hash it had when last read or None, running lines
    the folder found)."""
    rel, path, old_hash, running = task
    try:
        data = documents.read_bytes(path)
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        if digest == old_hash:
            return {"path": rel, "hash": digest, "unchanged": True}
        fmt, title, blocks, edges = documents.parse(data, rel, running)
        return {"path": rel, "hash": digest, "format": fmt, "title": title, "passages": _splitter[1](title, blocks),
                "edges": edges, "dropped": sorted(set(edges) & set(running))}
    except documents.Skip as e:
        return {"path": rel, "skip": str(e)}
    except Exception as e:  # noqa: BLE001  a reader's failure on one file must not stop a folder of thousands
        return {"path": rel, "skip": f"could not be read ({type(e).__name__}: {str(e)[:120]})"}


def read_all(tasks, args):
    """read_document of each task, in order, on every core for a large folder, with a progress bar."""
    workers = min(len(os.sched_getaffinity(0)), max(1, len(tasks) // PARALLEL_FROM))
    bar = dict(total=len(tasks), unit="file", desc="reading", disable=len(tasks) < PARALLEL_FROM, mininterval=1)
    # The results are millions of small objects and none makes a cycle: the collector's full passes over all
    # of them, more of them the more there are, made a folder of 117k files 1.2x slower than its two halves.
    gc.disable()
    try:
        if workers <= 1:
            use_splitter(*args)
            return [read_document(t) for t in tqdm(tasks, **bar)]
        with multiprocessing.get_context("spawn").Pool(workers, use_splitter, args) as pool:
            return list(tqdm(pool.imap(read_document, tasks, chunksize=8), **bar))
    finally:
        gc.enable()


def previous_read(out, settings):
    """({path: its manifest line, with "records": its passage records}, the running lines the folder had) of
    the dataset `out` already holds, when it was read from a folder with the same passage settings; else
    ({}, [])."""
    try:
        with open(os.path.join(out, "prepare.json"), encoding="utf-8") as f:
            details = json.load(f).get("details", {})
        if details.get("passage_settings") != settings:
            return {}, []
        manifest = {r["path"]: r for _, r in read_jsonl(os.path.join(out, "documents.jsonl"))}
        for _, r in read_jsonl(os.path.join(out, "corpus.jsonl")):
            manifest[r["doc"]].setdefault("records", []).append(r)
        return manifest, details.get("running_lines", [])
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return {}, []


def running_lines(edges_by_file):
    """The edge keys (documents.edge_key) of short PDFs that repeat across the folder: on RUNNING_SHARE of
    them and at least RUNNING_FILES. A journal's running head on one-page abstracts repeats in no file,
    only across them."""
    seen = Counter(key for edges in edges_by_file for key in set(edges))
    least = max(RUNNING_FILES, RUNNING_SHARE * len(edges_by_file))
    return sorted(key for key, n in seen.items() if n >= least)


def passage_record(doc, k, passage):
    record = {"_id": f"{doc}#{k}", "title": passage["title"], "text": passage["text"], "doc": doc}
    record.update({key: passage[key] for key in ("page", "section", "anchor") if passage.get(key)})
    return record

def read(root, args, out):
    """{"files", "skips" [(path, reason)], "results" [read_document's, in path order, skips included],
    "old" (what `out` held), "running"} of the folder `root` with passages sized by `args`."""
    settings = dict(zip(("model", "passage_tokens", "overlap"), args), reader=documents.VERSION)
    old, running = previous_read(out, settings)
    paths, skips = files(root)
    results = read_all([(rel, os.path.join(root, rel), old.get(rel, {}).get("hash"), running) for rel in paths], args)
    results = [{**old[r["path"]], **r} if r.get("unchanged") else r for r in results]
    read_ok = [r for r in results if "skip" not in r]
    running = running_lines([r["edges"] for r in read_ok if r.get("edges")])
    again = {r["path"] for r in read_ok if sorted(set(r.get("edges", ())) & set(running)) != r.get("dropped", [])}
    if again:
        redone = {r["path"]: r for r in read_all([(p, os.path.join(root, p), None, running) for p in sorted(again)], args)}
        results = [{**redone[r["path"]], "unchanged": False} if r["path"] in redone else r for r in results]
    return {"files": paths, "skips": skips, "results": results, "old": old, "running": running, "settings": settings}
