#!/usr/bin/env bash
# Issue 23's GPU figures in one run, ours beside sentence-transformers (same model, data, lengths, dtype):
#   encode   bench/encode_levers.py: docs/s and nDCG@10 of each encode lever, and sentence-transformers'
#   train    bench/st_compare.py at batch 32 (SciFact) and 256, 1024 (the default data: SciFact has too few
#            queries for a batch of 1024): examples/s, model FLOP utilisation, encode docs/s, nDCG@10
#   mine     bench/mining_scale.py: dense mining of ~1M passages, wall time and peak host/GPU memory
#   remine   train_encoder.py on dense negatives re-mined every 50 steps: re-mining's share of training
#
#     bash bench/gpu_speed.sh                        # all four, after `make setup-gpu` and `make bench-st-setup`
#     STAGES="encode train" bash bench/gpu_speed.sh  # some of them
#     SETUP=0 bash bench/gpu_speed.sh                # .venv and .bench-st already set up
#
# Results: runs/bench/gpu_speed/<stage>/..., and a log of every stage's wall time and output in
# runs/bench/gpu_speed/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/scifact}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench/gpu_speed}
STAGES=${STAGES:-encode train mine remine}
mkdir -p "$OUT"
LOG=$OUT/log.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG" \
    || { echo "no GPU visible (nvidia-smi)"; exit 1; }
if [ "${SETUP:-1}" != 0 ]; then make --no-print-directory setup-gpu bench-st-setup; fi
make --no-print-directory data >/dev/null  # the default data, for the large batches
stage() {  # stage <label> <command...>
    local label=$1 t0=$(date +%s)
    shift
    echo "== $label: $*" | tee -a "$LOG"
    "$@" 2>&1 | grep -v "it/s\]" | tee -a "$LOG"
    echo "== $label: $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
}
for s in $STAGES; do case $s in
encode)
    stage encode "$PY" bench/encode_levers.py --data="$DATA" --out="$OUT/encode" ;;
train)
    st="--steps=300 --encode_docs=5000 --encode_dtype=bf16 --encode_batch_size=256 --encode_max_tokens=65536"
    stage train-32 "$PY" bench/st_compare.py --data="$DATA" --batch_size=32 $st --out="$OUT/train-32"
    stage train-256 "$PY" bench/st_compare.py --data=data/python-source --batch_size=256 $st --steps=100 \
        --out="$OUT/train-256"
    stage train-1024 "$PY" bench/st_compare.py --data=data/python-source --batch_size=1024 $st --steps=40 \
        --out="$OUT/train-1024" ;;
mine)
    stage mine "$PY" bench/mining_scale.py --data="$DATA" --repeat_corpus=193 --out="$OUT/mine" -- \
        --strategy=dense --batch_size=256 ;;
remine)
    stage remine-mine "$PY" mine_negatives.py --data="$DATA" --strategy=dense --out="$OUT/remine/mine"
    stage remine-train "$PY" train_encoder.py --data="$DATA" --train_file="$OUT/remine/mine/train.jsonl" \
        --remine_every=50 --test_eval=false --out="$OUT/remine/encoder"
    stage remine-share "$PY" -c "
import json, sys
rows = [json.loads(l) for l in open('$OUT/remine/encoder/metrics.jsonl')]
remine = sum(r.get('remine_seconds', 0) for r in rows)
total = json.load(open('$OUT/remine/encoder/metrics.json'))['train_seconds']
print(f're-mining: {remine:.0f} s of {total:.0f} s of training ({remine / total:.1%}), {sum(\"remine_seconds\" in r for r in rows)} re-mines')
" ;;
*) echo "unknown stage $s (encode, train, mine, remine)"; exit 2 ;;
esac; done
