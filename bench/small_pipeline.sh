#!/usr/bin/env bash
# `make pipeline` on each small collection bench/small_sets.py builds, as a new user runs it (no config),
# one after another, each timed; then each comparison.md's summary table. Issue 38's evidence.
#
#   python bench/small_sets.py --out=data/small
#   bash bench/small_pipeline.sh data/small/scifact-48 data/small/man-60 > runs/small-pipeline.log 2>&1
set -uo pipefail
grep -m1 -o 'avx512_bf16' /proc/cpuinfo >/dev/null && echo "cpu: avx512_bf16 (Zen 4 class)" || echo "cpu: no avx512_bf16"
for data in "$@"; do
  name=$(basename "$data")
  start=$(date +%s)
  make --no-print-directory pipeline DATA="$data" > "runs/$name.pipeline.log" 2>&1
  rc=$?
  echo "== $name: make pipeline rc=$rc, $(( $(date +%s) - start )) s"
  grep -E "^(warning|batches|fine-tuning|model|baseline|  memory|.*within noise on|.*does not beat)" "runs/$name.pipeline.log" | cut -c1-400
  sed -n '1,/^$/p' "runs/$name-all-MiniLM-L6-v2/comparison.md" 2>/dev/null || echo "no comparison.md"
  grep -E "^(memory|the index)" "runs/$name-all-MiniLM-L6-v2/comparison.md" 2>/dev/null
done
