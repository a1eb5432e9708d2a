"""MallowsPO's dispersion index ``w(x)``: where it comes from and how it is scaled (``module.dispersion``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DISPERSION_SOURCES = ("none", "entropy", "given")


@dataclass(frozen=True)
class Dispersion:
    """Args:
    source: ``none`` (DPO and the plug-in bases), ``entropy`` (``w = -c log Hbar`` from the frozen
        reference's normalised predictive entropy, the paper's), or ``given`` (a ``dispersion`` column).
    scale: ``c``, a positive number, or ``auto``: ``1 / mean(-log Hbar)`` over training pairs, so the
        mean weight is 1 and ``beta`` keeps its DPO meaning.
    """

    source: str
    scale: float | str

    def __post_init__(self) -> None:
        if self.source not in DISPERSION_SOURCES:
            raise ValueError(f"module.dispersion.source={self.source!r}; valid: {', '.join(DISPERSION_SOURCES)}")
        ok = self.scale == "auto" or (isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool))
        if not ok or (self.scale != "auto" and not self.scale > 0):
            raise ValueError(f"module.dispersion.scale must be a positive number or 'auto', got {self.scale!r}")

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)
