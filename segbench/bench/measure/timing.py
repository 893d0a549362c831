"""The one timing harness: every time segbench reports (the review table's latency and throughput,
the Speed section, ``segbench speed``) is taken by :func:`time_interleaved`, with one warm-up rule and
one statistic.

How, and why:

- **Interleaved.** Each round calls every contender once (A B C A B C ...), so a slow period on a
  shared or throttled machine hits all of them alike instead of whichever ran during it.
- **Warm-up until stable.** The first calls of a new input shape pay one-off costs (oneDNN builds a
  primitive per shape, allocators grow their pools, cuDNN autotunes); a fixed count of warm-up calls
  is either too short for some models or wasteful for others. Warm-up rounds continue until every
  contender's last two warm-up timings agree within ``stable_within`` (relative), at least
  ``min_warmup`` and at most ``max_warmup`` rounds; whether they settled is recorded.
- **Median and interquartile range.** The median of the timed rounds is the figure; the spread is
  the interquartile range (quartiles as ``statistics.quantiles(..., method="inclusive")``) relative
  to the median. A contender whose spread exceeds ``noisy_above`` is measured again (all contenders
  together, to keep the interleaving), up to ``attempts`` times; the attempt with the smallest spread
  is kept, and one still above the limit is marked ``noisy`` so the report says so rather than
  printing it silently. Every attempt's rounds are recorded too: in each round every contender ran back to
  back with the others, so two contenders' rounds pair up across all attempts (``segbench speed``'s
  segbench/peer ratio and its interval), whichever attempt each kept for its median.
- CUDA work is asynchronous: the device is synchronised after every call before the clock is read.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Timing", "time_interleaved", "synchronize", "NOISY_ABOVE", "STABLE_WITHIN", "MAX_ROUNDS"]

STABLE_WITHIN = 0.1  # warm-up has settled when consecutive timings differ by at most 10%
NOISY_ABOVE = 0.2  # a figure whose IQR exceeds 20% of its median is re-measured, then marked noisy
MAX_ROUNDS = 1000  # the most rounds ``min_seconds`` asks for


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA is asynchronous; the CPU needs nothing)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(times: tuple[float, ...]) -> tuple[float, float]:
    if len(times) < 2:
        return times[0], times[0]
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, q3


def _spread(times: tuple[float, ...]) -> float:
    q1, q3 = _quartiles(times)
    return (q3 - q1) / statistics.median(times)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one contender: the timed rounds of the kept attempt and how they were taken."""

    times: tuple[float, ...]
    warmup: int  # warm-up rounds before the first attempt
    settled: bool  # warm-up ended because timings agreed, not because it hit its bound
    attempts: int  # measurement attempts made (more than 1: re-measured because of noise)
    noisy: bool  # the kept attempt's spread is still above the limit
    # Every attempt's timed rounds, the kept one among them: round k of one contender and round k of
    # another ran back to back, so across all attempts their rounds pair up.
    attempt_times: tuple[tuple[float, ...], ...] = ()

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def quartiles(self) -> tuple[float, float]:
        return _quartiles(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range over the median."""
        return _spread(self.times)

    def summary(self, scale: float = 1.0) -> dict:
        """The figures a record keeps, in seconds times ``scale`` (1e3 for milliseconds)."""
        q1, q3 = self.quartiles
        return {"median": self.median * scale, "q1": q1 * scale, "q3": q3 * scale, "min": min(self.times) * scale,
                "rounds": len(self.times), "warmup": self.warmup, "settled": self.settled,
                "attempts": self.attempts, "noisy": self.noisy}


def _stable(last: list[float], within: float) -> bool:
    return len(last) >= 2 and abs(last[-1] - last[-2]) <= within * min(last[-1], last[-2])


def _rounds_for(rounds: int, warm: dict[str, list[float]], min_seconds: float, max_rounds: int) -> int:
    """``rounds``, or as many as fill ``min_seconds`` at the warm-up's median round (at most ``max_rounds``)."""
    totals = [sum(values) for values in zip(*warm.values())]
    if min_seconds <= 0 or not totals:
        return rounds
    middle = statistics.median(totals)
    wanted = math.ceil(min_seconds / middle) if middle > 0 else max_rounds
    return max(rounds, min(wanted, max_rounds))


def _round(closures: dict[str, Callable[[], object]], device: torch.device, into: dict[str, list[float]],
           clock: Callable[[], float]) -> None:
    for name, fn in closures.items():
        start = clock()
        fn()
        synchronize(device)
        into[name].append(clock() - start)


def time_interleaved(
    closures: dict[str, Callable[[], object]],
    *,
    rounds: int,
    device: torch.device | str = "cpu",
    min_warmup: int = 2,
    max_warmup: int = 10,
    stable_within: float = STABLE_WITHIN,
    noisy_above: float = NOISY_ABOVE,
    attempts: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    min_seconds: float = 0.0,
    max_rounds: int = MAX_ROUNDS,
) -> dict[str, Timing]:
    """Time every closure ``rounds`` times, interleaved, after a warm-up that waits for stable timings;
    re-measure while any spread is above ``noisy_above`` (see the module docstring). ``min_seconds``: time
    more rounds where ``rounds`` would take less than that (from the warm-up's median round), at most
    ``max_rounds``: a figure taken over a longer stretch of a drifting machine."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if max_warmup < 0:
        raise ValueError(f"max_warmup must be >= 0, got {max_warmup}")
    min_warmup = min(min_warmup, max_warmup)  # the bound wins
    device = torch.device(device)
    warm: dict[str, list[float]] = {name: [] for name in closures}
    warmup = 0
    while warmup < max_warmup and (
        warmup < min_warmup or not all(_stable(t, stable_within) for t in warm.values())
    ):
        _round(closures, device, warm, clock)
        warmup += 1
    settled = all(_stable(t, stable_within) for t in warm.values()) or max_warmup == 0
    rounds = _rounds_for(rounds, warm, min_seconds, max_rounds)

    best: dict[str, tuple[float, ...]] = {}
    every: dict[str, list[tuple[float, ...]]] = {name: [] for name in closures}
    made = 0
    for made in range(1, max(attempts, 1) + 1):
        times: dict[str, list[float]] = {name: [] for name in closures}
        for _ in range(rounds):
            _round(closures, device, times, clock)
        for name, values in times.items():
            every[name].append(tuple(values))
            if name not in best or _spread(tuple(values)) < _spread(best[name]):
                best[name] = tuple(values)
        if all(_spread(t) <= noisy_above for t in best.values()):
            break
    return {name: Timing(t, warmup, settled, made, _spread(t) > noisy_above, tuple(every[name])) for name, t in best.items()}
