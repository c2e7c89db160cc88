"""Comparison statistics: a test decides, an interval shows the size (eval, canary, drift).

- Paired scores (two versions on the same examples): a sign-flip permutation test of the mean
  difference (``scipy.stats.permutation_test``, one sample, ``permutation_type="samples"``),
  exact over all 2^k sign patterns when the k non-zero differences number at most 16, else
  9,999 random ones with the Monte Carlo error of the p-value reported. Ties carry no sign, so
  they drop out of the test (the exact sign test for 0/1 metrics), not out of the mean.
- Two independent samples (live ratings of two versions): a permutation test of the difference
  of means (``permutation_type="independent"``), exact when the splits number at most 2^16.
- Two rates (5xx answers of all requests): Fisher's exact test; the interval is Newcombe's
  hybrid score interval from the two Wilson intervals.
- Intervals: ``scipy.stats.bootstrap`` BCa, percentile where BCa degenerates (all differences
  equal, or too few distinct values for its jackknife).

The verdict follows the test at the configured confidence; the interval is reported beside it.
Where they disagree (few non-zero differences: the bootstrap interval of 4 wins and 55 ties
excludes zero, while no test on 4 signs can reach p < 0.05), the result carries a ``flag``
sentence saying so, and the verdict is still the test's.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

BETTER, WORSE, SAME = "better", "worse", "no significant difference"
FLAG = "⚑"  # marks a verdict whose interval disagrees with its test
EXACT_MAX = 2 ** 16  # sign patterns / splits enumerated exactly; beyond, Monte Carlo
N_PERM = 9_999  # Monte Carlo permutations: p-value error ~ sqrt(p(1-p)/9999), <= 0.005
POWER = 0.8  # the power "needs N examples" is computed for


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
    p_error: float = 0.0  # Monte Carlo standard error of p_value; 0 when exact
    method: str = ""  # how p_value was computed
    interval: str = ""  # BCa | percentile: how ci was computed
    flag: str | None = None  # why the interval and the test disagree, when they do
    needed_n: int | None = None  # examples for an 80% chance to detect the observed difference


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
    p_error: float = 0.0
    method: str = ""
    interval: str = ""
    flag: str | None = None


def paired_test(a, b, *, higher_is_better: bool = True, confidence: float = 0.95, seed: int = 0,
                n_boot: int = 2000, tie_tol: float = 1e-9) -> Paired:
    """Compare per-example scores ``a`` and ``b`` (same examples, same order)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired scores must be two 1-D arrays of the same length")
    n = len(a)
    if n == 0:
        raise ValueError("no paired scores")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite numbers")
    d = b - a
    nonzero = d[np.abs(d) > tie_tol]
    p, err, method = _sign_flip(nonzero, seed)
    ci, how = _bootstrap((d,), _mean, confidence, n_boot, seed)
    sign = 1 if higher_is_better else -1
    wins = int(np.sum(sign * d > tie_tol))
    losses = int(np.sum(sign * d < -tie_tol))
    diff = float(d.mean())
    alpha = 1 - confidence
    v = verdict_of(p, diff, alpha, higher_is_better)
    need = None
    if v == SAME and len(nonzero):
        need = needed_n(abs(diff), float(d.std(ddof=1)) if n > 1 else 0.0, alpha)
    return Paired(n=n, a=float(a.mean()), b=float(b.mean()), diff=diff, ci=ci, p_value=p, wins=wins,
                  ties=n - wins - losses, losses=losses, verdict=v, p_error=err, method=method, interval=how,
                  flag=disagreement(p, alpha, ci, how, f"{len(nonzero)} non-zero differences"), needed_n=need)


def two_sample_test(a, b, *, higher_is_better: bool = True, confidence: float = 0.95, seed: int = 0,
                    n_boot: int = 2000) -> Unpaired:
    """Compare two independent samples (live ratings of two versions: different users, different
    prompts): a permutation test of mean(b) - mean(a), the bootstrap interval beside it."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or not len(a) or not len(b):
        raise ValueError("two non-empty 1-D samples are needed")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("samples must be finite numbers")
    diff = float(b.mean() - a.mean())
    alpha = 1 - confidence
    if np.ptp(np.concatenate([a, b])) == 0:  # every value the same: no split can differ
        p, err, method = 1.0, 0.0, "all values equal"
    else:
        splits = math.comb(len(a) + len(b), len(a))
        exact = splits <= EXACT_MAX
        r = sps.permutation_test((a, b), _diff_of_means, permutation_type="independent", vectorized=True,
                                 n_resamples=np.inf if exact else N_PERM, batch=max(1, 4_000_000 // (len(a) + len(b))),
                                 rng=np.random.default_rng(seed))
        p = float(r.pvalue)
        err = 0.0 if exact else _mc_error(p)
        method = (f"exact permutation test ({splits:,} splits)" if exact
                  else f"permutation test ({N_PERM:,} random splits)")
    ci, how = _bootstrap((a, b), _diff_of_means, confidence, n_boot, seed)
    return Unpaired(n_a=len(a), n_b=len(b), a=float(a.mean()), b=float(b.mean()), diff=diff, ci=ci, p_value=p,
                    verdict=verdict_of(p, diff, alpha, higher_is_better), p_error=err, method=method, interval=how,
                    flag=disagreement(p, alpha, ci, how, f"samples of {len(a)} and {len(b)}"))


def two_proportions(k_a: int, n_a: int, k_b: int, n_b: int, *, higher_is_better: bool = True,
                    confidence: float = 0.95, **_ignored) -> Unpaired:
    """Compare two rates, ``k`` of ``n`` (errors of all requests): Fisher's exact test on the
    2x2 table, Newcombe's hybrid score interval for the difference (from counts: a busy canary
    answers millions of requests, and no 0/1 score per request is materialised)."""
    if n_a <= 0 or n_b <= 0 or not (0 <= k_a <= n_a and 0 <= k_b <= n_b):
        raise ValueError("two rates k/n with 0 <= k <= n and n > 0 are needed")
    pa, pb = k_a / n_a, k_b / n_b
    p = float(sps.fisher_exact([[k_b, n_b - k_b], [k_a, n_a - k_a]]).pvalue)
    ci = newcombe(k_a, n_a, k_b, n_b, confidence)
    alpha = 1 - confidence
    return Unpaired(n_a=n_a, n_b=n_b, a=pa, b=pb, diff=pb - pa, ci=ci, p_value=min(1.0, p),
                    verdict=verdict_of(p, pb - pa, alpha, higher_is_better), method="Fisher's exact test",
                    interval="Newcombe score", flag=disagreement(p, alpha, ci, "Newcombe score", f"{k_a}+{k_b} events"))


def newcombe(k_a: int, n_a: int, k_b: int, n_b: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval for p_b - p_a from the two Wilson score intervals.
    Written here because scipy has the Wilson interval (``binomtest(...).proportion_ci``) but not
    this combination of two, and statsmodels (which has it) is not worth a dependency for 3 lines."""
    la, ua = _wilson(k_a, n_a, confidence)
    lb, ub = _wilson(k_b, n_b, confidence)
    pa, pb = k_a / n_a, k_b / n_b
    d = pb - pa
    return (float(d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)),
            float(d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)))


def verdict_of(p: float, diff: float, alpha: float, higher_is_better: bool = True) -> str:
    """The test's verdict: significant at ``alpha``, in the direction of ``diff``."""
    if p >= alpha or diff == 0:
        return SAME
    return BETTER if (diff > 0) == higher_is_better else WORSE


def verdict(lo: float, hi: float, higher_is_better: bool = True) -> str:
    """What an interval alone says: 'better' when wholly on the good side of zero."""
    if lo > 0:
        return BETTER if higher_is_better else WORSE
    if hi < 0:
        return WORSE if higher_is_better else BETTER
    return SAME


def disagreement(p: float, alpha: float, ci: tuple[float, float], how: str, size: str) -> str | None:
    """A sentence when the interval says otherwise than the test, else None."""
    excludes = ci[0] > 0 or ci[1] < 0
    if (p < alpha) == excludes:
        return None
    lo, hi = (f"{x:.4g}" for x in ci)
    if excludes:
        return (f"the {how} interval [{lo}, {hi}] excludes 0 but the test gives p {p:.3g} (needs < {alpha:.3g}): "
                f"with {size} the interval is too narrow; the verdict follows the test")
    return (f"the test gives p {p:.3g} but the {how} interval [{lo}, {hi}] includes 0: "
            f"with {size} the interval is approximate; the verdict follows the test")


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment (family-wise error over slices). By hand: scipy has only
    Benjamini-Hochberg (``false_discovery_control``), and Holm is this loop."""
    p = np.asarray(list(p_values), dtype=float)
    m = len(p)
    out = np.empty(m)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def needed_n(effect: float, sd: float, alpha: float, power: float = POWER) -> int | None:
    """Paired examples for a two-sided one-sample t-test at ``alpha`` to detect a mean difference
    ``effect`` with standard deviation ``sd`` with probability ``power`` (noncentral t)."""
    if effect <= 0:
        return None
    if sd <= 0:  # every difference the same: the exact sign test needs 2 / 2^n < alpha
        return max(2, math.floor(math.log2(2 / alpha)) + 1)
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    n = max(2, math.ceil((z * sd / effect) ** 2))
    while n < 10_000_000:
        crit = sps.t.ppf(1 - alpha / 2, n - 1)
        nc = effect / sd * math.sqrt(n)
        if sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc) >= power:
            return n
        n += max(1, n // 50)
    return None


# --- helpers ------------------------------------------------------------------------------------


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _diff_of_means(x, y, axis=-1):
    return np.mean(y, axis=axis) - np.mean(x, axis=axis)


def _mc_error(p: float) -> float:
    return math.sqrt(max(p * (1 - p), 1 / N_PERM) / N_PERM)


def _sign_flip(nonzero: np.ndarray, seed: int) -> tuple[float, float, str]:
    """Two-sided p-value of the mean of ``nonzero`` under random signs: (p, its MC error, method)."""
    k = len(nonzero)
    if k == 0:
        return 1.0, 0.0, "no non-zero difference"
    if k == 1:  # scipy wants two observations; one sign is as likely flipped as not
        return 1.0, 0.0, "exact sign-flip test (1 non-zero difference)"
    exact = 2 ** k <= EXACT_MAX
    r = sps.permutation_test((nonzero,), _mean, permutation_type="samples", vectorized=True,
                             n_resamples=np.inf if exact else N_PERM, batch=max(1, 4_000_000 // k),
                             rng=np.random.default_rng(seed))
    p = float(min(1.0, r.pvalue))
    if exact:
        return p, 0.0, f"exact sign-flip test ({k} non-zero differences)"
    return p, _mc_error(p), f"sign-flip test ({N_PERM:,} random signs, {k} non-zero differences)"


def _bootstrap(data: tuple, statistic, confidence: float, n_boot: int, seed: int) -> tuple[tuple[float, float], str]:
    """BCa interval, percentile where BCa is undefined; a point interval when nothing varies."""
    if all(np.ptp(x) == 0 for x in data):
        v = float(statistic(*data))
        return (v, v), "none (no variation)"
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa on degenerate data warns and returns NaN: we fall back
            r = sps.bootstrap(data, statistic, method=method, confidence_level=confidence, n_resamples=n_boot,
                              vectorized=True, batch=max(1, 4_000_000 // sum(len(x) for x in data)),
                              rng=np.random.default_rng(seed))
        lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return (lo, hi), method
    v = float(statistic(*data))
    return (v, v), "none"


def _wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)
