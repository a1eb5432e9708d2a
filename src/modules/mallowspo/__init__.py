"""MallowsPO: the LightningModule (``module.py``) and its dispersion index (``dispersion.py``). ``module=mallowspo``
targets ``src.modules.mallowspo.MallowsPOModule``."""

from src.modules.mallowspo.module import MallowsPOModule

__all__ = ["MallowsPOModule"]
