"""Ensembles and TTA priced by the one harness (forward passes and FLOPs as counts) and judged by the review's
comparison against the best single model, on known outcomes."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from segbench.bench.report.candidates import judge
from segbench.bench.report.evidence import RunScores
from segbench.engine.inference import InferenceSettings


def _conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(2, 3, 3, padding=1)


def test_price_counts_forward_passes_and_flops_of_every_candidate():
    from segbench.bench.measure.predictors import Candidate, price_candidates

    candidates = {"one": Candidate([_conv(0)], InferenceSettings()),
                  "tta": Candidate([_conv(0)], InferenceSettings(flips=("horizontal", "vertical"))),
                  "three": Candidate([_conv(0), _conv(1), _conv(2)], InferenceSettings()),
                  "three+tta": Candidate([_conv(0), _conv(1), _conv(2)], InferenceSettings(flips=("horizontal",)))}
    costs = price_candidates(candidates, in_channels=2, size=(8, 8), rounds=2, max_warmup=0)
    assert {name: c["forward_passes"] for name, c in costs.items()} == {"one": 1, "tta": 4, "three": 3, "three+tta": 6}
    single = costs["one"]["gflops"]
    assert single > 0
    for name, c in costs.items():  # FLOPs counted on each call: members x views times one network's
        assert c["gflops"] == pytest.approx(single * c["forward_passes"])
        assert c["latency_ms"] > 0 and c["timing"]["rounds"] == 2


def _scores(dice: list[float]) -> RunScores:
    return RunScores([{"case": f"c{i:02d}", "class": "fg", "dice": d, "ref_empty": False} for i, d in enumerate(dice)], [])


def test_candidates_are_answered_against_the_best_single_on_known_outcomes():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.8, size=20)
    singles = {"a": _scores(list(base)), "b": _scores(list(base - 0.1))}
    candidates = {"same": _scores(list(base)),  # identical per unit: difference 0, interval [0, 0]
                  "better": _scores(list(base + 0.05 + rng.normal(0, 0.005, 20))),
                  "worse": _scores(list(base - 0.05 + rng.normal(0, 0.005, 20)))}
    costs = {"a": {"latency_ms": 1.0, "forward_passes": 1}, "better": {"latency_ms": 3.0, "forward_passes": 2}}
    judged = judge(singles, candidates, costs, margin=0.01)
    rows = {r.name: r for r in judged.rows}
    assert judged.best_single == "a" and rows["a"].answer == "best single" and rows["b"].answer == "single"
    assert rows["same"].answer == "equivalent" and rows["same"].diff == 0
    assert rows["better"].answer == "better" and rows["worse"].answer == "worse"
    assert rows["better"].diff_low > 0 and rows["worse"].diff_high < 0
    assert rows["better"].dice_per_added_ms == pytest.approx(rows["better"].diff / 2.0)
    assert rows["worse"].dice_per_added_ms is None and rows["worse"].latency_ms is None  # not priced: no ratio
    # the same family as the review's: the interval is the comparison's own
    c = judged.evidence.comparison
    assert c.difference("better", "a") == (rows["better"].diff, rows["better"].diff_low, rows["better"].diff_high)


def test_too_few_units_give_no_answer():
    judged = judge({"a": _scores([0.5, 0.6, 0.7])}, {"e": _scores([0.9, 0.9, 0.9])}, {}, margin=0.01)
    row = next(r for r in judged.rows if r.name == "e")
    assert row.answer == "inconclusive" and math.isnan(row.diff_low)
