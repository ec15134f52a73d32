"""Issue 9, bad input loses nothing: every reader against every kind of bad file.

A case ends in one DataError/ConfigError whose message starts with the file (and ":<line>" where
there is a line to name), or in a successful read, with a counted warning where users expect a
skip. The property tests feed random lines to the same readers: each returns well-typed data or
raises exactly DataError/ConfigError starting with the path, never anything else.
"""
import json
import math
import os
import re
import sys
import tempfile
import types

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import prepare_data  # noqa: E402
from common.config import ConfigError, load_config  # noqa: E402
from common.data import DataError, load_beir, read_corpus, read_qrels, read_queries, read_training_file  # noqa: E402

CORPUS = {f"d{i}": {"title": "", "text": f"doc {i}"} for i in range(1, 4)}
QUERIES = {"q1": "first", "q2": "second"}
CONFIG_DEFAULTS = dict(lr=1e-4, steps=10, name="x", amp=False, ks=[1, 10], tags=["a"])
PREPARE_CFG = load_config(prepare_data.DEFAULTS, [])
BOM = "\ufeff".encode()


class Err:
    """Expect exactly `kind`, its message starting with the file (path/`file`) and `:line: `."""

    def __init__(self, line, pattern, file="", kind=DataError):
        self.line, self.pattern, self.file, self.kind = line, pattern, file, kind

    def __repr__(self):
        return f"Err({self.line}, {self.pattern!r})"


def ConfigErr(line, pattern):
    return Err(line, pattern, kind=ConfigError)


class Ok:
    """Expect a read; `warning` must then be on stderr (a counted skip), or no warning at all."""

    def __init__(self, warning=None, check=None):
        self.warning, self.check = warning, check

    def __repr__(self):
        return f"Ok({self.warning!r})"


def strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from strings(v)


def clean_text(result):
    # CRLF and a BOM must not leak into the data.
    assert result and not any(s.endswith("\r") or "\ufeff" in s for s in strings(result))


def holds_10mb(result):
    assert any(len(s) > 10_000_000 for s in strings(result))


# ---------------------------------------------------------------------------- the table

# reader -> (file name, call on a path, a valid record for line i, its text field)
JSONL_READERS = {
    "corpus": ("corpus.jsonl", read_corpus, lambda i: {"_id": f"d{i}", "title": "T", "text": f"doc {i}"}, "text"),
    "queries": ("queries.jsonl", read_queries, lambda i: {"_id": f"q{i}", "text": f"query {i}"}, "text"),
    "mined": ("train.jsonl", lambda p: read_training_file(p, CORPUS),
              lambda i: {"qid": f"q{i}", "query": f"query {i}", "positives": ["d1"],
                         "negatives": ["d2", {"id": "d3", "score": 1.5, "rank": 2}], "teacher": {"d1": 2.0}}, "query"),
    "pairs": ("pairs.jsonl", lambda p: prepare_data.read_pairs(p, "qa"),
              lambda i: {"question": f"question {i}", "answer": f"answer {i}"}, "answer"),
}
CALLS = {name: call for name, (_, call, _, _) in JSONL_READERS.items()}
CALLS.update({
    "qrels": lambda p: read_qrels(p, QUERIES, CORPUS, skipped={"d0"}),
    "config": lambda p: load_config(CONFIG_DEFAULTS, [p]),
    "beir": lambda p: load_beir(p, "test"),
    "python-source": lambda p: prepare_data.scan_tree(p, PREPARE_CFG)[0],
    "prepare": lambda p: prepare_data.main([f"--source={p}", f"--out={os.path.dirname(p)}/out",
                                            "--val_fraction=0", "--test_fraction=0"]),
    "prepare-python": lambda p: prepare_data.main([f"--source={p}", "--format=python-source", f"--out={p}-out",
                                                   "--val_fraction=0", "--test_fraction=0"]),
})


def file_case(name, data):
    """make(tmp_path) -> path of a file holding `data`."""
    def make(tmp):
        path = tmp / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)
    return make


def lines(*records, end="\n"):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + end for r in records).encode()


def directory(tmp):
    (tmp / "a-dir.jsonl").mkdir()
    return str(tmp / "a-dir.jsonl")


def jsonl_cases(reader):
    name, _, good, text = JSONL_READERS[reader]
    first = json.dumps(good(0))
    id_key = {"corpus": "_id", "queries": "_id", "mined": "qid", "pairs": "question"}[reader]
    empty = {"corpus": Ok("skipped 1 empty document"), "queries": Ok("skipped 1 empty quer"),
             "pairs": Ok("skipped 1 line"), "mined": Err(2, "query 'q1' has an empty text")}[reader]
    duplicate = {"corpus": Err(2, "duplicate _id 'd0'"), "queries": Err(2, "duplicate _id 'q0'"),
                 "mined": Err(2, r"query 'q0' again \(first on line 1\)"),
                 "pairs": Ok()}[reader]  # the same pair twice becomes one document when the dataset is built
    no_data = {"corpus": "no documents", "queries": "no queries", "mined": "no training records",
               "pairs": "no usable pairs"}[reader]
    latin1 = lines(good(0)) + json.dumps({**good(1), text: "@@"}).encode().replace(b"@@", b"caf\xe9") + b"\n"
    cases = {
        "malformed-json": (lines(good(0), '{"_id": "x", }'), Err(2, r"malformed JSON \(Expecting property name")),
        "truncated-last-line": ((first + "\n" + json.dumps(good(1))[:-6]).encode(),
                                Err(2, "malformed JSON .*looks truncated")),
        "truncated-mid-character": ((first + "\n").encode() + json.dumps({**good(1), text: "@@"}).encode()
                                    .split(b"@@")[0] + "é".encode()[:1], Err(2, "invalid UTF-8 .*looks truncated")),
        "missing-field": (lines(good(0), {k: v for k, v in good(1).items() if k != text}),
                          Err(2, f"missing field '{text}'")),
        "extra-fields": (lines(good(0), {**good(1), "metadata": {"url": "u"}, "other": [1, None]}), Ok()),
        "wrong-type": (lines(good(0), {**good(1), text: ["a", "list"]}),
                       Err(2, f"field '{text}' must be a string, got list")),
        "id-as-number": (lines(good(0), {**good(1), id_key: 7}), Ok()),
        "bool-as-text": (lines(good(0), {**good(1), text: True}), Err(2, f"field '{text}' must be a string, got bool")),
        "nan-as-text": (lines(good(0), json.dumps({**good(1), text: float("nan")})),
                        Err(2, f"field '{text}' must be a string, got nan")),
        "empty-text": (lines(good(0), {**good(1), text: " \t ", **({"title": " "} if reader == "corpus" else {})}),
                       empty),
        "duplicate-id": (lines(good(0), good(0)), duplicate),
        "crlf-and-bom": (BOM + lines(good(0), good(1), end="\r\n"), Ok(check=clean_text)),
        "blank-lines": (lines("", good(0), "   ", good(1), ""), Ok()),
        "invalid-utf8": (latin1, Err(2, "invalid UTF-8 at byte [0-9]+; re-save the file as UTF-8")),
        "unpaired-surrogate": (lines(good(0), {**good(1), text: "a\ud800"}), Err(2, "unpaired surrogate \\\\ud800")),
        "bom-on-line-2": (lines(good(0)) + BOM + lines(good(1)), Err(2, "malformed JSON .*BOM")),
        "10mb-document": (lines(good(0), {**good(1), text: "word " * 2_000_001}), Ok(check=holds_10mb)),
        "not-an-object": (lines(good(0), [1, 2]), Err(2, "expected a JSON object, got list")),
        "deep-nesting": (lines(good(0), '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"), Err(2, "nested too deeply")),
        "huge-number": (lines(good(0), '{"x": ' + "9" * 5000 + "}"), Err(2, "number too long")),
        "empty-file": (b"", Err(None, no_data)),
        "whitespace-only-file": (b"\n  \r\n\t\n", Err(None, no_data)),
    }
    out = [(reader, case, file_case(name, data), expect) for case, (data, expect) in cases.items()]
    out.append((reader, "directory", directory, Err(None, "is a directory, expected a file")))
    out.append((reader, "missing-file", lambda tmp: str(tmp / name), Err(None, "file not found")))
    return out


H = "query-id\tcorpus-id\tscore\n"
QRELS_CASES = {
    "header-and-row": (H + "q1\td1\t1\n", Ok()),
    "no-header": ("q1\td1\t1\n", Ok()),
    "trec-four-columns": ("q1 0 d1 2\nq1 0 d2 0\n", Ok()),
    "crlf-and-bom": (BOM + (H + "q1\td1\t1\n").replace("\n", "\r\n").encode(), Ok(check=clean_text)),
    "trailing-tab": (H + "q1\td1\t1\t\n", Ok()),
    "non-integer-grade": (H + "q1\td1\thigh\n", Err(2, "score 'high' is not an integer grade")),
    "fractional-grade": (H + "q1\td1\t0.5\n", Err(2, "score '0.5' is not an integer grade")),
    "nan-grade": (H + "q1\td1\tnan\n", Err(2, "score 'nan' is not an integer grade")),
    "huge-grade": (H + "q1\td1\t" + "9" * 400 + "\n", Err(2, r"score '9{20}\.\.\.' is not an integer")),
    "first-row-bad-grade": ("q1\td1\tyes\n", Err(1, "score 'yes' is not an integer grade")),
    "unknown-query-id": (H + "zz\td1\t1\n", Err(2, "query-id 'zz' is not in queries.jsonl")),
    "unknown-corpus-id": (H + "q1\tzz\t1\n", Err(2, "corpus-id 'zz' is not in corpus.jsonl")),
    "empty-query-id": (H + "\td1\t1\n", Err(2, "empty query-id")),
    "two-columns": (H + "q1\td1\n", Err(2, "expected 3 tab-separated columns .* got 2")),
    "five-columns": (H + "q1\td1\t1\tx\ty\n", Err(2, "got 5")),
    "truncated-last-line": (H + "q1\td1\t1\nq2\td", Err(3, "got 2; the file ends mid-line, so it looks truncated")),
    "invalid-utf8": ((H + "q1\td1\t1\n").encode() + b"q\xff\td1\t1\n", Err(3, "invalid UTF-8")),
    "duplicate-row": (H + "q1\td1\t1\nq1\td1\t2\n",
                      Ok(r"1 duplicate \(query-id, corpus-id\) row\(s\); the last grade wins")),
    "row-naming-an-empty-doc": (H + "q1\td1\t1\nq1\td0\t1\n", Ok("dropped 1 row")),
    "header-only": (H, Ok()),  # an empty split: load_beir and prepare_data.py refuse it (below)
    "empty-file": ("", Ok()),
}

YAML_CASES = {
    "empty-file": ("", Ok()),
    "comments-only": ("# nothing yet\n\n", Ok()),
    "bom": ("\ufeffsteps: 20\n", Ok(check=lambda cfg: cfg.steps == 20)),
    "crlf-and-bom": ("\ufeffsteps: 20\r\nname: y\r\n", Ok(check=lambda cfg: (cfg.steps, cfg.name) == (20, "y"))),
    "null-for-a-list": ("tags:\n", Ok(check=lambda cfg: cfg.tags == [])),
    "scalar-for-a-list": ("ks: 5\n", Ok(check=lambda cfg: cfg.ks == [5])),
    "invalid-utf8": (b"steps: 20\nname: caf\xe9\n", ConfigErr(2, "invalid UTF-8")),
    "malformed-yaml": ("steps: 20\nname: a: b\n", ConfigErr(2, "not valid YAML")),
    "truncated-quote": ('steps: 20\nname: "abc', ConfigErr(2, "not valid YAML .*end of stream")),
    "tab-indent": ("steps: 20\n\tname: y\n", ConfigErr(2, "not valid YAML")),
    "control-character": ("steps: 20\nname: a\x01b\n", ConfigErr(2, "not valid YAML .*special characters")),
    "two-documents": ("steps: 1\n---\nsteps: 2\n", ConfigErr(2, "not valid YAML")),
    "python-tag": ("name: !!python/object:os.system ls\n", ConfigErr(1, "not valid YAML .*constructor")),
    "deep-nesting": ("name: " + "[" * 5000 + "]" * 5000 + "\n", ConfigErr(None, "nested too deeply")),
    "list-at-top": ("- steps\n- 20\n", ConfigErr(None, "flat key: value lines, got list")),
    "unknown-key": ("steps: 20\nstepz: 3\n", ConfigErr(2, "unknown key 'stepz'; did you mean steps")),
    "non-string-key": ("1: 2\n", ConfigErr(1, "key 1 is not a name")),
    "duplicate-key": ("steps: 20\nsteps: 30\n", ConfigErr(2, "duplicate key 'steps', first on line 1")),
    "list-for-an-int": ("name: y\nsteps: [1, 2]\n", ConfigErr(2, r"steps=\[1, 2\] is not a int")),
    "dict-for-a-str": ("name: {a: 1}\n", ConfigErr(1, "name={'a': 1} is not a str")),
    "bool-for-an-int": ("steps: true\n", ConfigErr(1, "steps=True is not a int")),
    "bool-for-a-float": ("lr: yes\n", ConfigErr(1, "lr=True is not a float")),
    "fraction-for-an-int": ("steps: 1.5\n", ConfigErr(1, "steps=1.5 is not a int")),
    "null-for-an-int": ("steps:\n", ConfigErr(1, "steps=None is not a int")),
    "nan-for-a-float": ("lr: .nan\n", ConfigErr(1, "lr=nan is not a float")),
    "huge-int-for-a-float": ("lr: 1" + "0" * 400 + "\n", ConfigErr(1, r"lr=1000.*\.\.\. is not a float")),
    "dict-for-a-list": ("tags: {a: 1}\n", ConfigErr(1, "tags={'a': 1} is not a list")),
    "nested-list": ("ks: [1, [2]]\n", ConfigErr(1, "is not a list")),
    "word-for-a-bool": ("amp: maybe\n", ConfigErr(1, "amp='maybe' is not a bool")),
}


def beir_dir(corpus=None, queries=None, qrels=None):
    """make(tmp_path) -> a BEIR directory; each part: bytes/str, None for the default, "DIR" for a directory."""
    corpus = lines({"_id": "d1", "text": "one"}, {"_id": "d2", "text": "two"}) if corpus is None else corpus
    queries = lines({"_id": "q1", "text": "first"}) if queries is None else queries
    qrels = {"test": H + "q1\td1\t1\n"} if qrels is None else qrels

    def make(tmp):
        root = tmp / "beir"
        (root / "qrels").mkdir(parents=True)
        for rel, data in [("corpus.jsonl", corpus), ("queries.jsonl", queries),
                          *((f"qrels/{s}.tsv", d) for s, d in qrels.items())]:
            if data == "DIR":
                (root / rel).mkdir()
            elif data != "ABSENT":
                (root / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(root)
    return make


BEIR_CASES = {
    "valid": (beir_dir(), Ok()),
    "crlf-and-bom": (beir_dir(corpus=BOM + lines({"_id": "d1", "text": "one"}, end="\r\n"),
                              qrels={"test": BOM + (H + "q1\td1\t1\n").replace("\n", "\r\n").encode()}),
                     Ok(check=clean_text)),
    "ids-as-numbers": (beir_dir(corpus=lines({"_id": 1, "text": "one"}), queries=lines({"_id": 7, "text": "q"}),
                                qrels={"test": H + "7\t1\t1\n"}), Ok()),
    "empty-doc-named-in-qrels": (beir_dir(corpus=lines({"_id": "d1", "text": "one"}, {"_id": "d2", "text": " "}),
                                          qrels={"test": H + "q1\td1\t1\nq1\td2\t1\n"}),
                                 Ok("skipped 1 empty document.*\n.*dropped 1 row")),
    "not-a-directory": (file_case("beir.txt", "x"), Err(None, "not a directory")),
    "missing-directory": (lambda tmp: str(tmp / "nothing"), Err(None, "not a directory")),
    "no-such-split": (beir_dir(qrels={"train": H + "q1\td1\t1\n"}),
                      Err(None, r"no such split \(this directory has: train\)", file="qrels/test.tsv")),
    "qrels-file-is-a-directory": (beir_dir(qrels={"test": "DIR"}), Err(None, "is a directory", file="qrels/test.tsv")),
    "corpus-missing": (beir_dir(corpus="ABSENT"), Err(None, "file not found", file="corpus.jsonl")),
    "corpus-is-a-directory": (beir_dir(corpus="DIR"), Err(None, "is a directory", file="corpus.jsonl")),
    "empty-corpus": (beir_dir(corpus=b""), Err(None, "no documents", file="corpus.jsonl")),
    "empty-queries": (beir_dir(queries=b""), Err(None, "no queries", file="queries.jsonl")),
    "qrels-naming-unknown-doc": (beir_dir(qrels={"test": H + "q1\tzz\t1\n"}),
                                 Err(2, "corpus-id 'zz' is not in corpus.jsonl", file="qrels/test.tsv")),
    "qrels-naming-unknown-query": (beir_dir(qrels={"test": H + "zz\td1\t1\n"}),
                                   Err(2, "query-id 'zz' is not in queries.jsonl", file="qrels/test.tsv")),
    "split-without-relevant-rows": (beir_dir(qrels={"test": H + "q1\td1\t0\n"}),
                                    Err(None, "no relevant", file="qrels/test.tsv")),
    "empty-qrels": (beir_dir(qrels={"test": ""}), Err(None, "no relevant", file="qrels/test.tsv")),
    "id-with-a-tab": (beir_dir(corpus=lines({"_id": "d\t1", "text": "one"})),
                      Err(1, "_id 'd\\\\t1' is empty or has a tab", file="corpus.jsonl")),
    "empty-id": (beir_dir(corpus=lines({"_id": "d1", "text": "one"}, {"_id": "", "text": "x"})),
                 Err(2, "_id '' is empty", file="corpus.jsonl")),
}

GOOD_PY = 'def {name}(x):\n    """Return the value of x doubled here."""\n    return x * 2\n'


def tree(case_file=None, data=b"", link=False):
    """make(tmp_path) -> a source tree: good.py and, when given, one more file or a broken link."""
    def make(tmp):
        root = tmp / "tree"
        root.mkdir()
        (root / "good.py").write_text(GOOD_PY.format(name="good"))
        if link:
            (root / case_file).symlink_to(tmp / "nowhere.py")
        elif case_file:
            (root / case_file).write_bytes(data)
        return str(root)
    return make


def kept(*files):
    def check(result):
        assert set(files) <= set(result), sorted(result)
    return check


SKIPPED_ONE = r"tree: skipped 1 file\(s\) that do not decode or parse, e.g. case.py"
PYTHON_CASES = {
    "invalid-utf8": (tree("case.py", GOOD_PY.format(name="f").encode() + b"# caf\xe9\n"), Ok(SKIPPED_ONE)),
    "invalid-utf8-line-1": (tree("case.py", b"\xff\xfe = 1\n"), Ok(SKIPPED_ONE)),
    "syntax-error": (tree("case.py", b"def f(:\n"), Ok(SKIPPED_ONE)),
    "null-bytes": (tree("case.py", GOOD_PY.format(name="f").encode() + b"\x00\n"), Ok(SKIPPED_ONE)),
    "unknown-coding-cookie": (tree("case.py", b"# -*- coding: nosuch -*-\nx = 1\n"), Ok(SKIPPED_ONE)),
    "inconsistent-tabs": (tree("case.py", b'def g(x):\n\t"""Doc."""\n        return x\n'), Ok(SKIPPED_ONE)),
    "deep-nesting": (tree("case.py", b"x = " + b"(" * 5000 + b")" * 5000 + b"\n"), Ok(SKIPPED_ONE)),
    "broken-symlink": (tree("case.py", link=True), Ok(SKIPPED_ONE)),
    "crlf-and-bom": (tree("case.py", BOM + GOOD_PY.format(name="f").replace("\n", "\r\n").encode()),
                     Ok(check=kept("good.py", "case.py"))),
    "latin1-with-cookie": (tree("case.py", b"# -*- coding: latin-1 -*-\n" + GOOD_PY.format(name="f").encode()
                                + b"# caf\xe9\n"), Ok(check=kept("good.py", "case.py"))),
    "10mb-file": (tree("case.py", (GOOD_PY.format(name="f") + "# " + "x" * 10_500_000 + "\n").encode()),
                  Ok(check=kept("good.py", "case.py"))),
    "empty-file": (tree("case.py", b""), Ok(check=kept("good.py"))),
}


def pairs_file(*extra):
    return lines(*({"question": f"what is item {i}?", "answer": f"item {i} is a thing"} for i in range(3)), *extra)


PREPARE_CASES = {
    "pairs-unpaired-surrogate": (file_case("qa.jsonl", pairs_file({"question": "x\udc80", "answer": "y"})),
                                 Err(4, "unpaired surrogate")),
    "pairs-unknown-keys": (file_case("qa.jsonl", lines({"foo": 1})), Err(1, "cannot tell the format from keys")),
    "pairs-empty-file": (file_case("qa.jsonl", b""), Err(None, "empty file")),
    "pairs-directory": (directory, Err(None, "no readable document among 0 file")),
    "not-jsonl": (file_case("qa.txt", "x"), Err(None, "expected a BEIR directory, a .jsonl file")),
    "corpus-without-pseudo-queries": (file_case("docs.jsonl", lines({"_id": "d1", "text": "x"})),
                                      Err(None, "a corpus without queries")),
    "beir-bad-qrels-row": (beir_dir(qrels={"train": H + "q1\td1\t1\nq1\td1\tmaybe\n"}),
                           Err(3, "score 'maybe'", file="qrels/train.tsv")),
    "beir-dev-and-val": (beir_dir(qrels={"dev": H + "q1\td1\t1\n", "val": H + "q1\td1\t1\n"}),
                         Err(None, "has both dev.tsv and val.tsv", file="qrels")),
    "beir-no-qrels": (beir_dir(qrels={}), Err(None, "no <split>.tsv files", file="qrels")),
    "python-source-bad-files-skipped": (tree("case.py", b"def f(:\n"), Ok(SKIPPED_ONE)),
}


CASES = [c for reader in JSONL_READERS for c in jsonl_cases(reader)]
CASES += [("qrels", case, file_case("test.tsv", data), expect) for case, (data, expect) in QRELS_CASES.items()]
CASES += [("qrels", "directory", directory, Err(None, "is a directory")),
          ("qrels", "missing-file", lambda tmp: str(tmp / "test.tsv"), Err(None, "file not found"))]
CASES += [("config", case, file_case("c.yaml", data), expect) for case, (data, expect) in YAML_CASES.items()]
CASES += [("config", "directory", lambda tmp: (tmp / "c.yaml").mkdir() or str(tmp / "c.yaml"),
           ConfigErr(None, r"cannot read config file \(Is a directory\)")),
          ("config", "missing-file", lambda tmp: str(tmp / "c.yaml"),
           ConfigErr(None, r"cannot read config file \(No such file"))]
CASES += [("beir", case, make, expect) for case, (make, expect) in BEIR_CASES.items()]
CASES += [("python-source", case, make, expect) for case, (make, expect) in PYTHON_CASES.items()]
CASES += [("prepare", case, make, expect) for case, (make, expect) in PREPARE_CASES.items()]


@pytest.mark.parametrize("reader, case, make, expect", CASES, ids=[f"{r}-{c}" for r, c, _, _ in CASES])
def test_bad_input(tmp_path, capsys, reader, case, make, expect):
    path = make(tmp_path)
    call = CALLS["prepare-python" if case.startswith("python-source") else reader]
    if isinstance(expect, Err):
        with pytest.raises(Exception) as e:
            call(path)
        message = str(e.value)
        # the kind named, or its own narrower kind (EmptySplit is a DataError a trainer can catch)
        assert type(e.value) is expect.kind or type(e.value).__bases__ == (expect.kind,), \
            f"{type(e.value).__name__}: {message}"
        where = os.path.join(path, expect.file) if expect.file else path
        assert message.startswith(f"{where}:{expect.line}: " if expect.line else f"{where}: "), message
        assert re.search(expect.pattern, message), message
        assert "\n" not in message  # one line on the terminal
    else:
        result = call(path)
        err = capsys.readouterr().err
        if expect.warning:
            assert re.search(expect.warning, err), err
            assert path in err  # the warning names the file
        else:
            assert "warning" not in err, err
        if expect.check:
            expect.check(result)


@pytest.mark.parametrize("bad", ["pairs", "beir", "corpus-pseudo", "python-source"])
def test_failed_run_keeps_previous_output(tmp_path, bad):
    """Whatever the source, a run that fails on bad input leaves the earlier dataset byte for byte."""
    out = tmp_path / "out"
    good = tmp_path / "good.jsonl"
    good.write_bytes(lines(*({"question": f"what is item {i}?", "answer": f"item {i} is a thing"} for i in range(30))))
    assert prepare_data.main([f"--source={good}", f"--out={out}"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    make, args = {"pairs": (file_case("bad.jsonl", pairs_file() + b'{"question": "x'), []),
                  "beir": (beir_dir(qrels={"test": H + "q1\tzz\t1\n"}), []),
                  "corpus-pseudo": (file_case("docs.jsonl", lines({"_id": "d1", "text": "x"}) + b"{"),
                                    ["--pseudo_queries=ict"]),
                  "python-source": (tree("case.py", b"def f(:"),
                                    ["--format=python-source", "--min_query_words=50"])}[bad]
    with pytest.raises(DataError):
        prepare_data.main([f"--source={make(tmp_path)}", *args, f"--out={out}"])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_a_bad_line_deep_in_a_large_corpus_is_named_and_the_earlier_dataset_kept(tmp_path):
    """A corpus that is fine for 200,000 lines and then not: the error names that line, after the reading
    has gone through all of them, and the dataset prepared before stays as it was."""
    out, n = tmp_path / "out", 200_000
    docs = b"".join(b'{"_id": "d%d", "text": "document %d"}\n' % (i, i) for i in range(n))
    good = beir_dir(corpus=docs, queries=lines(*({"_id": f"q{i}", "text": f"document {i}?"} for i in range(5))),
                    qrels={"test": H + "".join(f"q{i}\td{i}\t1\n" for i in range(5))})(tmp_path)
    assert prepare_data.main([f"--source={good}", f"--out={out}"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with open(os.path.join(good, "corpus.jsonl"), "ab") as f:
        f.write(b'{"_id": "late", "text": "cut short\n')
    with pytest.raises(DataError, match=rf"^{re.escape(os.path.join(good, 'corpus.jsonl'))}:{n + 1}: "):
        prepare_data.main([f"--source={good}", f"--out={out}"])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------------- property tests

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=4), inner, max_size=3), max_leaves=6)


def mostly(good, bad):
    """`good` 7 times in 8, else `bad`: a file reads only when all its lines do, so bad must be rare.
    (st.one_of would not weigh it: it draws its distinct branches evenly.)"""
    return st.sampled_from(range(8)).flatmap(lambda n: bad if n == 7 else good)


# Bad values: blanks, CR, a BOM, lone surrogates (invalid UTF-8 once written raw), other JSON types.
BAD_TEXTS = st.one_of(st.sampled_from(["", " ", "\t", "x\r", "\ufeffy", "a\ud800", "\udfff"]), JSON_VALUES)
BAD_IDS = st.one_of(st.sampled_from(["", " d1", "a\tb", "a\nb", "zz"]), BAD_TEXTS)
TEXTS = mostly(st.text(min_size=1, max_size=16), BAD_TEXTS)
IDS = mostly(st.from_regex(r"[a-z0-9_-]{1,6}", fullmatch=True) | st.integers(0, 10**6), BAD_IDS)
DOC_REFS = mostly(st.sampled_from(["d1", "d2", "d3"]) | st.fixed_dictionaries(
    {"id": st.sampled_from(["d1", "d2", "d3"])}, optional={"score": st.floats(), "rank": st.integers()}),
    st.sampled_from(["zz", "", {"score": 1}]) | JSON_VALUES)
DOC_LISTS = mostly(st.lists(DOC_REFS, min_size=1, max_size=3), st.lists(DOC_REFS, max_size=1) | JSON_VALUES)


def encode(obj, ascii_):
    # Without ensure_ascii a lone surrogate is written raw: invalid UTF-8, as a broken writer would.
    return json.dumps(obj, ensure_ascii=ascii_).encode("utf-8", "surrogatepass")


def file_bytes(line):
    """A file of 0-6 lines from `line` (bytes), joined by LF or CRLF, maybe a BOM, maybe no final newline."""
    return st.tuples(st.lists(line, max_size=6), st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.booleans()).map(
        lambda t: (BOM if t[2] else b"") + t[1].join(t[0]) + (t[1] if t[3] else b""))


def jsonl_bytes(record):
    """JSONL files of records, now and then another JSON value, random text or bytes, or a record cut short."""
    as_line = st.tuples(record, st.booleans()).map(lambda t: encode(*t))
    return file_bytes(mostly(as_line, st.one_of(
        JSON_VALUES.map(lambda v: encode(v, True)),
        st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.binary(max_size=20),
        st.tuples(as_line, st.integers(0, 40)).map(lambda t: t[0][:t[1]]))))


def read_fuzzed(data, name, read):
    """read(path) on a file of `data`: the result, or None after checking the error is exactly ours."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        try:
            result = read(path)
        except (DataError, ConfigError) as e:
            assert type(e) in (DataError, ConfigError)
            assert str(e).startswith(path + ":") or str(e).startswith(path + " "), str(e)
            # --hypothesis-show-statistics counts outcomes: "error: malformed JSON", "error: missing field", ...
            event("error: " + " ".join(re.sub(r"^:?\d*:? *", "", str(e)[len(path):]).split()[:2]))
            return None
        event("read")
        return result


def is_text(s):
    if not isinstance(s, str):
        return False
    s.encode("utf-8")  # no lone surrogate got through
    return True


def is_id(s):
    return is_text(s) and s == s.strip() and s != "" and not set(s) & set("\t\r\n")


@FUZZ
@given(jsonl_bytes(st.fixed_dictionaries({"_id": IDS, "text": TEXTS},
                                         optional={"title": TEXTS, "metadata": JSON_VALUES})))
def test_fuzz_read_corpus(data):
    corpus = read_fuzzed(data, "corpus.jsonl", read_corpus)
    if corpus is not None:
        assert isinstance(corpus, dict) and corpus
        for doc_id, doc in corpus.items():
            assert is_id(doc_id) and set(doc) == {"title", "text"}
            assert is_text(doc["title"]) and is_text(doc["text"]) and (doc["title"] or doc["text"])


@FUZZ
@given(jsonl_bytes(st.fixed_dictionaries({"_id": IDS, "text": TEXTS}, optional={"metadata": JSON_VALUES})))
def test_fuzz_read_queries(data):
    queries = read_fuzzed(data, "queries.jsonl", read_queries)
    if queries is not None:
        assert isinstance(queries, dict) and queries
        assert all(is_id(q) and is_text(t) and t.strip() == t and t for q, t in queries.items())


QRELS_ROWS = st.tuples(mostly(st.sampled_from(["q1", "q2"]), st.sampled_from(["zz", "", "d1"])),
                       mostly(st.sampled_from(["d1", "d2", "d3"]), st.sampled_from(["zz", "", "d0", "q1"])),
                       mostly(st.sampled_from(["0", "1", "2", "-1", "1.0", " 1"]),
                              st.sampled_from(["0.5", "nan", "x", ""])),
                       st.sampled_from(["\t", " "])).map(lambda t: t[3].join(t[:3]).encode())
QRELS_LINES = mostly(QRELS_ROWS, st.one_of(
    st.just(b"query-id\tcorpus-id\tscore"),
    st.lists(st.text(max_size=6), max_size=5).map(lambda cells: "\t".join(cells).encode("utf-8", "surrogatepass")),
    st.binary(max_size=16)))


@FUZZ
@given(file_bytes(QRELS_LINES))
def test_fuzz_read_qrels(data):
    qrels = read_fuzzed(data, "test.tsv", lambda p: read_qrels(p, QUERIES, CORPUS, skipped={"d0"}))
    if qrels is not None:
        for qid, row in qrels.items():
            assert qid in QUERIES and row
            assert all(d in CORPUS and type(g) is int for d, g in row.items())


MINED_RECORDS = st.fixed_dictionaries(
    {"qid": IDS, "query": TEXTS, "positives": DOC_LISTS},
    optional={"negatives": DOC_LISTS, "teacher": mostly(
        st.dictionaries(st.sampled_from(["d1", "d2", "d3"]), st.floats(-1e6, 1e6) | st.integers(-9, 9), max_size=3),
        st.dictionaries(st.sampled_from(["d1", "d2"]), SCALARS, max_size=2) | JSON_VALUES)})


@FUZZ
@given(jsonl_bytes(MINED_RECORDS))
def test_fuzz_read_training_file(data):
    records = read_fuzzed(data, "train.jsonl", lambda p: read_training_file(p, CORPUS))
    if records is not None:
        assert records and len({r["qid"] for r in records}) == len(records)
        for r in records:
            assert is_text(r["qid"]) and is_text(r["query"]) and r["query"].strip()
            assert r["positives"] and all(d in CORPUS for d in r["positives"] + r["negatives"])
            assert not set(r["negatives"]) & set(r["positives"])
            assert all(is_text(d) and type(s) is float and math.isfinite(s) for d, s in r["teacher"].items())


PAIR_RECORDS = st.fixed_dictionaries({"question": TEXTS, "answer": TEXTS},
                                     optional={"title": TEXTS, "meta": JSON_VALUES})


@FUZZ
@given(jsonl_bytes(PAIR_RECORDS))
def test_fuzz_read_pairs(data):
    pairs = read_fuzzed(data, "pairs.jsonl", lambda p: prepare_data.read_pairs(p, "qa"))
    if pairs is not None:
        assert pairs and all(len(p) == 3 and all(map(is_text, p)) and p[0] and p[2] for p in pairs)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(jsonl_bytes(PAIR_RECORDS))
def test_fuzz_prepare_pairs_end_to_end(data):
    """The whole of prepare_data.py on a random pairs file: a dataset its own readers take back, or
    one DataError with the earlier output left as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "qa.jsonl"), os.path.join(tmp, "out")
        with open(src, "wb") as f:
            f.write(data)
        os.makedirs(out)
        with open(os.path.join(out, "corpus.jsonl"), "w") as f:
            f.write('{"_id": "old", "text": "earlier run"}\n')
        try:
            prepare_data.main([f"--source={src}", f"--out={out}", "--format=qa", "--val_fraction=0",
                               "--test_fraction=0"])
        except DataError as e:
            assert str(e).startswith(src), str(e)
            assert os.listdir(out) == ["corpus.jsonl"] and read_corpus(os.path.join(out, "corpus.jsonl")) == {
                "old": {"title": "", "text": "earlier run"}}
            event("run failed, old output kept")
            return
        corpus, queries, qrels = load_beir(out, "train")
        assert corpus and queries and set(qrels) == set(queries)
        event("dataset written and read back")


YAML_VALUES = {"lr": st.sampled_from(["1e-4", "0.5", "3", "-2.5e3", ".inf"]), "steps": st.integers().map(str),
               "name": st.from_regex(r"[a-z][a-z0-9 _/.-]{0,8}", fullmatch=True), "amp": st.sampled_from(
                   ["true", "false", "yes", "off", "1"]), "ks": st.sampled_from(["[1, 2]", "5,20", "7", "[]"]),
               "tags": st.sampled_from(["[a, b]", "a,b", "c", "~", "''"])}
BAD_YAML_VALUES = st.one_of(st.sampled_from(["", "true", "null", ".nan", "1.5", "[1, [2]]", "{a: 1}", '"unterminated',
                                             "a: b", "!!binary aGk=", "!!python/name:os.system", "*x", "[", "- 1",
                                             "1" + "0" * 400]), st.text(max_size=8))


@st.composite
def yaml_files(draw):
    """Config files of known keys with values of their type, now and then a bad value or a bad line."""
    keys = draw(st.lists(st.sampled_from(sorted(CONFIG_DEFAULTS)), unique=True, max_size=6))
    good = [f"{k}: {draw(mostly(YAML_VALUES[k], BAD_YAML_VALUES))}" for k in keys]
    bad = draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(["stepz", "1", "null", "- steps", "steps", "? [a]"]) | st.text(max_size=5),
                  BAD_YAML_VALUES).map(": ".join), st.text(max_size=12)), max_size=1))
    lines = [text.encode("utf-8", "surrogatepass") for text in good + bad]
    if draw(mostly(st.just(False), st.just(True))):
        lines.append(draw(st.binary(max_size=12)))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    return (BOM if draw(st.booleans()) else b"") + newline.join(draw(st.permutations(lines))) + newline


@FUZZ
@given(yaml_files())
def test_fuzz_config_file(data):
    cfg = read_fuzzed(data, "c.yaml", lambda p: load_config(CONFIG_DEFAULTS, [p]))
    if cfg is not None:
        assert isinstance(cfg, types.SimpleNamespace) and set(vars(cfg)) == set(CONFIG_DEFAULTS)
        for key, default in CONFIG_DEFAULTS.items():
            value = getattr(cfg, key)
            assert type(value) is type(default), (key, value)
            if isinstance(default, list):
                assert all(type(v) is type(default[0]) for v in value), (key, value)
            if isinstance(default, float):
                assert not math.isnan(value)


PY_FILES = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    # A documented function with random docstring and body text and random line endings: it parses
    # or not, and when it does function_pair cuts the docstring out by line and byte offsets.
    st.tuples(st.text(max_size=30), st.text(max_size=20), st.sampled_from(["\n", "\r\n", "\r"]), st.booleans()).map(
        lambda t: ((BOM.decode() if t[3] else "") + 'def f(x):\n    """' + t[0] + '"""\n    ' + t[1] + "\n    return x\n")
        .replace("\n", t[2]).encode("utf-8", "surrogatepass")))


@FUZZ
@given(st.lists(PY_FILES, min_size=1, max_size=3))
def test_fuzz_python_source_tree(sources):
    """Any .py bytes: scan_tree keeps what parses and counts the rest, never raises."""
    cfg = load_config(prepare_data.DEFAULTS, ["--min_query_words=1"])
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(sources):
            with open(os.path.join(tmp, f"m{i}.py"), "wb") as f:
                f.write(data)
        files, stats = prepare_data.scan_tree(tmp, cfg)
    assert stats["files_scanned"] == len(sources) and stats["files_unreadable"] + stats["files_kept"] <= len(sources)
    for pairs in files.values():
        assert all(is_text(query) and query and is_text(title) and is_text(code) for query, title, code in pairs)
    event(f"files unreadable: {stats['files_unreadable']}, with pairs: {stats['files_kept']}")
