"""Paired bootstrap: intervals, p-values, verdicts and win/tie/loss on known data."""

import numpy as np
import pytest

from ftctl.lib.stats import BETTER, SAME, WORSE, paired_bootstrap, two_proportions, verdict


def test_identical_scores_give_zero_difference_and_no_verdict():
    a = [0.1, 0.5, 0.9, 0.3]
    r = paired_bootstrap(a, a)
    assert (r.diff, r.ci, r.p_value) == (0.0, (0.0, 0.0), 1.0)
    assert (r.wins, r.ties, r.losses) == (0, 4, 0)
    assert r.verdict == SAME


def test_clear_improvement_is_better_with_small_p():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 0.5, 200)
    b = a + 0.2 + rng.normal(0, 0.05, 200)
    r = paired_bootstrap(a, b, n_boot=1000)
    assert r.verdict == BETTER
    assert r.p_value < 0.01
    assert r.ci[0] < r.diff < r.ci[1]
    assert 0.18 < r.diff < 0.22
    assert r.wins > 190


def test_lower_is_better_flips_verdict_and_wins():
    a = [10.0, 12.0, 11.0, 9.0] * 20
    b = [x - 2 for x in a]
    r = paired_bootstrap(a, b, higher_is_better=False, n_boot=500)
    assert r.diff == pytest.approx(-2.0)
    assert r.verdict == BETTER and r.wins == 80
    assert paired_bootstrap(b, a, higher_is_better=False, n_boot=500).verdict == WORSE


def test_noise_is_not_significant_and_seed_makes_it_reproducible():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    r1, r2 = paired_bootstrap(a, b, seed=3), paired_bootstrap(a, b, seed=3)
    assert r1 == r2
    assert r1.ci[0] < 0 < r1.ci[1] and r1.verdict == SAME and r1.p_value > 0.05


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_verdict_bounds():
    assert verdict(0.1, 0.3) == BETTER and verdict(-0.3, -0.1) == WORSE and verdict(-0.1, 0.1) == SAME


def test_two_proportions_lower_is_better_for_error_rates():
    t = two_proportions(2, 1000, 30, 1000, higher_is_better=False)
    assert t.a == 0.002 and t.b == 0.03 and t.verdict == WORSE and 0 < t.ci[0] < t.diff < t.ci[1]
    assert two_proportions(5, 1000, 6, 1000, higher_is_better=False).verdict == SAME
    with pytest.raises(ValueError):
        two_proportions(5, 0, 1, 10)
    with pytest.raises(ValueError):
        two_proportions(11, 10, 1, 10)
