import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("segbench_engine_tiny", Path(__file__).with_name("_tiny.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.fixture
def tiny_env(monkeypatch):
    """The tiny helpers module, with 'tiny'/'tiny_tf' registered and ``load_data`` returning tiny data."""
    tiny.install(monkeypatch)
    tiny.TinySegmentation.calls = 0
    tiny.TinySegmentation.kill_after = None
    return tiny


@pytest.fixture(scope="module")
def tiny_module():
    return tiny
