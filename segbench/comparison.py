"""How the review compares architectures: one design-aware bootstrap, simultaneous intervals, and three
answers per comparison (worse / equivalent within a margin / inconclusive). Numpy and scipy only.

**Data.** Per architecture a matrix of unit scores ``(seeds, units)``, every architecture on the *same*
units in the same order (a unit is a case, or a block of contiguous slices of one volume). With
cross-validation each unit is scored by the model that held it out, so row s of the matrix is "seed s of
every fold". Seeds are *crossed* with units (every seed scores every unit): they are resampled
independently of the units, never nested inside them.

**The two-way bootstrap** (McCullagh 2000, "Resampling and exchangeable arrays", Bernoulli 6(2); Owen 2007,
"The pigeonhole bootstrap", Ann. Appl. Stat. 1(2)): resample b draws n units with replacement, one draw
shared by every architecture (the comparison stays paired), and for each architecture independently k of
its k seeds with replacement (one seed: no draw, seed-to-seed variation is then not measured); theta*_a
is the mean of the drawn seeds x drawn units. The variance of theta* holds the unit, seed and residual
parts of the grand mean's variance (its residual part about twice, which errs on the wide side).

**Per architecture**: the mean and its *expanded percentile* interval of theta*_a (Hesterberg 2015, "What
teachers should know about the bootstrap", Am. Stat. 69(4)): the bootstrap's spread is that of the
plug-in variance, too small by sqrt((n-1)/n), and a normal quantile is too short for a t one, so a
quantile level q is replaced by Phi(sqrt(n/(n-1)) t_{n-1}(q)).

**Between architectures**: simultaneous (1 - alpha) intervals for every pairwise difference of means,
and for each architecture's difference from the floor (below), from the bootstrap-t max-statistic
(Westfall & Young 1993, ch. 2; Hall 1992 for the bootstrap-t). The standard error of a difference in the
crossed design is estimated as var_units(d_u) / n + var_seeds(a) / k_a + var_seeds(b) / k_b (d_u: the
unit's seed-averaged difference; var_seeds: the variance of the seeds' unit-averaged means; 0 with one
seed). c is the 1 - alpha quantile over resamples of max_ab |(d*_ab - d_ab) / se*_ab|, each resample's
differences studentized by the standard errors computed on that resample (their variance plus 1/n of the
observed one, so that a resample whose differences happen to be all alike gives a large but finite t);
the interval is d_ab +- c se_ab.
Every claim below is read off this one family, so together they hold with probability 1 - alpha:
whatever names a best, a group or a difference keeps the family-wise error at alpha, however many
architectures there are and whichever one leads.

- **Ranked and tested by the same statistic**: the leader is the architecture with the best mean.
- **Worse**: a's interval with the leader lies entirely on the leader's side of 0.
- **Equivalent within the margin m**: a's interval with the leader lies inside (-m, m). That is two
  one-sided tests at the simultaneous level (Schuirmann 1987), stricter than one TOST at alpha.
- **Inconclusive**: neither; the difference the data could detect at 80% power is (c + z_0.8) se.
- **Confidence set for the best** (Hsu 1996, multiple comparisons with the best): the architectures no
  interval shows worse than another. It holds the truly best with probability at least 1 - alpha; a
  single member is named "best".
- **The floor**: the trivial prediction (background everywhere) scored on the same units. An
  architecture whose interval with the floor does not lie above 0 is "not shown to have learned"; it is never named
  best nor counted in a group.

Fewer than ``MIN_UNITS`` units: no inferential claim at all (the bootstrap of so few units has almost
no distinct resamples).

**Ranking stability**: on the same resamples, how often each architecture has the best theta*.

Every rule here is calibrated by simulation with a known truth (``segbench calibrate``,
``segbench/bench/calibrate.py``): interval coverage, family-wise error, power, how often a wrong best is
named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats

__all__ = ["MIN_UNITS", "POWER", "FLOOR", "Comparison", "Standing", "compare", "expanded_level"]

MIN_UNITS = 8  # fewer units than this: no interval, no test, no claim
POWER = 0.8  # the power at which the detectable difference is stated
FLOOR = "floor (background everywhere)"  # the floor's name in the comparison's tables
_TINY = 1e-12  # a standard error or deviation below this is float noise of a constant difference


def expanded_level(q: float, n: int) -> float:
    """Hesterberg's expanded quantile level: Phi(sqrt(n / (n - 1)) t_{n-1}(q))."""
    if n < 2:
        return q
    return float(special.ndtr(math.sqrt(n / (n - 1)) * stats.t.ppf(q, n - 1)))


@dataclass(frozen=True)
class Standing:
    """One architecture's place in the comparison."""

    name: str
    mean: float
    low: float  # its own (1 - alpha) expanded-percentile interval
    high: float
    seeds: int
    diff: float  # mean - the leader's mean (0 for the leader)
    diff_low: float  # simultaneous interval of that difference (NaN for the leader)
    diff_high: float
    detectable: float  # the difference from the leader detectable at POWER (NaN for the leader)
    floor_low: float  # lower end of the simultaneous interval of mean - floor (NaN without a floor)
    learned: bool  # its interval with the floor lies above 0 (True without a floor)
    status: str  # "leader", "worse", "equivalent", "inconclusive"
    in_best_set: bool  # no interval shows it worse than another (and it learned)
    first_share: float  # share of resamples where its theta* is the best


@dataclass(frozen=True)
class Comparison:
    """The comparison of architectures on common units (module docstring)."""

    n_units: int
    alpha: float
    margin: float
    n_resamples: int
    inferential: bool  # enough units for any claim (n_units >= MIN_UNITS)
    critical: float  # the simultaneous critical value c (bootstrap-t max); NaN when not inferential
    floor_mean: float  # NaN without a floor
    standings: tuple[Standing, ...]  # the leader first, then by mean
    rank_counts: dict[str, dict[float, int]]  # architecture -> rank (1 = best) -> resamples (empty: no inference)
    # (a, b) -> (mean_a - mean_b, low, high): the simultaneous interval of every ordered pair of architectures
    # (the floor left out), the family every claim above is read from; NaN ends when not inferential.
    pairwise: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)

    @property
    def leader(self) -> str:
        return self.standings[0].name

    @property
    def best_set(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.standings if s.in_best_set)

    @property
    def best(self) -> str | None:
        """The architecture shown better than every other, if there is one."""
        return self.best_set[0] if len(self.best_set) == 1 and len(self.standings) > 1 else None

    @property
    def learned(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.standings if s.learned)

    def standing(self, name: str) -> Standing:
        return next(s for s in self.standings if s.name == name)

    def difference(self, a: str, b: str) -> tuple[float, float, float]:
        """mean_a - mean_b and its simultaneous interval (low, high), from the same family as every claim."""
        return self.pairwise[(a, b)]


def _check(scores: Mapping[str, np.ndarray], floor: np.ndarray | None) -> tuple[dict[str, np.ndarray], int]:
    if not scores:
        raise ValueError("compare needs at least one architecture")
    matrices = {}
    for name, values in scores.items():
        x = np.asarray(values, dtype=np.float64)
        x = x[None, :] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"scores[{name!r}] must be (seeds, units), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"scores[{name!r}] has a non-finite score: apply the empty-structure rules first")
        matrices[name] = x
    widths = {x.shape[1] for x in matrices.values()} | ({len(floor)} if floor is not None else set())
    if len(widths) != 1:
        raise ValueError(f"every architecture (and the floor) must be scored on the same units; widths {sorted(widths)}")
    return matrices, widths.pop()


class _Draws:
    """The two-way resamples, chunk by chunk: per chunk the unit counts and each architecture's seed counts."""

    def __init__(self, matrices: list[np.ndarray], n_resamples: int, rng: np.random.Generator):
        self.matrices, self.n_resamples, self.rng = matrices, n_resamples, rng

    def chunks(self, size: int = 250):
        n = self.matrices[0].shape[1]
        for start in range(0, self.n_resamples, size):
            b = min(size, self.n_resamples - start)
            units = self.rng.multinomial(n, np.full(n, 1 / n), size=b).astype(np.float64)  # (b, n)
            seeds = [np.ones((b, 1)) if x.shape[0] == 1 else
                     self.rng.multinomial(x.shape[0], np.full(x.shape[0], 1 / x.shape[0]), size=b).astype(np.float64)
                     for x in self.matrices]
            yield units, seeds


def _seed_variance(per_seed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sample variance over seeds (with multiplicity ``weights``, rows: resamples) of the seeds' means."""
    k = weights.shape[1]
    if k == 1:
        return np.zeros(weights.shape[0])
    mean = (weights * per_seed).sum(axis=1) / k
    return ((weights * per_seed**2).sum(axis=1) / k - mean**2) * k / (k - 1)


def _difference_variance(unit_means: list[np.ndarray], seed_var: list[np.ndarray], units: np.ndarray, i: int,
                         j: int) -> np.ndarray:
    """Estimated variance of mean_i - mean_j in the crossed design, per resample (rows):
    var over units of the paired difference of seed-averaged scores / n, plus each side's variance over
    seeds of unit-averaged scores / its seeds."""
    n = units.shape[1]
    d = unit_means[i] - unit_means[j]
    first = (units * d).sum(axis=1) / n
    unit_var = ((units * d**2).sum(axis=1) / n - first**2) * n / (n - 1)
    return np.maximum(unit_var, 0) / n + seed_var[i] + seed_var[j]


def _resample(matrices: list[np.ndarray], n_resamples: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """theta* (architectures, B); the observed standard error of every pairwise difference (k, k); and per
    resample the largest studentized deviation max_ij |(d*_ij - d_ij) / se*_ij| (B,): the bootstrap-t
    max-statistic."""
    k = len(matrices)
    ones = [np.ones((1, x.shape[0])) for x in matrices]
    means, variances = _statistics(matrices, np.ones((1, matrices[0].shape[1])), ones)
    se = np.zeros((k, k))
    for (i, j), variance in variances.items():
        se[i, j] = se[j, i] = math.sqrt(variance[0])
    thetas, maxima = [], []
    for units, seeds in _Draws(matrices, n_resamples, rng).chunks():
        theta, resampled = _statistics(matrices, units, seeds)
        largest = np.zeros(units.shape[0])
        for (i, j), variance in resampled.items():
            if se[i, j] <= _TINY:  # a constant difference (float noise aside): nothing random to compare
                continue
            deviation = np.abs(theta[i] - theta[j] - (means[i, 0] - means[j, 0]))
            # A resample whose differences happen to be constant (every drawn unit alike) has se* = 0; adding
            # 1/n of the observed variance keeps its t large but finite, and moves others by O(1/n).
            studentized = deviation / np.sqrt(variance + se[i, j] ** 2 / units.shape[1])
            largest = np.maximum(largest, np.where(deviation <= _TINY, 0.0, studentized))
        thetas.append(theta)
        maxima.append(largest)
    return np.concatenate(thetas, axis=1), se, np.concatenate(maxima)


def _statistics(matrices: list[np.ndarray], units: np.ndarray, seeds: list[np.ndarray]
                ) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """For resamples given by unit counts (b, n) and seed counts [(b, k_a)]: the means (archs, b) and the
    estimated variance of every pairwise difference {(i, j): (b,)}."""
    n = units.shape[1]
    unit_means = [w @ x / x.shape[0] for x, w in zip(matrices, seeds)]  # (b, n): seed-averaged per unit
    theta = np.stack([(units * u).sum(axis=1) / n for u in unit_means])
    seed_var = [_seed_variance((units @ x.T) / n, w) / x.shape[0] for x, w in zip(matrices, seeds)]
    pairs = [(i, j) for i in range(len(matrices)) for j in range(i + 1, len(matrices))]
    return theta, {(i, j): _difference_variance(unit_means, seed_var, units, i, j) for i, j in pairs}


def compare(
    scores: Mapping[str, np.ndarray],
    *,
    floor: np.ndarray | None = None,
    margin: float = 0.01,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int | None = 0,
) -> Comparison:
    """Compare architectures scored on the same units (higher is better); see the module docstring.

    ``scores``: architecture -> (seeds, units) matrix (a 1-D array is one seed); ``floor``: the trivial
    prediction's score per unit, or None. The same ``seed`` gives the same numbers.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    matrices, n_units = _check(scores, floor)
    names = list(matrices)
    if floor is not None:
        matrices = {**matrices, FLOOR: np.asarray(floor, dtype=np.float64)[None, :]}
    means = np.array([x.mean() for x in matrices.values()])
    k = len(names)
    order = sorted(range(k), key=lambda i: (-means[i], names[i]))
    leader = order[0]
    inferential = n_units >= MIN_UNITS
    nan = float("nan")
    if inferential:
        theta, se, maxima = _resample(list(matrices.values()), n_resamples, np.random.default_rng(seed))
        critical = float(np.quantile(maxima, 1 - alpha, method="higher"))  # no interpolation with inf
        levels = (expanded_level(alpha / 2, n_units), expanded_level(1 - alpha / 2, n_units))
        intervals = [tuple(np.quantile(row, levels)) for row in theta]
        firsts = np.bincount(np.argmax(theta[:k], axis=0), minlength=k) / n_resamples
        ranks = stats.rankdata(-theta[:k], axis=0)  # ties share their average rank
        rank_counts = {names[i]: {float(r): int(c) for r, c in zip(*np.unique(ranks[i], return_counts=True))}
                       for i in order}
    else:
        se, critical = np.zeros((len(means), len(means))), nan
        intervals = [(nan, nan)] * len(means)
        firsts = np.full(k, nan)
        rank_counts = {}

    def interval(i: int, j: int) -> tuple[float, float]:
        if not inferential:
            return nan, nan
        half = critical * se[i, j]
        return means[i] - means[j] - half, means[i] - means[j] + half

    floor_index = k if floor is not None else None
    learned = [floor_index is None or (inferential and interval(i, floor_index)[0] > 0) for i in range(k)]
    shown_worse = [inferential and any(interval(i, j)[1] < 0 for j in range(k) if j != i) for i in range(k)]
    standings = []
    for i in order:
        low, high = interval(i, leader) if i != leader else (nan, nan)
        if i == leader:
            status = "leader"
        elif inferential and high < 0:
            status = "worse"
        elif inferential and -margin < low and high < margin:
            status = "equivalent"
        else:
            status = "inconclusive"
        detectable = (critical + special.ndtri(POWER)) * se[i, leader] if inferential and i != leader else nan
        standings.append(Standing(
            name=names[i], mean=float(means[i]), low=float(intervals[i][0]), high=float(intervals[i][1]),
            seeds=matrices[names[i]].shape[0], diff=float(means[i] - means[leader]), diff_low=float(low),
            diff_high=float(high), detectable=float(detectable),
            floor_low=float(interval(i, floor_index)[0]) if floor_index is not None else nan,
            learned=bool(learned[i]), status=status, in_best_set=bool(inferential and learned[i] and not shown_worse[i]),
            first_share=float(firsts[i])))
    pairwise = {(names[i], names[j]): (float(means[i] - means[j]), *map(float, interval(i, j)))
                for i in range(k) for j in range(k) if i != j}
    return Comparison(n_units=n_units, alpha=alpha, margin=margin, n_resamples=n_resamples, inferential=inferential,
                      critical=float(critical), floor_mean=float(means[-1]) if floor is not None else nan,
                      standings=tuple(standings), rank_counts=rank_counts, pairwise=pairwise)
