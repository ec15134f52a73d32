"""Export the bi-encoder or the reranker to ONNX, for inference without torch (common/onnx_models.py).

The encoder graph maps token ids to the pooled embedding, normalised if the model normalises
(pooling inside the graph: its output is BiEncoder.forward's); the reranker graph maps a tokenized
(query, passage) pair to one logit. Batch and sequence axes are dynamic. Before the directory is put
in place, the graph is run by onnxruntime, through the same tokenizer.json and code that inference
uses, on real text (the queries and passages of `data`, in padded batches) and compared with
PyTorch: a max abs difference above `tolerance` fails the export and leaves nothing behind. With
`quantize`, model.int8.onnx is written too (dynamic int8 quantisation) and its agreement reported.

    # CPU: a fine-tuned encoder, and its int8 version
    python export_onnx.py --model=runs/scifact-all-MiniLM-L6-v2/encoder/best --quantize=true --data=data/scifact
    # the reranker, into a chosen directory
    python export_onnx.py --kind=reranker --model=runs/scifact-all-MiniLM-L6-v2/reranker/best --out=runs/onnx/reranker
    # then, with no torch: evaluate.py, build_index.py and search.py take --backend=onnx (or onnx-int8)
    python evaluate.py --data=data/scifact --backend=onnx --model=runs/onnx/scifact-all-MiniLM-L6-v2-encoder-best

Export is one CPU process of a few seconds: torchrun adds nothing, and a GPU is not needed.

Export directory (default runs/onnx/<model name>-<kind>): model.onnx, model.int8.onnx (quantize),
tokenizer files, biencoder.json or crossencoder.json, onnx.json (inputs, dim, parity numbers,
versions), config.json, command.txt.
"""
import itertools
import json
import logging
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime
import torch
import transformers

from common import fusion, model_card
from common.config import ConfigError, check_choice, load_config
from common.data import doc_text, field, read_jsonl
from common.files import atomic_dir, write_json
from common.models import BiEncoder, CrossEncoder, ModelNotFound, pick_device, resolve_model
from common.onnx_models import (FP32_FILE, INT8_FILE, META_FILE, OnnxBiEncoder, OnnxCrossEncoder, TOKENIZER_FILE,
                                TOKENIZER_OUTPUTS, vocab_digest)
from common.run import UserError, cli, start_run, warn

DEFAULTS = dict(
    # model
    model="all-MiniLM-L6-v2",  # a directory, hub name or all-MiniLM-L6-v2 (kind=reranker: a cross-encoder)
    kind="encoder",  # encoder (text -> embedding) | reranker (query, passage -> logit)
    # export
    out="",  # export directory; "" = runs/onnx/<model name>-<kind>
    opset=17,  # 14-20; 17 is the first with LayerNormalization as one op
    quantize=False,  # also write model.int8.onnx: int8 weights, activations quantised on the fly; a quarter the size
    # parity with PyTorch, on real text
    data="data/python-source",  # a BEIR directory: its first queries and passages; built-in sentences if absent
    parity_texts=64,  # queries and as many passages, embedded (encoder) or each paired with two queries (reranker)
    tolerance=1e-4,  # fp32: the largest abs difference of an embedding value or logit; above it the export fails
    batch_size=16,  # several texts of different lengths per batch, so padding is checked too
    device="cpu",  # cpu | cuda: where PyTorch computes the reference; the export itself runs on the CPU
)
OPSETS = range(14, 21)  # 14: the first with scaled_dot_product_attention; 20: the TorchScript exporter's last
EXAMPLE = ["an example", "a longer example, so that the batch is padded"]
# Parity text when `data` is absent: varied lengths, one longer than a short max_length.
BUILTIN_QUERIES = ["how to sort a list", "what is a hash table", "read a file line by line",
                   "parse a date string in python"]
BUILTIN_PASSAGES = [
    "Merge sort splits a list in halves, sorts each half and merges the sorted halves.",
    "A hash table maps keys to buckets with a hash function.",
    "Open a file with open(), iterate over it to read its lines, and close it; a with block closes it for you.",
    "datetime.strptime parses a date string by a format such as %Y-%m-%d and returns a datetime object, "
    "raising ValueError when the string does not match the format; dateutil's parser guesses the format "
    "instead, which is convenient for dates typed by people but slower and sometimes ambiguous.",
]


def default_out(cfg):
    """runs/onnx/<name>[-<kind>], the name being the model's path below runs/ (runs/a/encoder/best ->
    a-encoder-best) or else its last part, so exports of different models do not share a directory."""
    path = os.path.normpath(cfg.model)
    parts = path.split(os.sep)
    name = "-".join(parts[1:]) if parts[0] == "runs" and len(parts) > 1 else os.path.basename(path)
    return os.path.join("runs", "onnx", name if cfg.kind in name.split("-") else f"{name}-{cfg.kind}")


def check_config(cfg):
    check_choice(cfg, "kind", ("encoder", "reranker"))
    check_choice(cfg, "device", ("cpu", "cuda"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device here; the export runs on the CPU anyway (device=cpu)")
    if cfg.opset not in OPSETS:
        raise ConfigError(f"opset={cfg.opset}: choose {OPSETS.start} to {OPSETS.stop - 1}")
    if cfg.tolerance < 0 or cfg.parity_texts < 1 or cfg.batch_size < 1:
        raise ConfigError("tolerance must be >= 0, parity_texts and batch_size >= 1")


def load_model(cfg):
    """The PyTorch model on the CPU in fp32 (a checkpoint saved in bf16 loads as bf16), with plain
    attention: traced SDPA brings masking ops (Where, IsNaN) that cost onnxruntime more than they
    save (bench/results/onnx_speed-cpu.md)."""
    if cfg.kind == "encoder":
        model = BiEncoder.from_pretrained(cfg.model).float().eval()
    else:
        try:
            model = CrossEncoder.from_pretrained(cfg.model).float().eval()
        except ModelNotFound as e:
            raise ModelNotFound(f"model={cfg.model}: {e.reason}", "pass a cross-encoder directory (e.g. "
                                "runs/<dataset>-<model>/reranker/best) or hub name") from None
    try:
        model.model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        pass  # a model without a choice of attention exports as it is; parity is checked either way
    return model


def first_texts(path, n, make):
    """The first n non-empty texts of a JSONL file, make(record, line number) giving each text."""
    texts = (make(obj, lineno) for lineno, obj in read_jsonl(path))
    return list(itertools.islice((t for t in texts if t.strip()), n))


def parity_inputs(cfg):
    """(queries, passages) to compare PyTorch and ONNX on: the first of `data`, else the built-in ones."""
    if not os.path.isdir(cfg.data):
        warn(f"data={cfg.data} not found: checking parity on {len(BUILTIN_QUERIES) + len(BUILTIN_PASSAGES)} "
             "built-in sentences; pass --data=<BEIR directory> to check on your own text")
        return BUILTIN_QUERIES, BUILTIN_PASSAGES
    queries_file, corpus_file = os.path.join(cfg.data, "queries.jsonl"), os.path.join(cfg.data, "corpus.jsonl")
    queries = first_texts(queries_file, cfg.parity_texts, lambda o, n: field(o, "text", queries_file, n))
    passages = first_texts(corpus_file, cfg.parity_texts, lambda o, n: doc_text(
        {"title": field(o, "title", corpus_file, n, required=False), "text": field(o, "text", corpus_file, n)}))
    if not passages:
        raise UserError(f"{cfg.data}: no passages to check parity on; pass another --data")
    if not queries:  # a folder of documents without questions: its passages, and queries of our own
        queries = BUILTIN_QUERIES
    return queries, passages


class PairLogits(torch.nn.Module):
    """CrossEncoder.forward with positional inputs, which is how the exporter passes them."""

    def __init__(self, cross, names):
        super().__init__()
        self.cross, self.names = cross, names

    def forward(self, *inputs):
        return self.cross(**dict(zip(self.names, inputs)))


def export_graph(model, cfg, file):
    """Write the graph; returns (input names, output name)."""
    if cfg.kind == "encoder":
        # BiEncoder.encode feeds these two only; BERT's token_type_ids default to zeros.
        batch = model.tokenize(EXAMPLE, "passage")
        names, output, module = ["input_ids", "attention_mask"], "sentence_embedding", model
    else:
        batch = model.tokenize(EXAMPLE, list(reversed(EXAMPLE)))
        names, output = list(batch.keys()), "logits"
        module = PairLogits(model, names)
    unknown = [n for n in batch.keys() if n not in TOKENIZER_OUTPUTS]
    if unknown:
        raise UserError(f"model={cfg.model}: its tokenizer gives {', '.join(unknown)}, which ONNX inference does not "
                        f"feed (it feeds {', '.join(TOKENIZER_OUTPUTS)})")
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[output] = {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated (why it is used: requirements.txt), and
        # tracing warns about the Python bools it freezes (transformers' mask shortcuts, which it does not
        # take while tracing). What shows the graph right is the parity check, on other batch sizes and
        # lengths than this example.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(batch[n] for n in names), file, dynamo=False, input_names=names,
                          output_names=[output], dynamic_axes=axes, opset_version=cfg.opset)
    return names, output


def tokenizer_meta(cfg, model, tmp):
    """What transformers applies outside tokenizer.json, for the torch-free tokenizer to do the same."""
    from tokenizers import Tokenizer

    tok = model.tokenizer
    if not os.path.isfile(os.path.join(tmp, TOKENIZER_FILE)):
        raise UserError(f"model={cfg.model}: its tokenizer wrote no {TOKENIZER_FILE} (a slow, Python-only tokenizer); "
                        "ONNX inference needs a fast one")
    gives = list(tok(["a"], ["b"]).keys()) if isinstance(model, CrossEncoder) else list(tok(["a"]).keys())
    return dict(inputs=gives, pad_token=tok.pad_token, pad_id=tok.pad_token_id, pad_type_id=tok.pad_token_type_id,
                padding_side=tok.padding_side, truncation_side=tok.truncation_side,
                vocab_sha1=vocab_digest(Tokenizer.from_file(os.path.join(tmp, TOKENIZER_FILE))))


def write_export(model, cfg, tmp):
    """Graph, tokenizer and settings into tmp; returns the onnx.json metadata."""
    names, output = export_graph(model, cfg, os.path.join(tmp, FP32_FILE))
    model.tokenizer.save_pretrained(tmp)
    if cfg.kind == "encoder":
        write_json(os.path.join(tmp, "biencoder.json"), model.settings())
    else:
        write_json(os.path.join(tmp, "crossencoder.json"), {"max_length": model.max_length})
        if model.fusion != fusion.RERANK_ONLY:  # how it mixes with its first stage, chosen on val
            fusion.save(tmp, model.fusion)
    path = resolve_model(cfg.model)
    meta = dict(kind=cfg.kind, model=cfg.model, model_path=os.path.abspath(path) if os.path.isdir(path) else path,
                exporter="torchscript", opset=cfg.opset, inputs=names, output=output,
                tokenizer=tokenizer_meta(cfg, model, tmp),
                versions={"torch": torch.__version__, "transformers": transformers.__version__,
                          "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__})
    if cfg.kind == "encoder":
        meta["dim"] = model.dim
    else:
        meta["max_positions"] = min(512, getattr(model.model.config, "max_position_embeddings", 512))
    write_json(os.path.join(tmp, META_FILE), meta)
    return meta


def outputs(model, inputs, batch_size):
    """The embeddings (queries then passages) or the logits of (query, passage) pairs, as float32 numpy;
    PyTorch's in fp32, the precision of the graph (auto may be bf16 on this machine)."""
    queries, passages = inputs
    fp32 = {} if isinstance(model, (OnnxBiEncoder, OnnxCrossEncoder)) else {"dtype": "fp32"}
    if isinstance(model, (BiEncoder, OnnxBiEncoder)):
        return np.concatenate([model.encode(queries, "query", batch_size, **fp32),
                               model.encode(passages, "passage", batch_size, **fp32)])
    # Each passage with two queries, so each query is scored against several passages.
    paired = [(queries[(i + shift) % len(queries)], p) for i, p in enumerate(passages) for shift in (0, 1)]
    return model.score([q for q, _ in paired], [p for _, p in paired], batch_size, **fp32)


def agreement(cfg, reference, got, inputs):
    """int8 against PyTorch: max abs diff, and what ranking sees: the cosine of each embedding and how
    often a query's nearest passage is the same (encoder), or the rank correlation of logits (reranker)."""
    from scipy.stats import spearmanr

    out = {"max_abs_diff": float(np.abs(reference - got).max())}
    if cfg.kind == "encoder":
        cos = (reference * got).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
        n = len(inputs[0])
        top = lambda emb: (emb[:n] @ emb[n:].T).argmax(1)  # noqa: E731
        out.update(cosine_min=float(cos.min()), cosine_mean=float(cos.mean()),
                   top1_agreement=float((top(reference) == top(got)).mean()))
    else:
        out["spearman"] = float(spearmanr(reference, got).statistic) if len(got) > 1 else 1.0
    return out


def quantize(tmp):
    """model.int8.onnx: int8 weights, activations quantised per batch at run time (no calibration data).

    One scale per output channel (per_channel) is what keeps the embeddings close: all-MiniLM-L6-v2 on
    500 SciFact passages kept a mean cosine of 0.994 to fp32 (0.937 with one scale per tensor), and 100
    queries kept 0.90 of their top-10 passages (0.78). 7-bit weights (reduce_range, advised for CPUs
    without VNNI) changed nothing with per_channel on an AVX2 CPU, and without it fell to 0.76 and 0.60.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Its advice to pre-process first fails on these graphs (incomplete symbolic shape inference), and
    # it logs through the root logger, whose first use would install a stderr handler for good.
    root, quiet = logging.getLogger(), logging.NullHandler()
    root.addHandler(quiet)
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(os.path.join(tmp, FP32_FILE), os.path.join(tmp, INT8_FILE), weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=False)
    finally:
        logging.disable(logging.NOTSET)
        root.removeHandler(quiet)


def check_parity(cfg, model, tmp, inputs, meta):
    """Compare the export with PyTorch; fp32 beyond tolerance raises, int8 is reported."""
    loader = OnnxBiEncoder if cfg.kind == "encoder" else OnnxCrossEncoder
    reference = outputs(model.to(pick_device(cfg.device)), inputs, cfg.batch_size)
    diff = float(np.abs(reference - outputs(loader.from_dir(tmp), inputs, cfg.batch_size)).max())
    what = f"{len(reference)} {'texts' if cfg.kind == 'encoder' else '(query, passage) pairs'}"
    meta["parity"] = {"on": what, "data": cfg.data if os.path.isdir(cfg.data) else "built-in sentences",
                      "tolerance": cfg.tolerance, "fp32": {"max_abs_diff": diff}}
    if not diff <= cfg.tolerance:  # not `>`: a NaN fails too
        raise UserError(f"ONNX and PyTorch differ by up to {diff:.3g} on {what}, more than tolerance="
                        f"{cfg.tolerance:g}; {cfg.out} was left as it was")
    if cfg.quantize:
        quantize(tmp)
        meta["parity"]["int8"] = agreement(cfg, reference, outputs(loader.from_dir(tmp, quantized=True), inputs,
                                                                   cfg.batch_size), inputs)


def summary(out, meta):
    lines = [f"ONNX {meta['kind']} -> {out}"]
    for name in sorted(os.listdir(out)):
        if name.endswith(".onnx"):
            lines.append(f"  {name:<16} {os.path.getsize(os.path.join(out, name)) / 2**20:8.1f} MB")
    parity = meta["parity"]
    lines.append(f"parity with PyTorch on {parity['on']} ({parity['data']}): fp32 max abs diff "
                 f"{parity['fp32']['max_abs_diff']:.2e} (tolerance {parity['tolerance']:g})")
    if "int8" in parity:
        lines.append("int8: " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in parity["int8"].items()))
    return "\n".join(lines)


def card(cfg, meta):
    """README.md of the export: the card of the model it came from, its numbers from that model's run
    (the metrics.json beside a trainer's best/), and how to run the ONNX files."""
    run_dir = os.path.dirname(os.path.normpath(cfg.model))
    config, summary = {"model": cfg.model}, {}
    for name in ("config.json", "metrics.json"):
        try:
            with open(os.path.join(run_dir, name), encoding="utf-8") as f:
                (config if name == "config.json" else summary).update(json.load(f))
        except (OSError, ValueError):
            pass
    files = f"`{FP32_FILE}`" + (f" and `{INT8_FILE}` (int8)" if cfg.quantize else "")
    kind = "bi-encoder" if cfg.kind == "encoder" else "cross-encoder"
    test = summary.get("test")
    return model_card.render(kind, config, val=summary.get("val"), test=test, step=summary.get("best_step"),
                             steps=summary.get("steps"), commit=model_card.run_commit(run_dir) if summary else None,
                             trained=bool(summary),
                             note=f"This directory is its ONNX export ({files}; parity with PyTorch checked, "
                                  f"`{META_FILE}`): `evaluate.py`, `build_index.py` and `search.py` run it "
                                  "with `--backend=onnx` (or `onnx-int8`), without torch.")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    check_config(cfg)
    cfg.out = cfg.out or default_out(cfg)
    model = load_model(cfg)  # before anything is written: a model that does not load fails at once
    inputs = parity_inputs(cfg)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    except OSError as e:
        raise UserError(f"{cfg.out}: cannot create its parent directory ({e.strerror}); pass --out=DIR") from None
    with atomic_dir(cfg.out) as tmp:
        meta = write_export(model, cfg, tmp)
        check_parity(cfg, model, tmp, inputs, meta)
        write_json(os.path.join(tmp, META_FILE), meta)
        start_run(tmp, cfg, argv)
        model_card.write(tmp, card(cfg, meta))
    print(summary(cfg.out, meta))
    return 0


if __name__ == "__main__":
    cli(main)
