"""The nnU-Net anchor without nnU-Net: choosing it, planning its runs on the review's folds, seeds and budget,
its schedule, the Python that runs it (one line when none has nnU-Net), and the verdict's sentence on it.
The real nnU-Net end to end is tests/bench/test_anchor_nnunet.py (the peers environment)."""

import dataclasses
import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from segbench.bench.protocol.anchor import AnchorMissing, find_python, parse_anchors, plan_anchor
from segbench.bench.protocol.anchor.spec import AnchorSpec, schedule_of
from segbench.bench.protocol.profiles import get_profile
from segbench.bench.protocol.sweep import plan_sweep
from segbench.bench.report.evidence import RunKey, RunScores, gather
from segbench.bench.report.results import aggregate
from segbench.bench.report.verdict import verdict
from tests.bench.test_run import write_synthetic_data


def test_anchor_names_and_configurations_parse_and_a_wrong_one_names_the_valid_ones():
    assert parse_anchors(None) == parse_anchors("none") == parse_anchors("") == []
    nnunet, default = parse_anchors("nnunet, nnunet-default")
    assert (nnunet.name, nnunet.schedule, nnunet.configuration) == ("nnunet", "matched", "auto")
    assert (default.name, default.schedule) == ("nnunet-default", "default")
    assert [(c.name, c.configuration) for c in parse_anchors("nnunet:2d")] == [("nnunet-2d", "2d")]
    with pytest.raises(ValueError, match="nnunet, nnunet-default"):
        parse_anchors("nnunett")
    with pytest.raises(ValueError, match="auto, 2d, 3d_fullres"):
        parse_anchors("nnunet:3d")


@pytest.mark.parametrize("iterations, epochs, per_epoch", [(30, 1, 30), (250, 1, 250), (251, 2, 126), (600, 3, 200)])
def test_the_matched_schedule_holds_the_iterations_in_the_fewest_epochs_of_at_most_250(iterations, epochs, per_epoch):
    s = schedule_of(iterations, False, seed=3, threads=2)
    assert (s["epochs"], s["iterations_per_epoch"], s["seed"], s["threads"]) == (epochs, per_epoch, 3, 2)
    assert iterations <= s["epochs"] * s["iterations_per_epoch"] < iterations + s["epochs"]
    assert 1 <= s["val_iterations_per_epoch"] <= 50


def test_the_default_schedule_is_nnunets_own():
    s = schedule_of(30, True, seed=0, threads=None)
    assert (s["epochs"], s["iterations_per_epoch"], s["val_iterations_per_epoch"]) == (1000, 250, 50)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchor")
    data = write_synthetic_data(root / "data", splits=(("", 12),))
    profile = get_profile("quick")
    runs = plan_sweep(data=str(data), profile=profile, out=str(root / "out"), archs=["unet", "segformer"], seeds=2,
                      iterations=20, overrides=[], budget=None, lr=None, folds=3)
    return SimpleNamespace(runs=runs, profile=profile, out=root / "out")


def test_one_anchor_run_per_fold_and_seed_of_the_review_with_the_zoos_data_and_iterations(plan):
    spec = plan_anchor(parse_anchors("nnunet")[0], plan.runs, plan.profile, plan.out, threads=2)
    assert sorted((r["fold"], r["seed"]) for r in spec.runs) == [(f, s) for f in range(3) for s in range(2)]
    assert spec.budget == {"kind": "iterations", "iterations": 20}
    zoo = {(r.fold, r.seed): r for r in plan.runs if r.arch == "unet"}
    for run in spec.runs:
        assert run["config"]["data"] == zoo[run["fold"], run["seed"]].config.data.__dict__ | run["config"]["data"]
        assert run["config"]["data"]["fold"] == run["fold"]
        assert run["run_dir"].endswith(f"nnunet-f{run['fold']}-s{run['seed']}-{run['hash']}")
    assert len({r["hash"] for r in spec.runs}) == 6
    again = plan_anchor(parse_anchors("nnunet")[0], plan.runs, plan.profile, plan.out, threads=2)
    assert [r["hash"] for r in again.runs] == [r["hash"] for r in spec.runs]  # resumable: the same folders
    other = plan_anchor(parse_anchors("nnunet-default")[0], plan.runs, plan.profile, plan.out, threads=2)
    assert not {r["hash"] for r in other.runs} & {r["hash"] for r in spec.runs}


def test_a_time_budget_names_a_reference_architecture_and_its_planned_iterations(plan, tmp_path):
    budget_plan = SimpleNamespace(kind="time", amount=60.0, cap=400, archs={"unet": SimpleNamespace(iterations=123)})
    spec = plan_anchor(parse_anchors("nnunet")[0], plan.runs, plan.profile, plan.out, threads=2,
                       budget_plan=budget_plan, speed={"size": [32, 32]})
    assert spec.budget == {"kind": "time", "amount": 60.0, "iterations": 400, "reference": "unet",
                           "reference_iterations": 123, "speed": {"size": [32, 32]},
                           "min_seconds": 30.0}  # timed as long as the zoo's plan (plan_seconds)
    spec.write(tmp_path / "spec.json")
    assert AnchorSpec.read(tmp_path / "spec.json") == spec
    # How long the steps are timed is not what the run is: the runs' folders do not move with it.
    longer = plan_anchor(parse_anchors("nnunet")[0], plan.runs, dataclasses.replace(plan.profile, plan_seconds=99.0),
                         plan.out, threads=2, budget_plan=budget_plan, speed={"size": [32, 32]})
    assert longer.budget["min_seconds"] == 60.0 and [r["hash"] for r in longer.runs] == [r["hash"] for r in spec.runs]


@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is not None, reason="this Python has nnU-Net")
def test_a_python_without_nnunet_is_one_line_saying_how_to_install_it(monkeypatch):
    monkeypatch.delenv("SEGBENCH_ANCHOR_PYTHON", raising=False)
    with pytest.raises(AnchorMissing) as err:
        find_python(sys.executable)
    assert "\n" not in str(err.value) and "pip install nnunetv2" in str(err.value) and sys.executable in str(err.value)


# --- the verdict's sentence ------------------------------------------------------------------------------


def _scores(dice: np.ndarray) -> dict:
    return {RunKey(None, 0): RunScores([{"case": f"c{i:02d}", "class": "fg", "dice": float(d), "ref_empty": False}
                                        for i, d in enumerate(dice)], [])}


def _verdict(means: dict[str, float], n: int = 40, noise: float = 0.02) -> list[str]:
    rng = np.random.default_rng(0)
    case = rng.normal(0, 0.05, n)  # shared case difficulty: paired differences are precise
    per_arch = {name: _scores(np.clip(mean + case + rng.normal(0, noise, n), 0, 1)) for name, mean in means.items()}
    evidence = gather(per_arch)
    rows = [{"arch": a, "status": "ok", "anchor": a == "nnunet"} for a in means]
    table = [{**row, "anchor": row["arch"] == "nnunet"} for row in aggregate(rows, [])]
    return verdict(evidence, table, rows)


def test_when_no_architecture_reaches_nnunet_the_verdict_says_so_first():
    lines = _verdict({"unet": 0.70, "segformer": 0.65, "nnunet": 0.80})
    assert lines[0].startswith("No architecture of the zoo reaches the nnU-Net anchor (nnunet 0.7")
    assert "every one is shown worse; the closest, unet -0.0" in lines[0]


def test_an_architecture_equivalent_to_nnunet_reaches_it_and_the_sentence_is_not_first():
    lines = _verdict({"unet": 0.80, "segformer": 0.60, "nnunet": 0.80}, n=200, noise=0.01)
    sentence = [line for line in lines if "nnU-Net anchor" in line]
    assert len(sentence) == 1 and sentence[0].startswith("The zoo reaches the nnU-Net anchor")
    assert "unet is equivalent within ±0.01, -0.0005 [" in sentence[0] and "segformer" not in sentence[0]
    assert lines.index(sentence[0]) > 0


def test_an_inconclusive_best_is_not_shown_to_reach_nnunet():
    lines = _verdict({"unet": 0.79, "nnunet": 0.80}, n=12, noise=0.05)
    assert lines[0].startswith("No architecture of the zoo is shown to reach the nnU-Net anchor")
    assert "neither shown equivalent" in lines[0]


def test_too_few_units_say_the_question_was_not_tested():
    lines = _verdict({"unet": 0.7, "nnunet": 0.8}, n=5)
    assert any(line.startswith("Whether the zoo reaches the nnU-Net anchor") and "not tested" in line for line in lines)


def test_a_worker_that_dies_leaves_a_failed_row_per_run_naming_its_log(plan, tmp_path):
    from segbench.bench.protocol.anchor import anchor_record, anchor_runs, run_anchor
    from segbench.bench.protocol.record import WorkerResult

    spec = plan_anchor(parse_anchors("nnunet")[0], plan.runs[:2], plan.profile, tmp_path / "out", threads=1)
    said = []
    counts = run_anchor(spec, "/bin/false", say=said.append)  # a "Python" that exits 1 at once
    assert counts == {"ran": len(spec.runs), "failed": len(spec.runs), "skipped": 0} and len(spec.runs) == 2
    run = anchor_runs(spec)[1]
    result = WorkerResult.read(run.run_dir)
    assert result.status == "failed" and "exited with status 1" in result.error and "anchor.log" in result.error
    row = anchor_record(run).row()
    assert (row["arch"], row["status"], row["fold"], row["seed"]) == ("nnunet", "failed", run.fold, run.seed)
    assert any("failed" in line for line in said)


def test_an_architecture_shown_better_than_nnunet_reaches_it():
    lines = _verdict({"unet": 0.85, "segformer": 0.60, "nnunet": 0.80})
    sentence = [line for line in lines if "nnU-Net anchor" in line]
    assert len(sentence) == 1 and sentence[0].startswith("The zoo reaches the nnU-Net anchor (nnunet 0.")
    assert "unet is better, +0.0" in sentence[0] and "segformer" not in sentence[0]
