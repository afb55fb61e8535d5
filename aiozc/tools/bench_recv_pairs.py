"""``bench recv``'s aiozc-against-stock comparison: paired, interleaved rounds.

Over loopback the receiver's system time is not only its own: the window update a ``recv``
sends is processed in the receiver's softirq, which runs the sender's ``tcp_write_xmit`` and
then queues that data back to the receiver's socket (perf, cpu-clock on the receiver:
``handle_softirqs`` 19-31% and ``__tcp_transmit_skb`` 16-23% of its samples, the copy
``_copy_to_iter`` 25-32%). How much of that lands on the receiver depends on whose window is
closed when, so one run of a row spread 291-394 ms/GB on a quiet machine. Each round here runs
the stock and the aiozc arm of one (sender, loop) back to back, in the other order on the next
round, with every process on the same cores (benchkit.pin_to_cpu), and the comparison is the
median of the per-round ratios with their range, for the receiver's CPU and for the CPU of
both processes and the ksoftirqd threads together (the pair), which that shift cannot move.

With 5 rounds on a quiet machine the per-round ratios of one case spread 0.80-1.40 (asyncio,
MSG_ZEROCOPY sender, 2026-12-02 16:53 UTC), wider than any difference the target asks about.
So the Protocol rows run more rounds than the rest (bench_recv --pair-rounds) and each median
comes with a distribution-free 95% confidence interval (benchkit_stats.median_ci): the target
line says of a miss whether its interval still holds 1.0 (within the noise of the run) or not.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar
from dataclasses import dataclass

from .benchkit import LOOPS
from .benchkit_stats import median_ci

TARGET = 1.0  # issue #10: never slower than the stock transport


def stock_row(loop: str) -> str:
    return f"Protocol, stock transport ({loop})"


def aiozc_row(loop: str) -> str:
    return f"Protocol, aiozc transport ({loop})"


def _partner(receiver: str) -> str | None:
    """The other arm of a Protocol row's (stock, aiozc) pair, or None."""
    for loop in LOOPS:
        if receiver == stock_row(loop):
            return aiozc_row(loop)
        if receiver == aiozc_row(loop):
            return stock_row(loop)
    return None


def paired_rows(receivers: Sequence[str]) -> list[str]:
    """The receivers among ``receivers`` whose partner is there too (the compared rows)."""
    return [r for r in receivers if _partner(r) in receivers]


def schedule(senders: Sequence[str], receivers: Sequence[str], round_index: int) -> list[tuple[str, str]]:
    """One round's (sender, receiver) runs: every row once, each loop's stock and aiozc rows
    back to back, stock first on even rounds and aiozc first on odd ones."""
    order: list[tuple[str, str]] = []
    for sender in senders:
        placed: set[str] = set()
        for receiver in receivers:
            if receiver in placed:
                continue
            partner = _partner(receiver)
            arms = [receiver]
            if partner is not None and partner in receivers:
                arms = sorted([receiver, partner], key=lambda r: "aiozc" in r, reverse=bool(round_index % 2))
            order.extend((sender, arm) for arm in arms)
            placed.update(arms)
    return order


@dataclass
class PairedRatio:
    sender: str
    loop: str
    metric: str  # "receiver" or "pair" (receiver + sender + ksoftirqd)
    ratios: list[float]  # aiozc / stock, one per round
    median: float
    low: float
    high: float
    ci_low: float = 0.0  # the median's confidence interval (benchkit_stats.median_ci)
    ci_high: float = 0.0
    ci_level: float = 0.0  # its confidence (0.95 or more from 6 rounds on)

    @property
    def beyond_noise(self) -> bool:
        """The whole interval is above the target: a miss the run's noise does not explain."""
        return self.ci_low > TARGET


def paired_ratios(values: dict[tuple[str, str], list[float]], senders: Iterable[str], metric: str) -> list[PairedRatio]:
    """aiozc / stock per round for each (sender, loop) with both arms; ``values`` maps
    (sender, receiver) to one value per round, in round order."""
    out = []
    for sender in senders:
        for loop in LOOPS:
            stock, ours = values.get((sender, stock_row(loop))), values.get((sender, aiozc_row(loop)))
            if not stock or not ours:
                continue
            ratios = [o / s for o, s in zip(ours, stock) if s > 0]
            if ratios:
                ci_low, ci_high, level = median_ci(ratios)
                out.append(PairedRatio(sender, loop, metric, [round(r, 3) for r in ratios],
                                       statistics.median(ratios), min(ratios), max(ratios),
                                       ci_low, ci_high, level))
    return out


def format_ratios(ratios: Sequence[PairedRatio]) -> list[str]:
    return [
        f"  {r.sender:<13}{r.loop:<9}{r.metric:<10}{r.median:>6.2f}x  [{r.low:.2f}-{r.high:.2f}] n={len(r.ratios)}"
        f"  median {r.ci_level:.0%} CI {r.ci_low:.2f}-{r.ci_high:.2f}"
        for r in ratios
    ]


def target_line(ratios: Sequence[PairedRatio], metric: str = "receiver") -> str:
    """The issue's target, on the median paired ratio of ``metric``."""
    chosen = [r for r in ratios if r.metric == metric]
    if not chosen:
        return "target: no paired rows ran"
    missed = [f"{r.sender}/{r.loop} {r.median:.2f}x ({_noise(r)})" for r in chosen if r.median > TARGET]
    cases = len(chosen)
    verdict = "met" if not missed else "missed: " + ", ".join(missed)
    return (f"target: aiozc/stock <= {TARGET:.1f}x CPU per GB on both loops, both senders "
            f"({metric} CPU, median paired ratio, {cases} cases): {verdict}")


def _noise(r: PairedRatio) -> str:
    where = "beyond" if r.beyond_noise else "within"
    return f"CI {r.ci_low:.2f}-{r.ci_high:.2f}: {where} noise"


def ksoftirqd_ms() -> float:
    """CPU time (user + system, ms) of every ksoftirqd thread so far: softirq work the kernel
    deferred there is charged to neither benchmark process."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        if name.startswith("ksoftirqd/"):
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total * 1000.0 / tick


_Sample = TypeVar("_Sample")


def by_round(samples: dict[tuple[str, str], list[_Sample]], value: Callable[[_Sample], float]) -> dict[tuple[str, str], list[float]]:
    return {key: [value(s) for s in runs] for key, runs in samples.items()}
