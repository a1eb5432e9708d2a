"""Small typed containers shared by every loss."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class LossOutput(NamedTuple):
    """What every loss returns.

    Attributes:
        loss: scalar tensor to back-propagate.
        metrics: detached tensors (never ``.item()``: no device sync); the module logs them
            under ``stage/group/name``.
    """

    loss: Tensor
    metrics: dict[str, Tensor]
