#!/usr/bin/env bash
# Training speed and peak memory of train_encoder.py variants (dtype, recipe sizes, LoRA), the rest
# alike: short runs (val on one query, no test), alternated so that drift on a shared machine hits
# every variant alike.
#
#     bash bench/train_speed.sh                      # fp32 vs auto (bf16 on a CPU with it), the default data, after `make mine`
#     ORDER="full lora-r8 lora-r8-nodrop lora-r16-nodrop" bash bench/train_speed.sh   # LoRA (issue 24)
#     ORDER="fp32-256 auto-256" bash bench/train_speed.sh       # the same at 256 tokens
#     ORDER="bf16-128-1 bf16-256-1 bf16-128-3 bf16-256-3" bash bench/train_speed.sh  # what each recipe size costs
#     ROUNDS=1 STEPS=5 bash bench/train_speed.sh     # quicker
#     TRAIN=runs/x/mine/train.jsonl DATA=data/x bash bench/train_speed.sh
#
# Prints one line per run: variant, examples/s (metrics.json: the run without its first step) and peak
# RSS (GNU time), and writes them to $OUT/speed.tsv. On a GPU, peak memory is metrics.json's peak_memory_mb.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/python-source}
TRAIN=${TRAIN:-runs/python-source-all-MiniLM-L6-v2/mine/train.jsonl}
OUT=${OUT:-runs/bench/train_speed}
ROUNDS=${ROUNDS:-2}
FIRST_ROUND=${FIRST_ROUND:-1}  # rounds FIRST_ROUND..ROUNDS, appended to speed.tsv
STEPS=${STEPS:-10}
# Every variant trains at batch 32. fp32 is the tree before issue 30 (fp32, MiniLM's attention dropout
# 0.1), auto today's defaults (bf16 on a CPU with it, attention dropout 0), both at issue 21's CPU sizes
# (128 tokens, one hard negative); the -256 pair at 256 tokens (the CPU recipe now). The LoRA ones run
# as issue 24 measured them: fp32, dropout 0.1, 128 tokens, one hard negative.
declare -A VARIANTS=(
  [fp32]="--dtype=fp32 --attention_dropout=0.1 --max_passage_length=128 --hard_negatives=1"
  [auto]="--dtype=auto --max_passage_length=128 --hard_negatives=1"
  [fp32-256]="--dtype=fp32 --attention_dropout=0.1 --max_passage_length=256 --hard_negatives=1"
  [auto-256]="--dtype=auto --max_passage_length=256 --hard_negatives=1"
  [bf16-128-1]="--dtype=bf16 --max_passage_length=128 --hard_negatives=1"
  [bf16-256-1]="--dtype=bf16 --max_passage_length=256 --hard_negatives=1"
  [bf16-128-3]="--dtype=bf16 --max_passage_length=128 --hard_negatives=3"
  [bf16-256-3]="--dtype=bf16 --max_passage_length=256 --hard_negatives=3"
  [full]="--dtype=fp32 --attention_dropout=0.1 --max_passage_length=128 --hard_negatives=1"
  [lora-r8]="--dtype=fp32 --attention_dropout=0.1 --lora_r=8 --lora_alpha=16 --lr=5e-4 --lora_dropout=0.1 --max_passage_length=128 --hard_negatives=1"
  [lora-r8-nodrop]="--dtype=fp32 --attention_dropout=0.1 --lora_r=8 --lora_alpha=16 --lr=5e-4 --lora_dropout=0 --max_passage_length=128 --hard_negatives=1"
  [lora-r16-nodrop]="--dtype=fp32 --attention_dropout=0.1 --lora_r=16 --lora_alpha=32 --lr=5e-4 --lora_dropout=0 --max_passage_length=128 --hard_negatives=1"
  # malloc handing freed activations back to the OS: what the heap's own growth adds to peak RSS
  [full-freeing]="--dtype=fp32 --attention_dropout=0.1 --keep_freed_memory=false --max_passage_length=128 --hard_negatives=1"
  [lora-r8-nodrop-freeing]="--dtype=fp32 --attention_dropout=0.1 --lora_r=8 --lora_alpha=16 --lr=5e-4 --lora_dropout=0 --keep_freed_memory=false --max_passage_length=128 --hard_negatives=1"
)
ORDER=${ORDER:-"fp32 auto"}
mkdir -p "$OUT"
[ -f "$OUT/speed.tsv" ] || printf "variant\tround\texamples_per_s\tpeak_rss_gb\n" > "$OUT/speed.tsv"
for round in $(seq "$FIRST_ROUND" "$ROUNDS"); do
  for v in $ORDER; do
    dir="$OUT/$v-$round"
    rm -rf "$dir"
    # shellcheck disable=SC2086
    /usr/bin/time -v -o "$dir.time" "$PY" train_encoder.py --data="$DATA" --train_file="$TRAIN" ${VARIANTS[$v]} \
      --batch_size=32 --max_steps="$STEPS" --val_queries=1 --val_docs_bm25=0 --val_docs_random=0 --val_full_corpus=false \
      --test_eval=false --eval_every=0 --tensorboard=false --log_every=1 --out="$dir" > "$dir.log" 2>&1
    eps=$("$PY" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['examples_per_s'], 2))" "$dir/metrics.json")
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.2f", $2 / 1048576}' "$dir.time")
    printf "%s\t%s\t%s\t%s\n" "$v" "$round" "$eps" "$rss" | tee -a "$OUT/speed.tsv"
  done
done
