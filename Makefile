# make train | test | test-fast | test-full | bench | lint
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup train test test-fast test-full bench lint clean-logs

setup:
	@bash scripts/setup_env.sh

train: setup
	.venv/bin/python train.py

# the README's test command (also what .ci/run executes)
test: setup
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

bench: setup
	.venv/bin/python benchmarks/run_all.py

lint:
	.venv/bin/ruff check src tests benchmarks train.py eval.py

clean-logs:
	rm -rf logs/ outputs/ multirun/
