"""Every config group option composes; the CPU-capable combinations instantiate; bad config is clear."""

import itertools
from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from src.train import build
from src.utils.instantiate import config_choices
from tests.conftest import compose_cfg

EXTRA = {
    "preference_file": ["data.path=nonexistent.jsonl"],
    "bfcl": ["data.path=BFCL_v4_simple_python.json"],  # the record converter reads the path
    "hf_causal": ["model.name_or_path=some/model"],
    "hf_masked": ["model.name_or_path=some/model"],
}


def test_groups_exist():
    for group in (
        "module",
        "data",
        "model",
        "trainer",
        "logger",
        "callbacks",
        "experiment",
        "hparams_search",
        "debug",
        "paths",
        "hydra",
    ):
        assert config_choices(group), group


def _compose_resolve(ov, tmp_path):
    cfg = compose_cfg(ov, tmp_path=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (batch derivation included)
    assert (
        cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * cfg.trainer.devices == cfg.data.global_batch_size
    )


@pytest.mark.parametrize("model", config_choices("model"))
@pytest.mark.parametrize("data", config_choices("data"))
@pytest.mark.parametrize("module", config_choices("module"))
def test_compose_module_data_model(module, data, model, tmp_path):
    """Every module x data x model combination composes and resolves."""
    _compose_resolve(
        [f"module={module}", f"data={data}", f"model={model}", *EXTRA.get(data, []), *EXTRA.get(model, [])], tmp_path
    )


@pytest.mark.parametrize("model", config_choices("model"))
@pytest.mark.parametrize("trainer", config_choices("trainer"))
def test_compose_trainer_model(trainer, model, tmp_path):
    """Every trainer (strategy/precision) x model combination composes and resolves."""
    _compose_resolve([f"trainer={trainer}", f"model={model}", *EXTRA.get(model, [])], tmp_path)


# which data each module consumes (offline options only; gsm8k/math_file need a hub or a file)
PAIRS = {
    "mallowspo": ["sorting", "bandit"],
    "dpo": ["sorting", "bandit"],
    "sft": ["arithmetic", "gsm_symbolic"],
    "opd": ["arithmetic", "gsm_symbolic"],
    "diffpo": ["arithmetic", "countdown", "sudoku4"],
    "mdm_sft": ["arithmetic", "sudoku9"],
    "diffpo_eb": ["arithmetic", "parallel_mix"],
    "d1": ["arithmetic", "sudoku4"],
}
MODEL = {
    "diffpo": "tiny_masked",
    "mdm_sft": "tiny_masked",
    "diffpo_eb": "tiny_masked",
    "d1": "tiny_masked",
}  # the rest: tiny_causal
SMALL = {
    "sorting": "data.generator.num_examples=20",
    "bandit": "data.generator.pairs_per_context=4",
    "arithmetic": "data.generator.num_examples=20",
    "gsm_symbolic": "data.generator.num_examples=10",
    "countdown": "data.generator.num_examples=20",
    "sudoku4": "data.generator.num_examples=20",
    "sudoku9": "data.generator.num_examples=20",
    "parallel_mix": "data.generator.num_examples=320",
}


def test_every_module_has_data():
    assert set(PAIRS) == set(config_choices("module"))


@pytest.mark.parametrize(
    "module,data,logger,callbacks,trainer",
    [
        (m, d, lg, cb, tr)
        for m, ds in PAIRS.items()
        for d in ds
        for lg, cb, tr in itertools.product(["csv", "wandb", "many"], ["default", "none"], ["default", "ddp_sim"])
    ],
)
def test_instantiate_cpu_combinations(module, data, logger, callbacks, trainer, tmp_path):
    cfg = compose_cfg(
        [
            f"module={module}",
            f"data={data}",
            f"logger={logger}",
            f"callbacks={callbacks}",
            f"trainer={trainer}",
            SMALL[data],
            f"model={MODEL.get(module, 'tiny_causal')}",
        ],
        tmp_path=tmp_path,
    )
    objs = build(cfg)
    assert objs["trainer"].accumulate_grad_batches == cfg.trainer.accumulate_grad_batches
    objs["datamodule"].setup("fit")
    assert len(objs["datamodule"].train_set) > 0
    objs["module"].configure_model()
    assert objs["module"].policy is not None


TOOL_FIX = Path(__file__).resolve().parent / "fixtures" / "tool_use"
#: the data files an experiment requires (??? in its config), from the shipped fixtures
EXPERIMENT_EXTRA = {
    name: [f"data.path={TOOL_FIX / 'toolrl_rlla_sft.json'}"] for name in ("opd_tooluse", "opd_tooluse_teacher")
}
EXPERIMENT_EXTRA["opd_tooluse"] += [
    f"eval_tasks.api_bank.path={TOOL_FIX / 'api_bank_level1.json'}",
    f"eval_tasks.bfcl.path={TOOL_FIX / 'bfcl' / 'BFCL_v4_simple_python.json'}",
]


@pytest.mark.parametrize("name", config_choices("experiment") + config_choices("debug"))
def test_experiments_and_debug_compose(name, tmp_path):
    group = "experiment" if name in config_choices("experiment") else "debug"
    cfg = compose_cfg([f"{group}={name}", *EXPERIMENT_EXTRA.get(name, [])], tmp_path=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)
    from src.utils.config_checks import check_config

    check_config(cfg)  # every shipped experiment's values are in range


def test_wrong_data_for_module_is_clear(tmp_path):
    cfg = compose_cfg(
        ["module=opd", "data=sorting", "trainer.max_steps=1", "data.generator.num_examples=20"], tmp_path=tmp_path
    )
    objs = build(cfg)
    with pytest.raises(TypeError, match="OPDModule needs a PromptDataModule"):
        objs["trainer"].fit(objs["module"], datamodule=objs["datamodule"])


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
    cfg = compose_cfg(
        [
            "trainer.accumulate_grad_batches=2",
            "trainer.max_steps=1",
            "validate_before_fit=false",
            "data.generator.num_examples=100",
        ],
        tmp_path=tmp_path,
    )
    objs = build(cfg)
    with pytest.raises(
        ValueError, match="data.global_batch_size=32 but per-device batch 32 x accumulate_grad_batches 2"
    ):
        objs["trainer"].fit(objs["module"], datamodule=objs["datamodule"])


def test_fsdp_strategy_builds_with_decoder_layer_wrapping(tmp_path):
    """trainer=fsdp: the strategy object (not a GPU run: Lightning's FSDP needs CUDA) builds from the
    config, wraps each decoder/encoder layer class, and ZeRO-3 is one override on trainer=deepspeed."""
    import hydra
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.modernbert.modeling_modernbert import ModernBertEncoderLayer

    cfg = compose_cfg(["trainer=fsdp"], tmp_path=tmp_path)
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    wrapped = policy._module_classes if hasattr(policy, "_module_classes") else policy
    assert {LlamaDecoderLayer, ModernBertEncoderLayer} <= set(wrapped)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.strategy.sharding_strategy == "FULL_SHARD"
    ds = compose_cfg(["trainer=deepspeed", "trainer.strategy.stage=3"], tmp_path=tmp_path)
    assert ds.trainer.strategy.stage == 3 and ds.trainer.strategy._target_.endswith("DeepSpeedStrategy")


@pytest.mark.parametrize("name", config_choices("experiment"))
def test_manual_optimisation_experiments_do_not_accumulate(name, tmp_path):
    """DiFFPO optimises manually, which Lightning cannot combine with gradient accumulation: the LLaDA
    experiments set data.micro_batch_size=1 (48 micro-batches per step) and could not start."""
    for devices in (1, 8):
        cfg = compose_cfg([f"experiment={name}", f"trainer.devices={devices}"], tmp_path=tmp_path)
        if cfg.module._target_.endswith("DiFFPOModule"):
            assert cfg.trainer.accumulate_grad_batches == 1, (name, devices)


@pytest.mark.parametrize("search", ["opd_tooluse_table", "opd_tooluse_baselines"])
def test_tooluse_sweeps_compose(search, tmp_path):
    cfg = compose_cfg(
        ["experiment=opd_tooluse", f"hparams_search={search}", *EXPERIMENT_EXTRA["opd_tooluse"]], tmp_path=tmp_path
    )
    assert cfg.teacher.name_or_path.endswith("hf_model") and "opd_tooluse_teacher-" in cfg.teacher.name_or_path
    assert cfg.optimized_metric == "val/distill/log_ratio" and cfg.train == (search == "opd_tooluse_table")
