"""A deployment budget (``segbench run --latency-budget/--memory-budget/--flops-budget``), on constructed run
records (no training): which architectures fit, the comparison run over those alone, the verdict's budget
sentences (outside, by how much; not measured; near the limit; nothing fits), deployment_budget.json, the figure's line."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from segbench.bench.report.deployment import DeploymentBudget, parse_flops, parse_latency, parse_memory, split_by_budget  # noqa: E402
from segbench.bench.report.evidence import RunKey, RunScores, gather  # noqa: E402
from segbench.bench.report.plots import draw_budget  # noqa: E402
from segbench.bench.report.results import aggregate  # noqa: E402
from segbench.bench.report.results import read_results_csv  # noqa: E402
from segbench.bench.report.verdict import verdict  # noqa: E402
from segbench.bench.report.review import _verdict  # noqa: E402

S0, S1 = RunKey(None, 0), RunKey(None, 1)
COSTS = ["latency_ms", "infer_peak_mb", "gflops"]


def _scores(dice: np.ndarray) -> RunScores:
    return RunScores([{"case": f"case{i:02d}", "class": "fg", "dice": float(v), "ref_empty": False}
                      for i, v in enumerate(dice)], [])


def _review(latencies: dict[str, list[float | None]], means: dict[str, float], seed: int = 0):
    """Runs (two seeds each) with the given latency per seed and Dice around ``means`` on 30 cases."""
    rng = np.random.default_rng(seed)
    case = rng.normal(0, 0.05, 30)
    per_arch, rows = {}, []
    for arch, values in latencies.items():
        per_arch[arch] = {}
        for key, latency in zip((S0, S1), values):
            per_arch[arch][key] = _scores(np.clip(means[arch] + case + rng.normal(0, 0.01, 30), 0, 1))
            rows.append({"arch": arch, "status": "ok", "seed": key.seed, "latency_ms": latency, "infer_peak_mb": 50.0,
                         "gflops": 1.0, "device_name": "AMD EPYC (test)"})
    return per_arch, rows, aggregate(rows, COSTS)


def test_parsing_budgets_into_the_tables_units():
    assert parse_latency("20ms") == 20 and parse_latency("0.02s") == 20 and parse_latency("20") == 20
    assert parse_memory("300MB") == 300 and parse_memory("1.5GB") == 1500
    assert parse_flops("5") == 5 and parse_flops("500MFLOPs") == pytest.approx(0.5) and parse_flops("5GFLOPs") == 5
    for bad in ("fast", "20 parsecs", "0ms", "-3ms", "inf"):
        with pytest.raises(ValueError):
            parse_latency(bad)


def test_the_verdict_compares_only_the_architectures_within_the_budget(tmp_path):
    per_arch, rows, table = _review({"big": [40.0, 41.0], "mid": [15.0, 15.5], "small": [5.0, 5.2]},
                                    {"big": 0.85, "mid": 0.78, "small": 0.70})
    unrestricted = verdict(gather(per_arch), table, rows)
    assert unrestricted[0].startswith("Best: big")
    text = _verdict(gather(per_arch), table, rows, per_arch, 0.01, DeploymentBudget(latency_ms=20.0), tmp_path)
    assert text[0].startswith("Deployment budget: latency <= 20 ms (medians over the runs; latency of a batch-1 forward pass as "
                              "`segbench predict` runs it, on AMD EPYC (test)). Within it: mid and small.")
    assert text[1] == "Outside the budget: big (latency 40.50 ms, 20.50 ms over)."
    assert text[2] == "The comparison below is over the 2 architectures within the budget."
    assert text[3].startswith("Best within the budget: mid ") and "every other architecture within it is shown worse" in text[3]
    assert not any("big" in s for s in text[3:])  # big is in no claim of the comparison
    # The statistics are those of the comparison over the two: the same sentences as a review of mid and small alone.
    alone = {a: per_arch[a] for a in ("mid", "small")}
    assert [s.replace(" within the budget", "").replace(" within it", "") for s in text[3:]] == verdict(
        gather(alone), [r for r in table if r["arch"] != "big"], [r for r in rows if r["arch"] != "big"])
    saved = json.loads((tmp_path / "deployment_budget.json").read_text())
    assert saved["budget"] == {"latency_ms": 20.0} and saved["within"] == ["mid", "small"]
    assert saved["outside"] == {"big": {"latency_ms": {"value": 40.5, "over": 20.5}}}
    assert saved["comparison"]["best"] == "mid"
    assert _verdict(gather(per_arch), table, rows, per_arch, 0.01, DeploymentBudget(), tmp_path) == unrestricted
    assert not (tmp_path / "deployment_budget.json").exists()  # no budget, no stale file


def test_unmeasured_near_the_limit_and_several_limits():
    per_arch, rows, table = _review({"a": [18.0, 22.0], "b": [None, None], "c": [5.0, 5.0]}, {"a": 0.8, "b": 0.8, "c": 0.7})
    split = split_by_budget(table, DeploymentBudget(latency_ms=21.0, gflops=2.0))
    assert split.inside == ["a", "c"] and split.unmeasured == [("b", ["latency"])] and [a for a, _ in split.close] == ["a"]
    text = verdict(gather({k: per_arch[k] for k in split.inside}), table, rows, split)
    assert text[0].startswith("Deployment budget: latency <= 21 ms, FLOPs <= 2 GFLOPs")
    assert "Not measured, so not shown within the budget: b (no latency)." in text
    assert "Near the limit, its runs on both sides of it (placed by the median): a latency 20.00 ms [18.00–22.00]." in text
    split = split_by_budget(table, DeploymentBudget(gflops=0.5, infer_peak_mb=10))
    assert split.inside == [] and [a for a, _ in split.outside] == ["a", "b", "c"]
    assert [e.limit.key for e in split.outside[0][1]] == ["infer_peak_mb", "gflops"]


def test_nothing_within_the_budget_names_no_best():
    per_arch, rows, table = _review({"a": [30.0, 30.0], "b": [12.0, 12.0]}, {"a": 0.8, "b": 0.7})
    split = split_by_budget(table, DeploymentBudget(latency_ms=10.0))
    text = verdict(None, table, rows, split)
    assert text[-1] == "Nothing fits the budget, so no best is named; the nearest is b (latency 12.00 ms)."
    assert not any(s.startswith("Best") for s in text)


def test_a_failed_architecture_is_still_named_under_a_budget(tmp_path):
    per_arch, rows, table = _review({"a": [5.0, 5.0], "b": [6.0, 6.0]}, {"a": 0.8, "b": 0.7})
    per_arch["broken"] = {S0: None}
    rows.append({"arch": "broken", "status": "failed", "seed": 0, "error": "out of memory"})
    table = aggregate(rows, COSTS)
    text = _verdict(gather(per_arch), table, rows, per_arch, 0.01, DeploymentBudget(latency_ms=20.0), tmp_path)
    assert any(s.startswith("Failed and left out: broken") for s in text)
    assert "Within it: a and b." in text[0]


def test_the_figure_draws_the_budget_line_in_view():
    fig, ax = plt.subplots()
    ax.plot([5.0, 15.0], [0.7, 0.8], "o")
    draw_budget(ax, 40.0, [5.0, 15.0], "ms")  # beyond every point
    lines = [line for line in ax.get_lines() if list(line.get_xdata()) == [40.0, 40.0]]
    assert len(lines) == 1 and lines[0].get_label() == "budget 40 ms"
    low, high = ax.get_xlim()
    assert low < 5.0 and high > 40.0
    plt.close(fig)


def test_run_refuses_a_budget_it_cannot_read():
    from segbench.cli import main

    result = CliRunner().invoke(main, ["run", "--latency-budget", "fast", "--report-only"])
    assert result.exit_code == 2 and "latency budget 'fast'" in result.output


def test_an_onnx_latency_budget_reads_the_onnx_column():
    budget = DeploymentBudget(latency_ms=10.0, latency_engine="onnx")
    assert [limit.key for limit, _ in budget.limits()] == ["onnx_latency_ms"]
    table = [{"arch": "a", "runs": 1, "latency_ms": 50.0, "onnx_latency_ms": 5.0},
             {"arch": "b", "runs": 1, "latency_ms": 5.0, "onnx_latency_ms": 50.0},
             {"arch": "c", "runs": 1, "latency_ms": 5.0}]  # its export failed: the ONNX figure is missing
    split = split_by_budget(table, budget)
    assert split.inside == ["a"] and [a for a, _ in split.outside] == ["b"]
    assert split.unmeasured == [("c", ["ONNX Runtime latency"])]
    assert split_by_budget(table, DeploymentBudget(latency_ms=10.0)).inside == ["b", "c"]  # PyTorch's column


def test_a_review_times_each_architecture_in_onnx_runtime_when_asked(tmp_path, monkeypatch):
    from segbench.commands.run import run
    from tests.bench.test_run import write_synthetic_data

    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = write_synthetic_data(tmp_path / "data", splits=(("train", 8), ("val", 4)))
    args = [str(data), "--archs", "unet,fcn", "--iterations", "2", "--set", "data.resize=[32,32]", "--no-progress",
            "--no-speed", "--no-ensembles", "--lr", "paper"]
    result = CliRunner().invoke(run, args + ["--out", str(tmp_path / "onnx"), "--latency-engine", "onnx",
                                             "--latency-budget", "100s"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = {row["arch"]: row for row in read_results_csv(tmp_path / "onnx" / "report" / "summary.csv")}
    for arch in ("unet", "fcn"):
        row = summary[arch]
        assert row["onnx_latency_ms"] > 0 and row["onnx_latency_q1_ms"] <= row["onnx_latency_ms"] <= row["onnx_latency_q3_ms"]
    saved = json.loads((tmp_path / "onnx" / "report" / "deployment_budget.json").read_text())
    assert saved["budget"] == {"onnx_latency_ms": 100000.0} and sorted(saved["within"]) == ["fcn", "unet"]
    report = (tmp_path / "onnx" / "report" / "report.md").read_text()
    assert "ONNX latency" in report and "ONNX Runtime latency <= 100000 ms" in report
    assert "as `segbench predict --engine onnx` runs it" in report
    # PyTorch only (the default): no ONNX figure, and run folders of another name (the measurement differs).
    result = CliRunner().invoke(run, args + ["--out", str(tmp_path / "torch")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "onnx_latency_ms" not in {k for row in read_results_csv(tmp_path / "torch" / "report" / "summary.csv") for k in row
                                     if row[k] is not None}
    names = lambda out: {p.name for p in out.glob("unet-*")}
    assert names(tmp_path / "onnx").isdisjoint(names(tmp_path / "torch"))


def test_an_export_that_fails_leaves_the_onnx_latency_empty_with_its_reason(monkeypatch):
    import torch

    import segbench.export.onnx as onnx_export
    from segbench.bench.measure.predictors import onnx_latency

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot export this model\nsecond line")

    monkeypatch.setattr(onnx_export, "export_onnx", refuse)
    figures = onnx_latency(torch.nn.Conv2d(1, 2, 1), in_channels=1, size=(8, 8), rounds=3, max_warmup=2)
    assert figures == {"onnx_latency_error": "RuntimeError: cannot export this model"}
