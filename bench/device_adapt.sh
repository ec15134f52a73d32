# make adapt on SciFact on a lent GPU (label-free: no SciFact train query or qrel is read), from the
# device tool after `bash bench/device_carry.sh`:
#     run(command="bash bench/device_adapt.sh", carry=[".devcarry"])
# As in device_pipeline.sh: no venv there, so make gets PY=python. ADAPT_ARGS passes more make
# variables, e.g. ADAPT_ARGS='TRAIN_ARGS="--lr=2e-5" PSEUDO_ARGS="--pseudo_queries=ict"'.
source .devcarry/setup.sh >/dev/null 2>&1
mkdir -p .venv && touch .venv/.installed && touch data/scifact/*
export PYTHONUNBUFFERED=1
R=runs/scifact-pseudo-minilm; start=$(date +%s)
eval timeout 560 make adapt DATA=data/scifact DATASET=scifact MODEL=/tmp/minilm PY=python \
    EVAL_ARGS='"--batch_size=256"' ${ADAPT_ARGS:-} > $OUT/make.log 2>&1; rc=$?
echo "make adapt: $(( $(date +%s) - start )) s, rc $rc" | tee -a $OUT/make.log
cp data/scifact-pseudo/prepare.json $OUT/ 2>/dev/null; cp $R/adapted/comparison.md $OUT/ 2>/dev/null
for d in mine reranker mine-teacher encoder adapted/test; do mkdir -p $OUT/$d; cp $R/$d/metrics.json $R/$d/config.json $OUT/$d/ 2>/dev/null; done
grep -E "^(make|python)|step .*val|test|wrote|error|Error" $OUT/make.log | grep -v "it/s" | tail -40
