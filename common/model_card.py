"""A saved model's README.md, in the Hugging Face / sentence-transformers convention: YAML metadata,
then what the model is, the recipe (the run's resolved config), its val and test metrics, and how to
load it. Every number comes from the run that made it: the trainer's own best-so-far and test
metrics, or (export_onnx.py) the metrics.json of the run beside the exported model."""
import json
import os

from common.files import atomic_open
from common.run import git_commit

FILE = "README.md"
KINDS = {  # kind -> (library_name, pipeline_tag, tags)
    "bi-encoder": ("sentence-transformers", "sentence-similarity", ["sentence-transformers", "feature-extraction",
                                                                    "dense-retrieval"]),
    "cross-encoder": ("transformers", "text-ranking", ["cross-encoder", "reranker"]),
}
RECIPE = ("model", "data", "train_file", "loss", "temperature", "symmetric", "hard_negatives", "negatives",
          "batch_size", "lr", "epochs", "max_steps", "max_query_length", "max_passage_length", "max_length",
          "lora_r", "lora_alpha", "lora_targets", "matryoshka_dims", "matryoshka_rotation", "seed")
SHOWN = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def run_commit(run_dir):
    """The commit a run started from (the `git` line of its command.txt), else this checkout's."""
    try:
        with open(os.path.join(run_dir, "command.txt"), encoding="utf-8") as f:
            return next(line.split(" ", 1)[1].strip() for line in f if line.startswith("git "))
    except (OSError, StopIteration):
        return git_commit()


def render(kind, config, val=None, test=None, step=None, steps=None, note="", commit=None, trained=True):
    """The README.md text. `config`: the run's settings (vars(cfg)); `val`/`test`: {metric: value}
    (test: {column: {metric: value}} is fine too); `step` of `steps`: where val chose the model;
    `commit`: the code that trained it (None: this checkout's)."""
    library, pipeline, tags = KINDS[kind]
    dataset = os.path.basename(os.path.normpath(str(config.get("data", ""))))
    base = str(config.get("model", ""))
    lines = ["---", f"library_name: {library}", f"pipeline_tag: {pipeline}", f"base_model: {base}",
             "tags:", *(f"- {t}" for t in ["retrieval-finetune", *tags]),
             *(["datasets:", f"- {dataset}"] if dataset else []), "---", "",
             f"# {dataset}: a fine-tuned {kind}" if trained else f"# {base}: a {kind}", "",
             f"Fine-tuned from `{base}` on `{config.get('data', '')}` by retrieval-finetune's "
             f"`{'train_encoder.py' if kind == 'bi-encoder' else 'train_reranker.py'}` (commit {commit or git_commit()})."
             if trained else f"`{base}` as it is: no training run of this project beside it."]
    if config.get("lora_r"):
        merged = config.get("lora_save", "merged") == "merged"
        lines.append(f"LoRA r={config['lora_r']}, alpha={config.get('lora_alpha')} on {config.get('lora_targets')}; "
                     + ("saved merged into plain weights." if merged else
                        "saved as the frozen trunk plus `lora.safetensors` / `lora.json`, which only "
                        "retrieval-finetune's loaders apply (others read the trunk alone)."))
    if note:
        lines.append(note)
    lines += ["", "## Recipe", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{json.dumps(config[k])}` |" for k in RECIPE if k in config and config[k] not in ("", None, [])
              and (config.get("lora_r") or not k.startswith("lora_"))
              and (config.get("matryoshka_dims") or k != "matryoshka_rotation")]
    lines += ["", "Every setting of the run, `auto` ones resolved:", "", "<details><summary>config</summary>", "",
              "```json", json.dumps(config, indent=1, default=str), "```", "", "</details>", "", "## Results", ""]
    if val:
        where = f" at step {step}" + (f" of {steps}" if steps else "") if step is not None else ""
        widths = sorted((k for k in val if k.startswith("ndcg@10@")), key=lambda k: -int(k.rsplit("@", 1)[1]))
        lines.append(f"Val{where} (the model val chose): "
                     + ", ".join(f"{k} {val[k]:.4f}" for k in [*(k for k in SHOWN if k in val), *widths]))
    if test:
        flat = test if all(isinstance(v, (int, float)) for v in test.values()) else None
        if flat:
            lines.append("Test: " + ", ".join(f"{k} {flat[k]:.4f}" for k in SHOWN if k in flat))
        else:
            lines += [f"Test, {name}: " + ", ".join(f"{k} {m[k]:.4f}" for k in SHOWN if k in m)
                      for name, m in test.items()]
    if not val and not test:
        lines.append("Not evaluated (no val or test split).")
    lines += ["", "## Use", ""] + USAGE[kind]
    return "\n".join(lines) + "\n"


USAGE = {
    "bi-encoder": [
        "```python", "# retrieval-finetune", "from common.models import BiEncoder",
        'enc = BiEncoder.from_pretrained("<this directory>")',
        'q, d = enc.encode(["a question"], "query"), enc.encode(["a passage"], "passage")   # normalised: q @ d.T',
        "", "# sentence-transformers", "from sentence_transformers import SentenceTransformer",
        'model = SentenceTransformer("<this directory>"); model.encode(["a passage"])', "",
        "# transformers: mean pooling over the attention mask, then L2 normalisation",
        "from transformers import AutoModel, AutoTokenizer", "```", "",
        "Search a corpus with it: `build_index.py --model=<this directory>`, then `search.py` or "
        "`common.retrievers.Retriever`. An index built so may also remember what its data's train queries "
        "found (`memory.json`: their documents' vectors moved toward them, chosen on val); that memory "
        "lives in the index, and these weights hold none of it."],
    "cross-encoder": [
        "```python", "# retrieval-finetune", "from common.models import CrossEncoder",
        'cross = CrossEncoder.from_pretrained("<this directory>")',
        'cross.score(["a question"], ["a passage"])   # one relevance logit a pair', "",
        "# sentence-transformers", "from sentence_transformers import CrossEncoder",
        'CrossEncoder("<this directory>").predict([("a question", "a passage")])', "",
        "# transformers", "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "```", "",
        "`fusion.json` beside the weights says how much of this score to mix with its first stage's, and "
        "how deep (chosen on val); `evaluate.py --rerank=`, `search.py --rerank=` and `Retriever` apply it."],
}


def write(model_dir, text):
    with atomic_open(os.path.join(model_dir, FILE)) as f:
        f.write(text)
