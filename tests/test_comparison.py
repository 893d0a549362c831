"""segbench.comparison against textbook formulas and scipy, and segbench calibrate's plumbing."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import special, stats

from segbench.comparison import MIN_UNITS, compare, expanded_level


def test_the_expanded_level_is_hesterbergs():
    for n in (5, 12, 40):
        expected = special.ndtr(math.sqrt(n / (n - 1)) * stats.t.ppf(0.025, n - 1))
        assert expanded_level(0.025, n) == pytest.approx(expected, rel=1e-12)
    assert expanded_level(0.025, 10_000) == pytest.approx(0.025, rel=1e-3)  # no correction left at large n


def test_one_seed_standard_error_is_the_paired_t_standard_error():
    rng = np.random.default_rng(0)
    a = 0.8 + rng.normal(0, 0.08, 25)
    b = a - 0.02 + rng.normal(0, 0.03, 25)
    c = compare({"a": a, "b": b})
    s = c.standing("b")
    se = (s.diff_high - s.diff_low) / (2 * c.critical)
    assert se == pytest.approx(stats.sem(b - a), rel=1e-9)
    assert s.detectable == pytest.approx((c.critical + special.ndtri(0.8)) * se, rel=1e-9)
    assert s.diff == pytest.approx(np.mean(b - a), rel=1e-12)


def test_seed_variation_enters_the_standard_error_of_a_difference():
    rng = np.random.default_rng(1)
    a = 0.8 + rng.normal(0, 0.05, (3, 20))
    b = 0.7 + rng.normal(0, 0.05, (1, 20))
    c = compare({"a": a, "b": b})
    s = c.standing("b")
    se = (s.diff_high - s.diff_low) / (2 * c.critical)
    expected = math.sqrt(stats.tvar(a.mean(axis=0) - b[0]) / 20 + stats.tvar(a.mean(axis=1)) / 3)
    assert se == pytest.approx(expected, rel=1e-9)


def test_the_same_seed_gives_the_same_numbers_and_too_few_units_give_no_claim():
    rng = np.random.default_rng(2)
    scores = {"a": rng.random(12), "b": rng.random(12)}
    assert repr(compare(scores, seed=3)) == repr(compare(scores, seed=3))  # NaN fields: compare the text
    few = compare({"a": rng.random(MIN_UNITS - 1), "b": rng.random(MIN_UNITS - 1)})
    assert not few.inferential and few.best is None and all(math.isnan(s.low) for s in few.standings)


def test_scores_on_different_units_are_refused():
    with pytest.raises(ValueError, match="same units"):
        compare({"a": np.zeros(10), "b": np.zeros(11)})
    with pytest.raises(ValueError, match="non-finite"):
        compare({"a": np.array([0.5, math.nan] * 5)})


def test_calibrate_writes_every_key_per_scenario(tmp_path):
    from segbench.commands.calibrate import calibrate
    out = tmp_path / "calibration.json"
    result = CliRunner().invoke(calibrate, ["--simulations", "20", "--scenario", "equal_2", "--scenario", "hallucination",
                                            "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scenarios = json.loads(out.read_text())["scenarios"]
    assert set(scenarios) == {"equal_2", "hallucination"}
    for figures in scenarios.values():
        assert {"coverage", "familywise_error", "power", "wrong_best"} <= set(figures)
    assert scenarios["equal_2"]["power"] is None  # nothing is truly worse there
    assert scenarios["hallucination"]["power"] == 1.0 and scenarios["hallucination"]["wrong_best"] == 0.0


def test_pairwise_differences_are_the_standings_intervals():
    from segbench.comparison import compare

    rng = np.random.default_rng(3)
    scores = {"a": rng.uniform(0.6, 0.9, (2, 12)), "b": rng.uniform(0.5, 0.8, (2, 12)), "c": rng.uniform(0.4, 0.9, (1, 12))}
    c = compare(scores)
    for s in c.standings[1:]:
        assert c.difference(s.name, c.leader) == pytest.approx((s.diff, s.diff_low, s.diff_high))
        diff, low, high = c.difference(c.leader, s.name)
        assert (diff, low, high) == pytest.approx((-s.diff, -s.diff_high, -s.diff_low))
