"""Training budgets: a fixed number of steps, a time budget whose schedule still anneals, and "auto",
which stops on a plateau of the validation metric and not on a rising curve; convergence is recorded
for every budget."""

import importlib
import json
from types import SimpleNamespace

import pytest

from segbench.config import load_config
from segbench.engine import train
from segbench.engine.optim import lr_factor
from segbench.engine.train_state import TrainState, note_validation, plan_iterations

TINY = ["model.arch=tiny", "train.batch_size=4", "train.device=cpu", "train.log_interval=1",
        "train.checkpoint_interval=1000", "eval.test_at_end=false"]
train_module = importlib.import_module("segbench.engine.train")  # the package's attribute is the function
REAL_EVALUATE = train_module.evaluate


def _scripted_validation(monkeypatch, values):
    """Validation returns ``values`` in turn as the best metric, the headline (the rest of the figures from the real pass)."""
    real = REAL_EVALUATE  # not the attribute: a test may script twice
    calls = iter(values)

    def evaluate(*args, **kwargs):
        metrics = real(*args, **kwargs)
        metrics["dice_fg_per_case"] = next(calls)
        return metrics

    monkeypatch.setattr(train_module, "evaluate", evaluate)


def test_note_validation_counts_validations_since_the_last_real_gain():
    state = TrainState()
    for i, value in enumerate([0.5, 0.6, 0.6005, 0.6009, 0.7, 0.7001], start=1):
        note_validation(state, value, i * 10, "mDice_fg", 0.001)
    assert (state.last_improvement_iteration, state.stale_validations, state.gain_value) == (50, 1, 0.7)
    distances = TrainState()  # lower is better
    note_validation(distances, 4.0, 70, "hd95_fg", 0.001)
    note_validation(distances, 3.0, 80, "hd95_fg", 0.001)
    note_validation(distances, 3.5, 90, "hd95_fg", 0.001)
    assert (distances.last_improvement_iteration, distances.stale_validations) == (80, 1)


def test_plan_iterations_fits_the_budget_within_the_cap():
    assert plan_iterations(20, 10.0, 30.0, 1000) == 60
    assert plan_iterations(20, 10.0, 30.0, 50) == 50
    assert plan_iterations(20, 10.0, 5.0, 1000) == 20  # never fewer than done


def test_auto_stops_on_a_plateau(tiny_env, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.5, 0.6, 0.7, 0.7005, 0.7004, 0.7009, 0.9, 0.95])
    cfg = load_config(None, TINY + ["train.iterations=40", "train.val_interval=4", "train.budget=auto",
                                    "train.patience=3", "train.min_delta=0.001", "train.anneal=0"])
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["stopped_by"] == "plateau" and metrics["iterations_run"] == 24  # 3 stale after the 3rd
    assert metrics["anneal"] is None
    assert metrics["converged"] is True and metrics["last_improvement_iteration"] == 12
    # Finished: running it again resumes nothing.
    assert train(cfg, tmp_path, progress=False)["iterations_run"] == 24


def _events(run_dir, kind):
    return [e for e in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if e["event"] == kind]


AUTO = TINY + ["train.iterations=40", "train.val_interval=4", "train.budget=auto", "train.patience=3",
               "train.min_delta=0.001", "train.lr=0.01"]
PLATEAU_THEN_GAIN = [0.5, 0.6, 0.7, 0.7005, 0.7004, 0.7009, 0.9, 0.95, 0.96]


def test_auto_anneals_from_the_plateau_to_min_lr_then_stops(tiny_env, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, PLATEAU_THEN_GAIN)
    metrics = train(load_config(None, AUTO), tmp_path, progress=False)
    # Plateau at 24 (3 stale validations after 12); 25% of 24 steps = 6, up to a validation: 8 more.
    assert metrics["anneal"] == [24, 32] and metrics["iterations_run"] == 32 and metrics["stopped_by"] == "plateau"
    assert metrics["converged"] is True and (metrics["best_iteration"], metrics["best_value"]) == (32, 0.95)
    lrs = {e["iteration"]: e["lr"] for e in _events(tmp_path, "train")}  # logged after step iteration - 1
    at_plateau = 0.01 * (1 - 24 / 40) ** 0.9  # where the poly schedule over the cap had got to
    assert lrs[24] == pytest.approx(0.01 * (1 - 23 / 40) ** 0.9)  # the schedule up to the plateau
    assert [lrs[i] for i in range(25, 33)] == pytest.approx([at_plateau * (1 - k / 8) for k in range(8)])
    assert _events(tmp_path, "anneal") == [{"event": "anneal", "iteration": 24, "until": 32,
                                            "lr": pytest.approx(at_plateau)}]


def test_an_annealing_run_resumed_midway_ends_as_an_uninterrupted_one(tiny_env, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, PLATEAU_THEN_GAIN)
    whole = train(load_config(None, AUTO), tmp_path / "whole", progress=False)
    _scripted_validation(monkeypatch, PLATEAU_THEN_GAIN[:6])  # the 7th validation (28, annealing) is killed
    with pytest.raises(StopIteration):
        train(load_config(None, AUTO), tmp_path / "cut", progress=False)
    _scripted_validation(monkeypatch, PLATEAU_THEN_GAIN[6:])
    resumed = train(load_config(None, AUTO), tmp_path / "cut", progress=False)
    assert resumed["anneal"] == whole["anneal"] == [24, 32]
    assert (resumed["iterations_run"], resumed["best_value"]) == (whole["iterations_run"], whole["best_value"])
    lrs = lambda run: {e["iteration"]: e["lr"] for e in _events(tmp_path / run, "train")}
    assert lrs("cut") == lrs("whole")


def test_auto_does_not_anneal_past_its_cap(tiny_env, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7])
    metrics = train(load_config(None, AUTO + ["train.iterations=28", "train.anneal=1"]), tmp_path, progress=False)
    assert metrics["anneal"] == [24, 28] and metrics["iterations_run"] == 28 and metrics["converged"] is True


def test_auto_does_not_stop_on_a_rising_curve_and_says_it_had_not_converged(tiny_env, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.1 + 0.05 * k for k in range(10)])
    cfg = load_config(None, TINY + ["train.iterations=40", "train.val_interval=4", "train.budget=auto"])
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["stopped_by"] == "iterations" and metrics["iterations_run"] == 40
    assert metrics["converged"] is False and metrics["last_improvement_iteration"] == 40


def test_a_fixed_budget_records_whether_it_had_converged(tiny_env, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.5, 0.8, 0.8, 0.8, 0.8])
    cfg = load_config(None, TINY + ["train.iterations=20", "train.val_interval=4"])
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["stopped_by"] == "iterations" and metrics["iterations_run"] == 20  # no early stop
    assert metrics["converged"] is True and metrics["last_improvement_iteration"] == 8


def test_a_time_budget_ends_within_its_bound_and_the_schedule_anneals(tiny_env, tmp_path, monkeypatch):
    clock = [0.0]
    fake_time = SimpleNamespace(perf_counter=lambda: clock[0], time=lambda: 0.0)
    monkeypatch.setattr(train_module, "time", fake_time)
    real_step = train_module.TrainStep

    class TimedStep(real_step):
        def __call__(self, *args, **kwargs):
            clock[0] += 0.5  # every step takes half a (fake) second
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(train_module, "TrainStep", TimedStep)
    cfg = load_config(None, TINY + ["train.iterations=100000", "train.val_interval=10", "train.budget=time",
                                    "train.time_budget_s=20", "train.lr=0.01"])
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["planned_iterations"] == 40 and metrics["iterations_run"] == 40  # 20 s / 0.5 s
    assert metrics["stopped_by"] == "time" and metrics["train_time_s"] <= 20.0
    events = [__import__("json").loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    last_lr = [e["lr"] for e in events if e["event"] == "train"][-1]
    planned = load_config(tmp_path / "config.yaml").train
    assert last_lr == pytest.approx(0.01 * lr_factor(39, type(planned)(**{**planned.__dict__, "iterations": 40})))
    assert last_lr < 0.01 * 0.05  # annealed: the schedule ran over the planned steps, not the cap


def test_a_time_budget_needs_its_seconds():
    with pytest.raises(Exception, match="time_budget_s"):
        load_config(None, ["train.budget=time"])
