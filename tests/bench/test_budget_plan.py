"""A time budget turned into iteration counts before the sweep (``segbench.bench.protocol.budget``,
``matched``, ``segbench.bench.measure.step_time``): counts whose ratios a busy machine cannot move (a fake
clock with drift and bursts), a plan saved in OUT and never measured again, ``--plan FILE`` giving another
sweep the same runs, FLOPs budgets, and the run records and report saying what each run was given."""

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from segbench.bench.measure.step_time import time_steps
from segbench.bench.protocol.budget import (GRID_STEP, BudgetPlan, PlanMismatch, counts_from_step_flops,
                                            counts_from_step_times, on_grid, read_plan)
from segbench.bench.protocol.matched import budget_plan, load_plan_file
from segbench.bench.protocol.profiles import get_profile
from segbench.bench.protocol.sweep import BUDGET_CAP, parse_budget, plan_sweep, run_sweep
from tests.bench.test_run import write_synthetic_data

# The quick profile with fewer timed rounds: the plan's measurement is the same, only shorter.
QUICK = dataclasses.replace(get_profile("quick"), speed_rounds=3, timing_max_warmup=2, timing_rounds=3)
COSTS = {"unet": 0.10, "deeplabv3plus": 0.25, "segformer": 0.04}  # seconds per step on a quiet machine


class FakeMachine:
    """A clock and fake training steps: each step advances the clock by its cost times the machine's
    slowdown at that moment (``slowdown(now)``), times ``burst(arch, call)`` for one-off stalls."""

    def __init__(self, slowdown=lambda now: 1.0, burst=lambda arch, call: 1.0):
        self.now, self.slowdown, self.burst, self.calls = 0.0, slowdown, burst, {a: 0 for a in COSTS}

    def clock(self) -> float:
        return self.now

    def steps(self) -> dict:
        def step(arch):
            def run():
                self.calls[arch] += 1
                self.now += COSTS[arch] * self.slowdown(self.now) * self.burst(arch, self.calls[arch])
            return run
        return {arch: step(arch) for arch in COSTS}


def _counts(machine: FakeMachine, seconds: float = 60.0, cap: int = 10_000) -> dict[str, int]:
    """The plan's counts from the harness's interleaved timing of the fake steps on the fake clock."""
    times = time_steps(machine.steps(), rounds=9, max_warmup=4, clock=machine.clock)
    return {arch: n for arch, (n, _, _) in counts_from_step_times(seconds, times.step_s, cap).items()}


def _ratios(counts: dict[str, int]) -> dict[str, float]:
    return {arch: n / counts["unet"] for arch, n in counts.items()}


def test_on_grid_is_geometric_and_stable():
    assert [on_grid(x) for x in (0.3, 1, 10, 100, 618, 623)] == [1, 1, 10, 98, 622, 622]
    points = sorted({on_grid(x) for x in range(200, 2000)})
    steps = [b / a - 1 for a, b in zip(points, points[1:])]
    assert all(abs(s - GRID_STEP) < 0.01 for s in steps)


def test_counts_ratios_hold_when_the_machine_is_busy_during_part_of_the_measurement():
    quiet = _counts(FakeMachine())
    # Two CPU-bound neighbours during the first part of the measurement: every step 3x slower until t=4 s.
    busy = _counts(FakeMachine(slowdown=lambda now: 3.0 if now < 4.0 else 1.0))
    # ... and a machine that slows down steadily (thermal throttling, a growing neighbour), 2x in 15 s.
    drifting = _counts(FakeMachine(slowdown=lambda now: 1.0 + now / 15.0))
    true = {arch: COSTS["unet"] / cost for arch, cost in COSTS.items()}
    for counts in (quiet, busy):
        for arch, ratio in _ratios(counts).items():
            assert ratio == pytest.approx(true[arch], rel=0.05), (counts, arch)
    for arch, ratio in _ratios(drifting).items():  # the absolute counts shrink, their ratios hold
        assert ratio == pytest.approx(true[arch], rel=0.05), (drifting, arch)
    assert quiet == {arch: on_grid(60 / cost) for arch, cost in COSTS.items()}


def test_one_architecture_slowed_for_some_rounds_keeps_its_count():
    # A neighbour's burst lands on DeepLab v3+'s step in 3 of the timed rounds (10x each): the median holds.
    slowed = FakeMachine(burst=lambda arch, call: 10.0 if arch == "deeplabv3plus" and call in (6, 9, 12) else 1.0)
    assert _counts(slowed) == _counts(FakeMachine())


def test_flops_counts_give_every_architecture_the_same_flops():
    step = {"a": 3.0e9, "b": 7.5e9}
    counts = counts_from_step_flops(3.0e13, step, cap=100_000)
    for arch, (n, exact, capped) in counts.items():
        assert exact == pytest.approx(3.0e13 / step[arch]) and not capped
        assert n * step[arch] == pytest.approx(3.0e13, rel=GRID_STEP)
    assert counts_from_step_flops(3.0e13, step, cap=2000)["a"] == (2000, 10_000, True)


def test_parse_budget_reads_time_and_flops():
    assert parse_budget("time:30") == ("time", 30.0)
    assert parse_budget("flops:250T") == ("flops", 2.5e14) and parse_budget("flops:1e12") == ("flops", 1e12)
    for bad in ("flops", "flops:-3", "flops:xT", "time:0"):
        with pytest.raises(ValueError, match="flops:N"):
            parse_budget(bad)


# --- the plan of a real (tiny) sweep: measured once, saved, reused, given to another sweep ------------------

TINY = ["data.resize=[32,32]", "train.batch_size=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_data(tmp_path_factory.mktemp("budget") / "data")


def _plan(data, out, budget="time:3", archs=("unet", "segformer"), overrides=TINY, **kwargs):
    return plan_sweep(data=str(data), profile=QUICK, out=out, archs=list(archs), budget=budget,
                      iterations=10, overrides=list(overrides), **kwargs)


FACTS = {"num_classes": 3, "in_channels": 1}


@pytest.fixture(scope="module")
def measured(data, tmp_path_factory):
    """One sweep's plan, measured (the tests below reuse it: a measurement builds and times real models)."""
    out = tmp_path_factory.mktemp("measured")
    provisional = _plan(data, out)
    messages = []
    made = budget_plan(provisional, QUICK, out, FACTS, say=messages.append)
    return {"out": out, "plan": made, "provisional": provisional, "messages": messages}


def test_the_plan_is_measured_once_saved_and_reused(data, measured):
    out, made, provisional = measured["out"], measured["plan"], measured["provisional"]
    files = list((out / "budget").glob("plan-*.json"))
    assert len(files) == 1 and read_plan(files[0]) == made
    assert set(made.archs) == {"unet", "segformer"} and made.cap == 10 * BUDGET_CAP
    for entry in made.archs.values():
        assert entry.step_s > 0 and entry.step_q1_s <= entry.step_q3_s
        assert entry.iterations == min(made.cap, on_grid(3 / entry.step_s))
    assert made.measured["threads"] and made.measured["rounds"] >= QUICK.speed_rounds

    def never(*args, **kwargs):
        raise AssertionError("a resumed sweep measured again")

    messages = []
    again = budget_plan(provisional, QUICK, out, FACTS, say=messages.append, measure=never)
    assert again == made and "nothing is measured again" in messages[-1]

    planned = _plan(data, out, budget_plan=made)
    for run in planned:
        t = run.config.train
        assert (t.budget, t.iterations) == ("iterations", made.archs[run.arch].iterations)
        assert t.val_interval == max(1, t.iterations // QUICK.validations)
        assert run.budget["budget_given"] == "time:3" and run.budget["budget_iterations"] == t.iterations
        assert run.budget["budget_why"].startswith(f"{t.iterations} iterations = 3 s / ")


def test_a_given_plan_reproduces_the_runs_and_a_mismatch_is_refused(data, measured, tmp_path):
    first = measured["plan"]
    source = next((measured["out"] / "budget").glob("plan-*.json"))
    other = _plan(data, tmp_path / "b")
    given = load_plan_file(other, QUICK, source, FACTS)
    kept = budget_plan(other, QUICK, tmp_path / "b", FACTS, given=given, say=lambda m: None, measure=None)
    assert kept == first and read_plan(next((tmp_path / "b" / "budget").glob("plan-*.json"))) == first
    runs_a, runs_b = _plan(data, measured["out"], budget_plan=first), _plan(data, tmp_path / "b", budget_plan=kept)
    assert [r.config_hash for r in runs_a] == [r.config_hash for r in runs_b]
    assert load_plan_file(_plan(data, tmp_path / "c", budget="time:3.0"), QUICK, source, FACTS) == first
    # Another budget, other options, another architecture or other data: refused, saying why.
    with pytest.raises(PlanMismatch, match="this sweep time:4"):
        load_plan_file(_plan(data, tmp_path / "c", budget="time:4"), QUICK, source, FACTS)
    with pytest.raises(PlanMismatch, match="batch"):
        load_plan_file(_plan(data, tmp_path / "c", overrides=["data.resize=[32,32]"]), QUICK, source, FACTS)
    with pytest.raises(PlanMismatch, match="no count for fcn8s"):
        load_plan_file(_plan(data, tmp_path / "c", archs=("unet", "fcn8s")), QUICK, source, FACTS)
    with pytest.raises(PlanMismatch, match="this data has 4"):
        load_plan_file(other, QUICK, source, {"num_classes": 4, "in_channels": 1})


def test_a_flops_budget_needs_no_clock_and_cannot_run_unplanned(data, tmp_path):
    provisional = _plan(data, tmp_path, budget="flops:20G")
    with pytest.raises(ValueError, match="needs a budget plan"):
        run_sweep(provisional, QUICK, say=lambda m: None)
    made = budget_plan(provisional, QUICK, tmp_path, FACTS, say=lambda m: None)
    assert made.kind == "flops" and made.amount == 2e10
    for entry in made.archs.values():
        assert entry.step_s is None and entry.step_flops > 0
        assert entry.iterations == min(made.cap, on_grid(2e10 / entry.step_flops))
    assert made.measured["num_classes"] == 3 and "rounds" not in made.measured  # nothing timed


def test_plan_text_says_how_each_count_was_derived():
    plan = BudgetPlan(budget="time:60", kind="time", amount=60.0, cap=1000, settings={},
                      archs={}, measured={"rounds": 7, "warmup": 2, "threads": 2, "machine_busy": True,
                                          "machine_load": "machine busy: load average 3.1 on 2 CPUs"})
    from segbench.bench.protocol.budget import ArchBudget

    plan.archs["unet"] = ArchBudget(622, 619.4, step_s=0.0969, step_q1_s=0.095, step_q3_s=0.099)
    plan.archs["fcn8s"] = ArchBudget(1000, 1500.0, True, step_s=0.04, step_q1_s=0.039, step_q3_s=0.041)
    text = "\n".join(plan.lines())
    assert "unet: 622 iterations = 60 s / 96.9 ms per step [95.0-99.0] = 619.4 on the 4% grid" in text
    assert "fcn8s: 1000 iterations = 60 s / 40.0 ms per step [39.0-41.0] = capped at 1000" in text
    assert "ratios of the counts hold" in text


# --- end to end: `segbench run --budget time:S`, then another sweep with --plan ---------------------------

def _run(data: Path, out: Path, *extra: str):
    from segbench.commands.run import run

    args = [str(data), "--archs", "unet,segformer", "--iterations", "3", "--out", str(out), "--no-progress",
            "--no-speed", "--lr", "paper", "--set", "data.resize=[32,32]", "--set", "train.batch_size=2", *extra]
    return CliRunner().invoke(run, args, catch_exceptions=False)


def test_run_trains_the_planned_iterations_and_the_report_says_so(data, tmp_path, monkeypatch):
    from segbench.bench.protocol.profiles import PROFILES

    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEGBENCH_THREADS", "")  # the command pins it for its workers: unset again afterwards
    monkeypatch.setitem(PROFILES, "quick", QUICK)  # fewer timed rounds, as above
    shown = _run(data, tmp_path / "a", "--budget", "time:0.05", "--show-plan")
    assert shown.exit_code == 0, shown.output
    assert "budget time:0.05" in shown.output and "unet: " in shown.output
    assert not any(p.name.startswith("unet-") for p in (tmp_path / "a").iterdir())  # nothing trained
    monkeypatch.setenv("SEGBENCH_THREADS", "")  # a new process: nothing pinned yet
    first = _run(data, tmp_path / "a", "--budget", "time:0.05")
    assert first.exit_code == 0, first.output
    assert "nothing is measured again" in first.output  # --show-plan's plan is the sweep's
    threads = read_plan(next((tmp_path / "a" / "budget").glob("plan-*.json"))).measured["threads"]
    assert f"the runs compute at {threads} thread(s)" in first.output
    plan = read_plan(next((tmp_path / "a" / "budget").glob("plan-*.json")))
    trained = set()
    for folder in (tmp_path / "a").iterdir():
        bench = folder / "bench.json"
        if bench.is_file():
            record = json.loads(bench.read_text())
            arch = record["metrics"]["arch"]
            assert record["metrics"]["iterations_run"] == plan.archs[arch].iterations
            assert record["budget"]["budget_given"] == "time:0.05" and record["machine"]["torch_threads"] == threads
            assert record["budget"]["budget_iterations"] == plan.archs[arch].iterations
            trained.add(arch)
    assert trained == {"unet", "segformer"}
    report = (tmp_path / "a" / "report" / "report.md").read_text()
    assert "budget time:0.05" in report and "timed side by side" in report
    assert plan.archs["unet"].why("time", 0.05) in report
    # Another sweep given that plan (another OUT, as on another day or machine): the same iterations, hence
    # the same run configurations (their hashes), which train the same on the CPU.
    given = _run(data, tmp_path / "b", "--budget", "time:0.05", "--show-plan", "--plan",
                 str(next((tmp_path / "a" / "budget").glob("plan-*.json"))))
    assert given.exit_code == 0, given.output
    assert "\n".join(plan.lines()) in given.output and "timing the training steps" not in given.output
    assert read_plan(next((tmp_path / "b" / "budget").glob("plan-*.json"))) == plan


def test_a_busy_machine_gets_fewer_threads_and_the_runs_get_the_plans():
    from segbench.bench.measure.load import MachineLoad, spare_threads
    from segbench.bench.protocol.matched import pin_threads

    assert spare_threads(2, MachineLoad(2, 9.0, 1.7)) == 1  # as measured here: 4.7 s a step at 2 threads, 0.47 at 1
    assert spare_threads(2, MachineLoad(2, 0.3, 0.1)) == 2  # quiet
    assert spare_threads(16, MachineLoad(16, 3.0, 1.7)) == 14 and spare_threads(2, MachineLoad(2, 9.0, 5.0)) == 1
    plan = BudgetPlan(budget="time:60", kind="time", amount=60.0, cap=1000, settings={}, archs={},
                      measured={"threads": 1, "device": "cpu"})
    environ = {}
    assert pin_threads(plan, environ) and environ == {"SEGBENCH_THREADS": "1"}
    chosen = {"SEGBENCH_THREADS": "2"}
    assert pin_threads(plan, chosen) is None and chosen == {"SEGBENCH_THREADS": "2"}  # the user's choice stands
    flops = BudgetPlan(budget="flops:1T", kind="flops", amount=1e12, cap=1000, settings={}, archs={}, measured={})
    assert pin_threads(flops, {}) is None


def test_a_plan_waits_for_a_busy_machine_to_quiet_down(monkeypatch):
    """A neighbour that leaves within the wait does not choose the plan's threads (hence its counts); one that
    stays past it does, and the log says so either way."""
    import torch

    from segbench.bench.measure.load import MachineLoad
    from segbench.bench.protocol.matched import plan_threads

    monkeypatch.delenv("SEGBENCH_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr("segbench.engine.threads.cpu_allotment", lambda: (2, "test"))
    busy, quiet = MachineLoad(2, 2.0, 2.0), MachineLoad(2, 0.5, 0.1)

    def machine(loads, step=2.0):
        now, seen = [0.0], iter(loads)

        def sample():
            now[0] += step
            return next(seen)
        return sample, lambda: now[0]

    said = []
    sample, clock = machine([busy, busy, busy, quiet])
    assert plan_threads("cpu", said.append, wait_s=60, sample=sample, clock=clock) == 2
    assert "waiting up to 60 s" in said[0] and said[1] == "budget: the machine is quiet after 6 s of waiting"
    said.clear()
    sample, clock = machine([busy] * 100)
    assert plan_threads("cpu", said.append, wait_s=10, sample=sample, clock=clock) == 1
    assert "waiting up to 10 s" in said[0] and "at 1 of 2 threads" in said[-1] and len(said) == 2
    said.clear()  # no wait asked for: the threads the neighbours leave, at once
    sample, clock = machine([busy, quiet])
    assert plan_threads("cpu", said.append, wait_s=0, sample=sample, clock=clock) == 1
    assert len(said) == 1 and "at 1 of 2 threads" in said[0]
    said.clear()  # quiet: no word
    sample, clock = machine([quiet])
    assert plan_threads("cpu", said.append, wait_s=60, sample=sample, clock=clock) == 2 and said == []


def test_plan_wait_and_plan_seconds(monkeypatch, tmp_path):
    from segbench.bench.protocol.matched import plan_seconds, plan_wait
    from segbench.bench.protocol.profiles import get_profile

    monkeypatch.delenv("SEGBENCH_PLAN_WAIT")
    assert plan_wait() == 120.0
    monkeypatch.setenv("SEGBENCH_PLAN_WAIT", "15")
    assert plan_wait() == 15.0
    quick = get_profile("quick")
    assert plan_seconds(quick, 60, 10) == quick.plan_seconds == 30.0  # the quick review: 30 s of 600 s planned
    assert plan_seconds(quick, 0.05, 2) == pytest.approx(0.05)  # never more than half the training it plans
    monkeypatch.setenv("SEGBENCH_PLAN_WAIT", "soon")
    result = _run(write_synthetic_data(tmp_path / "data"), tmp_path / "out", "--budget", "time:1", "--show-plan")
    assert result.exit_code == 2 and "SEGBENCH_PLAN_WAIT='soon': expected 0 or more seconds, e.g. 120" in result.output
    assert not (tmp_path / "out").exists()
