"""The launcher seam: ``segbench run`` knows no launcher by name; a new one is a module and a line in LAUNCHERS."""

import sys
import textwrap

import pytest
from click.testing import CliRunner

from segbench.bench.protocol import sweep
from segbench.bench.protocol.sweep import LocalLauncher, make_launcher
from segbench.commands.run import run

from tests.bench.test_run import write_synthetic_data

THIRD = textwrap.dedent('''
    from segbench.bench.protocol.sweep import LocalLauncher

    CALLS = []


    class ReverseLauncher(LocalLauncher):
        """Runs the plan last run first, and says what it was asked."""

        where = "by the reverse launcher"

        def __init__(self, say=print, *, ray_address=None):
            super().__init__(say)
            CALLS.append(("init", ray_address))

        def connect(self, plan, out):
            CALLS.append(("connect", len(plan)))

        def launch(self, runs, state):
            CALLS.append(("launch", [r.arch for r in runs]))
            super().launch(list(reversed(runs)), state)

        def call(self, fn, *args, **kwargs):
            CALLS.append(("call", fn.__name__))
            return super().call(fn, *args, **kwargs)

        def close(self):
            CALLS.append(("close",))
''')


def test_make_launcher_refuses_what_it_does_not_know():
    assert isinstance(make_launcher("local", {}), LocalLauncher)
    with pytest.raises(ValueError, match="no launcher 'slurm'; known: local, ray"):
        make_launcher("slurm", {})
    with pytest.raises(ValueError, match="--gpus-per-run: not an option of --launcher local"):
        make_launcher("local", {"gpus_per_run": 1})


def test_a_third_launcher_is_a_module_and_a_line(tmp_path, monkeypatch):
    (tmp_path / "third_launcher.py").write_text(THIRD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sweep.LAUNCHERS, "reverse", "third_launcher:ReverseLauncher")
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = write_synthetic_data(tmp_path / "data", splits=(("train", 8), ("val", 2)))
    args = [str(data), "--archs", "unet,segnet", "--iterations", "2", "--out", str(tmp_path / "out"), "--set",
            "data.resize=[32,32]", "--no-progress", "--launcher", "reverse", "--ray-address", "somewhere"]
    result = CliRunner().invoke(run, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    calls = sys.modules["third_launcher"].CALLS
    assert calls == [("init", "somewhere"), ("connect", 2), ("launch", ["unet", "segnet"]),
                     ("call", "measure_review_speed"), ("close",)]
    assert "speed: measuring by the reverse launcher" in result.output
    starts = [line for line in result.output.splitlines() if line.endswith(": starting")]
    assert "segnet" in starts[0] and "unet" in starts[1]  # its order, not the plan's
