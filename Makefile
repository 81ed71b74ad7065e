# One-command entry points. Each target creates .venv and installs the project the first time.
# GPU users: make test TORCH_SPEC="torch==2.5.1"   (any pip requirement spec, with extra pip args)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
SHARED ?= ../shared
BIN := $(VENV)/bin
MBPP_SRC := $(if $(wildcard $(SHARED)/data/mbpp/mbpp.jsonl),$(SHARED)/data/mbpp/mbpp.jsonl,hub)
TOKENIZER := $(if $(wildcard $(SHARED)/tokenizers/gpt2/vocab.json),$(SHARED)/tokenizers/gpt2,gpt2)

.PHONY: setup test lint demo clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[dev]"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright hrm_codegen

test: lint
	$(BIN)/python -m pytest tests

# The main job: MBPP -> a tiny HRM trained on the CPU -> greedy Pass@1 on the MBPP test split.
DEMO_RUN ?= mbpp_cpu_demo
demo: setup
	$(BIN)/python scripts/prepare_data.py --source $(MBPP_SRC) --output data/mbpp/mbpp.jsonl
	$(BIN)/python scripts/train_codegen.py experiment=mbpp_cpu_demo run_name=$(DEMO_RUN) resume=auto \
		data.path=data/mbpp/mbpp.jsonl tokenizer.name_or_path=$(TOKENIZER)
	$(BIN)/python scripts/evaluate.py --model-type hrm --ckpt checkpoints/$(DEMO_RUN) --dataset mbpp --split test \
		--mbpp data/mbpp/mbpp.jsonl --max-new-tokens 128 --output outputs/eval/$(DEMO_RUN)

clean-venv:
	rm -rf $(VENV)
