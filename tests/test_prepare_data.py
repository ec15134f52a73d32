"""prepare_data.py on tiny fixtures built in tmp_path, run in-process through main(argv)."""
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import prepare_data  # noqa: E402
from common.data import DataError, read_corpus, read_qrels, read_queries, splits  # noqa: E402
from common.run import UserError  # noqa: E402


def write_lines(path, records, newline="\n", bom=False):
    text = newline.join(r if isinstance(r, str) else json.dumps(r) for r in records) + newline
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def load(out):
    """(corpus, queries, {split: qrels}) of a written dataset."""
    out = str(out)
    corpus = read_corpus(os.path.join(out, "corpus.jsonl"))
    queries = read_queries(os.path.join(out, "queries.jsonl"))
    qrels = {s: read_qrels(os.path.join(out, "qrels", f"{s}.tsv"), queries, corpus) for s in splits(out)}
    return corpus, queries, qrels


def run(*argv):
    assert prepare_data.main([str(a) for a in argv]) == 0


def qa_records(n=40):
    return [{"question": f"what is item number {i}?", "answer": f"item {i} is a thing"} for i in range(n)]


# ---------------------------------------------------------------------------- QA / code pairs

def test_qa_merges_identical_answers_and_questions(tmp_path):
    src = write_lines(tmp_path / "qa.jsonl", qa_records(20) + [
        {"query": "who wrote it?", "positive": "  the same answer  "},      # other key spelling
        {"question": "who signed it?", "answer": "the same answer"},         # same doc after strip
        {"question": "who wrote it?", "answer": "a second answer", "title": "T"},  # same question
        {"question": "who wrote it?", "answer": "a second answer", "title": "T"},  # exact repeat
    ])
    run(f"--source={src}", f"--out={tmp_path / 'out'}", "--format=auto")
    corpus, queries, qrels = load(tmp_path / "out")
    assert set(qrels) == {"train", "val", "test"}
    assert [d["text"] for d in corpus.values()].count("the same answer") == 1
    assert len(corpus) == 22 and len(queries) == 22
    wrote = next(q for q, t in queries.items() if t == "who wrote it?")
    split = next(s for s, rows in qrels.items() if wrote in rows)
    docs = qrels[split][wrote]
    assert sorted(corpus[d]["text"] for d in docs) == ["a second answer", "the same answer"]
    assert {corpus[d]["title"] for d in docs} == {"", "T"}
    assert list(queries)[:3] == ["q0", "q1", "q2"] and list(corpus)[:3] == ["d0", "d1", "d2"]
    info = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert info["corpus"] == 22 and info["splits"]["train"]["queries"] == len(qrels["train"])


def test_splits_disjoint_and_seeded(tmp_path):
    src = write_lines(tmp_path / "qa.jsonl", qa_records(60))

    def split_texts(seed, name):
        run(f"--source={src}", f"--out={tmp_path / name}", f"--seed={seed}")
        _, queries, qrels = load(tmp_path / name)
        return {s: {queries[q] for q in rows} for s, rows in qrels.items()}

    a, again, other = split_texts(0, "a"), split_texts(0, "b"), split_texts(1, "c")
    assert a == again
    assert a["test"] != other["test"]
    assert not (a["train"] & a["val"] or a["train"] & a["test"] or a["val"] & a["test"])
    assert len(a["train"] | a["val"] | a["test"]) == 60
    assert len(a["val"]) == len(a["test"]) == 6
    assert (tmp_path / "a" / "queries.jsonl").read_bytes() == (tmp_path / "b" / "queries.jsonl").read_bytes()


def test_crlf_and_bom(tmp_path):
    src = write_lines(tmp_path / "qa.jsonl", qa_records(30), newline="\r\n", bom=True)
    run(f"--source={src}", f"--out={tmp_path / 'out'}")
    corpus, queries, qrels = load(tmp_path / "out")
    assert len(queries) == 30 and "item 0 is a thing" in [d["text"] for d in corpus.values()]
    assert not any("\r" in t or "\ufeff" in t for t in queries.values())


def test_empty_sides_skipped_with_warning(tmp_path, capsys):
    src = write_lines(tmp_path / "qa.jsonl", qa_records(30) + [{"question": " ", "answer": "x"}])
    run(f"--source={src}", f"--out={tmp_path / 'out'}")
    assert "skipped 1 line" in capsys.readouterr().err
    assert len(load(tmp_path / "out")[1]) == 30


def test_code_pairs(tmp_path):
    records = [{"query": f"add {i} to a number", "code": f"def add{i}(x):\n    return x + {i}"} for i in range(30)]
    records.append({"query": "add one to a number", "code": "def add1(x):\n    return x + 1"})  # same code
    src = write_lines(tmp_path / "code.jsonl", records)
    run(f"--source={src}", f"--out={tmp_path / 'out'}")
    corpus, queries, qrels = load(tmp_path / "out")
    assert len(corpus) == 30 and len(queries) == 31
    assert "def add3(x):\n    return x + 3" in [d["text"] for d in corpus.values()]
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["format"] == "code"


def test_malformed_json_names_file_and_line(tmp_path):
    src = write_lines(tmp_path / "bad.jsonl", [{"question": "a b c", "answer": "x"},
                                               {"question": "d e f", "answer": "y"}, '{"question": "oops"'])
    with pytest.raises(DataError) as e:
        run(f"--source={src}", f"--out={tmp_path / 'out'}")
    assert "bad.jsonl" in str(e.value) and ":3:" in str(e.value)


def test_missing_field(tmp_path):
    src = write_lines(tmp_path / "qa.jsonl", [{"question": "a b c", "answer": "x"}, {"question": "d e f"}])
    with pytest.raises(DataError, match=r"qa.jsonl:2: missing field 'answer' or 'positive'"):
        run(f"--source={src}", f"--out={tmp_path / 'out'}")


def test_too_few_queries_for_splits(tmp_path):
    src = write_lines(tmp_path / "qa.jsonl", qa_records(2))
    with pytest.raises(DataError, match="qa.jsonl: split 'val' would be empty"):
        run(f"--source={src}", f"--out={tmp_path / 'out'}")
    run(f"--source={src}", f"--out={tmp_path / 'out'}", "--val_fraction=0")
    assert set(load(tmp_path / "out")[2]) == {"train", "test"}


def test_failed_run_keeps_previous_output(tmp_path):
    good = write_lines(tmp_path / "qa.jsonl", qa_records(30))
    out = tmp_path / "out"
    run(f"--source={good}", f"--out={out}")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = write_lines(tmp_path / "bad.jsonl", qa_records(5) + ["not json"])
    with pytest.raises(DataError):
        run(f"--source={bad}", f"--out={out}")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refuses_to_replace_a_non_dataset_dir(tmp_path):
    src = write_lines(tmp_path / "qa.jsonl", qa_records(30))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a dataset"):
        run(f"--source={src}", f"--out={tmp_path / 'notes'}")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "prepare_data.py"),
                           f"--source={tmp_path / 'missing.jsonl'}", f"--out={tmp_path / 'out'}"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "missing.jsonl" in proc.stderr


# ---------------------------------------------------------------------------- BEIR

TEST_QRELS = "query-id\tcorpus-id\tscore\nq100\td1\t1\nq101\td2\t1\nq101\td3\t0\n"


def make_beir(root, n_train=20):
    docs = [{"_id": f"d{i}", "title": f"doc {i}", "text": f"text of doc {i}"} for i in range(n_train + 5)]
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(n_train)]
    queries += [{"_id": "q100", "text": "test one"}, {"_id": "q101", "text": "test two"},
                {"_id": "q999", "text": "in no split"}]
    write_lines(root / "corpus.jsonl", docs, newline="\r\n", bom=True)
    write_lines(root / "queries.jsonl", queries)
    train = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\nq{i}\td{i + 1}\t2\n" for i in range(n_train))
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_text(train)
    (root / "qrels" / "test.tsv").write_text(TEST_QRELS)
    return root


def test_beir_keeps_test_and_carves_val(tmp_path):
    src = make_beir(tmp_path / "src")
    run(f"--source={src}", f"--out={tmp_path / 'out'}")
    corpus, queries, qrels = load(tmp_path / "out")
    assert (tmp_path / "out" / "qrels" / "test.tsv").read_text() == TEST_QRELS
    assert set(qrels) == {"train", "val", "test"} and len(qrels["val"]) == 2
    original = read_qrels(str(src / "qrels" / "train.tsv"))
    assert not set(qrels["train"]) & set(qrels["val"])
    assert {**qrels["train"], **qrels["val"]} == original
    assert len(corpus) == 25 and "q999" not in queries and queries["q100"] == "test one"
    # Same seed, same carve; and the carve does not depend on the order of the train file.
    run(f"--source={src}", f"--out={tmp_path / 'again'}")
    assert load(tmp_path / "again")[2]["val"] == qrels["val"]


def test_beir_dev_becomes_val(tmp_path):
    src = make_beir(tmp_path / "src")
    (src / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    (src / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    run(f"--source={src}", f"--out={tmp_path / 'out'}")
    qrels = load(tmp_path / "out")[2]
    assert qrels["val"] == {"q0": {"d0": 1}} and qrels["train"] == {"q1": {"d1": 1}}


def test_beir_download_from_local_zip(tmp_path):
    src = make_beir(tmp_path / "zipsrc" / "tiny")
    zip_path = tmp_path / "mirror" / "tiny.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as z:
        for p in sorted(src.rglob("*")):
            z.write(p, p.relative_to(src.parent).as_posix())
    url = f"file://{tmp_path / 'mirror'}/{{name}}.zip"
    cache = tmp_path / "cache"
    run("--beir=tiny", f"--beir_url={url}", f"--cache_dir={cache}", f"--out={tmp_path / 'out'}")
    assert load(tmp_path / "out")[2]["test"] == read_qrels(str(src / "qrels" / "test.tsv"))
    assert (cache / "tiny" / "corpus.jsonl").is_file()
    zip_path.unlink()  # a second run reuses the cache instead of downloading
    run("--beir", "tiny", f"--beir_url={url}", f"--cache_dir={cache}", f"--out={tmp_path / 'out2'}")
    assert load(tmp_path / "out2") == load(tmp_path / "out")


def test_beir_download_failure_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match=r"could not download .*--source=DIR"):
        run("--beir=nothere", f"--beir_url=file://{tmp_path}/{{name}}.zip",
            f"--cache_dir={tmp_path / 'cache'}", f"--out={tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- python-source

def make_tree(root):
    files = {
        "pkg/__init__.py": '''
            def top(x):
                """Return the top value of the stack given.

                More detail that is not part of the query.
                """
                return x[-1]
            ''',
        "pkg/shapes.py": '''
            class Circle:
                """A circle."""

                @property
                def area(self):
                    """Compute the area of this circle."""
                    return 3.14 * self.r ** 2

                def _secret(self):
                    """Private helper that should never be used."""
                    return 1

            class _Hidden:
                def shown(self):
                    """Looks public but the class is private."""
                    return 2

            def short(x):
                """Too short."""
                return x

            def outer(values):
                """Sum the squares of the values given."""
                def inner(v):
                    """Square one value for the outer function."""
                    return v * v
                return sum(inner(v) for v in values)

            def stub():
                """Nothing here to find at all."""
                ...
            ''',
        "util.py": '''
            def clamp(x, lo, hi):
                """Clamp a number   into the
                closed range lo to hi."""
                return max(lo, min(hi, x))

            def same_code_a(x):
                """Double the number x please."""
                return x * 2
            ''',
        "other.py": '''
            async def fetch(url):
                """Fetch the page at the given url."""
                return await get(url)

            def broken_file_is_elsewhere(x):
                """Another documented public function here."""
                return x
            ''',
        "broken.py": "def f(:\n",
        "tests/test_util.py": '''
            def test_clamp():
                """This test must never become a query."""
                assert True
            ''',
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def test_python_source_tree(tmp_path, capsys):
    src = make_tree(tmp_path / "tree")
    run(f"--source={src}", "--format=python-source", f"--out={tmp_path / 'out'}",
        "--val_fraction=0.25", "--test_fraction=0.25")
    assert "skipped 1 file(s) that do not decode or parse" in capsys.readouterr().err
    corpus, queries, qrels = load(tmp_path / "out")
    by_title = {d["title"]: d["text"] for d in corpus.values()}
    assert sorted(by_title) == ["other.broken_file_is_elsewhere", "other.fetch", "pkg.shapes.Circle.area",
                                "pkg.shapes.outer", "pkg.top", "util.clamp", "util.same_code_a"]
    assert by_title["pkg.shapes.Circle.area"] == "@property\ndef area(self):\n    return 3.14 * self.r ** 2"
    assert by_title["pkg.shapes.outer"].startswith("def outer(values):\n    def inner(v):\n")
    assert "Sum the squares" not in by_title["pkg.shapes.outer"]
    assert by_title["pkg.top"] == "def top(x):\n    return x[-1]"
    texts = set(queries.values())
    assert "Return the top value of the stack given." in texts
    assert "Clamp a number into the closed range lo to hi." in texts
    assert not any("Square one" in t or "never" in t or "Too short" in t or "Nothing here" in t for t in texts)

    # Every module file lands in exactly one split.
    module_of = {d: c["title"].rsplit(".", 2 if ".Circle." in c["title"] else 1)[0] for d, c in corpus.items()}
    split_of = {}
    for split, rows in qrels.items():
        for row in rows.values():
            for doc in row:
                assert split_of.setdefault(module_of[doc], split) == split
    assert set(qrels) == {"train", "val", "test"}
    info = json.loads((tmp_path / "out" / "prepare.json").read_text())["details"]
    assert info["files_scanned"] == 5 and info["files_unreadable"] == 1 and info["functions_kept"] == 7


def test_python_source_identical_code_and_queries(tmp_path):
    root = tmp_path / "tree"
    body = 'def {}(x):\n    """Double the number x please."""\n    return x * 2\n'
    write_lines(root / "a.py", [body.format("double")])
    write_lines(root / "b.py", [body.format("double")])
    write_lines(root / "c.py", [body.format("twice")])
    run(f"--python_root={root}", f"--out={tmp_path / 'out'}", "--val_fraction=0", "--test_fraction=0")
    corpus, queries, qrels = load(tmp_path / "out")
    assert len(corpus) == 2 and list(queries.values()) == ["Double the number x please."]
    assert len(qrels["train"]["q0"]) == 2


def test_python_source_stdlib(tmp_path):
    run(f"--out={tmp_path / 'out'}")
    info = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert info["splits"]["train"]["positive_pairs"] > 1000
    assert all(info["splits"][s]["queries"] > 0 for s in ("train", "val", "test"))
