"""Strict JSON files, written atomically: the one writer of every JSON file segbench leaves in a run
folder or report (``metrics.json``, ``bench.json``, ``speed.json``, ...), through ``run_files.writable``
(no links, no file of the user's). Imports nothing but the standard library and ``segbench.run_files``
(standard library only), so any layer may use it."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from segbench.run_files import writable

__all__ = ["json_safe", "write_json", "digest"]


def digest(values: Any) -> str:
    """Ten hex digits of the SHA-256 of ``values`` as compact sorted-key JSON: the identity of a run folder's
    settings (a sweep's run, a budget plan, an anchor's run), equal for equal settings whatever their order."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def json_safe(value: Any) -> Any:
    """NaN/inf -> None (strict JSON: ``null`` means undefined), numpy scalars -> Python numbers, recursively."""
    if hasattr(value, "item") and not isinstance(value, (dict, list, tuple, str)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(values: Any, path: str | Path) -> None:
    """Write strict JSON atomically: a temporary file in the same folder, then ``os.replace``, so a
    process killed mid-write leaves the previous file (or none), never half of one."""
    path = writable(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(values), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
