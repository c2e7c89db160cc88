"""`ftctl --help` wall time against `python -c "import click"`, median of several runs.

Goal (issue 11): under 2x (and no torch import: also checked by tests/core). Run: python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _goals import verdict

GOAL = 2.0  # issue 11: `ftctl --help` under 2x `import click`

def wall(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    py = sys.executable
    wall([py, "-m", "ftctl", "--help"], 2)  # warm the OS file cache and bytecode
    cases = {
        "python -c 'import click' (baseline)": [py, "-c", "import click"],
        "ftctl --help": [py, "-m", "ftctl", "--help"],
        "ftctl versions --help": [py, "-m", "ftctl", "versions", "--help"],
    }
    base = None
    ratios = {}
    print(f"{'command':40} {'median s':>9} {'ratio':>7}   ({runs} runs each)")
    for i, (name, argv) in enumerate(cases.items()):
        t = wall(argv, runs)
        base = base or t
        ratios[name] = t / base
        print(f"{name:40} {t:9.3f} {t / base:6.2f}x", flush=True)
    for name in list(cases)[1:]:
        verdict(f"`{name}` / `import click`", ratios[name], GOAL, higher_is_better=False)


if __name__ == "__main__":
    main()
