"""A few dozen labelled queries with heavily overlapping labels (issue 38's shape): ~40 train queries,
~40 relevant documents each, ~1.5k documents. Batches that keep every query's relevant documents away
from the others' cannot fill there; the trainer masks those documents out of the loss instead."""
import json
import random

import numpy as np
import pytest
import torch

import train_encoder
from common import losses
from common.batching import Example, batches_fill, false_negatives, make_batches, sample_groups
from conftest import made_up_words, write_beir_dir


@pytest.fixture(scope="module")
def overlap_beir(tmp_path_factory):
    """1,500 docs in 30 topics of 50; 50 queries (40 train, 5 val, 5 test), each about one topic with
    40 of its 50 docs relevant: most pairs of queries on a topic share most of their documents."""
    rng = random.Random(0)
    words = made_up_words(rng, 600)
    topics = [rng.sample(words, 12) for _ in range(30)]
    corpus = {f"d{t}-{i}": ("", " ".join(rng.sample(topics[t], 6) + rng.sample(words, 10)))
              for t in range(30) for i in range(50)}
    queries, qrels = {}, {"train": [], "val": [], "test": []}
    for q in range(50):
        t = q % 6  # six topics: about eight queries share each
        queries[f"q{q}"] = " ".join(rng.sample(topics[t], 3))
        split = "train" if q < 40 else "val" if q < 45 else "test"
        qrels[split] += [(f"q{q}", f"d{t}-{i}", 1) for i in rng.sample(range(50), 40)]
    return write_beir_dir(tmp_path_factory.mktemp("overlap") / "overlap", corpus, queries, qrels)


def examples_of(data):
    from common.data import load_beir

    _, queries, qrels = load_beir(data, "train")
    return [Example(q, queries[q], tuple(d for d, g in qrels[q].items() if g > 0)) for q in qrels]


def test_exclusive_batches_starve_there_and_masked_ones_fill(overlap_beir):
    examples = examples_of(overlap_beir)
    groups = sample_groups(examples, 0, 0)
    assert make_batches(examples, groups, 20, 0) == []  # the epoch the trainer crashed on: no batch at all
    assert batches_fill(examples, groups, 20, 0) == (False, 0)
    mixed = make_batches(examples, groups, 20, 0, exclusive="queries")
    assert len(mixed) == 2 and sorted(i for b in mixed for i in b) == list(range(40))


def test_the_mask_covers_exactly_the_labelled_documents_of_the_other_queries():
    batch = [Example("a", "qa", ("x", "y")), Example("b", "qb", ("y",)), Example("c", "qc", ("z",))]
    groups = [["x", "n1"], ["y", "x"], ["z", "y"]]  # columns: x n1 y x z y
    mask = false_negatives(batch, groups)
    assert mask.tolist() == [[False, False, True, True, False, True],   # a: its own x is its positive
                             [False, False, False, False, False, True],  # b: y again, in c's group
                             [False, False, False, False, False, False]]


def test_a_masked_loss_is_the_loss_without_those_documents():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 4] = True  # query 0 must not be pushed away from column 4
    masked = losses.infonce(q, d, 0.05, symmetric=False, mask=mask)
    logits = q @ d.T / 0.05
    by_hand = torch.stack([torch.logsumexp(logits[0, [0, 1, 2, 3, 5]], 0) - logits[0, 0],
                           torch.logsumexp(logits[1], 0) - logits[1, 2],
                           torch.logsumexp(logits[2], 0) - logits[2, 4]]).mean()
    assert masked.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert losses.infonce(q, d, 0.05, mask=torch.zeros(3, 6, dtype=torch.bool)).item() == \
        losses.infonce(q, d, 0.05).item()
    # the passage->query direction leaves out query 0 for column 4, query 2's positive
    both = losses.infonce(q, d, 0.05, symmetric=True, mask=mask)
    back = d[[0, 2, 4]] @ q.T / 0.05
    backward = torch.stack([torch.logsumexp(back[0], 0) - back[0, 0], torch.logsumexp(back[1], 0) - back[1, 1],
                            torch.logsumexp(back[2, [1, 2]], 0) - back[2, 2]]).mean()
    assert both.item() == pytest.approx(((by_hand + backward) / 2).item(), rel=1e-5)


def test_the_trainer_runs_on_heavily_overlapping_labels_and_says_how(overlap_beir, tiny_model, tmp_path, capsys):
    """Before: 'IndexError: list index out of range' in typical_batch. Now: one line, then training."""
    out = tmp_path / "run"
    assert train_encoder.main([f"--data={overlap_beir}", f"--model={tiny_model}", f"--out={out}", "--epochs=2",
                               "--max_passage_length=32", "--tensorboard=false", "--test_eval=false"]) == 0
    printed = capsys.readouterr().out
    assert "masked out of its loss (false_negatives=mask)" in printed
    saved = json.loads((out / "config.json").read_text())
    assert saved["false_negatives"] == "mask" and saved["batch_size"] == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["val"]["ndcg@10"])


# ---- choices on small val: train + val, memory cross-validated (what needs no retraining)

def unique_beir(path, n_train=30, n_val=5):
    """Each query about its own doc (no two share one): 60 docs of six made-up words, a query three of
    its doc's words. A memory cannot help a query another query did not judge its doc for."""
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(400)]
    corpus = {f"d{i}": ("", " ".join(rng.sample(words, 6))) for i in range(60)}
    queries = {f"q{i}": " ".join(rng.sample(corpus[f"d{i}"][1].split(), 3)) for i in range(n_train + n_val + 5)}
    rows = [(f"q{i}", f"d{i}", 1) for i in range(len(queries))]
    return write_beir_dir(path, corpus, queries, {"train": rows[:n_train], "val": rows[n_train:n_train + n_val],
                                                  "test": rows[n_train + n_val:]})


def test_small_val_pools_train_for_an_encoder_that_never_saw_it(tmp_path):
    from common.data import folds, load_beir, load_train
    from common.decision import SMALL_VAL, pooled
    from common.run import trained_on

    data = unique_beir(tmp_path / "u")
    val, train = load_beir(data, "val")[1:], load_train(data)
    queries, qrels, how = pooled(val, train, saw_train=False)
    assert how == {"split": "train+val", "queries": 35, "val": 5} and len(qrels) == len(queries) == 35
    assert pooled(val, train, saw_train=True)[2]["split"] == "val"  # a fine-tuned encoder: val alone
    assert pooled(({}, {}), train, saw_train=False)[2]["split"] == "val"  # no val: nothing pooled
    assert pooled(val, None, saw_train=False)[2]["split"] == "val"  # no train split: nothing to pool
    big = {f"v{i}": {"d0": 1} for i in range(SMALL_VAL)}
    assert pooled(({q: "x" for q in big}, big), train, saw_train=False)[1] is big
    # a generated train split: never pooled; its "generated" questions are, with a small val or none
    gen = ({"g1": "a question?", "g2": "another?"}, {"g1": {"d0": 1}, "g2": {"d1": 1}})
    assert pooled(val, None, False, gen)[2] == {"split": "generated+val", "queries": 7, "val": 5}
    assert pooled(({}, {}), None, False, gen)[2] == {"split": "generated+val", "queries": 2, "val": 0}
    assert pooled(val, None, True, gen)[2]["split"] == "val"  # trained on them: val alone
    assert pooled(({q: "x" for q in big}, big), None, False, gen)[1] is big
    assert pooled(val, train, False, ({}, {}))[2]["split"] == "val"  # an empty generated split: nothing pooled
    parts = folds(list(qrels))
    assert len(parts) == 5 and set().union(*parts) == set(qrels) and sum(map(len, parts)) == 35
    assert [len(p) for p in folds(["a", "b"])] == [1, 1]
    run = tmp_path / "enc"
    (run / "best").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": str(data)}))
    assert trained_on(str(run / "best"), str(data)) and not trained_on(str(run / "best"), str(tmp_path / "other"))
    assert not trained_on("all-MiniLM-L6-v2", str(data))
    (run / "config.json").write_text(json.dumps({"data": "data/u"}))  # relative to where that run ran
    assert trained_on(str(run / "best"), str(data))
    (run / "metrics.json").write_text(json.dumps({"steps": 8, "best_step": 0}))  # best/ kept the starting model
    assert not trained_on(str(run / "best"), str(data)) and trained_on(str(run / "last"), str(data))
    (run / "metrics.json").write_text(json.dumps({"steps": 0}))  # training not run
    assert not trained_on(str(run / "best"), str(data))


def test_the_zero_shot_choices_rest_on_train_and_val_and_no_query_sees_its_own_memory(tmp_path, tiny_model, capsys):
    import build_index
    import evaluate

    data = unique_beir(tmp_path / "u")
    out = tmp_path / "index"
    assert build_index.main([f"--data={data}", f"--model={tiny_model}", f"--out={out}", "--split=val"]) == 0
    printed = capsys.readouterr().out
    assert "chosen on train + val (35 queries: val's 5 are under 50)" in printed and "another fold's" in printed
    saved = json.loads((out / "fusion.json").read_text())
    assert saved["chosen_on"]["split"] == "train+val" and saved["chosen_on"]["queries"] == 35
    assert saved["queries"] == 5  # its "val" scores: val's, as served
    # every query's doc is judged by that query alone: cross-validated, none is remembered, none served
    # (scored with its own judgement, each would be)
    assert saved["memory"]["remembered"] == 0 and saved["memory"]["folds"] == 5
    assert not saved["memory"]["dense"] and not saved["memory"]["bm25"]
    # evaluate.py's zero-shot hybrid column makes the same choice on the same queries
    assert evaluate.main([f"--data={data}", f"--model={tiny_model}", "--split=val", "--retrievers=hybrid",
                          "--latency=false", f"--out={tmp_path / 'eval'}"]) == 0
    hybrid = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]["hybrid"]["hybrid"]
    assert hybrid["chosen_on"]["split"] == "train+val" and hybrid.get("weight") == saved.get("weight")
    assert hybrid.get("method") == saved.get("method")
    # and with --choices (as `make baseline` runs it) it reads the index's choice instead of deciding again
    assert evaluate.main([f"--data={data}", f"--model={tiny_model}", "--split=val", "--retrievers=hybrid",
                          "--latency=false", f"--choices={out}", f"--out={tmp_path / 'read'}"]) == 0
    assert f"(chosen for {tiny_model} by {out})" in capsys.readouterr().out
    read = json.loads((tmp_path / "read" / "metrics.json").read_text())["results"]["hybrid"]
    assert read["hybrid"].get("weight") == saved.get("weight") and read["metrics"] == \
        json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]["hybrid"]["metrics"]


def test_the_bar_is_read_not_rebuilt_and_served_unless_beaten_beyond_noise(tmp_path, tiny_model, capsys):
    """build_index.py --baseline=<the zero-shot index>: a model that embeds as the bar's encoder (training kept
    step 0) gets the bar's files, nothing rebuilt; another is weighed against the bar's val scores (val.json)."""
    import os
    import shutil

    import build_index
    from common import decision, fusion
    from common.data import load_beir
    from conftest import build_tiny_model

    data = unique_beir(tmp_path / "u")
    bar = tmp_path / "bar"
    assert build_index.main([f"--data={data}", f"--model={tiny_model}", f"--out={bar}", "--split=val"]) == 0
    assert set(json.loads((bar / "val.json").read_text())["per_query"]) == set(load_beir(data, "val")[2])
    shutil.copytree(tiny_model, tmp_path / "encoder" / "best")
    capsys.readouterr()
    assert build_index.main([f"--data={data}", f"--model={tmp_path / 'encoder' / 'best'}", f"--baseline={bar}",
                             f"--out={tmp_path / 'same'}", "--split=val"]) == 0
    assert "embeds as the zero-shot encoder" in capsys.readouterr().out
    assert os.stat(tmp_path / "same" / "index.faiss").st_ino == os.stat(bar / "index.faiss").st_ino  # linked
    saved = fusion.load(str(tmp_path / "same"), fusion.DENSE_ONLY)
    assert saved["bar"] == str(bar) and "training kept step 0" in saved["encoder"]["why"]
    assert {k: v for k, v in saved.items() if k not in ("bar", "encoder", "candidates")} == \
        {k: v for k, v in fusion.load(str(bar), fusion.DENSE_ONLY).items() if k != "candidates"}
    other = build_tiny_model(tmp_path / "other", seed=7)
    assert build_index.main([f"--data={data}", f"--model={other}", f"--baseline={bar}", f"--out={tmp_path / 'index'}",
                             "--split=val"]) == 0
    saved = fusion.load(str(tmp_path / "index"), fusion.DENSE_ONLY)
    report = saved["encoder"]
    beyond = report["gain"] - decision.ENCODER_Z * report["stderr"] > 0 and not report["guard"]["vetoed"]
    served = json.loads((tmp_path / "index" / "index.json").read_text())["model"]
    assert served == (str(other) if beyond else json.loads((bar / "index.json").read_text())["model"])
    assert str(other) in saved["candidates"]  # the fine-tuned choice is on record either way


def test_a_fine_tuned_encoder_chooses_on_val_alone(tmp_path, tiny_model, capsys):
    import shutil

    import build_index

    data = unique_beir(tmp_path / "u")
    run = tmp_path / "encoder"
    shutil.copytree(tiny_model, run / "best")
    (run / "config.json").write_text(json.dumps({"data": str(data)}))
    assert build_index.main([f"--data={data}", f"--model={run / 'best'}", f"--baseline={tiny_model}",
                             f"--out={tmp_path / 'index'}", "--split=val"]) == 0
    saved = json.loads((tmp_path / "index" / "fusion.json").read_text())
    chosen_on = {m: c.get("chosen_on", {}).get("split", "val") for m, c in saved["candidates"].items()}
    assert chosen_on == {str(run / "best"): "val", str(tiny_model): "train+val"}
    # the same weights under another name: nothing beyond noise on 5 val queries, so the zero-shot is served
    assert saved["model"] == str(tiny_model)
    printed = capsys.readouterr().out
    assert "encoder served: the zero-shot encoder" in printed and "not beyond noise" in printed


def test_a_few_dozen_queries_train_for_min_steps_and_epochs_given_stay(overlap_beir):
    """Three epochs of 40 queries at batch 20 are 6 steps: auto epochs reach min_steps; epochs given, or
    data whose three epochs reach it, stay."""
    from common.config import load_config

    examples = examples_of(overlap_beir)
    table = train_encoder.AUTO["cpu"]

    def resolved(*args):
        cfg = load_config(train_encoder.DEFAULTS, [f"--data={overlap_beir}", "--batch_size=20",
                                                   "--false_negatives=mask", *args])
        note = train_encoder.resolve_epochs(cfg, table, examples, 0)
        return cfg.epochs, note

    epochs, note = resolved()
    assert epochs == 30 and "3 epochs of 40 queries are 6 steps: 30 epochs, to reach min_steps=60" in note
    assert resolved("--epochs=2") == (2, "") and resolved("--min_steps=0") == (3, "")
    assert resolved("--min_steps=4") == (3, "") and resolved("--max_steps=6") == (3, "")
