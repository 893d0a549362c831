"""Matched compute that a busy machine cannot skew: ``segbench run --budget time:SECONDS`` and
``--budget flops:N`` turned into one iteration count per architecture *before* the sweep trains.

Why: a time budget checked against the wall clock during each run gives every architecture whatever
the neighbours leave it (a U-Net trained 27 iterations in 60 s with other jobs running and 618 on the
quiet machine, and the ranking followed). Here the seconds are converted once:

- **time:SECONDS** — every architecture's training step (the engine's step, at the review's size, batch,
  loss and precision) is timed in one process by the one timing harness, interleaved (A B C A B C ...),
  over several rounds after a warm-up; the median per architecture gives ``SECONDS / step time``
  iterations. A slow spell during the measurement hits every architecture alike, so the *ratios* of the
  counts hold; a load that lasts through the whole measurement slows all alike and shrinks every count
  by the same factor (the plan records the load and a matmul timed in the same rounds, and the report
  says so). From then on the runs train those iterations, whatever the load while they train.
- **flops:N** — N training FLOPs per architecture (forward + backward, convolutions and matmuls, the
  FLOP counter of ``segbench speed``): ``N / FLOPs per step`` iterations. Nothing is timed, so the
  counts do not depend on the machine at all; what it does not see is how fast each design runs.

Counts are rounded to a geometric grid (``GRID_STEP`` apart) so that measurement noise rarely moves
them, and capped at the sweep's cap. The plan (counts, step times with their spread, how measured) is
``OUT/budget/plan-<digest>.json`` (``BudgetPlan``): a resumed sweep of the same settings reads it back
and never re-measures, and ``segbench run --plan FILE`` gives another sweep (another day, another
machine) the same counts, hence the same runs. This module is the record and the arithmetic; it
imports no torch (the report reads it). The measurement is ``segbench.bench.measure.step_time``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segbench.jsonio import digest, write_json

__all__ = ["BUDGET_DIR", "GRID_STEP", "PLANNED_KINDS", "ArchBudget", "BudgetPlan", "parse_amount", "on_grid",
           "counts_from_step_times", "counts_from_step_flops", "plan_digest", "plan_path", "read_plan",
           "PlanMismatch"]

BUDGET_DIR = "budget"  # OUT/budget/plan-<digest>.json
GRID_STEP = 0.04  # neighbouring counts differ by 4%: noise rarely moves a count, a move changes a ratio < 5%
PLANNED_KINDS = ("time", "flops")  # budgets turned into iteration counts before the sweep
_SUFFIXES = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


class PlanMismatch(ValueError):
    """A plan given with ``--plan FILE`` was made for other settings (the message says which)."""


def parse_amount(text: str) -> float:
    """``60`` / ``2.5e14`` / ``250T`` (K, M, G, T, P, E: powers of 1000) -> a positive float."""
    text = str(text).strip()
    scale = _SUFFIXES.get(text[-1:].upper(), 1.0) if text and text[-1:].isalpha() else 1.0
    number = float(text[:-1] if scale != 1.0 else text)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{text!r} is not a positive amount")
    return number * scale


def on_grid(count: float, step: float = GRID_STEP) -> int:
    """``count`` rounded to the nearest point of the geometric grid ``round((1 + step) ** k)``, at least 1."""
    if count <= 1:
        return 1
    k = round(math.log(count) / math.log1p(step))
    return max(1, round((1 + step) ** k))


@dataclass
class ArchBudget:
    """One architecture's share of the budget and what it was computed from."""

    iterations: int  # what its runs train
    exact: float  # budget / per-step cost, before the grid and the cap
    capped: bool = False  # the cap cut it (exact above the sweep's cap)
    step_s: float | None = None  # time: median seconds per training step, with its quartiles
    step_q1_s: float | None = None
    step_q3_s: float | None = None
    step_noisy: bool = False  # its spread stayed above the harness's limit
    step_flops: int | None = None  # training FLOPs of one step (forward + backward)

    def why(self, kind: str, amount: float) -> str:
        """``620 iterations = 60 s / 96.8 ms per step [94.1-99.0]`` (and the grid, the cap)."""
        if kind == "time":
            spread = (f" [{self.step_q1_s * 1e3:.1f}-{self.step_q3_s * 1e3:.1f}]"
                      if self.step_q1_s is not None and self.step_q3_s is not None else "")
            source = f"{amount:g} s / {self.step_s * 1e3:.1f} ms per step{spread}" + (" (noisy)" if self.step_noisy else "")
        else:
            source = f"{amount:.3g} FLOPs / {self.step_flops:.3g} per step"
        rest = f"capped at {self.iterations}" if self.capped else f"{self.exact:.1f} on the {GRID_STEP:.0%} grid"
        return f"{self.iterations} iterations = {source} = {rest}"


@dataclass
class BudgetPlan:
    """``OUT/budget/plan-<digest>.json``: the iteration count of every architecture under one budget."""

    budget: str  # as given: "time:60", "flops:250T"
    kind: str  # "time" or "flops"
    amount: float  # seconds, or FLOPs
    cap: int  # no architecture trains more
    settings: dict[str, Any]  # what a step computes (plan_digest): the plan holds only where these match
    archs: dict[str, ArchBudget]
    measured: dict[str, Any] = field(default_factory=dict)  # where and how: machine, threads, rounds, load, matmul

    @property
    def digest(self) -> str:
        return plan_digest(self.budget, self.cap, self.settings)

    def write(self, path: str | Path) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(asdict(self), Path(path))
        return Path(path)

    @classmethod
    def from_dict(cls, data: dict) -> BudgetPlan:
        archs = {name: ArchBudget(**entry) for name, entry in data["archs"].items()}
        return cls(**{**data, "archs": archs})

    def check(self, budget: str, cap: int, settings: dict[str, Any], source: str) -> None:
        """Raise ``PlanMismatch`` unless this plan was made for ``budget``, ``cap`` and ``settings``
        (every architecture of ``settings`` planned, each with the same options)."""
        problems = []
        kind, _, amount = budget.partition(":")
        if (self.kind, self.amount, self.cap) != (kind, parse_amount(amount) if amount else None, cap):
            problems.append(f"it plans --budget {self.budget} (cap {self.cap}), this sweep {budget} (cap {cap})")
        mine, theirs = dict(self.settings), dict(settings)
        my_archs, their_archs = mine.pop("archs", {}), theirs.pop("archs", {})
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                problems.append(f"{key}: plan {mine.get(key)!r}, sweep {theirs.get(key)!r}")
        missing = [a for a in their_archs if a not in self.archs]
        if missing:
            problems.append(f"no count for {', '.join(missing)}")
        changed = [a for a in their_archs if a in my_archs and my_archs[a] != their_archs[a]]
        if changed:
            problems.append(f"other options for {', '.join(changed)}")
        if problems:
            raise PlanMismatch(f"the budget plan {source} does not fit this sweep: " + "; ".join(problems))

    def lines(self) -> list[str]:
        """The plan in words: a heading, one line per architecture, and how it was measured."""
        head = (f"budget {self.budget}: " + ("the same seconds of training steps" if self.kind == "time"
                                              else "the same training FLOPs") + f" per run, at most {self.cap} iterations")
        out = [head] + [f"  {arch}: {entry.why(self.kind, self.amount)}" for arch, entry in self.archs.items()]
        m = self.measured
        if self.kind == "time":
            out.append(
                f"  step times: {m.get('rounds', '?')} interleaved rounds (median, [interquartile range]) after "
                f"{m.get('warmup', '?')} warm-up rounds, in one process on {m.get('device_name') or m.get('device', '?')}"
                f" ({m.get('threads', '?')} threads, {m.get('precision', '?')}), {m.get('when', '')}".rstrip(", "))
            if m.get("machine_load"):
                out.append(f"  {m['machine_load']}" + (": every step time is longer by about the same factor, so the "
                                                      "ratios of the counts hold but the counts are smaller than on "
                                                      "a quiet machine" if m.get("machine_busy") else ""))
            if m.get("matmul_gflops"):
                out.append(f"  a {m.get('matmul_size', 1024)}^2 matmul timed in the same rounds: "
                           f"{m['matmul_gflops']:.1f} GFLOP/s (compare plans of other days or machines by it)")
        return out

    def run_record(self, arch: str) -> dict[str, Any]:
        """What a run of ``arch`` records about its budget (its spec and ``bench.json``)."""
        entry = self.archs[arch]
        return {"budget_given": self.budget, "budget_plan": self.digest,
                "budget_iterations": entry.iterations, "budget_why": entry.why(self.kind, self.amount),
                "budget_step_ms": None if entry.step_s is None else entry.step_s * 1e3,
                "budget_step_gflops": None if entry.step_flops is None else entry.step_flops / 1e9}


def plan_digest(budget: str, cap: int, settings: dict[str, Any]) -> str:
    return digest({"budget": budget, "cap": cap, "settings": settings})


def plan_path(out: str | Path, digest: str) -> Path:
    return Path(out) / BUDGET_DIR / f"plan-{digest}.json"


def read_plan(path: str | Path) -> BudgetPlan | None:
    """The plan in ``path``; None when there is none or it cannot be read."""
    try:
        return BudgetPlan.from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _counts(exact: dict[str, float], cap: int) -> dict[str, tuple[int, float, bool]]:
    return {arch: (min(cap, on_grid(value)), value, value > cap) for arch, value in exact.items()}


def counts_from_step_times(seconds: float, step_s: dict[str, float], cap: int) -> dict[str, tuple[int, float, bool]]:
    """Per architecture ``(iterations, exact, capped)``: ``seconds`` over its median step time."""
    return _counts({arch: seconds / t for arch, t in step_s.items()}, cap)


def counts_from_step_flops(flops: float, step_flops: dict[str, int], cap: int) -> dict[str, tuple[int, float, bool]]:
    """Per architecture ``(iterations, exact, capped)``: ``flops`` over its training FLOPs per step."""
    return _counts({arch: flops / f for arch, f in step_flops.items()}, cap)
