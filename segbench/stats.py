"""Statistics for comparing architectures on per-case scores: bootstrap confidence intervals, paired
tests, Holm's correction, the top group, and how stable the ranking is when the cases are resampled.

Pure numpy/scipy; imports nothing from segbench, so the report can use it without torch.

**Data.** A per-case score is one float per validation case (e.g. the mean foreground Dice of that
case), keyed by the case id. NaN means "undefined for that case" (HD95 when a side is empty) and is
left out everywhere; +-inf raises ValueError (no segbench metric produces it: it is a bug upstream,
not a score). A run is one training run (a seed or a fold); ``runs`` maps a run name to its per-case
scores. With several seeds the same cases recur in every run; in cross-validation each fold has its
own cases.

**Case bootstrap** (Efron & Tibshirani 1993, ch. 13-14). From the n finite values x draw B resamples
of n values with replacement; theta*_b is the mean of resample b; alpha = 1 - confidence.

- percentile CI (the default): the alpha/2 and 1 - alpha/2 quantiles of theta* (linear interpolation,
  as ``numpy.quantile`` and ``scipy.stats.bootstrap(method="percentile")``).
- BCa: the quantiles at a1 = Phi(z0 + (z0 + z) / (1 - a (z0 + z))) with z = Phi^-1(alpha/2), and a2
  the same with -z; z0 = Phi^-1(share of theta* below mean(x), ties counted half) and
  a = sum (x - mean)^3 / (6 (sum (x - mean)^2)^(3/2)), the jackknife acceleration of the mean (their
  eq. 14.15). The same numbers as ``scipy.stats.bootstrap(method="BCa")`` for the same draws.

Percentile is the default because the hierarchical bootstrap uses it too: the two intervals of a
report mean the same thing, and one run reduces to the case bootstrap exactly. BCa corrects bias and
skew (Dice piles up near 1) but needs more resamples for stable ends.

Degenerate input: no finite value -> (nan, nan, nan); one value x -> (x, nan, nan) (one case says
nothing about spread, a zero-width interval would claim certainty); n >= 2 equal values -> (x, x, x)
(every resample has that mean; for BCa too, where scipy returns NaN with a warning).

**Hierarchical bootstrap** (Saravanan, Berman & Sober 2020, "Application of the hierarchical
bootstrap to multi-level data in neuroscience", NBDT 3(5)). Level 1: draw R runs from the R runs with
replacement; level 2: for each drawn run draw that run's n_r cases from it with replacement; theta*_b
is the mean of all values so drawn, pooled. Percentile CI of theta*; the point estimate is the pooled
mean of all finite values. Differences between seeds or folds thus widen the interval, where a
bootstrap of pooled cases would hide them. Runs without a finite value are left out. With one run the
level-1 draw is a choice among one: no random number is drawn for it, so the result equals
``bootstrap_ci`` with the same seed. Memory: B x R x max(n_r) indices.

**Paired test** of a against b on the cases finite in both, d = a - b rounded to 12 decimals so that
subtraction noise is neither evidence nor a broken tie (several seeds: average each case over them
first, ``case_means``). Wilcoxon signed-rank, two-sided (``scipy.stats.wilcoxon``)
with Pratt's zero handling: zero differences are ranked with the others and then count for neither
side (Pratt 1959). Wilcox's rule (drop zeros, then rank) lets a tied case change the ranks of the
others' evidence in a non-monotone way, and scipy documents Pratt as the more conservative, which is
the safe side for calling an architecture worse. Null distribution (scipy's ``method="auto"`` rule,
made explicit so the result can name it): exact when n <= 50 with no ties and no zeros; all 2^n sign
flips when there are ties or zeros and n <= 13; the normal approximation otherwise.
``method="sign-flip"`` is the paired permutation test of the mean difference: the null distribution
of mean(s * d) over sign vectors s, all 2^n of them when n <= 16, else ``n_resamples`` random ones
with p = (k + 1) / (B + 1); p-values as ``scipy.stats.permutation_test(permutation_type="samples")``.
Too few cases: with k non-zero differences, no sign-based test (either above) can give a two-sided p
below 2^(1 - k) (all signs alike is the most extreme outcome, probability 2 * 2^-k). When that bound
is >= alpha (k <= 5 at alpha = 0.05) the result says ``testable=False`` and why.

**Holm** (1979) step-down: with p sorted ascending p(1) <= ... <= p(m),
adjusted(i) = min(1, max over j <= i of (m - j + 1) p(j)), returned in the input order.

**Top group.** The best architecture has the best mean over its own cases. Every other one is
paired-tested against it on their common cases, and the testable tests are Holm-corrected together;
untestable ones stay out of the family, as in Tarone (1990): testability depends on |d| only, not on
the signs the null hypothesis randomises. Top group = the best, those not significantly worse
(adjusted p >= alpha, or significant in their favour), and the untestable ones, flagged.

**Ranking stability** (as challengeR, Wiesenfarth et al. 2021). On the cases that every architecture
scored, B resamples of the cases are drawn with replacement, the same resample for every
architecture (the comparison stays paired); on each, architectures are ranked by mean (1 = best, ties
get their average rank, ``scipy.stats.rankdata``). Reported: how often each architecture took each
rank, the observed ranking on the common cases, and Kendall's tau-b (``scipy.stats.kendalltau``)
between each resampled ranking and the observed one: its median and quartiles (NaN resamples, where
every architecture ties, left out).

**scipy** 1.15 or newer: ``wilcoxon`` is called with the null distributions as scipy 1.15 names them
(``method="asymptotic"``, a ``PermutationMethod``).

**Randomness.** Every resampling function takes ``seed`` and draws from
``numpy.random.default_rng(seed)``: the same seed gives the same numbers. The default seed is 0 so
that a report is reproducible from run to run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy import special, stats

__all__ = [
    "Interval",
    "PairedTest",
    "ArchitectureResult",
    "TopGroup",
    "RankStability",
    "case_means",
    "bootstrap_ci",
    "hierarchical_bootstrap_ci",
    "paired_test",
    "holm",
    "top_group",
    "rank_bootstrap",
]

NAN = float("nan")
_EXACT_SIGN_FLIP_MAX_N = 16  # 2^16 sign vectors, 8 MiB: enumerate; above that, sample them
_DIFFERENCE_DECIMALS = 12  # paired differences are rounded to this many decimals (far below any real gap)


class Interval(NamedTuple):
    """A mean and the ends of its confidence interval."""

    mean: float
    low: float
    high: float


# ---------------------------------------------------------------------------------------------
# Input checks: NaN is dropped (undefined case), inf is an error, bad options are one-line errors.


def _check_level(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value!r}")


def _check_resamples(n_resamples: int) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")


def _finite(values: Iterable[float] | Mapping[str, float], what: str) -> np.ndarray:
    """The finite values as a 1-D float array; NaN dropped, inf rejected."""
    if isinstance(values, Mapping):
        values = list(values.values())
    x = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional (one score per case), got shape {x.shape}")
    infinite = np.flatnonzero(np.isinf(x))
    if infinite.size:
        raise ValueError(f"{what} has inf at position {infinite[0]}; a per-case score is finite, or NaN when undefined")
    return x[~np.isnan(x)]


def _finite_cases(scores: Mapping[str, float], what: str) -> dict[str, float]:
    """The cases whose score is finite; NaN dropped, inf rejected naming the case."""
    out = {}
    for case, value in scores.items():
        value = float(value)
        if math.isinf(value):
            raise ValueError(f"{what} case {case!r} is {value}; a per-case score is finite, or NaN when undefined")
        if not math.isnan(value):
            out[case] = value
    return out


def case_means(runs: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each case's mean over the runs that scored it (finite values only); NaN where none did.

    Average seeds with it before a paired test, so that each case is one pair, not one per seed.
    """
    finite: dict[str, list[float]] = {}
    for run, scores in runs.items():
        for case in scores:
            finite.setdefault(case, [])
        for case, value in _finite_cases(scores, f"run {run!r}").items():
            finite[case].append(value)
    return {case: math.fsum(values) / len(values) if values else NAN for case, values in finite.items()}


# ---------------------------------------------------------------------------------------------
# Bootstrap confidence intervals.


def _degenerate(x: np.ndarray) -> Interval | None:
    if x.size == 0:
        return Interval(NAN, NAN, NAN)
    if x.size == 1:
        return Interval(float(x[0]), NAN, NAN)
    if np.all(x == x[0]):
        return Interval(float(x[0]), float(x[0]), float(x[0]))
    return None


def _bca_levels(x: np.ndarray, theta: np.ndarray, alpha: float) -> tuple[float, float]:
    """The BCa quantile levels (a1, a2) for the mean; Efron & Tibshirani eq. 14.9-14.15."""
    mean = x.mean()
    share_below = (np.count_nonzero(theta < mean) + np.count_nonzero(theta <= mean)) / (2 * theta.size)
    bias = special.ndtri(share_below)
    deviation = x - mean
    acceleration = np.sum(deviation**3) / (6 * np.sum(deviation**2) ** 1.5)
    z = special.ndtri(alpha)
    low, high = (special.ndtr(bias + (bias + end) / (1 - acceleration * (bias + end))) for end in (z, -z))
    return float(low), float(high)


def bootstrap_ci(
    values: Iterable[float] | Mapping[str, float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | None = 0,
    method: Literal["percentile", "bca"] = "percentile",
) -> Interval:
    """Mean of the finite values and its case-bootstrap CI (percentile by default, or BCa).

    Resample b draws n of the n values with replacement; the CI is read off the distribution of the
    resample means (module docstring). Degenerate input gives NaN ends or a collapsed interval.
    """
    _check_level("confidence", confidence)
    _check_resamples(n_resamples)
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    x = _finite(values, "values")
    degenerate = _degenerate(x)
    if degenerate is not None:
        return degenerate
    # Same draws as scipy.stats.bootstrap for the same Generator: one (B, n) block of indices.
    indices = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    theta = x[indices].mean(axis=-1)
    alpha = (1 - confidence) / 2
    levels = (alpha, 1 - alpha) if method == "percentile" else _bca_levels(x, theta, alpha)
    if not all(0 <= level <= 1 for level in levels):  # BCa with a degenerate bias term
        return Interval(float(x.mean()), NAN, NAN)
    low, high = np.quantile(theta, levels)
    return Interval(float(x.mean()), float(low), float(high))


def _hierarchical_means(groups: list[np.ndarray], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The B pooled means of the two-level resamples: runs with replacement, then cases within each."""
    n_runs = len(groups)
    sizes = np.array([group.size for group in groups])
    width = int(sizes.max())
    padded = np.zeros((n_runs, width))
    for row, group in enumerate(groups):
        padded[row, : group.size] = group
    # A choice among one run needs no draw; drawing none keeps one run identical to bootstrap_ci.
    if n_runs > 1:
        run_draws = rng.integers(0, n_runs, size=(n_resamples, n_runs))
    else:
        run_draws = np.zeros((n_resamples, 1), dtype=np.intp)
    if np.all(sizes == width):
        case_draws = rng.integers(0, width, size=(n_resamples, n_runs, width))
        return padded[run_draws[..., None], case_draws].mean(axis=2).mean(axis=1)
    drawn_sizes = sizes[run_draws]
    case_draws = rng.integers(0, drawn_sizes[..., None], size=(n_resamples, n_runs, width))
    used = np.arange(width) < drawn_sizes[..., None]  # a drawn run of n_r cases contributes n_r draws
    totals = np.where(used, padded[run_draws[..., None], case_draws], 0.0).sum(axis=(1, 2))
    return totals / drawn_sizes.sum(axis=1)


def hierarchical_bootstrap_ci(
    runs: Mapping[str, Mapping[str, float]],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | None = 0,
) -> Interval:
    """Pooled mean over runs and its two-level (runs, then cases) bootstrap percentile CI.

    Saravanan et al. 2020; definition and degenerate cases in the module docstring. One run gives
    exactly ``bootstrap_ci`` of that run with the same seed.
    """
    _check_level("confidence", confidence)
    _check_resamples(n_resamples)
    groups = [_finite(scores, f"run {name!r}") for name, scores in runs.items()]
    groups = [group for group in groups if group.size]
    pooled = np.concatenate(groups) if groups else np.empty(0)
    degenerate = _degenerate(pooled)
    if degenerate is not None:
        return degenerate
    theta = _hierarchical_means(groups, n_resamples, np.random.default_rng(seed))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(theta, (alpha, 1 - alpha))
    return Interval(float(pooled.mean()), float(low), float(high))


# ---------------------------------------------------------------------------------------------
# Paired tests and multiplicity.


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of a against b on their common cases; differences d = a - b."""

    n: int  # cases finite in both a and b: the pairs used
    n_nonzero: int  # pairs with d != 0, the ones that carry evidence
    mean_difference: float  # mean of d; NaN when n == 0
    direction: int  # +1 when the test statistic leans to a > b, -1 to a < b, 0 balanced
    pvalue: float  # two-sided; NaN when n == 0, 1 when every d is 0
    min_pvalue: float  # 2^(1 - n_nonzero), capped at 1: the smallest p any sign-based test can give here
    testable: bool  # min_pvalue < alpha: significance is possible at all
    method: str  # the test and the null distribution that gave pvalue
    reason: str = ""  # why it is not testable; empty when it is


def _wilcoxon(d: np.ndarray) -> tuple[float, int, str]:
    ranks = stats.rankdata(np.abs(d))  # Pratt: zeros are ranked too, then count for neither side
    direction = int(np.sign(ranks[d > 0].sum() - ranks[d < 0].sum()))
    has_ties_or_zeros = np.unique(np.abs(d)).size < d.size or np.any(d == 0)
    name = "Wilcoxon signed-rank (Pratt zeros)"
    if d.size <= 50 and not has_ties_or_zeros:
        null, label = "exact", f"{name}, exact null distribution"
    elif d.size <= 13:  # 2^13 sign flips at most: enumerate them, as scipy's method="auto" does
        null, label = stats.PermutationMethod(n_resamples=2**d.size), f"{name}, all 2^{d.size} sign flips"
    else:
        null, label = "asymptotic", f"{name}, normal approximation"
    pvalue = stats.wilcoxon(d, zero_method="pratt", alternative="two-sided", method=null).pvalue
    return float(pvalue), direction, label


def _sign_flip(d: np.ndarray, n_resamples: int, seed: int | None) -> tuple[float, int, str]:
    observed = d.mean()
    exact = d.size <= _EXACT_SIGN_FLIP_MAX_N
    if exact:
        bits = (np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1
        label = f"sign-flip permutation of the mean difference, all 2^{d.size} sign flips"
    else:
        bits = np.random.default_rng(seed).integers(0, 2, size=(n_resamples, d.size))
        label = f"sign-flip permutation of the mean difference, {n_resamples} random sign flips"
    null = ((1 - 2 * bits) * d).mean(axis=1)
    # scipy.stats.permutation_test's rules: +1 for sampled nulls, a relative tolerance for equal values.
    adjustment = 0 if exact else 1
    tolerance = abs(observed) * 100 * np.finfo(np.float64).eps
    less = (np.count_nonzero(null <= observed + tolerance) + adjustment) / (null.size + adjustment)
    greater = (np.count_nonzero(null >= observed - tolerance) + adjustment) / (null.size + adjustment)
    return min(1.0, 2 * min(less, greater)), int(np.sign(observed)), label


def paired_test(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    method: Literal["wilcoxon", "sign-flip"] = "wilcoxon",
    alpha: float = 0.05,
    n_resamples: int = 9999,
    seed: int | None = 0,
) -> PairedTest:
    """Two-sided paired test of a against b on the case ids finite in both (d = a - b).

    Wilcoxon signed-rank with Pratt's zeros (default) or the sign-flip permutation test of the mean;
    ``alpha`` only decides ``testable``; ``n_resamples`` and ``seed`` only matter for a sign-flip test
    of more than 16 pairs. Definitions in the module docstring.
    """
    if method not in ("wilcoxon", "sign-flip"):
        raise ValueError(f"method must be 'wilcoxon' or 'sign-flip', got {method!r}")
    _check_level("alpha", alpha)
    _check_resamples(n_resamples)
    a, b = _finite_cases(a, "a"), _finite_cases(b, "b")
    common = sorted(a.keys() & b.keys())  # pairs are matched by case id, never by position
    # Round off subtraction noise (scipy's advice): 0.3 - (0.1 + 0.2) is no evidence, equal gaps tie.
    d = np.round(np.array([a[case] - b[case] for case in common], dtype=np.float64), _DIFFERENCE_DECIMALS)
    n_nonzero = int(np.count_nonzero(d))
    min_pvalue = min(1.0, 2.0 ** (1 - n_nonzero))
    if d.size == 0:
        return PairedTest(0, 0, NAN, 0, NAN, 1.0, False, "none", "no case is scored (finite) in both")
    if n_nonzero == 0:
        return PairedTest(d.size, 0, 0.0, 0, 1.0, 1.0, False, "none", f"all {d.size} paired differences are zero")
    if method == "wilcoxon":
        pvalue, direction, label = _wilcoxon(d)
    else:
        pvalue, direction, label = _sign_flip(d, n_resamples, seed)
    testable = min_pvalue < alpha
    reason = "" if testable else (
        f"only {n_nonzero} non-zero paired differences: the smallest attainable p is {min_pvalue:.3g} >= alpha {alpha:g}"
    )
    return PairedTest(d.size, n_nonzero, float(d.mean()), direction, pvalue, min_pvalue, testable, label, reason)


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    Sorted ascending, adjusted(i) = min(1, max over j <= i of (m - j + 1) p(j)): monotone in p and
    never above 1. NaN is an error: leave untested comparisons out of the family.
    """
    p = np.asarray(pvalues if isinstance(pvalues, np.ndarray) else list(pvalues), dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    invalid = np.flatnonzero(~((p >= 0) & (p <= 1)))  # also catches NaN
    if invalid.size:
        raise ValueError(f"pvalues[{invalid[0]}] is {p[invalid[0]]}; a p-value lies in [0, 1] (leave untested ones out)")
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((p.size - np.arange(p.size)) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


# ---------------------------------------------------------------------------------------------
# Which architectures are statistically tied for best, and how stable the ranking is.


@dataclass(frozen=True)
class ArchitectureResult:
    """One architecture's line in the top-group table."""

    name: str
    mean: float  # over this architecture's finite cases; NaN when it has none
    ci_low: float  # case-bootstrap percentile CI of that mean
    ci_high: float
    n_cases: int  # finite cases of this architecture
    n_paired: int  # cases finite in both it and the best (for the best: its n_cases)
    pvalue: float  # paired Wilcoxon against the best, unadjusted; NaN for the best
    adjusted_pvalue: float  # Holm over the testable comparisons; NaN for the best and untested ones
    tested: bool  # False for the best and for comparisons that cannot reach alpha
    in_top_group: bool
    reason: str


@dataclass(frozen=True)
class TopGroup:
    """The best architecture, the ones not shown to be worse, and every architecture's numbers."""

    best: str
    higher_is_better: bool
    alpha: float  # familywise error rate of the Holm-corrected tests
    confidence: float  # level of the CIs
    results: tuple[ArchitectureResult, ...]  # the best first, then by mean, better first

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(result.name for result in self.results if result.in_top_group)


def _verdict(test: PairedTest, adjusted: float, worse_direction: int, best: str, alpha: float) -> tuple[bool, str]:
    if not test.testable:
        return True, f"untested against {best}: {test.reason}"
    if adjusted >= alpha:
        return True, f"not significantly different from {best} (Holm-adjusted p = {adjusted:.3g}, n = {test.n})"
    if test.direction == worse_direction:
        return False, f"significantly worse than {best} (Holm-adjusted p = {adjusted:.3g}, n = {test.n})"
    return True, f"significantly better than {best} on their {test.n} common cases (Holm-adjusted p = {adjusted:.3g})"


def top_group(
    scores: Mapping[str, Mapping[str, float]],
    *,
    higher_is_better: bool = True,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | None = 0,
) -> TopGroup:
    """The architectures not significantly worse than the best, with mean, CI, n and p for each.

    ``scores`` maps architecture -> case -> score (seeds averaged: ``case_means``). Best = best mean
    over its own cases (ties: first name in sorted order); each other is Wilcoxon-tested against it on
    their common cases, Holm over the testable tests (module docstring). ``higher_is_better=False``
    for errors and distances (HD95).
    """
    _check_level("alpha", alpha)
    _check_level("confidence", confidence)
    _check_resamples(n_resamples)
    if not scores:
        raise ValueError("scores is empty: top_group needs at least one architecture")
    cases = {name: _finite_cases(case_scores, f"scores[{name!r}]") for name, case_scores in scores.items()}
    means = {name: math.fsum(c.values()) / len(c) if c else NAN for name, c in cases.items()}
    sign = 1 if higher_is_better else -1

    def better_first(name: str) -> tuple[bool, float, str]:
        return (not cases[name], -sign * means[name] if cases[name] else 0.0, name)

    order = sorted(cases, key=better_first)
    best = order[0]
    if math.isnan(means[best]):
        raise ValueError("no architecture in scores has a finite score")
    tests = {name: paired_test(cases[best], cases[name], alpha=alpha) for name in order[1:]}
    family = [name for name in order[1:] if tests[name].testable]
    adjusted = dict(zip(family, holm([tests[name].pvalue for name in family]).tolist()))
    results = []
    for name in order:
        interval = bootstrap_ci(list(cases[name].values()), confidence=confidence, n_resamples=n_resamples, seed=seed)
        if name == best:
            verdict, test_fields = (True, "best mean"), (len(cases[name]), NAN, NAN, False)
        else:
            test = tests[name]
            # d = best - other: the other is worse where d leans to the best's side.
            verdict = _verdict(test, adjusted.get(name, NAN), sign, best, alpha)
            test_fields = (test.n, test.pvalue, adjusted.get(name, NAN), test.testable)
        results.append(ArchitectureResult(name, means[name], interval.low, interval.high, len(cases[name]),
                                          *test_fields, in_top_group=verdict[0], reason=verdict[1]))
    return TopGroup(best, higher_is_better, alpha, confidence, tuple(results))


@dataclass(frozen=True)
class RankStability:
    """How the ranking by mean holds up when the common cases are resampled (paired)."""

    observed_rank: dict[str, float]  # rank by mean on the common cases, 1 = best, ties averaged; best first
    rank_counts: dict[str, dict[float, int]]  # architecture -> rank -> resamples in which it took that rank
    tau_median: float  # Kendall's tau-b between resampled and observed rankings: median
    tau_q1: float  # ... first and third quartiles (IQR = tau_q3 - tau_q1)
    tau_q3: float
    n_cases: int  # cases finite for every architecture: the ones resampled
    n_resamples: int

    @property
    def tau_iqr(self) -> float:
        return self.tau_q3 - self.tau_q1


def _kendall_tau_b(rankings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """tau-b of each row of ``rankings`` against ``reference``: sum of pair-sign products over
    sqrt(untied pairs in one x untied pairs in the other); NaN where either ranking is all ties."""
    first, second = np.triu_indices(reference.size, k=1)
    reference_signs = np.sign(reference[first] - reference[second])
    signs = np.sign(rankings[:, first] - rankings[:, second])
    with np.errstate(invalid="ignore", divide="ignore"):
        return signs @ reference_signs / np.sqrt(np.count_nonzero(reference_signs) * np.count_nonzero(signs, axis=1))


def rank_bootstrap(
    scores: Mapping[str, Mapping[str, float]],
    *,
    n_resamples: int = 2000,
    seed: int | None = 0,
    higher_is_better: bool = True,
) -> RankStability:
    """Rank distribution of each architecture over paired bootstrap resamples of the common cases,
    and Kendall's tau-b of the resampled rankings against the observed one (module docstring)."""
    _check_resamples(n_resamples)
    if len(scores) < 2:
        raise ValueError(f"rank_bootstrap needs at least two architectures, got {len(scores)}")
    cases = {name: _finite_cases(case_scores, f"scores[{name!r}]") for name, case_scores in scores.items()}
    common = sorted(set.intersection(*(set(c) for c in cases.values())))
    if not common:
        raise ValueError("no case is scored (finite) by every architecture in scores; ranking needs common cases")
    names = list(cases)
    matrix = np.array([[cases[name][case] for case in common] for name in names])
    sign = 1 if higher_is_better else -1
    observed = stats.rankdata(-sign * matrix.mean(axis=1))
    indices = np.random.default_rng(seed).integers(0, len(common), size=(n_resamples, len(common)))
    # One architecture at a time keeps memory at B x n; every row uses the same indices (paired).
    means = np.stack([row[indices].mean(axis=1) for row in matrix], axis=1)
    ranks = stats.rankdata(-sign * means, axis=1)
    tau = _kendall_tau_b(ranks, observed)
    tau = tau[~np.isnan(tau)]
    q1, median, q3 = np.percentile(tau, (25, 50, 75)) if tau.size else (NAN, NAN, NAN)
    counts = {}
    for column, name in enumerate(names):
        values, occurrences = np.unique(ranks[:, column], return_counts=True)
        counts[name] = {float(v): int(c) for v, c in zip(values, occurrences)}
    by_rank = sorted(range(len(names)), key=lambda i: (observed[i], names[i]))
    return RankStability(
        observed_rank={names[i]: float(observed[i]) for i in by_rank},
        rank_counts={names[i]: counts[names[i]] for i in by_rank},
        tau_median=float(median),
        tau_q1=float(q1),
        tau_q3=float(q3),
        n_cases=len(common),
        n_resamples=n_resamples,
    )
