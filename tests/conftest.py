"""Shared fixtures. No network: hub access is switched off before anything imports transformers."""

from __future__ import annotations

import os
import warnings

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_SILENT": "true",
}.items():
    os.environ[_k] = _v
# `make test` runs two pytest-xdist workers on two cores: one math thread each (and in the runs they launch),
# else 2 x 2 OpenMP threads spin against each other and torch-heavy tests slow down several times over
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_k, "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import src.utils.resolvers  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def compose_cfg(
    overrides: list[str] | None = None, *, config_name: str = "train", tmp_path: Path | None = None
) -> DictConfig:
    """Compose the real config tree (as ``train.py`` would) with paths pointed at ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.fixture(autouse=True)
def _seed_and_home(tmp_path, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def char_tok():
    from src.models.tokenizer import char_tokenizer

    return char_tokenizer()


@pytest.fixture
def cfg_train(tmp_path) -> DictConfig:
    """Default train config, shortened for tests: CPU, no logger, few steps."""
    cfg = compose_cfg(
        [
            "logger=csv",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "data.generator.num_examples=200",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path=tmp_path,
    )
    return cfg


# Files whose tests take minutes run first: `make test` spreads files over two workers (pytest-xdist, --dist
# loadfile), and a long file collected last would run alone at the end. Order within a file is unchanged.
LONG_FILES = ("test_default_runs.py", "test_resume.py", "test_fsdp.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))
