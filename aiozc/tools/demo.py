"""``python -m aiozc demo``: 1 GiB through write_zc on both loops, next to the stock transports.

Server and client run in one process on loopback. The server hashes what it receives straight
from its receive buffer (BufferedProtocol); the client hashes what it sends; the table shows
throughput, how many bytes the kernel sent zero-copy or copied, the transport's fallback state
and whether the two digests match.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiozc

from .benchkit import LOOPS, FlowControlledSender, run_on

_WRITE = 1 << 20


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


def run(args: argparse.Namespace) -> list[DemoResult]:
    total = int(args.gib * (1 << 30))
    chunks = _chunks(total, memoryview(os.urandom(64 << 20)))
    expected = _expected_digest(chunks)
    total = len(chunks) * _WRITE
    results = []
    for loop_name in LOOPS:
        for use_aiozc in (False, True):
            gbps, match, stats = run_on(loop_name, _transfer(use_aiozc, chunks, expected))
            results.append(
                DemoResult(
                    loop=loop_name,
                    transport="aiozc write_zc" if use_aiozc else "stock write",
                    gbps=gbps,
                    zc_bytes=stats.zc_write_bytes if stats else 0,
                    copied_bytes=total - (stats.zc_write_bytes if stats else 0),
                    state=stats.state if stats else "-",
                    match=match,
                )
            )
    _print(results, total, stats)
    return results


def _print(results: list[DemoResult], total: int, last_stats: Any) -> None:
    print(f"aiozc demo: {total / (1 << 30):.2f} GiB over loopback, {_WRITE >> 20} MiB writes, sha256 checked\n")
    print(f"{'loop':<8} {'transport':<15} {'GB/s':>6} {'zero-copy B':>12} {'copied B':>12}  {'state':<14} sha256")
    for r in results:
        print(
            f"{r.loop:<8} {r.transport:<15} {r.gbps:6.2f} {r.zc_bytes:>12,} {r.copied_bytes:>12,}  "
            f"{r.state:<14} {'match' if r.match else 'MISMATCH'}"
        )
    if last_stats is not None:
        print(f"\nfallback reason: {last_stats.reason}")
    print(
        "On one host the kernel copies every TCP zero-copy send (loopback, veth): aiozc notices "
        "and falls back to plain sends.\nTrue zero-copy shows with `python -m aiozc bench udp-sink`."
    )
    if not all(r.match for r in results):
        raise SystemExit("data mismatch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gib", type=float, default=1.0, help="GiB per transfer (default 1)")
