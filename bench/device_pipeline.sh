# make pipeline's stages on SciFact on a lent GPU (bench/results/pipeline-scifact-h100.md), from the
# device tool after `bash bench/device_carry.sh`:
#     run(command="bash bench/device_pipeline.sh", carry=[".devcarry"])
# The device has no venv and no onnx/onnxruntime (they do not fit the 64 MiB carry), so make gets
# PY=python, and the ONNX export stage is left to `make pipeline` on a machine that has them.
source .devcarry/setup.sh >/dev/null 2>&1
mkdir -p .venv && touch .venv/.installed && touch data/scifact/*
export PYTHONUNBUFFERED=1
R=runs/scifact-minilm; start=$(date +%s)
timeout 500 make -j3 $R/final-test/metrics.json $R/baseline-test/metrics.json DATA=data/scifact DATASET=scifact MODEL=/tmp/minilm PY=python EVAL_ARGS="--batch_size=256 --rerank_batch_size=256" > $OUT/make.log 2>&1; rc=$?
echo "make: $(( $(date +%s) - start )) s, rc $rc" | tee -a $OUT/make.log
python evaluate.py --out=$R --results_csv=runs/results.csv --compare=baseline=$R/baseline-test/metrics.json,fine-tuned=$R/final-test/metrics.json --hparams=$R/reranker/config.json,$R/encoder/config.json
cp runs/results.csv $R/comparison.md $OUT/ ; for d in baseline-test final-test encoder reranker mine mine-teacher index; do mkdir -p $OUT/$d; cp $R/$d/metrics.json $R/$d/config.json $OUT/$d/ 2>/dev/null; done
grep -E "^(make|\.venv|python)|step .*val|test|wrote|error|Error" $OUT/make.log | grep -v "it/s" | tail -40
