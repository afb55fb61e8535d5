"""The spread of a set of paired ratios, as the benches print it."""

from __future__ import annotations

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
