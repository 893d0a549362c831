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


TINY_CLI_SETTINGS = ["--set", "train.iterations=40", "--set", "train.val_interval=20", "--set", "train.lr=0.05",
                     "--set", "train.batch_size=4", "--set", "train.device=cpu", "--set", "eval.test_at_end=false"]


@pytest.fixture(scope="session")
def tiny_cli_run(tmp_path_factory):
    """One tiny run trained through ``segbench train`` for the command-line tests (copy it before damaging it)."""
    from click.testing import CliRunner

    from segbench.cli import main

    out = tmp_path_factory.mktemp("cli") / "run"
    with pytest.MonkeyPatch.context() as mp:
        tiny.install(mp)
        result = CliRunner().invoke(main, ["train", "--arch", "tiny", "--out", str(out), "--quiet", *TINY_CLI_SETTINGS],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "tiny on tiny: best dice_fg_per_case" in result.output and "square" in result.output
    return out
