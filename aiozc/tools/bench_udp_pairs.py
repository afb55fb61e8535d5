"""``bench udp-sink``'s comparison with stock: per-round pairs, the way ``bench tcp`` makes them.

Why: a ratio of medians compares the median aiozc run with the median stock run, which may come
from different rounds; on two shared cores a neighbour's burst slows whichever case runs then,
so one bad stretch moves one side only (the plain-sendto rows, whose work per datagram is the
same send(2) as stock's, ran 0.94-1.24x of stock in five quiet runs by that measure). Here each
round runs every loop's stock transport twice, first and last, with the other cases in between
(in the table's order on even rounds, reversed on odd ones, so no case always sits next to one
of them), and every aiozc run is compared with the mean of the two stock runs of its own round
and loop. The median of those paired ratios is what the targets judge; the lowest and highest
pair are printed beside it. The two stock runs of a round against each other (A/A) show how far
the same code moves by chance. No round is dropped.

Pure functions on the runs' records (dicts with ``round``, ``run``, ``seconds``, ``cpu_s``):
tested without timing anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .benchkit_stats import format_spread, spread

Variant = tuple[str, str, "str | None"]  # (series, kind, loop): bench_udp.VARIANTS' rows
Runs = dict[str, list[dict[str, Any]]]  # series -> its runs, each tagged with round and run

# What a paired ratio compares: (record key, label). Both are "stock over aiozc" (the same
# bytes in each run), so > 1 is aiozc faster (GB/s) or cheaper per byte (CPU).
METRICS = (("seconds", "GB/s"), ("cpu_s", "CPU"))
# Shown beside them, not judged: the kernel's share of the CPU time (the copy, UDP/IP, ifb), the
# same send(2) for stock and aiozc's plain sendto, so a ratio far from 1 there is the machine.
SHOWN = METRICS + (("sys_s", "sys"),)


@dataclass(frozen=True)
class Slot:
    """One run of a round: a variant, and for stock which of its two runs (1 or 2) it is."""

    series: str
    kind: str
    loop: str | None
    run: int = 1


def round_schedule(variants: Sequence[Variant], index: int) -> list[Slot]:
    """The runs of round ``index``: each loop's stock (run 1), every other variant (in order on
    even rounds, reversed on odd ones), each loop's stock again (run 2)."""
    stock = [v for v in variants if v[1] == "stock"]
    others = [v for v in variants if v[1] != "stock"]
    if index % 2:
        others.reverse()
    return ([Slot(*v, run=1) for v in stock] + [Slot(*v) for v in others]
            + [Slot(*v, run=2) for v in stock])


def stock_partners(variants: Iterable[Variant]) -> dict[str, str]:
    """Each series with a loop (the transports) -> the stock series of that loop."""
    variants = list(variants)
    stock = {loop: series for series, kind, loop in variants if kind == "stock"}
    return {
        series: stock[loop] for series, kind, loop in variants
        if kind != "stock" and loop is not None and loop in stock
    }


def _by_round(runs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    rounds: dict[int, list[dict[str, Any]]] = {}
    for position, record in enumerate(runs):
        if "skipped" not in record:
            rounds.setdefault(record.get("round", position), []).append(record)
    return rounds


def paired_ratios(runs: Runs, partners: dict[str, str], key: str) -> dict[str, list[float]]:
    """Per series in ``partners``, one ratio per round: the mean ``key`` of its partner's runs
    in that round over this series' ``key`` (rounds in order)."""
    paired: dict[str, list[float]] = {}
    for series, partner in partners.items():
        mine, theirs = _by_round(runs.get(series, [])), _by_round(runs.get(partner, []))
        ratios = []
        for index in sorted(mine):
            around = theirs.get(index)
            for record in mine[index]:
                if around and record.get(key, 0) > 0 and all(key in r for r in around):
                    ratios.append(statistics.fmean(r[key] for r in around) / record[key])
        if ratios:
            paired[series] = ratios
    return paired


def aa_ratios(runs: Runs, stock_series: Iterable[str], key: str) -> dict[str, list[float]]:
    """Stock's first run of each round over its second, of ``key``: the same code twice, so
    whatever these move is chance (> 1: the second run was faster / cheaper)."""
    aa: dict[str, list[float]] = {}
    for series in stock_series:
        ratios = []
        for _, records in sorted(_by_round(runs.get(series, [])).items()):
            first = [r for r in records if r.get("run") == 1]
            second = [r for r in records if r.get("run") == 2]
            if first and second and second[0].get(key, 0) > 0 and key in first[0]:
                ratios.append(first[0][key] / second[0][key])
        if ratios:
            aa[series] = ratios
    return aa


def compare(runs: Runs, variants: Sequence[Variant]) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired ratios and A/A of one size's runs: {"paired" | "aa": {series: {label: {"ratios",
    "spread"}}}}, labels as in :data:`SHOWN`."""
    partners = stock_partners(variants)
    stock = sorted(set(partners.values()))
    out: dict[str, dict[str, dict[str, Any]]] = {"paired": {}, "aa": {}}
    for key, label in SHOWN:
        for part, found in (("paired", paired_ratios(runs, partners, key)), ("aa", aa_ratios(runs, stock, key))):
            for series, ratios in found.items():
                entry = {"ratios": [round(r, 4) for r in ratios], "spread": spread(ratios)}
                out[part].setdefault(series, {})[label] = entry
    return out


def worse_median(pairs: dict[str, Any]) -> float:
    """The worse of a row's paired GB/s and CPU medians (what a floor target judges)."""
    return min(pairs[label]["spread"]["median"] for _, label in METRICS)


def pair_range(pairs: dict[str, Any]) -> str:
    """``GB/s 1.03x [0.97-1.12], CPU 1.01x [0.99-1.04]``: medians and lowest-highest pairs."""
    parts = []
    for _, label in METRICS:
        s = pairs[label]["spread"]
        parts.append(f"{label} {s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}]")
    return ", ".join(parts)


def format_metrics(name: str, metrics: dict[str, Any]) -> list[str]:
    """Printed lines of one row's paired (or A/A) ratios, one per metric."""
    return [
        f"  {name + ' ' + label:<76} {format_spread(metrics[label]['spread'])}"
        for _, label in SHOWN if label in metrics
    ]
