"""Train entry point: ``python train.py [group=option ...] [key=value ...]`` (Hydra).

Default: a tiny offline MallowsPO run on CPU (sorting preferences); see README.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging  # noqa: E402
import sys  # noqa: E402

import hydra  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.train import finish_loggers, run  # noqa: E402
from src.utils.launch import is_run_writer  # noqa: E402
from src.utils.sweep import finished_job, in_multirun, record_failure  # noqa: E402
from src.utils.user_errors import exit_on_user_error  # noqa: E402


def quiet_rank() -> None:
    """The job's other ranks say errors only: one summary, one set of warnings and progress bars per job."""
    import warnings

    for name in ("", "lightning", "lightning.pytorch", "lightning.fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if not is_run_writer():
        quiet_rank()
    done, value = finished_job(cfg.paths.output_dir, cfg.get("optimized_metric"))
    if done:  # a re-run of a sweep with a fixed hydra.sweep.dir resumes: finished jobs are skipped
        return value
    try:
        _, value = run(cfg)
    except SIGTERMException:
        # preempted: last.ckpt was written at the step boundary (src.callbacks.checkpointing); exit like a
        # process killed by SIGTERM, so a scheduler (or a sweep) never takes it for a finished run
        print("SIGTERM: stopped after writing last.ckpt; resume with ckpt_path=last", file=sys.stderr)
        sys.exit(143)
    except Exception as exc:
        # -m sweeps: one crashed job must not stop the others (recorded; the sweep exits 1 at the end)
        if in_multirun() and cfg.get("continue_on_error", True):
            return record_failure(exc)
        # a wrong config value, a data problem, a busy run folder: one line, exit 2 (src.utils.user_errors)
        exit_on_user_error(exc, cfg.paths.get("output_dir"), cfg.get("task_name"))
        raise
    finally:
        finish_loggers()
    return value  # the sweeper's objective (cfg.optimized_metric)


if __name__ == "__main__":
    main()
