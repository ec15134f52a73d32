"""Fine-tune a bi-encoder on the train split of a prepared dataset.

The defaults are the recipe measured best on val: each train query with 3 hard negatives drawn
every epoch from a mined file (mine_negatives.py), symmetric infonce at lr 5e-5, batch 32, 3
epochs (for a few dozen queries, as many as make min_steps). Sizes follow the data and the machine
(`auto`): steps (cut to `time_budget_min` on a CPU), how often and on how much val is evaluated. They are printed as a plan before the first step and
saved in config.json. Evaluates on val while it trains, keeps the best checkpoint (step 0, the
model it started from, included), and ends with a test evaluation of it on the full corpus. One
visible loop below: the once-in-a-while blocks (eval, re-mine, checkpoint) at its top, then a
single training step.

    # the recipe on BM25 negatives (`make mine` writes them; `make train-encoder` runs both)
    python train_encoder.py --train_file=runs/python-source-all-MiniLM-L6-v2/mine/train.jsonl
    # one GPU (bf16 autocast picked automatically), SciFact, a time budget for the whole run
    python train_encoder.py --data=data/scifact --train_file=<mined> --time_budget_min=10
    # in-batch negatives only (no mined file), a fixed number of steps
    python train_encoder.py --max_steps=200
    # several GPUs: the batch is split over ranks and every rank sees every rank's negatives
    torchrun --standalone --nproc_per_node=4 train_encoder.py --data=data/scifact --train_file=<mined>
    # a batch of 512 on a small GPU: GradCache accumulation keeps all 512 in one loss
    python train_encoder.py --batch_size=512 --micro_batch_size=64
    # LoRA: the trunk frozen, low-rank updates trained (best/ saved merged into plain weights)
    python train_encoder.py --train_file=<mined> --lora_r=8 --lora_alpha=16 --lr=5e-4
    # Matryoshka: the first 256, 128 and 64 values each an embedding (evaluate.py --dims, build_index.py --dim)
    python train_encoder.py --train_file=<mined> --matryoshka_dims=384,256,128,64
    # dense negatives, re-mined with this model every 50 steps (ANCE)
    python train_encoder.py --train_file=runs/scifact/mine-dense/train.jsonl --remine_every=50
    # continue an interrupted run (Ctrl-C or SIGTERM saves last/ before exiting; after a crash or a
    # kill, from the last checkpoint, or from previous/ if last/ is damaged)
    python train_encoder.py --train_file=<mined> --resume

Run directory (default runs/<dataset>-<model>/encoder): config.json (every setting, `auto` ones
resolved), command.txt, last/ (model, trainer state, checksums), previous/ (the checkpoint before
it), best/ (model), metrics.json, metrics.jsonl, training_progress.json, TensorBoard event files
(`make tensorboard`), test/ (run file and per-query metrics of best/ on test), negatives/step-N.jsonl
(what each re-mine found).
"""
import dataclasses
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from common import decision, fusion, losses, mining, sizing
from common import memory as mem
from common.batching import Example, batches_fill, false_negatives, make_batches, sample_groups
from common.config import Auto, ConfigError, ListOf, check_choice, check_range, load_config
from common.data import doc_text, generated, load_beir, load_val, read_training_file, sample_queries, splits
from common.metrics import cut_run, evaluate_run
from common.index import embeds_as_built, stored_embeddings, truncate
from common.models import BiEncoder, CrossEncoder, autocast, principal_axes
from common.report import write_results
from common.retrievers import BM25, corpus_bm25, dense_run
from common.run import UserError, cache_dir, cli, start_run, warn
from common.training import (Health, StopSignals, Throughput, any_rank, check_finite, check_lora, device_memory_mb,
                             finish, gather_with_grad, keep_freed_memory, log, log_train, log_val, lr_at, open_run,
                             optimizer_and_scaler, optimizer_step, peak_memory_mb, restore, resume, rng_state,
                             run_dtype, save_last, set_lr, set_rng_state, setup, setup_lora, summary, write_card)

DEFAULTS = dict(
    # data
    data="data/python-source",  # a directory prepared by prepare_data.py (BEIR layout)
    train_file="",  # a mined JSONL (mine_negatives.py) with negatives; "" = the train split's qrels, in-batch only
    hard_negatives=Auto(int),  # per query, drawn each epoch from the train_file's negatives; auto = 3 with a
    #                            train_file (BM25's beat in-batch alone on val, bench/results/negatives_sweep-h100.md),
    #                            or on a CPU the richest recipe that fits the budget (see AUTO), else 0
    generated_without_val="auto",  # a train split a language model wrote, and no val: auto = as the setting measured
    #                                across datasets says (common/decision.py NO_VAL_GENERATED) | train (to measure it)
    remine_every=0,  # steps; > 0 re-mines train_file's queries with the model being trained (ANCE),
    #                with the strategy and filters of the mine_negatives.py run that wrote it (its config.json)
    # model
    model="all-MiniLM-L6-v2",  # a local directory, a hub name, or a packaged short name
    pooling="",  # mean | cls | max; "" or 0 keeps what was saved with the model
    max_query_length=0,
    max_passage_length=Auto(int),  # 0 = what was saved with the model; auto = that on a GPU, on a CPU the
    #                                richest recipe that fits the budget (see AUTO)
    query_prefix="",
    passage_prefix="",
    attention_dropout=0.0,  # on the attention probabilities while training; 0 lets the fused attention kernel run
    #                        (faster, as good on val: bench/results/cpu-bf16.md); MiniLM was trained with 0.1
    gradient_checkpointing=False,  # recompute activations in backward: less memory, more time
    keep_freed_memory=True,  # CPU, Linux: malloc reuses freed activations instead of page-faulting them in
    #                         again every step (common.training.keep_freed_memory); a little more peak RSS
    # LoRA (common/lora.py): low-rank updates beside the trunk's linear layers, the trunk frozen
    lora_r=0,  # rank; 0 = full fine-tuning
    lora_alpha=16.0,  # the update is scaled by alpha / r
    lora_dropout=0.0,  # on the update's input; 0 skips a copy of every adapted layer's input: faster and
    #                  smaller, and as good on val (bench/results/lora-matryoshka-cpu.md)
    lora_targets=["query", "key", "value", "dense"],  # linear layers by name (or a regex of the dotted name)
    lora_save="merged",  # best/: merged into plain weights (every loader reads them) | adapter: trunk + lora.*
    # loss: several are summed with their weights, e.g. loss=[infonce, margin_mse] loss_weights=[1, 0.5]
    loss=["infonce"],  # infonce | margin_mse | contrastive | cosine
    loss_weights=[1.0],
    temperature=0.05,  # infonce and margin_mse (student scores are cosine / temperature); 0.05 is
    #                    sentence-transformers' scale 20
    symmetric=True,  # infonce: add the passage->query direction
    matryoshka_dims=ListOf(int),  # e.g. [384, 256, 128, 64]: the loss also at each truncated, renormalised dimension,
    #                      so that the first d values are an embedding of their own (an index can be smaller)
    matryoshka_weights=ListOf(float),  # one per dimension; [] = 1 each
    matryoshka_rotation="pca",  # pca: a fresh model's embeddings rotated onto the principal axes of the corpus'
    #                             before training, and best/ saved rotated onto those of the val docs' (cosines
    #                             unchanged, the first d values the most informative; a linear layer after
    #                             pooling, trained with the rest) | none
    contrastive_margin=0.5,
    # batching
    batch_size=Auto(int),  # examples per optimiser step over all ranks; every one is a negative for every
    #                        query. auto = 32, or 16 for a dataset too small for 32 (half its queries when fewer)
    micro_batch_size=0,  # examples per forward pass on a rank; 0 = all at once; less = GradCache
    length_bucketing=True,  # batches of similar length (less padding), in shuffled order
    false_negatives="auto",  # a document of the batch labelled relevant to another of its queries: exclude
    #                          (batches never hold one) | mask (batches hold them, masked out of that query's
    #                          loss) | auto = exclude, or mask where labels overlap too much for such batches
    #                          to take in half the queries an epoch
    token_cache=True,  # tokenise each text once per run, not once per epoch (memory: a few KB per text)
    # optimisation
    epochs=Auto(int),  # an epoch visits every train query once, with one of its positives; auto = 3, or for a
    #                    few dozen train queries (three epochs of them a handful of steps) as many as make min_steps
    min_steps=60,  # what auto epochs reach at least: a handful of steps barely moved the model where more gained
    #               on val (bench/results/small-data-cpu.md); 0 = three epochs, however few steps
    max_steps=Auto(int),  # auto = epochs of the data, or what fits time_budget_min
    time_budget_min=Auto(float),  # minutes for the steps and val evaluations; 0 = no limit; auto: see AUTO
    lr=5e-5,
    schedule="linear",  # linear | cosine | constant, after warmup
    warmup_ratio=0.1,
    weight_decay=0.01,
    max_grad_norm=1.0,  # 0 = no clipping
    dtype="auto",  # auto | fp32 | bf16 | fp16: auto is bf16 on a GPU or a CPU with native bf16, else fp32
    seed=42,
    device="auto",  # auto | cpu | cuda; under torchrun each rank takes its own GPU
    # evaluation, on rank 0
    eval_every=Auto(int),  # steps; 0 = only at the end. Step 0 is the model before training.
    wise_alphas=ListOf(float),  # WiSE-FT (Wortsman et al. 2022): after training, the best step's weights mixed
    #                   with the starting model's at each of these shares of the best's (e.g. [0.5]) are scored
    #                   on val as every step is; best/ becomes the mix only where it beats the best step beyond
    #                   noise (common.decision.select), the queries no memory can help guarded. [] = none
    bar="",  # a build_index.py directory of the model training starts from (`make pipeline`'s zero-shot index):
    #          val scores each step as that index serves (its memory and its mix with BM25), the step-0
    #          score is the bar, and training stops once the model cannot beat it beyond noise
    #          (common.decision.keep_training); "" = val scores dense retrieval alone, the steps run whole
    best_metric="ndcg@10",
    val_queries=Auto(int),  # val queries evaluated; 0 = all
    val_full_corpus=Auto(bool),  # score val against every doc, or (false) against the sub-corpus of
    val_docs_bm25=Auto(int),  # the BM25 top-n of each val query, plus
    val_docs_random=Auto(int),  # this many random docs, plus every val positive
    eval_batch_size=64,
    test_eval=True,  # evaluate best/ on the test split and the full corpus at the end
    # checkpoints and logging
    out="",  # run directory; "" = runs/<dataset>-<model>/encoder
    save_every=500,  # steps; 0 = only at the end and on Ctrl-C
    resume=False,  # continue from <out>/last
    log_every=10,
    tensorboard=True,
)
# What `auto` is on each machine. A CPU trains MiniLM two orders of magnitude slower than a GPU, so
# there the run is cut to a time budget and val is a sub-corpus; a GPU runs the recipe whole.
# `recipes` are (max_passage_length, hard_negatives) sizes, richest first (0: the model's own length):
# a run takes the first whose steps fit time_budget_min beside its val evaluations, measured on a
# batch of median length, or else the last with its steps cut (common.sizing.choose_recipe). On a
# CPU, val preferred longer passages to more steps or more negatives at equal minutes
# (bench/results/cpu-bf16.md). With the budget left `auto`, a dataset whose epochs take up to
# `whole_within_min` trains them whole: cutting a small dataset's last epoch saves a few minutes and
# costs val more than they are worth (bench/results/cpu-bf16.md); a larger one is cut to the budget.
AUTO = {
    "cpu": dict(batch=32, recipe_epochs=3, recipes=[(256, 3), (256, 1)], time_budget_min=8.0, whole_within_min=16.0,
                val_queries=200,
                val_docs_bm25=10, val_docs_random=500, full_corpus_docs=2_000, evals=4),
    "gpu": dict(batch=32, recipe_epochs=3, recipes=[(0, 3)], time_budget_min=0.0, whole_within_min=0.0,
                val_queries=2_000,
                val_docs_bm25=30, val_docs_random=10_000, full_corpus_docs=200_000, evals=11),
}
VAL_KS = (1, 3, 5, 10, 100)
MEMORY_SHARE = 0.75  # of the machine's memory (the GPU's on a GPU) that a chosen recipe's step may peak at
ROTATION_DOCS = 4096  # docs sampled for matryoshka_rotation: plenty to estimate a few hundred axes


def check_config(cfg, world):
    check_choice(cfg, "loss", losses.NAMES)
    check_choice(cfg, "schedule", ("linear", "cosine", "constant"))
    check_choice(cfg, "false_negatives", ("auto", "exclude", "mask"))
    check_choice(cfg, "generated_without_val", ("auto", "train"))
    check_choice(cfg, "dtype", ("auto", "fp32", "bf16", "fp16"))
    check_range(cfg, ["batch_size", "eval_batch_size", "log_every"], 1)
    check_range(cfg, ["micro_batch_size", "hard_negatives", "epochs", "min_steps", "max_steps", "weight_decay",
                      "max_grad_norm", "val_queries", "val_docs_bm25", "val_docs_random", "max_query_length",
                      "max_passage_length",
                      "loss_weights", "time_budget_min", "eval_every"], 0)
    check_range(cfg, ["lr", "temperature"], 0, above=True)
    check_range(cfg, "warmup_ratio", 0, 1)
    check_range(cfg, "attention_dropout", 0, 1)
    check_lora(cfg)
    check_range(cfg, "matryoshka_dims", 1)
    check_range(cfg, "matryoshka_weights", 0)
    check_choice(cfg, "matryoshka_rotation", ("pca", "none"))
    check_range(cfg, "wise_alphas", 0, 1)
    if cfg.wise_alphas and (cfg.lora_r or cfg.matryoshka_dims):
        raise ConfigError("wise_alphas mixes the whole model's weights with the starting model's: drop it with lora_r "
                          "or matryoshka_dims (their best/ is not the starting model's shape of weights)")
    if cfg.matryoshka_weights and len(cfg.matryoshka_weights) != len(cfg.matryoshka_dims):
        raise ConfigError(f"matryoshka_dims={cfg.matryoshka_dims} needs one weight each, got "
                          f"matryoshka_weights={cfg.matryoshka_weights} (or none: 1 each)")
    if len(cfg.loss_weights) != len(cfg.loss):
        raise ConfigError(f"loss={cfg.loss} needs one weight each, got loss_weights={cfg.loss_weights}")
    if cfg.batch_size != "auto":
        sizing.check_batch(cfg, world, "examples")
    if cfg.max_steps == 0 and cfg.epochs == 0:
        raise ConfigError("set epochs or max_steps above 0")
    wants_negatives = cfg.hard_negatives == "auto" or cfg.hard_negatives > 0
    if "margin_mse" in cfg.loss and (not cfg.train_file or not wants_negatives):
        raise ConfigError("loss margin_mse needs teacher scores and negatives: pass --train_file=<mined file "
                          "with teacher scores> and --hard_negatives=1 or more")
    if cfg.hard_negatives not in ("auto", 0) and not cfg.train_file:
        raise ConfigError("hard_negatives needs --train_file=<mined file> (mine_negatives.py writes one)")
    if cfg.remine_every > 0 and (not cfg.train_file or not wants_negatives):
        raise ConfigError("remine_every needs --train_file=<a mine_negatives.py train.jsonl> and --hard_negatives=1 "
                          "or more: it refreshes the negatives that file holds")


def remine_settings(cfg):
    """The strategy and filters of the mine_negatives.py run that wrote train_file."""
    path = os.path.join(os.path.dirname(os.path.abspath(cfg.train_file)), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        settings = mining.settings_of(config)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: remine_every re-mines with the settings mine_negatives.py saved beside "
                        f"{cfg.train_file}, and this file {'is missing' if isinstance(e, OSError) else 'lacks ' + str(e)}; "
                        "mine with mine_negatives.py, or set remine_every=0") from None
    if not {"dense", "semi-hard"} & set(settings.strategy):
        raise UserError(f"{path}: strategy={settings.strategy} has no dense part, so re-mining with the model being "
                        "trained would change nothing; mine with strategy=dense (or a mix with it), or set remine_every=0")
    return settings, config.get("teacher") or ""


def with_negatives(examples, records):
    """The examples with each query's negatives (and teacher scores) taken from `records`. A query the
    re-mine found no negatives for keeps its old ones, so every group keeps its size."""
    by_qid = {r["qid"]: r for r in records}
    return [dataclasses.replace(ex, negatives=by_qid[ex.qid]["negatives"],
                                teacher={**ex.teacher, **by_qid[ex.qid]["teacher"]})
            if by_qid.get(ex.qid, {}).get("negatives") else ex for ex in examples]


def rebatch_rest(examples, batches, groups, position, cfg, seed):
    """The epoch's batches from `position` on, rebuilt around fresh negatives: the batch rules (no
    document relevant to another query of the batch) depend on the negatives a batch holds."""
    rest = [i for b in batches[position:] for i in b]
    subset = [examples[i] for i in rest]
    fresh = sample_groups(subset, cfg.hard_negatives, seed)
    groups = list(groups)
    for j, i in enumerate(rest):
        groups[i] = fresh[j]
    rebuilt = batches_of(cfg, subset, fresh, seed)
    return batches[:position] + [[rest[j] for j in b] for b in rebuilt], groups


def read_records(cfg, corpus, queries, qrels):
    """The training queries: from the mined file, or from the train split's qrels (no negatives)."""
    if cfg.train_file:
        return read_training_file(cfg.train_file, corpus)
    return [dict(qid=q, query=queries[q], positives=[d for d, g in row.items() if g >= 1], negatives=[], teacher={})
            for q, row in qrels.items()]


def load_examples(cfg, corpus, records):
    """One example per query (an epoch draws one of its positives); hard negatives and teacher scores
    from a mined file."""
    examples, no_negatives = [], 0
    for r in records:
        if not r["positives"]:
            continue
        if cfg.hard_negatives and not r["negatives"]:  # every group needs the same number of documents
            no_negatives += 1
            continue
        if "margin_mse" in cfg.loss:
            missing = [d for d in r["positives"] + r["negatives"] if d not in r["teacher"]]
            if missing or not r["negatives"]:
                raise UserError(f"{cfg.train_file}:{r['line']}: margin_mse needs teacher scores for the positives "
                                f"and every negative ({'no negatives' if not r['negatives'] else missing[0]}); "
                                "mine again with --teacher")
        examples.append(Example(r["qid"], r["query"], tuple(r["positives"]), r["negatives"], r["teacher"],
                                len(r["query"]) + len(doc_text(corpus[r["positives"][0]]))))
    if no_negatives:
        warn(f"{cfg.train_file}: {no_negatives} queries without negatives skipped (hard_negatives="
             f"{cfg.hard_negatives})")
    return examples


def resolve_sizes(cfg, table, records, corpus, val_queries, world):
    """The data-dependent `auto` settings (the step count comes later, from a measured step)."""
    has_negatives = bool(cfg.train_file) and any(r["negatives"] for r in records)
    if cfg.hard_negatives == "auto" and cfg.train_file and not has_negatives:
        warn(f"{cfg.train_file}: no query has mined negatives; training on in-batch negatives only")
    no_negatives = {} if has_negatives else {"hard_negatives": 0}  # else the recipe decides (recipes())
    return sizing.resolve(cfg, table, **no_negatives, val_full_corpus=len(corpus) <= table["full_corpus_docs"],
                          val_queries=min(table["val_queries"], len(val_queries)) if val_queries else 0)


def recipes(cfg, table, model_length):
    """The (max_passage_length, hard_negatives) sizes the run chooses from, richest first: the machine's
    with what the user set in place of `auto`, and 0 read as the model's own length."""
    out = []
    for length, negatives in table["recipes"]:
        length = length if cfg.max_passage_length == "auto" else cfg.max_passage_length
        length = min(length, model_length) if length else model_length
        recipe = (length, negatives if cfg.hard_negatives == "auto" else cfg.hard_negatives)
        if recipe not in out:
            out.append(recipe)
    return out


def first_epoch(cfg, examples, negatives, seed):
    """(groups, batches) of an epoch: each example's documents drawn, then the batch order."""
    groups = sample_groups(examples, negatives, seed)
    return groups, batches_of(cfg, examples, groups, seed)


def batches_of(cfg, examples, groups, seed):
    """An epoch's batch order under the run's false_negatives rule (common/batching.py)."""
    return make_batches(examples, groups, cfg.batch_size, seed, cfg.length_bucketing,
                        exclusive=True if cfg.false_negatives == "exclude" else "queries")


def resolve_epochs(cfg, table, examples, negatives):
    """epochs, when auto: the table's, or for data so small that those take fewer than min_steps steps, as
    many as make min_steps (unless max_steps is given). Returns the plan's note when it raised them, else
    ""."""
    if cfg.epochs != "auto":
        return ""
    if cfg.max_steps != "auto":  # the steps are given: epochs only say how many that is
        cfg.epochs = table["recipe_epochs"]
        return ""
    steps_per_epoch = max(1, len(first_epoch(cfg, examples, negatives, cfg.seed)[1]))
    cfg.epochs = max(table["recipe_epochs"], math.ceil(cfg.min_steps / steps_per_epoch))
    if cfg.epochs == table["recipe_epochs"]:
        return ""
    three = table["recipe_epochs"]
    return (f"{three} epochs of {len(examples)} queries are {three * steps_per_epoch} steps: {cfg.epochs} epochs, "
            f"to reach min_steps={cfg.min_steps}")


def resolve_false_negatives(cfg, examples, negatives, where):
    """false_negatives=auto: exclude, unless batches that hold no in-batch false negative would take in
    fewer than half the queries an epoch (heavily overlapping labels): then mask, saying so. An epoch
    with no batch at all is one error, before any work."""
    groups = sample_groups(examples, negatives, cfg.seed)
    if cfg.false_negatives == "auto":
        fill, taken = batches_fill(examples, groups, cfg.batch_size, cfg.seed, cfg.length_bucketing)
        cfg.false_negatives = "exclude" if fill else "mask"
        if not fill:
            print(f"batches: {where}'s labels overlap so much that batches of {cfg.batch_size} holding no query's "
                  f"relevant document as another's negative take in {taken} of {len(examples)} queries an epoch: "
                  "batches mix them, and each query's other relevant documents are masked out of its loss "
                  "(false_negatives=mask)")
    if not batches_of(cfg, examples, groups, cfg.seed):
        raise UserError(f"{where}: {len(examples)} training queries ({len({ex.query for ex in examples})} distinct "
                        f"texts) make no batch of {cfg.batch_size}; pass a smaller --batch_size"
                        + (" or --false_negatives=mask" if cfg.false_negatives == "exclude" else ""))


def typical_batch(examples, batches):
    """The batch of median length (characters of its queries and positives) of an epoch's: what a step
    costs on average, where batches are bucketed by length."""
    by_length = sorted(batches, key=lambda b: sum(examples[i].length for i in b))
    return by_length[len(by_length) // 2]


def batch_tokens(encoder, corpus, examples, groups, batch, length):
    """Padded tokens of a batch's queries and documents at passage `length`: what a step's cost grows with."""
    def padded(texts, kind, most):
        rows = encoder.tokenizer([encoder.prefix[kind] + t for t in texts], truncation=True, max_length=most)
        return len(texts) * max(len(ids) for ids in rows["input_ids"])
    return (padded([examples[i].query for i in batch], "query", encoder.max_length["query"])
            + padded([doc_text(corpus[d]) for i in batch for d in groups[i]], "passage", length))


def build_encoder(cfg, checkpoint=None):
    auto = cfg.max_passage_length == "auto"  # set once the recipe is chosen
    overrides = dict(pooling=cfg.pooling or None, max_query_length=cfg.max_query_length or None,
                     max_passage_length=None if auto else cfg.max_passage_length or None, query_prefix=cfg.query_prefix or None,
                     passage_prefix=cfg.passage_prefix or None)
    if checkpoint:
        return BiEncoder.from_pretrained(checkpoint)
    return BiEncoder.from_pretrained(cfg.model, **overrides)


def rotate_to_corpus_axes(cfg, encoder, corpus, master):
    """Matryoshka's start: the embeddings rotated onto the principal axes of a sample of the corpus
    (the same sample on every rank; DDP starts from rank 0's weights anyway)."""
    t0 = time.time()
    doc_ids = random.Random(cfg.seed).sample(sorted(corpus), min(ROTATION_DOCS, len(corpus)))
    encoder.rotate(principal_axes(encoder.encode([doc_text(corpus[d]) for d in doc_ids], "passage",
                                                 batch_size=cfg.eval_batch_size)))
    if master:
        print(f"matryoshka: embeddings rotated onto the principal axes of {len(doc_ids):,} docs "
              f"({time.time() - t0:.0f}s)")


def val_corpus(cfg, corpus, queries, qrels):
    """Doc ids val is scored against: all of them, or every val positive plus the BM25 top-n of each
    val query (the hard part of the ranking) plus a random sample (the easy part)."""
    if cfg.val_full_corpus:
        return list(corpus)
    rng = random.Random(cfg.seed)
    keep = {d for row in qrels.values() for d, g in row.items() if g >= 1 and d in corpus}
    if cfg.val_docs_bm25 > 0:
        texts = (doc_text(d) for d in corpus.values())
        bm25 = corpus_bm25(list(corpus), texts, os.path.join(cfg.data, "corpus.jsonl"), cache_dir=cache_dir(cfg))
        for hits in bm25.search_many(list(queries.values()), cfg.val_docs_bm25):
            keep.update(d for d, _ in hits)
    rest = [d for d in corpus if d not in keep]
    keep.update(rng.sample(rest, min(cfg.val_docs_random, len(rest))))
    return [d for d in corpus if d in keep]


def evaluate_dense(encoder, corpus, doc_ids, queries, qrels, batch_size, depth=100, dims=(), rotate=False, bar=None,
                   doc_emb=None):
    """(mean metrics, per-query metrics, run, rotation) of dense retrieval, as evaluate.py computes
    them; with `bar` (load_bar's), of the first stage as the bar's index serves it: the docs moved by its
    memory (toward the remembered queries as this encoder embeds them) and mixed with its BM25, dense
    alone's nDCG@10 beside as "dense_ndcg@10". With `dims` (Matryoshka), also ndcg@10@<d>: the embeddings
    cut to their first d values, with `rotate` after a rotation onto the principal axes of these docs'
    (`rotation`, what best/ is saved with; else None). `doc_emb`: the docs' vectors when in hand (bar_vectors')."""
    if doc_emb is None:
        doc_emb = encoder.encode([doc_text(corpus[d]) for d in doc_ids], "passage", batch_size)
    qids = list(queries)
    q_emb = encoder.encode([queries[q] for q in qids], "query", batch_size)
    run = cut_run(dense_run(qids, q_emb, doc_ids, doc_emb, depth + 1), depth)
    mean, per_query = evaluate_run(qrels, run, VAL_KS)
    if bar is not None:
        served_emb = doc_emb
        if bar["memory"].on() and bar["memory"].strengths["dense"]:
            remembered = list(bar["memory"].queries)
            by_qid = dict(zip(remembered, encoder.encode([bar["memory"].queries[q] for q in remembered], "query",
                                                         batch_size)))
            served_emb = mem.edit(doc_emb, *mem.directions(bar["memory"], doc_ids, by_qid),
                                  bar["memory"].strengths["dense"])
        served = cut_run(dense_run(qids, q_emb, doc_ids, served_emb, depth + 1), depth) if served_emb is not doc_emb \
            else run
        run = fusion.hybrid(served, bar["bm25"], bar["choice"]) if bar["bm25"] else served
        dense_ndcg = mean["ndcg@10"]
        mean, per_query = evaluate_run(qrels, run, VAL_KS)
        mean["dense_ndcg@10"] = dense_ndcg
    rotation = principal_axes(doc_emb) if dims and rotate else None
    if rotation is not None:
        q_emb, doc_emb = q_emb @ rotation.T, doc_emb @ rotation.T
    for dim in (d for d in dims if d < encoder.dim):
        cut = dense_run(qids, truncate(q_emb, dim), doc_ids, truncate(doc_emb, dim), depth + 1)
        mean[f"ndcg@10@{dim}"] = evaluate_run(qrels, cut_run(cut, depth), (10,))[0]["ndcg@10"]
    return mean, per_query, run, rotation


def load_bar(cfg, corpus, queries, doc_ids):
    """What val serves as the bar's index (cfg.bar) does, over val's docs `doc_ids`: {"choice": its
    fusion.json, "memory": its memory at its strengths (the remembered docs among doc_ids), "bm25": each val
    query's top HYBRID_DEPTH of doc_ids by its BM25 (over the texts its memory expanded), or None where its
    mix has no BM25}."""
    choice = fusion.load(cfg.bar, fusion.DENSE_ONLY)
    saved, keep = mem.Memory.load(cfg.bar), set(doc_ids)
    found = {d: row for d, row in saved.found.items() if d in keep}
    memory = mem.Memory({q: saved.queries[q] for row in found.values() for q in row}, found,
                        {k: choice.get("memory", {}).get(k, mem.NONE[k]) for k in mem.NONE})
    bm25 = None
    if fusion.uses_bm25(choice):
        index = BM25.load(cfg.bar, list(corpus), os.path.join(cfg.data, "corpus.jsonl"))
        if len(doc_ids) == len(corpus):  # the whole corpus: BM25's own search
            hits = index.search_many(list(queries.values()), fusion.HYBRID_DEPTH)
            return {"choice": choice, "memory": memory, "bm25": {q: dict(h) for q, h in zip(queries, hits)}}
        position = {d: i for i, d in enumerate(index.doc_ids)}
        rows, bm25 = [position[d] for d in doc_ids], {}
        for q, text in queries.items():  # val's sub-corpus: each query's scores of those docs alone
            row = index.scores(text, rows)
            bm25[q] = {doc_ids[i]: float(row[i]) for i in np.argsort(-row, kind="stable")[:fusion.HYBRID_DEPTH]}
    return {"choice": choice, "memory": memory, "bm25": bm25}


def bar_vectors(cfg, encoder, corpus, doc_ids):
    """doc_ids' vectors as the bar's index keeps them (embeddings.npy, whole width) where `encoder` embeds as the
    bar's encoder does (step 0: the model training starts from, at the same precision), else None: what the
    step-0 evaluation need not encode again."""
    stored = stored_embeddings(cfg.bar, len(corpus), encoder)
    if stored is None or not embeds_as_built(cfg.bar, encoder):
        return None
    position = {d: i for i, d in enumerate(corpus)}
    return np.asarray(stored[[position[d] for d in doc_ids]], dtype=np.float32)


def wise_ft(cfg, device, corpus, doc_ids, queries, qrels, bar, best):
    """(the mix to serve or None, report): best/ mixed with the model training started from at each share in
    cfg.wise_alphas, scored on val as every step (evaluate_dense), weighed against best/ by
    common.decision.select at ENCODER_Z, the queries no memory can help guarded where some are remembered."""
    tuned = BiEncoder.from_pretrained(os.path.join(cfg.out, "best")).to(device)
    start = build_encoder(cfg).model.state_dict()
    tuned.encode_dtype = cfg.dtype
    values = lambda model: {q: m[cfg.best_metric] for q, m in evaluate_dense(  # noqa: E731
        model, corpus, doc_ids, queries, qrels, cfg.eval_batch_size, bar=bar)[1].items()}
    own = {k: v.detach().clone() for k, v in tuned.model.state_dict().items()}

    def mix(alpha):  # tuned's weights made (1 - alpha) start + alpha best/
        with torch.no_grad():
            for name, value in tuned.model.state_dict().items():
                if value.is_floating_point():
                    value.copy_((1 - alpha) * start[name].to(value.device) + alpha * own[name])
        return tuned

    base, mixes = values(tuned), {alpha: values(mix(alpha)) for alpha in sorted(cfg.wise_alphas)}
    remembered = mem.remembered_queries(bar["memory"].found, qrels) if bar else set()
    guard = [q for q in qrels if q not in remembered] if remembered else ()
    key, report = decision.select(qrels, base, mixes, decision.ENCODER_Z, cfg.best_metric, guard=guard)
    return (None if key is None else mix(key)), report


def describe_bar(cfg, bar):
    """The plan's line: what the bar serves and scores."""
    choice = bar["choice"]
    what = decision.describe_hybrid({k: v for k, v in choice.items() if k != "val"})
    score = f"{choice['val']['served']:.4f} on val as built" if "val" in choice else "no val score"
    return (f"bar: {cfg.bar} ({what}; {score}): val scores each step with its memory and mix, and training stops "
            "once the model cannot beat step 0 so scored beyond noise")


def save_best(cfg, encoder, rotation, best, total_steps):
    """best/ and its model card: the model followed by `rotation` when val made one; the model in
    training is left as it was."""
    kept = encoder.projection
    if rotation is not None:
        encoder.rotate(rotation)
    encoder.save(os.path.join(cfg.out, "best"))
    encoder.projection = kept
    write_card(os.path.join(cfg.out, "best"), "bi-encoder", cfg, best, total_steps)


# ---- the training step's parts: a reader of the loop can skip these
def tokenize_batch(cfg, encoder, corpus, batch, groups, rank, world, token_cache, device):
    """This rank's slice of the batch as [(queries, documents)] token tensors, one pair per
    micro-batch, and the number of real (unpadded) tokens in it."""
    local = cfg.batch_size // world
    start, stop = rank * local, (rank + 1) * local
    micro = cfg.micro_batch_size or local
    chunks, tokens = [], 0
    for s in range(start, stop, micro):
        e = min(s + micro, stop)
        q = encoder.tokenize([ex.query for ex in batch[s:e]], "query", token_cache)
        d = encoder.tokenize([doc_text(corpus[doc]) for g in groups[s:e] for doc in g], "passage", token_cache)
        tokens += int(q["attention_mask"].sum() + d["attention_mask"].sum())  # on the CPU: no GPU sync
        chunks.append((q.to(device), d.to(device)))
    return chunks, tokens


def embed(net, q, d, device, dtype):
    with autocast(device, dtype):
        return net(q["input_ids"], q["attention_mask"]).float(), net(d["input_ids"], d["attention_mask"]).float()


def batch_loss(cfg, q_local, d_local, batch, groups, rank, world):
    """(loss, its terms, all queries' and documents' embeddings) over the global batch; q_local and
    d_local are this rank's embeddings. With matryoshka_dims, the loss again at each dimension: the
    embeddings cut to their first `dim` values and renormalised (Kusupati et al. 2022)."""
    q_all, d_all = gather_with_grad(q_local, rank, world), gather_with_grad(d_local, rank, world)
    mask = in_batch_mask(cfg, batch, groups, q_all.device)
    parts, total = {}, 0.0
    dims = cfg.matryoshka_dims or [None]
    for dim, dim_weight in zip(dims, cfg.matryoshka_weights or [1.0] * len(dims)):
        q, d = (q_all, d_all) if dim is None else (F.normalize(q_all[:, :dim], dim=-1),
                                                   F.normalize(d_all[:, :dim], dim=-1))
        for name, weight in zip(cfg.loss, cfg.loss_weights):
            part = loss_term(cfg, name, q, d, batch, groups, mask)
            parts[name if dim is None else f"{name}@{dim}"] = part
            total = total + dim_weight * weight * part
    return total, parts, q_all.detach(), d_all.detach()


def in_batch_mask(cfg, batch, groups, device):
    """The batch's in-batch false negatives (common.batching.false_negatives) as a tensor, or None
    where there are none (false_negatives=exclude builds batches without them)."""
    if cfg.false_negatives != "mask":
        return None
    mask = false_negatives(batch, groups)
    return torch.from_numpy(mask).to(device) if mask.any() else None


def loss_term(cfg, name, q, d, batch, groups, mask=None):
    if name == "infonce":
        return losses.infonce(q, d, cfg.temperature, cfg.symmetric, mask)
    if name == "margin_mse":
        teacher = torch.tensor([[ex.teacher[doc] for doc in g] for ex, g in zip(batch, groups)], device=q.device)
        return losses.margin_mse(q, d, teacher, cfg.temperature)
    if name == "contrastive":
        return losses.contrastive(q, d, cfg.contrastive_margin, mask)
    return losses.cosine(q, d, mask=mask)


def forward_backward(cfg, model, encoder, chunks, batch, groups, scaler, rank, world, device, dtype):
    """The loss of the whole batch, its gradients accumulated in the encoder: one pass when the
    rank's slice is one micro-batch, else GradCache (Gao et al. 2021): embed every micro-batch
    without a graph, take the loss and its gradient w.r.t. the embeddings over the whole batch,
    then re-run each micro-batch with a graph and push its slice of that gradient through."""
    if len(chunks) == 1:
        q_emb, d_emb = embed(model, *chunks[0], device, dtype)
        loss, parts, q_all, d_all = batch_loss(cfg, q_emb, d_emb, batch, groups, rank, world)
        scaler.scale(loss * world).backward()
        return loss, parts, q_all, d_all
    rng_before, cached = [], []
    with torch.no_grad():
        for q, d in chunks:
            rng_before.append(rng_state())  # the re-run must draw the same dropout masks
            cached.append(embed(encoder, q, d, device, dtype))
    q_leaf = torch.cat([c[0] for c in cached]).requires_grad_()
    d_leaf = torch.cat([c[1] for c in cached]).requires_grad_()
    loss, parts, q_all, d_all = batch_loss(cfg, q_leaf, d_leaf, batch, groups, rank, world)
    scaler.scale(loss * world).backward()
    rng_after = rng_state()
    q_grads = q_leaf.grad.split([len(c[0]) for c in cached])
    d_grads = d_leaf.grad.split([len(c[1]) for c in cached])
    for i, (q, d) in enumerate(chunks):
        set_rng_state(rng_before[i])
        sync = i == len(chunks) - 1 or world == 1  # DDP all-reduces on the last backward only
        with (model.no_sync() if not sync else torch.enable_grad()):
            q_emb, d_emb = embed(model, q, d, device, dtype)
            torch.autograd.backward([q_emb, d_emb], [q_grads[i], d_grads[i]])
    set_rng_state(rng_after)
    return loss, parts, q_all, d_all


def remine(cfg, step, epoch, position, encoder, examples, batches, groups_of, miner, master, world, device, dtype,
           writer):
    """ANCE: the negatives that were hard for the model at step 0 are easy now; mine the ones that
    are hard for this model, and rebuild the rest of the epoch around them. Rank 0 mines and writes
    the file every rank reads. Returns (the re-mine's record, examples, batches, groups)."""
    t0 = time.time()
    remined = {"step": step, "epoch": epoch, "file": os.path.join(cfg.out, "negatives", f"step-{step}.jsonl")}
    remine_cfg, corpus, queries, positives, sources, teacher = miner
    if master:
        with autocast(device, dtype):
            records, stats = mining.mine(remine_cfg, corpus, queries, positives, sources, encoder, teacher,
                                         batch_size=cfg.eval_batch_size)
        mining.write_records(remined["file"], records)
        encoder.train()
    if world > 1:
        dist.barrier()
    old = {ex.qid: ex.negatives for ex in examples}
    examples = with_negatives(examples, read_training_file(remined["file"], corpus))
    batches, groups_of = rebatch_rest(examples, batches, groups_of, position, cfg, cfg.seed + step)
    if master:
        changed = np.mean([len(set(ex.negatives) - set(old[ex.qid])) / max(1, len(ex.negatives)) for ex in examples])
        tqdm.write(f"step {step}: re-mined {len(records)} queries, {changed:.0%} of negatives new "
                   f"[{time.time() - t0:.0f}s]")
        log(cfg.out, {"step": step, "remine_seconds": time.time() - t0, "negatives_changed": changed, **stats})
        if writer:
            writer.add_scalar("time/remine_seconds", time.time() - t0, step)
            writer.add_scalar("remine/negatives_changed", changed, step)
    return remined, examples, batches, groups_of


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    rank, world, device = setup(cfg, check_config, "encoder")
    master, dataset = rank == 0, os.path.basename(os.path.normpath(cfg.data))
    if cfg.keep_freed_memory and device.type == "cpu":
        keep_freed_memory()
    checkpoint, state = resume(cfg)  # last/ (or previous/) with --resume, and the sizes the run started with
    dtype, dtype_why = run_dtype(cfg, device, state, master)

    # ---- data: train examples, val queries and the docs val is scored against; their sizes
    corpus, queries, qrels = load_beir(cfg.data, "train")
    records = read_records(cfg, corpus, queries, qrels)
    val_queries, val_qrels = load_val(cfg.data, "the last step's model is kept as best/")
    has_val = bool(val_queries)
    if (not has_val and generated(cfg.data) and decision.NO_VAL_GENERATED["encoder"] == "zero-shot"
            and cfg.generated_without_val == "auto"):
        # Nothing here could tell a model fine-tuned on generated questions from the one it starts as, and across
        # datasets it served no better (common/decision.py): best/ is the starting model, and no step is taken.
        why = f"{cfg.data}'s train questions are generated and no judged question is val; {decision.NO_VAL_WHY}"
        print(f"fine-tuning: not run: {why}; best/ is {cfg.model}")
        if master:
            start_run(cfg.out, cfg, argv)
            build_encoder(cfg, None).save(os.path.join(cfg.out, "best"))
        finish(cfg, {"dataset": dataset, "steps": 0, "not_run": why} if master else None, None, world)
        return 0
    table = AUTO[sizing.machine(device)]
    auto_budget = "time_budget_min" in resolve_sizes(cfg, table, records, corpus, val_queries, world)
    examples = load_examples(cfg, corpus, records)
    sizing.batch_size(cfg, len(examples), table["batch"], world, cfg.train_file or cfg.data)
    sizing.check_batch(cfg, world, "examples")
    richest = max(n for _, n in table["recipes"]) if all(ex.negatives for ex in examples) else 0
    negatives = richest if cfg.hard_negatives == "auto" else cfg.hard_negatives  # the most a recipe draws
    resolve_false_negatives(cfg, examples, negatives, cfg.train_file or cfg.data)
    few_epochs = resolve_epochs(cfg, table, examples, negatives)
    bar = None
    if has_val and master:
        val_queries, val_qrels = sample_queries(val_queries, val_qrels, cfg.val_queries, cfg.seed)
        val_doc_ids = val_corpus(cfg, corpus, val_queries, val_qrels)
        bar = load_bar(cfg, corpus, val_queries, val_doc_ids) if cfg.bar else None
    if cfg.remine_every > 0:
        remine_cfg, teacher_dir = remine_settings(cfg)
        teacher = CrossEncoder.from_pretrained(teacher_dir).to(device) if master and teacher_dir else None
        if teacher is not None:
            teacher.score_dtype = cfg.dtype
        miner = (remine_cfg, corpus, {ex.qid: ex.query for ex in examples},
                 {ex.qid: set(ex.positives) for ex in examples},
                 mining.Sources(remine_cfg, corpus, None, os.path.join(cfg.data, "corpus.jsonl"), cache_dir(cfg))
                 if master else None, teacher)  # BM25's index built once

    # ---- model, optimiser, and the state to resume
    torch.manual_seed(cfg.seed + rank)
    encoder = build_encoder(cfg, checkpoint).to(device)
    encoder.encode_dtype = cfg.dtype  # val and re-mining encode at the run's dtype
    if encoder.set_attention_dropout(cfg.attention_dropout) == 0 and master:
        warn(f"attention_dropout={cfg.attention_dropout}: {cfg.model} has no attention module this knows by name "
             "(*SelfAttention with a dropout); its attention dropout stays as saved")
    if max(cfg.matryoshka_dims, default=0) > encoder.dim:
        raise UserError(f"matryoshka_dims={cfg.matryoshka_dims}: {cfg.model} embeds in {encoder.dim} dimensions; "
                        f"keep each at most {encoder.dim}")
    if cfg.matryoshka_dims and cfg.matryoshka_rotation == "pca" and checkpoint is None and not encoder.matryoshka_dims:
        rotate_to_corpus_axes(cfg, encoder, corpus, master)
    widths = sorted(set(cfg.matryoshka_dims), reverse=True)
    if widths:
        encoder.matryoshka_dims = widths  # saved: what it was trained for
    matryoshka_keys = [f"ndcg@10@{d}" for d in widths if d < encoder.dim]  # val's, beside the full width's
    setup_lora(encoder, cfg, master=master)
    pooler = getattr(encoder.model, "pooler", None)
    if pooler is not None:  # unused by the embedding; DDP would wait for its gradients forever
        pooler.requires_grad_(False)
    if cfg.gradient_checkpointing:
        encoder.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    encoder.train()
    model = DDP(encoder, broadcast_buffers=False) if world > 1 else encoder
    optimizer, scaler = optimizer_and_scaler(encoder, cfg, device, dtype)

    # ---- the recipe's sizes and steps: what fits the time budget, measured on a typical batch
    token_caches = {}  # passage length -> {(kind, text): token ids}; one text, tokenised once per run
    val_texts = (([doc_text(corpus[d]) for d in val_doc_ids], list(val_queries.values())) if has_val and master
                 else ([], []))
    most_evals = table["evals"] if has_val else 0

    def use(recipe):  # the encoder and the first epoch at these sizes
        encoder.max_length["passage"] = recipe[0]
        return first_epoch(cfg, examples, recipe[1], cfg.seed)

    def probe_step(recipe=None):  # a typical batch forward and backward, its gradients dropped: what a step costs
        groups_of, batches = use(recipe or (cfg.max_passage_length, cfg.hard_negatives))
        typical = typical_batch(examples, batches)
        batch, groups = [examples[i] for i in typical], [groups_of[i] for i in typical]
        cache = token_caches.setdefault(encoder.max_length["passage"], {}) if cfg.token_cache else None
        chunks, _ = tokenize_batch(cfg, encoder, corpus, batch, groups, rank, world, cache, device)
        forward_backward(cfg, model, encoder, chunks, batch, groups, scaler, rank, world, device, dtype)
        optimizer.zero_grad(set_to_none=True)

    def measure(recipe):
        rng = rng_state()
        seconds = sizing.time_step(lambda: probe_step(recipe))
        set_rng_state(rng)  # the probe leaves the run's random draws as they were
        return sizing.Trial(recipe, len(use(recipe)[1]), seconds,
                            estimate_eval_seconds(encoder, *val_texts, cfg.eval_batch_size),
                            peak_mb=peak_memory_mb(device))

    def tokens(recipe):  # padded tokens of the recipe's typical batch
        groups_of, batches = first_epoch(cfg, examples, recipe[1], cfg.seed)
        return len(batches), batch_tokens(encoder, corpus, examples, groups_of, typical_batch(examples, batches),
                                          recipe[0])

    def lower_bound(recipe, cheapest):  # a step's time grows with its tokens (a little less: bigger matrices run
        (steps, more), (_, fewer) = tokens(recipe), tokens(cheapest.recipe)  # faster), its activations as much
        return sizing.Trial(recipe, steps, 0.8 * cheapest.step_seconds * more / fewer,
                            0.8 * cheapest.eval_seconds * recipe[0] / cheapest.recipe[0], measured=False,
                            peak_mb=base_mb + (cheapest.peak_mb - base_mb) * more / fewer)

    candidates = recipes(cfg, table, encoder.max_length["passage"])
    base_mb = peak_memory_mb(device)  # before any step: the model, the data
    trial, recipe_line = sizing.choose_recipe(cfg, candidates, measure, lower_bound, most_evals, world,
                                              MEMORY_SHARE * device_memory_mb(device))
    cfg.max_passage_length, cfg.hard_negatives = trial.recipe if trial else candidates[0]
    first_groups, first_batches = use((cfg.max_passage_length, cfg.hard_negatives))
    token_cache = token_caches.setdefault(cfg.max_passage_length, {}) if cfg.token_cache else None
    steps_per_epoch = len(first_batches)
    plan = sizing.resolve_steps(cfg, table, steps_per_epoch, probe_step,
                                lambda: estimate_eval_seconds(encoder, *val_texts, cfg.eval_batch_size),
                                most_evals, world, trial=trial,
                                whole_within_min=table["whole_within_min"] if auto_budget else 0.0,
                                least_evals=most_evals if bar else 1)  # against a bar, each one may stop the run
    total_steps, warmup_steps = cfg.max_steps, int(cfg.warmup_ratio * cfg.max_steps)
    step, epoch, position, best = restore(state, optimizer, scaler, rank, checkpoint)
    batches, groups_of = None, None  # this epoch's batch order, and every example's group of documents
    remined = {"step": -1, "epoch": -1, "file": ""}  # the last re-mine: its step, epoch and negatives file
    if state is not None:
        remined = state.get("remined", remined)
        if remined["file"]:
            examples = with_negatives(examples, read_training_file(remined["file"], corpus))
        if remined["epoch"] == epoch:  # a re-mine rebuilt this epoch's batches: they cannot be redrawn
            batches, groups_of = state["epoch_batches"]
    resumed_at = step if cfg.resume else -1  # that step's eval ran before its checkpoint was saved
    # against the bar: [(step, per-query differences from step 0, as served)], and why training stopped
    bar_history, stopped_early = (state or {}).get("bar_history", []), ""
    writer = open_run(cfg, argv, encoder, step) if master else None
    if master:
        sizing.print_plan("train_encoder.py", [
            f"data: {dataset}, {len(examples):,} train queries ({sum(len(ex.positives) for ex in examples):,} "
            f"positives, one drawn per query each epoch), {cfg.hard_negatives} hard negative"
            f"{'' if cfg.hard_negatives == 1 else 's'} each"
            + (f" from {cfg.train_file}" if cfg.hard_negatives else " (in-batch negatives only)"),
            f"steps: {total_steps} at batch {cfg.batch_size} ({total_steps / steps_per_epoch:.2f} epochs of "
            f"{steps_per_epoch}), on {world} x {device} ({dtype_why})"
            + (f"; {few_epochs}" if few_epochs else ""),
            (f"val: {len(val_queries)} queries against {len(val_doc_ids):,} of {len(corpus):,} docs, "
             + (f"at step 0 and every {cfg.eval_every} steps" if cfg.eval_every else "at the end"))
            if has_val else "val: none",
            *([recipe_line] if recipe_line else []), *([describe_bar(cfg, bar)] if bar else []), *plan["lines"]],
            plan["notes"])

    stop = StopSignals()  # Ctrl-C: finish the step, save last/, exit
    health = Health()  # loss spikes and embedding collapse, warned about as they happen
    throughput = Throughput()
    progress = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not master)
    t_start = time.time()
    while True:
        last_step = step == total_steps

        # ---- once in a while: evaluate on val, keep the best, re-mine, checkpoint
        if (master and has_val and step != resumed_at
                and (last_step or (cfg.eval_every > 0 and step % cfg.eval_every == 0))):
            t0 = time.time()
            kept = bar_vectors(cfg, encoder, corpus, val_doc_ids) if bar is not None and step == 0 else None
            metrics, per_query, _, rotation = evaluate_dense(encoder, corpus, val_doc_ids, val_queries, val_qrels,
                                                             cfg.eval_batch_size, dims=cfg.matryoshka_dims,
                                                             rotate=cfg.matryoshka_rotation == "pca", bar=bar,
                                                             doc_emb=kept)
            encoder.train()
            improved = metrics[cfg.best_metric] > best["metric"]
            if improved:
                best = {"metric": metrics[cfg.best_metric], "step": step, "val": metrics}
                save_best(cfg, encoder, rotation, best, total_steps)
            log_val(cfg, writer, step, metrics, ("ndcg@10", "mrr@10", "recall@100", *matryoshka_keys,
                                                 *(["dense_ndcg@10"] if bar else [])), improved, time.time() - t0)
            if bar is not None:  # the bar: step 0 as its index serves it; stop once it cannot be beaten
                values = [per_query[q][cfg.best_metric] for q in sorted(per_query)]
                if step == 0:
                    bar_history = [(0, values)]
                    stopped_early = decision.can_judge(values)[1]
                else:
                    bar_history.append((step, values))
                if 0 < step < total_steps:  # the last step's evaluation ends the run anyway
                    stopped_early = decision.keep_training(
                        [(s, np.subtract(v, bar_history[0][1])) for s, v in bar_history], total_steps)[1]
                if stopped_early:
                    tqdm.write(f"{stopped_early}; best/ is step {best['step']} (val {cfg.best_metric} "
                               f"{best['metric']:.4f}, the bar {np.mean(bar_history[0][1]):.4f})")
                    last_step = True
        if (cfg.remine_every > 0 and step > 0 and step % cfg.remine_every == 0 and step != remined["step"]
                and not last_step):
            remined, examples, batches, groups_of = remine(
                cfg, step, epoch, position, encoder, examples, batches, groups_of, miner, master, world, device, dtype,
                writer)
        # After a re-mine: a rebuilt rest of the epoch can hold fewer full batches than it replaced.
        while batches is None or position >= len(batches):  # the next epoch's groups and batch order
            if batches is not None:
                epoch, position = epoch + 1, 0
            groups_of = sample_groups(examples, cfg.hard_negatives, cfg.seed + epoch)
            batches = batches_of(cfg, examples, groups_of, cfg.seed + epoch)
        last_step = any_rank(last_step, world, device) if cfg.bar else last_step  # rank 0 alone weighs the bar
        stop.agree(world, device)
        if step > 0 and (last_step or stop.requested or (cfg.save_every > 0 and step % cfg.save_every == 0)):
            save_last(cfg, encoder, optimizer, scaler, world, step=step, epoch=epoch, position=position, best=best,
                      remined=remined, epoch_batches=(batches, groups_of) if remined["epoch"] == epoch else None,
                      bar_history=bar_history)
        if last_step or stop.requested:
            break

        # ---- one training step: the whole batch in one loss, over micro-batches and ranks ----------
        t0 = time.time()
        lr = lr_at(step, cfg.lr, warmup_steps, total_steps, cfg.schedule)
        set_lr(optimizer, lr)
        batch = [examples[i] for i in batches[position]]
        groups = [groups_of[i] for i in batches[position]]  # [positive, hard negatives...] per example
        chunks, tokens = tokenize_batch(cfg, encoder, corpus, batch, groups, rank, world, token_cache, device)
        loss, parts, q_all, d_all = forward_backward(cfg, model, encoder, chunks, batch, groups, scaler, rank, world,
                                                     device, dtype)
        loss = check_finite(loss.item(), step, cfg.out)  # a sync, which the check needs anyway
        if master:
            health.check(step, loss, q_all.std(0).mean().item() if step % cfg.log_every == 0 else None)
        grad_norm = optimizer_step(optimizer, scaler, encoder.parameters(), cfg.max_grad_norm)
        step, position = step + 1, position + 1
        dt = time.time() - t0
        throughput.update(dt, cfg.batch_size, world * tokens)
        # -----------------------------------------------------------------------------------------

        progress.update(1)
        if master and throughput.steps == sizing.ETA_AFTER and step < total_steps:
            tqdm.write(sizing.eta_line(throughput.steps, throughput.seconds, total_steps - step))
        if master and (step % cfg.log_every == 0 or step == total_steps):
            log_train(cfg, writer, progress, {
                "step": step, "epoch": epoch, "loss": loss, **{f"loss/{k}": v.item() for k, v in parts.items()},
                "lr": lr, "grad_norm": grad_norm.item(), "step_seconds": dt,
                "in_batch_accuracy": losses.in_batch_accuracy(q_all, d_all, in_batch_mask(cfg, batch, groups,
                                                                                          q_all.device)).item(),
                "embedding_std": q_all.std(0).mean().item(),
                "examples_per_s": throughput.examples_per_s, "tokens_per_s": throughput.tokens_per_s},
                total_steps, t_start, best)
    progress.close()
    if stop.stopped(step, cfg.out, world):
        return 130

    # ---- the end: best/ (or the last model when there is no val) on test, over the full corpus
    result = None
    if master:
        best_dir = os.path.join(cfg.out, "best")
        if not has_val:
            encoder.save(best_dir)
        elif best["step"] == 0:
            warn(f"val: no step beat the model training started from (step 0, {cfg.best_metric} "
                 f"{best['metric']:.4f}); best/ is that model")
        elif cfg.wise_alphas:  # a candidate more: the best step mixed back toward where it started
            mixed, report = wise_ft(cfg, device, corpus, val_doc_ids, val_queries, val_qrels, bar, best)
            grid = ", ".join(f"{a:g}: {v:.4f}" for a, v in report["grid"].items())
            print(f"WiSE-FT: best/ (step {best['step']}) {report['base']:.4f} on val, mixed with step 0 at "
                  f"{grid}: " + (f"serving {report['chosen']:g} (gain {report['gain']:+.4f}, standard error "
                                 f"{report['stderr']:.4f})" if mixed is not None else "none beyond noise"))
            if mixed is not None:
                mixed.save(best_dir)
                best = {**best, "wise_ft": report["chosen"]}
                write_card(best_dir, "bi-encoder", cfg, best, total_steps)
        result = summary(dataset, step, total_steps, best, t_start, throughput, device)
        result["val_docs"] = len(val_doc_ids) if has_val else 0
        if stopped_early:
            result["stopped_early"] = stopped_early
        if cfg.test_eval and "test" in splits(cfg.data):
            _, test_queries, test_qrels = load_beir(cfg.data, "test")
            final = BiEncoder.from_pretrained(best_dir).to(device)
            t0 = time.time()
            metrics, per_query, run, _ = evaluate_dense(final, corpus, list(corpus), test_queries, test_qrels,
                                                        cfg.eval_batch_size)
            result.update(test=metrics, test_seconds=time.time() - t0)
            write_results(os.path.join(cfg.out, "test"), dataset, "test", {"dense": {
                "metrics": metrics, "per_query": per_query, "run": run, "queries": len(per_query), "model": best_dir}})
            print(f"test ({len(test_queries)} queries, {len(corpus)} docs), best/ from step {best['step']}: "
                  + " ".join(f"{k} {metrics[k]:.4f}" for k in ("ndcg@10", "mrr@10", "recall@100")))
        write_card(best_dir, "bi-encoder", cfg, best, total_steps, result.get("test"))
    finish(cfg, result, writer, world)
    return 0


def estimate_eval_seconds(encoder, val_docs, val_queries, batch_size):
    """Seconds a val evaluation should take: a sample of its texts encoded, timed, scaled to all of them."""
    if not val_docs:
        return 0.0
    seconds = 0.0
    for texts, kind in ((val_docs, "passage"), (val_queries, "query")):
        sample = random.Random(0).sample(texts, min(len(texts), 2 * batch_size))
        t0 = time.perf_counter()
        encoder.encode(sample, kind, batch_size)
        seconds += (time.perf_counter() - t0) * len(texts) / max(1, len(sample))
    return seconds


if __name__ == "__main__":
    cli(main)
