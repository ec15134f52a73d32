#!/bin/bash
# Label-free adaptation on SciFact sized for 2 CPU cores (bench/results/adapt-scifact-cpu.md): ICT
# pseudo-queries from the corpus alone, in-batch symmetric infonce, 120 steps of 32, then the labelled
# test split (what `make adapt DATA=../shared/data/scifact PSEUDO_ARGS=--pseudo_queries=ict` does, with these
# sizes fixed). No SciFact train query or qrel is read.
#     bash bench/adapt_scifact_cpu.sh          # ~1 h uncontended; needs data/scifact (make data DATA=../shared/data/scifact)
set -ex
PY=${PY:-.venv/bin/python}; R=${R:-runs/scifact-adapt-cpu}; start=$(date +%s)
$PY prepare_data.py --source=data/scifact --out=data/scifact-pseudo-ict --pseudo_queries=ict
test -f $R/zero-shot-test/metrics.json || \
    $PY evaluate.py --data=data/scifact --split=test --retrievers=dense --model=all-MiniLM-L6-v2 --out=$R/zero-shot-test
$PY train_encoder.py --data=data/scifact-pseudo-ict --model=all-MiniLM-L6-v2 --out=$R/encoder \
    --batch_size=32 --max_steps=120 --lr=2e-5 --symmetric=true --eval_every=40 --save_every=40 \
    --val_queries=200 --val_docs_bm25=5 --val_docs_random=100 --test_eval=false ${TRAIN_ARGS:-}
$PY evaluate.py --data=data/scifact --split=test --retrievers=dense --model=$R/encoder/best --out=$R/adapted-test
$PY evaluate.py --out=$R --compare=zero-shot=$R/zero-shot-test/metrics.json,adapted=$R/adapted-test/metrics.json
echo "adapt_scifact_cpu: $(( $(date +%s) - start )) s"
