"""``python -m aiozc demo``: 1 GiB through write_zc on both loops, next to the stock transports,
then UDP into an ifb sink, where the kernel really sends from the caller's pages.

TCP part: server and client run in one process on loopback. The server hashes what it receives
straight from its receive buffer (BufferedProtocol); the client hashes what it sends; the table
shows throughput, how many bytes the kernel sent zero-copy or copied, the transport's fallback
state and whether the two digests match. The kernel copies TCP sent to a local receiver, so these
rows measure the fallback.

UDP part (root, iproute2): the cases of ``bench udp-sink`` (stock ``sendto``, ``sendto_zc`` with
``coalesce_zc=True``, ``sendto_zc_many``), one short run each in a fresh interpreter inside a
private namespace whose ifb0 drops what it is handed: completions come back ee_code 0, and the
sink's rx_packets counter checks every datagram left. Where the rig cannot run, one line says why.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import os
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiozc

from .benchkit import LOOPS, FlowControlledSender, run_on, udp_sink

_WRITE = 1 << 20
UDP_SIZE = 64000
UDP_COUNT = 50_000
# (label, bench_udp case kind): the per-datagram API coalesced, the batch API, the stock transport.
UDP_CASES = (
    ("stock sendto", "stock"),
    ("aiozc sendto_zc coalesce_zc", "aiozc-coalesce"),
    ("aiozc sendto_zc_many", "aiozc-many"),
)


class _HashingReceiver(asyncio.BufferedProtocol):
    def __init__(self, done: asyncio.Future[tuple[int, str]]) -> None:
        self._buf = bytearray(1 << 20)
        self._view = memoryview(self._buf)
        self._hash = hashlib.sha256()
        self._total = 0
        self._done = done

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._hash.update(self._view[:nbytes])
        self._total += nbytes

    def eof_received(self) -> bool:
        if not self._done.done():
            self._done.set_result((self._total, self._hash.hexdigest()))
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionError("closed before EOF"))


@dataclass
class DemoResult:
    loop: str
    transport: str
    gbps: float
    zc_bytes: int
    copied_bytes: int
    state: str
    match: bool


def _chunks(total: int, pool: memoryview) -> list[memoryview]:
    """The 1 MiB slices sent, in order: the pool again and again, as a stream of fresh data."""
    per_pool = len(pool) // _WRITE
    return [pool[(i % per_pool) * _WRITE : (i % per_pool + 1) * _WRITE] for i in range(total // _WRITE)]


def _expected_digest(chunks: list[memoryview]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


async def _transfer(use_aiozc: bool, chunks: list[memoryview], expected: str) -> tuple[float, bool, Any]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, str]] = loop.create_future()
    factory: Callable[[], asyncio.BaseProtocol] = lambda: _HashingReceiver(done)
    transport: Any
    write: Callable[[memoryview], object]
    if use_aiozc:
        server: Any = await aiozc.create_server(factory, "127.0.0.1", 0)
        transport, proto = await aiozc.create_connection(FlowControlledSender, *server.sockets[0].getsockname())
        write = transport.write_zc
    else:
        server = await loop.create_server(factory, "127.0.0.1", 0)
        transport, proto = await loop.create_connection(FlowControlledSender, *server.sockets[0].getsockname())
        write = transport.write
    transport.set_write_buffer_limits(high=4 * _WRITE)
    total = len(chunks) * _WRITE
    start = time.perf_counter()
    for chunk in chunks:
        write(chunk)
        if not proto.can_write.is_set():
            await proto.can_write.wait()
    transport.write_eof()
    received, digest = await done
    elapsed = time.perf_counter() - start
    stats = getattr(transport, "stats", None)
    transport.close()
    server.close()
    await server.wait_closed()
    return total / elapsed / 1e9, received == total and digest == expected, stats


@dataclass
class UdpResult:
    loop: str
    api: str
    gbps: float
    datagrams: int
    zerocopy: int | None  # completions the kernel reported zero-copy (ee_code 0); None: stock API
    state: str
    sink_rx: int  # datagrams ifb0 counted

    @property
    def all_zerocopy(self) -> bool:
        return self.zerocopy == self.datagrams


def run(args: argparse.Namespace) -> list[DemoResult]:
    if getattr(args, "vm", False):
        _run_in_vm(args)
        return []
    results, last_stats = run_tcp(args.gib)
    _print_tcp(results, last_stats)
    from .netns import netns_available

    reason = netns_available()
    udp: list[UdpResult] = []
    if reason is None:
        udp = run_udp(args.udp_count)
        print_udp(udp)
    else:
        print(
            f"\nUDP zero-copy section skipped: {reason}. Run the demo as root with iproute2 "
            "installed (sudo .venv/bin/python -m aiozc demo) to see real zero-copy sends."
        )
    print("\n" + textwrap.fill(_verdict(udp), width=100))
    if not all(r.match for r in results):
        raise SystemExit("data mismatch")
    if any(r.sink_rx != r.datagrams for r in udp):
        raise SystemExit("datagrams missing at the sink")
    return results


def run_tcp(gib: float) -> tuple[list[DemoResult], Any]:
    """The loopback table's rows, and the last aiozc transport's stats (for its fallback reason)."""
    chunks = _chunks(int(gib * (1 << 30)), memoryview(os.urandom(64 << 20)))
    expected = _expected_digest(chunks)
    total = len(chunks) * _WRITE
    results = []
    last_stats = None
    for loop_name in LOOPS:
        for use_aiozc in (False, True):
            gbps, match, stats = run_on(loop_name, _transfer(use_aiozc, chunks, expected))
            zc_bytes = stats.zc_write_bytes if stats else 0
            last_stats = stats or last_stats
            results.append(
                DemoResult(
                    loop=loop_name,
                    transport="aiozc write_zc" if use_aiozc else "stock write",
                    gbps=gbps,
                    zc_bytes=zc_bytes,
                    copied_bytes=total - zc_bytes,
                    state=stats.state if stats else "-",
                    match=match,
                )
            )
    return results, last_stats


def run_udp(count: int = UDP_COUNT) -> list[UdpResult]:
    """Each UDP case once per loop, ``count`` datagrams of UDP_SIZE bytes, into a fresh sink."""
    from .bench_udp import DEFAULT_BATCH, DEFAULT_WINDOW, measure_case

    rows = []
    with udp_sink() as ns:
        for loop_name in LOOPS:
            for api, kind in UDP_CASES:
                info = ns.call(
                    measure_case, ns.sink_addr, kind, loop_name, UDP_SIZE, count, DEFAULT_WINDOW,
                    batch=DEFAULT_BATCH, timeout=120,
                )
                rows.append(
                    UdpResult(
                        loop=loop_name,
                        api=api,
                        gbps=UDP_SIZE * count / info["seconds"] / 1e9,
                        datagrams=count,
                        zerocopy=info.get("zerocopy_writes"),
                        state=info.get("state", "-"),
                        sink_rx=info["sink_rx"],
                    )
                )
    return rows


def _print_tcp(results: list[DemoResult], last_stats: Any) -> None:
    total = results[0].zc_bytes + results[0].copied_bytes
    print(f"aiozc demo: {total / (1 << 30):.2f} GiB over loopback, {_WRITE >> 20} MiB writes, sha256 checked\n")
    print(f"{'loop':<8} {'transport':<15} {'GB/s':>6} {'zero-copy B':>12} {'copied B':>12}  {'state':<14} sha256")
    for r in results:
        print(
            f"{r.loop:<8} {r.transport:<15} {r.gbps:6.2f} {r.zc_bytes:>12,} {r.copied_bytes:>12,}  "
            f"{r.state:<14} {'match' if r.match else 'MISMATCH'}"
        )
    if last_stats is not None:
        print(f"\nfallback reason: {last_stats.reason}")


def print_udp(rows: list[UdpResult]) -> None:
    count = rows[0].datagrams
    print(
        f"\nUDP into an ifb sink in a private network namespace: {count:,} datagrams of "
        f"{UDP_SIZE} B per row, counted by the sink\n"
    )
    print(f"{'loop':<8} {'API':<27} {'GB/s':>6} {'zero-copy completions':>22}  {'state':<14} {'at the sink':>15}")
    for r in rows:
        zc = "-" if r.zerocopy is None else f"{r.zerocopy:,}/{r.datagrams:,}"
        print(
            f"{r.loop:<8} {r.api:<27} {r.gbps:6.2f} {zc:>22}  {r.state:<14} "
            f"{f'{r.sink_rx:,}/{r.datagrams:,}':>15}"
        )


def _verdict(udp: list[UdpResult]) -> str:
    """The one sentence that says which rows are real zero-copy and which measure the fallback."""
    tcp = "The TCP rows measure the copy fallback (the kernel copies TCP sent to a local receiver)"
    if not udp:
        return tcp + "; no row here is real zero-copy."
    zc_apis = sorted({r.api for r in udp if r.all_zerocopy})
    partial = sorted({r.api for r in udp if r.zerocopy is not None and not r.all_zerocopy})
    real = " and ".join(zc_apis) if zc_apis else "none"
    tail = f"; {' and '.join(partial)} had copied completions" if partial else ""
    return (
        f"Real zero-copy (every completion ee_code 0): the UDP rows of {real}{tail}. "
        f"{tcp}, and stock sendto always copies."
    )


def _run_in_vm(args: argparse.Namespace) -> None:
    """``demo --vm``: the TCP part inside the guest VM, where write_zc really is zero-copy.

    The guest rig provides ``aiozc.tools.vm.run_demo(args)``; until it exists, say so.
    """
    try:
        vm = importlib.import_module("aiozc.tools.vm")
    except ModuleNotFoundError as exc:
        if exc.name not in ("aiozc.tools.vm", None):
            raise
        raise SystemExit("demo --vm: not available yet (the guest VM rig, aiozc.tools.vm, is not here)") from None
    run_demo = getattr(vm, "run_demo", None)
    if run_demo is None:
        raise SystemExit("demo --vm: not available yet (aiozc.tools.vm has no run_demo(args))")
    run_demo(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gib", type=float, default=1.0, help="GiB per TCP transfer (default 1)")
    parser.add_argument(
        "--udp-count", type=int, default=UDP_COUNT,
        help=f"datagrams per UDP row (default {UDP_COUNT:,}; needs root and iproute2)",
    )
    parser.add_argument(
        "--vm", action="store_true",
        help="run the TCP part inside the guest VM, where TCP zero-copy is real (a minute or more)",
    )
