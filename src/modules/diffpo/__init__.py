"""DiFFPO: the LightningModule (``module.py``) and the parts only it uses: the knob controller (``controller.py``)
and the surrogate likelihood's scoring forward (``surrogate.py``). ``module=diffpo`` targets
``src.modules.diffpo.DiFFPOModule``."""

from src.modules.diffpo.module import DiFFPOModule

__all__ = ["DiFFPOModule"]
