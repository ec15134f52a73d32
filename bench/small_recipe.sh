#!/usr/bin/env bash
# Training recipes for a few dozen train queries (issue 38), on val only: each variant of train_encoder.py
# trained on the same BM25 negatives, its val nDCG@10 (train_encoder's val, every `EVERY` steps) printed
# per step, the best step and its score. The sets come from bench/small_sets.py (scifact-48-val80: 48
# train queries, 80 val).
#
#   bash bench/small_recipe.sh data/small/scifact-48-val80 > bench/results/small-recipe.log 2>&1
#
# Variants are "name|train_encoder args"; "recipe|" is the defaults as they resolve at this commit.
set -euo pipefail
DATA=${1:-data/small/scifact-48-val80}
EVERY=${EVERY:-10}
PY=.venv/bin/python
NAME=$(basename "$DATA")
OUT=runs/small-recipe/$NAME
make --no-print-directory mine DATA="$DATA" >/dev/null
MINED=runs/$NAME-all-MiniLM-L6-v2/mine/train.jsonl
grep -m1 -o 'avx512_bf16' /proc/cpuinfo >/dev/null && echo "cpu: avx512_bf16 (Zen 4 class)" || echo "cpu: no avx512_bf16"
VARIANTS=${VARIANTS:-"recipe|
b16-60|--batch_size=16 --max_steps=60
b16-120|--batch_size=16 --max_steps=120
b16-120-lr2e-5|--batch_size=16 --max_steps=120 --lr=2e-5
b8-120|--batch_size=8 --max_steps=120"}
while IFS='|' read -r name args; do
  [ -z "$name" ] && continue
  rm -rf "$OUT/$name"
  start=$(date +%s)
  # shellcheck disable=SC2086
  $PY train_encoder.py --data="data/$NAME" --train_file="$MINED" --out="$OUT/$name" --test_eval=false \
      --val_queries=0 --time_budget_min=0 $( [ -n "$args" ] && echo "--eval_every=$EVERY" ) $args \
      > "$OUT.$name.log" 2>&1
  $PY - "$OUT/$name" "$name" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
run, name, seconds = sys.argv[1:]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"split": "val"' in l]
curve = " ".join(f"{r['step']}:{r['ndcg@10']:.4f}" for r in rows)
best = max(rows, key=lambda r: r["ndcg@10"])
cfg = json.load(open(f"{run}/config.json"))
print(f"{name}: batch {cfg['batch_size']}, {cfg['max_steps']} steps, lr {cfg['lr']}, {seconds} s | best step "
      f"{best['step']} {best['ndcg@10']:.4f} (step 0 {rows[0]['ndcg@10']:.4f}, last {rows[-1]['ndcg@10']:.4f}) | {curve}")
EOF
done <<< "$VARIANTS"
