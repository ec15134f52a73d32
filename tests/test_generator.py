"""Generated questions: common/generator.py and prepare_data.py --pseudo_queries=generate, with a tiny causal LM."""
import json
import re

import pytest
from conftest import build_tiny_causal_lm, build_tiny_t5, write_beir_dir

import prepare_data
from common.config import ConfigError
from common.data import DataError, read_qrels, read_queries
from common.generator import Filter, GeneratorError, Prompt, clean

TOPICS = [f"topic{i}" for i in range(24)]


def write_source(tmp_path, val=("q1",)):
    """24 documents, each on its own topic word; a train question, a test one (never read by label-free runs)."""
    docs = {f"d{i}": (f"Topic {t}", f"The {t} passage says {t} matters. A second sentence on {t} follows.")
            for i, t in enumerate(TOPICS)}
    queries = {"q1": "which passage says topic1 matters", "q2": "the topic2 sentence", "q3": "a question nobody judged"}
    return write_beir_dir(tmp_path / "src", docs, queries, {"train": [(q, "d1", 1) for q in val],
                                                           "test": [("q2", "d2", 1)]})


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    words = ["the", "says", "matters", "second", "sentence", "on", "follows", "which", *TOPICS]
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), words)


def generate(tmp_path, source, lm, out="g", *more):
    args = [f"--source={source}", "--pseudo_queries=generate", f"--generator={lm}", "--device=cpu", "--roundtrip_k=0",
            f"--cache_dir={tmp_path / 'cache'}", "--generator_batch_size=5", f"--out={tmp_path / out}",
            "--queries_per_doc=2", *more]  # sampled: a random tiny model's greedy question is the same for every passage
    prepare_data.main(args)
    return tmp_path / out


def test_prompt_writes_each_example_in_the_shape_of_its_last_part():
    prompt = Prompt("Intro.\n\n{examples}P: {passage}\nQ:", [("first text", "first question?")])
    assert prompt("mine") == "Intro.\n\nP: first text\nQ: first question?\n\nP: mine\nQ:"
    assert Prompt("Text {passage} ->", [("x", "y")])("z") == "Text z ->"  # no {examples}: zero-shot
    with pytest.raises(GeneratorError, match=r"no \{passage\} placeholder"):
        Prompt("{examples}Q:", [])


def test_clean_keeps_the_first_line_up_to_its_question_mark():
    assert clean("  What is X? And then\nPassage: more") == "What is X?"
    assert clean("\n\nhow to   copy a tree\nmore") == "how to copy a tree"
    assert clean("") == ""


def test_filter_drops_and_counts_each_reason():
    texts = {"a": "Vitamin D lowers blood pressure in adults.", "b": "Zinc helps wound healing.", "c": "Iron."}
    written = {"a": ["", "Why?", "vitamin D lowers blood pressure", "Does vitamin D lower blood pressure?",
                     "does vitamin d lower blood pressure", "What is the purpose of this study?", "An example question here?"],
               "b": ["What is the purpose of this study?", "Does zinc help wounds heal?"], "c": ["What about iron in food?"]}
    f = Filter(examples=["An example question here?"])
    kept = f(written, texts)
    assert kept == {"a": ["Does vitamin D lower blood pressure?"], "b": ["Does zinc help wounds heal?"],
                    "c": ["What about iron in food?"]}
    assert f.dropped == {"empty": 1, "short": 1, "copy": 1, "example": 1, "repeat": 1, "generic": 2}


def test_generated_questions_train_while_the_real_ones_stay_unread(tmp_path, tiny_lm):
    source = write_source(tmp_path)
    out = generate(tmp_path, source, tiny_lm, "g", "--val_queries=0")
    prepared = json.load(open(out / "prepare.json"))
    # label-free: the train question is not val, not an example; "generated": what the mix is chosen on
    assert set(prepared["splits"]) == {"train", "test", "generated"}
    assert prepared["details"]["generated"]["examples"] == "built-in"
    queries = read_queries(str(out / "queries.jsonl"))
    train = read_qrels(str(out / "qrels" / "train.tsv"))
    assert train and all(q.startswith("gen") and len(row) == 1 for q, row in train.items())
    assert "q1" not in queries and queries["q2"] == "the topic2 sentence"  # test kept for reporting
    written = prepared["details"]["generated"]["written"]
    assert written == 48 and prepared["details"]["generated"]["kept"] == len(train)
    weighing = read_qrels(str(out / "qrels" / "generated.tsv"))  # the half reusing their passage's words least
    assert prepared["details"]["generated"]["weighing"] == len(weighing) and 0 < len(weighing) < written
    assert all(q.startswith("gen") and len(row) == 1 for q, row in weighing.items())
    assert all(train[q] == row for q, row in weighing.items() if q in train)  # one id for one question
    # With real questions allowed, they are val and the prompt's examples.
    out = generate(tmp_path, source, tiny_lm, "v")
    prepared = json.load(open(out / "prepare.json"))
    assert read_qrels(str(out / "qrels" / "val.tsv")) == {"q1": {"d1": 1}}
    assert prepared["details"]["generated"]["examples"] == "the data's own questions"


def test_a_killed_generation_goes_on_where_it_stopped(tmp_path, tiny_lm, monkeypatch):
    from common.generator import QuestionGenerator

    source = write_source(tmp_path)
    whole = generate(tmp_path, source, tiny_lm, "whole", "--val_queries=0")
    [cache] = (tmp_path / "cache" / "generated").iterdir()
    lines = cache.read_text().splitlines(keepends=True)
    assert len(lines) == 24
    cache.write_text("".join(lines[:12]) + lines[12][:15])  # killed mid-line, in the third batch of 5
    asked = []
    real = QuestionGenerator.generate
    monkeypatch.setattr(QuestionGenerator, "generate", lambda self, texts, *a: asked.extend(texts) or real(self, texts, *a))
    again = generate(tmp_path, source, tiny_lm, "again", "--val_queries=0")
    assert len(asked) == 14  # the batch it was killed in, and those after it
    # sampled (two questions a passage), and yet as an unbroken run wrote them: each batch is seeded alike
    assert (again / "queries.jsonl").read_text() == (whole / "queries.jsonl").read_text()
    asked.clear()
    generate(tmp_path, source, tiny_lm, "third", "--val_queries=0")
    assert asked == []  # all written: the generator is not even loaded


def test_several_sampled_questions_per_passage_are_seeded(tmp_path, tiny_lm):
    source = write_source(tmp_path)
    a = generate(tmp_path, source, tiny_lm, "a", "--queries_per_doc=3", "--val_queries=0")
    b = generate(tmp_path, source, tiny_lm, "b", "--queries_per_doc=3", "--val_queries=0", f"--cache_dir={tmp_path / 'c2'}")
    assert (a / "queries.jsonl").read_text() == (b / "queries.jsonl").read_text()
    assert json.load(open(a / "prepare.json"))["details"]["generated"]["written"] == 72


def test_a_seq2seq_generator_reads_the_passage_alone(tmp_path):
    t5 = build_tiny_t5(tmp_path / "t5")
    out = generate(tmp_path, write_source(tmp_path), t5, "t", "--val_queries=0")
    assert json.load(open(out / "prepare.json"))["details"]["generated"]["written"] == 48


def test_round_trip_keeps_the_questions_that_find_their_passage(tmp_path, tiny_model, monkeypatch):
    from common.generator import QuestionGenerator

    source = write_source(tmp_path)
    monkeypatch.setattr(QuestionGenerator, "__init__", lambda self, name, *a, **k: setattr(self, "kind", "causal"))
    # Each passage's question names its own topic, except d0's and d1's (the same one: a repeat across passages).
    question = lambda t: ("what is said of topic5 and topic6" if re.search(r"topic[01]\b", t)  # noqa: E731
                          else f"why does {re.search(r'topic[0-9]+', t)[0]} matter")
    monkeypatch.setattr(QuestionGenerator, "generate", lambda self, texts, n, seed: [[question(t)] for t in texts])
    out = generate(tmp_path, source, "any", "r", "--val_queries=0", "--roundtrip_k=1", f"--model={tiny_model}")
    details = json.load(open(out / "prepare.json"))["details"]["generated"]
    train = read_qrels(str(out / "qrels" / "train.tsv"))
    kept = {d for row in train.values() for d in row}
    assert "d0" not in kept and "d1" not in kept and details["kept"] == len(train) > 0
    assert details["dropped"]["generic"] == 2 and sum(details["round_trip"].values()) == 22


@pytest.mark.parametrize("bad, error", [
    (["--prompt=missing.txt"], "no such file"),
    (["--pseudo_queries=generate,ict"], "goes alone"),
    (["--roundtrip_k=-1"], "cannot be negative"),
    (["--generator_batch_size=0"], "at least 1"),
])
def test_bad_generation_settings_stop_before_any_work(tmp_path, bad, error):
    with pytest.raises(ConfigError, match=error):
        prepare_data.main([f"--source={write_source(tmp_path)}", "--pseudo_queries=generate", "--generator=x",
                           f"--out={tmp_path / 'x'}", *bad])


def test_bad_generators_and_prompts_are_one_clear_error(tmp_path, tiny_model, tiny_lm):
    source = write_source(tmp_path)
    with pytest.raises(GeneratorError, match="not a causal or seq2seq"):
        generate(tmp_path, source, tiny_model, "bert")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF not really")
    with pytest.raises(Exception, match="does not load|gguf"):
        generate(tmp_path, source, str(bad), "gguf")
    prompt = tmp_path / "p.txt"
    prompt.write_text("Write a question.\nQuestion:")
    with pytest.raises(GeneratorError, match=r"p.txt: no \{passage\}"):
        generate(tmp_path, source, tiny_lm, "p", f"--prompt={prompt}")
    for out in ("bert", "gguf", "p"):
        assert not (tmp_path / out).exists()


def test_a_generator_that_writes_nothing_usable_is_an_error_that_keeps_what_it_wrote(tmp_path, monkeypatch):
    from common.generator import QuestionGenerator

    monkeypatch.setattr(QuestionGenerator, "__init__", lambda self, name, *a, **k: setattr(self, "kind", "causal"))
    monkeypatch.setattr(QuestionGenerator, "generate", lambda self, texts, n, seed: [[""] * n for _ in texts])
    with pytest.raises(DataError, match="no usable question among the 48 written .*48 empty"):
        generate(tmp_path, write_source(tmp_path), "any", "n", "--val_queries=0")
    [cache] = (tmp_path / "cache" / "generated").iterdir()
    assert len(cache.read_text().splitlines()) == 24 and not (tmp_path / "n").exists()


def test_without_val_generated_questions_are_served_as_measured_across_datasets(tmp_path, tiny_lm, tiny_model,
                                                                                 capsys):
    """No judged question to choose on: training stops before its first step (best/ is the model it starts as),
    the index remembers the generated questions at the strengths decision.NO_VAL_GENERATED holds, and its mix of
    dense and BM25 is chosen on the "generated" split, saying so; evaluate.py's hybrid chooses the same."""
    import build_index
    import train_encoder
    from common import decision
    from common.memory import Memory

    data = generate(tmp_path, write_source(tmp_path), tiny_lm, "g", "--val_queries=0")
    assert train_encoder.main([f"--data={data}", f"--model={tiny_model}", f"--out={tmp_path / 'enc'}"]) == 0
    metrics = json.load(open(tmp_path / "enc" / "metrics.json"))
    assert metrics["steps"] == 0 and "generated" in metrics["not_run"]
    assert (tmp_path / "enc" / "best" / "config.json").exists()
    build_index.main([f"--data={data}", f"--model={tiny_model}", f"--out={tmp_path / 'index'}", "--device=cpu"])
    memory = Memory.load(str(tmp_path / "index"))
    assert memory.strengths == decision.NO_VAL_GENERATED["memory"]
    assert set(memory.queries) == set(read_qrels(str(data / "qrels" / "train.tsv")))
    saved = json.load(open(tmp_path / "index" / "fusion.json"))
    weighing = read_qrels(str(data / "qrels" / "generated.tsv"))
    assert "val" not in saved and saved["chosen_on"]["split"] == "generated+val"
    assert saved["chosen_on"]["queries"] == len(weighing) and saved["chosen_on"]["val"] == 0
    assert "generated questions, no judged val" in decision.describe_hybrid(saved)
    import evaluate
    assert evaluate.main([f"--data={data}", f"--model={tiny_model}", "--split=test", "--retrievers=hybrid",
                          "--latency=false", "--device=cpu", f"--out={tmp_path / 'eval'}"]) == 0
    hybrid = json.load(open(tmp_path / "eval" / "metrics.json"))["results"]["hybrid"]
    assert {k: hybrid["hybrid"][k] for k in ("method", "weight", "chosen_on")} == {
        k: saved[k] for k in ("method", "weight", "chosen_on")}
    assert saved["candidates"][str(tiny_model)]["chosen_on"] == saved["chosen_on"]  # read, not chosen again
    assert evaluate.main([f"--data={data}", f"--model={tiny_model}", "--split=test", "--retrievers=hybrid",
                          "--latency=false", "--device=cpu", f"--choices={tmp_path / 'index'}",
                          f"--out={tmp_path / 'eval2'}"]) == 0
    assert f"(chosen for {tiny_model} by {tmp_path / 'index'})" in capsys.readouterr().out
    read = json.load(open(tmp_path / "eval2" / "metrics.json"))["results"]["hybrid"]["hybrid"]
    assert {k: read[k] for k in ("method", "weight", "chosen_on")} == {k: saved[k] for k in ("method", "weight", "chosen_on")}


def test_comparison_says_what_chose_and_what_was_kept(tmp_path, tiny_lm):
    import evaluate

    data = generate(tmp_path, write_source(tmp_path), tiny_lm, "g", "--val_queries=0")
    text = evaluate.generated_paragraph(str(data))
    assert "48 written" in text and "No judged question is val" in text and "across datasets" in text
    assert "the mix of dense and BM25 was chosen on the 23 generated questions" in text
    data = generate(tmp_path, write_source(tmp_path), tiny_lm, "v")
    text = evaluate.generated_paragraph(str(data))
    assert "1 judged question(s) are val" in text and "the mix of dense and BM25 on them and the" in text


def test_a_generator_named_writes_questions_where_judged_ones_are_few(tmp_path, tiny_lm, capsys, monkeypatch):
    """What `make pipeline` does (a generator named, not asked for): a source with no judged question outside test gets
    questions for a sample of its passages (only the mix is chosen on them), one with a few gets them for every
    passage, its few as val; a packaged generator not installed is one line, and the data is prepared without."""
    from common import generator

    docs = {f"d{i}": (f"Topic {t}", f"The {t} passage says {t} matters.") for i, t in enumerate(TOPICS)}
    test_only = write_beir_dir(tmp_path / "t", docs, {"q2": "the topic2 sentence"}, {"test": [("q2", "d2", 1)]})
    common = [f"--source={test_only}", "--device=cpu", "--roundtrip_k=0", "--queries_per_doc=2",
              f"--cache_dir={tmp_path / 'cache'}"]
    prepare_data.main([*common, f"--generator={tiny_lm}", "--generate_sample=5", f"--out={tmp_path / 'a'}"])
    assert "a sample of 5 of the 24 passages" in capsys.readouterr().out
    prepared = json.load(open(tmp_path / "a" / "prepare.json"))
    assert prepared["splits"].keys() == {"train", "test", "generated"}
    assert prepared["details"]["generated"]["passages"] == 5 and prepared["details"]["generated"]["corpus"] == 24
    assert len({d for row in read_qrels(str(tmp_path / "a" / "qrels" / "train.tsv")).values() for d in row}) <= 5
    monkeypatch.setattr(generator, "installed", lambda name: False)
    prepare_data.main([*common, "--generator=gemma3-270m", f"--out={tmp_path / 'n'}"])
    said = capsys.readouterr().out
    assert "generate: not run" in said and "`make setup-generate` installs it" in said
    assert json.load(open(tmp_path / "n" / "prepare.json"))["splits"].keys() == {"test"}
    monkeypatch.undo()
    args = [f"--source={write_source(tmp_path)}", f"--generator={tiny_lm}", f"--out={tmp_path / 'b'}", "--device=cpu",
            "--roundtrip_k=0", "--queries_per_doc=2", f"--cache_dir={tmp_path / 'cache'}"]
    prepare_data.main(args)
    assert "fewer than generate_below=50" in capsys.readouterr().out
    assert read_qrels(str(tmp_path / "b" / "qrels" / "val.tsv")) == {"q1": {"d1": 1}}
    assert all(q.startswith("gen") for q in read_qrels(str(tmp_path / "b" / "qrels" / "train.tsv")))
