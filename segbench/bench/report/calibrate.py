"""``segbench calibrate``: the verdict's error rates, measured by simulation with a known truth.

Each scenario draws per-case rows (case, class, Dice, whether the reference is empty) for architectures
whose true mean Dice is known, and sends them through the very functions the report runs: ``gather``
(unit scores with the empty-structure rules, blocks of slices, seeds crossed with units, the floor,
``segbench.comparison.compare``) and ``verdict``. Per scenario it reports:

- ``coverage``: the share of per-architecture 95% intervals that hold the true mean;
- ``familywise_error``: the share of simulations with at least one false claim (an architecture called
  worse than the leader, or left out of the confidence set for the best, while it is truly as good; or
  called equivalent to the leader while truly at least the margin away). "Not shown better than the
  floor" is a failure to reject, not a claim, and is not counted;
- ``power``: the share of simulations in which a truly worse architecture is called worse (NaN where
  none is);
- ``wrong_best``: the share in which the verdict names a best ("Best: X") that is not truly the best
  (all of them where every architecture is equal).

The numbers depend only on ``--simulations`` and ``--seed``: the same command prints the same table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from segbench.bench.report.evidence import MARGIN, RunKey, RunScores, gather
from segbench.bench.report.verdict import verdict

__all__ = ["Scenario", "SCENARIOS", "Outcome", "run_scenario", "calibrate"]

CASE_SD = 0.08  # spread of a case's true Dice around the architecture's mean (cases differ in difficulty)
PAIRED_SD = 0.05  # spread of the difference between two architectures on the same case
MEAN = 0.8


@dataclass(frozen=True)
class Truth:
    """What one simulation drew: the rows of every run, and the true means."""

    runs: dict[str, dict[RunKey, RunScores]]
    means: dict[str, float]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    draw: Callable[[np.random.Generator], Truth]


def _case_rows(scores: np.ndarray, empty: np.ndarray | None = None, names: list[str] | None = None) -> list[dict]:
    """One foreground class per case; ``empty``: where the reference is empty (the Dice then NaN or 0)."""
    names = names or [f"case{i:03d}" for i in range(len(scores))]
    empty = np.zeros(len(scores), dtype=bool) if empty is None else empty
    return [{"case": name, "class": "fg", "dice": float(v), "ref_empty": bool(e)} for name, v, e in zip(names, scores, empty)]


def _crossed(k: int, n: int, seeds: int, shift: dict[int, float] | None = None, seed_sd: float = 0.0,
             noise_sd: float = 0.01) -> Callable[[np.random.Generator], Truth]:
    """k architectures on n cases: a shared case effect, an architecture-by-case effect (paired sd
    PAIRED_SD), and per seed a seed effect (sd ``seed_sd``) and seed-by-case noise (sd ``noise_sd``).
    ``shift``: architecture index -> its true difference from MEAN."""
    shift = shift or {}

    def draw(rng: np.random.Generator) -> Truth:
        case = rng.normal(0, CASE_SD, n)
        runs, means = {}, {}
        for a in range(k):
            mean = MEAN + shift.get(a, 0.0)
            own = case + rng.normal(0, PAIRED_SD / math.sqrt(2), n)
            runs[f"arch{a}"] = {RunKey(None, s): RunScores(_case_rows(
                mean + own + rng.normal(0, seed_sd) + rng.normal(0, noise_sd, n)), []) for s in range(seeds)}
            means[f"arch{a}"] = mean
        return Truth(runs, means)

    return draw


def _slices(n_slices: int, rho: float = 0.5) -> Callable[[np.random.Generator], Truth]:
    """Two equal architectures on the slices of one volume; their per-slice difference is AR(1) with lag-1
    autocorrelation ``rho`` (the built-in slab's seed differences measured 0.53)."""

    def draw(rng: np.random.Generator) -> Truth:
        ar = np.empty(n_slices)
        ar[0] = rng.normal()
        for t in range(1, n_slices):
            ar[t] = rho * ar[t - 1] + math.sqrt(1 - rho**2) * rng.normal()
        base = MEAN + rng.normal(0, CASE_SD, n_slices)
        runs = {}
        for name, sign in (("arch0", 1), ("arch1", -1)):
            dice = base + sign * PAIRED_SD / 2 * ar
            slices = [{"case": "volume", "slice": str(t), "class": "fg", "dice": float(d), "ref_empty": False}
                      for t, d in enumerate(dice)]
            cases = [{"case": "volume", "class": "fg", "dice": float(dice.mean()), "ref_empty": False}]
            runs[name] = {RunKey(None, 0): RunScores(cases, slices)}
        return Truth(runs, {"arch0": MEAN, "arch1": MEAN})

    return draw


def _hallucination(n: int = 24, empty: int = 8) -> Callable[[np.random.Generator], Truth]:
    """Two architectures equal on the ``n - empty`` cases with a structure; on the ``empty`` cases whose
    reference is empty, arch0 predicts nothing (scores 1) and arch1 invents a structure (Dice 0)."""

    def draw(rng: np.random.Generator) -> Truth:
        case = MEAN + rng.normal(0, CASE_SD, n - empty)
        empties = np.r_[np.zeros(n - empty, dtype=bool), np.ones(empty, dtype=bool)]
        runs = {}
        for name, on_empty in (("arch0", math.nan), ("arch1", 0.0)):
            dice = np.r_[case + rng.normal(0, PAIRED_SD / math.sqrt(2), n - empty), np.full(empty, on_empty)]
            runs[name] = {RunKey(None, 0): RunScores(_case_rows(dice, empties), [])}
        share = (n - empty) / n
        return Truth(runs, {"arch0": MEAN * share + (1 - share), "arch1": MEAN * share})

    return draw


SCENARIOS: tuple[Scenario, ...] = (
    *(Scenario(f"equal_{k}", f"{k} equal architectures, 30 cases, one seed", _crossed(k, 30, 1)) for k in (2, 5, 10)),
    *(Scenario(f"worse_0.03_n{n}", f"one architecture 0.03 worse (paired sd {PAIRED_SD}), {n} cases",
               _crossed(2, n, 1, {1: -0.03})) for n in (8, 16, 40)),
    *(Scenario(f"seeds_{s}", f"2 equal architectures, 30 cases, {s} seed(s) crossed with cases (seed-by-case sd 0.01)",
               _crossed(2, 30, s)) for s in (1, 3, 5)),
    Scenario("seeds_3_seed_effect", "as seeds_3, plus a seed effect (sd 0.01) on every case: 3 seeds estimate it poorly",
             _crossed(2, 30, 3, seed_sd=0.01)),
    *(Scenario(f"ar1_slices_{n}", f"2 equal architectures on {n} slices of one volume, AR(1) differences, rho 0.5",
               _slices(n)) for n in (16, 64, 128)),
    Scenario("hallucination", "24 cases, 8 with an empty reference where arch1 invents a structure", _hallucination()),
)


@dataclass(frozen=True)
class Outcome:
    coverage: float
    familywise_error: float
    power: float
    wrong_best: float
    false_equivalence: float
    simulations: int


def _false_claims(evidence, truth: Truth, margin: float) -> tuple[bool, bool, bool]:
    """(any false claim, a truly worse architecture called worse, a false equivalence)."""
    c = evidence.comparison
    if not c.inferential:
        return False, False, False
    lead = c.leader
    false_claim = found = false_equivalence = False
    for s in c.standings:
        gap = truth.means[s.name] - truth.means[lead]
        if s.status == "worse":
            found = found or gap < 0
            false_claim = false_claim or gap >= 0
        elif s.status == "equivalent" and abs(gap) >= margin:
            false_claim = false_equivalence = True
        if not s.in_best_set and s.learned and s.status != "worse":
            false_claim = false_claim or all(truth.means[s.name] >= v for v in truth.means.values())
    return false_claim, found, false_equivalence


def run_scenario(scenario: Scenario, simulations: int, seed: int = 0, margin: float = MARGIN,
                 n_resamples: int = 2000) -> Outcome:
    """Simulate ``scenario`` ``simulations`` times (the same ``seed`` gives the same numbers)."""
    rng = np.random.default_rng(seed)
    covered = intervals = errors = found = wrong = equivalences = 0
    for i in range(simulations):
        truth = scenario.draw(rng)
        evidence = gather(truth.runs, margin=margin, n_resamples=n_resamples)
        c = evidence.comparison
        for s in c.standings:
            if not math.isnan(s.low):
                intervals += 1
                covered += s.low <= truth.means[s.name] <= s.high
        false_claim, worse_found, false_equivalence = _false_claims(evidence, truth, margin)
        errors += false_claim
        found += worse_found
        equivalences += false_equivalence
        top = max(truth.means.values())
        named = [s for s in verdict(evidence, [], []) if s.startswith("Best: ")]
        wrong += bool(named) and truth.means[c.leader] < top or (bool(named) and len(set(truth.means.values())) == 1)
    has_worse = len(set(scenario.draw(np.random.default_rng(0)).means.values())) > 1
    return Outcome(coverage=covered / intervals if intervals else math.nan, familywise_error=errors / simulations,
                   power=found / simulations if has_worse else math.nan, wrong_best=wrong / simulations,
                   false_equivalence=equivalences / simulations, simulations=simulations)


def calibrate(simulations: int = 2000, seed: int = 0, names: list[str] | None = None,
              progress: Callable[[str], None] | None = None) -> Iterator[tuple[Scenario, Outcome]]:
    """Every scenario (or those in ``names``), in order, with its outcome."""
    for scenario in SCENARIOS:
        if names and scenario.name not in names:
            continue
        if progress:
            progress(scenario.name)
        yield scenario, run_scenario(scenario, simulations, seed)
