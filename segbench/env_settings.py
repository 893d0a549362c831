"""Numbers segbench reads from its environment variables (a timeout, a wait), parsed once, with one error:
``SEGBENCH_X='soon': expected ...``, naming the variable and what it takes."""

from __future__ import annotations

import math
import os
from typing import Mapping

__all__ = ["env_seconds"]


def env_seconds(name: str, default: float, *, zero: bool = False, unit: str = "seconds",
                environ: Mapping[str, str] = os.environ) -> float:
    """The number in ``environ[name]`` (``default`` where unset or blank): positive, or also 0 with ``zero``.
    ``ValueError`` otherwise, naming the variable, its value and what it takes (``unit``: how to call it)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or not (value >= 0 if zero else value > 0):
        wanted = "0 or more" if zero else "a positive number of"
        raise ValueError(f"{name}={raw!r}: expected {wanted} {unit}, e.g. {default:g}")
    return value
