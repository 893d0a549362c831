"""The review's evidence (per-unit scores, intervals, paired tests) and the verdict generated from it."""

import math

import numpy as np
import pytest

from segbench import stats
from segbench.bench.report.evidence import RunScores, gather, unit_scores
from segbench.bench.report.verdict import verdict


def _scores(values: dict[str, list[float]]) -> RunScores:
    """Per-case rows, one per (case, class): values[case] = Dice of each foreground class."""
    return RunScores([{"case": case, "class": f"c{j}", "dice": v} for case, vs in values.items() for j, v in enumerate(vs)], [])


def test_a_unit_is_the_mean_of_its_classes_skipping_absent_ones():
    scores = _scores({"a": [0.5, math.nan], "b": [0.2, 0.4], "c": [math.nan, math.nan]})
    units = unit_scores(scores, "case")
    assert units["a"] == 0.5 and units["b"] == pytest.approx(0.3) and math.isnan(units["c"])


def test_one_clear_winner_is_named_and_the_interval_is_the_bootstrap():
    rng = np.random.default_rng(0)
    good = {f"case{i}": [0.85 + 0.05 * rng.random()] for i in range(12)}
    bad = {case: [v[0] - 0.3] for case, v in good.items()}
    evidence = gather({"unet": {"seed 0": _scores(good)}, "fcn": {"seed 0": _scores(bad)}})
    assert evidence.unit == "case" and evidence.n_cases == 12 and evidence.top.members == ("unet",)
    expected = stats.bootstrap_ci([v[0] for v in good.values()], n_resamples=2000, seed=0)
    assert tuple(evidence.intervals["unet"]) == pytest.approx(tuple(expected))  # one run: the case bootstrap
    text = verdict(evidence, table=[], runs=[])
    assert text[0].startswith(f"Best: unet {expected.mean:.4f} [{expected.low:.4f}–{expected.high:.4f}]")
    assert "every other architecture is significantly worse on the same 12 cases" in text[0]


def test_no_single_winner_where_the_tests_do_not_separate_and_the_cheapest_member_is_named():
    rng = np.random.default_rng(1)
    a = {f"case{i}": [0.8 + 0.1 * rng.standard_normal()] for i in range(10)}
    b = {case: [v[0] + 0.02 * rng.standard_normal()] for case, v in a.items()}
    evidence = gather({"unet": {"seed 0": _scores(a)}, "segformer": {"seed 0": _scores(b)}})
    assert set(evidence.top.members) == {"unet", "segformer"}
    table = [{"arch": "unet", "gflops": 4.0, "latency_ms": 3.0}, {"arch": "segformer", "gflops": 1.0, "latency_ms": 5.0}]
    text = verdict(evidence, table, runs=[])
    assert text[0].startswith("No single winner: 2 architectures cannot be separated from the best")
    assert not any(s.startswith("Best:") for s in text)
    assert text[1] == "Cheapest in the top group: segformer in FLOPs (1.00 GFLOPs) and unet in latency (3.00 ms)."


def test_too_few_cases_say_that_no_test_can_separate_anything():
    evidence = gather({"a": {"s": _scores({"x": [0.9], "y": [0.8]})}, "b": {"s": _scores({"x": [0.1], "y": [0.2]})}})
    text = verdict(evidence, table=[], runs=[])
    assert text[0].startswith("No architecture can be told apart from another: with 2 case(s) no paired test")


def test_a_lone_volume_is_resampled_by_slice_with_the_caveat():
    def volume(dice):
        cases = [{"case": "mni152", "class": "gm", "dice": float(np.mean(dice))}]
        slices = [{"case": "mni152", "slice": str(k), "class": "gm", "dice": d} for k, d in enumerate(dice)]
        return RunScores(cases, slices)

    evidence = gather({"a": {"s": volume([0.9, 0.8, 0.85, 0.9, 0.95, 0.88, 0.91])},
                       "b": {"s": volume([0.5, 0.4, 0.45, 0.5, 0.55, 0.48, 0.51])}})
    assert evidence.unit == "slice" and evidence.units == {"a": 7, "b": 7}
    text = verdict(evidence, table=[], runs=[])
    assert text[-1].startswith("Caveat: the validation split holds one volume (mni152): the units are its slices")


def test_runs_whose_best_validation_was_the_last_are_named_as_still_improving():
    evidence = gather({"a": {"s": _scores({"x": [0.9]})}})
    runs = [{"arch": "a", "status": "ok", "best_iteration": 250, "iterations": 250},
            {"arch": "b", "status": "ok", "best_iteration": 200, "iterations": 250}]
    text = verdict(evidence, table=[], runs=runs)
    assert any(s.startswith("Not converged, still improving when the budget ended: a;") for s in text)
    runs = [{"arch": "a", "status": "ok", "best_iteration": 250, "iterations": 250, "converged": True},
            {"arch": "b", "status": "ok", "best_iteration": 200, "iterations": 1000, "converged": False}]
    assert any(s.startswith("Not converged, still improving when the budget ended: b;") for s in verdict(evidence, [], runs))
    assert verdict(None, [], []) == ["No run left per-case scores, so nothing here can rank the architectures with an uncertainty."]
