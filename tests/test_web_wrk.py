"""The wrk bench's fairness: interleaved rounds in alternating order, paired per-round ratios."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import shutil
from pathlib import Path

import pytest

from aiozc.tools import web_wrk
from aiozc.tools.web_wrk import WrkCase, WrkRun


def _run(rps: float, bytes_per_request: float = 1000.0) -> WrkRun:
    return WrkRun(requests=int(rps), seconds=1.0, bytes_read=rps * bytes_per_request, errors=0, server_cpu_s=0.1)


def test_rounds_alternate_which_arm_goes_first() -> None:
    orders = [web_wrk.round_order(i) for i in range(4)]
    assert orders[0] == orders[2] == ("stock", "aiozc")
    assert orders[1] == orders[3] == ("aiozc", "stock")


def test_ratio_is_the_median_of_per_round_pairs_not_of_the_arms_medians() -> None:
    """The machine slows down in round 2 for both arms: each round's pair still says 1.1x,
    where the medians of the arms' rounds taken apart said 1.25x (rounds of one arm ranked
    against rounds of the other)."""
    stock = [_run(1000), _run(500), _run(800)]
    aiozc = [_run(1100), _run(550), _run(880)]
    paired = web_wrk.paired_ratios(stock, aiozc)
    assert paired == pytest.approx([1.1, 1.1, 1.1])
    cases = [
        WrkCase("body-11B", "asyncio", "stock", 800, 0.8, 1.0, 0, [1000, 500, 800]),
        WrkCase("body-11B", "asyncio", "aiozc", 1000, 1.0, 1.0, 0, [1100, 550, 880], paired=paired),
    ]
    assert web_wrk.ratios(cases) == {"wrk body-11B/asyncio": pytest.approx(1.1)}


def test_a_row_without_pairs_falls_back_to_the_ratio_of_medians() -> None:
    cases = [
        WrkCase("body-11B", "uvloop", "stock", 800, 0.8, 1.0, 0),
        WrkCase("body-11B", "uvloop", "aiozc", 1000, 1.0, 1.0, 0),
    ]
    assert web_wrk.ratios(cases) == {"wrk body-11B/uvloop": pytest.approx(1.25)}


def test_each_round_pairs_bytes_per_second() -> None:
    """Bytes, not requests: a 64 MiB run finishes few responses and wrk counts unfinished ones."""
    stock = [WrkRun(9, 3.0, 9.5 * 64e6, 0, 1.0)]
    aiozc = [WrkRun(9, 3.0, 12.0 * 64e6, 0, 1.0)]
    assert web_wrk.paired_ratios(stock, aiozc) == pytest.approx([12.0 / 9.5])


def test_wrk_rounds_pair_up_in_a_real_run(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip(web_wrk.wrk_missing())
    opts = argparse.Namespace(
        loops=["asyncio"], wrk_cases=["body-11B"], wrk_duration=1, wrk_rounds=2, connections=4,
        transport_options={},
    )
    result = web_wrk.run(opts, tmp_path)
    aiozc = next(c for c in result["cases"] if c["server"] == "aiozc")
    assert len(aiozc["paired"]) == 2 and all(r > 0 for r in aiozc["paired"])
    assert result["ratios"]["wrk body-11B/asyncio"] == pytest.approx(sorted(aiozc["paired"])[0] / 2 + sorted(aiozc["paired"])[1] / 2)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_wrk_is_pinned_off_the_servers_core_even_after_the_server_pinned_itself() -> None:
    """bench aiohttp pins itself (the server) to one core, then starts wrk with
    ``preexec_fn=lambda: pin_to_cpu(1)``. That child inherits the one-CPU mask, so choosing
    from its own affinity left wrk on the server's core (seen: mask 1 during a run)."""
    script = (
        "import os, subprocess, sys\n"
        "from aiozc.tools.benchkit import pin_to_cpu\n"
        "server = pin_to_cpu(0)\n"
        "out = subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'],"
        " preexec_fn=lambda: pin_to_cpu(1), capture_output=True, text=True, check=True).stdout\n"
        "print(server, out.strip())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    server, child = out.stdout.split(" ", 1)
    assert eval(child) != [int(server)]
    assert len(eval(child)) == 1
