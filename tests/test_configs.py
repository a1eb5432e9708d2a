"""Every config group option composes; the CPU-capable combinations instantiate; bad config is clear."""

import itertools

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from src.train import build
from src.utils.instantiate import config_choices
from tests.conftest import compose_cfg

EXTRA = {"preference_file": ["data.path=nonexistent.jsonl"], "hf_causal": ["model.name_or_path=some/model"],
         "hf_masked": ["model.name_or_path=some/model"]}  # fmt: skip


def test_groups_exist():
    for group in ("module", "data", "model", "trainer", "logger", "callbacks", "experiment", "hparams_search",
                  "debug", "paths", "hydra"):  # fmt: skip
        assert config_choices(group), group


@pytest.mark.parametrize("trainer", config_choices("trainer"))
@pytest.mark.parametrize("model", config_choices("model"))
@pytest.mark.parametrize("data", config_choices("data"))
@pytest.mark.parametrize("module", config_choices("module"))
def test_compose_and_resolve(module, data, model, trainer, tmp_path):
    ov = [f"module={module}", f"data={data}", f"model={model}", f"trainer={trainer}"]
    ov += EXTRA.get(data, []) + EXTRA.get(model, [])
    cfg = compose_cfg(ov, tmp_path=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (batch derivation included)
    assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * cfg.trainer.devices == cfg.data.global_batch_size


@pytest.mark.parametrize(
    "module,data,logger,callbacks,trainer",
    list(itertools.product(config_choices("module"), ["sorting", "bandit"], ["csv", "wandb", "many"],
                           ["default", "none"], ["default", "cpu", "ddp_sim"])),
)  # fmt: skip
def test_instantiate_cpu_combinations(module, data, logger, callbacks, trainer, tmp_path):
    cfg = compose_cfg([f"module={module}", f"data={data}", f"logger={logger}", f"callbacks={callbacks}",
                       f"trainer={trainer}", "data.generator.num_examples=20" if data == "sorting" else "data.generator.pairs_per_context=4"],
                      tmp_path=tmp_path)  # fmt: skip
    objs = build(cfg)
    assert objs["trainer"].accumulate_grad_batches == cfg.trainer.accumulate_grad_batches
    objs["datamodule"].setup("fit")
    assert len(objs["datamodule"].train_set) > 0
    objs["module"].configure_model()
    assert objs["module"].policy is not None


@pytest.mark.parametrize("name", config_choices("experiment") + config_choices("debug"))
def test_experiments_and_debug_compose(name, tmp_path):
    group = "experiment" if name in config_choices("experiment") else "debug"
    cfg = compose_cfg([f"{group}={name}"], tmp_path=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)


def test_hparams_search_compose(tmp_path):
    cfg = compose_cfg(["hparams_search=mallowspo_grid"], tmp_path=tmp_path)
    assert cfg.optimized_metric == "val/rewards/accuracy"


def test_unknown_option_names_allowed_values(tmp_path):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["module=ppo"], tmp_path=tmp_path)
    msg = str(e.value)
    assert "module/ppo" in msg and "mallowspo" in msg and "dpo" in msg


def test_batch_not_divisible_by_world_size(tmp_path):
    cfg = compose_cfg(["data.global_batch_size=30", "trainer.devices=4"], tmp_path=tmp_path)
    with pytest.raises(Exception, match="not divisible by the world size 4"):
        OmegaConf.to_container(cfg, resolve=True)


def test_bad_module_value_is_clear(tmp_path):
    cfg = compose_cfg(["module.variant=kto"], tmp_path=tmp_path)
    tok = hydra.utils.instantiate(cfg.model.tokenizer)
    with pytest.raises(Exception, match="module.variant='kto'; valid: dpo, ipo"):
        hydra.utils.instantiate(cfg.module, tokenizer=tok)


def test_hand_set_accumulation_is_caught(tmp_path):
    cfg = compose_cfg(["trainer.accumulate_grad_batches=2", "trainer.max_steps=1", "validate_before_fit=false",
                       "data.generator.num_examples=100"], tmp_path=tmp_path)  # fmt: skip
    objs = build(cfg)
    with pytest.raises(ValueError, match="data.global_batch_size=32 but per-device batch 32 x accumulate_grad_batches 2"):
        objs["trainer"].fit(objs["module"], datamodule=objs["datamodule"])
