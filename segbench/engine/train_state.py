"""What a training run keeps track of as it goes: its position (``TrainState``, saved in ``last.pt``),
its ``log.jsonl`` writer, and the loss between checks (kept on the device)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from segbench.engine.distributed import DistInfo
from segbench.engine.metrics import lower_is_better
from segbench.engine.tracking import NullTracker, Tracker, record_metrics
from segbench.jsonio import json_safe
from segbench.run_files import writable

__all__ = ["TrainState", "RunLog", "LossWindow", "PLAN_AFTER", "note_validation", "plan_iterations"]


@dataclasses.dataclass
class TrainState:
    """Where a run is: saved in ``last.pt`` (as its fields, next to the weights) and restored on resume."""

    iteration: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_time_s: float = 0.0  # in training steps, data loading included, summed over resumptions
    images_seen: int = 0
    data_time_s: float = 0.0  # of train_time_s, waiting for the input pipeline
    val_time_s: float = 0.0
    val_metrics_time_s: float = 0.0
    best: dict = dataclasses.field(default_factory=lambda: {"value": None, "iteration": None, "metrics": None})
    last_val: dict | None = None  # {"iteration", "metrics"} of the latest validation
    log_window: list = dataclasses.field(default_factory=lambda: [0.0, 0])  # LossWindow.state() at the save
    # Convergence (every budget): the best value by the min_delta rule, the iteration that set it, and
    # validations since then.
    gain_value: float | None = None
    last_improvement_iteration: int | None = None
    stale_validations: int = 0
    planned_iterations: int | None = None  # budget "time": the steps the measured speed fits in
    anneal: list | None = None  # budget "auto": [start, end] iterations of the annealing end (train.anneal)
    stopped_by: str | None = None  # "iterations", "time" or "plateau" once the run has ended

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> TrainState:
        fresh = dataclasses.asdict(cls())
        return cls(**{key: checkpoint.get(key, fresh[key]) for key in fresh})  # .get: timings came later


class RunLog:
    """Appends JSON lines to ``log.jsonl`` (rank 0 only); flushed per line so a kill loses nothing.

    ``tracker``: where each ``train`` and ``val`` record also goes (``segbench.engine.tracking``), the same
    numbers as the line, at its iteration."""

    def __init__(self, path: Path, enabled: bool, tracker: Tracker | None = None):
        self.path, self.enabled = path, enabled
        self.tracker: Tracker = tracker or NullTracker()

    def write(self, **record) -> None:
        if self.enabled:
            with open(writable(self.path), "a") as f:
                f.write(json.dumps(json_safe(record)) + "\n")
            tracked = record_metrics(record)
            if tracked is not None:
                self.tracker.log_metrics(tracked[1], tracked[0])

    def offset(self) -> int:
        return self.path.stat().st_size if self.enabled and self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        if self.enabled and self.path.exists():
            with open(writable(self.path), "r+") as f:
                f.truncate(offset)


class LossWindow:
    """The training loss between checks, kept on the device so that a step never waits for the GPU.

    Reading a loss (``.item()``) synchronises with the device every step, and the CPU can then never
    queue the next step's kernels while the GPU computes. The window instead sums losses on the device
    (in float64, so the sums equal Python's float sums of the same values and a resumed run logs what
    an uninterrupted one does) and notes the first non-finite one. :meth:`check` reads it at the points
    where a value is needed: log intervals, before every validation and checkpoint. A checkpoint is
    therefore only ever written after the steps before it were checked finite.
    """

    def __init__(self, device: torch.device, total: float = 0.0, count: int = 0):
        self.device = device
        self.total = torch.tensor(float(total), dtype=torch.float64, device=device)
        self.count = count
        self.bad_iteration = torch.tensor(-1, device=device)
        self.bad_value = torch.tensor(0.0, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, iteration: int) -> None:
        loss = loss.to(torch.float64)
        newly_bad = ~torch.isfinite(loss) & (self.bad_iteration < 0)
        self.bad_iteration = torch.where(newly_bad, iteration, self.bad_iteration)
        self.bad_value = torch.where(newly_bad, loss, self.bad_value)
        self.total = self.total + loss
        self.count += 1

    def check(self, info: DistInfo) -> tuple[float, int | None, float]:
        """(mean loss over every process, first non-finite iteration on any process or None, its loss)."""
        figures = torch.stack([self.total, self.bad_iteration.to(torch.float64), self.bad_value])
        if info.enabled:
            gathered = [torch.empty_like(figures) for _ in range(info.world_size)]
            torch.distributed.all_gather(gathered, figures)
        else:
            gathered = [figures]
        values = [g.tolist() for g in gathered]
        bad = [(int(it), value) for _, it, value in values if it >= 0]
        mean = sum(total for total, _, _ in values) / (len(values) * max(self.count, 1))
        first = min(bad) if bad else (None, math.nan)
        return mean, first[0], first[1]

    def state(self) -> list:
        """As saved in a checkpoint (after a check, so finite)."""
        return [float(self.total.item()), self.count]


# Budget "time": the schedule is planned once this many steps have measured the speed.
PLAN_AFTER = 20


def note_validation(state: TrainState, value: float | None, iteration: int, metric: str, min_delta: float) -> None:
    """Record a validation's ``metric`` for convergence: a real improvement beats the value of the last
    one by more than ``min_delta`` (lower is better for distances); any other counts as stale."""
    if value is None or math.isnan(value):
        state.stale_validations += 1
        return
    lower = lower_is_better(metric)
    if state.gain_value is None or (state.gain_value - value if lower else value - state.gain_value) > min_delta:
        state.gain_value, state.last_improvement_iteration, state.stale_validations = value, iteration, 0
    else:
        state.stale_validations += 1


def plan_iterations(done: int, seconds: float, budget_s: float, cap: int) -> int:
    """The steps a ``budget_s``-second budget holds at the speed of the first ``done`` steps (``seconds``
    of training steps), at least ``done`` and at most ``cap``."""
    per_step = seconds / max(done, 1)
    return max(done, min(cap, int(budget_s / per_step))) if per_step > 0 else cap
