"""The goal line a benchmark ends with: the figure, its goal, met or NOT met (issue 27).

One format for every benchmark, so one `make bench` log reads as a list of goals:

    goal: ftctl peak RSS / TRL 0.43x (<= 0.5x): met
"""

from __future__ import annotations


def goal_line(name: str, value: float, goal: float, higher_is_better: bool = True, unit: str = "x",
              fmt: str = ".2f") -> tuple[str, bool]:
    """The goal line of one figure, and whether the goal is met."""
    met = value >= goal if higher_is_better else value <= goal
    return (f"goal: {name} {value:{fmt}}{unit} ({'>=' if higher_is_better else '<='} {goal:g}{unit}): "
            f"{'met' if met else 'NOT met'}"), met


def verdict(name: str, value: float, goal: float, higher_is_better: bool = True, unit: str = "x",
            fmt: str = ".2f") -> bool:
    """Print the goal line of one figure; returns whether the goal is met."""
    line, met = goal_line(name, value, goal, higher_is_better, unit, fmt)
    print(line, flush=True)
    return met

