"""Experiment stages cached by content (``${stage:...}``, src/utils/stages.py)."""

import json
import time

from omegaconf import OmegaConf

from src.utils.stages import MARKER, ensure_stages, is_complete
from tests.conftest import compose_cfg

TINY_STAGE = (
    "opd_arith_teacher,trainer.max_steps=2,trainer.val_check_interval=2,validate_before_fit=false,"
    "model.policy.hidden_size=16,model.policy.num_layers=1,model.policy.num_heads=2,"
    "data.generator.num_examples=40,trainer.enable_progress_bar=false,callbacks.model_checkpoint=null,"
    "callbacks.sample_table=null,logger=csv,module.eval.n=1,module.eval.k=1"
)


def _cfg(tmp_path, stage=TINY_STAGE):
    cfg = compose_cfg(["module=opd", "teacher=hf_causal", "teacher.name_or_path=unset"], tmp_path=tmp_path)
    name, *overrides = stage.split(",")
    args = ",".join([name, *(f"'{o}'" for o in overrides)])  # key=value arguments are quoted strings
    cfg.teacher.name_or_path = f"${{stage:{args}}}"
    return cfg


def test_same_config_same_folder_changed_config_new_folder(tmp_path):
    a = OmegaConf.select(_cfg(tmp_path), "teacher.name_or_path")
    b = OmegaConf.select(_cfg(tmp_path), "teacher.name_or_path")
    c = OmegaConf.select(_cfg(tmp_path, TINY_STAGE + ",seed=5"), "teacher.name_or_path")
    assert a == b and a != c
    assert a.startswith(str(tmp_path / "cache" / "stages" / "opd_arith_teacher-")) and a.endswith("/hf_model")
    # paths, loggers and callbacks do not define what a stage trains
    d = OmegaConf.select(_cfg(tmp_path, TINY_STAGE + ",logger=many"), "teacher.name_or_path")
    assert d == a


def test_a_stage_is_built_once_and_rebuilt_when_incomplete(tmp_path):
    cfg = _cfg(tmp_path)
    built = ensure_stages(cfg)
    folder = built[0]
    assert len(built) == 1 and is_complete(folder)
    record = json.loads((folder / MARKER).read_text())
    assert record["experiment"] == "opd_arith_teacher" and "val/loss" in record["metrics"]
    # the stage's run records its own command and config groups, not the outer run's (module=opd ...)
    start = json.loads((folder / "run" / "run_history.jsonl").read_text().splitlines()[0])
    assert start["overrides"][0] == "experiment=opd_arith_teacher" and start["choices"]["module"] == "sft"
    stamp = (folder / MARKER).stat().st_mtime_ns
    time.sleep(0.01)
    assert ensure_stages(_cfg(tmp_path)) == []  # cached: nothing trained
    assert (folder / MARKER).stat().st_mtime_ns == stamp
    (folder / MARKER).unlink()  # as a stage killed before it finished leaves it
    assert ensure_stages(_cfg(tmp_path)) == [folder] and is_complete(folder)


def test_composing_builds_nothing_and_unused_stages_are_not_built(tmp_path):
    cfg = compose_cfg(["experiment=opd_arith"], tmp_path=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)
    assert not (tmp_path / "cache" / "stages").exists()
    # tiny models instead of the experiment's: its teacher/student stages are named but never used
    cfg = compose_cfg(["experiment=opd_arith", "model=tiny_causal", "teacher=tiny_causal"], tmp_path=tmp_path)
    assert "stages/opd_arith_teacher-" in cfg.teacher.name_or_path
    assert ensure_stages(cfg) == [] and not (tmp_path / "cache" / "stages").exists()
