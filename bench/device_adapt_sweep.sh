# Label-free adaptation on SciFact, several pseudo-query mixes side by side on one lent GPU (no
# SciFact train query or qrel is read by any of them). From the device tool, after
# `bash bench/device_carry.sh`:
#     run(command="bash bench/device_adapt_sweep.sh start 540", carry=[".devcarry"])
#     run(command="bash bench/device_adapt_sweep.sh wait 540")     # again while the machine is warm
# `start` launches the variants in the background (the recipe takes longer than one device command
# may), `wait` polls until they end or the seconds run out; both copy what is done to $OUT.
# Variants: `make adapt` as shipped (ict,crop), then `make adapted` (adapt's second half) with
# title queries added, and with title queries alone. Each picks its checkpoint on its own pseudo val.
set -u
mode=${1:-start}; budget=${2:-540}; start=$(date +%s)
R=runs; L=runs/adapt-sweep; MK="MODEL=/tmp/minilm PY=python EVAL_ARGS=--batch_size=256 TEACHER_ARGS=--batch_size=256"
BASELINE=$R/scifact-minilm/baseline-test/metrics.json
variant() {  # name pseudo-queries
    echo make adapted DATA=data/scifact DATASET=scifact-$1-pseudo CONFIG=scifact-pseudo BASE_CONFIG=scifact \
        PREPARE_ARGS=--pseudo_queries=$2 LABELLED_DIR=data/scifact BASELINE=$BASELINE $MK
}
if [ "$mode" = start ]; then
    source .devcarry/setup.sh >/dev/null 2>&1
    mkdir -p .venv $L && touch .venv/.installed && touch data/scifact/*
    export PYTHONUNBUFFERED=1
    # The shipped recipe makes the zero-shot baseline the others compare with.
    setsid nohup bash -c "time make adapt DATA=data/scifact DATASET=scifact $MK" > $L/ict-crop.log 2>&1 < /dev/null &
    sleep 60  # the baseline first: the variants read it only at their end, minutes later
    setsid nohup bash -c "time $(variant title-ict-crop title,ict,crop)" > $L/title-ict-crop.log 2>&1 < /dev/null &
    setsid nohup bash -c "time $(variant title title)" > $L/title.log 2>&1 < /dev/null &
fi
while pgrep -f "make adapt" > /dev/null && [ $(( $(date +%s) - start )) -lt "$budget" ]; do sleep 10; done
pgrep -fa "python .*\.py" | cut -c1-200
cp -r $L $OUT/ 2>/dev/null
for run in scifact-pseudo-minilm scifact-title-ict-crop-pseudo-minilm scifact-title-pseudo-minilm; do
    for d in mine reranker mine-teacher encoder adapted/test adapted; do
        mkdir -p $OUT/$run/$d; cp $R/$run/$d/metrics.json $R/$run/$d/config.json $R/$run/$d/comparison.md $OUT/$run/$d/ 2>/dev/null
    done
done
for f in $L/*.log; do echo "== $f"; grep -E "^(real|make)|step .*val|ndcg|wrote|error|Error" $f | grep -v "it/s" | tail -12; done
