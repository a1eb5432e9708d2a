"""Evaluate a checkpoint, or a model on a math benchmark.

python eval.py ckpt_path=logs/train/runs/<ts>/checkpoints/last.ckpt        # validate a run
python eval.py task=gsm8k model=smollm2 task.path=<test.jsonl> task.limit=100   # GSM8K pass@1
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.eval import evaluate, evaluate_task  # noqa: E402
from src.train import finish_loggers  # noqa: E402
from src.utils.user_errors import exit_on_user_error  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    try:
        _, value = evaluate_task(cfg) if cfg.get("task") else evaluate(cfg)
    except Exception as exc:  # a wrong config value or a data problem: one line, exit 2 (src.utils.user_errors)
        exit_on_user_error(exc, cfg.paths.get("output_dir"), cfg.get("task_name"))
        raise
    finally:
        finish_loggers()
    return value


if __name__ == "__main__":
    main()
