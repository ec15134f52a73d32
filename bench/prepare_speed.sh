#!/usr/bin/env bash
# prepare_data.py on folders of documents, from scratch (no earlier read to reuse), each format in turn and
# the turns repeated, so drift reaches every format alike: wall seconds per run, and per 1,000 pages.
# Folders: bench/make_documents.py --format=pdf|html|md|txt|docx --out=/work/docs/scifact-<format>.
# Results: bench/results/documents-cpu.md. Run alone on the machine.
#
#   bash bench/prepare_speed.sh "pdf html md txt docx" 3
set -euo pipefail
cd "$(dirname "$0")/.."
FORMATS=${1:-pdf html md txt docx}
REPEATS=${2:-3}
ROOT=${ROOT:-/work/docs}
for r in $(seq "$REPEATS"); do
  for f in $FORMATS; do
    out=/tmp/prepare-speed-$f
    rm -rf "$out"
    t0=$(date +%s.%N)
    .venv/bin/python prepare_data.py --source="$ROOT/scifact-$f" --out="$out" > /tmp/prepare-speed-$f.log 2>&1
    t1=$(date +%s.%N)
    pages=$(.venv/bin/python -c "import json; print(sum(1 for _ in open('$out/documents.jsonl')))")
    printf '%s run %d: %.1f s, %s files, %s\n' "$f" "$r" "$(echo "$t1 - $t0" | bc)" "$pages" \
        "$(grep -o '[0-9,]* passages of' /tmp/prepare-speed-$f.log | head -1)"
  done
done
