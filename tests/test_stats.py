"""segbench.stats against scipy and the textbook, on the same data."""

import inspect
import time

import numpy as np
import pytest
from scipy import stats

from segbench.stats import (
    _hierarchical_means,
    _kendall_tau_b,
    bootstrap_ci,
    case_means,
    hierarchical_bootstrap_ci,
    holm,
    paired_test,
    rank_bootstrap,
    top_group,
)

NAN = float("nan")
DICE = np.random.default_rng(1).beta(5, 1.5, 40)  # skewed towards 1, like per-case Dice


def _scipy_rng(seed):
    """scipy >= 1.15 takes rng=, older releases random_state=; both draw from the Generator alike."""
    key = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {key: np.random.default_rng(seed)}


def _cases(values, prefix="case"):
    return {f"{prefix}{i:03d}": float(v) for i, v in enumerate(values)}


# --- case bootstrap -----------------------------------------------------------------------------


@pytest.mark.parametrize("method, scipy_method", [("percentile", "percentile"), ("bca", "BCa")])
def test_bootstrap_ci_equals_scipy_for_the_same_generator(method, scipy_method):
    ours = bootstrap_ci(DICE, confidence=0.9, n_resamples=3000, seed=7, method=method)
    ref = stats.bootstrap((DICE,), np.mean, confidence_level=0.9, n_resamples=3000, method=scipy_method, **_scipy_rng(7))
    assert ours.mean == pytest.approx(DICE.mean(), rel=1e-15)
    assert ours.low == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, rel=1e-12)


def test_bootstrap_ci_leaves_out_nan_and_takes_a_case_mapping():
    with_nan = np.insert(DICE, [3, 10, 10], NAN)
    expected = bootstrap_ci(DICE, seed=3)
    assert bootstrap_ci(with_nan, seed=3) == expected
    assert bootstrap_ci(_cases(with_nan), seed=3) == expected


def test_bootstrap_ci_is_fixed_by_the_seed():
    assert bootstrap_ci(DICE, seed=5) == bootstrap_ci(DICE, seed=5)
    assert bootstrap_ci(DICE, seed=5) != bootstrap_ci(DICE, seed=6)


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize(
    "values, expected",
    [
        ([], (NAN, NAN, NAN)),
        ([NAN, NAN], (NAN, NAN, NAN)),
        ([0.7, NAN], (0.7, NAN, NAN)),  # one case: no spread to resample
        ([0.3] * 5, (0.3, 0.3, 0.3)),  # every resample has the same mean
    ],
)
def test_bootstrap_ci_degenerate_input(values, expected, method):
    np.testing.assert_equal(tuple(bootstrap_ci(values, method=method)), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"values": [0.5, float("inf")]}, "inf at position 1"),
        ({"confidence": 1.0}, "confidence"),
        ({"n_resamples": 0}, "n_resamples"),
        ({"method": "basic"}, "method"),
        ({"values": [[0.5, 0.6]]}, "one-dimensional"),
    ],
)
def test_bootstrap_ci_one_line_errors(kwargs, message):
    kwargs = {"values": DICE, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        bootstrap_ci(**kwargs)
    assert "\n" not in str(error.value)


# --- hierarchical bootstrap ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 11])
def test_hierarchical_bootstrap_of_one_run_is_the_case_bootstrap(seed):
    run = _cases(np.insert(DICE, 4, NAN))
    ours = hierarchical_bootstrap_ci({"seed0": run}, confidence=0.9, n_resamples=1500, seed=seed)
    assert ours == bootstrap_ci(run, confidence=0.9, n_resamples=1500, seed=seed)


def test_hierarchical_bootstrap_variance_is_the_two_level_textbook_one():
    # R runs of n cases; a resample's mean is the average of R run means, each of a run drawn at random
    # and of n cases drawn from it: Var = (Var_r(mu_r) + E_r[sigma_r^2] / n) / R (population variances).
    rng = np.random.default_rng(2)
    groups = [rng.normal(loc, scale, 30) for loc, scale in [(0.6, 0.1), (0.7, 0.2), (0.8, 0.1), (0.65, 0.15)]]
    expected_var = (np.var([g.mean() for g in groups]) + np.mean([g.var() for g in groups]) / 30) / len(groups)
    theta = _hierarchical_means(groups, 20000, np.random.default_rng(0))
    assert theta.std() == pytest.approx(np.sqrt(expected_var), rel=0.03)
    assert theta.mean() == pytest.approx(np.concatenate(groups).mean(), abs=3 * np.sqrt(expected_var / 20000))


def test_hierarchical_bootstrap_weighs_unequal_runs_by_their_drawn_cases():
    # Constant runs: a resample's pooled mean depends only on which runs were drawn. One case of 0 and
    # three of 1: {a, a} -> 0, {a, b} -> 3/4, {b, b} -> 1 with probabilities 1/4, 1/2, 1/4.
    theta = _hierarchical_means([np.zeros(1), np.ones(3)], 8000, np.random.default_rng(0))
    values, counts = np.unique(theta, return_counts=True)
    np.testing.assert_allclose(values, [0.0, 0.75, 1.0])
    np.testing.assert_allclose(counts / theta.size, [0.25, 0.5, 0.25], atol=0.02)


def test_hierarchical_bootstrap_widens_the_interval_when_runs_disagree():
    runs = {f"seed{k}": _cases(DICE + offset) for k, offset in enumerate([-0.05, 0.0, 0.05])}
    pooled = np.concatenate([DICE - 0.05, DICE, DICE + 0.05])
    hierarchical = hierarchical_bootstrap_ci(runs, seed=0)
    flat = bootstrap_ci(pooled, seed=0)
    assert hierarchical.mean == pytest.approx(pooled.mean())
    assert hierarchical.high - hierarchical.low > 1.3 * (flat.high - flat.low)


def test_hierarchical_bootstrap_drops_empty_runs():
    runs = {"fold0": _cases(DICE[:20]), "fold1": {"x": NAN}, "fold2": _cases(DICE[20:], "other")}
    assert hierarchical_bootstrap_ci(runs, seed=1) == hierarchical_bootstrap_ci(
        {"fold0": runs["fold0"], "fold2": runs["fold2"]}, seed=1
    )
    np.testing.assert_equal(tuple(hierarchical_bootstrap_ci({"fold1": {"x": NAN}})), (NAN, NAN, NAN))
    np.testing.assert_equal(tuple(hierarchical_bootstrap_ci({})), (NAN, NAN, NAN))


def test_case_means_average_seeds_and_skip_nan():
    runs = {"seed0": {"a": 0.5, "b": NAN, "c": NAN}, "seed1": {"a": 0.7, "b": 0.9, "c": NAN}}
    means = case_means(runs)
    assert means["a"] == pytest.approx(0.6) and means["b"] == 0.9 and np.isnan(means["c"])
    with pytest.raises(ValueError, match="run 'seed1' case 'a' is inf"):
        case_means({"seed1": {"a": float("inf")}})


# --- paired tests -------------------------------------------------------------------------------


def test_paired_test_pairs_by_case_id_and_equals_scipy_wilcoxon():
    rng = np.random.default_rng(4)
    a_values = rng.uniform(0.2, 0.95, 20)
    b_values = a_values - 0.03 + rng.normal(0, 0.02, 20)  # b is a bit worse on almost every case
    a = _cases(a_values) | {"only_in_a": 0.1}
    b = dict(reversed(_cases(b_values).items())) | {"case000": b_values[0], "nan_in_b": NAN}
    a["nan_in_b"] = 0.9
    result = paired_test(a, b)
    ref = stats.wilcoxon(a_values, b_values, zero_method="pratt", method="exact")
    assert (result.n, result.n_nonzero, result.direction, result.testable) == (20, 20, 1, True)
    assert result.pvalue == pytest.approx(ref.pvalue, rel=1e-12) and result.pvalue < 1e-4
    assert result.mean_difference == pytest.approx(np.mean(a_values - b_values))
    assert "exact" in result.method
    # Positional pairing (b in the other order) would lose the effect: this test would catch it.
    assert stats.wilcoxon(a_values, b_values[::-1]).pvalue > 0.05


@pytest.mark.parametrize(
    "d, null",
    [
        ([0.0, 0.0, 0.1, 0.1, -0.2, 0.3, 0.3, 0.4, 0.5, -0.05], "all 2^10 sign flips"),  # zeros and ties
        (np.round(np.random.default_rng(5).normal(0.02, 0.05, 60), 2), "normal approximation"),
        (np.random.default_rng(6).normal(0.0, 1.0, 30), "exact null distribution"),
    ],
)
def test_paired_test_null_distribution_follows_scipy_auto(d, null):
    d = np.asarray(d)
    result = paired_test(_cases(d), _cases(np.zeros_like(d)))
    assert result.pvalue == pytest.approx(stats.wilcoxon(d, zero_method="pratt").pvalue, rel=1e-12)
    assert result.method.endswith(null)


def test_paired_test_says_when_too_few_cases_can_reach_significance():
    five = paired_test(_cases([1, 2, 3, 4, 5]), _cases([0, 0, 0, 0, 0]))
    assert five.pvalue == pytest.approx(2 / 2**5) and five.min_pvalue == pytest.approx(0.0625)
    assert not five.testable and "only 5 non-zero" in five.reason
    six = paired_test(_cases([1, 2, 3, 4, 5, 6]), _cases([0] * 6))
    assert six.testable and six.reason == ""
    assert six.pvalue == pytest.approx(stats.wilcoxon([1, 2, 3, 4, 5, 6]).pvalue) == pytest.approx(1 / 32)
    # Zero differences carry no evidence: eight pairs, five of them non-zero, still cannot reach 0.05.
    zeros = paired_test(_cases([0, 0, 0, 1, 2, 3, 4, 5]), _cases([0] * 8))
    assert (zeros.n, zeros.n_nonzero, zeros.testable) == (8, 5, False)
    assert not paired_test(_cases([1, 2, 3, 4, 5, 6]), _cases([0] * 6), alpha=0.01).testable


def test_paired_test_without_evidence():
    same = paired_test(_cases([0.5, 0.6, 0.3]), _cases([0.5, 0.6, 0.1 + 0.2]))  # 0.3 - (0.1 + 0.2) is roundoff
    assert (same.n, same.n_nonzero, same.pvalue, same.testable, same.direction) == (3, 0, 1.0, False, 0)
    disjoint = paired_test({"a": 0.5}, {"b": 0.5})
    assert disjoint.n == 0 and np.isnan(disjoint.pvalue) and "no case" in disjoint.reason


def test_paired_test_is_symmetric_in_p_and_antisymmetric_in_direction():
    a, b = _cases(DICE[:15]), _cases(DICE[15:30] - 0.05)
    forward, backward = paired_test(a, b), paired_test(b, a)
    assert forward.pvalue == pytest.approx(backward.pvalue)
    assert forward.direction == -backward.direction != 0
    assert forward.mean_difference == pytest.approx(-backward.mean_difference)


def test_sign_flip_exact_equals_scipy_permutation_test():
    d = np.array([0.0, 0.12, 0.12, -0.05, 0.3, 0.02, -0.01, 0.2, 0.07, 0.0, 0.15, -0.2])
    b = np.random.default_rng(0).uniform(0.3, 0.7, d.size)
    ours = paired_test(_cases(b + d), _cases(b), method="sign-flip")
    ref = stats.permutation_test(
        (b + d, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples", n_resamples=np.inf
    )
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours.method.endswith("all 2^12 sign flips") and ours.direction == 1


def test_sign_flip_sampled_agrees_with_scipy_and_is_fixed_by_the_seed():
    rng = np.random.default_rng(8)
    b = rng.uniform(0.3, 0.7, 30)
    a = b + rng.normal(0.015, 0.04, 30)
    ours = paired_test(_cases(a), _cases(b), method="sign-flip", seed=1)
    ref = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples", n_resamples=9999, **_scipy_rng(1)
    )
    assert 0.005 < ref.pvalue < 0.5  # a p-value whose Monte Carlo error the tolerance below covers
    assert ours.pvalue == pytest.approx(ref.pvalue, abs=0.02)
    assert ours == paired_test(_cases(a), _cases(b), method="sign-flip", seed=1)


def test_paired_test_one_line_errors():
    with pytest.raises(ValueError, match="method must be"):
        paired_test({}, {}, method="t-test")
    with pytest.raises(ValueError, match="alpha"):
        paired_test({}, {}, alpha=0.0)
    with pytest.raises(ValueError, match="b case 'x' is -inf"):
        paired_test({"x": 0.5}, {"x": float("-inf")})


# --- Holm ---------------------------------------------------------------------------------------


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; step-down keeps
    # the running maximum: 0.02, 0.03, 0.06, 0.06. Bonferroni would give 0.04, 0.16, 0.12, 0.02.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(holm([0.02, 0.9, 0.02]), [0.06, 0.9, 0.06], rtol=1e-12)  # ties
    np.testing.assert_array_equal(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    assert holm([]).shape == (0,)


def test_holm_is_monotone_and_between_p_and_one():
    p = np.random.default_rng(3).uniform(0, 0.2, 25)
    adjusted = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all((adjusted >= p) & (adjusted <= 1))


def test_holm_equals_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(9).uniform(0, 0.1, 12)
    np.testing.assert_allclose(holm(p), multitest.multipletests(p, method="holm")[1], rtol=1e-12)


@pytest.mark.parametrize("pvalues, message", [([0.1, NAN], r"pvalues\[1\] is nan"), ([1.5], "lies in"), ([[0.1]], "one-dim")])
def test_holm_one_line_errors(pvalues, message):
    with pytest.raises(ValueError, match=message):
        holm(pvalues)


# --- top group ----------------------------------------------------------------------------------


def _review_scores():
    rng = np.random.default_rng(10)
    base = rng.beta(5, 2, 30)
    return {
        "unet": _cases(base + 0.05),
        "deeplab": _cases(base + 0.05 + rng.normal(0, 0.05, 30)),  # as good, noisier
        "fcn": _cases(base - 0.03 + rng.normal(0, 0.01, 30)),  # worse on nearly every case
        "segnet": _cases(base[:4] - 0.2),  # only four cases: cannot be tested
    }


def test_top_group_by_hand_and_against_scipy():
    scores = _review_scores()
    result = top_group(scores, n_resamples=500)
    rows = {row.name: row for row in result.results}
    assert result.best == "unet" and result.results[0].name == "unet"
    assert set(result.members) == {"unet", "deeplab", "segnet"}
    unet = np.array(list(scores["unet"].values()))
    p = {}
    for name in ("deeplab", "fcn"):
        other = np.array(list(scores[name].values()))
        p[name] = stats.wilcoxon(unet, other, zero_method="pratt").pvalue
        assert rows[name].pvalue == pytest.approx(p[name], rel=1e-12)
    adjusted = holm([p["deeplab"], p["fcn"]])  # segnet is not in the family
    assert rows["deeplab"].adjusted_pvalue == pytest.approx(adjusted[0]) and rows["deeplab"].adjusted_pvalue >= 0.05
    assert rows["fcn"].adjusted_pvalue == pytest.approx(adjusted[1]) and rows["fcn"].adjusted_pvalue < 0.05
    assert not rows["fcn"].in_top_group and "significantly worse" in rows["fcn"].reason
    assert rows["segnet"].in_top_group and not rows["segnet"].tested and np.isnan(rows["segnet"].adjusted_pvalue)
    assert (rows["segnet"].n_cases, rows["segnet"].n_paired) == (4, 4) and "untested" in rows["segnet"].reason
    assert (rows["unet"].ci_low, rows["unet"].ci_high) == bootstrap_ci(unet, n_resamples=500)[1:]
    assert rows["unet"].mean == pytest.approx(unet.mean())


def test_top_group_for_a_lower_is_better_metric():
    distances = {name: {case: 20 * (1 - v) for case, v in cases.items()} for name, cases in _review_scores().items()}
    lower = top_group(distances, higher_is_better=False, n_resamples=200)
    assert lower.best == "unet" and set(lower.members) == {"unet", "deeplab", "segnet"}
    del distances["segnet"]  # the highest distances, on four cases: it would be "best" and test nothing
    higher = top_group(distances, higher_is_better=True, n_resamples=200)  # the wrong direction
    assert higher.best == "fcn" and higher.members == ("fcn",)


def test_top_group_keeps_one_that_is_significantly_better_on_the_common_cases():
    # "a" has the best mean only thanks to cases "b" never saw; on the common ones "b" is better.
    a = {f"c{i}": 0.5 for i in range(20)} | {f"d{i}": 1.0 for i in range(20)}
    b = {f"c{i}": 0.6 + 0.001 * i for i in range(20)}
    result = top_group({"a": a, "b": b}, n_resamples=100)
    row = result.results[1]
    assert result.best == "a" and row.adjusted_pvalue < 0.05 and row.in_top_group
    assert "significantly better" in row.reason


def test_top_group_one_line_errors():
    with pytest.raises(ValueError, match="scores is empty"):
        top_group({})
    with pytest.raises(ValueError, match="no architecture"):
        top_group({"unet": {"a": NAN}})


# --- ranking stability --------------------------------------------------------------------------


def test_rank_bootstrap_dominant_architecture_always_ranks_first():
    base = np.random.default_rng(11).uniform(0, 1, 40)  # case spread far larger than the gaps
    scores = {"c": _cases(base), "a": _cases(base + 0.1), "b": _cases(base + 0.05)}
    result = rank_bootstrap(scores, n_resamples=1000, seed=0)
    assert result.observed_rank == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert result.rank_counts == {"a": {1.0: 1000}, "b": {2.0: 1000}, "c": {3.0: 1000}}
    assert (result.tau_median, result.tau_iqr) == (1.0, 0.0)
    # Without pairing (each architecture resampled on its own) the case spread would reorder them.
    independent = [np.random.default_rng(k).choice(base, (1000, 40)).mean(1) for k in range(2)]
    assert np.mean(independent[0] + 0.05 < independent[1]) > 0.05


def test_rank_bootstrap_exchangeable_architectures_split_their_ranks():
    rng = np.random.default_rng(12)
    base = rng.uniform(0.5, 0.9, 50)
    half = rng.normal(0, 0.05, 25)
    noise = np.concatenate([half, -half])  # a - b = 2 noise: symmetric about 0, so either wins as often
    scores = {"a": _cases(base + noise + 1e-4), "b": _cases(base - noise), "c": _cases(base - 0.3)}
    result = rank_bootstrap(scores, n_resamples=2000, seed=0)
    assert result.rank_counts["c"] == {3.0: 2000}
    first = {name: result.rank_counts[name].get(1.0, 0) for name in "ab"}
    assert first["a"] + first["b"] == 2000 and all(800 < count < 1200 for count in first.values())
    assert result.tau_q1 == pytest.approx(1 / 3) and result.tau_q3 == 1.0  # tau is 1 or 1/3 here


def test_rank_bootstrap_ranks_lower_is_better_and_uses_only_common_cases():
    scores = {"a": {"x": 1.0, "y": 2.0, "z": 9.0}, "b": {"x": 2.0, "y": 3.0, "z": NAN}, "c": {"x": 2.0, "y": 1.0}}
    lower = rank_bootstrap(scores, n_resamples=50, higher_is_better=False)
    assert lower.n_cases == 2 and lower.observed_rank == {"a": 1.5, "c": 1.5, "b": 3.0}
    higher = rank_bootstrap(scores, n_resamples=50)
    assert higher.observed_rank == {"b": 1.0, "a": 2.5, "c": 2.5}
    assert higher == rank_bootstrap(scores, n_resamples=50)  # fixed by the seed


def test_kendall_tau_b_equals_scipy():
    rng = np.random.default_rng(13)
    reference = stats.rankdata([0.3, 0.3, 0.1, 0.9, 0.5, 0.2])
    rankings = np.vstack([stats.rankdata(rng.integers(0, 4, 6)) for _ in range(200)] + [np.ones(6)])
    ours = _kendall_tau_b(rankings, reference)
    expected = [stats.kendalltau(row, reference).statistic for row in rankings]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(ours[-1])


def test_rank_bootstrap_one_line_errors():
    with pytest.raises(ValueError, match="at least two"):
        rank_bootstrap({"a": {"x": 1.0}})
    with pytest.raises(ValueError, match="no case is scored"):
        rank_bootstrap({"a": {"x": 1.0}, "b": {"y": 1.0}})


# --- speed --------------------------------------------------------------------------------------


def test_ten_architectures_by_a_hundred_cases_take_well_under_a_second():
    rng = np.random.default_rng(14)
    scores = {f"arch{k}": _cases(rng.beta(5, 1.5, 100) + 0.01 * k) for k in range(10)}
    start = time.perf_counter()
    top_group(scores, n_resamples=2000)
    rank_bootstrap(scores, n_resamples=2000)
    hierarchical_bootstrap_ci({f"seed{k}": scores[f"arch{k}"] for k in range(5)}, n_resamples=2000)
    assert time.perf_counter() - start < 1.0
