"""Train a cross-encoder reranker for a first stage, and choose on val how to mix the two.

The reranker learns from the candidates of the first stage it will rerank (LCE, Gao et al. 2021):
a mined file (mine_negatives.py) of that first stage's top documents, with BM25 and random ones
mixed in. Each example is a query with one of its positives and `negatives` of its mined
negatives, drawn every epoch; the model reads every (query, passage) pair together and outputs
one logit. Val reranks `first_stage`'s top `val_depth` of each val query; the best checkpoint is
kept as best/. Then, on val, the fusion of the normalised first-stage score with the reranker's
(weight 0 included: the first stage alone) and the rerank depth are chosen and saved as
best/fusion.json, which evaluate.py, search.py and Retriever use. Sizes follow the data and the
machine (`auto`), printed as a plan before the first step and saved in config.json. One visible
loop below: the once-in-a-while blocks (eval, checkpoint) at its top, then a single training step.

    # after `make index`: the fine-tuned encoder's own candidates, then the reranker over them
    python mine_negatives.py --index=runs/python-source-all-MiniLM-L6-v2/index --strategy=dense,bm25,random \\
        --num_negatives=12,4,2 --sampling=random --max_rank=50 --out=runs/python-source-all-MiniLM-L6-v2/mine-reranker
    python train_reranker.py --train_file=runs/python-source-all-MiniLM-L6-v2/mine-reranker/train.jsonl \\
        --first_stage=runs/python-source-all-MiniLM-L6-v2/index
    # a reranker for BM25 (the default first stage), on BM25 negatives
    python mine_negatives.py && python train_reranker.py --train_file=runs/python-source/mine-bm25/train.jsonl
    # several GPUs: each rank takes its slice of every batch
    torchrun --standalone --nproc_per_node=4 train_reranker.py --train_file=<mined> --first_stage=<index dir>
    # continue training a published cross-encoder (online users)
    python train_reranker.py --model=cross-encoder/ms-marco-MiniLM-L-6-v2 --train_file=<mined train.jsonl>
    # LoRA: the trunk frozen, low-rank updates and the fresh head trained (best/ saved merged)
    python train_reranker.py --train_file=<mined> --lora_r=8 --lora_alpha=16
    # distil a teacher's scores (a train.jsonl mined with --teacher) beside the listwise loss
    python train_reranker.py --train_file=<mined with teacher> --distill=margin_mse
    # continue an interrupted run (Ctrl-C or SIGTERM saves last/ before exiting; after a crash or a
    # kill, from the last checkpoint, or from previous/ if last/ is damaged)
    python train_reranker.py --train_file=<mined> --resume

Run directory (default runs/<dataset>-<model>/reranker): config.json (`auto` settings resolved),
command.txt, last/ (model, trainer state, checksums), previous/ (the checkpoint before it), best/
(model and fusion.json), metrics.json, metrics.jsonl, training_progress.json, TensorBoard event
files, val/ and test/ (the first stage, reranked, and fused: run files, per-query metrics and
metrics.json, as evaluate.py writes them).
"""
import contextlib
import os
import random
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from common import decision, fusion, losses, sizing
from common.batching import Example, make_batches, sample_groups
from common.config import Auto, ConfigError, check_choice, check_range, load_config
from common.data import doc_text, load_beir, load_val, read_training_file, sample_queries, splits
from common.metrics import evaluate_run, ranked
from common.models import CrossEncoder, autocast
from common.report import write_results
from common.index import is_index
from common.retrievers import BM25, first_stage_run
from common.run import UserError, cli, warn
from common.training import (Health, StopSignals, Throughput, check_finite, check_lora, finish, log_train, log_val,
                             lr_at, open_run, optimizer_and_scaler, optimizer_step, restore, resume, run_dtype,
                             save_last, set_lr, setup, setup_lora, summary, write_card)

DEFAULTS = dict(
    # data
    data="data/python-source",  # a directory prepared by prepare_data.py (BEIR layout)
    train_file="",  # required: a mine_negatives.py train.jsonl (queries, positives, hard negatives)
    first_stage="bm25",  # what the reranker reranks: bm25, a build_index.py directory (the first stage it
    #                      serves: its encoder, BM25 or their mix), or a bi-encoder directory (exact search);
    #                      val and test use its top docs
    negatives=7,  # per example, drawn each epoch from its mined list: groups of 1 + negatives passages
    # model
    model="all-MiniLM-L6-v2",  # an encoder gets a fresh one-logit head; a cross-encoder continues
    max_length=Auto(int),  # query + passage tokens; the longer is cut first (the passage, unless the query is longer)
    # LoRA (common/lora.py): low-rank updates beside the trunk's linear layers, the trunk frozen
    lora_r=0,  # rank; 0 = full fine-tuning
    lora_alpha=16.0,  # the update is scaled by alpha / r
    lora_dropout=0.0,  # on the update's input; 0 skips a copy of every adapted layer's input: faster and
    #                  smaller, and as good on val (bench/results/lora-matryoshka-cpu.md)
    lora_targets=["query", "key", "value", "dense"],  # linear layers by name (or a regex of the dotted name)
    lora_save="merged",  # best/: merged into plain weights (every loader reads them) | adapter: trunk + lora.*
    # loss
    loss="listwise",  # listwise (softmax over each group) | bce (pointwise, positives 1)
    pos_weight=0.0,  # bce: a positive's weight; 0 = negatives per positive, so the classes weigh the same
    distill="",  # "" | margin_mse | kl: also fit the teacher scores in train_file (mined with --teacher)
    distill_weight=1.0,
    distill_temperature=1.0,  # kl only
    # batching
    batch_size=Auto(int),  # examples (groups) per optimiser step over all ranks; auto = 16, or half the
    #                        queries of a dataset too small for 16
    micro_batch_size=0,  # groups per forward pass on a rank; less than the batch = gradient accumulation
    length_bucketing=True,  # batches of similar length (less padding), in shuffled order
    # optimisation
    epochs=6,  # an epoch visits every train query once, with one of its positives
    max_steps=Auto(int),  # auto = epochs of the data, or what fits time_budget_min
    time_budget_min=Auto(float),  # minutes for the steps and val evaluations; 0 = no limit; auto: see AUTO
    lr=5e-5,
    head_lr=1e-3,  # the pooler and the fresh one-logit classifier: at lr they barely move in a few hundred steps
    schedule="linear",  # linear | cosine | constant, after warmup
    warmup_ratio=0.1,
    weight_decay=0.01,
    max_grad_norm=1.0,  # 0 = no clipping
    dtype="auto",  # auto | fp32 | bf16 | fp16: auto is bf16 on a GPU or a CPU with native bf16, else fp32
    seed=42,
    device="auto",  # auto | cpu | cuda; under torchrun each rank takes its own GPU
    # evaluation, on rank 0: rerank the first stage's top documents of each query
    eval_every=Auto(int),  # steps; 0 = only at the end. Step 0 too, unless the head is fresh (a random score).
    best_metric="ndcg@10",
    val_queries=Auto(int),  # val queries evaluated; 0 = all
    val_depth=Auto(int),  # first-stage candidates reranked per val query: the deepest fusion depth tried
    fusion_weights=list(fusion.WEIGHTS),  # reranker weights tried on val (0: the first stage alone)
    fusion_depths=list(fusion.DEPTHS),  # rerank depths tried on val (those up to val_depth)
    test_eval=True,  # the first stage, reranked and fused with the val-chosen settings, on test
    eval_batch_size=64,
    bm25_backend="sparse",  # sparse | rank_bm25 (the reference: the same scores, far slower)
    # checkpoints and logging
    out="",  # run directory; "" = runs/<dataset>-<model>/reranker
    save_every=500,  # steps; 0 = only at the end and on Ctrl-C
    resume=False,  # continue from <out>/last
    log_every=10,
    tensorboard=True,
)
# What `auto` is on each machine: sizes, not the recipe. A CPU scores pairs two orders of magnitude
# slower than a GPU, so there the run is cut to a time budget, pairs are shorter and val reranks a
# shallower top.
AUTO = {
    "cpu": dict(batch=16, max_length=128, time_budget_min=4.0, val_queries=200, val_depth=20, evals=2),
    "gpu": dict(batch=16, max_length=256, time_budget_min=0.0, val_queries=1_000, val_depth=100, evals=6),
}
KS = (1, 3, 5, 10, 100)


def check_config(cfg, world):
    check_choice(cfg, "loss", losses.RERANKER_NAMES)
    check_choice(cfg, "schedule", ("linear", "cosine", "constant"))
    check_choice(cfg, "dtype", ("auto", "fp32", "bf16", "fp16"))
    check_choice(cfg, "bm25_backend", BM25.BACKENDS)
    if cfg.distill:
        check_choice(cfg, "distill", losses.DISTILL_NAMES)
    check_range(cfg, ["batch_size", "eval_batch_size", "log_every", "max_length", "val_depth", "fusion_depths"], 1)
    check_range(cfg, ["micro_batch_size", "epochs", "max_steps", "weight_decay", "max_grad_norm", "val_queries",
                      "head_lr", "pos_weight", "distill_weight", "time_budget_min", "eval_every"], 0)
    check_range(cfg, "fusion_weights", 0, 1)
    check_range(cfg, ["lr", "distill_temperature"], 0, above=True)
    check_range(cfg, "warmup_ratio", 0, 1)
    check_lora(cfg)
    if not cfg.train_file:
        raise ConfigError("train_reranker.py needs --train_file=<train.jsonl from mine_negatives.py>: a reranker "
                          "learns from hard negatives (`make mine-reranker` writes one)")
    if cfg.negatives < 1:
        raise ConfigError(f"negatives={cfg.negatives}: a group needs at least one negative")
    if cfg.batch_size != "auto":
        sizing.check_batch(cfg, world, "groups")
    if cfg.max_steps == 0 and cfg.epochs <= 0:
        raise ConfigError("set epochs or max_steps above 0")
    if not cfg.fusion_weights or not cfg.fusion_depths:
        raise ConfigError("fusion_weights and fusion_depths need at least one value each (0 and 10, say)")


def load_examples(cfg, corpus):
    """One example per query of the mined file (an epoch draws one of its positives); queries without
    negatives are skipped."""
    examples, no_negatives = [], 0
    for r in read_training_file(cfg.train_file, corpus):
        if not r["negatives"]:
            no_negatives += 1
            continue
        if cfg.distill:
            missing = [d for d in r["positives"] + r["negatives"] if d not in r["teacher"]]
            if missing:
                raise UserError(f"{cfg.train_file}:{r['line']}: distill={cfg.distill} needs a teacher score for every "
                                f"positive and negative ({missing[0]} has none); mine again with --teacher")
        examples.append(Example(r["qid"], r["query"], tuple(r["positives"]), r["negatives"], r["teacher"],
                                len(r["query"]) + len(doc_text(corpus[r["positives"][0]]))))
    if no_negatives:
        warn(f"{cfg.train_file}: {no_negatives} queries without negatives skipped")
    return examples


def score_candidates(cross, queries, candidates, doc_texts, batch_size):
    """({qid: {doc id: logit}} of every candidate, pairs/s). Every query's pairs go through one
    length-sorted pass: a query's few pairs at a time leave a GPU mostly idle, and val is not where
    per-query latency is measured (evaluate.py is)."""
    pairs = [(q, d) for q, row in candidates.items() for d in row]
    t0 = time.perf_counter()
    scores = cross.score([queries[q] for q, _ in pairs], [doc_texts[d] for _, d in pairs], batch_size)
    seconds = time.perf_counter() - t0
    out = {q: {} for q in candidates}
    for (q, d), score in zip(pairs, scores):
        out[q][d] = float(score)
    return out, len(pairs) / max(seconds, 1e-9)


def estimate_eval_seconds(cross, queries, candidates, doc_texts, batch_size):
    """Seconds a val evaluation should take: a sample of its pairs scored, timed, scaled to all of them."""
    pairs = [(q, d) for q, row in candidates.items() for d in row]
    if not pairs:
        return 0.0
    sample = random.Random(0).sample(pairs, min(len(pairs), 2 * batch_size))
    t0 = time.perf_counter()
    cross.score([queries[q] for q, _ in sample], [doc_texts[d] for _, d in sample], batch_size)
    return (time.perf_counter() - t0) * len(pairs) / len(sample)


def forward_backward(cfg, model, cross, examples, groups, doc_texts, chunk_ids, per_rank, scaler, world, device,
                     dtype):
    """One micro-batch's loss, scaled to its share of the rank's groups, and its gradients. Returns
    (loss, its terms, group accuracy, score margin), each a float weighted by that share."""
    docs = [groups[i] for i in chunk_ids]
    size = len(docs[0])
    batch = cross.tokenize([examples[i].query for i in chunk_ids for _ in range(size)],
                           [doc_texts[d] for group in docs for d in group])
    share = len(chunk_ids) / per_rank
    with autocast(device, dtype):
        scores = model(**{k: v.to(device) for k, v in batch.items()}).float().view(len(chunk_ids), size)
        parts = {cfg.loss: losses.listwise(scores) if cfg.loss == "listwise" else losses.bce(scores, cfg.pos_weight)}
        if cfg.distill:
            teacher = torch.tensor([[examples[i].teacher[d] for d in ds] for i, ds in zip(chunk_ids, docs)],
                                   device=device)
            parts[cfg.distill] = cfg.distill_weight * (
                losses.margin_mse_scores(scores, teacher) if cfg.distill == "margin_mse"
                else losses.kl_distill(scores, teacher, cfg.distill_temperature))
        loss = sum(parts.values()) * share  # the mean over the rank's groups
        scaler.scale(loss).backward()
    scores = scores.detach()
    return (loss.item(), {k: v.item() * share for k, v in parts.items()},
            losses.group_accuracy(scores).item() * share, (scores[:, 0] - scores[:, 1:].mean(1)).mean().item() * share)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    rank, world, device = setup(cfg, check_config, "reranker")
    master, dataset = rank == 0, os.path.basename(os.path.normpath(cfg.data))
    checkpoint, state = resume(cfg)  # last/ (or previous/) with --resume, and the sizes the run started with
    dtype, dtype_why = run_dtype(cfg, device, state, master)
    table = AUTO[sizing.machine(device)]

    # ---- data: train groups; val queries and the first stage's candidates for them
    corpus, _, _ = load_beir(cfg.data, "train")
    examples = load_examples(cfg, corpus)
    sizing.batch_size(cfg, len(examples), table["batch"], world, cfg.train_file)
    sizing.check_batch(cfg, world, "groups")
    doc_texts = {d: doc_text(doc) for d, doc in corpus.items()}
    val_queries, val_qrels = load_val(cfg.data, "the last step's model is kept as best/, reranking alone")
    has_val = bool(val_queries)
    sizing.resolve(cfg, table, val_queries=min(table["val_queries"], len(val_queries)))
    val_first = {}  # the first stage's top val_depth of each val query (rank 0's)
    if master and has_val:
        val_queries, val_qrels = sample_queries(val_queries, val_qrels, cfg.val_queries, cfg.seed)
        val_first = first_stage_run(cfg.first_stage, cfg.data, corpus, val_queries, cfg.val_depth, cfg.device,
                                    cfg.eval_batch_size, cfg.bm25_backend)
    depths = sorted({min(d, cfg.val_depth) for d in cfg.fusion_depths})

    # ---- model, optimiser, and the state to resume
    torch.manual_seed(cfg.seed + rank)
    cross = CrossEncoder.from_pretrained(checkpoint or cfg.model, max_length=cfg.max_length).to(device)
    cross.score_dtype = cfg.dtype  # val scores at the run's dtype
    setup_lora(cross, cfg, trainable=(".classifier.", ".score."), master=master)
    cross.train()
    model = DDP(cross, broadcast_buffers=False) if world > 1 else cross
    head = [(part, cfg.head_lr / cfg.lr) for part in (".pooler.", ".classifier.", ".score.")] if cfg.head_lr > 0 else []
    optimizer, scaler = optimizer_and_scaler(cross, cfg, device, dtype, head)
    steps_per_epoch = len(examples) // cfg.batch_size
    per_rank = cfg.batch_size // world
    micro = cfg.micro_batch_size or per_rank
    first_groups = sample_groups(examples, cfg.negatives, cfg.seed)
    first_batch = make_batches(examples, first_groups, cfg.batch_size, cfg.seed, cfg.length_bucketing,
                               exclusive=False)[0][rank * per_rank:(rank + 1) * per_rank]

    def probe_step():  # the first batch forward and backward, its gradients dropped: what one step costs
        for start in range(0, per_rank, micro):
            forward_backward(cfg, model, cross, examples, first_groups, doc_texts, first_batch[start:start + micro],
                             per_rank, scaler, world, device, dtype)
        optimizer.zero_grad(set_to_none=True)

    val_evals = table["evals"] + (0 if cross.fresh_head else 1)
    plan = sizing.resolve_steps(cfg, table, steps_per_epoch, probe_step,
                                lambda: estimate_eval_seconds(cross, val_queries, val_first, doc_texts,
                                                              cfg.eval_batch_size),
                                val_evals if has_val else 0, world, step_zero=not cross.fresh_head)
    total_steps, warmup_steps = cfg.max_steps, int(cfg.warmup_ratio * cfg.max_steps)
    step, epoch, position, best = restore(state, optimizer, scaler, rank, checkpoint)
    batches, groups_of = None, None  # this epoch's batch order, and every example's group of documents
    resumed_at = step if cfg.resume else -1  # that step's eval ran before its checkpoint was saved
    writer = open_run(cfg, argv, cross, step) if master else None
    if master:
        sizing.print_plan("train_reranker.py", [
            f"data: {dataset}, {len(examples):,} train queries ({sum(len(ex.positives) for ex in examples):,} "
            f"positives, one drawn per query each epoch), groups of 1 positive + {cfg.negatives} negatives from "
            f"{cfg.train_file}",
            f"steps: {total_steps} at batch {cfg.batch_size} ({total_steps / max(steps_per_epoch, 1):.2f} epochs of "
            f"{steps_per_epoch}), max_length {cross.max_length}, on {world} x {device} "
            f"({dtype_why})",
            (f"val: {len(val_queries)} queries, {cfg.first_stage}'s top {cfg.val_depth} reranked "
             + (f"every {cfg.eval_every} steps" if cfg.eval_every else "at the end")
             + ("" if cross.fresh_head else " and at step 0")
             + f"; then fusion weights {cfg.fusion_weights[0]:g}..{cfg.fusion_weights[-1]:g} x depths "
               f"{','.join(map(str, depths))} chosen on it") if has_val else "val: none",
            *plan["lines"]], plan["notes"])

    stop = StopSignals()  # Ctrl-C: finish the step, save last/, exit
    health = Health()  # loss spikes, warned about as they happen
    throughput = Throughput()
    best_scores = None  # the best checkpoint's scores of the val candidates, for the fusion choice
    progress = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not master)
    t_start = time.time()
    while True:
        last_step = step == total_steps

        # ---- once in a while: evaluate on val, keep the best, checkpoint
        if (master and has_val and step != resumed_at and not (step == 0 and cross.fresh_head)
                and (last_step or (cfg.eval_every > 0 and step % cfg.eval_every == 0))):
            t0 = time.time()
            scores, pairs_per_s = score_candidates(cross, val_queries, val_first, doc_texts, cfg.eval_batch_size)
            metrics, _ = evaluate_run(val_qrels, fusion.fuse(val_first, scores, 1.0, cfg.val_depth), KS)
            cross.train()
            improved = metrics[cfg.best_metric] > best["metric"]
            if improved:
                best, best_scores = {"metric": metrics[cfg.best_metric], "step": step, "val": metrics}, scores
                cross.save(os.path.join(cfg.out, "best"))
                write_card(os.path.join(cfg.out, "best"), "cross-encoder", cfg, best, total_steps)
            log_val(cfg, writer, step, metrics, ("ndcg@10", "mrr@10", "recall@10"), improved, time.time() - t0,
                    f", {pairs_per_s:.0f} pairs/s", rerank_pairs_per_s=pairs_per_s)
        while batches is None or position >= len(batches):  # an epoch's groups and batch order
            if batches is not None:
                epoch, position = epoch + 1, 0
            groups_of = sample_groups(examples, cfg.negatives, cfg.seed + epoch)
            batches = make_batches(examples, groups_of, cfg.batch_size, cfg.seed + epoch, cfg.length_bucketing,
                                   exclusive=False)
        stop.agree(world, device)
        if step > 0 and (last_step or stop.requested or (cfg.save_every > 0 and step % cfg.save_every == 0)):
            save_last(cfg, cross, optimizer, scaler, world, step=step, epoch=epoch, position=position, best=best)
        if last_step or stop.requested:
            break

        # ---- one training step: this rank's slice of the batch, accumulated over micro-batches -----
        t0 = time.time()
        lr = lr_at(step, cfg.lr, warmup_steps, total_steps, cfg.schedule)
        set_lr(optimizer, lr)
        mine = batches[position][rank * per_rank:(rank + 1) * per_rank]
        loss, parts, accuracy, margin = 0.0, {}, 0.0, 0.0
        for start in range(0, per_rank, micro):
            sync = start + micro >= per_rank  # DDP all-reduces gradients on the last micro-batch only
            with model.no_sync() if world > 1 and not sync else contextlib.nullcontext():
                m_loss, m_parts, m_accuracy, m_margin = forward_backward(
                    cfg, model, cross, examples, groups_of, doc_texts, mine[start:start + micro], per_rank, scaler,
                    world, device, dtype)
            loss, accuracy, margin = loss + m_loss, accuracy + m_accuracy, margin + m_margin
            parts = {k: parts.get(k, 0.0) + v for k, v in m_parts.items()}
        check_finite(loss, step, cfg.out)
        if master:
            health.check(step, loss)
        grad_norm = optimizer_step(optimizer, scaler, cross.parameters(), cfg.max_grad_norm)
        step, position = step + 1, position + 1
        dt = time.time() - t0
        throughput.update(dt, cfg.batch_size, cfg.batch_size * (1 + cfg.negatives))  # "tokens": pairs scored
        # -----------------------------------------------------------------------------------------

        progress.update(1)
        if master and throughput.steps == sizing.ETA_AFTER and step < total_steps:
            tqdm.write(sizing.eta_line(throughput.steps, throughput.seconds, total_steps - step))
        if master and (step % cfg.log_every == 0 or step == total_steps):
            # health: a listwise model that learns ranks the positive first in more groups, by a wider margin
            log_train(cfg, writer, progress, {
                "step": step, "epoch": epoch, "loss": loss, **{f"loss/{k}": v for k, v in parts.items()},
                "lr": lr, "grad_norm": grad_norm.item(), "step_seconds": dt, "group_accuracy": accuracy,
                "score_margin": margin, "examples_per_s": throughput.examples_per_s,
                "pairs_per_s": throughput.tokens_per_s}, total_steps, t_start, best)
    progress.close()
    if stop.stopped(step, cfg.out, world):
        return 130

    # ---- the end: the fusion chosen on val and saved with best/; the three columns on test
    result = None
    if master:
        best_dir = os.path.join(cfg.out, "best")
        result = summary(dataset, step, total_steps, best, t_start, throughput, device)
        result["pairs_per_s"] = result.pop("tokens_per_s")
        if has_val:
            final = cross if best["step"] == step else CrossEncoder.from_pretrained(best_dir).to(device)
            final.score_dtype = cfg.dtype
            if best_scores is None:  # resumed after the best step's evaluation
                best_scores, _ = score_candidates(final, val_queries, val_first, doc_texts, cfg.eval_batch_size)
            chosen, grid = decision.rerank(val_qrels, val_first, best_scores, depths, cfg.fusion_weights,
                                           cfg.best_metric)
            chosen.update(first_stage=cfg.first_stage, metric=cfg.best_metric, grid=grid)
            results = stage_results(val_qrels, val_first, best_scores, chosen, cfg, best)
            chosen["val"] = {name: r["metrics"][cfg.best_metric] for name, r in results.items()}
            fusion.save(best_dir, chosen)
            write_results(os.path.join(cfg.out, "val"), dataset, "val", results)
            result["fusion"] = {k: v for k, v in chosen.items() if k != "grid"}
            names = list(results)
            print(f"val ({len(val_queries)} queries): {names[0]} {cfg.best_metric} {chosen['val'][names[0]]:.4f}, "
                  f"reranked {chosen['val'][names[1]]:.4f}, fused {chosen['val'][names[2]]:.4f}: "
                  f"{decision.describe_rerank(chosen)}")
        else:
            cross.save(best_dir)
            chosen = fusion.load(best_dir)
            final = cross
        if cfg.test_eval and "test" in splits(cfg.data):
            _, test_queries, test_qrels = load_beir(cfg.data, "test")
            t0 = time.time()
            test_first = first_stage_run(cfg.first_stage, cfg.data, corpus, test_queries, max(KS), cfg.device,
                                         cfg.eval_batch_size, cfg.bm25_backend)
            top = {q: {d: row[d] for d in ranked(row, chosen["depth"])} for q, row in test_first.items()}
            scores, pairs_per_s = score_candidates(final, test_queries, top, doc_texts, cfg.eval_batch_size)
            results = stage_results(test_qrels, test_first, scores, chosen, cfg, best)
            write_results(os.path.join(cfg.out, "test"), dataset, "test", results)
            result.update(test={n: r["metrics"] for n, r in results.items()}, test_seconds=time.time() - t0,
                          rerank_pairs_per_s=pairs_per_s)
            print(f"test ({len(test_queries)} queries), {cfg.best_metric}: "
                  + ", ".join(f"{n} {r['metrics'][cfg.best_metric]:.4f}" for n, r in results.items()))
        write_card(best_dir, "cross-encoder", cfg, best, total_steps, result.get("test"))
    served = next((v for k, v in (result or {}).get("test", {}).items() if k.endswith("+fused")), None)
    finish(cfg, result, writer, world, hparams_test=served)  # TensorBoard's hparams: the served column
    return 0


def stage_results(qrels, first, scores, chosen, cfg, best):
    """{name: (metrics, per-query, run, info)} of the first stage, the reranker alone and the fused
    score at the chosen depth: the three columns evaluate.py reports too."""
    # as evaluate.py names them: an index serves its hybrid (which may be dense or BM25 alone)
    name = "bm25" if cfg.first_stage == "bm25" else "hybrid" if is_index(cfg.first_stage) else "dense"
    depth = chosen["depth"]
    runs = {name: (first, {"first_stage": cfg.first_stage}),
            f"{name}+rerank": (fusion.fuse(first, scores, 1.0, depth),
                               {"rerank_depth": depth, "chosen": f"reranker step {best['step']}, depth {depth}"}),
            f"{name}+fused": (fusion.fuse(first, scores, chosen["weight"], depth),
                              {"fusion": {"weight": chosen["weight"], "depth": depth},
                               "chosen": f"weight {chosen['weight']:g}, depth {depth}"})}
    out = {}
    for key, (run, info) in runs.items():
        mean, per_query = evaluate_run(qrels, run, KS)
        out[key] = {"metrics": mean, "per_query": per_query, "run": run, "queries": len(per_query), **info}
    return out


if __name__ == "__main__":
    cli(main)
