"""bench udp-sink's comparison with stock: the round schedule, the paired ratios, the A/A lines
and the targets judged on the paired medians (aiozc/tools/bench_udp_pairs.py, bench_udp.py).

Arithmetic on given numbers only: nothing here is timed.
"""

from __future__ import annotations

from typing import Any

import pytest

from aiozc.tools import bench_udp, bench_udp_pairs as pairs, benchkit_stats

SMALL = [
    ("raw sendto", "raw", None),
    ("stock (asyncio)", "stock", "asyncio"),
    ("stock (uvloop)", "stock", "uvloop"),
    ("plain (asyncio)", "aiozc-sendto", "asyncio"),
    ("plain (uvloop)", "aiozc-sendto", "uvloop"),
    ("plain io_uring (asyncio)", "aiozc-sendto+uring", "asyncio"),
]


def test_every_round_runs_each_loops_stock_first_and_last_with_every_other_case_between() -> None:
    for index in range(4):
        slots = pairs.round_schedule(bench_udp.VARIANTS, index)
        stock = [(s.series, s.run) for s in slots if s.kind == "stock"]
        assert stock == [("asyncio stock (asyncio loop)", 1), ("asyncio stock (uvloop)", 1),
                         ("asyncio stock (asyncio loop)", 2), ("asyncio stock (uvloop)", 2)]
        assert [s.kind for s in slots[:2] + slots[-2:]] == ["stock"] * 4
        others = [(s.series, s.kind, s.loop) for s in slots[2:-2]]
        expected = [v for v in bench_udp.VARIANTS if v[1] != "stock"]
        # table order on even rounds, reversed on odd ones: no case always next to a stock run
        assert others == (expected if index % 2 == 0 else expected[::-1])


def _runs(stock: dict[int, tuple[float, float]], mine: dict[int, float], key: str = "seconds") -> pairs.Runs:
    """Runs of ``stock (asyncio)`` (round -> its two runs) and ``plain (asyncio)``."""
    runs: pairs.Runs = {"stock (asyncio)": [], "plain (asyncio)": []}
    for index, (first, second) in stock.items():
        runs["stock (asyncio)"] += [{"round": index, "run": 1, key: first}, {"round": index, "run": 2, key: second}]
    for index, value in mine.items():
        runs["plain (asyncio)"].append({"round": index, "run": 1, key: value})
    return runs


def test_a_paired_ratio_is_the_mean_of_the_rounds_two_stock_runs_over_the_aiozc_run() -> None:
    runs = _runs({0: (1.0, 3.0), 1: (2.0, 2.0), 2: (1.0, 1.0)}, {0: 1.0, 1: 4.0})
    partners = {"plain (asyncio)": "stock (asyncio)"}
    # round 2 has no aiozc run: no pair; nothing is paired across rounds
    assert pairs.paired_ratios(runs, partners, "seconds") == {"plain (asyncio)": [2.0, 0.5]}
    # A/A: run 1 / run 2, per round
    assert pairs.aa_ratios(runs, ["stock (asyncio)"], "seconds") == {"stock (asyncio)": [1.0 / 3.0, 1.0, 1.0]}


def test_a_skipped_run_pairs_with_nothing() -> None:
    runs = _runs({0: (1.0, 1.0), 1: (1.0, 1.0)}, {0: 2.0})
    runs["plain (asyncio)"].append({"round": 1, "run": 1, "skipped": "no compiler"})
    assert pairs.paired_ratios(runs, {"plain (asyncio)": "stock (asyncio)"}, "seconds") == {"plain (asyncio)": [0.5]}


def test_each_transport_is_paired_with_the_stock_of_its_own_loop_and_the_raw_loops_with_none() -> None:
    assert pairs.stock_partners(SMALL) == {
        "plain (asyncio)": "stock (asyncio)", "plain (uvloop)": "stock (uvloop)",
        "plain io_uring (asyncio)": "stock (asyncio)",
    }


def _record(index: int, run: int, seconds: float, cpu: float) -> dict[str, Any]:
    return {"round": index, "run": run, "seconds": seconds, "cpu_s": cpu, "sys_s": cpu / 2, "sink_rx": 10}


def _size_runs(stock: list[float], mine: list[float], cpu_mine: list[float] | None = None) -> pairs.Runs:
    """Every SMALL series over len(stock) rounds: stock at ``stock[i]`` seconds (both runs of a
    round alike), each aiozc series at ``mine[i]`` (CPU seconds likewise unless given)."""
    runs: pairs.Runs = {series: [] for series, _, _ in SMALL}
    for index, base in enumerate(stock):
        for series, kind, _ in SMALL:
            if kind == "stock":
                runs[series] += [_record(index, 1, base, base), _record(index, 2, base, base)]
            elif kind == "raw":
                runs[series].append(_record(index, 1, 1.0, 1.0))
            else:
                cpu = (cpu_mine or mine)[index]
                runs[series].append(_record(index, 1, mine[index], cpu))
    return runs


def _summary(runs: pairs.Runs) -> tuple[list[dict[str, Any]], dict[str, bool], dict[str, str]]:
    rows = bench_udp.size_rows(SMALL, 64000, 10, runs)
    bench_udp._add_ratios(rows)
    _, targets, detail = bench_udp._summary(rows)
    return rows, targets, detail


def _plain_targets(targets: dict[str, bool]) -> dict[str, bool]:
    return {k: v for k, v in targets.items() if "plain sendto" in k}


def test_the_plain_sendto_targets_judge_the_median_of_the_paired_rounds_not_the_ratio_of_medians() -> None:
    # Round 2 was slow for everybody. Its slow stock run is the table's median stock run, and
    # the median aiozc run is round 0's, so the ratio of medians is 1.0/1.1 = 0.91x, below
    # the floor; paired per round aiozc is 0.91x, 1.11x and 1.07x of stock, median 1.07x.
    runs = _size_runs(stock=[1.0, 1.0, 3.0], mine=[1.1, 0.9, 2.8])
    rows, targets, detail = _summary(runs)
    plain = next(r for r in rows if r["series"] == "plain (asyncio)")
    assert plain["vs_stock_same_loop"] == pytest.approx(1.0 / 1.1)
    assert plain["paired"]["GB/s"]["spread"]["median"] == pytest.approx(3.0 / 2.8)
    plain_targets = _plain_targets(targets)
    assert len(plain_targets) == 4  # >= 1.0x and never below 0.95x, on each engine
    assert all(plain_targets.values())
    # the pair range is printed beside the verdict: the lowest pair was below the floor
    for name in plain_targets:
        assert "GB/s 1.07x [0.91-1.11]" in detail[name]


def test_a_plain_sendto_whose_paired_median_is_below_the_floor_misses_both_targets() -> None:
    runs = _size_runs(stock=[1.0, 1.0, 1.0], mine=[1.0, 1.0, 1.0], cpu_mine=[1.06, 1.08, 1.2])
    _, targets, detail = _summary(runs)
    plain = _plain_targets(targets)
    # GB/s 1.00x (>= 1.0 met on its own), CPU 1/1.08 = 0.93x: the worse of the two is judged
    assert plain and not any(plain.values())
    assert all("CPU 0.93x [0.83-0.94]" in detail[name] for name in plain)


def test_a_paired_median_between_the_floor_and_one_misses_the_target_but_not_the_floor() -> None:
    runs = _size_runs(stock=[1.0, 1.0, 1.0], mine=[1.03, 1.02, 1.01])
    _, targets, _ = _summary(runs)
    plain = _plain_targets(targets)
    assert {("never below" in k, v) for k, v in plain.items()} == {(True, True), (False, False)}


def test_stock_rows_carry_their_aa_lines_and_the_spread_is_benchkit_stats() -> None:
    runs = _size_runs(stock=[1.0, 2.0], mine=[1.0, 2.0])
    runs["stock (uvloop)"][1]["seconds"] = 2.0  # round 0's second uvloop stock run took twice as long
    rows, _, _ = _summary(runs)
    by_series = {r["series"]: r for r in rows}
    aa = by_series["stock (uvloop)"]["aa"]["GB/s"]
    assert aa["ratios"] == [0.5, 1.0]
    assert aa["spread"] == benchkit_stats.spread([0.5, 1.0])
    assert "aa" not in by_series["plain (asyncio)"] and "paired" not in by_series["stock (asyncio)"]
    assert "paired" not in by_series["raw sendto"]
    lines = pairs.format_metrics("64000 B stock (uvloop)", by_series["stock (uvloop)"]["aa"])
    assert len(lines) == 3 and "2 pairs" in lines[0] and "GB/s" in lines[0] and "CPU" in lines[1]
    assert "sys" in lines[2]  # shown, not judged


def test_the_kernels_share_is_shown_paired_but_not_judged() -> None:
    runs = _size_runs(stock=[1.0, 1.0, 1.0], mine=[0.9, 0.9, 0.9])
    for record in runs["plain (asyncio)"]:
        record["sys_s"] = 10.0  # 20x stock's: a target judging it would miss
    rows, targets, _ = _summary(runs)
    plain = next(r for r in rows if r["series"] == "plain (asyncio)")
    assert plain["paired"]["sys"]["spread"]["median"] == pytest.approx(0.05)
    assert all(_plain_targets(targets).values())


def test_the_table_prints_the_pairs_the_aa_lines_the_machine_and_the_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    runs = _size_runs(stock=[1.0, 1.0, 3.0], mine=[1.1, 0.9, 2.8])
    rows, targets, detail = _summary(runs)
    bench_udp.print_table({
        "options": {"count": 10, "repeat": 3, "window": 256}, "method": bench_udp.METHOD,
        "machine": {"cpus": 2, "load_average_at_start": 1.5, "load_average_at_end": 2.5, "other_pct": 40.0,
                    "steal_pct": 1.0},
        "rows": rows, "ratios": {}, "targets": targets, "target_detail": detail,
    })
    out = capsys.readouterr().out
    assert "paired with the stock transport of the same loop in the same round" in out
    assert "A/A, stock's first run of a round / its second" in out
    assert "load average 1.50 at start, 2.50 at the end" in out and "40.0%" in out
    assert "never below 0.95x stock on each loop, GB/s and CPU (median of paired rounds): met  (asyncio: GB/s 1.07x" in out
