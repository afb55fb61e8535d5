"""bench tcp's method: what each arm's measured interval contains, the round schedule, the
paired ratios and their spread, the machine-load report, and one small real run.

No timing is asserted: only what is measured where, and the arithmetic on given numbers.
"""

from __future__ import annotations

import argparse
import gc
import os
import weakref
from typing import Any

import pytest

from aiozc._sys import core
from aiozc.tools import bench_tcp, benchkit_machine, benchkit_stats


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _garbage_in_the_oldest_generation() -> weakref.ref[_Cycle]:
    """A reference cycle that only a full collection frees (what a previous arm leaves)."""
    cycle = _Cycle()
    gc.collect()  # survives, promoted to the oldest generation
    ref = weakref.ref(cycle)
    del cycle
    return ref


def _fake_run_on(seen: list[bool], ref: weakref.ref[_Cycle]) -> Any:
    def run_on(loop: str, coro: Any) -> dict[str, Any]:
        coro.close()  # the measured coroutine would start here
        seen.append(ref() is None)
        return {"seconds": 1.0, "cpu": 1.0}

    return run_on


def test_a_previous_arms_garbage_is_collected_before_the_next_run_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without it, a full collection of one arm's garbage (futures, views) could run inside the
    # next arm's timed interval and be charged to it.
    ref = _garbage_in_the_oldest_generation()
    seen: list[bool] = []
    monkeypatch.setattr(bench_tcp, "run_on", _fake_run_on(seen, ref))
    variant = bench_tcp.VARIANTS[0]
    bench_tcp._run_variant(variant, bench_tcp.Target(("127.0.0.1", 1)), memoryview(b"x" * 64), 64, 64)
    assert seen == [True]


def test_every_round_brackets_the_aiozc_arms_between_two_stock_runs_on_their_loop() -> None:
    orders = set()
    for index in range(4):
        slots = bench_tcp.round_schedule(index)
        assert sorted(s.variant.name for s in slots if s.variant.kind != "stock") == sorted(
            v.name for v in bench_tcp.VARIANTS if v.kind != "stock"
        )
        assert slots[-1].variant.kind == "naive"
        blocks = [slots[0:4], slots[4:8]]
        for block in blocks:
            loop = block[0].variant.loop
            assert [s.variant.kind for s in (block[0], block[3])] == ["stock", "stock"]
            assert [s.run for s in (block[0], block[3])] == [1, 2]
            assert {s.variant.loop for s in block} == {loop}
            assert {s.variant.kind for s in block[1:3]} == {"aiozc", "aiozc-write"}
        orders.add((blocks[0][0].variant.loop, blocks[0][1].variant.kind))
    # loop order and the aiozc pair's order both alternate: all four combinations occur
    assert orders == {(loop, kind) for loop in ("asyncio", "uvloop") for kind in ("aiozc", "aiozc-write")}


def _result(round_: int, seconds: float, cpu: float, run: int = 1) -> dict[str, Any]:
    return {"round": round_, "run": run, "seconds": seconds, "cpu": cpu}


def test_paired_ratio_is_the_mean_of_the_two_stock_runs_over_the_aiozc_run_of_the_same_round() -> None:
    size = 64 << 10
    samples = {
        (size, "asyncio stock"): [_result(0, 1.0, 0.5, 1), _result(0, 3.0, 1.5, 2),
                                  _result(1, 2.0, 1.0, 1), _result(1, 2.0, 1.0, 2)],
        (size, "aiozc write (asyncio)"): [_result(0, 1.0, 2.0), _result(1, 4.0, 0.5)],
    }
    key = "64 KiB aiozc write (asyncio) / asyncio stock"
    assert bench_tcp._paired_ratios(samples, "seconds") == {key: [2.0, 0.5]}
    assert bench_tcp._paired_ratios(samples, "cpu") == {key: [0.5, 2.0]}
    # A/A in GB/s: run 2 took 3 s where run 1 took 1 s -> a third of the speed
    assert bench_tcp._aa_ratios(samples) == {"64 KiB asyncio stock run 2 / run 1 (A/A)": [1.0 / 3.0, 1.0]}


def test_each_run_also_reports_the_receivers_cpu_and_both_sides_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    # On loopback the kernel's receive path (and the data an ACK lets out) runs in whichever
    # process is on the CPU: the sender's CPU alone moves with its pace, so the sum is reported.
    import multiprocessing as mp

    monkeypatch.setattr(bench_tcp, "run_on", lambda loop, coro: coro.close() or {"seconds": 1.0, "cpu": 0.25})
    reader, writer = mp.Pipe(duplex=False)
    writer.send((0.5, 7))
    result = bench_tcp._run_variant(bench_tcp.VARIANTS[0], bench_tcp.Target(("127.0.0.1", 1), receiver_cpu=reader),
                                    memoryview(b"x" * 64), 64, 64)
    assert (result["receiver_cpu"], result["receiver_sleeps"], result["both_cpu"]) == (0.5, 7, 0.75)


def test_the_summary_pairs_both_sides_cpu_per_byte_where_the_receiver_reported_it() -> None:
    size = 1 << 20
    total = 1 << 30

    def run(round_: int, cpu: float, rcv: float, run: int = 1) -> dict[str, Any]:
        return {**_result(round_, 1.0, cpu, run), "receiver_cpu": rcv, "both_cpu": cpu + rcv, "state": "-",
                "zc_bytes": 0, "receiver_sleeps": 1024, "pauses": 3}

    samples = {(size, name): [run(0, 0.25, 0.25, 1), run(0, 0.25, 0.25, 2)] for name in ("asyncio stock", "uvloop stock")}
    # the sender spends more than stock's (0.3 > 0.25), the receiver much less: cheaper in all
    samples[(size, "aiozc write (uvloop)")] = [run(0, 0.3, 0.1)]
    result = bench_tcp._summarize(samples, total)
    key = "1 MiB aiozc write (uvloop) / uvloop stock"
    assert result["paired_cpu"][key] == [pytest.approx(0.25 / 0.3)]
    assert result["paired_both_cpu"][key] == [pytest.approx(0.5 / 0.4)]
    row = next(r for r in result["rows"] if r["series"] == "aiozc write (uvloop)")
    assert row["both_cpu_s_per_gb"] == pytest.approx(0.4 / (total / 1e9))
    assert (row["pauses"], row["receiver_sleeps_per_mib"]) == (3, 1.0)
    # the guest rig's peer reports no CPU: no pair of sums, rather than one of sender CPU alone
    for results in samples.values():
        for r in results:
            del r["both_cpu"]
    assert bench_tcp._summarize(samples, total)["paired_both_cpu"] == {}


def test_spread_reports_median_quartiles_and_range() -> None:
    s = benchkit_stats.spread([1.0, 5.0, 2.0, 4.0, 3.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5.0)
    assert benchkit_stats.spread([0.9])["q1"] == 0.9
    assert "5 pairs" in benchkit_stats.format_spread(s)


def _fake_proc(root: Any, cpu: list[int], ticks: dict[int, tuple[int, int]]) -> None:
    (root / "stat").write_text("cpu  " + " ".join(map(str, cpu)) + " 0 0\ncpu0 1 2 3\n")
    for pid, (utime, stime) in ticks.items():
        (root / str(pid)).mkdir(exist_ok=True)
        # comm with a space and a parenthesis, as /proc allows
        fields = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 5
        (root / str(pid) / "stat").write_text(f"{pid} (py thon) x) " + " ".join(fields) + "\n")


def test_machine_load_is_other_processes_busy_time_and_steal_over_all_cpu_time(tmp_path: Any) -> None:
    # columns: user nice system idle iowait irq softirq steal
    _fake_proc(tmp_path, [100, 0, 50, 800, 0, 0, 0, 50], {7: (10, 10)})
    before = benchkit_machine.snapshot([7, 999], tmp_path)  # 999: gone, counts nothing
    _fake_proc(tmp_path, [200, 0, 100, 1600, 0, 0, 0, 100], {7: (60, 60)})
    after = benchkit_machine.snapshot([7, 999], tmp_path)
    # 1000 ticks passed: 150 busy, 100 of them ours, 50 stolen
    assert benchkit_machine.load_between(before, after) == {"other_pct": 5.0, "steal_pct": 5.0}


def test_a_short_real_run_reports_every_arm_its_pairs_and_the_method(capsys: pytest.CaptureFixture[str]) -> None:
    allowed = os.sched_getaffinity(0)
    args = argparse.Namespace(gib=2 / 1024, rounds=2, vm=False, in_guest=False)
    result = bench_tcp.run(args)
    assert {(r["size"], r["series"]) for r in result["rows"]} == {
        (size, v.name) for size in (64 << 10, 1 << 20) for v in bench_tcp.VARIANTS
    }
    assert all(r["gbps"] > 0 and r["cpu_s_per_gb"] >= 0 and r["receiver_busy"] > 0 for r in result["rows"])
    assert len(result["paired"]) == len(result["paired_cpu"]) == len(result["paired_both_cpu"]) == 8
    assert all(r["both_cpu_s_per_gb"] > r["cpu_s_per_gb"] for r in result["rows"])
    assert all(len(v) == 2 for v in result["paired"].values())
    assert len(result["aa"]) == 4 and len(result["targets"]) == 8
    assert {"other_pct", "steal_pct", "load_average_at_start"} <= set(result["machine"])
    out = capsys.readouterr().out
    assert "Paired ratio, per round" in out and "A/A" in out and "while measuring" in out
    assert "sender + receiver" in out
    assert f"aiozc core: {core.path_in_use()}" in out  # compiled or pure, and why
    assert os.sched_getaffinity(0) == allowed  # pinned while measuring, given back after


def _receiver_for(runs: int) -> tuple[Any, bench_tcp.Target]:
    import multiprocessing as mp
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    proc = mp.get_context("fork").Process(target=bench_tcp._receiver, args=(listener, runs), daemon=True)
    allowed = os.sched_getaffinity(0)
    proc.start()
    os.sched_setaffinity(0, allowed)
    target = bench_tcp.Target(listener.getsockname())
    listener.close()
    return proc, target


@pytest.mark.parametrize("name", ["asyncio stock", "uvloop stock", "aiozc write (asyncio)", "aiozc write_zc (uvloop)"])
def test_each_run_closes_its_connection_before_the_next_one_starts(name: str) -> None:
    # A stock transport's close() closes the socket one loop iteration later; the bench
    # closed the loop first, so the socket stayed open until garbage collection, and its
    # teardown could land in the next run's timed interval.
    proc, target = _receiver_for(1)
    fds = len(os.listdir("/proc/self/fd"))
    gc.disable()
    try:
        bench_tcp._run_variant(bench_tcp._BY_NAME[name], target, memoryview(bytes(1 << 20)), 64 << 10, 1 << 20)
        assert len(os.listdir("/proc/self/fd")) == fds
    finally:
        gc.enable()
        proc.join(timeout=10)


@pytest.mark.parametrize("kind", ["tcp-stock-write-paced", "tcp-aiozc-write-paced", "tcp-aiozc-write_zc-paced"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_paced_instruction_case_makes_the_sender_pause_on_a_full_socket(kind: str, loop: str) -> None:
    # What bench instructions' other TCP cases never reach under callgrind: queued writes and
    # the flush on EPOLLOUT. 16 MiB is more than both sockets' buffers hold.
    import multiprocessing as mp
    import socket

    from aiozc.tools import bench_instructions as bi
    from aiozc.tools.benchkit import run_on

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    allowed = os.sched_getaffinity(0)
    receiver = mp.get_context("fork").Process(target=bi._tcp_receiver, args=(listener,), daemon=True)
    receiver.start()
    os.sched_setaffinity(0, allowed)
    port = listener.getsockname()[1]
    listener.close()
    try:
        info = run_on(loop, bi._tcp_writes(port, kind, memoryview(bytes(64 << 20)), 256))
    finally:
        receiver.kill()
        receiver.join(timeout=10)
    assert info["pauses"] > 0
    case = next(c for c in bi.CASES if c.kind == kind and c.loop == loop)
    count = bi.Count(case.name, "tcp", kind, loop, per_call=0.0, once=0.0, calls=(256, 768))
    assert bi._pair(count) == ("tcp", loop, bi.TCP_PACED_SUFFIX)
