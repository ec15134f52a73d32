#!/usr/bin/env bash
# Training speed and peak memory of full fine-tuning vs LoRA, the rest of the recipe alike: short runs
# (val on one query, no test), alternated so that drift on a shared machine hits every variant alike.
#
#     bash bench/lora_speed.sh                       # the default data, after make setup and make pipeline's mine stage
#     ROUNDS=1 STEPS=5 bash bench/lora_speed.sh      # quicker
#     ORDER="full full-freeing" bash bench/lora_speed.sh   # some variants (listed below)
#     TRAIN=runs/x/mine/train.jsonl DATA=data/x bash bench/lora_speed.sh
#
# Prints one line per run: variant, examples/s (metrics.json: the run without its first step) and peak
# RSS (GNU time), and writes them to $OUT/speed.tsv. On a GPU, peak memory is metrics.json's peak_memory_mb.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/python-source}
TRAIN=${TRAIN:-runs/python-source-all-MiniLM-L6-v2/mine/train.jsonl}
OUT=${OUT:-runs/bench/lora_speed}
ROUNDS=${ROUNDS:-2}
FIRST_ROUND=${FIRST_ROUND:-1}  # rounds FIRST_ROUND..ROUNDS, appended to speed.tsv
STEPS=${STEPS:-10}
declare -A VARIANTS=(
  [full]=""
  [lora-r8]="--lora_r=8 --lora_alpha=16 --lr=5e-4 --lora_dropout=0.1"
  [lora-r8-nodrop]="--lora_r=8 --lora_alpha=16 --lr=5e-4 --lora_dropout=0"
  [lora-r16-nodrop]="--lora_r=16 --lora_alpha=32 --lr=5e-4 --lora_dropout=0"
  # malloc handing freed activations back to the OS: what the heap's own growth adds to peak RSS
  [full-freeing]="--keep_freed_memory=false"
  [lora-r8-nodrop-freeing]="--lora_r=8 --lora_alpha=16 --lr=5e-4 --lora_dropout=0 --keep_freed_memory=false"
)
ORDER=${ORDER:-"full lora-r8 lora-r8-nodrop lora-r16-nodrop"}
mkdir -p "$OUT"
[ -f "$OUT/speed.tsv" ] || printf "variant\tround\texamples_per_s\tpeak_rss_gb\n" > "$OUT/speed.tsv"
for round in $(seq "$FIRST_ROUND" "$ROUNDS"); do
  for v in $ORDER; do
    dir="$OUT/$v-$round"
    rm -rf "$dir"
    # shellcheck disable=SC2086
    /usr/bin/time -v -o "$dir.time" "$PY" train_encoder.py --data="$DATA" --train_file="$TRAIN" ${VARIANTS[$v]} \
      --max_steps="$STEPS" --val_queries=1 --val_docs_bm25=0 --val_docs_random=0 --val_full_corpus=false \
      --test_eval=false --eval_every=0 --tensorboard=false --log_every=1 --out="$dir" > "$dir.log" 2>&1
    eps=$("$PY" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['examples_per_s'], 2))" "$dir/metrics.json")
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.2f", $2 / 1048576}' "$dir.time")
    printf "%s\t%s\t%s\t%s\n" "$v" "$round" "$eps" "$rss" | tee -a "$OUT/speed.tsv"
  done
done
