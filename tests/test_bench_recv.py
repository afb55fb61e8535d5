"""``python -m aiozc bench recv`` (issue #14 point 3): every row runs and reports what it measured."""

from __future__ import annotations

import argparse

import pytest

from aiozc.__main__ import BENCHES, _parser
from aiozc.tools import bench_recv
from rig import require_netns


def test_registered_in_the_bench_cli() -> None:
    assert BENCHES["recv"] == "aiozc.tools.bench_recv"
    args = _parser().parse_args(["bench", "recv", "--gib", "0.01", "--rounds", "1"])
    assert args.module is bench_recv and args.gib == 0.01


def test_every_row_runs_and_only_zerocopy_receive_maps() -> None:
    # Counts, not timings: each (sender, receiver) row received the stream, and pages map only
    # for zero-copy receive from a MSG_ZEROCOPY sender (lo MTU 61492 in the netns: ~100%).
    require_netns()
    args = argparse.Namespace(gib=1 / 64, warmup_mib=4, rounds=1, chunk=256 * 1024, senders=None, receivers=None)
    try:
        result = bench_recv.run(args)
    finally:
        bench_recv.WARMUP = 64 << 20
    rows = {(r["sender"], r["receiver"]): r for r in result["rows"]}
    assert set(rows) == {(s, r) for s in bench_recv.SENDERS for r in bench_recv.RECEIVERS}
    assert result["options"]["network"].startswith("netns lo")
    for (sender, receiver), row in rows.items():
        assert row["cpu_ms_per_gb"] > 0 and row["gbps"] > 0, row
        # Every read counted: a read returns at most a chunk (a zero-copy receive step maps
        # several regions) and, on this stream, more than a small segment.
        fewest = 1 if receiver == "zero-copy receive" else 0.99 * 1e9 / (256 * 1024)  # every read full: equal
        assert fewest <= row["reads_per_gb"] < 1e9 / 1500, row
        assert row["tx_ms_per_gb"] > 0 and row["pair_ms_per_gb"] > row["cpu_ms_per_gb"], row
        reused_buffer = receiver.startswith("recv_into") and not receiver.endswith("bytes()")
        assert (row["page_offset"] >= 0) == reused_buffer, row
        if receiver == "recv_into page + 16":
            assert row["page_offset"] == 16
        if receiver == "zero-copy receive" and sender == "MSG_ZEROCOPY":
            assert row["mapped_pct"] >= 90, row
        else:
            assert row["mapped_pct"] <= 1, row
    assert len(result["load_average"]["after"]) == 3
    # One paired ratio per (sender, loop) and metric, each from this run's own two rows.
    paired = {(p["sender"], p["loop"], p["metric"]): p for p in result["paired"]}
    assert set(paired) == {(s, lp, m) for s in bench_recv.SENDERS for lp in ("asyncio", "uvloop")
                           for m in ("receiver", "pair")}
    for (sender, loop, metric), p in paired.items():
        if metric == "receiver":
            stock = rows[sender, f"Protocol, stock transport ({loop})"]["cpu_ms_per_gb"]
            ours = rows[sender, f"Protocol, aiozc transport ({loop})"]["cpu_ms_per_gb"]
            assert p["ratios"] == [round(ours / stock, 3)], p
    assert result["target"]["receiver"].startswith("target: aiozc/stock <= 1.0x CPU per GB on both loops, both senders")


def test_the_paired_rows_run_their_own_rounds() -> None:
    # --pair-rounds: the compared Protocol rows run more rounds than the others, and each
    # round gives the paired median one more ratio.
    require_netns()
    stock, ours = "Protocol, stock transport (asyncio)", "Protocol, aiozc transport (asyncio)"
    args = argparse.Namespace(gib=1 / 64, warmup_mib=4, rounds=1, pair_rounds=3, chunk=256 * 1024,
                              senders=["plain"], receivers=["recv_into aligned", stock, ours])
    try:
        result = bench_recv.run(args)
    finally:
        bench_recv.WARMUP = 64 << 20
    runs = {r["receiver"]: len(r["runs_cpu_ms_per_gb"]) for r in result["rows"]}
    assert runs == {"recv_into aligned": 1, stock: 3, ours: 3}
    assert result["options"]["pair_rounds"] == 3
    (receiver,) = [p for p in result["paired"] if p["metric"] == "receiver"]
    assert len(receiver["ratios"]) == 3 and receiver["ci_low"] <= receiver["median"] <= receiver["ci_high"]


def test_a_stream_shorter_than_the_warmup_is_an_error() -> None:
    require_netns()
    with bench_recv._network() as (new_socket, _):
        with pytest.raises(RuntimeError, match="shorter than the warm-up"):
            bench_recv.run_once(new_socket, "plain", "recv_into aligned", 65536, -(bench_recv.WARMUP - 1024))


def test_bench_tensors_reports_receiver_cpu_for_the_aligned_variants() -> None:
    from aiozc.tools import bench_tensors

    peers = ["aiozc", "aiozc-aligned", "aiozc-fresh", "aiozc-fresh-np", "mp"]
    args = argparse.Namespace(sizes_mib=[1], total_mib=2, min_frames=2, repeat=1, peers=peers)
    result = bench_tensors.run(args)
    rows = {row["series"]: row for row in result["rows"]}
    assert set(rows) == {bench_tensors.PEERS[p] for p in peers}
    for row in rows.values():
        assert row["gbps"] > 0 and row["receiver_cpu_ms_per_gb"] > 0, row
    # The variants are aiozc's own receive side: ratios still compare aiozc with other peers.
    assert result["ratios"]["1 MiB"]["best_peer"] == "multiprocessing.connection"


def test_a_killed_runs_namespace_is_reaped() -> None:
    require_netns()
    from aiozc.tools.netns import _ip, list_namespaces, reap_stale_namespaces

    stale = bench_recv.namespace_name(4194304)  # above pid_max's hard limit: never a live pid
    _ip("netns", "add", stale)
    try:
        reap_stale_namespaces()
        assert stale not in list_namespaces()
    finally:
        _ip("netns", "del", stale, check=False)
