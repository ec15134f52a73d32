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
from conftest import write_beir_dir


@pytest.fixture(scope="module")
def overlap_beir(tmp_path_factory):
    """1,500 docs in 30 topics of 50; 50 queries (40 train, 5 val, 5 test), each about one topic with
    40 of its 50 docs relevant: most pairs of queries on a topic share most of their documents."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 8))) for _ in range(600)]
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
    assert saved["false_negatives"] == "mask" and saved["batch_size"] == 20
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["val"]["ndcg@10"])
