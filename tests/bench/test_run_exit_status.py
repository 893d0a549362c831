"""Issue 15, item 6: `segbench run` checks the data once, before any run, and exits non-zero when a run failed."""

import numpy as np
from click.testing import CliRunner
from PIL import Image

import segbench.bench.protocol.sweep as sweep
from segbench.bench.protocol.record import WorkerResult
from segbench.commands.run import run


def _data(root, stray: bool):
    for split, count in (("train", 4), ("val", 2)):
        for kind in ("images", "masks"):
            (root / kind / split).mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((16, 16), np.uint8)
            mask[4:10, 4:10] = 255
            if stray and split == "train" and i == 1:
                mask[0, :8] = 128
            Image.fromarray(mask).save(root / "masks" / split / f"{split}{i}.png")
            Image.fromarray((mask // 2 + 20).astype(np.uint8)).save(root / "images" / split / f"{split}{i}.png")
    return root


def test_bad_data_fails_once_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data, out = _data(tmp_path / "data", stray=True), tmp_path / "out"
    result = CliRunner().invoke(run, [str(data), "--archs", "unet,segformer", "--out", str(out), "--no-speed",
                                      "--no-progress"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "train1.png" in errors[0] and "128: 8 px" in errors[0]
    assert not any(out.glob("*-s*-*"))  # no run folder: nothing started


def test_exit_status_is_nonzero_when_runs_failed_and_the_report_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data, out = _data(tmp_path / "data", stray=False), tmp_path / "out"
    monkeypatch.setattr(sweep, "_execute", lambda planned, progress: WorkerResult(
        hash=planned.config_hash, error="RuntimeError while training: boom"))
    # batch 4: the 4 training images must fill a batch, or the sweep is refused before any run; --iterations: no
    # time budget, whose plan would time the real models first (test_budget_plan.py)
    result = CliRunner().invoke(run, [str(data), "--archs", "unet,segformer", "--out", str(out), "--no-speed",
                                      "--no-progress", "--set", "train.batch_size=4", "--iterations", "2"])
    assert result.exit_code == 1, result.output
    assert "Error: 2 of 2 run(s) failed" in result.output
    assert (out / "report" / "index.html").is_file()
    assert "boom" in (out / "report" / "index.html").read_text()


def interruptible() -> None:
    """For a child the test sends SIGINT: SIGINT as a terminal leaves it. A job started in the background
    of a non-interactive shell inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt
    handler, so without this the test would hang wherever the suite itself runs in the background."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_sweep_with_one_message_and_no_traceback(tmp_path):
    # Issue 15, item 8: as a terminal's Ctrl-C does, SIGINT goes to the whole process group (driver and worker).
    import os
    import signal
    import subprocess
    import sys
    import time

    data, out = _data(tmp_path / "data", stray=False), tmp_path / "out"
    env = {**os.environ, "SEGBENCH_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "segbench", "run", str(data), "--archs", "unet", "--iterations", "100000",
               "--out", str(out), "--no-speed", "--no-progress", "--lr", "paper", "--set", "train.batch_size=4"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=interruptible)
    deadline = time.monotonic() + 120
    while not list(out.glob("unet-*/log.jsonl")) and time.monotonic() < deadline:  # the worker is training
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    assert "interrupted: run the same command again to continue where it stopped" in stderr
