"""Issue 15, item 6: `segbench run` checks the data once, before any run, and exits non-zero when a run failed."""

import numpy as np
from click.testing import CliRunner
from PIL import Image

import segbench.bench.sweep as sweep
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
    monkeypatch.setattr(sweep, "_execute", lambda planned, progress: {
        "hash": planned.config_hash, "status": "failed", "error": "RuntimeError while training: boom"})
    result = CliRunner().invoke(run, [str(data), "--archs", "unet,segformer", "--out", str(out), "--no-speed",
                                      "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "Error: 2 of 2 run(s) failed" in result.output
    assert (out / "report" / "index.html").is_file()
    assert "boom" in (out / "report" / "index.html").read_text()
