"""segbench: faithful semantic-segmentation architectures, trained and reviewed under one protocol.

Packages by role: ``models`` (architectures, encoders, registry), ``checkpoints`` (reading, converting and
loading weights), ``data`` and ``config``, ``engine`` (training, evaluation, inference), ``export`` (ONNX),
``bench`` (``measure`` times and counts, ``protocol`` plans and runs the review, ``report`` writes it) and
``commands`` (the CLI). What may import what is written once, in ``segbench/house_rules.py``, which
``tests/test_import_rules.py`` enforces.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["build_model", "build_pretrained_model", "build_encoder", "list_models", "list_encoders", "model_options",
           "__version__"]

# Imported on first use, so the torch-free parts (the report, its records, the statistics) load without torch.
_LAZY = {"build_model": "segbench.models", "build_pretrained_model": "segbench.checkpoints", "build_encoder": "segbench.models", "list_models": "segbench.models",
         "list_encoders": "segbench.models", "model_options": "segbench.models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segbench' has no attribute {name!r}")
