#!/usr/bin/env bash
# `make pipeline`, one stage at a time, with each stage's wall time and peak RSS (its largest process); then
# comparison.md.
#
#     bash bench/pipeline_timed.sh                                   # the default data, on this machine
#     bash bench/pipeline_timed.sh DATA=../shared/data/scifact       # any make variables
#     bash bench/pipeline_timed.sh DATA=../shared/data/scifact PY=python   # a GPU machine set up without the venv
#
# Stages already built are skipped by make (and take ~0 s): start from `make clean` (and rm -rf data/<dataset>)
# for a fresh run. The lines also go to $LOG (default runs/pipeline-timed-<dataset>.log).
set -euo pipefail
cd "$(dirname "$0")/.."
data=python-source model=${MODEL:-all-MiniLM-L6-v2}
for arg in "$@"; do case $arg in DATA=*) data=${arg#DATA=} ;; MODEL=*) model=${arg#MODEL=} ;; esac; done
name=$(basename "$data")
LOG=${LOG:-runs/pipeline-timed-$name.log}
mkdir -p "$(dirname "$LOG")"
: > "$LOG"; : > "$LOG.make"
start=$(date +%s)
rss=$(mktemp)
stage() {  # stage <label> <make args...>
    local label=$1 t0=$(date +%s)
    shift
    /usr/bin/time -f %M -o "$rss" make --no-print-directory "$@" >> "$LOG.make" 2>&1 \
        || { echo "$label: failed, see $LOG.make" | tee -a "$LOG"; exit 1; }
    printf '%-16s %6d s %7.2f GB\n' "$label" $(( $(date +%s) - t0 )) "$(awk '{print $1 / 1048576}' "$rss")" | tee -a "$LOG"
}
stage data data "$@"
stage bar bar "$@"
stage baseline-val baseline SPLIT=val "$@"
stage baseline-test baseline SPLIT=test "$@"
stage mine mine "$@"
stage train-encoder train-encoder "$@"
stage index index "$@"
stage fine-tuned-val fine-tuned SPLIT=val "$@"
stage fine-tuned-test fine-tuned SPLIT=test "$@"
if [ "$(make --no-print-directory -s reranker-on "$@")" = yes ]; then
    stage mine-reranker mine-reranker "$@"
    stage train-reranker train-reranker "$@"
fi
stage final final "$@"
stage export export "$@"
stage compare pipeline "$@"
printf '%-16s %6d s\n' total $(( $(date +%s) - start )) | tee -a "$LOG"
grep -E "^(plan|  |warning|val \(|test \()" "$LOG.make" | grep -v "it/s" >> "$LOG" || true
tee -a "$LOG" < "$(ls -t runs/"$name"-*/comparison.md | head -1)"
