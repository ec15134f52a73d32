"""Inference on export_onnx.py directories with onnxruntime: the bi-encoder and the reranker of
common/models.py, with the same methods and results, and no torch.

    from common.onnx_models import OnnxBiEncoder, OnnxCrossEncoder
    enc = OnnxBiEncoder.from_dir("runs/onnx/all-MiniLM-L6-v2-encoder")   # model.onnx
    emb = enc.encode(["how do I sort a dict"], kind="query")               # float32 [n, dim], in input order
    cross = OnnxCrossEncoder.from_dir("runs/onnx/reranker", quantized=True)  # model.int8.onnx
    run, seconds = cross.rerank(queries, first_stage_run, doc_texts, depth=100)

Tokenization uses the Rust `tokenizers` package on the exported tokenizer.json, not transformers:
importing transformers' AutoTokenizer imports torch. The padding and truncation settings that
transformers keeps outside tokenizer.json were recorded in onnx.json at export.
"""
import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from common import fusion
from common.metrics import rerank_run
from common.run import UserError

FP32_FILE, INT8_FILE, META_FILE, TOKENIZER_FILE = "model.onnx", "model.int8.onnx", "onnx.json", "tokenizer.json"
# What a tokenizer can give, by the names transformers (and so the graph's inputs) use.
TOKENIZER_OUTPUTS = ("input_ids", "token_type_ids", "attention_mask")
REEXPORT = "re-export the model with export_onnx.py, which writes the graph and its tokenizer together"


def vocab_digest(tokenizer):
    """sha1 of a tokenizers.Tokenizer's vocabulary: the same for any tokenizer.json that maps text to
    the same ids, different for a swapped one, even of the same size."""
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items())
    return hashlib.sha1(json.dumps(vocab).encode()).hexdigest()


def providers():
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu), else the CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); {REEXPORT}") from None


class _OnnxModel:
    """An export directory's graph, tokenizer and metadata, checked against each other at load."""

    kind = ""  # "encoder" or "reranker", as export_onnx.py's --kind

    def __init__(self, path, quantized=False, threads=0):
        self.path = path
        meta = _read_json(os.path.join(path, META_FILE))
        if meta is None:
            raise UserError(f"{path}: no {META_FILE}, so not a directory written by export_onnx.py; export one with "
                            f"`python export_onnx.py --kind={self.kind} --model=<model> --out={path}`")
        if meta.get("kind") != self.kind:
            raise UserError(f"{path}: an export of kind={meta.get('kind')}, not kind={self.kind}; pass one made with "
                            f"export_onnx.py --kind={self.kind}")
        missing = [k for k in ("inputs", "tokenizer", "dim" if self.kind == "encoder" else "max_positions")
                   if k not in meta]
        if missing:
            raise UserError(f"{os.path.join(path, META_FILE)}: lacks {', '.join(missing)}; {REEXPORT}")
        self.meta, self.file = meta, os.path.join(path, INT8_FILE if quantized else FP32_FILE)
        if not os.path.isfile(self.file):
            fix = "export with --quantize=true for the int8 model" if quantized else REEXPORT
            raise UserError(f"{self.file}: not found; {fix}")
        self.tokenizer, self._truncating = self._load_tokenizer(), {}
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads  # 0: onnxruntime's own choice, one per physical core
            self.session = ort.InferenceSession(self.file, options, providers=providers())
        except Exception as e:  # onnxruntime's errors (bad protobuf, invalid graph) share no useful base class
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"{self.file}: onnxruntime cannot load it ({reason}); {REEXPORT}") from None
        self.input_names = self._check_inputs()
        self.output_shape = self.session.get_outputs()[0].shape

    def _load_tokenizer(self):
        file, saved = os.path.join(self.path, TOKENIZER_FILE), self.meta["tokenizer"]
        try:
            tokenizer = Tokenizer.from_file(file)
        except Exception as e:  # a missing file and a bad one alike: tokenizers raises plain Exceptions
            raise UserError(f"{file}: cannot be read by tokenizers ({str(e)[:200]}); {REEXPORT}") from None
        # Ids from another vocabulary would run without error and give wrong embeddings.
        if vocab_digest(tokenizer) != saved["vocab_sha1"]:
            raise UserError(f"{file}: not the tokenizer {self.file} was exported with (its vocabulary differs); "
                            f"{REEXPORT}")
        tokenizer.enable_padding(direction=saved["padding_side"], pad_id=saved["pad_id"],
                                 pad_type_id=saved["pad_type_id"], pad_token=saved["pad_token"])
        return tokenizer

    def _check_inputs(self):
        """The graph's input names, when the tokenizer gives every one of them (as int64) and, for the
        reranker, the graph takes everything the tokenizer gives (a pair's segment ids matter)."""
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        gives = self.meta["tokenizer"]["inputs"]
        bad = ([n for n in names if n not in gives or n not in TOKENIZER_OUTPUTS]
               + [i.name for i in inputs if i.type != "tensor(int64)"])
        unused = [n for n in gives if n not in names] if self.kind == "reranker" else []
        if bad or unused or names != self.meta["inputs"] or not {"input_ids", "attention_mask"} <= set(names):
            raise UserError(f"{self.file}: the graph's inputs ({', '.join(names)}) do not match its tokenizer's "
                            f"outputs ({', '.join(gives)}) and {META_FILE} ({', '.join(self.meta['inputs'])}); "
                            f"{REEXPORT}")
        return names

    def _tokenize(self, inputs, max_length, strategy):
        """{name: int64 [batch, longest]} of the tokenizer outputs, padded to the batch's longest."""
        key = (max_length, strategy)
        if key not in self._truncating:  # a copy per setting: setting it in place would race between threads
            tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
            tokenizer.enable_truncation(max_length, strategy=strategy,
                                        direction=self.meta["tokenizer"]["truncation_side"])
            self._truncating[key] = tokenizer
        encodings = self._truncating[key].encode_batch(inputs)
        arrays = {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings],
                  "attention_mask": [e.attention_mask for e in encodings]}
        return {name: np.array(arrays[name], dtype=np.int64) for name in self.meta["tokenizer"]["inputs"]}

    def _run(self, batch):
        return self.session.run(None, {name: batch[name] for name in self.input_names})[0]

    # torch modules' methods, so callers can treat both backends alike
    def eval(self):
        return self

    def to(self, device):
        return self


class OnnxBiEncoder(_OnnxModel):
    """BiEncoder's encode(), with pooling and normalisation inside the graph."""

    kind = "encoder"

    def __init__(self, path, quantized=False, threads=0, query_prefix=None, passage_prefix=None,
                 max_query_length=None, max_passage_length=None):
        super().__init__(path, quantized, threads)
        settings = _read_json(os.path.join(path, "biencoder.json"))
        if settings is None:
            raise UserError(f"{path}: biencoder.json not found; {REEXPORT}")
        overrides = dict(query_prefix=query_prefix, passage_prefix=passage_prefix, max_query_length=max_query_length,
                         max_passage_length=max_passage_length)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        self.pooling, self.normalize = settings["pooling"], settings["normalize"]
        self.prefix = {"query": settings["query_prefix"], "passage": settings["passage_prefix"]}
        self.max_length = {"query": settings["max_query_length"], "passage": settings["max_passage_length"]}
        if self.output_shape[-1] != self.meta["dim"]:
            raise UserError(f"{self.file}: the graph outputs {self.output_shape[-1]}-d vectors but {META_FILE} says "
                            f"{self.meta['dim']}; {REEXPORT}")

    @classmethod
    def from_dir(cls, path, quantized=False, threads=0, **overrides):
        """An export_onnx.py --kind=encoder directory; quantized: its model.int8.onnx; threads: onnxruntime's
        intra-op threads (0: its default). overrides: prefixes and max lengths (None keeps the exported
        value); pooling and normalisation are inside the graph."""
        return cls(path, quantized, threads, **overrides)

    @property
    def dim(self):
        return self.meta["dim"]

    def precision(self):
        return "onnx"  # the weights file (fp32 or int8) is in the cache key already

    def settings(self):
        return dict(pooling=self.pooling, normalize=self.normalize, query_prefix=self.prefix["query"],
                    passage_prefix=self.prefix["passage"], max_query_length=self.max_length["query"],
                    max_passage_length=self.max_length["passage"])

    def tokenize(self, texts, kind):
        """Dynamic padding, as BiEncoder.tokenize, as numpy int64 arrays."""
        prefix = self.prefix[kind]
        return self._tokenize([prefix + t for t in texts], self.max_length[kind], "longest_first")

    def encode(self, texts, kind="passage", batch_size=64, show_progress=None, sort_by_length=True):
        """Embed texts as float32 numpy, in input order; length-sorted batches as BiEncoder.encode."""
        order = np.argsort([-len(t) for t in texts], kind="stable") if sort_by_length else np.arange(len(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if show_progress is None:
            show_progress = len(texts) >= 2000
        for start in tqdm(range(0, len(texts), batch_size), desc=f"encode {kind}s", unit="batch",
                          disable=not show_progress):
            idx = order[start:start + batch_size]
            out[idx] = self._run(self.tokenize([texts[i] for i in idx], kind))
        return out


class OnnxCrossEncoder(_OnnxModel):
    """CrossEncoder's score() and rerank(): one logit per (query, passage) pair."""

    kind = "reranker"

    def __init__(self, path, quantized=False, threads=0, max_length=None):
        super().__init__(path, quantized, threads)
        saved = _read_json(os.path.join(path, "crossencoder.json"))
        if saved is None:
            raise UserError(f"{path}: crossencoder.json not found; {REEXPORT}")
        limit = self.meta["max_positions"]
        self.max_length = min(max_length or saved["max_length"], limit)
        self.fusion = fusion.load(path)  # how its scores mix with a first stage's, chosen on val
        if len(self.output_shape) != 1:
            raise UserError(f"{self.file}: the graph outputs shape {self.output_shape}, not one logit per pair; "
                            f"{REEXPORT}")

    @classmethod
    def from_dir(cls, path, quantized=False, threads=0, max_length=None):
        """An export_onnx.py --kind=reranker directory; quantized: its model.int8.onnx; threads: as
        OnnxBiEncoder's; max_length: tokens per pair (None: the length it was trained at, at most 512)."""
        return cls(path, quantized, threads, max_length)

    def tokenize(self, queries, passages):
        # The longer text first, as CrossEncoder.tokenize.
        return self._tokenize(list(zip(queries, passages)), self.max_length, "longest_first")

    def score(self, queries, passages, batch_size=32):
        """Relevance logits of (queries[i], passages[i]) as float32 numpy, in input order."""
        order = np.argsort([-len(q) - len(p) for q, p in zip(queries, passages)], kind="stable")
        out = np.empty(len(order), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = self._run(self.tokenize([queries[i] for i in idx], [passages[i] for i in idx]))
        return out

    def rerank(self, queries, run, doc_texts, depth=100, batch_size=32):
        """(reranked run, seconds per query): common.metrics.rerank_run with this model's scores."""
        return rerank_run(self.score, queries, run, doc_texts, depth, batch_size)
