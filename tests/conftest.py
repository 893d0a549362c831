import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _plan_does_not_wait(monkeypatch):
    """A time budget's plan measures at once: it waits for a busy machine to quiet down (up to 2 minutes),
    which a test run beside other work must not (tests of the wait set it themselves)."""
    monkeypatch.setenv("SEGBENCH_PLAN_WAIT", "0")
