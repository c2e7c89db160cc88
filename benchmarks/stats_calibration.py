"""Do ftctl's comparison verdicts mean what they say? Null and power simulations, old code vs new.

Under the null (the two versions are exchangeable: same distribution of scores, paired or not)
a verdict "better" or "worse" is a false one; its rate must not exceed alpha (1 - confidence)
by more than the simulation's own Monte Carlo error. Each shape below is a realistic one:

- paired, binary (exact_match) with sparse discordance: most examples tie; a few flip either way;
- paired, continuous rougeL-like: many zeros, a few ones, the rest in between, per-example difficulty;
- two samples, canary ratings: thumbs (0/1) and 1-5 stars, different users on each side;
- two rates, canary 5xx answers: small error rates over many requests.

For each shape: n, the old code's false-verdict rate (the bootstrap interval of ftctl <= 0.1,
copied below), the new one's (ftctl.lib.stats), and whether it is within alpha + 2 standard
errors of the simulation. Then the power (share of true "better"/"worse" found) at a few effects.

Goal (issue 22): the new false-verdict rate <= alpha + Monte Carlo error in every shape.
Run: python benchmarks/stats_calibration.py [--sims N] [--seed S]   (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _goals import verdict  # noqa: E402
from ftctl.lib import stats  # noqa: E402

ALPHA = 0.05
SAME = stats.SAME


# --- the old code (ftctl.lib.stats before issue 22), verbatim in substance: the baseline ---------


def _old_interval(boot, confidence=0.95):
    alpha = 1 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _old_verdict(lo, hi):
    return SAME if lo <= 0 <= hi else "different"


def old_paired(a, b, n_boot=2000, seed=0):
    d = np.asarray(b, float) - np.asarray(a, float)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    return _old_verdict(*_old_interval(d[idx].mean(axis=1)))


def old_two_sample(a, b, n_boot=2000, seed=0):
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    boot = (b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(axis=1)
            - a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1))
    return _old_verdict(*_old_interval(boot))


def old_rates(k_a, n_a, k_b, n_b, n_boot=2000, seed=0):
    rng = np.random.default_rng(seed)
    boot = rng.binomial(n_b, k_b / n_b, n_boot) / n_b - rng.binomial(n_a, k_a / n_a, n_boot) / n_a
    return _old_verdict(*_old_interval(boot))


# --- the shapes ---------------------------------------------------------------------------------


def binary_pairs(rng, n, discord=0.1, favour=0.5):
    """0/1 scores; an example is discordant with probability ``discord``, b wins it with ``favour``."""
    base = (rng.random(n) < 0.15).astype(float)
    flip = rng.random(n) < discord
    b_wins = rng.random(n) < favour
    a, b = base.copy(), base.copy()
    a[flip], b[flip] = np.where(b_wins[flip], 0.0, 1.0), np.where(b_wins[flip], 1.0, 0.0)
    return a, b


def rouge_pairs(rng, n, shift=0.0):
    """rougeL-like: per-example difficulty; 30% of answers score 0, 8% score 1, the rest Beta."""
    difficulty = rng.beta(2, 3, n)

    def side(extra):
        s = np.clip(difficulty + extra + rng.normal(0, 0.15, n), 0, 1)
        s[rng.random(n) < 0.30] = 0.0
        s[rng.random(n) < 0.08] = 1.0
        return np.round(s, 3)

    return side(0.0), side(shift)


def thumbs(rng, n, p_a=0.7, p_b=0.7):
    return (rng.random(n) < p_a).astype(float), (rng.random(n) < p_b).astype(float)


def stars(rng, n, shift=0.0):
    w = np.array([0.08, 0.07, 0.15, 0.3, 0.4])
    wb = np.clip(w + shift * np.array([-1, -1, 0, 1, 1]), 1e-3, None)
    return rng.choice(5, n, p=w) + 1.0, rng.choice(5, n, p=wb / wb.sum()) + 1.0


def paired_case(gen):
    def run(rng, seed):
        a, b = gen(rng)
        return old_paired(a, b, seed=seed), stats.paired_test(a, b, seed=seed).verdict
    return run


def two_sample_case(gen):
    def run(rng, seed):
        a, b = gen(rng)
        return old_two_sample(a, b, seed=seed), stats.two_sample_test(a, b, seed=seed).verdict
    return run


def rates_case(n, p_a, p_b=None):
    def run(rng, seed):
        k_a, k_b = rng.binomial(n, p_a), rng.binomial(n, p_b if p_b is not None else p_a)
        return old_rates(k_a, n, k_b, n, seed=seed), stats.two_proportions(k_a, n, k_b, n).verdict
    return run


# (name, n, relative cost: fewer simulations for the slow ones, case)
NULL = [
    *[(f"paired exact_match, 10% discordant", n, 1, paired_case(lambda r, n=n: binary_pairs(r, n)))
      for n in (20, 59, 200, 2000)],
    ("paired exact_match, 30% discordant", 59, 1, paired_case(lambda r: binary_pairs(r, 59, discord=0.3))),
    *[(f"paired rougeL-like", n, 1 if n <= 200 else 4, paired_case(lambda r, n=n: rouge_pairs(r, n)))
      for n in (20, 59, 200, 500, 2000)],
    *[(f"canary thumbs (0/1), per side", n, 1 if n <= 100 else 4, two_sample_case(lambda r, n=n: thumbs(r, n)))
      for n in (30, 100, 500)],
    *[(f"canary 1-5 stars, per side", n, 1 if n <= 100 else 4, two_sample_case(lambda r, n=n: stars(r, n)))
      for n in (30, 200)],
    ("canary 5xx rate 1%, requests per side", 500, 1, rates_case(500, 0.01)),
    ("canary 5xx rate 1%, requests per side", 5000, 1, rates_case(5000, 0.01)),
    ("canary 5xx rate 0.2%, requests per side", 20000, 1, rates_case(20000, 0.002)),
]

POWER = [
    ("paired exact_match, b wins 75% of 10% discordant", 59, 1,
     paired_case(lambda r: binary_pairs(r, 59, favour=0.75))),
    ("paired exact_match, b wins 75% of 10% discordant", 200, 1,
     paired_case(lambda r: binary_pairs(r, 200, favour=0.75))),
    ("paired rougeL-like, +0.05", 59, 1, paired_case(lambda r: rouge_pairs(r, 59, 0.05))),
    ("paired rougeL-like, +0.10", 59, 1, paired_case(lambda r: rouge_pairs(r, 59, 0.10))),
    ("canary thumbs 70% -> 60%, per side", 100, 1, two_sample_case(lambda r: thumbs(r, 100, 0.7, 0.6))),
    ("canary 5xx 1% -> 2%, requests per side", 2000, 1, rates_case(2000, 0.01, 0.02)),
]


def simulate(case, sims: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    old = new = 0
    for i in range(sims):
        o, v = case(rng, i)
        old += o != SAME
        new += v != SAME
    return old / sims, new / sims


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=800, help="simulations per shape (the slow ones get a quarter)")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--only", choices=["null", "power"], help="run one of the two tables")
    ap.add_argument("--skip", type=int, default=0, help="skip the first N null shapes (resume a long run)")
    args = ap.parse_args()
    t0 = time.time()
    if args.only != "power":
        print(f"False verdicts under the null (alpha {ALPHA}); tolerance alpha + 2 standard errors of the simulation\n")
        print(f"{'shape':42} {'n':>6} {'sims':>5} {'old':>6} {'new':>6} {'tol':>6}  old ok  new ok")
        ok_old = ok_new = 0
        for i, (name, n, cost, case) in enumerate(NULL):
            if i < args.skip:
                continue
            sims = max(50, args.sims // cost)
            tol = ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / sims)
            old, new = simulate(case, sims, args.seed + i)
            ok_old += old <= tol
            ok_new += new <= tol
            print(f"{name:42} {n:6d} {sims:5d} {old:6.3f} {new:6.3f} {tol:6.3f}  {'yes' if old <= tol else 'NO':>6}"
                  f"  {'yes' if new <= tol else 'NO':>6}", flush=True)
        print(f"\nwithin tolerance: old {ok_old}/{len(NULL) - args.skip}, new {ok_new}/{len(NULL) - args.skip}")
        verdict("null shapes whose new false-verdict rate is within tolerance", ok_new, len(NULL) - args.skip,
                unit="", fmt="d")
    if args.only != "null":
        print(f"\nPower: share of simulations with the true verdict found (alpha {ALPHA})\n")
        print(f"{'effect':50} {'n':>6} {'sims':>5} {'old':>6} {'new':>6}")
        for i, (name, n, cost, case) in enumerate(POWER):
            sims = max(50, args.sims // cost // 2)
            old, new = simulate(case, sims, args.seed + 100 + i)
            print(f"{name:50} {n:6d} {sims:5d} {old:6.3f} {new:6.3f}", flush=True)
        print("\n(old power is inflated where its false-verdict rate is: a test that says 'different' "
              "more often finds more true differences too)")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
