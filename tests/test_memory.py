"""The index memory (common/memory.py): train queries written into the served index by build_index.py,
chosen on val, served by Retriever, search.py, evaluate.py --index and ONNX, grown by --add_queries."""
import json
import os
import random
import subprocess
import sys

import faiss
import numpy as np
import pytest

import build_index
import evaluate
import search
from common import fusion, memory as mem, report
from common.data import DataError, load_beir
from common.retrievers import BM25, Retriever
from common.run import UserError
from conftest import made_up_words, write_beir_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def memory_beir(tmp_path_factory):
    """48 docs of made-up words; docs 0-15 are asked for by a train, a val and a test query in words
    the doc lacks (each doc's own two "topic" words, in another order and with another word each
    time: only a memory of the train query connects them), docs 16-47 by one test or val query in two
    of the doc's own words."""
    rng = random.Random(1)
    words = made_up_words(rng, 300)
    corpus, queries, qrels = {}, {}, {"train": [], "val": [], "test": []}
    for i in range(48):
        doc = rng.sample(words, 8) + rng.sample(words, rng.randint(0, 12))
        corpus[f"d{i}"] = ("", " ".join(doc))
        if i < 16:
            topic = [w.upper() for w in rng.sample(words, 2)]  # the doc's words are lower case
            for j, split in enumerate(("train", "val", "test")):
                queries[f"{split}{i}"] = " ".join([topic[j % 2], topic[1 - j % 2], f"x{split}"])
                qrels[split].append((f"{split}{i}", f"d{i}", 1))
        else:
            split = "test" if i % 2 else "val"
            queries[f"{split}{i}"] = " ".join(doc[6:8])
            qrels[split].append((f"{split}{i}", f"d{i}", 1))
    qrels["train"].append(("train0", "d1", 0))  # a grade 0 adds no memory
    return write_beir_dir(tmp_path_factory.mktemp("memory-beir") / "toy", corpus, queries, qrels)


def build(data, model, out, *extra):
    assert build_index.main([f"--data={data}", f"--model={model}", f"--out={out}", "--split=test", *extra]) == 0
    return str(out)


def vectors(index_dir):
    index = faiss.read_index(os.path.join(index_dir, "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


@pytest.fixture(scope="module")
def remembering(memory_beir, tiny_model, tmp_path_factory):
    return build(memory_beir, tiny_model, tmp_path_factory.mktemp("mem") / "index", "--memory_dense=2",
                 "--memory_bm25=2", "--memory_val=false")


def test_zero_strength_is_todays_index_exactly(memory_beir, tiny_model, tmp_path, fp32_cpu):
    none = build(memory_beir, tiny_model, tmp_path / "none", "--memory=false", "--hybrid_weight=0.3")
    zero = build(memory_beir, tiny_model, tmp_path / "zero", "--memory_dense=0", "--memory_bm25=0",
                 "--hybrid_weight=0.3")
    assert np.array_equal(vectors(none), vectors(zero))
    a, b = np.load(os.path.join(none, "bm25.npz")), np.load(os.path.join(zero, "bm25.npz"))
    assert all(np.array_equal(a[k], b[k]) for k in ("data", "indices", "indptr"))
    assert not os.path.exists(os.path.join(none, mem.FILE))
    assert mem.Memory.load(zero).strengths == mem.NONE and not mem.Memory.load(zero).on()


def test_only_remembered_documents_move_and_only_train_queries_are_remembered(remembering, memory_beir):
    memory = mem.Memory.load(remembering)
    assert set(memory.queries) == {f"train{i}" for i in range(16)}  # never val's or test's; grade 0 skipped
    assert set(memory.found) == {f"d{i}" for i in range(16)} and memory.strengths == {"dense": 2.0, "bm25": 2}
    own, served = np.load(os.path.join(remembering, "embeddings.npy")), vectors(remembering)
    moved = [i for i in range(48) if not np.array_equal(own[i], served[i])]
    assert moved == list(range(16))  # every other vector bit for bit
    assert np.allclose(np.linalg.norm(served, axis=1), 1, atol=1e-5)
    # each moved vector is nearer its train query than it was
    r = Retriever.load("", memory_beir, index_dir=remembering)
    q = r.encoder.encode([memory.queries["train3"]], "query")[0]
    assert served[3] @ q > own[3] @ q
    saved = fusion.load(remembering, fusion.DENSE_ONLY)
    assert saved["memory"]["dense"] == 2.0 and saved["memory"]["given"]


def test_once_val_has_chosen_the_served_index_remembers_val_too_and_reports_the_choices_val(
        remembering, memory_beir, tiny_model, tmp_path, capsys):
    """memory_val (the default): every label used. The served memory holds train's and val's queries, never
    test's; the val record (val/, val.json) is the choice's, made with train's memory alone."""
    both = build(memory_beir, tiny_model, tmp_path / "both", "--memory_dense=2", "--memory_bm25=2")
    assert "val's 32 judged queries remembered too" in capsys.readouterr().out
    memory = mem.Memory.load(both)
    assert set(memory.queries) == {f"train{i}" for i in range(16)} | {q for q in load_beir(memory_beir, "val")[2]}
    assert mem.saved_extra(both)["split"] == "train+val"
    for name in ("val.json", os.path.join("val", "hybrid.per_query.json")):
        assert open(os.path.join(both, name)).read() == open(os.path.join(remembering, name)).read()
    assert not np.array_equal(vectors(both), vectors(remembering))  # val's documents moved too
    saved = json.load(open(os.path.join(both, "val", "metrics.json")))["results"]["hybrid"]
    assert saved["index"] == both and saved["metrics"]["ndcg@10"] == pytest.approx(
        fusion.load(both, fusion.DENSE_ONLY)["val"]["served"])


def test_the_bar_served_as_the_index_remembers_val_and_is_left_as_it_was(remembering, memory_beir, tiny_model,
                                                                         tmp_path, capsys):
    """make index where training kept step 0: the bar's files, val's queries added to a copy of its memory
    (new files: the bar's, linked from, stay as they were), the reason on record."""
    import shutil

    bar_before = {f: open(os.path.join(remembering, f), "rb").read() for f in sorted(os.listdir(remembering))
                  if os.path.isfile(os.path.join(remembering, f))}
    shutil.copytree(tiny_model, tmp_path / "encoder" / "best")
    served = build(memory_beir, str(tmp_path / "encoder" / "best"), tmp_path / "index", f"--baseline={remembering}")
    assert "embeds as the zero-shot encoder" in capsys.readouterr().out
    saved = fusion.load(served, fusion.DENSE_ONLY)
    assert saved["bar"] == remembering and "training kept step 0" in saved["encoder"]["why"]
    assert set(mem.Memory.load(served).queries) == set(mem.Memory.load(remembering).queries) | {
        q for q in load_beir(memory_beir, "val")[2]}
    assert not np.array_equal(vectors(served), vectors(remembering))
    assert {f: open(os.path.join(remembering, f), "rb").read() for f in sorted(os.listdir(remembering))
            if os.path.isfile(os.path.join(remembering, f))} == bar_before


def test_every_way_of_serving_the_index_serves_its_memory(remembering, memory_beir, tmp_path, capsys, fp32_cpu):
    _, queries, qrels = load_beir(memory_beir, "test")
    texts = list(queries.values())
    retriever = Retriever.load("", memory_beir, index_dir=remembering)
    served = retriever.batch_retrieve(texts, 10)
    plain = Retriever.from_index(remembering, os.path.join(memory_beir, "corpus.jsonl"),
                                 load_beir(memory_beir, "test")[0], memory=False)
    assert plain.batch_retrieve(texts, 10) != served and not plain.why("d3")
    assert retriever.why("d3")[0][:2] == ("train3", mem.Memory.load(remembering).queries["train3"])

    assert evaluate.main([f"--data={memory_beir}", f"--index={remembering}", "--retrievers=hybrid", "--k=10",
                          "--ignore_identical_ids=false", f"--out={tmp_path}/eval"]) == 0
    trec = {}
    for line in (tmp_path / "eval" / "hybrid.trec").read_text().splitlines():
        qid, _, doc, _, _, _ = line.split()
        trec.setdefault(qid, []).append(doc)
    assert [trec[q] for q in queries] == [[d for d, _ in hits] for hits in served]

    assert search.main([f"--data={memory_beir}", f"--index={remembering}", f"--query={queries['test3']}", "--k=3",
                        "--snippet=0", "--why=true"]) == 0
    out = capsys.readouterr()
    hits = [line.split("\t")[1] for line in out.out.splitlines() if line[:1].isdigit()]
    assert hits == [d for d, _ in served[list(queries).index("test3")][:3]]
    assert "remembered:" in out.out and "train queries' memory" in out.err

    child = f"""
import json, sys
from common.retrievers import Retriever
r = Retriever.load("{tmp_path}/onnx", "{memory_beir}", index_dir="{remembering}", backend="onnx")
print(json.dumps([[d for d, _ in h] for h in r.batch_retrieve({texts!r}, 10)]))
assert "torch" not in sys.modules, "torch was imported"
"""
    import export_onnx

    model = json.load(open(os.path.join(remembering, "index.json")))["model"]
    export_onnx.main([f"--model={model}", f"--out={tmp_path}/onnx", f"--data={memory_beir}"])
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[d for d, _ in hits] for hits in served]


def test_val_chooses_memory_where_it_helps_and_none_where_it_cannot(memory_beir, tiny_model, tmp_path, capsys,
                                                                    monkeypatch):
    """memory_beir's val queries ask for documents a train query found: memory is served. Without any
    train query on the val queries' documents (train qrels over docs 16-47 instead), none is. Its val
    is small, so the zero-shot encoder chooses on train + val, cross-validated; on val alone too."""
    out = build(memory_beir, tiny_model, tmp_path / "pooled")
    saved = fusion.load(out, fusion.DENSE_ONLY)
    assert saved["chosen_on"]["split"] == "train+val" and saved["memory"]["folds"] == 5
    assert fusion.remembers(saved) and saved["memory"]["remembered"] == 30  # of 48, by the other folds' memory
    assert saved["chosen_on"]["served"] > saved["memory"]["without"]
    assert "memory: dense strength" in capsys.readouterr().out
    monkeypatch.setattr("common.decision.SMALL_VAL", 0)  # val alone, however small
    out = build(memory_beir, tiny_model, tmp_path / "auto")
    saved = fusion.load(out, fusion.DENSE_ONLY)
    assert fusion.remembers(saved) and saved["memory"]["remembered"] == 16 and "chosen_on" not in saved
    assert saved["val"]["served"] > saved["memory"]["without"]
    assert "memory: dense strength" in capsys.readouterr().out

    other_dir = tmp_path / "other"
    corpus, queries, _ = load_beir(memory_beir, "test")
    val = load_beir(memory_beir, "val")[2]
    train = [(f"t{i}", f"d{i}", 1) for i in range(17, 48, 2)]  # the test-only docs: no val query's
    write_beir_dir(other_dir, {d: ("", c["text"]) for d, c in corpus.items()},
                   {**{f"t{i}": corpus[f"d{i}"]["text"][:30] for i in range(17, 48, 2)},
                    **{q: t for q, t in load_beir(memory_beir, "val")[1].items()}, **queries},
                   {"train": train, "val": [(q, d, g) for q, row in val.items() for d, g in row.items()],
                    "test": [(q, d, g) for q, row in load_beir(memory_beir, "test")[2].items()
                             for d, g in row.items()]})
    other = build(str(other_dir), tiny_model, tmp_path / "none")
    saved = fusion.load(other, fusion.DENSE_ONLY)
    assert saved["memory"]["remembered"] == 0 and not fusion.remembers(saved)
    assert np.array_equal(vectors(other), np.load(os.path.join(other, "embeddings.npy")))
    assert "memory: none served" in capsys.readouterr().out


def test_add_queries_updates_the_index_in_place_and_counts_what_it_skips(remembering, memory_beir, tmp_path, capsys):
    import shutil

    index = str(tmp_path / "index")
    shutil.copytree(remembering, index)
    before = vectors(index)
    added = tmp_path / "clicks.jsonl"
    val_queries = load_beir(memory_beir, "val")[1]
    lines = [{"query": val_queries["val20"], "doc_id": "d20"}, {"query": val_queries["val20"], "doc_id": "d20"},
             {"query": "no such doc", "doc_id": "nope"}, {"query": "not found", "doc_id": "d30", "grade": 0}]
    added.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert build_index.main([f"--data={memory_beir}", f"--out={index}", f"--add_queries={added}"]) == 0
    out = capsys.readouterr().out
    assert "4 judgements, 1 remembered (1 new, 1 duplicates counted once)" in out
    assert "1 naming no document, 1 with grade <= 0" in out
    after = vectors(index)
    changed = [i for i in range(48) if not np.array_equal(before[i], after[i])]
    assert changed == [20]
    memory = mem.Memory.load(index)
    assert "d20" in memory.found and len(memory.queries) == 17
    retriever = Retriever.load("", memory_beir, index_dir=index)
    assert retriever.retrieve(val_queries["val20"], 1)[0][0] == "d20"
    assert retriever.why("d20")[0][1] == val_queries["val20"]

    # TREC qrels naming the data's queries; an unknown query id is a counted skip
    trec = tmp_path / "more.qrels"
    trec.write_text("val22 0 d22 1\nnobody 0 d22 1\n")
    assert build_index.main([f"--data={memory_beir}", f"--out={index}", f"--add_queries={trec}"]) == 0
    assert "2 judgements, 1 remembered (1 new); skipped: 1 naming no query" in capsys.readouterr().out


def test_add_queries_bad_input_is_one_clear_error_and_leaves_the_index(remembering, memory_beir, train_beir,
                                                                        tmp_path, monkeypatch):
    import shutil

    index = str(tmp_path / "index")
    shutil.copytree(remembering, index)
    before = {f: open(os.path.join(index, f), "rb").read() for f in sorted(os.listdir(index))
              if os.path.isfile(os.path.join(index, f))}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        build_index.main([f"--data={memory_beir}", f"--out={index}", f"--add_queries={empty}"])
    added = tmp_path / "one.jsonl"
    added.write_text(json.dumps({"query": "x y", "doc_id": "d20"}) + "\n")
    with pytest.raises(UserError, match="built over .*memory-beir.*not .*train-beir"):
        build_index.main([f"--data={train_beir}", f"--out={index}", f"--add_queries={added}"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "x y"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1"):
        build_index.main([f"--data={memory_beir}", f"--out={index}", f"--add_queries={bad}"])

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(BM25, "save", fail)  # interrupted half way: the index it started from stays
    with pytest.raises(OSError):
        build_index.main([f"--data={memory_beir}", f"--out={index}", f"--add_queries={added}"])
    assert {f: open(os.path.join(index, f), "rb").read() for f in sorted(os.listdir(index))
            if os.path.isfile(os.path.join(index, f))} == before


def test_comparison_shows_each_split_remembered_and_not():
    per_query = {"a": {"ndcg@10": 1.0}, "b": {"ndcg@10": 0.0}, "c": {"ndcg@10": 0.5}}
    col = {"metrics": {"ndcg@10": 0.5, "recall@100": 1.0}, "per_query": per_query}
    text = report.summary_table({"x hybrid": col}, {"x hybrid": col}, remembered={"val": {"a"}, "test": {"a", "c"}})
    head, _, row = text.splitlines()
    assert "val remembered / not (1 / 2)" in head and "test remembered / not (2 / 1)" in head
    assert "| 1.0000 / 0.2500 |" in row and "| 0.7500 / 0.0000 |" in row


def test_a_cut_index_remembers_and_grows_alike(memory_beir, tiny_model, tmp_path):
    """build_index.py --dim: the memory moves the cut vectors, and --add_queries keeps them cut."""
    out = build(memory_beir, tiny_model, tmp_path / "cut", "--dim=16", "--memory_dense=2", "--memory_bm25=1")
    assert vectors(out).shape == (48, 16)
    added = tmp_path / "more.qrels"
    added.write_text("val20\td20\t1\n")
    assert build_index.main([f"--data={memory_beir}", f"--out={out}", f"--add_queries={added}"]) == 0
    cut = vectors(out)
    assert cut.shape == (48, 16) and np.allclose(np.linalg.norm(cut, axis=1), 1, atol=1e-5)
    assert Retriever.load("", memory_beir, index_dir=out).retrieve(load_beir(memory_beir, "val")[1]["val20"], 1)


def test_an_index_without_memory_loads_and_serves_as_before(remembering, memory_beir, tmp_path):
    """An index from before memory (no memory.json, no "memory" in fusion.json) serves what it holds."""
    import shutil

    index = tmp_path / "old"
    shutil.copytree(remembering, index)
    os.remove(index / mem.FILE)
    saved = json.loads((index / fusion.FILE).read_text())
    (index / fusion.FILE).write_text(json.dumps({k: v for k, v in saved.items() if k != "memory"}))
    retriever = Retriever.load("", memory_beir, index_dir=str(index))
    assert not retriever.memory.on() and retriever.why("d3") == []
    texts = list(load_beir(memory_beir, "test")[1].values())
    assert retriever.batch_retrieve(texts, 5) == Retriever.load("", memory_beir, index_dir=remembering).batch_retrieve(
        texts, 5)


def test_training_scores_val_as_the_bar_serves_and_stops_when_it_cannot_beat_it(memory_beir, tiny_model, tmp_path,
                                                                               fp32_cpu, monkeypatch, capsys):
    """train_encoder.py --bar: step 0 is scored as the bar's index serves val (its memory, its mix), each
    later step alike against it, and common.decision.keep_training's stop ends the run at that step."""
    import train_encoder
    from common import decision

    bar = build(memory_beir, tiny_model, tmp_path / "bar", "--memory_dense=2", "--memory_bm25=0")
    calls = []

    def stop_at_second(history, total_steps):
        calls.append([s for s, _ in history])
        return (False, "step 4: cannot beat the bar (a test's rule)") if len(history) > 1 else (True, "")
    monkeypatch.setattr(decision, "keep_training", stop_at_second)
    args = [f"--data={memory_beir}", f"--model={tiny_model}", "--max_steps=12", "--eval_every=4", "--batch_size=8",
            "--time_budget_min=0", "--test_eval=false", "--tensorboard=false"]
    assert train_encoder.main(args + [f"--bar={bar}", f"--out={tmp_path / 'encoder'}"]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "encoder" / "metrics.jsonl") if '"split": "val"' in line]
    assert [r["step"] for r in rows] == [0, 4] and calls == [[0, 4]]
    saved = fusion.load(bar, fusion.DENSE_ONLY)
    assert saved["memory"]["dense"] == 2 and saved["memory"]["bm25"] == 0
    assert rows[0]["ndcg@10"] == pytest.approx(saved["val"]["served"], abs=1e-6)  # the bar, as build_index scored it
    assert rows[0]["ndcg@10"] > rows[0]["dense_ndcg@10"]  # the memory, on top of dense alone
    summary = json.load(open(tmp_path / "encoder" / "metrics.json"))
    assert summary["steps"] == 4 and summary["stopped_early"].startswith("step 4: cannot beat the bar")
    assert "bar: " in capsys.readouterr().out  # the plan says what the bar is

    # a bar val cannot tell a better encoder from (BM25 with the memory: 0.99 on 32 queries): no step is taken
    perfect = build(memory_beir, tiny_model, tmp_path / "perfect", "--memory_dense=2", "--memory_bm25=2")
    assert train_encoder.main(args + [f"--bar={perfect}", f"--out={tmp_path / 'none'}"]) == 0
    summary = json.load(open(tmp_path / "none" / "metrics.json"))
    assert summary["steps"] == 0 and summary["stopped_early"].startswith("val cannot tell a better encoder")


def edge_split(memory_beir, out, case):
    """memory_beir with one split changed the way issue 48's edge cases change it."""
    corpus, queries, _ = load_beir(memory_beir, "test")
    rows = {split: [(q, d, g) for q, row in load_beir(memory_beir, split)[2].items() for d, g in row.items()]
            for split in ("train", "val", "test")}
    queries = {**queries, **{q: t for split in ("train", "val") for q, t in load_beir(memory_beir, split)[1].items()}}
    if case == "every-val-query-remembered":
        rows["val"] = [r for r in rows["val"] if int(r[1][1:]) < 16]
    elif case == "one-val-query":
        rows["val"] = rows["val"][:1]
    elif case == "no-val":
        del rows["val"]
    elif case == "no-train":
        del rows["train"]
    elif case == "memory-on-every-document":
        extra = {f"m{i}": corpus[f"d{i}"]["text"][:30] for i in range(16, 48)}
        queries.update(extra)
        rows["train"] += [(q, f"d{q[1:]}", 1) for q in extra]
    return write_beir_dir(out, {d: ("", c["text"]) for d, c in corpus.items()}, queries, rows)


@pytest.mark.parametrize("case", ["every-val-query-remembered", "one-val-query", "no-val", "no-train",
                                  "memory-on-every-document"])
def test_each_edge_split_gets_a_stated_choice_for_the_bar_and_the_model(memory_beir, tiny_model, tmp_path, capsys,
                                                                          case):
    """Issue 48's edge cases, through the bar and an index of a (perturbed) fine-tuned encoder weighed against
    it: each runs, says its memory and encoder choice in a line, and the choice repeats for the seed."""
    import torch

    from common.models import BiEncoder

    import train_encoder

    data = edge_split(memory_beir, tmp_path / "data", case)
    bar = build(data, tiny_model, tmp_path / "zero-shot", "--memory_val=false")
    if case != "no-train":  # (make trains nothing without a train split)
        assert train_encoder.main([f"--data={data}", f"--model={tiny_model}", "--max_steps=4", "--eval_every=2",
                                   "--batch_size=8", "--time_budget_min=0", "--test_eval=false", "--tensorboard=false",
                                   f"--bar={bar}", f"--out={tmp_path / 'trained'}"]) == 0
        assert os.path.isdir(tmp_path / "trained" / "best")
    tuned = BiEncoder.from_pretrained(tiny_model)
    with torch.no_grad():
        for p in tuned.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    tuned.save(str(tmp_path / "encoder" / "best"))
    capsys.readouterr()
    served = [build(data, str(tmp_path / "encoder" / "best"), tmp_path / f"index{i}", f"--baseline={bar}")
              for i in range(2)]
    out = capsys.readouterr().out
    assert "memory:" in out and "traceback" not in out.lower()
    saved = [fusion.load(s, fusion.DENSE_ONLY) for s in served]
    assert saved[0]["encoder"]["why"] and saved[0]["encoder"]["why"] in out
    assert json.dumps(saved[0]).replace("index0", "index1") == json.dumps(saved[1])  # deterministic
