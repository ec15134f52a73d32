"""Matryoshka embeddings: the loss at truncated dimensions, and evaluation and indexes at them."""
import json
import os

import numpy as np
import pytest

import build_index
import evaluate
import train_encoder
from common import index as faiss_index
from common.models import BiEncoder, principal_axes
from common.retrievers import Retriever
from test_train_encoder import FAST, log_lines


def train(data, model, out, *args):
    return train_encoder.main([f"--data={data}", f"--model={model}", f"--out={out}", *FAST, "--batch_size=8",
                               "--max_steps=3", "--lr=1e-3", *args])


def test_the_loss_is_summed_over_the_dimensions_and_the_full_one_is_plain_infonce(train_beir, tiny_model, tmp_path,
                                                                                  fp32_cpu):
    assert train(train_beir, tiny_model, tmp_path / "plain") == 0
    unrotated = "--matryoshka_rotation=none"  # the rotation changes what trains (test below)
    assert train(train_beir, tiny_model, tmp_path / "full", "--matryoshka_dims=32", unrotated) == 0  # the model's width
    assert train(train_beir, tiny_model, tmp_path / "mrl", "--matryoshka_dims=32,8", "--matryoshka_weights=1,0.5",
                 unrotated) == 0
    plain, full, mrl = (log_lines(tmp_path / n) for n in ("plain", "full", "mrl"))
    assert [r["loss"] for r in full] == pytest.approx([r["loss"] for r in plain], abs=1e-6)
    first = mrl[0]
    assert first["loss"] == pytest.approx(first["loss/infonce@32"] + 0.5 * first["loss/infonce@8"], rel=1e-5)
    assert first["loss/infonce@32"] == pytest.approx(plain[0]["loss"], abs=1e-6)  # same start, same batch
    saved = json.load(open(tmp_path / "mrl" / "best" / "biencoder.json"))
    assert saved["matryoshka_dims"] == [32, 8]
    card = open(tmp_path / "mrl" / "best" / "README.md").read()
    assert "| matryoshka_dims | `[32, 8]` |" in card and "| matryoshka_rotation | `\"none\"` |" in card
    assert "ndcg@10@8 0." in card  # val at the narrower width, from the run's own metrics
    assert "matryoshka_rotation" not in open(tmp_path / "plain" / "best" / "README.md").read().split("<details>")[0]


def test_the_rotation_keeps_every_cosine_and_puts_the_most_variance_first(tiny_model, tmp_path, fp32_cpu):
    encoder = BiEncoder.from_pretrained(tiny_model)
    texts = [f"text number {i} about {w}" for i, w in enumerate(["sorting", "lists", "files", "json", "paths"] * 8)]
    before = encoder.encode(texts)
    encoder.rotate(principal_axes(before))
    after = encoder.encode(texts)
    np.testing.assert_allclose(after @ after.T, before @ before.T, atol=1e-5)  # a rotation: cosines kept
    spread = after.var(0)
    assert np.all(np.diff(spread) <= 1e-6)  # the first dimensions vary the most
    assert spread[:8].sum() > before.var(0)[:8].sum()
    encoder.rotate(principal_axes(encoder.encode(texts[:10])))  # composed into the one it has
    np.testing.assert_allclose(encoder.encode(texts) @ encoder.encode(texts).T, before @ before.T, atol=1e-5)
    saved = encoder.save(str(tmp_path / "rotated"))
    modules = json.load(open(os.path.join(saved, "modules.json")))
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"), ("3_Normalize", "Normalize")]
    assert json.load(open(os.path.join(saved, "2_Dense", "config.json")))["activation_function"].endswith("Identity")
    reloaded = BiEncoder.from_pretrained(saved)
    np.testing.assert_allclose(reloaded.encode(texts), encoder.encode(texts), atol=1e-6)


def test_a_dense_module_with_an_activation_is_refused_by_name(tiny_model, tmp_path):
    from common.run import UserError

    encoder = BiEncoder.from_pretrained(tiny_model)
    encoder.rotate(principal_axes(np.eye(32, dtype=np.float32)))
    saved = encoder.save(str(tmp_path / "tanh"))
    config = os.path.join(saved, "2_Dense", "config.json")
    json.dump({**json.load(open(config)), "activation_function": "torch.nn.modules.activation.Tanh"}, open(config, "w"))
    with pytest.raises(UserError, match="activation torch.nn.modules.activation.Tanh"):
        BiEncoder.from_pretrained(saved)


def test_matryoshka_training_starts_from_the_rotation_and_saves_it(train_beir, tiny_model, tmp_path, capsys, fp32_cpu):
    assert train(train_beir, tiny_model, tmp_path / "plain") == 0
    assert train(train_beir, tiny_model, tmp_path / "mrl", "--matryoshka_dims=32,8") == 0
    assert "rotated onto the principal axes of" in capsys.readouterr().out
    plain, mrl = log_lines(tmp_path / "plain"), log_lines(tmp_path / "mrl")
    assert mrl[0]["loss/infonce@32"] == pytest.approx(plain[0]["loss"], abs=1e-5)  # the full width: cosines kept
    vals = [json.loads(line) for line in open(tmp_path / "mrl" / "metrics.jsonl") if '"val"' in line]
    assert vals and all(0 <= r["ndcg@10@8"] <= 1 and "ndcg@10@32" not in r for r in vals)  # narrower widths only
    best = tmp_path / "mrl" / "best"
    assert os.path.isfile(best / "2_Dense" / "model.safetensors")
    assert BiEncoder.from_pretrained(str(best)).projection is not None
    assert train(train_beir, str(best), tmp_path / "again", "--matryoshka_dims=32,8") == 0  # trained for it: kept
    assert "rotated onto" not in capsys.readouterr().out


def test_best_is_saved_rotated_and_the_model_in_training_is_left_as_it_was(tiny_model, tmp_path, fp32_cpu):
    from common.config import load_config

    cfg = load_config(train_encoder.DEFAULTS, [f"--out={tmp_path}", "--matryoshka_dims=32,8"])
    encoder = BiEncoder.from_pretrained(tiny_model)
    texts = [f"doc {i} on {w}" for i, w in enumerate(["io", "json", "http", "regex"] * 6)]
    before = encoder.encode(texts)
    rotation = principal_axes(before)
    train_encoder.save_best(cfg, encoder, rotation, {"step": 0, "val": {"ndcg@10": 0.5}}, 3)
    assert encoder.projection is None  # training goes on in its own basis
    saved = BiEncoder.from_pretrained(str(tmp_path / "best")).encode(texts)
    np.testing.assert_allclose(saved, before @ rotation.T, atol=1e-5)
    assert os.path.isfile(tmp_path / "best" / "README.md")


def test_a_dimension_wider_than_the_model_is_refused(train_beir, tiny_model, tmp_path):
    from common.run import UserError

    with pytest.raises(UserError, match="embeds in 32 dimensions"):
        train(train_beir, tiny_model, tmp_path / "wide", "--matryoshka_dims=64")


def test_evaluate_reports_each_dimension_and_warns_of_an_untrained_one(tiny_model, toy_beir, tmp_path, capsys):
    assert evaluate.main([f"--data={toy_beir}", f"--model={tiny_model}", "--retrievers=dense", "--dims=32,8",
                          f"--out={tmp_path}"]) == 0
    results = json.load(open(tmp_path / "metrics.json"))["results"]
    assert {"dense", "dense@32", "dense@8"} <= set(results)
    for metric, value in results["dense"]["metrics"].items():  # the full width is plain dense search
        assert results["dense@32"]["metrics"][metric] == pytest.approx(value, abs=1e-6), metric
    assert results["dense@8"]["index_bytes_per_doc"] == 32
    assert "not trained for 8 dimensions" in capsys.readouterr().err


def test_an_index_of_truncated_vectors_serves_queries_cut_alike(tiny_model, toy_beir, tmp_path, capsys):
    out = tmp_path / "index8"
    assert build_index.main([f"--data={toy_beir}", f"--model={tiny_model}", f"--out={out}", "--dim=8",
                             "--hybrid=false"]) == 0
    assert "not trained for 8 dimensions" in capsys.readouterr().err
    meta = json.load(open(out / "index.json"))
    assert (meta["dim"], meta["model_dim"]) == (8, 32)
    assert np.load(out / "embeddings.npy").shape[1] == 32  # kept whole: mining and rebuilds read it
    got = Retriever.load("", toy_beir, index_dir=str(out)).batch_retrieve(["merge sort", "tcp bytes"], 6)
    enc = BiEncoder.from_pretrained(tiny_model)
    corpus_ids = [line.strip() for line in open(out / "doc_ids.txt")]
    docs = faiss_index.truncate(np.load(out / "embeddings.npy"), 8)
    queries = faiss_index.truncate(enc.encode(["merge sort", "tcp bytes"], "query"), 8)
    for row, q in zip(got, queries):
        scores = docs @ q
        assert [d for d, _ in row] == [corpus_ids[i] for i in np.argsort(-scores, kind="stable")[:6]]
        np.testing.assert_allclose([s for _, s in row], np.sort(scores)[::-1][:6], atol=1e-5)
    assert os.path.getsize(out / "index.faiss") < os.path.getsize(out / "embeddings.npy")
