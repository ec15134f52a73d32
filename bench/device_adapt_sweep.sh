# Label-free adaptation on SciFact on a lent GPU (no SciFact train query or qrel is read), from the
# device tool after `bash bench/device_carry.sh`:
#     run(command="bash bench/device_adapt_sweep.sh start 540 [MIX ...]", carry=[".devcarry"])
#     run(command="bash bench/device_adapt_sweep.sh wait 540")     # again, while the machine is warm
# `start` runs `make adapt` as shipped (ict,crop pseudo-queries; it also makes the zero-shot
# baseline), then `make adapted` (adapt's second half) once per extra pseudo-query MIX, e.g.
# title,ict,crop, one after another in the background: the whole takes longer than one device
# command may, and runs sharing the GPU and the cores slowed each other ~3x (2026-11-23). `wait`
# polls until they end or the seconds run out. Both print each stage's result lines; each run's
# comparison.md and logs are in $OUT. Each run keeps its checkpoint by its own pseudo val.
set -u
mode=${1:-start}; budget=${2:-540}; shift 2 2>/dev/null; start=$(date +%s)
L=runs/adapt-sweep; MK="MODEL=/tmp/minilm PY=python EVAL_ARGS=--batch_size=256 TEACHER_ARGS=--batch_size=256"
if [ "$mode" = start ]; then
    source .devcarry/setup.sh >/dev/null 2>&1
    mkdir -p .venv $L && touch .venv/.installed && touch data/scifact/*
    export PYTHONUNBUFFERED=1
    chain="time make adapt DATA=data/scifact DATASET=scifact $MK > $L/ict,crop.log 2>&1"
    for mix in "$@"; do
        chain="$chain; time make adapted DATA=data/scifact DATASET=scifact-${mix//,/-}-pseudo CONFIG=scifact-pseudo \
            BASE_CONFIG=scifact PREPARE_ARGS=--pseudo_queries=$mix LABELLED_DIR=data/scifact \
            BASELINE=runs/scifact-minilm/baseline-test/metrics.json $MK > $L/$mix.log 2>&1"
    done
    setsid nohup bash -c "$chain" > $L/chain.log 2>&1 < /dev/null &
    sleep 5
fi
while pgrep -f "make adapt" > /dev/null && [ $(( $(date +%s) - start )) -lt "$budget" ]; do sleep 10; done
pgrep -fa "python .*\.py" | cut -c1-160
mkdir -p $OUT/logs  # the device returns no file whose name has a comma: ict,crop.log comes back as ict-crop.log
for f in $L/*.log; do b=$(basename "$f"); cp "$f" "$OUT/logs/${b//,/-}"; done
for f in runs/scifact*-pseudo-minilm/adapted/comparison.md; do
    [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$(dirname "$f")")").md"
done
for f in $L/*.log; do  # tqdm's \r lines out: the stage commands and their result lines
    echo "== $f"; tr '\r' '\n' < "$f" | grep -E "^(real|python|wrote|step [0-9]+: val|scifact)|^\| ndcg@10|rror" | cut -c1-160
done
