"""Paired tests with the standard library: McNemar's exact test (the binomial on discordant pairs)
and the paired t-test (Student's t distribution from the regularized incomplete beta function)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from corral.report.stats import Z95


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on the CDF, to 1e-12)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def binomial_two_sided(k: int, n: int) -> float:
    """The exact two-sided p-value of k successes in n fair coin flips: 2 * P(X <= min(k, n-k)), at most 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


def mcnemar(baseline: Sequence[bool], other: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of paired booleans, and the difference of rates (other - baseline) with a
    Wald 95% interval for paired proportions: se = sqrt(b + c - (c - b)^2 / n) / n."""
    n = len(baseline)
    b = sum(1 for x, y in zip(baseline, other) if x and not y)  # baseline right, other wrong
    c = sum(1 for x, y in zip(baseline, other) if y and not x)
    out: dict[str, Any] = {"n": n, "test": "mcnemar-exact", "discordant": [b, c],
                           "baseline_mean": sum(map(bool, baseline)) / n if n else None,
                           "other_mean": sum(map(bool, other)) / n if n else None}
    if n == 0:
        return {**out, "diff": None, "ci_low": None, "ci_high": None, "statistic": None, "p_value": None}
    diff = (c - b) / n
    se = math.sqrt(max(0.0, b + c - (c - b) ** 2 / n)) / n
    return {**out, "diff": diff, "ci_low": max(-1.0, diff - Z95 * se), "ci_high": min(1.0, diff + Z95 * se),
            "statistic": min(b, c), "p_value": binomial_two_sided(b, b + c)}


def paired_t(baseline: Sequence[float], other: Sequence[float]) -> dict[str, Any]:
    """The paired t-test of other - baseline, and the mean difference with its t 95% interval."""
    n = len(baseline)
    diffs = [y - x for x, y in zip(baseline, other)]
    out: dict[str, Any] = {"n": n, "test": "paired-t",
                           "baseline_mean": sum(baseline) / n if n else None,
                           "other_mean": sum(other) / n if n else None}
    if n == 0:
        return {**out, "diff": None, "ci_low": None, "ci_high": None, "statistic": None, "p_value": None}
    mean = sum(diffs) / n
    if n < 2:
        return {**out, "diff": mean, "ci_low": None, "ci_high": None, "statistic": None, "p_value": None}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:  # every pair differs by the same amount: no spread to test against
        return {**out, "diff": mean, "ci_low": mean, "ci_high": mean, "statistic": None,
                "p_value": 1.0 if mean == 0 else 0.0}
    t = mean / se
    half = t_quantile(0.975, n - 1) * se
    return {**out, "diff": mean, "ci_low": mean - half, "ci_high": mean + half, "statistic": t,
            "p_value": min(1.0, 2.0 * (1.0 - t_cdf(abs(t), n - 1)))}


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _signed_rank_counts(n: int) -> list[int]:
    """How many of the 2^n sign patterns give each sum of positive ranks 0..n(n+1)/2 (no ties)."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    for rank in range(1, n + 1):
        for total in range(len(counts) - 1, rank - 1, -1):
            counts[total] += counts[total - rank]
    return counts


EXACT_WILCOXON_MAX_N = 50


def wilcoxon(baseline: Sequence[float], other: Sequence[float]) -> dict[str, Any]:
    """Wilcoxon's signed-rank test of other - baseline (zero differences dropped, tied ranks averaged):
    the exact p-value when there are no ties and at most 50 non-zero differences, else the normal
    approximation with the tie correction and a continuity correction of 0.5. The difference is the
    Hodges-Lehmann estimate (the median of the Walsh averages) with its 95% interval from the
    Walsh averages' order statistics."""
    n = len(baseline)
    diffs = [y - x for x, y in zip(baseline, other)]
    out: dict[str, Any] = {"n": n, "test": "wilcoxon",
                           "baseline_mean": sum(baseline) / n if n else None,
                           "other_mean": sum(other) / n if n else None}
    nonzero = [d for d in diffs if d != 0]
    m = len(nonzero)
    if n == 0:
        return {**out, "diff": None, "ci_low": None, "ci_high": None, "statistic": None, "p_value": None}
    walsh = sorted((diffs[i] + diffs[j]) / 2 for i in range(n) for j in range(i, n))
    middle = len(walsh) // 2
    estimate = walsh[middle] if len(walsh) % 2 else (walsh[middle - 1] + walsh[middle]) / 2
    if m == 0:
        return {**out, "diff": estimate, "ci_low": estimate, "ci_high": estimate, "statistic": 0.0, "p_value": 1.0}
    ranks = _ranks([abs(d) for d in nonzero])
    w_plus = sum(r for r, d in zip(ranks, nonzero) if d > 0)
    tied = len(set(abs(d) for d in nonzero)) < m
    if not tied and m <= EXACT_WILCOXON_MAX_N:
        counts = _signed_rank_counts(m)
        low = sum(counts[: int(w_plus) + 1]) / 2 ** m
        high = sum(counts[int(w_plus):]) / 2 ** m
        p = min(1.0, 2.0 * min(low, high))
    else:
        mean = m * (m + 1) / 4
        groups: dict[float, int] = {}
        for d in nonzero:
            groups[abs(d)] = groups.get(abs(d), 0) + 1
        var = m * (m + 1) * (2 * m + 1) / 24 - sum(t ** 3 - t for t in groups.values()) / 48
        z = max(0.0, abs(w_plus - mean) - 0.5) / math.sqrt(var) if var > 0 else 0.0
        p = min(1.0, math.erfc(z / math.sqrt(2)))
    # The interval: the k-th smallest and largest Walsh averages, k from the null distribution of n.
    if n <= EXACT_WILCOXON_MAX_N:
        counts, k, below = _signed_rank_counts(n), 0, 0
        while below + counts[k] <= 0.025 * 2 ** n:
            below += counts[k]
            k += 1
    else:
        k = int(math.floor(n * (n + 1) / 4 - Z95 * math.sqrt(n * (n + 1) * (2 * n + 1) / 24)))
    if k < 1:
        ci_low = ci_high = None
    else:
        ci_low, ci_high = walsh[k - 1], walsh[len(walsh) - k]
    return {**out, "diff": estimate, "ci_low": ci_low, "ci_high": ci_high, "statistic": w_plus, "p_value": p}
