"""Run the entry points as a user types them: a fresh process, offline, from another working directory, with
SIGINT at its default whatever launched the tests (a background ``make test &`` hands its children SIGINT
ignored), and with no traceback switch the user did not set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env(cwd: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROJECT_ROOT": str(cwd), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env


def run_script(
    script: str, args: list[str], cwd: Path, *, timeout: int = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python <script> <args>`` in ``cwd`` (``PROJECT_ROOT=cwd``), output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=cli_env(cwd, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_default_signals,
    )


def hold_run_lock(run_dir: Path, seconds: int = 120) -> subprocess.Popen[str]:
    """Another live process holding ``run_dir``'s run lock (returns once it holds it; kill it when done)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from src.utils.run_lock import lock_run_dir; l = lock_run_dir(sys.argv[1]); "
            f"print('locked', flush=True); time.sleep({seconds})",
            str(run_dir),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder
