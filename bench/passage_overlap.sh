#!/usr/bin/env bash
# How many tokens of whole sentences one passage repeats from the one before it (prepare_data.py
# --passage_overlap), chosen on a labelled folder's train split (never its test): zero-shot BM25, dense and
# their hybrid at the default weight, nDCG@10 scored at the document (a hit on any passage of it counts).
# Results: bench/results/documents-cpu.md. Run alone: it times nothing, but takes the cores for minutes.
#
#   bash bench/passage_overlap.sh /work/docs/scifact-pdf "0 32 64"
set -euo pipefail
cd "$(dirname "$0")/.."
FOLDER=${1:?a folder of documents with questions.jsonl naming files}
OVERLAPS=${2:-0 32 64}
NAME=$(basename "$FOLDER")
for overlap in $OVERLAPS; do
  out=data/bench-overlap-$NAME-$overlap
  .venv/bin/python prepare_data.py --source="$FOLDER" --out="$out" --passage_overlap="$overlap" | grep -E "^documents|^wrote"
  .venv/bin/python evaluate.py --data="$out" --split=train --retrievers=bm25,dense,hybrid --hybrid_method=convex \
      --hybrid_weight=0.3 --latency=false --out="runs/bench-overlap-$NAME-$overlap" | grep -E "ndcg@10|^ *(bm25|dense|hybrid)" | head -8
  .venv/bin/python - "$overlap" "runs/bench-overlap-$NAME-$overlap/metrics.json" "$out/corpus.jsonl" <<'PY'
import json, sys
m = json.load(open(sys.argv[2]))["results"]
n = sum(1 for _ in open(sys.argv[3]))
print(f"overlap {sys.argv[1]}: passages {n}, " + ", ".join(f"{k} ndcg@10 {v['metrics']['ndcg@10']:.4f}" for k, v in m.items()))
PY
done
