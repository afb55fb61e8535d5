"""How busy the machine was while a benchmark measured: other processes' CPU time and steal.

On this 2-core VM the other engineers' builds and test runs share both cores, and the host
steals time too (/proc/stat's steal column rose 3-4% over 5 s while loaded). A ratio measured
then says little; the bench prints these numbers beside its results so the reader can tell.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


@dataclass(frozen=True)
class CpuSnapshot:
    """Clock ticks since boot, summed over every CPU, and those of the watched processes."""

    busy: int  # user + nice + system + irq + softirq (guest time is inside user)
    steal: int
    total: int  # every column but guest/guest_nice (already counted in user/nice)
    watched: int  # utime + stime of the watched processes


def snapshot(pids: Iterable[int], proc: Path = _PROC) -> CpuSnapshot:
    fields = [int(v) for v in (proc / "stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return CpuSnapshot(user + nice + system + irq + softirq, steal, sum(fields), sum(_process_ticks(p, proc) for p in pids))


def _process_ticks(pid: int, proc: Path) -> int:
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return 0  # gone (reaped): its time is then counted as another process's
    # Fields after "(comm)": state is the 1st, utime the 12th, stime the 13th.
    rest = text.rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def load_between(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Percent of the whole machine (every CPU): busy in other processes, and stolen."""
    total = after.total - before.total
    if total <= 0:
        return {"other_pct": 0.0, "steal_pct": 0.0}
    other = (after.busy - before.busy) - (after.watched - before.watched)
    return {
        "other_pct": 100.0 * max(other, 0) / total,
        "steal_pct": 100.0 * (after.steal - before.steal) / total,
    }


def load_average() -> float:
    return os.getloadavg()[0]


def describe(m: dict[str, Any]) -> str:
    """The bench header's machine line: CPUs, load average, and what others took while measuring."""
    end = f", {m['load_average_at_end']:.2f} at the end" if "load_average_at_end" in m else ""
    return (
        f"machine: {m['cpus']} CPUs, load average {m['load_average_at_start']:.2f} at start{end}; while measuring, "
        f"other processes used {m['other_pct']:.1f}% of all CPU time and the host stole {m['steal_pct']:.1f}%"
    )
