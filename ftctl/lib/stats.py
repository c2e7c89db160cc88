"""Paired comparison statistics: bootstrap confidence interval, p-value, win/tie/loss.

Both versions are scored on the same examples, so we resample *examples* (pairs) and look at
the mean of the per-example differences. Written with numpy because the paired bootstrap
p-value we need is not in a library we ship (scipy.stats.bootstrap gives intervals only, and
breaks on the all-zero differences of a version compared with itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BETTER, WORSE, SAME = "better", "worse", "no significant difference"


@dataclass(frozen=True)
class Paired:
    n: int
    a: float
    b: float
    diff: float  # mean(b - a)
    ci: tuple[float, float]
    p_value: float
    wins: int  # b better than a on an example (in the metric's good direction)
    ties: int
    losses: int
    verdict: str


def paired_bootstrap(a, b, *, higher_is_better: bool = True, n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95, tie_tol: float = 1e-9) -> Paired:
    """Compare per-example scores ``a`` and ``b`` (same examples, same order)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired scores must be two 1-D arrays of the same length")
    n = len(a)
    if n == 0:
        raise ValueError("no paired scores")
    d = b - a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = d[idx].mean(axis=1)
    lo, hi, p = interval(boot, confidence)
    sign = 1 if higher_is_better else -1
    wins = int(np.sum(sign * d > tie_tol))
    losses = int(np.sum(sign * d < -tie_tol))
    return Paired(n=n, a=float(a.mean()), b=float(b.mean()), diff=float(d.mean()),
                  ci=(lo, hi), p_value=p, wins=wins, ties=n - wins - losses,
                  losses=losses, verdict=verdict(lo, hi, higher_is_better))


def interval(boot, confidence: float) -> tuple[float, float, float]:
    """(lo, hi, p) of bootstrapped differences: the central ``confidence`` interval and the
    two-sided p-value (how often the resampled difference lands on the other side of zero)."""
    alpha = 1 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    return float(lo), float(hi), float(p)


def verdict(lo: float, hi: float, higher_is_better: bool = True) -> str:
    """'better' when the whole interval is on the good side of zero, 'worse' on the bad side."""
    if lo > 0:
        return BETTER if higher_is_better else WORSE
    if hi < 0:
        return WORSE if higher_is_better else BETTER
    return SAME


@dataclass(frozen=True)
class Unpaired:
    n_a: int
    n_b: int
    a: float
    b: float
    diff: float  # mean(b) - mean(a)
    ci: tuple[float, float]
    p_value: float
    verdict: str


def two_sample_bootstrap(a, b, *, higher_is_better: bool = True, n_boot: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> Unpaired:
    """Compare two independent samples (live ratings of two versions: different users, different
    prompts), resampling each on its own; same interval, p-value and verdict rules as the paired test."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or not len(a) or not len(b):
        raise ValueError("two non-empty 1-D samples are needed")
    rng = np.random.default_rng(seed)
    boot = (b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(axis=1)
            - a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1))
    lo, hi, p = interval(boot, confidence)
    return Unpaired(n_a=len(a), n_b=len(b), a=float(a.mean()), b=float(b.mean()), diff=float(b.mean() - a.mean()),
                    ci=(lo, hi), p_value=p, verdict=verdict(lo, hi, higher_is_better))


def two_proportions(k_a: int, n_a: int, k_b: int, n_b: int, *, higher_is_better: bool = True, n_boot: int = 2000,
                    seed: int = 0, confidence: float = 0.95) -> Unpaired:
    """Compare two rates, ``k`` of ``n`` (errors of all requests), by a parametric bootstrap of
    the counts: the same interval and verdict rules as :func:`two_sample_bootstrap`, without
    materialising one 0/1 score per request (a busy canary answers millions)."""
    if n_a <= 0 or n_b <= 0 or not (0 <= k_a <= n_a and 0 <= k_b <= n_b):
        raise ValueError("two rates k/n with 0 <= k <= n and n > 0 are needed")
    rng = np.random.default_rng(seed)
    pa, pb = k_a / n_a, k_b / n_b
    boot = rng.binomial(n_b, pb, n_boot) / n_b - rng.binomial(n_a, pa, n_boot) / n_a
    lo, hi, p = interval(boot, confidence)
    return Unpaired(n_a=n_a, n_b=n_b, a=pa, b=pb, diff=pb - pa, ci=(lo, hi), p_value=p,
                    verdict=verdict(lo, hi, higher_is_better))
