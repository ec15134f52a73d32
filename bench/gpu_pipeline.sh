#!/usr/bin/env bash
# `make pipeline` on a GPU machine, stage by stage with wall times (bench/pipeline_timed.sh), from a
# fresh set-up: the figures behind the README's GPU rows.
#
#     bash bench/gpu_pipeline.sh                          # SciFact (../shared/data/scifact)
#     bash bench/gpu_pipeline.sh DATA=data/python-source  # any make variables
#     SETUP=0 bash bench/gpu_pipeline.sh                  # the .venv is already set up for the GPU
#
# Everything lands in runs/ as `make pipeline` writes it; the stage times and the comparison in
# runs/pipeline-timed-<dataset>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no GPU visible (nvidia-smi)"; exit 1; }
[ "${SETUP:-1}" = 0 ] || make --no-print-directory setup-gpu
has_data=0
for arg in "$@"; do case $arg in DATA=*) has_data=1 ;; esac; done
if [ $has_data = 1 ]; then exec bash bench/pipeline_timed.sh "$@"; fi
exec bash bench/pipeline_timed.sh DATA=../shared/data/scifact "$@"
