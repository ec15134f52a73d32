"""Writes that never leave a half-written file: each goes to a temporary name beside its target and
is renamed into place only once complete, so a crash, a full disk or Ctrl-C leaves the old file (or
none), never a torn one."""
import contextlib
import csv
import hashlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Build a directory under a temporary name; swap it into place only if the block succeeds."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        yield tmp
        for directory, _, names in os.walk(tmp):  # contents on disk before the rename that publishes them
            for name in names:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.old.")
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha1(path):
    """A file's content digest (a corpus's, say): rewriting identical bytes keeps it, unlike mtime. Read once
    a process while the file's size and mtime stay (a stage asks for its corpus's several times: the
    embeddings cache's name, BM25's cache, its saved form, the check on load; a million documents are 0.5 GB)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA1S:
        with open(path, "rb") as f:
            _SHA1S[key] = hashlib.file_digest(f, "sha1").hexdigest()
    return _SHA1S[key]


_SHA1S = {}


def write_json(path, obj):
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_csv_rows(path):
    """(columns, [row dicts]) of a CSV with a header line."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def append_csv_row(path, row):
    """Add `row` (a dict) to the CSV at path. A row with new columns rewrites the file with the union
    of the columns (older rows blank there), atomically, so earlier rows are never lost."""
    columns, rows = read_csv_rows(path) if os.path.isfile(path) else ([], [])
    columns += [c for c in row if c not in columns]
    with atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows + [row])
