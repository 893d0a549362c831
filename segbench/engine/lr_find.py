"""The learning-rate range test (Smith, "Cyclical learning rates for training neural networks", WACV 2017;
as PyTorch Lightning's ``lr_find`` and fastai's ``lr_find``), and ``train.lr_policy=find``.

From a copy of the freshly initialised model, ``steps`` training steps on the training split with the
learning rate rising exponentially from ``start`` to ``end`` (each parameter group keeps its multiplier:
a transformer's head still gets 10x). The test stops early once the loss runs away: its exponential
moving average (a window of half a decade of rates) exceeds ``diverge`` (4) times its minimum, or the
loss turns non-finite. **The rule**: the learning rate at the minimum of the loss smoothed *without lag*
(a Gaussian over the steps, sigma a quarter of a decade of rates, applied once the test is over),
divided by 10 (fastai's ``lr_min``): the minimum itself sits at the edge of divergence, a tenth of it is
where the loss still falls fast without the instability just before the blow-up. The running average
only detects divergence: as a curve to pick from it lags, by about ``1/(1-beta)`` steps, and on a short
test that lag alone moves the minimum a decade or more towards the blow-up.

``train.lr_policy=find`` runs the test once per run folder, before training, and writes
``lr_find.json`` (every step's rate and loss, the smoothed curve, the pick and the rule); training then
uses the pick as ``train.lr`` with the run's usual schedule, and a resumed run reads the file instead of
testing again. The random-number state is restored afterwards, so the run itself is what it would be
with that ``train.lr`` given by hand.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from segbench.run_files import LR_FIND_FILE

__all__ = ["RangeTest", "range_test", "find_learning_rate", "within_a_decade", "read_found", "LR_FIND_FILE"]


@dataclass(frozen=True)
class RangeTest:
    """The test's curve and its pick."""

    lrs: list[float]
    losses: list[float]  # raw loss of each step
    smoothed: list[float]  # the losses smoothed without lag (the curve the rule reads)
    suggestion: float  # the learning rate the rule picks
    stopped: str  # "diverged" (the loss ran away) or "end" (reached ``end``)
    rule: str = "learning rate at the minimum of the lag-free smoothed loss / 10"

    def to_dict(self) -> dict:
        return asdict(self)


def range_test(step: Callable[[float], float], *, start: float = 1e-6, end: float = 1.0, steps: int = 100,
               diverge: float = 4.0) -> RangeTest:
    """Run ``step(lr) -> loss`` (one training step at that rate) for rates rising exponentially from
    ``start`` to ``end`` over ``steps`` steps; stop at divergence; pick by the rule (module docstring)."""
    if not 0 < start < end:
        raise ValueError(f"the range test needs 0 < start < end, got start={start}, end={end}")
    if steps < 2:
        raise ValueError(f"the range test needs at least 2 steps, got {steps}")
    ratio = (end / start) ** (1 / (steps - 1))
    per_decade = (steps - 1) / math.log10(end / start)
    beta = 1 - 1 / max(1.0, per_decade / 2)  # a running window of about half a decade
    lrs, losses = [], []
    average, best, stopped = 0.0, math.inf, "end"
    for k in range(steps):
        lr = start * ratio**k
        loss = float(step(lr))
        if not math.isfinite(loss):
            stopped = "diverged"
            break
        average = beta * average + (1 - beta) * loss
        running = average / (1 - beta ** (k + 1))  # bias-corrected
        lrs.append(lr)
        losses.append(loss)
        best = min(best, running)
        if k > 0 and running > diverge * best:
            stopped = "diverged"
            break
    if not losses:
        raise ValueError(f"the loss was not finite even at lr {start:g}: the range test has nothing to pick from")
    from scipy.ndimage import gaussian_filter1d

    smoothed = gaussian_filter1d(np.asarray(losses, dtype=float), sigma=max(per_decade / 4, 0.5), mode="nearest")
    lowest = int(np.argmin(smoothed))
    return RangeTest(lrs, losses, smoothed.tolist(), lrs[lowest] / 10, stopped)


def find_learning_rate(model, optimizer_factory, train_step_factory, batches, *, steps: int = 100) -> RangeTest:
    """The range test on a copy of ``model``: ``optimizer_factory(model)`` builds the run's optimiser (its
    groups carry ``lr_mult``), ``train_step_factory(model, optimizer)`` the run's step, ``batches`` yields
    (images, masks) without end. The model passed in is left untouched."""
    trial = copy.deepcopy(model)
    optimizer = optimizer_factory(trial)
    step = train_step_factory(trial, optimizer)
    source = iter(batches)

    def one_step(lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        images, masks = next(source)
        return float(step(images, masks))

    return range_test(one_step, steps=steps)


def within_a_decade(suggestion: float, prior: float) -> float:
    """The rate training uses: the test's suggestion, moved at most a decade from ``prior`` (the recipe's
    published rate). A 40- to 100-step test on noisy batches is evidence about the rate, not a verdict: a
    batch-to-batch wobble can put the smoothed minimum two decades early (a plateau read at its start), and
    a network that survives a short ramp may not survive the same rate sustained."""
    return min(max(suggestion, prior / 10), prior * 10)


def read_found(run_dir: str | Path) -> float | None:
    """The learning rate an earlier range test picked for this run folder, or None."""
    import json

    path = Path(run_dir) / LR_FIND_FILE
    if not path.is_file():
        return None
    return float(json.loads(path.read_text())["picked"])
