#!/usr/bin/env bash
# Generated questions against the zero-shot hybrid (issue 50), per dataset, each run one after another:
#   lf   label-free: the source's train (and val) questions withheld; a language model's questions choose the mix
#        (common/decision.py's pooled), the rest is NO_VAL_GENERATED; beside it, the hybrid at NO_VAL's weight
#   val  the source's real train questions as val (prompt examples built-in, so the same questions): val chooses
#   ten  ten of them as val
# and, on the label-free data, each use alone and together (memory at given strengths over the zero-shot encoder; the
# encoder fine-tuned on the questions without val, with and without their memory). The test split is read at the end
# of each run, to report. Lines go to $LOG (default runs/generated.log).
#
#     bash bench/generated.sh scifact=../shared/data/scifact manpages=/work/lf/manpages   # name=source ...
#     RUNS="lf val" bash bench/generated.sh ...                                          # some of them
# (bench/label_free_sets.py makes the man-page and stdlib-code collections.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LOG=${LOG:-runs/generated.log}
RUNS=${RUNS:-"lf val ten uses"}
mkdir -p runs
ndcg() { $PY -c "import json,sys; m=json.load(open(sys.argv[1])); m=m.get('results', m); print(' '.join(f'{k} {v[\"metrics\"][\"ndcg@10\"]:.4f}' for k, v in m.items() if isinstance(v, dict) and 'metrics' in v))" "$1"; }
for pair in "$@"; do
  name=${pair%%=*}; src=${pair#*=}
  for run in $RUNS; do
    t0=$(date +%s)
    case $run in
      lf)  make --no-print-directory pipeline DATA="$src" DATASET="$name-lf" PREPARE_ARGS="--pseudo_queries=generate --val_queries=0"
           # beside it, the zero-shot hybrid at the weight served without val and without generated questions
           $PY evaluate.py --data=data/$name-lf --split=test --retrievers=hybrid --model=all-MiniLM-L6-v2 --latency=false \
               --hybrid_weight=$($PY -c "from common.decision import NO_VAL; print(NO_VAL['weight'])") --out=runs/$name-lf-no-val-test
           echo "$name lf: zero-shot hybrid at the no-val weight: $(ndcg runs/$name-lf-no-val-test/metrics.json)" | tee -a "$LOG" ;;
      val) make --no-print-directory pipeline DATA="$src" DATASET="$name-val" PREPARE_ARGS="--pseudo_queries=generate --val_queries=-1 --prompt_examples=0" ;;
      ten) make --no-print-directory pipeline DATA="$src" DATASET="$name-ten" PREPARE_ARGS="--pseudo_queries=generate --val_queries=10 --prompt_examples=0" ;;
      uses)
        data=data/$name-lf; out=runs/$name-lf-uses
        make --no-print-directory data DATA="$src" DATASET="$name-lf" PREPARE_ARGS="--pseudo_queries=generate --val_queries=0"
        for mem in "0 0" "0 1" "0 2" "0.5 0" "0.5 1" "1 1"; do
          set -- $mem
          $PY build_index.py --data=$data --model=all-MiniLM-L6-v2 --memory_dense=$1 --memory_bm25=$2 --out=$out/zs-$1-$2
          $PY evaluate.py --data=$data --split=test --retrievers=hybrid --index=$out/zs-$1-$2 --latency=false --out=$out/zs-$1-$2-test
          echo "$name uses: zero-shot, memory dense $1 BM25 $2: $(ndcg $out/zs-$1-$2-test/metrics.json)" | tee -a "$LOG"
        done
        test -f $out/mine/train.jsonl || $PY mine_negatives.py --data=$data --out=$out/mine
        test -f $out/encoder/metrics.json || $PY train_encoder.py --data=$data --train_file=$out/mine/train.jsonl \
            --generated_without_val=train --test_eval=false --out=$out/encoder
        for mem in "0 0" "0 1"; do
          set -- $mem
          $PY build_index.py --data=$data --model=$out/encoder/best --memory_dense=$1 --memory_bm25=$2 --out=$out/ft-$1-$2
          $PY evaluate.py --data=$data --split=test --retrievers=hybrid --index=$out/ft-$1-$2 --latency=false --out=$out/ft-$1-$2-test
          echo "$name uses: fine-tuned, memory dense $1 BM25 $2: $(ndcg $out/ft-$1-$2-test/metrics.json)" | tee -a "$LOG"
        done ;;
    esac
    [ "$run" = uses ] || echo "$name $run: $(( $(date +%s) - t0 )) s; runs/$name-$run-all-MiniLM-L6-v2/comparison.md" | tee -a "$LOG"
  done
done
