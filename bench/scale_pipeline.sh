#!/usr/bin/env bash
# Issue 39's cost table: `make pipeline` stage by stage (wall time, peak RSS) on synthetic corpora of growing
# size, with a tiny encoder (2 layers x 32, MiniLM's tokenizer) so that what grows with the corpus is measured
# rather than the model; then BM25 alone (build, top 100 a query) on each.
#
#     bash bench/scale_pipeline.sh                 # 100k and 1M documents (~45 min on 2 cores)
#     SIZES="100000 1000000 5000000" bash bench/scale_pipeline.sh
#
# Logs: runs/pipeline-timed-synth-<n>k.log (one line a stage) and runs/bench/bm25-synth-<n>k.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TINY=runs/bench/tiny-minilm
[ -d "$TINY" ] || $PY bench/scale_sets.py --tiny_model="$TINY"
for n in ${SIZES:-100000 1000000}; do
    name=synth-$((n / 1000))k
    [ -f "data/scale/$name/corpus.jsonl" ] || $PY bench/scale_sets.py --docs="$n" --out="data/scale/$name"
    rm -rf "data/$name" "runs/$name-$(basename "$TINY")"   # a fresh run: nothing cached
    bash bench/pipeline_timed.sh DATA="data/scale/$name" MODEL="$TINY"
done
for n in ${SIZES:-100000 1000000}; do
    name=synth-$((n / 1000))k
    $PY bench/bm25_speed.py --data="data/scale/$name" --backends=sparse --queries=1000 --doc_queries=1000 \
        --out="runs/bench/bm25-$name.json"
done
