"""The review's evidence (one score per unit, the crossed bootstrap, three answers per comparison, the floor)
and the verdict generated from it: one test per situation of issue 24 that the old verdict got wrong."""

import math

import numpy as np
import pytest

from segbench.bench.report.evidence import RunKey, RunScores, evidence_figures, floor_scores, gather, unit_scores
from segbench.bench.report.findings import overall_findings
from segbench.bench.report.results import aggregate
from segbench.bench.report.verdict import verdict

S0 = RunKey(None, 0)


def _scores(values: dict[str, list[float]], empty: dict[str, list[bool]] | None = None) -> RunScores:
    """Per-case rows, one per (case, class): values[case] = Dice of each foreground class."""
    empty = empty or {}
    return RunScores([{"case": case, "class": f"c{j}", "dice": v, "ref_empty": (empty.get(case) or [False] * len(vs))[j]}
                      for case, vs in values.items() for j, v in enumerate(vs)], [])


def _one_class(dice: np.ndarray) -> RunScores:
    return _scores({f"case{i:02d}": [float(v)] for i, v in enumerate(dice)})


def _volume(dice: np.ndarray) -> RunScores:
    slices = [{"case": "mni152", "slice": str(k), "class": "gm", "dice": float(d), "ref_empty": False} for k, d in enumerate(dice)]
    return RunScores([{"case": "mni152", "class": "gm", "dice": float(np.mean(dice)), "ref_empty": False}], slices)


def test_a_unit_is_the_mean_of_its_present_classes_and_an_empty_unit_predicted_empty_scores_one():
    scores = _scores({"a": [0.5, math.nan], "b": [0.2, 0.4], "c": [math.nan, math.nan], "d": [0.0, math.nan]},
                     empty={"c": [True, True], "d": [True, True]})
    units = unit_scores(scores, "case")
    assert units == {"a": 0.5, "b": pytest.approx(0.3), "c": 1.0, "d": 0.0}  # d: a structure invented on an empty reference
    assert floor_scores(scores, "case") == {"a": 0.0, "b": 0.0, "c": 1.0, "d": 1.0}


def test_1_seeds_are_crossed_with_cases_so_more_seeds_never_narrow_the_case_interval():
    # 30 cases (sd 0.08), seeds equal up to noise sd 0.01: the case variation is the same whatever the seeds.
    # Resampling cases independently inside each seed (nested) made the 3-seed interval ~sqrt(3) narrower.
    rng = np.random.default_rng(0)
    case = 0.8 + rng.normal(0, 0.08, 30)
    widths = {}
    for seeds in (1, 3, 5):
        runs = {RunKey(None, s): _one_class(case + rng.normal(0, 0.01, 30)) for s in range(seeds)}
        s = gather({"unet": runs}).comparison.standing("unet")
        widths[seeds] = s.high - s.low
    assert widths[3] / widths[1] > 0.9 and widths[5] / widths[1] > 0.9
    assert widths[1] == pytest.approx(2 * 1.96 * 0.08 / math.sqrt(30), rel=0.25)  # the case standard error's scale


def test_2_two_seeds_of_one_model_on_the_slices_of_one_volume_are_not_a_winner():
    rng = np.random.default_rng(1)
    ar = np.zeros(16)
    for t in range(1, 16):
        ar[t] = 0.5 * ar[t - 1] + rng.normal(0, 0.05)
    base = 0.8 + rng.normal(0, 0.05, 16)
    evidence = gather({"unet seed 0": {S0: _volume(base + ar)}, "unet seed 1": {S0: _volume(base - ar + 0.01)}})
    assert evidence.unit == "block" and evidence.n_units == 2 and evidence.block_slices == (8, 8)
    text = verdict(evidence, table=[], runs=[])
    assert not any(s.startswith("Best:") for s in text)
    assert text[0].startswith("No interval or test: 2 blocks (fewer than 8) cannot support one")
    assert any("holds one volume (mni152): the units are 2 blocks of 8 contiguous slices" in s for s in text)


def test_a_long_volume_is_cut_into_eight_blocks_of_contiguous_slices():
    rng = np.random.default_rng(2)
    dice = 0.8 + rng.normal(0, 0.05, 100)
    evidence = gather({"a": {S0: _volume(dice)}, "b": {S0: _volume(dice - 0.2)}})
    assert evidence.n_units == 8 and sum(evidence.block_slices) == 100 and min(evidence.block_slices) >= 12
    c = evidence.comparison
    assert c.inferential and c.best == "a" and c.standing("a").mean == pytest.approx(dice.mean(), abs=0.003)


def test_3_not_significant_is_inconclusive_not_as_good_and_no_cheaper_alternative_is_named():
    rng = np.random.default_rng(3)
    case = 0.8 + rng.normal(0, 0.08, 8)
    a, b = case + rng.normal(0, 0.035, 8), case - 0.03 + rng.normal(0, 0.035, 8)
    evidence = gather({"unet": {S0: _one_class(a)}, "segformer": {S0: _one_class(b)}})
    lead = evidence.comparison.leader
    other = next(s for s in evidence.comparison.standings if s.name != lead)
    assert other.status == "inconclusive" and other.detectable > 0.03
    table = [{"arch": "unet", "gflops": 4.0}, {"arch": "segformer", "gflops": 1.0}]
    text = verdict(evidence, table, runs=[])
    assert any(s.startswith(f"Inconclusive against {lead}, neither shown worse nor equivalent within ±0.01")
               and "would be detected with 80% power" in s for s in text)
    assert any(s.startswith(f"No architecture is shown equivalent to {lead}, so no cheaper alternative is named") for s in text)
    assert not any("Cheapest" in s or s.startswith("Best:") for s in text)


def test_close_architectures_are_called_equivalent_within_the_margin_and_the_cheapest_is_named():
    rng = np.random.default_rng(4)
    case = 0.8 + rng.normal(0, 0.08, 60)
    evidence = gather({"unet": {S0: _one_class(case + rng.normal(0, 0.002, 60))},
                       "segformer": {S0: _one_class(case + rng.normal(0, 0.002, 60))}}, margin=0.01)
    lead = evidence.comparison.leader
    other = next(s for s in evidence.comparison.standings if s.name != lead)
    assert other.status == "equivalent" and -0.01 < other.diff_low and other.diff_high < 0.01
    table = [{"arch": "unet", "gflops": 4.0, "latency_ms": 3.0}, {"arch": "segformer", "gflops": 1.0, "latency_ms": 5.0}]
    text = verdict(evidence, table, runs=[])
    assert any(s.startswith(f"Equivalent to {lead} within ±0.01: {other.name}") for s in text)
    assert f"Cheapest of {lead} and those equivalent to it: segformer in FLOPs (1.00 GFLOPs) and unet in latency (3.00 ms)." in text
    assert any(s.startswith("No single winner: the best is one of") for s in text)


def test_4_picking_the_best_and_testing_it_keeps_the_familywise_error(tmp_path):
    # The rate itself is segbench calibrate's (README); here a short, deterministic run of the same code.
    from segbench.bench.report.calibrate import SCENARIOS, run_scenario
    scenario = next(s for s in SCENARIOS if s.name == "equal_5")
    outcome = run_scenario(scenario, simulations=150, seed=1, n_resamples=1000)
    assert outcome.familywise_error <= 0.08 and outcome.wrong_best <= 0.08  # pick-best-then-Holm: 0.087 at 30 cases
    assert 0.88 <= outcome.coverage <= 0.99


def test_5_the_best_is_ranked_and_tested_by_the_same_statistic():
    # B wins on most cases (Wilcoxon would favour it) but fails one badly, so A has the higher mean: A leads, and
    # no interval can show B better than the leader (the old verdict printed "significantly better than the best").
    rng = np.random.default_rng(5)
    a = 0.8 + rng.normal(0, 0.02, 30)
    b = a + 0.01
    b[0] = 0.0
    evidence = gather({"a": {S0: _one_class(a)}, "b": {S0: _one_class(b)}})
    c = evidence.comparison
    assert c.leader == "a" and c.standing("b").diff < 0 and c.standing("b").diff_low < 0
    text = " ".join(verdict(evidence, [], []))
    assert "better than the best" not in text and "Highest mean: a" in text


def test_6_an_invented_structure_on_an_empty_reference_counts_against_the_model_that_invented_it():
    rng = np.random.default_rng(6)
    structure = 0.8 + rng.normal(0, 0.05, 16)
    values = {f"s{i}": [v] for i, v in enumerate(structure)}
    empty = {f"e{i}": [True] for i in range(8)}
    correct = _scores({**values, **{k: [math.nan] for k in empty}}, empty)  # predicts nothing there
    inventing = _scores({**values, **{k: [0.0] for k in empty}}, empty)  # invents a structure there
    evidence = gather({"careful": {S0: correct}, "hallucinating": {S0: inventing}})
    c = evidence.comparison
    assert evidence.n_units == 24 and c.leader == "careful" and c.best == "careful"
    assert c.standing("hallucinating").status == "worse" and c.standing("careful").first_share == 1.0
    assert c.floor_mean == pytest.approx(8 / 24)


def test_7_failed_architectures_and_seeds_are_named_and_never_join_a_group():
    rng = np.random.default_rng(7)
    case = 0.8 + rng.normal(0, 0.05, 20)
    per_arch = {
        "unet": {RunKey(None, 0): _one_class(case), RunKey(None, 1): None},  # seed 1 failed
        "fcn8s": {RunKey(None, 0): None, RunKey(None, 1): None},  # every run failed
        "segformer": {RunKey(None, 0): _one_class(case - 0.2), RunKey(None, 1): _one_class(case - 0.21)},
    }
    evidence = gather(per_arch)
    assert set(evidence.seeds) == {"unet", "segformer"} and evidence.seeds == {"unet": 1, "segformer": 2}
    text = verdict(evidence, [], [])
    assert text[0] == ("Failed and left out: unet seed 1 (seed 1 failed; that seed is left out); fcn8s (every seed has "
                       "a failed run: seed 0, seed 1; left out of every comparison).")
    assert "fcn8s" not in evidence.comparison.best_set and evidence.comparison.best == "unet"


def test_8_nothing_learned_names_no_best_and_folds_are_called_folds():
    # As held-out 9-class MRI at a tiny budget: U-Net Dice 0 everywhere, DeepLab v3+ a sliver on two cases.
    sliver = np.zeros(10)
    sliver[[3, 7]] = 0.02
    per_arch = {arch: {RunKey(f, 0): _scores({f"f{f}c{i}": [float(v)] for i, v in enumerate(dice)}) for f in (0, 1)}
                for arch, dice in (("unet", np.zeros(10)), ("deeplabv3plus", sliver))}
    evidence = gather(per_arch)
    assert evidence.folds == 2 and evidence.n_units == 20 and evidence.seeds == {"unet": 1, "deeplabv3plus": 1}
    text = verdict(evidence, [], [])
    assert text[0].startswith("Nothing shown learned: no architecture is shown better than predicting background everywhere")
    assert not any(s.startswith("Best:") or s.startswith("No single winner") for s in text)
    assert any(s.startswith("Caveat: 2-fold cross-validation: each case is scored by the fold model that held it out") for s in text)
    rows = [{"arch": "unet", "seed": 0, "fold": f, "status": "ok", "val_unit_dice": 0.0} for f in (0, 1)]
    table = aggregate(rows, ["val_unit_dice"])
    assert table[0]["runs"] == 2 and table[0]["seeds"] == 1 and table[0]["folds"] == 2
    assert "Cross-validation folds: 2; seeds per architecture: 1" in " ".join(overall_findings(table))


def test_9_the_table_the_findings_and_the_verdict_read_one_quantity():
    rng = np.random.default_rng(9)
    case = 0.6 + rng.normal(0, 0.1, 20)
    # Per-case Dice over two classes, where class means and case means rank the two differently.
    a = {f"c{i}": [float(v), 0.9] for i, v in enumerate(case)}
    b = {f"c{i}": [float(v) + 0.05, math.nan if i % 2 else 0.2] for i, v in enumerate(case)}
    evidence = gather({"a": {S0: _scores(a)}, "b": {S0: _scores(b)}})
    figures = evidence_figures(evidence)
    table = [{"arch": "a", "runs": 1, "seeds": 1, **figures["a"]}, {"arch": "b", "runs": 1, "seeds": 1, **figures["b"]}]
    c = evidence.comparison
    assert {r["arch"]: r["val_unit_dice"] for r in table} == {s.name: s.mean for s in c.standings}
    highest = overall_findings(table)[0]
    assert highest.startswith(f"Highest Val Dice: {c.leader} ")
    assert any(s.startswith(("Best: " + c.leader, "No single winner")) and c.leader in s for s in verdict(evidence, table, []))


def test_one_seed_is_said_and_a_sentence_per_answer_has_its_interval():
    rng = np.random.default_rng(10)
    case = 0.8 + rng.normal(0, 0.05, 30)
    evidence = gather({"a": {S0: _one_class(case)}, "b": {S0: _one_class(case - 0.2 + rng.normal(0, 0.02, 30))}})
    text = verdict(evidence, [], [])
    s = evidence.comparison.standing("a")
    assert text[0] == (f"Best: a {s.mean:.4f} [{s.low:.4f}–{s.high:.4f}] (mean foreground Dice per case; simultaneous "
                       "95% intervals over 30 cases, bootstrap over units); every other architecture is shown worse.")
    assert any(t.startswith("Caveat: One seed per architecture: seed-to-seed variation was not measured") for t in text)


def test_runs_whose_best_validation_was_the_last_are_named_as_still_improving():
    rng = np.random.default_rng(11)
    case = 0.8 + rng.normal(0, 0.05, 10)
    evidence = gather({"a": {S0: _one_class(case)}, "b": {S0: _one_class(case - 0.3)}})
    runs = [{"arch": "a", "status": "ok", "converged": False}, {"arch": "b", "status": "ok", "converged": True}]
    assert any(s.startswith("Not converged, still improving when the budget ended: a;") for s in verdict(evidence, [], runs))
