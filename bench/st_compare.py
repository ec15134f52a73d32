"""train_encoder.py against sentence-transformers on the same data, model, batches and hardware.

sentence-transformers is a bench-only peer, never a project dependency: `make bench-st` installs it
(with what its trainer needs) into .bench-st/, which only this bench's child processes see:

    # CPU (2 cores: about 45 min), SciFact train -> test, 30 steps of 32
    python bench/st_compare.py --data=data/scifact --steps=30
    # one GPU (bf16 on both sides): more steps, so that warm-up is a small part
    python bench/st_compare.py --data=data/scifact --steps=300 --encode_docs=5000
    # plumbing check in a minute: a tiny random model (tests/conftest.py's), 3 steps
    python bench/st_compare.py --data=data/scifact --model=tiny --steps=3 --encode_docs=64

Each measurement runs in its own child process, so each side's peak RSS (os.wait4's ru_maxrss)
is its own: (1) ours: train_encoder.py, in-batch infonce at temperature 0.05, one direction; (2)
sentence-transformers: SentenceTransformerTrainer + MultipleNegativesRankingLoss (scale 20 =
1 / 0.05, query->doc), fed exactly the batches train_encoder.py draws, in the same order
(`st_batches=ours`; `unbucketed` gives it random batches without duplicates instead, as its
NO_DUPLICATES sampler would); same lr, linear schedule, warmup steps, weight decay, clipping, seed,
max length (`max_length` for queries and passages on both sides), dtype (`dtype`: auto is bf16 autocast on
a GPU or on a CPU with native bf16, on both sides);
no evaluation or checkpoints during training. (3), (4): test nDCG@10 of each trained model by
evaluate.py --retrievers=dense over the full corpus. (5), (6): encode throughput of the base model,
BiEncoder.encode vs SentenceTransformer.encode, on the same seeded sample of `encode_docs` docs.

Training throughput is measured alike on both sides: the wall time from the end of the first
(warm-up) step to the end of the last, synchronised on a GPU, over the examples of those steps;
model load, set-up and the first step are left out (train_encoder.py's summary `examples_per_s`; a
TrainerCallback's on_step_end clock for sentence-transformers). Model FLOP/s = 6 x non-embedding
parameters x real (unpadded) tokens per second: no attention term, no padding, no recomputation;
reported as a fraction of `peak_tflops` (0 = 0.07 TFLOP/s on a CPU, this 2-core machine's measured
fp32 GEMM rate, or 989 on a GPU, the H100's dense bf16 peak). The GEMM rate this machine reaches is
measured too (`gemm`).

Writes <out>/summary.json and <out>/summary.md (metric | ours | sentence-transformers | ratio).
Not a test: timings vary +-20% run to run on a shared CPU.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.jobs import ROOT, read_json  # noqa: E402
from common.config import check_choice, load_config  # noqa: E402
from common.files import write_json  # noqa: E402
from common.run import UserError, cli  # noqa: E402

DEFAULTS = dict(
    data="data/scifact",
    model="all-MiniLM-L6-v2",  # a model dir, the packaged short name, or "tiny" (a random 2-layer BERT)
    out="runs/bench/st_compare",
    steps=30,  # optimiser steps on each side
    batch_size=32,
    lr=2e-5,
    warmup_ratio=0.1,  # both sides get int(warmup_ratio * steps) warmup steps
    weight_decay=0.01,
    max_grad_norm=1.0,
    max_length=256,  # tokens, queries and passages, both sides (MiniLM saves max_seq_length 256)
    seed=42,
    device="auto",  # auto | cpu | cuda
    dtype="auto",  # auto | fp32 | bf16: both sides' training autocast; auto = bf16 on a GPU or a CPU with native bf16
    st_batches="ours",  # ours: train_encoder.py's batches in its order | unbucketed: random, no duplicates
    st_path=".bench-st",  # where `make bench-st` installed sentence-transformers (PYTHONPATH of its children)
    train_args=[],  # more train_encoder.py settings for our side, e.g. --train_args=--gradient_checkpointing=true
    evaluate=True,  # test nDCG@10 of both trained models (CPU: ~9 min each, encoding the corpus)
    eval_batch_size=64,
    encode_docs=1000,  # seeded sample of the corpus for the encode throughput; 0 = skip
    encode_batch_size=64,
    encode_dtype="auto",  # auto | fp32 | bf16: autocast around both sides' encode (sentence-transformers' default is fp32)
    encode_max_tokens=0,  # ours: > 0 sizes its encode batches by padded tokens (BiEncoder.encode max_tokens)
    peak_tflops=0.0,  # 0 = 0.07 on CPU (measured fp32 GEMM), 989 on CUDA (H100 dense bf16)
    role="",  # internal: what a child process does
)
CPU_PEAK_TFLOPS, GPU_PEAK_TFLOPS = 0.07, 989.0
LOADS = {}  # child name -> 1-minute load average (before, after)


# ---------------------------------------------------------------- children (one measurement each)

def _device(cfg):
    import torch
    return torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                        ("cpu" if cfg.device == "auto" else cfg.device))


def _child_result(cfg, result):
    write_json(os.path.join(cfg.out, f"{cfg.role}.json"), result)
    return 0


def train_batches(cfg, tokenizer=None):
    """(texts per step as [(query, positive text)], real tokens per step): the batches train_encoder.py
    draws for `steps` steps with these settings, epoch after epoch; `unbucketed` draws random ones."""
    import train_encoder
    from common.batching import make_batches, sample_groups
    from common.data import doc_text, load_beir

    te_cfg = load_config(train_encoder.DEFAULTS, [f"--data={cfg.data}", f"--batch_size={cfg.batch_size}",
                                                  f"--seed={cfg.seed}", "--hard_negatives=0", *cfg.train_args])
    corpus, queries, qrels = load_beir(cfg.data, "train")
    examples = train_encoder.load_examples(te_cfg, corpus, train_encoder.read_records(te_cfg, corpus, queries, qrels))
    bucket = te_cfg.length_bucketing and cfg.st_batches == "ours"
    steps, epoch = [], 0
    while len(steps) < cfg.steps:
        groups = sample_groups(examples, 0, te_cfg.seed + epoch)
        for b in make_batches(examples, groups, cfg.batch_size, te_cfg.seed + epoch, bucket):
            steps.append([(examples[i].query, doc_text(corpus[groups[i][0]])) for i in b])
        epoch += 1
    steps = steps[:cfg.steps]
    tokens = None
    if tokenizer is not None:
        count = lambda texts: sum(len(ids) for ids in tokenizer(texts, truncation=True,  # noqa: E731
                                                                   max_length=cfg.max_length)["input_ids"])
        tokens = [count([q for q, _ in s]) + count([d for _, d in s]) for s in steps]
    return steps, tokens


def child_st_train(cfg):
    import torch
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, __version__)
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # before 6.0
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from common.models import autocast_dtype

    device = _device(cfg)
    model = SentenceTransformer(cfg.model_dir, device=str(device))
    model.max_seq_length = cfg.max_length
    if not any(type(m).__name__ == "Normalize" for m in model):
        # a plain transformer directory: BiEncoder normalises it by default, so evaluate the same way
        from sentence_transformers.models import Normalize
        model.append(Normalize())
    steps, tokens = train_batches(cfg, model.tokenizer)
    flat = [pair for s in steps for pair in s]
    # A fixed fingerprint: datasets would otherwise hash the arrow table with dill, which fails on
    # some pyarrow builds ("Can't pickle <class 'MonthDayNano'>"); nothing here is cached.
    dataset = Dataset(InMemoryTable.from_pydict({"anchor": [q for q, _ in flat], "positive": [d for _, d in flat]}),
                      fingerprint="st-compare")
    bounds = [sum(len(s) for s in steps[:i]) for i in range(len(steps) + 1)]

    class FixedBatches:
        """The batches above, in order (Trainer's batch_sampler hook)."""

        def __init__(self, *args, **kwargs):
            pass

        def __iter__(self):
            return iter([list(range(bounds[i], bounds[i + 1])) for i in range(len(steps))])

        def __len__(self):
            return len(steps)

        def set_epoch(self, epoch):
            pass

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda" and (not self.ends or state.global_step == cfg.steps):
                torch.cuda.synchronize(device)
            self.ends.append(time.perf_counter())

    clock = Clock()
    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(cfg.out, "st-trainer"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, warmup_steps=int(cfg.warmup_ratio * cfg.steps), lr_scheduler_type="linear",
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, data_seed=cfg.seed,
        bf16=autocast_dtype(cfg.dtype, device) == torch.bfloat16, use_cpu=device.type == "cpu",
        batch_sampler=FixedBatches, save_strategy="no", eval_strategy="no", report_to="none",
        dataloader_drop_last=False)
    loss = MultipleNegativesRankingLoss(model, scale=1 / 0.05)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                         callbacks=[clock])
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    model.save(os.path.join(cfg.out, "st", "model"))
    warm = clock.ends[-1] - clock.ends[0]
    return _child_result(cfg, {
        "version": __version__, "optim": str(args.optim), "bf16": args.bf16, "steps": len(clock.ends),
        "train_seconds": train_seconds, "first_step_seconds": clock.ends[0] - t0,
        "warm_examples_per_s": sum(len(s) for s in steps[1:]) / warm, "warm_tokens_per_s": sum(tokens[1:]) / warm,
        "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None})


def encode_sample(cfg):
    import random

    from common.data import doc_text, read_corpus
    corpus = read_corpus(os.path.join(cfg.data, "corpus.jsonl"))
    texts = [doc_text(d) for d in corpus.values()]
    return random.Random(cfg.seed).sample(texts, min(cfg.encode_docs, len(texts)))


def child_encode(cfg, side):
    import numpy as np
    import torch

    device = _device(cfg)
    texts = encode_sample(cfg)
    if side == "ours":
        from common.models import BiEncoder
        model = BiEncoder.from_pretrained(cfg.model_dir, max_query_length=cfg.max_length,
                                          max_passage_length=cfg.max_length).to(device)
        run = lambda t: model.encode(t, "passage", cfg.encode_batch_size, show_progress=False,  # noqa: E731
                                     dtype=cfg.encode_dtype, max_tokens=cfg.encode_max_tokens)
    else:
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer(cfg.model_dir, device=str(device))
        model.max_seq_length = cfg.max_length
        run = lambda t: model.encode(t, batch_size=cfg.encode_batch_size, convert_to_numpy=True)  # noqa: E731

    def encode(t):  # the same autocast around both (fp32: none)
        from common.models import autocast, autocast_dtype
        with autocast(device, autocast_dtype(cfg.encode_dtype, device)):
            return run(t)

    encode(texts[:cfg.encode_batch_size])  # warm-up
    t0 = time.perf_counter()
    emb = encode(texts)
    seconds = time.perf_counter() - t0
    assert emb.shape[0] == len(texts) and np.isfinite(emb).all()
    return _child_result(cfg, {"docs": len(texts), "seconds": seconds, "docs_per_s": len(texts) / seconds,
                               "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20
                               if device.type == "cuda" else None})


def child_gemm(cfg):
    """The matrix-product rate this machine reaches: fp32 on a CPU, bf16 on a GPU (TFLOP/s)."""
    import torch

    device = _device(cfg)
    n, dtype, reps = (1024, torch.float32, 20) if device.type == "cpu" else (8192, torch.bfloat16, 50)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _child_result(cfg, {"n": n, "dtype": str(dtype), "tflops": 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12,
                               "threads": torch.get_num_threads(), "device": str(device),
                               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else ""})


def child_params(cfg):
    """Non-embedding parameters of the encoder (the pooler, unused by the embedding, left out too)."""
    from common.models import BiEncoder

    model = BiEncoder.from_pretrained(cfg.model_dir).model
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("embeddings.", "pooler.")))
    return _child_result(cfg, {"total": total, "non_embedding": total - embed})


# ---------------------------------------------------------------- the parent

def run_child(cfg, name, cmd, st=False):
    """Run one child to completion; (exit code, peak RSS in MB, seconds). Its output goes to <out>/<name>.log."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if st:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(cfg.st_path), env.get("PYTHONPATH")) if p)
    log_path = os.path.join(cfg.out, f"{name}.log")
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    load_before = os.getloadavg()[0]
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    seconds = time.time() - t0
    # Another job on the machine skews timings: the 1-minute load average before and after says so.
    LOADS[name] = (round(load_before, 2), round(os.getloadavg()[0], 2))
    print(f"  {'done' if code == 0 else 'FAILED'} [{seconds:.0f}s, peak RSS {usage.ru_maxrss / 1024:.0f} MB, "
          f"load average {LOADS[name][0]} -> {LOADS[name][1]}]", flush=True)
    if code:
        with open(log_path, encoding="utf-8") as f:
            print("".join(f.readlines()[-20:]), flush=True)
        raise UserError(f"{name} failed (exit {code}); its log is {log_path}")
    return usage.ru_maxrss / 1024, seconds


def self_cmd(cfg, role, model_dir):
    keys = ("data", "out", "steps", "batch_size", "lr", "warmup_ratio", "weight_decay", "max_grad_norm", "max_length",
            "seed", "device", "st_batches", "encode_docs", "encode_batch_size", "encode_dtype",
            "encode_max_tokens")
    args = [f"--{k}={getattr(cfg, k)}" for k in keys] + [f"--train_args={','.join(cfg.train_args)}"]
    return [sys.executable, os.path.abspath(__file__), *args, f"--model={model_dir}", f"--role={role}"]


def resolve_model_dir(cfg):
    if cfg.model == "tiny":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from conftest import build_tiny_model
        return os.path.abspath(build_tiny_model(os.path.join(cfg.out, "tiny-model"), hidden=64, layers=2))
    from common.models import resolve_model
    path = resolve_model(cfg.model)
    if not os.path.isdir(path):
        raise UserError(f"model {cfg.model}: a local directory is needed (sentence-transformers loads the same one)")
    return os.path.abspath(path)


def ratio(ours, theirs):
    return ours / theirs if ours and theirs else None


def summary_table(s):
    o, t = s["ours"], s["st"]
    rows = [("training examples/s (warm)", o["warm_examples_per_s"], t["warm_examples_per_s"], "{:.2f}", True),
            ("training real tokens/s (warm)", o["warm_tokens_per_s"], t["warm_tokens_per_s"], "{:.0f}", True),
            ("training model TFLOP/s (6·N·tokens/s)", o["model_tflops"], t["model_tflops"], "{:.4f}", True),
            (f"  as a fraction of {s['peak_tflops']} TFLOP/s peak", o["mfu"], t["mfu"], "{:.1%}", True),
            ("first step s, not counted (ST: from train())", o["first_step_seconds"], t["first_step_seconds"], "{:.1f}", False),
            ("training peak RSS MB", o["train_peak_rss_mb"], t["train_peak_rss_mb"], "{:.0f}", False),
            ("training peak GPU MB", o.get("train_gpu_peak_mb"), t.get("train_gpu_peak_mb"), "{:.0f}", False),
            ("test nDCG@10", o.get("test_ndcg@10"), t.get("test_ndcg@10"), "{:.4f}", True),
            ("test recall@100", o.get("test_recall@100"), t.get("test_recall@100"), "{:.4f}", True),
            ("encode docs/s", o.get("encode_docs_per_s"), t.get("encode_docs_per_s"), "{:.1f}", True),
            ("encode peak RSS MB", o.get("encode_peak_rss_mb"), t.get("encode_peak_rss_mb"), "{:.0f}", False)]
    lines = ["| metric | ours (train_encoder.py) | sentence-transformers | ratio ours/ST |", "|---|---|---|---|"]
    for name, a, b, fmt, show_ratio in rows:
        if a is None and b is None:
            continue
        r = ratio(a, b)
        lines.append(f"| {name} | {fmt.format(a) if a is not None else '–'} | {fmt.format(b) if b is not None else '–'} | "
                     f"{f'{r:.2f}×' if r is not None else ''} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(DEFAULTS, argv)
    check_choice(cfg, "st_batches", ("ours", "unbucketed"))
    check_choice(cfg, "encode_dtype", ("auto", "fp32", "bf16"))
    check_choice(cfg, "dtype", ("auto", "fp32", "bf16"))
    if cfg.role:
        cfg.model_dir = cfg.model
        return {"st-train": child_st_train, "ours-encode": lambda c: child_encode(c, "ours"),
                "st-encode": lambda c: child_encode(c, "st"), "gemm": child_gemm, "params": child_params}[cfg.role](cfg)
    os.makedirs(cfg.out, exist_ok=True)
    if not os.path.isdir(os.path.join(cfg.st_path, "sentence_transformers")):
        found = subprocess.run([sys.executable, "-c", "import sentence_transformers, datasets, accelerate"],
                               capture_output=True).returncode == 0
        if not found:
            raise UserError(f"{cfg.st_path}: sentence-transformers is not installed there (nor importable with "
                            "datasets and accelerate); run `make bench-st`, or pass --st_path=DIR")
        print(f"{cfg.st_path}: not there; the sentence-transformers this Python imports is used", flush=True)
    model_dir = resolve_model_dir(cfg)
    t_start = time.time()
    py = sys.executable
    s = {"config": vars(cfg), "model_dir": model_dir, "ours": {}, "st": {}}

    run_child(cfg, "gemm", self_cmd(cfg, "gemm", model_dir))
    run_child(cfg, "params", self_cmd(cfg, "params", model_dir))
    gemm, params = read_json(os.path.join(cfg.out, "gemm.json")), read_json(os.path.join(cfg.out, "params.json"))
    s["gemm"], s["params"] = gemm, params
    on_gpu = gemm["device"].startswith("cuda")
    s["peak_tflops"] = cfg.peak_tflops or (GPU_PEAK_TFLOPS if on_gpu else CPU_PEAK_TFLOPS)

    # ---- training, one side after the other
    ours_out = os.path.join(cfg.out, "ours")
    train_args = [f"--data={cfg.data}", f"--model={model_dir}", f"--out={ours_out}", f"--max_steps={cfg.steps}",
                  f"--batch_size={cfg.batch_size}", f"--lr={cfg.lr}", f"--warmup_ratio={cfg.warmup_ratio}",
                  f"--weight_decay={cfg.weight_decay}", f"--max_grad_norm={cfg.max_grad_norm}", f"--seed={cfg.seed}",
                  f"--device={cfg.device}", f"--max_query_length={cfg.max_length}",
                  f"--max_passage_length={cfg.max_length}", "--loss=infonce", "--loss_weights=1", "--temperature=0.05",
                  "--symmetric=false", "--schedule=linear", "--hard_negatives=0", "--micro_batch_size=0",
                  f"--dtype={cfg.dtype}", "--eval_every=0", "--save_every=0", "--test_eval=false", "--tensorboard=false",
                  # val must run once at the end (it keeps best/): on one query and its positives, seconds
                  "--val_queries=1", "--val_docs_bm25=0", "--val_docs_random=0",
                  "--log_every=1", *cfg.train_args]  # every step's step_seconds in metrics.jsonl: the first one's
    rss, _ = run_child(cfg, "ours-train", [py, os.path.join(ROOT, "train_encoder.py"), *train_args])
    m = read_json(os.path.join(ours_out, "metrics.json"))
    with open(os.path.join(ours_out, "metrics.jsonl"), encoding="utf-8") as f:
        first = next(r for r in map(json.loads, f) if r.get("step") == 1 and "step_seconds" in r)
    s["ours"].update(train_peak_rss_mb=rss, warm_examples_per_s=m["examples_per_s"],
                     warm_tokens_per_s=m["tokens_per_s"], first_step_seconds=first["step_seconds"],
                     train_gpu_peak_mb=m["peak_memory_mb"] if on_gpu else None)
    rss, _ = run_child(cfg, "st-train", self_cmd(cfg, "st-train", model_dir), st=True)
    st = read_json(os.path.join(cfg.out, "st-train.json"))
    s["st_version"], s["st_optim"] = st["version"], st["optim"]
    s["st"].update(train_peak_rss_mb=rss, warm_examples_per_s=st["warm_examples_per_s"],
                   warm_tokens_per_s=st["warm_tokens_per_s"], first_step_seconds=st["first_step_seconds"],
                   train_gpu_peak_mb=st["gpu_peak_mb"])
    for side in ("ours", "st"):
        flops = 6 * params["non_embedding"] * s[side]["warm_tokens_per_s"] / 1e12
        s[side].update(model_tflops=flops, mfu=flops / s["peak_tflops"])

    # ---- test nDCG@10 of both trained models, evaluate.py over the full corpus
    if cfg.evaluate:
        for side, trained in (("ours", os.path.join(ours_out, "best")), ("st", os.path.join(cfg.out, "st", "model"))):
            out = os.path.join(cfg.out, f"{side}-test")
            run_child(cfg, f"{side}-test", [py, os.path.join(ROOT, "evaluate.py"), f"--data={cfg.data}", "--split=test",
                                            "--retrievers=dense", f"--model={trained}", f"--out={out}",
                                            f"--batch_size={cfg.eval_batch_size}", f"--device={cfg.device}",
                                            "--cache_embeddings=false"])
            metrics = read_json(os.path.join(out, "metrics.json"))["results"]["dense"]["metrics"]
            s[side].update({"test_ndcg@10": metrics["ndcg@10"], "test_recall@100": metrics["recall@100"]})

    # ---- encode throughput of the base model
    if cfg.encode_docs > 0:
        for side in ("ours", "st"):
            rss, _ = run_child(cfg, f"{side}-encode", self_cmd(cfg, f"{side}-encode", model_dir), st=side == "st")
            e = read_json(os.path.join(cfg.out, f"{side}-encode.json"))
            s[side].update(encode_docs_per_s=e["docs_per_s"], encode_peak_rss_mb=rss, encode_gpu_peak_mb=e["gpu_peak_mb"])

    s["seconds"], s["load_average"] = time.time() - t_start, LOADS
    table = summary_table(s)
    head = (f"{cfg.steps} steps of {cfg.batch_size} on {gemm['device_name'] or gemm['device']} "
            f"({gemm['threads']} threads); sentence-transformers {s['st_version']} ({s['st_optim']}), "
            f"batches: {cfg.st_batches}; measured GEMM {gemm['tflops']:.3f} TFLOP/s ({gemm['dtype']}, n={gemm['n']}); "
            f"non-embedding params {params['non_embedding'] / 1e6:.2f}M; 1-min load average before -> after "
            f"training: ours {LOADS['ours-train'][0]} -> {LOADS['ours-train'][1]}, "
            f"sentence-transformers {LOADS['st-train'][0]} -> {LOADS['st-train'][1]}")
    write_json(os.path.join(cfg.out, "summary.json"), s)
    with open(os.path.join(cfg.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(head + "\n\n" + table + "\n")
    print("\n" + head + "\n\n" + table)
    return 0


if __name__ == "__main__":
    cli(main)
