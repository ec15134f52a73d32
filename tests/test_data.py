import json
import os

import pytest

from common.data import DataError, doc_text, load_beir, read_corpus, read_qrels, read_queries, write_beir
from common.files import atomic_open


def test_crlf_bom_and_optional_titles(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_bytes("\ufeff".encode() + b'{"_id": "1", "title": "T", "text": "body"}\r\n'
                  b'{"_id": 2, "text": "no title"}\r\n\r\n')
    corpus = read_corpus(str(p))
    assert corpus == {"1": {"title": "T", "text": "body"}, "2": {"title": "", "text": "no title"}}
    assert doc_text(corpus["1"]) == "T body" and doc_text(corpus["2"]) == "no title"


@pytest.mark.parametrize("lines, needle", [
    (['{"_id": "1", "text": "a"}', '{"_id": "2", "text": "b"', '{"_id": "3", "text": "c"}'], r":2: malformed JSON"),
    (['{"_id": "1", "text": "a"}', '{"text": "b"}'], r":2: missing field '_id'"),
    (['{"_id": "1", "text": "a"}', '{"_id": "1", "text": "b"}'], r":2: duplicate _id '1'"),
    (['{"_id": "1", "text": ["a"]}'], r":1: field 'text' must be a string"),
    (['[1, 2]'], r":1: expected a JSON object"),
])
def test_corpus_errors_name_file_and_line(tmp_path, lines, needle):
    p = tmp_path / "corpus.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="corpus.jsonl" + needle):
        read_corpus(str(p))


def test_invalid_utf8_and_paths(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_bytes(b'{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "\xff"}\n')
    with pytest.raises(DataError, match=r"q.jsonl:2: invalid UTF-8"):
        read_queries(str(p))
    with pytest.raises(DataError, match="is a directory"):
        read_queries(str(tmp_path))
    with pytest.raises(DataError, match="file not found"):
        read_queries(str(tmp_path / "nope.jsonl"))


def test_empty_texts_are_skipped_with_a_count(tmp_path, capsys):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"_id": "1", "text": "a"}\n{"_id": "2", "title": " ", "text": "  "}\n')
    skipped = set()
    assert list(read_corpus(str(p), skipped)) == ["1"] and skipped == {"2"}
    assert "skipped 1 empty document" in capsys.readouterr().err
    q = tmp_path / "qrels.tsv"
    q.write_text("query-id\tcorpus-id\tscore\nq\t1\t1\nq\t2\t1\n")
    assert read_qrels(str(q), {"q": "x"}, {"1": {}}, skipped) == {"q": {"1": 1}}
    assert "dropped 1 row" in capsys.readouterr().err


@pytest.mark.parametrize("row, needle", [
    ("zz\td1\t1", r":2: query-id 'zz' is not in queries.jsonl"),
    ("q1\tzz\t1", r":2: corpus-id 'zz' is not in corpus.jsonl"),
    ("q1\td1\thigh", r":2: score 'high' is not an integer"),
    ("q1\td1\t0.5", r":2: score '0.5' is not an integer"),
    ("q1 d1", r":2: expected 3 tab-separated columns"),
])
def test_qrels_errors(tmp_path, row, needle):
    p = tmp_path / "test.tsv"
    p.write_text(f"query-id\tcorpus-id\tscore\r\n{row}\r\n")
    with pytest.raises(DataError, match="test.tsv" + needle):
        read_qrels(str(p), {"q1": "x"}, {"d1": {}})


def test_qrels_trec_format_and_graded(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("q1 0 d1 2\nq1 0 d2 0\n")
    assert read_qrels(str(p)) == {"q1": {"d1": 2, "d2": 0}}


def test_load_beir_splits_and_empty_split(tmp_path, toy_beir):
    corpus, queries, qrels = load_beir(toy_beir, "test")
    assert len(corpus) == 6 and set(queries) == set(qrels) == {f"q{i}" for i in range(1, 7)}
    assert qrels["q1"] == {"d1": 1, "d3": 0}
    with pytest.raises(DataError, match=r"no such split \(this directory has: test, train\)"):
        load_beir(toy_beir, "val")
    with open(os.path.join(toy_beir, "qrels", "val.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\nq1\td1\t0\n")
    with pytest.raises(DataError, match="no relevant"):
        load_beir(toy_beir, "val")


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(target)) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_write_beir_round_trip_and_atomic_dir(tmp_path):
    out = tmp_path / "ds"
    corpus = {"d1": {"title": "T", "text": "x"}}
    write_beir(str(out), corpus, {"q1": "y"}, {"test": {"q1": {"d1": 1}}})
    assert load_beir(str(out), "test") == (corpus, {"q1": "y"}, {"q1": {"d1": 1}})

    class Boom(dict):
        def items(self):
            raise RuntimeError("crash while writing qrels")
    with pytest.raises(RuntimeError):
        write_beir(str(out), {"d9": {"title": "", "text": "new"}}, {"q9": "z"}, Boom())
    assert json.loads((out / "corpus.jsonl").read_text())["_id"] == "d1"
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_training_file_reader_checks_ids_and_positives(tmp_path):
    from common.data import read_training_file

    corpus = {"d1": {}, "d2": {}, "d3": {}}
    good = tmp_path / "mined.jsonl"
    good.write_text('{"qid": "q1", "query": "a", "positives": ["d1"], "negatives": ["d2", {"id": "d1"}, {"id": "d3", '
                    '"score": 3.5, "rank": 2}], "teacher": {"d1": 2, "d2": 0.5}}\n')
    (record,) = read_training_file(str(good), corpus)
    assert record["negatives"] == ["d2", "d3"]  # a labelled positive is never a negative
    assert record["teacher"] == {"d1": 2.0, "d2": 0.5}
    for line, message in [('{"qid": "q2", "query": "a", "positives": ["d9"]}', ":2: positives id 'd9' is not in"),
                          ('{"qid": "q2", "query": "a", "positives": []}', ":2: query 'q2' has no positives"),
                          ('{"qid": "q2", "query": "a", "positives": "d1"}', ":2: 'positives' must be a list"),
                          ('{"qid": "q2", "query": "a", "positives": ["d1"], "teacher": {"d1": "x"}}', ":2: 'teacher'"),
                          ('{"qid": "q1", "query": "b", "positives": ["d1"]}', ":2: query 'q1' again")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(good.read_text() + line + "\n")
        with pytest.raises(DataError, match=message):
            read_training_file(str(bad), corpus)


def test_doc_snippets_reads_only_the_documents_asked_for(tmp_path):
    import json

    from common.data import doc_snippets

    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": 'a"b', "title": "T1", "text": "x"}) + "\n"
                    + '{"_id": "c\\q", "title": "T2", "text": "not JSON: a bad escape"}\n'
                    + json.dumps({"_id": "z", "title": "", "text": "one two three four"}) + "\n")
    assert doc_snippets(str(path), ['a"b', "z", "missing"], words=3) == {'a"b': "T1", "z": "one two three"}
    assert doc_snippets(str(path), []) == {}
