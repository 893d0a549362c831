"""segbench: faithful semantic-segmentation architectures, trained and reviewed under one protocol.

Packages, and the one direction they import in (``tests/test_import_rules.py`` enforces it):

- ``models`` (architectures, encoders, registry) imports only torch;
- ``checkpoints`` (reading, converting and loading weights) may import ``models``;
- ``data`` (layouts, checks, cache, splits, datasets) imports neither;  ``config`` may import ``data``;
- ``engine`` (training, evaluation, inference) may import ``models``, ``checkpoints``, ``data``, ``config``;
- ``export`` (ONNX) may import the engine's neighbours below it (``models``, ``config``, ``data``);
- ``bench.measure`` (the timing harness, FLOPs, speed, peers) may import ``engine`` and ``export``;
  ``bench.protocol`` (profiles, sweep, workers, typed run records) may import ``bench.measure``;
  ``bench.report`` (columns, tables, statistics, plots, HTML/Markdown) imports no torch and reads only
  the typed records of ``bench.protocol.record``; ``bench.review`` assembles the report from them;
- ``commands`` (the CLI) may import anything, and nothing imports ``commands``. No package cycles.

Leaves anyone may import: ``jsonio``, ``run_files``, ``stats`` and ``comparison`` (numpy and scipy only: the
statistics the verdict runs), and ``bench.protocol.record``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["build_model", "build_encoder", "list_models", "list_encoders", "model_options", "__version__"]

# Imported on first use, so the torch-free parts (the report, its records, the statistics) load without torch.
_LAZY = {"build_model": "segbench.checkpoints", "build_encoder": "segbench.models", "list_models": "segbench.models",
         "list_encoders": "segbench.models", "model_options": "segbench.models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segbench' has no attribute {name!r}")
