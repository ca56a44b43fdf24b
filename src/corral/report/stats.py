"""The statistics of a report: sufficient statistics per cell that add up across runs, success rates
with Wilson intervals, means with normal-approximation intervals."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n (None when n == 0)."""
    if n <= 0:
        return None
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def mean_std_ci(n: int, total: float, total_sq: float, z: float = Z95) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and the normal-approximation interval mean +- z*std/sqrt(n)."""
    if n <= 0:
        return {"n": 0, "mean": None, "std": None, "ci": None, "lo": None, "hi": None}
    mean = total / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci": None, "lo": None, "hi": None}
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    std = math.sqrt(var)
    half = z * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci": half, "lo": mean - half, "hi": mean + half}


def summarize_values(values: Iterable[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    return mean_std_ci(len(values), sum(values), sum(v * v for v in values))


@dataclass
class Stats:
    """Sufficient statistics of one cell (a group in one run, or merged over runs): they add up."""

    expected: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    cancelled: int = 0
    budget: int = 0           # stopped by the budget: not sent, not a failure
    bool_n: int = 0
    bool_k: int = 0
    numeric: dict[str, list[float]] = field(default_factory=dict)  # name -> [n, sum, sum of squares]
    errors: Counter = field(default_factory=Counter)

    def add(self, other: "Stats") -> None:
        self.expected += other.expected
        self.done += other.done
        self.failed += other.failed
        self.running += other.running
        self.cancelled += other.cancelled
        self.budget += other.budget
        self.bool_n += other.bool_n
        self.bool_k += other.bool_k
        for name, (n, s, ss) in other.numeric.items():
            mine = self.numeric.setdefault(name, [0, 0.0, 0.0])
            mine[0] += n
            mine[1] += s
            mine[2] += ss
        self.errors.update(other.errors)

    def metrics(self, metric: str | None, numeric: Sequence[str]) -> dict[str, Any]:
        finished = self.done + self.failed + self.cancelled + self.budget
        out: dict[str, Any] = {
            "expected": self.expected, "done": self.done, "failed": self.failed, "running": self.running,
            "cancelled": self.cancelled, "budget": self.budget, "progress": finished / self.expected if self.expected else None,
        }
        if metric is not None:
            interval = wilson(self.bool_k, self.bool_n)
            out["success"] = {"n": self.bool_n, "k": self.bool_k,
                              "rate": self.bool_k / self.bool_n if self.bool_n else None,
                              "lo": interval[0] if interval else None, "hi": interval[1] if interval else None}
        out["numeric"] = {name: mean_std_ci(*self.numeric.get(name, [0, 0.0, 0.0])) for name in numeric}
        out["errors"] = dict(self.errors.most_common())
        return out
