"""The spread of a set of paired ratios, as the benches print it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (the middle half of the values) and range."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered), "q1": q1, "q3": q3,
        "min": ordered[0], "max": ordered[-1], "n": float(len(ordered)),
    }


def format_spread(s: dict[str, float]) -> str:
    return (
        f"{s['median']:.3f}x  (middle half {s['q1']:.2f}-{s['q3']:.2f}, "
        f"range {s['min']:.2f}-{s['max']:.2f}, {int(s['n'])} pairs)"
    )


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median: (low, high, its confidence).

    The k-th smallest and k-th largest value bound the median with confidence
    1 - 2 P(Binomial(n, 1/2) < k) whatever the distribution; k is the largest that reaches
    ``level``. Below 6 values none does (5 give 94% with the range), and the range is
    returned with the confidence it has."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    n = len(ordered)

    def confidence(k: int) -> float:
        return 1.0 - 2 * sum(math.comb(n, j) for j in range(k)) / 2 ** n

    k = 1
    while 2 * k + 1 <= n and confidence(k + 1) >= level:
        k += 1
    return ordered[k - 1], ordered[n - k], confidence(k)
