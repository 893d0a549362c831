"""What the report of a plan reads besides the run folders, gathered on the protocol's side: each planned
run's results row (``runs.run_record``, with the Speed section's throughput), the settings as they ran, the
registry's facts of each architecture and the Speed section. The report (``segbench.bench.report.review``)
then needs neither the plan, the profile nor the registry, all of which import torch or sit beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segbench.bench.measure.timing import NOISY_ABOVE, STABLE_WITHIN
from segbench.bench.protocol.anchor import AnchorRun, anchor_facts, anchor_record
from segbench.bench.protocol.budget import BudgetPlan
from segbench.bench.protocol.profiles import Profile
from segbench.bench.protocol.record import ReviewInput, ReviewRun, ReviewSetup
from segbench.bench.protocol.review_speed import read_review_speed, speed_section, throughput_figures
from segbench.bench.protocol.runs import run_record
from segbench.bench.protocol.sweep import PlannedRun, input_size
from segbench.config import TrainConfig
from segbench.models.registry import ARCHITECTURES

__all__ = ["review_input"]

# What the report says of each architecture's design, read off its registry entry.
_DESIGN_FACTS = ("paper", "year", "summary", "blocks", "strengths", "weaknesses")


def budget_text(train: TrainConfig) -> str:
    """The run's budget in words, for the report's settings."""
    if train.budget == "time":
        return f"{train.time_budget_s:g} s of training steps per run (at most {train.iterations} iterations)"
    if train.budget == "auto":
        return (f"until {train.best_metric} gains at most {train.min_delta} over {train.patience} validations "
                f"(at most {train.iterations} iterations)")
    return f"{train.iterations} iterations"


def plan_text(budget_plan: BudgetPlan) -> list[str]:
    """A time or FLOPs budget's plan in words, for the report's settings: what it gives and how each count
    was derived (``BudgetPlan.lines``), and what that means for the comparison."""
    if budget_plan.kind == "time":
        meaning = ("the seconds were turned into iterations before training, from every architecture's training "
                   "step timed side by side in one process (interleaved), and the runs trained exactly those "
                   "iterations: the load while they trained did not change what each got (their wall times are "
                   "recorded, not used). A load lasting through the measurement lengthens every step alike: the "
                   "ratios of the counts hold, their sizes shrink")
    else:
        meaning = ("the FLOPs were turned into iterations from each architecture's training FLOPs per step "
                   "(convolutions and matmuls, forward + backward): machine-independent, blind to how fast each runs")
    return [line.strip() for line in budget_plan.lines()] + [meaning]


def _settings(plan: list[PlannedRun], profile: Profile, budget_plan: BudgetPlan | None) -> dict[str, Any]:
    """The profile's settings as they actually ran (the command line may have changed its values)."""
    settings = profile.settings()
    if plan:
        cfg = plan[0].config
        height, width = input_size(cfg, profile)
        budget = budget_text(cfg.train) if budget_plan is None else "; ".join(plan_text(budget_plan))
        iterations = cfg.train.iterations if budget_plan is None else "per architecture, from the budget plan"
        settings.update(input_size=f"{height}x{width}", iterations=iterations, budget=budget,
                        batch_size=cfg.train.batch_size, val_interval=cfg.train.val_interval,
                        convergence=f"{cfg.train.best_metric} gained at most {cfg.train.min_delta} over the last "
                                    f"{cfg.train.patience} validations")
    return settings


def _runs(plan: list[PlannedRun], out: Path) -> list[ReviewRun]:
    """Each planned run's record, read once from its folder; a successful run's row carries the Speed
    section's throughput of its architecture (one measurement, shown in both places)."""
    throughput = throughput_figures(read_review_speed(out))
    runs = []
    for run in plan:
        row = run_record(run).row()
        if row["status"] == "ok":
            row = {**row, **throughput.get(run.arch, {})}
        runs.append(ReviewRun(label=run.label, arch=run.arch, seed=run.seed, fold=run.fold, run_dir=run.run_dir,
                              options=dict(run.config.model.options), row=row))
    return runs


def review_input(plan: list[PlannedRun], profile: Profile, out: str | Path,
                 budget_plan: BudgetPlan | None = None, anchors: list[AnchorRun] = ()) -> ReviewInput:
    """What the report of ``plan`` (finished or not) reads besides its run folders under ``out``.
    ``budget_plan``: how a time or FLOPs budget became each architecture's iterations; ``anchors``: the runs of
    the field's baseline beside the zoo (``segbench run --anchor``)."""
    runs = _runs(plan, Path(out))
    anchor_runs = [ReviewRun(label=a.label, arch=a.label, seed=a.seed, fold=a.fold, run_dir=a.run_dir,
                             options={"configuration": a.configuration}, row=anchor_record(a).row()) for a in anchors]
    setup = ReviewSetup(
        profile=profile.name, description=profile.description, settings=_settings(plan, profile, budget_plan),
        measured_size=tuple(profile.input_size), timing_rounds=profile.timing_rounds,
        timing_max_warmup=profile.timing_max_warmup, stable_within=STABLE_WITHIN, noisy_above=NOISY_ABOVE,
        background=plan[0].config.eval.background if plan else 0,
        data_source=plan[0].config.data.source if plan else "",
        architectures={**{r.label: {k: getattr(ARCHITECTURES[r.arch], k) for k in _DESIGN_FACTS} for r in plan},
                       **{a.label: anchor_facts(a.label) for a in anchors}},
        speed=speed_section(out, plan, [r.row for r in runs]),
    )
    return ReviewInput(out=Path(out), runs=runs, setup=setup, anchors=anchor_runs)
