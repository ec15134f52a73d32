"""Train a cross-encoder reranker on a mined training file (mine_negatives.py's train.jsonl).

Each example is a query with one positive and `negatives` hard negatives drawn from its mined list
every epoch; the model reads every (query, passage) pair together and outputs one logit. Val
reranks the BM25 top `val_depth` of each val query, the best checkpoint is kept, and at the end
best/ reranks the BM25 top `test_depth` of the test queries. One visible loop below: the
once-in-a-while blocks (eval, checkpoint) at its top, then a single training step.

    # CPU: BM25 negatives for the default data, then the reranker (a fresh head on MiniLM)
    python mine_negatives.py && python train_reranker.py --train_file=runs/python-source/mine-bm25/train.jsonl
    # one GPU (bf16 autocast picked automatically), SciFact
    python train_reranker.py configs/reranker-scifact.yaml
    # several GPUs: each rank takes its slice of every batch
    torchrun --standalone --nproc_per_node=4 train_reranker.py configs/reranker-scifact.yaml
    # continue training a published cross-encoder (online users)
    python train_reranker.py --model=cross-encoder/ms-marco-MiniLM-L-6-v2 --train_file=<mined train.jsonl>
    # distil a teacher's scores (a train.jsonl mined with --teacher) beside the listwise loss
    python train_reranker.py --train_file=<mined with teacher> --distill=margin_mse
    # continue an interrupted run (Ctrl-C or SIGTERM saves last/ before exiting; after a crash or a
    # kill, from the last checkpoint, or from previous/ if last/ is damaged)
    python train_reranker.py configs/reranker-scifact.yaml --resume

Run directory (default runs/<dataset>-<model>/reranker): config.json, command.txt, last/ (model,
trainer state, checksums), previous/ (the checkpoint before it), best/ (model), metrics.json, metrics.jsonl, training_progress.json, TensorBoard
event files, test/ (bm25 and bm25+rerank run files, per-query metrics and metrics.json).
"""
import contextlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from common import losses
from common.batching import Example, make_batches, sample_negatives
from common.config import ConfigError, check_choice, check_range, load_config
from common.data import doc_text, load_beir, read_training_file, splits, warn
from common.metrics import evaluate_run, write_trec
from common.models import CrossEncoder, pick_device
from common.retrievers import BM25
from common.run import UserError, cli, start_run, write_json
from common.training import (Health, StopSignals, all_rng_states, autocast, autocast_dtype, check_free_space,
                             log_hparams, lr_at, param_groups, peak_memory_mb, resume_checkpoint, save_checkpoint,
                             set_rng_state, setup_distributed, trim_log, write_progress)

DEFAULTS = dict(
    # data
    data="data/python-source",  # a directory prepared by prepare_data.py (BEIR layout)
    train_file="",  # required: a mine_negatives.py train.jsonl (queries, positives, hard negatives)
    negatives=7,  # per example, drawn each epoch from its mined list: groups of 1 + negatives passages
    # model
    model="all-MiniLM-L6-v2",  # an encoder gets a fresh one-logit head; a cross-encoder continues
    max_length=256,  # query + passage tokens; the longer is cut first (the passage, unless the query is longer)
    # loss
    loss="listwise",  # listwise (softmax over each group) | bce (pointwise, positives 1)
    pos_weight=0.0,  # bce: a positive's weight; 0 = negatives per positive, so the classes weigh the same
    distill="",  # "" | margin_mse | kl: also fit the teacher scores in train_file (mined with --teacher)
    distill_weight=1.0,
    distill_temperature=1.0,  # kl only
    # batching
    batch_size=16,  # examples (groups) per optimiser step over all ranks
    micro_batch_size=0,  # groups per forward pass on a rank; less than the batch = gradient accumulation
    length_bucketing=True,  # batches of similar length (less padding), in shuffled order
    # optimisation
    epochs=1,
    max_steps=0,  # > 0 overrides epochs
    lr=2e-5,
    head_lr=1e-3,  # the pooler and the fresh one-logit classifier: at lr they barely move in a few hundred steps
    schedule="linear",  # linear | cosine | constant, after warmup
    warmup_ratio=0.1,
    weight_decay=0.01,
    max_grad_norm=1.0,  # 0 = no clipping
    dtype="auto",  # auto | fp32 | bf16 | fp16: auto is bf16 on a GPU that has it, fp32 on CPU
    seed=42,
    device="auto",  # auto | cpu | cuda; under torchrun each rank takes its own GPU
    # evaluation, on rank 0: rerank BM25's top documents of each query
    eval_every=100,  # steps; 0 = only at the end. Step 0 is the model before training.
    best_metric="ndcg@10",
    val_queries=0,  # val queries evaluated; 0 = all
    val_depth=30,  # BM25 candidates reranked per val query (a CPU scores ~10 pairs/s)
    test_depth=100,  # BM25 candidates reranked per test query at the end
    eval_batch_size=64,
    test_eval=True,
    bm25_backend="sparse",  # sparse | rank_bm25 (the reference: the same scores, ~40x slower)
    # checkpoints and logging
    out="",  # run directory; "" = runs/<dataset>-<model>/reranker
    save_every=500,  # steps; 0 = only at the end and on Ctrl-C
    resume=False,  # continue from <out>/last
    log_every=10,
    tensorboard=True,
)
KS = (1, 3, 5, 10, 100)


def check_config(cfg, world):
    check_choice(cfg, "loss", losses.RERANKER_NAMES)
    check_choice(cfg, "schedule", ("linear", "cosine", "constant"))
    check_choice(cfg, "dtype", ("auto", "fp32", "bf16", "fp16"))
    check_choice(cfg, "bm25_backend", BM25.BACKENDS)
    if cfg.distill:
        check_choice(cfg, "distill", losses.DISTILL_NAMES)
    check_range(cfg, ["batch_size", "eval_batch_size", "log_every", "max_length", "val_depth", "test_depth"], 1)
    check_range(cfg, ["micro_batch_size", "epochs", "max_steps", "weight_decay", "max_grad_norm", "val_queries",
                      "head_lr", "pos_weight", "distill_weight"], 0)
    check_range(cfg, ["lr", "distill_temperature"], 0, above=True)
    check_range(cfg, "warmup_ratio", 0, 1)
    if cfg.micro_batch_size > cfg.batch_size // world:
        raise ConfigError(f"micro_batch_size={cfg.micro_batch_size} is more than the {cfg.batch_size // world} groups "
                          f"each of {world} rank(s) takes per step; 0 (the default) means all of them at once")
    if not cfg.train_file:
        raise ConfigError("train_reranker.py needs --train_file=<train.jsonl from mine_negatives.py>: a reranker "
                          "learns from hard negatives (`make mine` writes one)")
    if cfg.negatives < 1:
        raise ConfigError(f"negatives={cfg.negatives}: a group needs at least one negative")
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} must divide evenly over {world} ranks")
    if cfg.max_steps <= 0 and cfg.epochs <= 0:
        raise ConfigError("set epochs or max_steps above 0")


def load_examples(cfg, corpus):
    """One example per (query, positive) of the mined file; queries without negatives are skipped."""
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
        for pos in r["positives"]:
            examples.append(Example(r["qid"], r["query"], pos, frozenset(r["positives"]), r["negatives"],
                                    r["teacher"], len(r["query"]) + len(doc_text(corpus[pos]))))
    if no_negatives:
        warn(f"{cfg.train_file}: {no_negatives} queries without negatives skipped")
    if len(examples) < cfg.batch_size:
        raise UserError(f"{cfg.train_file}: {len(examples)} training groups, fewer than batch_size="
                        f"{cfg.batch_size}; lower --batch_size")
    return examples


def bm25_candidates(bm25, queries, depth):
    """{qid: {doc id: BM25 score}}: the first stage the reranker reorders."""
    texts = list(queries.values())
    return {qid: dict(hits) for qid, hits in zip(queries, bm25.search_many(texts, depth))}


def evaluate_rerank(cross, queries, qrels, candidates, doc_texts, batch_size):
    """(mean metrics, per-query metrics, reranked run, pairs/s) of the candidates reranked whole.
    Every query's pairs go through one length-sorted pass: a query at a time (30 pairs) left an
    H100 at ~600 pairs/s, and val is not where per-query latency is measured (evaluate.py is)."""
    pairs = [(q, d) for q, row in candidates.items() for d in row]
    t0 = time.perf_counter()
    scores = cross.score([queries[q] for q, _ in pairs], [doc_texts[d] for _, d in pairs], batch_size)
    seconds = time.perf_counter() - t0
    run = {q: {} for q in candidates}
    for (q, d), score in zip(pairs, scores):
        run[q][d] = float(score)
    mean, per_query = evaluate_run(qrels, run, KS)
    return mean, per_query, run, len(pairs) / max(seconds, 1e-9)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    rank, world, ddp_device = setup_distributed()
    check_config(cfg, world)
    master = rank == 0
    dataset = os.path.basename(os.path.normpath(cfg.data))
    cfg.out = cfg.out or os.path.join("runs", f"{dataset}-{os.path.basename(os.path.normpath(cfg.model))}",
                                      "reranker")
    device = ddp_device or pick_device(cfg.device)
    dtype = autocast_dtype(cfg.dtype, device)
    if dtype != torch.float32 and device.type == "cpu" and master:
        warn(f"dtype={cfg.dtype} on CPU: autocast there is usually slower than fp32")

    # ---- data: train groups; val queries and their BM25 candidates
    corpus, _, _ = load_beir(cfg.data, "train")
    examples = load_examples(cfg, corpus)
    doc_texts = {d: doc_text(doc) for d, doc in corpus.items()}
    has_val = "val" in splits(cfg.data)
    bm25 = None
    if master and (has_val or cfg.test_eval):
        bm25 = BM25(list(corpus), list(doc_texts.values()), backend=cfg.bm25_backend)
    if master and has_val:
        _, val_queries, val_qrels = load_beir(cfg.data, "val")
        if cfg.val_queries and len(val_queries) > cfg.val_queries:
            keep = sorted(val_queries)[:cfg.val_queries]
            val_queries, val_qrels = {q: val_queries[q] for q in keep}, {q: val_qrels[q] for q in keep}
        val_candidates = bm25_candidates(bm25, val_queries, cfg.val_depth)
    elif master:
        warn(f"{cfg.data}: no val split; the last step's model is kept as best/")

    # ---- model, optimiser, and the state to resume
    torch.manual_seed(cfg.seed + rank)
    last = os.path.join(cfg.out, "last")
    checkpoint, state = resume_checkpoint(cfg.out) if cfg.resume else (None, None)  # last/, or previous/
    cross = CrossEncoder.from_pretrained(checkpoint or cfg.model, max_length=cfg.max_length).to(device)
    cross.train()
    model = DDP(cross, broadcast_buffers=False) if world > 1 else cross
    head = [(".pooler.", cfg.head_lr / cfg.lr), (".classifier.", cfg.head_lr / cfg.lr), (".score.", cfg.head_lr / cfg.lr)]
    optimizer = torch.optim.AdamW(param_groups(cross, cfg.weight_decay, head if cfg.head_lr > 0 else ()), lr=cfg.lr,
                                  fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    steps_per_epoch = len(examples) // cfg.batch_size
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    step, epoch, position, best = 0, 0, 0, {"metric": -1.0, "step": -1}
    batches, negatives = None, None
    if cfg.resume:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
        step, epoch, position, best = state["step"], state["epoch"], state["position"], state["best"]
        if master:
            print(f"resumed from {checkpoint} at step {step} (epoch {epoch}, batch {position})")
        state = None  # on a GPU the optimiser copied its moments there: free the CPU copy for the run
    resumed_at = step if cfg.resume else -1  # that step's eval ran before its checkpoint was saved
    if master:
        start_run(cfg.out, cfg, argv)
        check_free_space(cfg.out, cross)
        if not cfg.resume and os.path.exists(os.path.join(cfg.out, "metrics.jsonl")):
            os.remove(os.path.join(cfg.out, "metrics.jsonl"))  # a fresh run's log starts empty
        trim_log(os.path.join(cfg.out, "metrics.jsonl"), step)  # what a killed run logged after its checkpoint
    writer = None
    if master and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(cfg.out, purge_step=step + 1 if cfg.resume else None)
    group = 1 + cfg.negatives
    if master:
        print(f"{dataset}: {len(examples)} groups of 1 positive + {cfg.negatives} negatives, {steps_per_epoch} "
              f"steps/epoch of {cfg.batch_size}, {total_steps} steps on {world} x {device} "
              f"({str(dtype).removeprefix('torch.')}), max_length {cross.max_length}")
        if has_val:
            print(f"val: {len(val_queries)} queries, BM25 top {cfg.val_depth} reranked")

    def log(record):
        with open(os.path.join(cfg.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    stop = StopSignals()  # Ctrl-C: finish the step, save last/, exit
    health = Health()  # loss spikes, warned about as they happen

    def save_last():
        state = dict(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), step=step, epoch=epoch,
                     position=position, best=best, config=vars(cfg), rng=all_rng_states(world))
        if master:
            save_checkpoint(last, cross, state)

    progress = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not master)
    t_start, step_seconds, groups_seen = time.time(), 0.0, 0
    run_step_seconds, run_steps = 0.0, 0
    while True:
        last_step = step == total_steps

        # ---- once in a while: evaluate on val, keep the best, checkpoint
        if (master and has_val and step != resumed_at
                and (last_step or (cfg.eval_every > 0 and step % cfg.eval_every == 0))):
            t0 = time.time()
            metrics, _, _, pairs_per_s = evaluate_rerank(cross, val_queries, val_qrels, val_candidates, doc_texts,
                                                         cfg.eval_batch_size)
            cross.train()
            improved = metrics[cfg.best_metric] > best["metric"]
            if improved:
                best = {"metric": metrics[cfg.best_metric], "step": step, "val": metrics}
                cross.save(os.path.join(cfg.out, "best"))
            headline = {k: metrics[k] for k in ("ndcg@10", "mrr@10", "recall@10")}
            tqdm.write(f"step {step}: val " + " ".join(f"{k} {v:.4f}" for k, v in headline.items())
                       + (" (best)" if improved else "") + f" [{time.time() - t0:.0f}s, {pairs_per_s:.0f} pairs/s]")
            log({"step": step, "split": "val", **metrics, "eval_seconds": time.time() - t0,
                 "rerank_pairs_per_s": pairs_per_s})
            if writer:
                for k, v in headline.items():
                    writer.add_scalar(f"val/{k}", v, step)
                writer.add_scalar("time/eval_seconds", time.time() - t0, step)
        stop.agree(world, device)
        if step > 0 and (last_step or stop.requested or (cfg.save_every > 0 and step % cfg.save_every == 0)):
            save_last()
        if stop.requested:
            if master:
                tqdm.write(f"stopped by signal at step {step}; `--resume` continues from {cfg.out}/last")
            break
        if last_step:
            break
        while batches is None or position >= len(batches):  # an epoch's negatives and batch order
            if batches is not None:
                epoch, position = epoch + 1, 0
            negatives = sample_negatives(examples, cfg.negatives, cfg.seed + epoch)
            batches = make_batches(examples, negatives, cfg.batch_size, cfg.seed + epoch, cfg.length_bucketing,
                                   exclusive=False)

        # ---- one training step: this rank's slice of the batch, accumulated over micro-batches -----
        t_step = time.time()
        lr = lr_at(step, cfg.lr, warmup_steps, total_steps, cfg.schedule)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        per_rank = cfg.batch_size // world
        mine = batches[position][rank * per_rank:(rank + 1) * per_rank]
        micro = cfg.micro_batch_size or per_rank
        loss_sum, parts_sum, accuracy_sum, margin_sum = 0.0, {}, 0.0, 0.0
        for start in range(0, per_rank, micro):
            chunk = mine[start:start + micro]
            docs = [[examples[i].positive, *negatives[i]] for i in chunk]
            batch = cross.tokenize([examples[i].query for i in chunk for _ in range(group)],
                                   [doc_texts[d] for group_docs in docs for d in group_docs])
            sync = start + micro >= per_rank  # DDP all-reduces gradients on the last micro-batch only
            with (model.no_sync() if world > 1 and not sync else contextlib.nullcontext()), autocast(device, dtype):
                scores = model(**{k: v.to(device) for k, v in batch.items()}).float().view(len(chunk), group)
                parts = {cfg.loss: losses.listwise(scores) if cfg.loss == "listwise"
                         else losses.bce(scores, cfg.pos_weight)}
                if cfg.distill:
                    teacher = torch.tensor([[examples[i].teacher[d] for d in ds] for i, ds in zip(chunk, docs)],
                                           device=device)
                    parts[cfg.distill] = cfg.distill_weight * (
                        losses.margin_mse_scores(scores, teacher) if cfg.distill == "margin_mse"
                        else losses.kl_distill(scores, teacher, cfg.distill_temperature))
                loss = sum(parts.values()) * len(chunk) / per_rank  # the mean over the rank's groups
                scaler.scale(loss).backward()
            loss_sum += loss.item()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v.item() * len(chunk) / per_rank
            accuracy_sum += losses.group_accuracy(scores.detach()).item() * len(chunk) / per_rank
            margin_sum += (scores[:, 0] - scores[:, 1:].mean(1)).mean().item() * len(chunk) / per_rank
        if not np.isfinite(loss_sum):  # checked before the optimiser step, so the weights stay good
            raise UserError(f"loss is {loss_sum} at step {step}: lower --lr, or use --dtype=fp32; "
                            f"the last good checkpoint is {cfg.out}/last")
        if master:
            health.check(step, loss_sum)
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(cross.parameters(),
                                                   cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step, position = step + 1, position + 1
        # -----------------------------------------------------------------------------------------

        step_seconds += time.time() - t_step  # throughput counts training only, not eval or saving
        run_step_seconds, run_steps = run_step_seconds + time.time() - t_step, run_steps + 1
        groups_seen += cfg.batch_size
        progress.update(1)
        if master and (step % cfg.log_every == 0 or step == total_steps):
            # health: a listwise model that learns ranks the positive first in more groups, by a wider margin
            record = {"step": step, "epoch": epoch, "loss": loss_sum, **{f"loss/{k}": v for k, v in parts_sum.items()},
                      "lr": lr, "grad_norm": grad_norm.item(), "group_accuracy": accuracy_sum,
                      "score_margin": margin_sum, "examples_per_s": groups_seen / step_seconds,
                      "pairs_per_s": groups_seen * group / step_seconds}
            progress.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}")
            log(record)
            if writer:
                for k, v in record.items():
                    if k not in ("step", "epoch"):
                        writer.add_scalar(k if "/" in k else f"train/{k}", v, step)
            write_progress(cfg.out, step, total_steps, epoch, t_start, record, best)
            step_seconds, groups_seen = 0.0, 0
    progress.close()
    stop.restore()
    if stop.requested:
        if world > 1:
            dist.destroy_process_group()
        return 130

    # ---- the end: best/ (or the last model when there is no val) reranks BM25 on test
    if master:
        best_dir = os.path.join(cfg.out, "best")
        if not has_val:
            cross.save(best_dir)
        summary = {"dataset": dataset, "steps": step, "total_steps": total_steps, "best_step": best["step"],
                   "val": best.get("val"), "train_seconds": time.time() - t_start,
                   "examples_per_s": run_steps * cfg.batch_size / max(run_step_seconds, 1e-9),
                   "pairs_per_s": run_steps * cfg.batch_size * group / max(run_step_seconds, 1e-9),
                   "peak_memory_mb": peak_memory_mb(device)}
        if cfg.test_eval and "test" in splits(cfg.data):
            _, test_queries, test_qrels = load_beir(cfg.data, "test")
            final = CrossEncoder.from_pretrained(best_dir).to(device)
            t0 = time.time()
            candidates = bm25_candidates(bm25, test_queries, cfg.test_depth)
            before, before_per_query = evaluate_run(test_qrels, candidates, KS)
            metrics, per_query, run, pairs_per_s = evaluate_rerank(final, test_queries, test_qrels, candidates,
                                                                   doc_texts, cfg.eval_batch_size)
            summary.update(test=metrics, test_bm25=before, test_seconds=time.time() - t0,
                           rerank_pairs_per_s=pairs_per_s)
            write_test_outputs(os.path.join(cfg.out, "test"), dataset, {
                "bm25": (before, before_per_query, candidates, {}),
                "bm25+rerank": (metrics, per_query, run, {"model": best_dir, "depth": cfg.test_depth,
                                                          "pairs_per_s": pairs_per_s})})
            print(f"test ({len(test_queries)} queries), BM25 top {cfg.test_depth} reranked by best/ (step "
                  f"{best['step']}): ndcg@10 {before['ndcg@10']:.4f} -> {metrics['ndcg@10']:.4f}, "
                  f"{pairs_per_s:.0f} pairs/s")
        write_json(os.path.join(cfg.out, "metrics.json"), summary)
        if writer:
            log_hparams(writer, cfg, summary)
            writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def write_test_outputs(out_dir, dataset, results):
    """The layout evaluate.py writes ({name: (metrics, per-query, run, extra)}), so reports read both alike."""
    os.makedirs(out_dir, exist_ok=True)
    for name, (_, per_query, run, _) in results.items():
        write_trec(os.path.join(out_dir, f"{name}.trec"), run, name)
        write_json(os.path.join(out_dir, f"{name}.per_query.json"), per_query)
    write_json(os.path.join(out_dir, "metrics.json"), {"dataset": dataset, "split": "test", "results": {
        name: {"metrics": m, "queries": len(pq), **extra} for name, (m, pq, _, extra) in results.items()}})


if __name__ == "__main__":
    cli(main)
