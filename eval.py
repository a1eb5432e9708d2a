"""Evaluate a checkpoint, or a model on a math benchmark.

python eval.py ckpt_path=logs/train/runs/<ts>/checkpoints/last.ckpt        # validate a run
python eval.py task=gsm8k model=smollm2 task.path=<test.jsonl> task.limit=100   # GSM8K pass@1
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.eval import evaluate, evaluate_task  # noqa: E402
from src.train import finish_loggers  # noqa: E402
from src.utils.config_checks import ConfigError  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    try:
        _, value = evaluate_task(cfg) if cfg.get("task") else evaluate(cfg)
    except ConfigError as exc:  # a wrong value: one line naming the key, not a trace
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        finish_loggers()
    return value


if __name__ == "__main__":
    main()
