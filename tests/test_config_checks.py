"""Wrong config values fail before anything is built, in one line that names the key (they used to be
50-75-line traces, and ``module.beta=0`` / a negative lr only surfaced after the first validation)."""

import os
import subprocess
import sys

import pytest

from src.utils.config_checks import ConfigError, check_config
from tests.conftest import ROOT, compose_cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.global_batch_size=abc", "data.global_batch_size='abc': must be an integer >= 1"),
        ("data.global_batch_size=0", "data.global_batch_size=0: must be an integer >= 1"),
        ("data.micro_batch_size=2.5", "data.micro_batch_size=2.5: must be an integer >= 1 or null"),
        ("module.beta=0", "module.beta=0: must be a number > 0"),
        ("module.beta=-0.1", "module.beta=-0.1: must be a number > 0"),
        ("module.optimizer.lr=-1e-3", "module.optimizer.lr=-0.001: must be a number > 0"),
        ("trainer.devices=0", "trainer.devices=0: must be an integer >= 1, -1, 'auto'"),
        ("trainer.num_nodes=two", "trainer.num_nodes='two': must be an integer >= 1"),
        ("trainer.max_steps=0", "trainer.max_steps=0: must be an integer >= 1 (or -1: no limit)"),
        ("seed=abc", "seed='abc': must be an integer or null"),
    ],
)
def test_bad_values_name_their_key(override, message):
    with pytest.raises(ConfigError) as e:
        check_config(compose_cfg([override]))
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["module=opd"],
        ["module=diffpo", "data=arithmetic", "model=tiny_masked"],
        ["trainer.devices=auto"],
        ["seed=null"],
    ],
)
def test_shipped_configs_pass(overrides):
    check_config(compose_cfg(overrides))


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "module.beta=0", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "config error: module.beta=0: must be a number > 0"
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "run_history.jsonl").exists()  # a wrong value is not a start of the run
