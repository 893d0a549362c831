"""`segbench run --ensembles`: flip TTA of every architecture and the top ensemble, built from the trained runs,
scored on the review's units, in the table and the statistics, priced by the harness."""

import json

import pytest
from click.testing import CliRunner

from segbench.bench.report.results import read_results_csv
from segbench.commands.run import run
from tests.bench.test_run import write_synthetic_data


def test_ensembles_join_the_review(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = write_synthetic_data(tmp_path / "data", splits=(("train", 10), ("val", 8)))
    out = tmp_path / "out"
    result = CliRunner().invoke(run, [str(data), "--archs", "unet,fcn", "--iterations", "3", "--out", str(out),
                                      "--set", "data.resize=[32,32]", "--no-progress", "--no-speed", "--lr", "paper", "--ensembles",
                                      "--ensemble-top", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    check_review_with_candidates(out)


def check_review_with_candidates(out):
    """The assertions on a finished `segbench run --ensembles` folder (unet and fcn, top 2)."""
    records = {r["name"]: r for r in json.loads((out / "candidates" / "candidates.json").read_text())["candidates"]}
    names = {"unet + TTA", "fcn + TTA", "ensemble of 2", "ensemble of 2 + TTA"}
    assert set(records) == names and not any(r["error"] for r in records.values())
    passes = {name: r["cost"]["forward_passes"] for name, r in records.items()}  # 2D images: horizontal flips
    assert passes == {"unet + TTA": 2, "fcn + TTA": 2, "ensemble of 2": 2, "ensemble of 2 + TTA": 4}
    assert all(r["reference_cost"]["forward_passes"] == 1 and r["cost"]["latency_ms"] > 0 for r in records.values())
    statistics = json.loads((out / "report" / "statistics.json").read_text())
    assert set(statistics["comparison"]["architectures"]) == names | {"unet", "fcn"}  # one family, same units
    summary = {row["arch"]: row for row in read_results_csv(out / "report" / "summary.csv")}
    for name in names:
        row, figures = summary[name], statistics["comparison"]["architectures"][name]
        assert row["val_unit_dice"] == pytest.approx(figures["mean"])
        reference = records[name]["reference"]
        assert row["vs_best_single"] == pytest.approx(figures["mean"] - statistics["comparison"]["architectures"][reference]["mean"])
        assert row["vs_best_single_low"] <= row["vs_best_single"] <= row["vs_best_single_high"]
        assert row["best_single_answer"] in {"better", "worse", "equivalent", "inconclusive"}
        assert row["latency_ms"] == pytest.approx(records[name]["cost"]["latency_ms"])
    markdown = (out / "report" / "report.md").read_text()
    assert "ensemble of 2 + TTA" in markdown and "Dice per ms" in markdown
