"""Label-free training data: common/pseudo_queries.py and prepare_data.py --pseudo_queries."""
import json
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import prepare_data  # noqa: E402
from common.config import ConfigError  # noqa: E402
from common.data import load_beir, read_corpus, read_qrels, read_queries, splits  # noqa: E402
from common.pseudo_queries import crop, ict, sentence_spans  # noqa: E402
from conftest import build_tiny_t5, write_beir_dir  # noqa: E402

ABSTRACT = ("Aspirin lowers fever in adults. It also thins the blood and so reduces the risk of stroke! "
            "Does it help the heart after an infarction? Two large trials say that it does")


def test_sentences_end_at_punctuation_or_line_ends():
    code = "def area(r):\n    # the circle's area\n    return 3.14 * r * r\n"
    assert [ABSTRACT[s:e] for s, e in sentence_spans(ABSTRACT)][1] == \
        "It also thins the blood and so reduces the risk of stroke!"
    assert [code[s:e] for s, e in sentence_spans(code)] == ["def area(r):", "# the circle's area", "return 3.14 * r * r"]


def test_ict_query_is_a_sentence_cut_from_its_passage_at_the_given_rate():
    cut = kept = 0
    for seed in range(200):
        query, positive = ict(ABSTRACT, random.Random(seed), remove_prob=0.75)
        assert query in ABSTRACT and len(query.split()) >= 4
        if positive == ABSTRACT:
            kept += 1
        else:
            cut += 1
            assert query not in positive and "  " not in positive
            assert len(positive) == len(ABSTRACT) - len(query) - 1  # one space between the halves, not two
    assert 0.65 < cut / 200 < 0.85
    assert ict("One sentence only, with no second one", random.Random(0)) is None
    code = "def area(r):\n    # the circle's area is pi r squared\n    return pi(r)"  # one line of 4+ words
    query, positive = ict(code, random.Random(0), remove_prob=1.0)
    assert query == "# the circle's area is pi r squared"
    assert positive == "def area(r):\n\n    return pi(r)"  # the other lines keep their indentation


def test_crop_spans_are_word_runs_of_the_passage_in_the_ratio():
    words = ABSTRACT.split()
    for seed in range(50):
        query, positive = crop(ABSTRACT, random.Random(seed), 0.2, 0.4)
        for span in (query, positive):
            n = len(span.split())
            assert round(0.2 * len(words)) <= n <= round(0.4 * len(words))
            assert " ".join(span.split()) in " ".join(words)
    assert crop("too short to crop", random.Random(0)) is None


def write_source(tmp_path):
    docs = {f"d{i}": (f"Topic {i}", f"Sentence one about subject {i} is here. Then a second sentence on {i} "
                                    f"follows it. A third line closes topic {i} for good.") for i in range(30)}
    docs["short"] = ("", "tiny")  # gives no query: one sentence, three words
    queries = {"q1": "a labelled question nobody may read"}
    return write_beir_dir(tmp_path / "src", docs, queries, {"train": [("q1", "d1", 1)], "test": [("q1", "d2", 1)]})


def test_pseudo_dataset_uses_no_label_of_the_source_and_keeps_families_together(tmp_path):
    source = write_source(tmp_path)
    out = tmp_path / "pseudo"
    assert prepare_data.main([f"--source={source}", "--pseudo_queries=ict,crop", "--queries_per_doc=2",
                              "--val_fraction=0.2", f"--out={out}"]) == 0
    assert splits(out) == ["train", "val"]  # no test: the adapted model is tested on the labelled source
    queries = read_queries(os.path.join(out, "queries.jsonl"))
    corpus = read_corpus(os.path.join(out, "corpus.jsonl"))
    assert "a labelled question nobody may read" not in queries.values()
    assert len(queries) == 30 * 2 * 2  # 30 usable docs x 2 methods x 2 each; "tiny" gives none
    details = json.load(open(out / "prepare.json"))["details"]
    assert details["docs_without_a_query"] == 1 and details["label_free"]
    families = {}
    for split in ("train", "val"):
        for qid, row in read_qrels(os.path.join(out, "qrels", f"{split}.tsv"), queries, corpus).items():
            family = frozenset(row)
            topic = {corpus[d]["title"] for d in family}
            assert len(topic) == 1  # every positive of a query comes from its own source document
            families.setdefault(topic.pop(), set()).add((split, family))
    # One document's queries share one family of positives, and all sit in one split.
    assert len(families) == 30 and all(len(v) == 1 for v in families.values())
    assert 4 <= sum(next(iter(v))[0] == "val" for v in families.values()) <= 8
    again = tmp_path / "again"
    prepare_data.main([f"--source={source}", "--pseudo_queries=ict,crop", "--queries_per_doc=2",
                       "--val_fraction=0.2", f"--out={again}"])
    assert (again / "queries.jsonl").read_text() == (out / "queries.jsonl").read_text()  # seeded


def test_pseudo_dataset_from_a_bare_corpus_file_trains_through_load_beir(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"x{i}", "text": f"Word {i} starts here. More words on {i} "
                                         "then follow."}) + "\n" for i in range(10)))
    with pytest.raises(Exception, match="pseudo_queries"):
        prepare_data.main([f"--source={path}", f"--out={tmp_path / 'no'}"])
    prepare_data.main([f"--source={path}", "--pseudo_queries=ict", f"--out={tmp_path / 'p'}"])
    corpus, queries, qrels = load_beir(str(tmp_path / "p"), "train")
    assert queries and all(d in corpus for row in qrels.values() for d in row)


def test_title_queries_match_the_text_without_its_title(tmp_path):
    source = write_beir_dir(tmp_path / "src", {"d1": ("Aspirin lowers the risk of stroke", ABSTRACT),
                                               "d2": ("Short", ABSTRACT + " Again."), "d3": ("", "untitled text")},
                            {"q1": "unread"}, {"test": [("q1", "d1", 1)]})
    out = tmp_path / "titles"
    prepare_data.main([f"--source={source}", "--pseudo_queries=title,ict", "--ict_remove_prob=1",
                       "--val_fraction=0", f"--out={out}"])
    corpus, queries, qrels = load_beir(str(out), "train")
    by_text = {queries[q]: {corpus[d]["title"] + "|" + corpus[d]["text"] for d in row} for q, row in qrels.items()}
    # The title query's positive is the untitled abstract, which the ICT query of d1 shares as family.
    assert "|" + ABSTRACT in by_text["Aspirin lowers the risk of stroke"]
    assert all("Aspirin lowers the risk" not in text for text in by_text["Aspirin lowers the risk of stroke"])
    assert json.load(open(out / "prepare.json"))["details"]["queries_made"] == {"title": 1, "ict": 2}


@pytest.mark.parametrize("bad, message", [
    (["--pseudo_queries=cloze"], "choose one of"),
    (["--pseudo_queries=generate"], "generator=MODEL"),
    (["--pseudo_queries=ict", "--crop_min_ratio=0.6", "--crop_max_ratio=0.5"], "need 0 < min"),
    (["--pseudo_queries=ict", "--ict_remove_prob=1.5"], "probability"),
])
def test_bad_pseudo_settings_stop_before_any_work(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        prepare_data.main([f"--source={write_source(tmp_path)}", f"--out={tmp_path / 'x'}", *bad])
    assert not (tmp_path / "x").exists()
