"""The peer libraries (torchvision, timm, segmentation_models_pytorch, transformers) for the tests that need
them: they skip, naming what is missing, outside the peers environment (`make peers`), and fail instead where
``SEGBENCH_REQUIRE_PEERS=1`` (CI's run in that environment, so a broken install cannot pass as all skipped)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRED = os.environ.get("SEGBENCH_REQUIRE_PEERS") == "1"


def library(name: str) -> ModuleType:
    """The module, or a skip (a failure under ``SEGBENCH_REQUIRE_PEERS=1``) that says how to get it. A
    torchvision built for another torch fails at import: that counts as missing."""
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - missing or not importable: either way the test cannot run
        reason = (f"needs {name} ({type(err).__name__}: {err}); run `make peers` and "
                  ".venv-peers/bin/python -m pytest")
        (pytest.fail if REQUIRED else pytest.skip)(reason)


def imports(*names: str) -> bool:
    """Whether every module imports here."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - missing, or built for another torch
            return False
    return True
