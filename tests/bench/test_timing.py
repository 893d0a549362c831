"""The timing harness's rules, on a fake clock: closures advance it by chosen durations, so what is
tested is the warm-up rule, the statistic and the re-measurement, never this machine's speed."""

import itertools

import numpy as np
import pytest

from segbench.bench.measure.timing import NOISY_ABOVE, Timing, time_interleaved


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def closure(self, durations, calls=None, name=""):
        durations = iter(durations)

        def call():
            if calls is not None:
                calls.append(name)
            self.now += next(durations)

        return call


def test_contenders_are_timed_round_robin():
    clock, calls = FakeClock(), []
    closures = {n: clock.closure(itertools.repeat(1.0), calls, n) for n in "abc"}
    timings = time_interleaved(closures, rounds=3, min_warmup=2, max_warmup=5, clock=clock)
    assert calls == list("abc") * 5  # 2 warm-up rounds (already stable) + 3 timed
    assert all(t.times == (1.0, 1.0, 1.0) and t.warmup == 2 and t.settled and not t.noisy for t in timings.values())


def test_warmup_runs_until_consecutive_timings_agree():
    clock = FakeClock()
    slow_start = itertools.chain([50.0, 20.0, 9.0, 4.0, 2.0, 1.02], itertools.repeat(1.0))
    timings = time_interleaved({"a": clock.closure(slow_start), "b": clock.closure(itertools.repeat(3.0))},
                               rounds=4, min_warmup=1, max_warmup=20, clock=clock)
    # Rounds 1-6 of "a" differ by more than 10% from their predecessor; the 6th (1.02 after 2.0) too;
    # the 7th (1.0 after 1.02) agrees.
    assert timings["a"].warmup == timings["b"].warmup == 7 and timings["a"].settled
    assert timings["a"].times == (1.0,) * 4


def test_warmup_is_bounded_and_says_it_did_not_settle():
    clock = FakeClock()
    alternating = itertools.cycle([1.0, 2.0])
    timing = time_interleaved({"a": clock.closure(alternating)}, rounds=4, max_warmup=5, attempts=1, clock=clock)["a"]
    assert timing.warmup == 5 and not timing.settled


def test_median_and_quartiles_are_numpys():
    values = (5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.0)
    timing = Timing(values, warmup=0, settled=True, attempts=1, noisy=False)
    q1, q3 = np.percentile(values, [25, 75])
    assert timing.median == np.median(values) and timing.quartiles == pytest.approx((q1, q3))
    assert timing.spread == pytest.approx((q3 - q1) / np.median(values))
    summary = timing.summary(1e3)
    assert summary["median"] == pytest.approx(4000.0) and summary["min"] == pytest.approx(1000.0)


def test_a_noisy_figure_is_measured_again_and_the_steadiest_attempt_kept():
    clock = FakeClock()
    # Warm-up 2 rounds of 1.0; first attempt wildly spread; second attempt steady.
    durations = itertools.chain([1.0, 1.0], [1.0, 3.0, 1.0, 3.0], itertools.repeat(1.0))
    timing = time_interleaved({"a": clock.closure(durations)}, rounds=4, min_warmup=2, clock=clock)["a"]
    assert timing.attempts == 2 and not timing.noisy and timing.times == (1.0,) * 4


def test_every_attempts_rounds_are_kept_beside_the_steadiest():
    clock = FakeClock()
    # "a" is spread in the first attempt and steady in the second; "b" is steadiest in the first.
    a = itertools.chain([1.0, 1.0], [1.0, 3.0, 1.0, 3.0], itertools.repeat(1.0))
    b = itertools.chain([2.0, 2.0], [2.0, 2.0, 2.0, 2.0], [2.0, 2.2, 2.0, 2.2], itertools.repeat(2.0))
    timings = time_interleaved({"a": clock.closure(a), "b": clock.closure(b)}, rounds=4, min_warmup=2, clock=clock)
    assert timings["a"].attempts == timings["b"].attempts == 2
    assert timings["a"].times == pytest.approx((1.0,) * 4) and timings["b"].times == pytest.approx((2.0,) * 4)
    # Round k of "a" ran beside round k of "b", in each attempt (each kept its steadiest for its median).
    assert [pytest.approx(t) for t in timings["a"].attempt_times] == [(1.0, 3.0, 1.0, 3.0), (1.0,) * 4]
    assert [pytest.approx(t) for t in timings["b"].attempt_times] == [(2.0,) * 4, (2.0, 2.2, 2.0, 2.2)]


def test_a_figure_that_stays_noisy_is_marked():
    clock = FakeClock()
    durations = itertools.chain([1.0, 1.0], itertools.cycle([1.0, 3.0]))
    timing = time_interleaved({"a": clock.closure(durations)}, rounds=4, min_warmup=2, attempts=3, clock=clock)["a"]
    assert timing.attempts == 3 and timing.noisy and timing.spread > NOISY_ABOVE


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        time_interleaved({"a": lambda: None}, rounds=0)


def test_min_seconds_times_as_many_rounds_as_fill_it():
    clock = FakeClock()
    # A round of "a" (0.25 s) and "b" (0.5 s) takes 0.75 s: 30 s asks for 40 rounds, more than the 7 given.
    closures = {"a": clock.closure(itertools.repeat(0.25)), "b": clock.closure(itertools.repeat(0.5))}
    timings = time_interleaved(closures, rounds=7, min_warmup=2, clock=clock, min_seconds=30.0)
    assert len(timings["a"].times) == len(timings["b"].times) == 40
    # Rounds longer than min_seconds / rounds: the given rounds stand; the bound caps a tiny round.
    slow = time_interleaved({"a": clock.closure(itertools.repeat(10.0))}, rounds=7, clock=clock, min_seconds=30.0)
    assert len(slow["a"].times) == 7
    tiny = time_interleaved({"a": clock.closure(itertools.repeat(1e-6))}, rounds=7, clock=clock, min_seconds=30.0,
                            max_rounds=50)
    assert len(tiny["a"].times) == 50
