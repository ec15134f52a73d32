#!/usr/bin/env bash
# Which recipe sizes a CPU's minutes buy best, scored on val only: train_encoder.py at each passage
# length / hard-negative count / dtype, for a given number of steps (sized beforehand from the step
# times of bench/train_speed.sh, so that runs of equal time compare; a fixed step count also keeps
# the result the same when something else shares the machine), then best/ on every val query
# against the whole corpus. Test is not looked at.
#
#     bash bench/recipe_cpu.sh "a:--max_passage_length=128 --hard_negatives=1 --max_steps=110" \
#                              "b:--max_passage_length=256 --hard_negatives=1 --max_steps=46"
#     DATA=data/scifact TRAIN=runs/scifact-all-MiniLM-L6-v2/mine/train.jsonl bash bench/recipe_cpu.sh "a:..."
#
# Each argument is name:train_encoder.py settings. Prints one line per run (name, steps, train seconds,
# examples/s, val nDCG@10 / R@100) and appends it to $OUT/val.tsv.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/python-source}
TRAIN=${TRAIN:-runs/python-source-all-MiniLM-L6-v2/mine/train.jsonl}
OUT=${OUT:-runs/bench/recipe_cpu/$(basename "$DATA")}
mkdir -p "$OUT"
[ -f "$OUT/val.tsv" ] || printf "run\tsteps\ttrain_s\texamples_per_s\tval_ndcg@10\tval_recall@100\targs\n" > "$OUT/val.tsv"
for spec in "$@"; do
  name=${spec%%:*}
  args=${spec#*:}
  dir="$OUT/$name"
  rm -rf "$dir"
  # shellcheck disable=SC2086
  "$PY" train_encoder.py --data="$DATA" --train_file="$TRAIN" $args --eval_every=0 --val_queries=0 \
    --val_full_corpus=true --test_eval=false --tensorboard=false --out="$dir" > "$dir.log" 2>&1
  "$PY" - "$dir/metrics.json" "$name" "$args" <<'EOF' | tee -a "$OUT/val.tsv"
import json, sys
m = json.load(open(sys.argv[1]))
print("\t".join([sys.argv[2], str(m["steps"]), f"{m['train_seconds']:.0f}", f"{m['examples_per_s']:.2f}",
                 f"{m['val']['ndcg@10']:.4f}", f"{m['val']['recall@100']:.4f}", sys.argv[3]]))
EOF
done
