"""The benchmark tooling: C reference senders, callgrind instruction counts, wrk cases.

They run for real where the machine allows (root, a compiler, valgrind, wrk) and skip with the
reason elsewhere. No timings are asserted: only what the tools count.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from aiozc.tools import bench_instructions, cref, udp_cases, web_wrk
from aiozc.tools.netns import SinkNamespace


def _cref_or_skip() -> cref.CRef:
    built, reason = cref.load()
    if built is None:
        pytest.skip(reason)
    return built


def test_without_a_compiler_the_c_module_is_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIOZC_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "/nonexistent/aiozc-cc")
    monkeypatch.setattr(cref, "_loaded", None)
    built, reason = cref.load()
    assert built is None
    assert reason is not None and "no C compiler" in reason and "aiozc-cc" in reason
    monkeypatch.setattr(cref, "_loaded", None)  # the next load() builds for real


@pytest.mark.parametrize("kind", sorted(udp_cases.C_KINDS))
def test_c_reference_sender_delivers_every_datagram(sink_ns: SinkNamespace, kind: str) -> None:
    _cref_or_skip()
    sink_ns.set_sysctl("net.ipv6.conf.ifb0.disable_ipv6", 1)
    count = 2000
    info = sink_ns.call(udp_cases.measure_case, sink_ns.sink_addr, kind, None, 64000, count, 256)
    assert info["sink_rx"] == count
    assert info["sent"] == count
    if kind == "c-send":
        assert info["completions"] == 0
    else:
        # Every accepted send was notified, and the ifb sink never copies.
        assert info["completions"] == count
        assert info["copied"] == 0
    if kind in ("c-mmsg", "c-uring", "c-uring-fixed"):
        assert info["syscalls"] < count // 8  # batched: ~32 datagrams per system call


def test_callgrind_dumps_are_parsed_by_their_trigger(tmp_path: Path) -> None:
    for part, (label, total) in enumerate((("small", 1500), ("large", 4500)), 1):
        (tmp_path / f"cg.out.{part}").write_text(
            f"version: 1\ncreator: callgrind-3.19.0\npid: 1\ncmd: python\npart: {part}\n\n"
            f"desc: I1 cache: \ndesc: Timerange: Basic block 0 - 10\n"
            f"desc: Trigger: Client Request: {label}\n\npositions: line\nevents: Ir\n"
            f"summary: {total}\n\n\nfl=(1) x.c\nfn=(1) f\n0 {total}\n\ntotals: {total}\n"
        )
    (tmp_path / "cg.out").write_text("desc: Trigger: Program termination\nsummary: 99\n")
    counts = bench_instructions.parse_dumps(sorted(tmp_path.glob("cg.out*")))
    assert counts == {"small": 1500, "large": 4500}
    per_call, once = bench_instructions.per_call(counts, 100)
    assert per_call == 15.0  # (4500 - 1500) / (300 - 100)
    assert once == 0.0


def test_measured_runs_start_from_a_frozen_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full collection of the start-up heap must not land in one measured run only: the
    small and the large run see it frozen (bench_instructions._settle_heap)."""
    import gc
    import types

    calls = []
    lib = types.SimpleNamespace(cref_cg_start=lambda: None, cref_cg_zero=lambda: None,
                                cref_cg_dump=lambda label: None)
    monkeypatch.setattr(cref, "callgrind_markers", lambda: (types.SimpleNamespace(lib=lib), None))
    monkeypatch.setattr(bench_instructions, "_run_once",
                        lambda spec, count, pool: calls.append((count, gc.get_freeze_count())) or {})
    try:
        bench_instructions.child_main({"family": "udp", "loop": "asyncio", "warmup": 1, "calls": 2})
    finally:
        gc.unfreeze()
    assert [count for count, _ in calls] == [1, 2, 6]
    assert all(frozen > 0 for _, frozen in calls[1:]), calls


def _valgrind_or_skip() -> None:
    reason = bench_instructions.valgrind_missing()
    if reason is not None:
        pytest.skip(reason)


def test_instruction_counts_of_the_c_sender_and_sendto_zc(sink_ns: SinkNamespace) -> None:
    """The differential count isolates per-call work: a C MSG_ZEROCOPY loop costs a few dozen
    user instructions per datagram, the Python transport far more."""
    _valgrind_or_skip()
    sink_ns.set_sysctl("net.ipv6.conf.ifb0.disable_ipv6", 1)
    cases = {c.kind: c for c in bench_instructions.CASES if c.loop in (None, "asyncio")}
    counts = bench_instructions.measure_udp([cases["c-zc"], cases["stock"]], sink_ns, calls=256)
    c_zc, stock = counts
    assert c_zc.info["completions"] == 3 * 256  # the last, larger run
    assert 10 < c_zc.per_call < 500
    assert stock.per_call > 5 * c_zc.per_call


WRK_SAMPLE = """Running 2s test @ http://127.0.0.1:41000/file/file-64MiB
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.21s   210.40ms   1.50s    66.67%
    Req/Sec     2.00      1.00     3.00    100.00%
  3 requests in 2.00s, 330.25MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:      1.50
Transfer/sec:    165.12MB
"""


def test_wrk_report_is_parsed_with_its_errors() -> None:
    requests, seconds, nbytes, errors = web_wrk.parse_wrk(WRK_SAMPLE)
    assert (requests, seconds, errors) == (3, 2.0, 7)
    assert nbytes == pytest.approx(330.25 * (1 << 20))
    with pytest.raises(ValueError):
        web_wrk.parse_wrk("wrk: connection refused")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_wrk_case_serves_both_sites(loop: str, tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip(web_wrk.wrk_missing())
    pytest.importorskip("aiohttp")
    opts = argparse.Namespace(
        loops=[loop], wrk_cases=["body-100kB"], wrk_duration=1, wrk_rounds=1, connections=4,
        transport_options={},
    )
    result = web_wrk.run(opts, tmp_path)
    cases = {c["server"]: c for c in result["cases"]}
    assert set(cases) == {"stock", "aiozc"}
    for case in cases.values():
        assert case["rps"] > 0 and case["errors"] == 0
        assert case["gbps"] > 0
    assert set(result["ratios"]) == {f"wrk body-100kB/{loop}"}
