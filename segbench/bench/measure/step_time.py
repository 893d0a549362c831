"""Every architecture's training-step time, side by side in one process: what a time budget is turned into
iteration counts from (``segbench.bench.protocol.budget``).

The steps are the engine's (``speed.training_step_of``: the Speed section's segbench contender, at the
review's size, batch, loss and precision) and are timed by the one timing harness, interleaved
(A B C A B C ...), so a slow spell of a shared machine lengthens every architecture's rounds alike and the
ratios of the medians hold. A ``YARDSTICK_SIZE`` matmul is timed in the same rounds (the machine's speed at
the time, to compare plans made on other days) and the load is watched (``load.watch_load``).

``time_steps`` takes the closures and the clock, so a test can feed it fake steps on a fake clock.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from segbench.bench.measure.load import watch_load
from segbench.bench.measure.speed import SpeedSettings, _matmul_closure, training_step_of
from segbench.bench.measure.timing import time_interleaved
from segbench.engine.device import resolve_precision
from segbench.engine.threads import cap_threads

__all__ = ["StepTimes", "time_steps", "measure_step_times", "step_flops", "MATMUL_KEY"]

MATMUL_KEY = "matmul"  # the yardstick's name among the contenders (not an architecture name)
# The yardstick's size: an eighth of the Speed section's 2048^2 work, so that it does not outlast small steps.
YARDSTICK_SIZE = 1024


@dataclass
class StepTimes:
    """Seconds per training step of every architecture, from every timed round of every attempt (in each
    round every architecture ran once, back to back), the yardstick's rate in the same rounds, and the
    machine's load meanwhile.

    ``step_s`` is the figure a plan divides by: the median over the rounds of the architecture's share of
    the round (its time over the round's total) times the median round. A load that slows a round slows
    every step in it, so the shares, hence the ratios of the counts, do not move with it; ``median_s``,
    ``q1_s``, ``q3_s`` are the plain statistics of the same rounds (the spread the report shows)."""

    step_s: dict[str, float]
    median_s: dict[str, float]
    q1_s: dict[str, float]
    q3_s: dict[str, float]
    noisy: dict[str, bool]
    rounds: int  # timed rounds, over every attempt
    warmup: int
    attempts: int
    matmul_gflops: float | None = None
    load: dict = field(default_factory=dict)  # load.MachineLoad.record()
    threads: int | None = None  # torch's intra-op threads during the measurement


def _paired(rounds: dict[str, list[float]]) -> dict[str, float]:
    """Per contender, the median share of the round times the median round total (see ``StepTimes``)."""
    totals = [sum(values) for values in zip(*rounds.values())]
    middle = statistics.median(totals)
    return {name: statistics.median(t / total for t, total in zip(values, totals)) * middle
            for name, values in rounds.items()}


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def time_steps(steps: dict[str, Callable[[], object]], *, rounds: int, max_warmup: int, device: str = "cpu",
               clock: Callable[[], float] = time.perf_counter, yardstick: Callable[[], object] | None = None,
               min_seconds: float = 0.0) -> StepTimes:
    """Time ``steps`` (architecture -> one training step) interleaved with ``yardstick`` (a
    ``YARDSTICK_SIZE`` matmul, or None), by the one timing harness: ``rounds`` rounds, or as many as fill
    ``min_seconds``."""
    if MATMUL_KEY in steps:
        raise ValueError(f"{MATMUL_KEY!r} is the yardstick's name, not an architecture's")
    closures = dict(steps) | ({MATMUL_KEY: yardstick} if yardstick is not None else {})
    with watch_load() as watch:
        times = time_interleaved(closures, rounds=rounds, max_warmup=max_warmup, device=device, clock=clock,
                                 min_seconds=min_seconds)
    matmul = times.pop(MATMUL_KEY, None)
    gflops = 2 * YARDSTICK_SIZE**3 / matmul.median / 1e9 if matmul is not None else None
    # Every attempt's rounds, pooled: the same rounds for every architecture (the harness keeps each
    # contender's least noisy attempt, which may be another contender's noisiest).
    pooled = {arch: [t for attempt in timing.attempt_times for t in attempt] for arch, timing in times.items()}
    first = next(iter(times.values()))
    quartiles = {arch: _quartiles(values) for arch, values in pooled.items()}
    return StepTimes(step_s=_paired(pooled), median_s={a: statistics.median(v) for a, v in pooled.items()},
                     q1_s={a: q[0] for a, q in quartiles.items()}, q3_s={a: q[1] for a, q in quartiles.items()},
                     noisy={a: t.noisy for a, t in times.items()}, rounds=len(next(iter(pooled.values()))),
                     warmup=first.warmup, attempts=first.attempts, matmul_gflops=gflops, load=watch.load.record(),
                     threads=torch.get_num_threads())


def measure_step_times(archs: list[str], settings: SpeedSettings, *, threads: int | None = None,
                       say: Callable[[str], None] = print, min_seconds: float = 0.0) -> StepTimes:
    """Build every architecture of ``archs`` (options, size, batch, loss and precision from ``settings``)
    and time their training steps together (``settings.rounds`` rounds, or as many as fill ``min_seconds``,
    after at most ``settings.max_warmup`` warm-up rounds), at most at ``threads`` threads (and the run's
    allotment)."""
    device = torch.device(settings.device)
    cap_threads()  # as each run does: the counts are for the runs' thread count
    if threads is not None and threads < torch.get_num_threads():
        torch.set_num_threads(threads)
    steps = {}
    for arch in archs:
        torch.manual_seed(0)
        steps[arch], _ = training_step_of(arch, settings)
    length = f"at least {settings.rounds} rounds" + (f" and {min_seconds:g} s" if min_seconds > 0 else "")
    say(f"budget: timing the training steps of {len(archs)} architecture(s) interleaved, {length}")
    dtype = resolve_precision(settings.amp, device).compute_dtype
    return time_steps(steps, rounds=settings.rounds, max_warmup=settings.max_warmup, device=settings.device,
                      yardstick=_matmul_closure(device, dtype, YARDSTICK_SIZE), min_seconds=min_seconds)


def step_flops(archs: list[str], settings: SpeedSettings) -> dict[str, int]:
    """Training FLOPs of one step of every architecture (forward + backward, the FLOP counter's)."""
    out = {}
    for arch in archs:
        torch.manual_seed(0)
        _, out[arch] = training_step_of(arch, settings)
    return out
