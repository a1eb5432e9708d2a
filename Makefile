# make train | test | test-fast | bench | lint | format
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup train test test-fast bench gpu-check lint format clean-logs

setup:
	@bash scripts/setup_env.sh

train: setup
	.venv/bin/python train.py

# the README's test command (also what .ci/run executes): two workers, one test file at a time each
# (pytest-xdist; PYTEST_WORKERS=0 runs in one process)
PYTEST_WORKERS ?= 2
PYTEST_ARGS = -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS) -m "not slow"

# the GPU check (benchmarks/gpu_check.py, then the gpu-marked tests): one report file; skips cleanly without CUDA
gpu-check: setup
	@if command -v nvidia-smi >/dev/null 2>&1; then .venv/bin/pip install -q -e ".[gpu]" \
	  || echo "gpu-check: the optional GPU packages did not install; their sections say skipped"; fi
	.venv/bin/python benchmarks/gpu_check.py --out benchmarks/gpu_check.md
	.venv/bin/python -m pytest -q -m gpu

bench: setup
	.venv/bin/python benchmarks/run_all.py

LINT_PATHS = src tests benchmarks scripts train.py eval.py

# format check + lint (what .ci/run runs before the tests); `make format` rewrites in place
lint: setup
	.venv/bin/ruff format --check $(LINT_PATHS)
	.venv/bin/ruff check $(LINT_PATHS)

format: setup
	.venv/bin/ruff format $(LINT_PATHS)
	.venv/bin/ruff check --fix $(LINT_PATHS)

clean-logs:
	rm -rf logs/ outputs/ multirun/
