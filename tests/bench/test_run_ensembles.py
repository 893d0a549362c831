"""`segbench run --ensembles`: flip TTA of every architecture and the top ensemble, built from the trained runs,
scored on the review's units, in the table and the statistics, priced by the harness."""

import json
import statistics

import pytest
from click.testing import CliRunner

from segbench.bench.report.evidence import RunScores, read_run_scores, unit_scores
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
        evaluated = records[name]["metrics"]["-,0"]  # HD95, NSD and mIoU as its evaluation measured them
        for key in ("hd95_fg", "nsd_fg", "mIoU"):
            assert row[f"val_{key}"] == pytest.approx(evaluated[key])
    markdown = (out / "report" / "report.md").read_text()
    assert "ensemble of 2 + TTA" in markdown and "Dice per ms" in markdown


def test_fold_ensembles_are_compared_with_one_fold_model_on_the_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = write_synthetic_data(tmp_path / "data", splits=(("", 20),))  # pooled: folds over cases, a test split carved
    out = tmp_path / "out"
    result = CliRunner().invoke(run, [str(data), "--archs", "unet", "--iterations", "2", "--out", str(out), "--folds", "2",
                                      "--set", "data.resize=[32,32]", "--set", "data.test_fraction=0.4", "--set", "train.batch_size=4", "--no-progress", "--no-speed", "--lr", "paper",
                                      "--ensembles"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in json.loads((out / "candidates" / "candidates.json").read_text())["candidates"]}
    folds = records["unet 2-fold ensemble"]
    assert (folds["kind"], folds["split"], folds["error"], folds["reference"]) == ("folds", "test", "", "unet")
    assert sorted(folds["member_runs"]["-,0"]) == sorted(p.name for p in out.glob("unet-f*-s0-*"))  # both folds
    assert (folds["cost"]["forward_passes"], folds["reference_cost"]["forward_passes"]) == (2, 1)
    ensemble = read_run_scores(out / folds["folders"]["-,0"], "test").cases
    singles = [read_run_scores(p, "test").cases for p in sorted(out.glob("unet-f*-s0-*"))]
    tested = {r["case"] for r in ensemble}
    assert len(tested) >= 4 and tested == {r["case"] for r in singles[0]} == {r["case"] for r in singles[1]}
    # The section: the ensemble's difference from one fold model is the difference of their mean test Dice.
    section = json.loads((out / "report" / "fold_ensembles.json").read_text())
    rows = {row[0]: row for row in section["rows"]}
    assert set(rows) == {"unet, one fold model", "unet 2-fold ensemble"}
    mean = lambda cases: statistics.fmean(unit_scores(RunScores(cases, []), "case").values())
    single_mean = statistics.fmean(mean(cases) for cases in singles)
    assert float(rows["unet 2-fold ensemble"][2].split()[0]) == pytest.approx(mean(ensemble) - single_mean, abs=1e-4)
    assert rows["unet 2-fold ensemble"][3] == "not tested"  # fewer than 8 test cases: no claim
    assert any("cannot support one" in note for note in section["notes"])
    markdown = (out / "report" / "report.md").read_text()
    assert "## Fold ensembles on the test split" in markdown and "unet 2-fold ensemble" in markdown
    statistics_json = json.loads((out / "report" / "statistics.json").read_text())
    assert "unet 2-fold ensemble" not in statistics_json["comparison"]["architectures"]  # not in the validation family


def test_the_fold_section_counts_only_the_finished_fold_runs_as_replicates(tmp_path):
    """Its intro names the runs the comparison uses (the finished ones) and how many were left out."""
    from segbench.bench.protocol.record import CandidateRecord, ReviewRun
    from segbench.bench.report.fold_ensembles import replicates

    def fold_run(fold, seed, status, label="unet"):
        return ReviewRun(label, label, seed, fold, tmp_path / f"{label}-f{fold}s{seed}", {}, {"status": status})

    plan = [fold_run(0, 0, "ok"), fold_run(1, 0, "ok"), fold_run(0, 1, "failed"), fold_run(1, 1, "ok"),
            fold_run(0, 0, "ok", "segnet"), fold_run(1, 0, "ok", "segnet"),
            ReviewRun("unet", "unet", 0, None, tmp_path / "unet-s0", {}, {"status": "ok"})]  # no fold: not one
    folds = [CandidateRecord("unet 2-fold ensemble", "folds", ["unet"], []),
             CandidateRecord("segnet 2-fold ensemble", "folds", ["segnet"], [])]
    assert replicates(plan, folds) == "unet: 3 runs (1 unfinished, left out), segnet: 2 runs"
