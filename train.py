"""Train entry point: ``python train.py [group=option ...] [key=value ...]`` (Hydra).

Default: a tiny offline MallowsPO run on CPU (sorting preferences); see README.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402

import hydra  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.train import finish_loggers, run  # noqa: E402
from src.utils.config_checks import ConfigError  # noqa: E402
from src.utils.sweep import finished_job, in_multirun, record_failure  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    done, value = finished_job(cfg.paths.output_dir, cfg.get("optimized_metric"))
    if done:  # a re-run of a sweep with a fixed hydra.sweep.dir resumes: finished jobs are skipped
        return value
    try:
        _, value = run(cfg)
    except ConfigError as exc:  # a wrong value: one line naming the key, not a trace
        if in_multirun() and cfg.get("continue_on_error", True):
            return record_failure(exc)
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:
        # preempted: last.ckpt was written at the step boundary (src.callbacks.checkpointing); exit like a
        # process killed by SIGTERM, so a scheduler (or a sweep) never takes it for a finished run
        print("SIGTERM: stopped after writing last.ckpt; resume with ckpt_path=last", file=sys.stderr)
        sys.exit(143)
    except Exception as exc:
        # -m sweeps: one crashed job must not stop the others (recorded; the sweep exits 1 at the end)
        if not (in_multirun() and cfg.get("continue_on_error", True)):
            raise
        value = record_failure(exc)
    finally:
        finish_loggers()
    return value  # the sweeper's objective (cfg.optimized_metric)


if __name__ == "__main__":
    main()
