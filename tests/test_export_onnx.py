import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import export_onnx
from common.config import ConfigError
from common.metrics import ranked
from common.models import BiEncoder, CrossEncoder, principal_axes
from common.onnx_models import OnnxBiEncoder, OnnxCrossEncoder
from common.run import UserError
from conftest import write_beir_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One character to past max_passage_length (truncated), three to a batch: padding and truncation both run.
TEXTS = ["x", "short one", "a much longer text about sorting lists and merging the sorted halves", "mid length",
         "another long example, with punctuation (and brackets)", "q" * 80]

# The graphs compute in fp32: PyTorch, compared with them, too (auto may be bf16 on this CPU).
pytestmark = pytest.mark.usefixtures("fp32_cpu")


@pytest.fixture(scope="module")
def parity_data(tmp_path_factory):
    """Real-looking text for the export's own parity check, short enough for a 64-token reranker."""
    corpus = {f"d{i}": ("", text) for i, text in enumerate(TEXTS)}
    queries = {"q1": "sorting lists", "q2": "what is x", "q3": "brackets and punctuation"}
    return write_beir_dir(tmp_path_factory.mktemp("parity") / "toy", corpus, queries, {})


def export(out, model, data, *args):
    export_onnx.main([f"--model={model}", f"--out={out}", f"--data={data}", "--batch_size=3", *args])
    return str(out)


def save_encoder(tiny_model, path, rotate=False, **settings):
    encoder = BiEncoder.from_pretrained(tiny_model, **settings)
    if rotate:  # a linear layer after pooling (Matryoshka's start): inside the graph too
        encoder.rotate(principal_axes(encoder.encode(TEXTS)))
    return encoder.save(str(path))


@pytest.fixture(scope="module")
def encoder_export(tiny_model, parity_data, tmp_path_factory):
    """(PyTorch model dir, export dir with model.int8.onnx): mean pooling, normalised, a query prefix."""
    base = tmp_path_factory.mktemp("encoder")
    model = save_encoder(tiny_model, base / "model", query_prefix="q: ", max_passage_length=24)
    return model, export(base / "onnx", model, parity_data, "--quantize=true")


@pytest.fixture(scope="module")
def reranker_export(tiny_model, parity_data, tmp_path_factory):
    """(PyTorch model dir, export dir) of a cross-encoder whose random head is scaled up, so its
    logits are spread far wider than the fp32 differences and orderings can be compared."""
    base = tmp_path_factory.mktemp("reranker")
    torch.manual_seed(0)
    cross = CrossEncoder.from_pretrained(tiny_model, max_length=64)
    with torch.no_grad():
        cross.model.classifier.weight.mul_(200)
    model = cross.save(str(base / "model"))
    return model, export(base / "onnx", model, parity_data, "--kind=reranker")


@pytest.mark.parametrize("pooling,normalize,rotate", [("mean", True, False), ("cls", True, False),
                                                     ("max", False, False), ("mean", True, True)])
def test_encoder_export_matches_biencoder(tiny_model, parity_data, tmp_path, pooling, normalize, rotate):
    model = save_encoder(tiny_model, tmp_path / "model", rotate, pooling=pooling, normalize=normalize,
                         query_prefix="q: ", max_passage_length=24)
    out = export(tmp_path / "onnx", model, parity_data)
    torch_enc, onnx_enc = BiEncoder.from_pretrained(model), OnnxBiEncoder.from_dir(out)
    assert onnx_enc.settings() == torch_enc.settings() and onnx_enc.dim == torch_enc.dim
    for kind in ("query", "passage"):
        want, got = torch_enc.tokenize(TEXTS, kind), onnx_enc.tokenize(TEXTS, kind)
        for name in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(got[name], want[name].numpy())
        emb = onnx_enc.encode(TEXTS, kind, batch_size=3)
        assert emb.dtype == np.float32 and emb.shape == (len(TEXTS), torch_enc.dim)
        np.testing.assert_allclose(emb, torch_enc.encode(TEXTS, kind, batch_size=3), atol=1e-4, rtol=0)
        one_by_one = np.concatenate([onnx_enc.encode([t], kind) for t in TEXTS])  # input order kept
        np.testing.assert_allclose(emb, one_by_one, atol=1e-5, rtol=0)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5) == normalize
    meta = json.loads(open(os.path.join(out, "onnx.json")).read())
    assert meta["parity"]["fp32"]["max_abs_diff"] <= 1e-4 and meta["parity"]["data"] == parity_data
    assert "int8" not in meta["parity"] and not os.path.exists(os.path.join(out, "model.int8.onnx"))
    assert {"config.json", "command.txt", "tokenizer.json", "biencoder.json"} <= set(os.listdir(out))


def test_reranker_export_matches_crossencoder_and_reranks_alike(reranker_export):
    model, out = reranker_export
    torch_ce, onnx_ce = CrossEncoder.from_pretrained(model), OnnxCrossEncoder.from_dir(out)
    assert onnx_ce.max_length == torch_ce.max_length == 64
    queries = {"q1": "sorting lists", "q2": "brackets"}
    docs = {f"d{i}": text for i, text in enumerate(TEXTS)}
    pairs = [(q, d) for q in queries.values() for d in docs.values()]
    want = torch_ce.score([q for q, _ in pairs], [d for _, d in pairs], batch_size=4)
    got = onnx_ce.score([q for q, _ in pairs], [d for _, d in pairs], batch_size=4)
    assert got.dtype == np.float32 and got.shape == (len(pairs),)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.diff(np.sort(want)).min() > 1e-3  # else the orderings below could differ by rounding alone

    run = {"q1": {f"d{i}": 1.0 - i / 10 for i in range(6)}, "q2": {"d5": 0.9, "d1": 0.5, "d3": 0.4, "d0": 0.1}}
    want_run, _ = torch_ce.rerank(queries, run, docs, depth=4, batch_size=2)
    got_run, seconds = onnx_ce.rerank(queries, run, docs, depth=4, batch_size=2)
    assert len(seconds) == 2
    assert {q: ranked(r) for q, r in got_run.items()} == {q: ranked(r) for q, r in want_run.items()}
    assert ranked(got_run["q1"])[4:] == ["d4", "d5"]  # below the depth: first-stage order


def test_int8_export_loads_and_stays_close(encoder_export):
    model, out = encoder_export
    fp32, int8 = OnnxBiEncoder.from_dir(out), OnnxBiEncoder.from_dir(out, quantized=True)
    assert os.path.getsize(os.path.join(out, "model.int8.onnx")) < os.path.getsize(os.path.join(out, "model.onnx"))
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    assert np.abs(a - b).max() > 1e-6  # the int8 graph is the one that ran
    assert ((a * b).sum(1) > 0.95).all()  # both normalised: cosine
    parity = json.loads(open(os.path.join(out, "onnx.json")).read())["parity"]
    assert parity["int8"]["cosine_min"] > 0.95 and 0 <= parity["int8"]["top1_agreement"] <= 1


def test_inference_never_imports_torch(encoder_export, reranker_export):
    code = f"""
import json, sys
sys.path.insert(0, {REPO!r})
from common.onnx_models import OnnxBiEncoder, OnnxCrossEncoder
emb = OnnxBiEncoder.from_dir({encoder_export[1]!r}, quantized=True).encode({TEXTS!r}, "query")
scores = OnnxCrossEncoder.from_dir({reranker_export[1]!r}).score(["sorting"] * 2, ["merge sort", "x"])
assert "torch" not in sys.modules and "transformers" not in sys.modules, "torch or transformers imported"
print(json.dumps([emb.tolist(), scores.tolist()]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    emb, scores = json.loads(proc.stdout)
    np.testing.assert_allclose(emb, OnnxBiEncoder.from_dir(encoder_export[1], quantized=True).encode(TEXTS, "query"),
                               atol=1e-6)
    assert len(scores) == 2


def swap_in_reranker_graph(out, reranker_out):
    shutil.copy(os.path.join(reranker_out, "model.onnx"), os.path.join(out, "model.onnx"))


def swap_in_foreign_graph(out, reranker_out):
    """A graph taking inputs no tokenizer gives (ids, mask) and returning 32-d vectors."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "sequence"])
    out_info = helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", "sequence"])
    graph = helper.make_graph([helper.make_node("Cast", ["ids"], ["emb"], to=TensorProto.FLOAT)], "foreign",
                              [ids, mask], [out_info])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), os.path.join(out, "model.onnx"))


@pytest.mark.parametrize("swap", [swap_in_reranker_graph, swap_in_foreign_graph])
def test_a_graph_whose_inputs_do_not_match_the_tokenizer_is_refused(encoder_export, reranker_export, tmp_path, swap):
    out = shutil.copytree(encoder_export[1], tmp_path / "export")
    swap(str(out), reranker_export[1])
    with pytest.raises(UserError, match="do not match") as e:
        OnnxBiEncoder.from_dir(str(out))
    assert os.path.join(str(out), "model.onnx") in str(e.value) and "export_onnx.py" in str(e.value)


def test_a_swapped_tokenizer_or_kind_is_refused(encoder_export, reranker_export, tmp_path):
    out = shutil.copytree(encoder_export[1], tmp_path / "export")
    tokenizer_file = out / "tokenizer.json"
    tok = json.loads(tokenizer_file.read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # same size, other ids: would silently embed other text
    tokenizer_file.write_text(json.dumps(tok))
    with pytest.raises(UserError, match="vocabulary differs") as e:
        OnnxBiEncoder.from_dir(str(out))
    assert str(tokenizer_file) in str(e.value)
    with pytest.raises(UserError, match="kind=reranker, not kind=encoder"):
        OnnxBiEncoder.from_dir(reranker_export[1])
    with pytest.raises(UserError, match="--quantize=true"):
        OnnxCrossEncoder.from_dir(reranker_export[1], quantized=True)
    with pytest.raises(UserError, match="no onnx.json"):
        OnnxBiEncoder.from_dir(encoder_export[0])  # the PyTorch model directory


def test_a_parity_failure_leaves_no_export_behind(encoder_export, parity_data, tmp_path, monkeypatch):
    real = OnnxBiEncoder.encode
    monkeypatch.setattr(OnnxBiEncoder, "encode", lambda self, *a, **kw: real(self, *a, **kw) + 1e-3)
    with pytest.raises(UserError, match="differ by up to 0.001"):
        export(tmp_path / "out" / "onnx", encoder_export[0], parity_data)
    assert os.listdir(tmp_path / "out") == []  # neither the export nor its temporary directory
    # An earlier export in the way stays as it was.
    previous = shutil.copytree(encoder_export[1], tmp_path / "previous")
    before = sorted(os.listdir(previous))
    with pytest.raises(UserError, match="differ by up to"):
        export(previous, encoder_export[0], parity_data)
    assert sorted(os.listdir(previous)) == before and sorted(os.listdir(tmp_path)) == ["out", "previous"]


def test_default_out_dir_and_bad_settings():
    cfg = lambda model, kind="encoder": types.SimpleNamespace(model=model, kind=kind)  # noqa: E731
    assert export_onnx.default_out(cfg("runs/scifact-m/encoder/best")) == "runs/onnx/scifact-m-encoder-best"
    assert export_onnx.default_out(cfg("all-MiniLM-L6-v2", "reranker")) == "runs/onnx/all-MiniLM-L6-v2-reranker"
    for bad in ("--opset=13", "--kind=decoder", "--tolerance=-1"):
        with pytest.raises(ConfigError):
            export_onnx.main([bad])


def test_an_export_carries_a_model_card_that_says_how_to_run_it(encoder_export):
    _, out = encoder_export
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert card.startswith("---\nlibrary_name: sentence-transformers")
    assert "ONNX export (`model.onnx` and `model.int8.onnx` (int8)" in card and "--backend=onnx" in card
