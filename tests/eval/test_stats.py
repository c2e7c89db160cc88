"""The comparison statistics on known data: exact p-values, intervals, verdicts, flags, Holm, power."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from ftctl.lib.stats import (BETTER, SAME, WORSE, holm, needed_n, paired_test, two_proportions, two_sample_test,
                             verdict, verdict_of)


def test_readme_example_is_the_exact_sign_test():
    """6 wins, 53 ties, 0 losses (the README's exact_match): the exact two-sided sign test gives
    2 / 2^6 = 0.03125. The old bootstrap 'p-value' printed 0.004."""
    r = paired_test([0.0] * 59, [1.0] * 6 + [0.0] * 53)
    assert r.p_value == pytest.approx(2 / 2 ** 6) == sps.binomtest(6, 6).pvalue
    assert r.p_error == 0 and r.method.startswith("exact")
    assert (r.wins, r.ties, r.losses) == (6, 53, 0) and r.verdict == BETTER and r.flag is None
    assert r.ci[0] > 0 and r.interval == "BCa"


def test_four_wins_is_not_significant_and_the_disagreeing_interval_is_flagged():
    """4/55/0: the bootstrap interval excludes zero, no test on 4 signs reaches p < 0.05: the
    verdict follows the test, and the flag says why they disagree."""
    r = paired_test([0.0] * 59, [1.0] * 4 + [0.0] * 55)
    assert r.p_value == pytest.approx(0.125)
    assert r.ci[0] > 0 and r.verdict == SAME
    assert "verdict follows the test" in r.flag and "4 non-zero differences" in r.flag
    assert r.needed_n > 59  # and it says how many examples a difference this size needs


def test_identical_scores_give_zero_difference_and_no_verdict():
    a = [0.1, 0.5, 0.9, 0.3]
    r = paired_test(a, a)
    assert (r.diff, r.ci, r.p_value) == (0.0, (0.0, 0.0), 1.0)
    assert (r.wins, r.ties, r.losses) == (0, 4, 0)
    assert r.verdict == SAME and r.flag is None and r.needed_n is None


def test_many_differences_use_monte_carlo_with_its_error_and_never_print_zero():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 0.5, 200)
    b = a + 0.2 + rng.normal(0, 0.05, 200)
    r = paired_test(a, b)
    assert r.verdict == BETTER and r.method.startswith("sign-flip test (9,999")
    assert r.p_value == pytest.approx(2 / 10_000) and 0 < r.p_error < 2e-4  # the smallest two-sided MC p
    assert r.ci[0] < r.diff < r.ci[1] and 0.18 < r.diff < 0.22 and r.wins > 190


def test_exact_and_monte_carlo_agree_where_both_apply():
    """16 non-zero differences are enumerated (65,536 sign patterns); the t-test is close."""
    rng = np.random.default_rng(5)
    d = rng.normal(0.4, 1, 16)
    r = paired_test(np.zeros(16), d)
    assert r.method.startswith("exact")
    assert r.p_value == pytest.approx(sps.ttest_1samp(d, 0).pvalue, abs=0.03)


def test_lower_is_better_flips_verdict_and_wins():
    a = [10.0, 12.0, 11.0, 9.0] * 20
    b = [x - 2 for x in a]
    r = paired_test(a, b, higher_is_better=False, n_boot=500)
    assert r.diff == pytest.approx(-2.0)
    assert r.verdict == BETTER and r.wins == 80
    assert paired_test(b, a, higher_is_better=False, n_boot=500).verdict == WORSE


def test_noise_is_not_significant_and_seed_makes_it_reproducible():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    r1, r2 = paired_test(a, b, seed=3), paired_test(a, b, seed=3)
    assert r1 == r2
    assert r1.ci[0] < 0 < r1.ci[1] and r1.verdict == SAME and r1.p_value > 0.05


def test_bad_input_is_an_error():
    with pytest.raises(ValueError):
        paired_test([1, 2], [1])
    with pytest.raises(ValueError):
        paired_test([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_test([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError):
        two_sample_test([], [1.0])


def test_verdicts():
    assert verdict(0.1, 0.3) == BETTER and verdict(-0.3, -0.1) == WORSE and verdict(-0.1, 0.1) == SAME
    assert verdict_of(0.01, 0.2, 0.05) == BETTER and verdict_of(0.01, 0.2, 0.05, False) == WORSE
    assert verdict_of(0.05, 0.2, 0.05) == SAME  # p must be below alpha


def test_two_samples_exact_for_small_and_permutation_for_large():
    small = two_sample_test([3, 4, 5, 4, 5], [1, 2, 1, 2, 2])
    assert small.method.startswith("exact") and small.verdict == WORSE
    assert small.p_value == pytest.approx(2 / math.comb(10, 5))  # only the observed split is as extreme
    big = two_sample_test([1, 2, 3, 4, 5] * 10, [2, 3, 4, 5, 5] * 10)
    assert big.method.startswith("permutation test (9,999") and big.verdict == BETTER and big.p_error > 0
    same = two_sample_test([4.0] * 5, [4.0] * 7)
    assert same.p_value == 1.0 and same.verdict == SAME and same.ci == (0.0, 0.0)


def test_two_proportions_lower_is_better_for_error_rates():
    t = two_proportions(2, 1000, 30, 1000, higher_is_better=False)
    assert t.a == 0.002 and t.b == 0.03 and t.verdict == WORSE and 0 < t.ci[0] < t.diff < t.ci[1]
    assert t.p_value == pytest.approx(sps.fisher_exact([[30, 970], [2, 998]]).pvalue)
    assert two_proportions(5, 1000, 6, 1000, higher_is_better=False).verdict == SAME
    zero = two_proportions(0, 50, 0, 60)
    assert zero.p_value == 1.0 and zero.ci[0] < 0 < zero.ci[1]
    with pytest.raises(ValueError):
        two_proportions(5, 0, 1, 10)
    with pytest.raises(ValueError):
        two_proportions(11, 10, 1, 10)


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.3, 0.3]) == [0.6, 0.6] and holm([0.9, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_needed_n_matches_the_t_test_power():
    n = needed_n(0.05, 0.3, 0.05)
    assert 285 <= n <= 300  # ~ (1.96 + 0.84)^2 (0.3 / 0.05)^2 = 283, a little more for t
    assert needed_n(0.1, 0.3, 0.05) < n and needed_n(0, 0.3, 0.05) is None
    assert needed_n(0.1, 0, 0.05) == 6  # all differences equal: 2 / 2^6 < 0.05
