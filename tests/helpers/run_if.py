"""``RunIf``: skip tests whose hardware or packages are missing (importlib, not pkg_resources)."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def RunIf(*, min_gpus: int = 0, packages: tuple[str, ...] = ()):  # noqa: N802 - LHT's name
    reasons = []
    if min_gpus and torch.cuda.device_count() < min_gpus:
        reasons.append(f"needs {min_gpus} GPU(s)")
    for p in packages:
        if importlib.util.find_spec(p) is None:
            reasons.append(f"needs package {p}")
    marks = [pytest.mark.skipif(bool(reasons), reason="; ".join(reasons))]
    if min_gpus:
        marks.append(pytest.mark.gpu)

    def deco(fn):
        for m in marks:
            fn = m(fn)
        return fn

    return deco
