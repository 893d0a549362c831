"""A sweep's time or FLOPs budget turned into its ``BudgetPlan`` (``segbench.bench.protocol.budget``), once,
before any run trains: read back from ``OUT/budget/`` when this sweep's settings were planned before (a
resumed sweep never re-measures), taken from ``--plan FILE`` (another sweep's: the same counts on another
day or machine), or measured now (``segbench.bench.measure.step_time``) and saved.

The settings a plan holds for (``plan_settings``) are what one training step computes: the data, input
size, batch, loss, device, precision and every architecture's options. A plan from another machine is
accepted when everything but where it ran (the data's folder, the device, the precision) matches and
the data has the same classes and channels; the report says where it was measured.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, MutableMapping

from segbench.bench.protocol.budget import (PLANNED_KINDS, ArchBudget, BudgetPlan, PlanMismatch, counts_from_step_flops,
                                            counts_from_step_times, plan_digest, plan_path, read_plan)
from segbench.bench.protocol.profiles import Profile
from segbench.bench.protocol.sweep import PlannedRun, input_size
from segbench.env_settings import env_seconds

if TYPE_CHECKING:
    from segbench.bench.measure.load import MachineLoad

__all__ = ["plan_settings", "budget_plan", "load_plan_file", "is_planned", "measure_plan", "plan_threads", "plan_wait",
           "plan_seconds", "pin_threads", "WHERE_MEASURED"]

WHERE_MEASURED = ("source", "device", "amp")  # settings a plan from another sweep may differ in
PLAN_WAIT_ENV = "SEGBENCH_PLAN_WAIT"
PLAN_WAIT_S = 120.0  # how long a time budget's plan waits for a busy machine to quiet down
PLAN_SAMPLE_S = 2.0  # each look at the machine's load while waiting


def plan_settings(plan: list[PlannedRun], profile: Profile) -> dict[str, Any]:
    """What one training step of the sweep computes (its runs' first configuration; options per architecture)."""
    cfg = plan[0].config
    return {
        "source": cfg.data.source, "input_size": list(input_size(cfg, profile)), "batch": cfg.train.batch_size,
        "loss": cfg.train.loss, "device": cfg.train.device, "amp": cfg.train.amp,
        "archs": {run.arch: dict(run.config.model.options) for run in plan},
    }


def _budget_of(plan: list[PlannedRun]) -> tuple[str, str, float, int]:
    """(as given, kind, amount, cap) of the sweep's planned budget."""
    from segbench.bench.protocol.sweep import parse_budget

    given = plan[0].budget["budget_given"]
    kind, amount = parse_budget(given)
    return given, kind, float(amount), plan[0].config.train.iterations


def measure_plan(plan: list[PlannedRun], profile: Profile, data: dict, *, say: Callable[[str], None] = print,
                 measure: Callable | None = None) -> BudgetPlan:
    """Measure the sweep's plan: the interleaved step times (a time budget) or the step FLOPs (a FLOPs
    budget) of every architecture of ``plan``, at the review's settings (``review_speed_settings``:
    ``data`` gives the classes and channels). ``measure``: how to call a measurement (default: here;
    the Ray launcher's ``call`` runs it on a node like the runs')."""
    from segbench.bench.measure.cost import machine_info
    from segbench.bench.measure.step_time import YARDSTICK_SIZE, measure_step_times, step_flops
    from segbench.bench.protocol.review_speed import review_speed_settings

    given, kind, amount, cap = _budget_of(plan)
    archs, settings = review_speed_settings(plan, profile, data)
    settings = dataclasses.replace(settings, peers=False)
    call = measure or (lambda fn, *args, **kwargs: fn(*args, **kwargs))
    machine = call(machine_info, settings.device)
    measured: dict[str, Any] = {"device": machine.get("device"), "device_name": machine.get("device_name"),
                                "host": machine.get("host"), "threads": machine.get("torch_threads"),
                                "num_classes": int(data["num_classes"]), "in_channels": int(data["in_channels"]),
                                "when": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    entries: dict[str, ArchBudget] = {}
    if kind == "time":
        min_seconds = plan_seconds(profile, amount, len(archs))
        if measure is None:  # here: at the threads the runs here will compute with (pin_threads)
            times = measure_step_times(archs, settings, threads=plan_threads(settings.device, say), say=say,
                                       min_seconds=min_seconds)
        else:  # a Ray task: its CPUs are the run's (Ray sets its OMP_NUM_THREADS)
            times = call(measure_step_times, archs, settings, min_seconds=min_seconds)
        counts = counts_from_step_times(amount, times.step_s, cap)
        for arch, (iterations, exact, capped) in counts.items():
            entries[arch] = ArchBudget(iterations, exact, capped, step_s=times.step_s[arch], step_q1_s=times.q1_s[arch],
                                       step_q3_s=times.q3_s[arch], step_noisy=times.noisy[arch])
        measured.update(threads=times.threads, rounds=times.rounds, warmup=times.warmup, attempts=times.attempts,
                        precision=_precision(settings), matmul_gflops=times.matmul_gflops,
                        matmul_size=YARDSTICK_SIZE, **times.load)
        if times.load.get("machine_busy") and (times.threads or 1) > 1:
            say(f"budget: {times.load['machine_load']} at {times.threads} threads; threads that wait for each "
                f"other beside busy cores slow every step several times over: SEGBENCH_THREADS=1 (or fewer than the "
                f"busy cores leave) gives the measurement and the runs a steadier speed")
    else:
        flops = call(step_flops, archs, settings)
        for arch, (iterations, exact, capped) in counts_from_step_flops(amount, flops, cap).items():
            entries[arch] = ArchBudget(iterations, exact, capped, step_flops=int(flops[arch]))
    return BudgetPlan(budget=given, kind=kind, amount=amount, cap=cap, settings=plan_settings(plan, profile),
                      archs=entries, measured=measured)


def _precision(settings) -> str:
    from segbench.engine.device import resolve_precision

    import torch

    return resolve_precision(settings.amp, torch.device(settings.device)).name


def load_plan_file(plan: list[PlannedRun], profile: Profile, plan_file: str | Path, data: dict | None) -> BudgetPlan:
    """``--plan FILE``: the plan in ``plan_file``, checked against this sweep (``PlanMismatch`` otherwise):
    the same budget, cap and settings but where it was measured (``WHERE_MEASURED``), and data with the same
    classes and channels (``data``: this data's facts, None: not checked)."""
    given, _, _, cap = _budget_of(plan)
    chosen = read_plan(plan_file)
    if chosen is None:
        raise PlanMismatch(f"--plan {plan_file}: not a budget plan (no such file, or it cannot be read)")
    settings = plan_settings(plan, profile)
    chosen.check(given, cap, {**settings, **{k: chosen.settings.get(k) for k in WHERE_MEASURED}}, str(plan_file))
    facts = (chosen.measured.get("num_classes"), chosen.measured.get("in_channels"))
    if data is not None and facts != (int(data["num_classes"]), int(data["in_channels"])):
        raise PlanMismatch(f"the budget plan {plan_file} was measured on data with {facts[0]} classes and {facts[1]} "
                           f"channels, this data has {data['num_classes']} and {data['in_channels']}")
    return chosen


def is_planned(plan: list[PlannedRun]) -> bool:
    """Whether the sweep's budget is turned into iterations by a plan (a time or FLOPs budget)."""
    return bool(plan and plan[0].budget) and _budget_of(plan)[1] in PLANNED_KINDS


def plan_seconds(profile: Profile, amount: float, archs: int) -> float:
    """How long a time budget's plan times the steps at least: the profile's ``plan_seconds``, but never more
    than half the training seconds it plans (``amount`` for each of ``archs`` architectures)."""
    return min(profile.plan_seconds, amount * archs / 2)


def plan_wait() -> float:
    """Seconds a time budget's plan waits for a busy machine to quiet down (``SEGBENCH_PLAN_WAIT``, default
    ``PLAN_WAIT_S``; 0: measure at once)."""
    return env_seconds(PLAN_WAIT_ENV, PLAN_WAIT_S, zero=True)


def plan_threads(device: str, say: Callable[[str], None] = print, *, wait_s: float | None = None,
                 sample: Callable[[], "MachineLoad"] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> int | None:
    """The threads a time budget's plan is measured at, and its runs on this machine compute with
    (``pin_threads``): ``SEGBENCH_THREADS`` where set, else the run's CPU allotment. A machine busy now
    (``sample``: a load sample of a couple of seconds) is waited for, up to ``wait_s`` (``plan_wait``): the
    step-time ratios, hence the counts, are for one thread count (each design parallelises differently), so
    a neighbour that will be gone in a minute must not choose it. Still busy after the wait: the allotment
    less the CPUs the others use (``load.spare_threads``). None: not a CPU device."""
    import torch

    from segbench.bench.measure.load import sample_load, spare_threads
    from segbench.engine.threads import THREADS_ENV, cpu_allotment

    if torch.device(device).type != "cpu":
        return None
    allotment, _ = cpu_allotment()
    threads = min(allotment, torch.get_num_threads())
    if os.environ.get(THREADS_ENV, "").strip():
        return threads
    sample = sample or (lambda: sample_load(PLAN_SAMPLE_S))
    wait_s = plan_wait() if wait_s is None else wait_s
    load = sample()
    spare = spare_threads(threads, load)
    if spare < threads and wait_s > 0:
        say(f"budget: {load.describe().replace('during the measurement', 'now')}: waiting up to {wait_s:g} s for it "
            f"to quiet down before timing the steps (the counts are for the threads they are timed at; "
            f"{PLAN_WAIT_ENV}=S sets the wait, {THREADS_ENV}=N the threads)")
        start = clock()
        while spare < threads and clock() - start < wait_s:
            load = sample()
            spare = spare_threads(threads, load)
        if spare == threads:
            say(f"budget: the machine is quiet after {clock() - start:.0f} s of waiting")
    if spare < threads:
        say(f"budget: {load.describe().replace('during the measurement', 'now')}: the plan is measured and the "
            f"runs compute at {spare} of {threads} threads (threads that wait for each other beside busy cores "
            f"stall at every operator; {THREADS_ENV}=N chooses)")
    return spare


def pin_threads(plan: BudgetPlan, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Have this sweep's runs compute at the thread count the plan was measured at (its step-time ratios are
    for that count; CPU results are bit-exact only at one count): ``SEGBENCH_THREADS`` set for the workers
    unless it is set already. Returns what the log says, or None."""
    from segbench.engine.threads import THREADS_ENV

    threads = plan.measured.get("threads")
    if plan.kind != "time" or plan.measured.get("device") != "cpu" or not threads or environ.get(THREADS_ENV):
        return None
    environ[THREADS_ENV] = str(threads)
    return f"threads: the runs compute at {threads} thread(s), as the plan was measured"


def _say_other_threads(plan: BudgetPlan, say: Callable[[str], None]) -> None:
    """Warn when the runs here would compute at another thread count than the plan was measured at (the
    ratios of step times change with it: each design parallelises differently)."""
    import torch

    from segbench.engine.threads import THREADS_ENV, cpu_allotment

    measured = plan.measured.get("threads")
    if plan.kind != "time" or plan.measured.get("device") != "cpu" or not measured:
        return
    here = min(cpu_allotment()[0], torch.get_num_threads())
    runs = here if os.environ.get(THREADS_ENV, "").strip() else min(here, measured)  # pin_threads
    if runs != measured:
        say(f"budget: note: the plan was measured at {measured} threads, the runs here compute at {runs}: the "
            "counts' ratios hold only as far as the designs parallelise alike")


def budget_plan(plan: list[PlannedRun], profile: Profile, out: str | Path, data: dict | None, *,
                given: BudgetPlan | None = None, say: Callable[[str], None] = print,
                measure: Callable | None = None) -> BudgetPlan | None:
    """The sweep's plan (None unless its budget is a time or FLOPs budget): ``given`` (``load_plan_file``),
    also saved in ``OUT/budget/`` under this sweep's settings so that a resumed sweep finds it; else the one
    ``OUT/budget/`` holds for these settings; else measured now (needs ``data``, the data's facts; None:
    nothing is measured and None returned) and saved there."""
    if not is_planned(plan):
        return None
    given_budget, _, _, cap = _budget_of(plan)
    path = plan_path(out, plan_digest(given_budget, cap, plan_settings(plan, profile)))
    if given is not None:
        say(f"budget: the given plan ({given.budget}, measured {given.measured.get('when', '?')} on "
            f"{given.measured.get('device_name') or given.measured.get('device', '?')}), kept as {path}")
        _say_other_threads(given, say)
        given.write(path)
        return given
    stored = read_plan(path)
    if stored is not None:
        say(f"budget: reusing {path} (measured {stored.measured.get('when', '?')}); nothing is measured again")
        _say_other_threads(stored, say)
        return stored
    if data is None:
        return None
    made = measure_plan(plan, profile, data, say=say, measure=measure)
    made.write(path)
    say(f"budget: plan saved in {path}")
    return made
