"""Train entry point: ``python train.py [group=option ...] [key=value ...]`` (Hydra).

Default: a tiny offline MallowsPO run on CPU (sorting preferences); see README.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.train import finish_loggers, run  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        _, value = run(cfg)
    finally:
        finish_loggers()
    return value  # the sweeper's objective (cfg.optimized_metric)


if __name__ == "__main__":
    main()
