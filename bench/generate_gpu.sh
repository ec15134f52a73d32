#!/usr/bin/env bash
# Question generation on one GPU (issue 50): passages/s of prepare_data.py's generator at a few batch sizes, for the
# packaged gemma3-270m and a hub model (an instruct model an A100 user would pick), on SciFact's 5,183 abstracts,
# each from scratch (a fresh cache directory); then the label-free pipeline with the hub model's questions.
#
#     bash bench/generate_gpu.sh                                      # after `make setup-gpu setup-generate`
#     HUB=Qwen/Qwen2.5-1.5B-Instruct BATCHES="64 256" bash bench/generate_gpu.sh
#     SETUP=0 PIPELINE=0 bash bench/generate_gpu.sh                   # speed only, venv already set up
#
# A hub model must be reachable (or in the Hugging Face cache: HF_HUB_OFFLINE=1). Lines go to
# runs/bench/generate_gpu/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/scifact}
PY=${PY:-.venv/bin/python}
HUB=${HUB:-Qwen/Qwen2.5-1.5B-Instruct}
BATCHES=${BATCHES:-"32 128"}
OUT=${OUT:-runs/bench/generate_gpu}
mkdir -p "$OUT"
LOG=$OUT/log.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG" \
    || { echo "no GPU visible (nvidia-smi)"; exit 1; }
if [ "${SETUP:-1}" != 0 ]; then make --no-print-directory setup-gpu setup-generate; fi
for generator in gemma3-270m "$HUB"; do
  for batch in $BATCHES; do
    tag=$(echo "$generator" | tr '/' '_')-$batch
    rm -rf "$OUT/cache-$tag"
    t0=$(date +%s.%N)
    $PY prepare_data.py --source="$DATA" --pseudo_queries=generate --generator="$generator" --val_queries=0 \
        --generator_batch_size="$batch" --cache_dir="$OUT/cache-$tag" --out="$OUT/data-$tag" > "$OUT/$tag.txt" 2>&1
    seconds=$($PY -c "import json; print(json.load(open('$OUT/data-$tag/prepare.json'))['details']['generated']['seconds'])")
    kept=$($PY -c "import json; g=json.load(open('$OUT/data-$tag/prepare.json'))['details']['generated']; print(g['kept'], 'of', g['written'])")
    echo "$generator batch $batch: generation $seconds s ($($PY -c "print(round(5183 / $seconds, 1))") passages/s), kept $kept; prepare $(printf '%.0f' "$(echo "$(date +%s.%N) - $t0" | bc)") s" | tee -a "$LOG"
  done
done
if [ "${PIPELINE:-1}" != 0 ]; then
  make --no-print-directory pipeline DATA="$DATA" DATASET=scifact-hub-lf GENERATOR="$HUB" \
      PREPARE_ARGS="--pseudo_queries=generate --val_queries=0 --generator_batch_size=128" | tail -n 30 | tee -a "$LOG"
fi
