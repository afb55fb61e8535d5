"""engine='io_uring': the same transports, tracker, policy and stats over IORING_OP_SEND_ZC.

Every async test runs on asyncio's loop and on uvloop (conftest). Each test ends by checking
that the loop's ring closed once its last transport was gone (no fd leaks across test loops).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import struct
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

import aiozc
from aiozc.buffers import BufferPool
from aiozc.engines import EngineUnavailable, get_engine
from aiozc.engines.io_uring import IoUringEngine, LoopRing, uring_unavailable_reason
from aiozc.engines.msg_zerocopy import MsgZeroCopyEngine
from aiozc.tools.benchkit import run_on
from aiozc.tools.netns import sink_rx_packets
from tcp_helpers import Pair, RecordingProtocol, connect_pair, open_fd_count, sha
from udp_helpers import ErrorRecorder, buffer_locked as locked, closed_port
from rig import NOBODY, require_nobody_can_run

REASON = uring_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"io_uring unavailable: {REASON}")

MiB = 1 << 20
# Receive buffer for a stalled peer: far below what we send, >= the loopback MSS (see
# tests/test_uring.py STALL_RCVBUF for why not smaller).
STALL_RCVBUF = 128 * 1024


async def uring_pair(**options: object) -> Pair:
    pair = await connect_pair(engine="io_uring", **options)
    assert pair.transport.stats.engine == "io_uring"
    return pair


async def stalled_pair(**options: Any) -> Pair:
    """A pair whose peer reads nothing until told: sends sit in our socket's write queue."""
    return await connect_pair(peer_rcvbuf=STALL_RCVBUF, engine="io_uring", **options)


async def ring_closed(timeout: float = 5.0) -> bool:
    """Wait until this loop's ring (if any) has closed: every notification was reaped."""
    ring = LoopRing.existing(asyncio.get_running_loop())
    deadline = asyncio.get_running_loop().time() + timeout
    while ring is not None and ring.is_open:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def buffer_locked(buf: bytearray) -> bool:
    """True while something holds an export of ``buf`` (it cannot be resized)."""
    return locked(buf)


async def until(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# --- engine selection ---------------------------------------------------------------------


async def test_auto_picks_io_uring_for_udp_with_or_without_a_pool() -> None:
    # measured: coalesced batches from ordinary buffers beat MSG_ZEROCOPY on io_uring too
    # (aiozc/engines/__init__.py); TCP stays on MSG_ZEROCOPY
    from aiozc._sys import core as _core

    loop = asyncio.get_running_loop()
    without_pool = IoUringEngine if _core.compiled else MsgZeroCopyEngine  # (pure path: see below)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert isinstance(get_engine("auto", sock=udp, loop=loop, async_capable=True), without_pool)
        assert isinstance(get_engine("auto", sock=tcp, loop=loop, async_capable=True), MsgZeroCopyEngine)
        with BufferPool(4096, 4) as pool:
            assert pool.register(loop)
            assert isinstance(get_engine("auto", sock=udp, loop=loop, async_capable=True),
                              IoUringEngine)
            assert isinstance(get_engine("auto", sock=tcp, loop=loop, async_capable=True),
                              MsgZeroCopyEngine)
            # a transport that cannot drive async sends never gets io_uring
            assert isinstance(get_engine("auto", sock=udp, loop=loop), MsgZeroCopyEngine)
        with pytest.raises(EngineUnavailable, match="not supported by this transport"):
            get_engine("io_uring", sock=udp, loop=loop)
    with pytest.raises(ValueError, match="io_uring"):
        get_engine("nope")


async def test_auto_on_the_pure_path_picks_io_uring_only_with_a_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python SQE fill and CQE reap cost about what io_uring saves from ordinary buffers
    # (aiozc/engines/__init__.py): without the compiled core, auto waits for a registered pool.
    from aiozc._sys import core as _core

    monkeypatch.setattr(_core, "compiled", False)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with BufferPool(4096, 4, register=False):
            assert isinstance(get_engine("auto", sock=udp, loop=loop, async_capable=True), MsgZeroCopyEngine)
        with BufferPool(4096, 4) as pool:
            assert pool.register(loop)
            assert isinstance(get_engine("auto", sock=udp, loop=loop, async_capable=True), IoUringEngine)


async def test_auto_picks_io_uring_where_the_compiled_per_call_path_sends() -> None:
    # Per-call sendto_zc on io_uring ran 1.17-1.43x of MSG_ZEROCOPY through the compiled path
    # (_core_udpring.c), 0.39-0.62x of stock through the general Python path
    # (engines/__init__.py): auto picks it without coalesce_zc only for a connected UDP socket
    # with the compiled core.
    from aiozc._sys import core as _core
    from aiozc.datagram import create_datagram_endpoint

    loop = asyncio.get_running_loop()
    engines = {}
    for pooled in (False, True):
        # (a BufferPool made inside a running loop registers itself with the loop's ring)
        with BufferPool(4096, 4, register=pooled) as pool:
            assert LoopRing.existing(loop) is None or LoopRing.existing(loop).has_pools is pooled
            for coalesce in (False, True):
                for connected in (False, True):
                    where = {"remote_addr": ("127.0.0.1", 9)} if connected else {"local_addr": ("127.0.0.1", 0)}
                    transport, _ = await create_datagram_endpoint(
                        asyncio.DatagramProtocol, coalesce_zc=coalesce, **where)
                    engines[pooled, coalesce, connected] = transport.stats.engine
                    if connected and not coalesce:
                        # the compiled per-call path took the ring (or, pure, no path at all)
                        assert (transport._hot_d is not None) is _core.compiled
                    transport.close()
            await asyncio.sleep(0)
    compiled = "io_uring" if _core.compiled else "msg_zerocopy"  # (pure path: a pool is needed)
    assert engines == {
        (False, False, False): "msg_zerocopy", (False, False, True): compiled,
        (False, True, False): compiled, (False, True, True): compiled,
        (True, False, False): "msg_zerocopy", (True, False, True): compiled,
        (True, True, False): "io_uring", (True, True, True): "io_uring",
    }
    assert isinstance(get_engine("auto", sock=None, loop=loop, async_capable=True,
                                 batches_sends=False), MsgZeroCopyEngine)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:  # no compiled path there
        assert isinstance(get_engine("auto", sock=unix, loop=loop, async_capable=True,
                                     batches_sends=False), MsgZeroCopyEngine)


async def test_auto_per_call_on_the_pure_path_stays_on_msg_zerocopy(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiozc._sys import core as _core

    monkeypatch.setattr(_core, "compiled", False)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, BufferPool(4096, 4) as pool:
        udp.connect(("127.0.0.1", 9))
        assert pool.register(loop)
        assert isinstance(get_engine("auto", sock=udp, loop=loop, async_capable=True,
                                     batches_sends=False), MsgZeroCopyEngine)
        assert isinstance(get_engine("auto", sock=udp, loop=loop, async_capable=True), IoUringEngine)


async def test_unavailable_io_uring_raises_at_creation_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiozc.engines import io_uring as engine_mod

    reason = "io_uring is disabled (/proc/sys/kernel/io_uring_disabled = 2)"
    monkeypatch.setattr(engine_mod, "uring_unavailable_reason", lambda: reason)
    listener = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    try:
        with pytest.raises(EngineUnavailable, match="io_uring_disabled"):
            await aiozc.create_connection(RecordingProtocol, sock=sock, engine="io_uring")
        assert sock.fileno() == -1  # create_connection closed it
    finally:
        peer.close()
        listener.close()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        # BufferPool.register() is refused without io_uring, so no pool can make auto pick it
        with BufferPool(4096, 4) as pool:
            assert not pool.register(loop)
            assert isinstance(get_engine("auto", sock=udp, loop=loop, async_capable=True),
                              MsgZeroCopyEngine)
        udp.connect(("127.0.0.1", 9))  # nor the compiled per-call path
        assert isinstance(get_engine("auto", sock=udp, loop=loop, async_capable=True,
                                     batches_sends=False), MsgZeroCopyEngine)
    from aiozc.datagram import create_datagram_endpoint

    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", 9))
    assert transport.stats.engine == "msg_zerocopy"
    transport.close()
    assert await ring_closed()


# --- TCP over loopback --------------------------------------------------------------------


async def test_large_random_writes_intact_then_copy_fallback() -> None:
    pair = await uring_pair(fallback_after=4)
    try:
        rng = random.Random(7)
        pool = rng.randbytes(8 * MiB)
        expected = bytearray()
        futures = []
        for _ in range(48):
            size = rng.choice([1, 1000, 20_000, 64 << 10, 300_000, MiB, 3 * MiB])
            start = rng.randrange(0, len(pool) - size)
            piece = memoryview(pool)[start : start + size]
            if rng.random() < 0.2:
                pair.transport.write(bytes(piece))  # exact bytes: may go zero-copy too
            else:
                futures.append(pair.transport.write_zc(piece))
            expected += piece
        data = await pair.read_all(len(expected))
        completions = await asyncio.wait_for(asyncio.gather(*futures), 10)
        assert sha(data) == sha(expected)
        assert all(not c.zerocopy for c in completions)  # loopback always copies
        stats = pair.transport.stats
        assert stats.engine == "io_uring"
        assert stats.state == "copy-fallback" and "copied" in stats.reason
        assert stats.ids_copied >= 4 and stats.ids_zerocopy == 0
        assert stats.zc_sends >= 4 and stats.copy_bytes > 0
        assert stats.pinned_bytes == 0
    finally:
        pair.close()
    assert await ring_closed()


async def test_submissions_are_batched_per_loop_iteration() -> None:
    pairs = [await uring_pair() for _ in range(4)]
    try:
        ring = LoopRing.existing(asyncio.get_running_loop())
        assert ring is not None
        submits, submitted = ring.submits, ring.submitted
        futures = [p.transport.write_zc(random.randbytes(64 << 10)) for p in pairs]
        assert ring.submitted == submitted  # queued, not yet entered
        await asyncio.sleep(0)
        assert ring.submits == submits + 1 and ring.submitted == submitted + 4
        for p in pairs:
            await p.read_all(64 << 10)
        await asyncio.wait_for(asyncio.gather(*futures), 10)
    finally:
        for p in pairs:
            p.close()
    assert await ring_closed()


async def test_stalled_peer_future_waits_for_notification() -> None:
    pair = await stalled_pair()
    try:
        buf = random.randbytes(MiB)
        fut = pair.transport.write_zc(buf)
        await asyncio.sleep(0.3)
        assert not fut.done(), "resolved while the peer still held back the data"
        assert pair.transport.stats.zc_sends >= 1
        data = await pair.read_all(len(buf))
        completion = await asyncio.wait_for(fut, 10)
        assert data == buf and completion.nbytes == len(buf)
    finally:
        pair.close()
    assert await ring_closed()


async def test_full_socket_eagain_waits_for_epollout_and_resends() -> None:
    """A small send buffer and a slow reader: SEND_ZC results of -EAGAIN (MSG_DONTWAIT) wait
    for EPOLLOUT and resend the rest of the head segment; partial results advance it."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    sock.setblocking(False)
    try:
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(sock, listener.getsockname())
        peer, _ = await accept
    finally:
        listener.close()
    peer.setblocking(False)
    transport, protocol = await aiozc.create_connection(
        RecordingProtocol, sock=sock, engine="io_uring", fallback_after=1 << 30, probe_first=False
    )
    pair = Pair(transport, protocol, peer)  # type: ignore[arg-type]
    try:
        payload = random.randbytes(8 * MiB)
        futs = [transport.write_zc(memoryview(payload)[i : i + MiB]) for i in range(0, 8 * MiB, MiB)]
        received = bytearray()
        while len(received) < len(payload):
            await asyncio.sleep(0.002)  # a slow reader keeps the socket full
            received += await loop.sock_recv(peer, 256 << 10)
        completions = await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert received == payload
        assert [c.nbytes for c in completions] == [MiB] * 8
        stats = transport.stats
        assert stats.extra.get("zc_send_eagain", 0) >= 1, stats
        assert stats.zc_sends > 8  # partial sends: several SEND_ZCs per 1 MiB write
    finally:
        pair.close()
    assert await ring_closed()


async def test_peer_reset_resolves_every_future_with_an_error() -> None:
    pair = await uring_pair()
    try:
        buf = random.randbytes(MiB)
        futs = [pair.transport.write_zc(buf) for _ in range(32)]
        await pair.read_all(3 * MiB)
        pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        pair.peer.close()
        results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed and all(isinstance(r, (ConnectionResetError, BrokenPipeError)) for r in failed)
        lost = await asyncio.wait_for(pair.protocol.lost, 5)
        assert isinstance(lost, (ConnectionResetError, BrokenPipeError))
    finally:
        pair.transport.abort()
    assert await ring_closed()


async def test_cancelled_waiter_keeps_buffer_until_notification() -> None:
    pair = await stalled_pair()
    try:
        buf = bytearray(random.randbytes(MiB))
        task = asyncio.ensure_future(pair.transport.write_zc(buf))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.sleep(0.1)
        assert task.cancelled()
        assert await buffer_locked(buf), "buffer released while the kernel still holds it"
        assert await pair.read_all(len(buf)) == buf
        assert await until(lambda: _not(buffer_locked(buf))), "never released"
    finally:
        pair.close()
    assert await ring_closed()


async def test_abort_keeps_buffer_referenced_until_notification() -> None:
    pair = await stalled_pair()
    ring = LoopRing.existing(asyncio.get_running_loop())
    assert ring is not None
    target = _Weakrefable(random.randbytes(MiB))  # weak-referenceable: we can see collection
    target_ref = weakref.ref(target)
    fut = pair.transport.write_zc(target)
    await asyncio.sleep(0.1)  # the result is back, the notification owed (peer reads nothing)
    assert not fut.done() and ring.in_flight >= 1
    pair.transport.abort()
    assert fut.done() and isinstance(fut.exception(), ConnectionAbortedError)
    del fut, target
    gc.collect()
    # Reaping needs a loop iteration: the kernel may still hold the pages, so must we.
    assert target_ref() is not None, "buffer dropped before its notification"
    with pytest.raises(BufferError):
        target_ref().append(0)  # type: ignore[union-attr]
    # The RST from abort frees the queued skbs: every notification arrives, buffers go.
    assert await ring_closed()
    gc.collect()
    assert target_ref() is None
    pair.peer.close()


async def test_close_waits_for_outstanding_notifications() -> None:
    pair = await stalled_pair()
    try:
        buf = random.randbytes(MiB)
        fut = pair.transport.write_zc(buf)
        pair.transport.close()
        await asyncio.sleep(0.2)
        assert not fut.done()  # connection_lost may come first (all is in the kernel)
        assert pair.transport.get_extra_info("socket").fileno() != -1
        assert await pair.read_until_eof() == buf
        assert (await asyncio.wait_for(fut, 10)).nbytes == len(buf)
        assert await asyncio.wait_for(pair.protocol.lost, 10) is None
    finally:
        pair.peer.close()
    assert await ring_closed()


async def test_ring_closes_with_last_transport_no_fd_leak() -> None:
    before = open_fd_count()
    pairs = [await uring_pair() for _ in range(3)]
    ring = LoopRing.existing(asyncio.get_running_loop())
    assert ring is not None and ring.is_open
    for p in pairs:
        fut = p.transport.write_zc(random.randbytes(256 << 10))
        await p.read_all(256 << 10)
        await asyncio.wait_for(fut, 5)
    pairs[0].close()
    assert ring.is_open  # two transports still use it
    for p in pairs[1:]:
        p.close()
    assert await ring_closed()
    await asyncio.sleep(0)
    assert open_fd_count() == before


async def test_buffer_pool_fixed_buffer_sends_intact() -> None:
    loop = asyncio.get_running_loop()
    pool = BufferPool(100_000, 16)
    pair = await uring_pair(fallback_after=1000, probe_first=False)  # zero-copy on every send
    try:
        ring = LoopRing.existing(loop)
        assert ring is not None
        fixed_before = ring.fixed_sends
        bufs, expected = [], bytearray()
        for _ in range(16):
            b = pool.acquire()
            payload = random.randbytes(len(b))
            b[:] = payload
            expected += payload
            bufs.append(b)
        futs = [pair.transport.write_zc(b) for b in bufs]
        futs.append(pair.transport.write_zc(random.randbytes(50_000)))  # plain buffer too
        data = await pair.read_all(len(expected) + 50_000)
        await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert sha(data[: len(expected)]) == sha(expected)
        assert ring.fixed_sends - fixed_before >= 16
        for b in bufs:
            pool.release(b)
        assert pool.free == 16
    finally:
        pair.close()
        await ring_closed()
        pool.close()
    assert LoopRing.existing(loop) is None or not LoopRing.existing(loop).is_open


async def test_buffer_pool_slices_are_plain_buffers_with_other_engines() -> None:
    pool = BufferPool(70_000, 2)
    pair = await connect_pair(engine="msg_zerocopy")
    try:
        b = pool.acquire()
        b[:] = random.randbytes(len(b))
        fut = pair.transport.write_zc(b)
        assert await pair.read_all(len(b)) == bytes(b)
        await asyncio.wait_for(fut, 5)
        with pytest.raises(BufferError, match="still acquired"):
            pool.close()
        pool.release(b)
        with pytest.raises(ValueError):
            pool.release(memoryview(bytearray(10)))
    finally:
        pair.close()
        pool.close()


# --- RLIMIT_MEMLOCK: -ENOMEM results fall back to copy ----------------------------------

_MEMLOCK_CLIENT = r"""
import asyncio, json, resource, socket, sys
resource.setrlimit(resource.RLIMIT_MEMLOCK, (256 * 1024, 256 * 1024))
import aiozc

async def main():
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    accept = asyncio.ensure_future(loop.sock_accept(listener))
    transport, _ = await aiozc.create_connection(asyncio.Protocol, *listener.getsockname(),
                                                 engine="io_uring")
    peer, _ = await accept
    peer.setblocking(False)
    payload = bytes(range(256)) * 4096  # 1 MiB: over the 256 KiB limit
    fut = transport.write_zc(payload)
    got = bytearray()
    while len(got) < len(payload):
        got += await loop.sock_recv(peer, 1 << 20)
    completion = await asyncio.wait_for(fut, 10)
    stats = transport.stats.as_dict()
    transport.close()
    await asyncio.sleep(0.1)
    return {"intact": bytes(got) == payload, "zerocopy": completion.zerocopy, "stats": stats}

if sys.argv[1] == "uvloop":
    import uvloop
    print(json.dumps(uvloop.run(main())))
else:
    print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_memlock_enomem_resends_by_copy_then_disables(loop_name: str) -> None:
    import json
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv(1) missing")
    repo = Path(__file__).resolve().parent.parent
    require_nobody_can_run(repo)
    proc = subprocess.run(
        [*NOBODY, sys.executable, "-c", _MEMLOCK_CLIENT, loop_name],
        cwd=repo, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["intact"] and out["zerocopy"] is False
    stats = out["stats"]
    assert stats["enobufs"] >= 1 and stats["copy_bytes"] >= 1
    assert stats["state"] == "disabled" and "RLIMIT_MEMLOCK" in stats["reason"]


# --- helpers ------------------------------------------------------------------------------


class _Weakrefable(bytearray):
    """A bytearray subclass: weak-referenceable, so a test can see when it is collected."""


async def _not(coro) -> bool:  # type: ignore[no-untyped-def]
    return not await coro


# --- UDP (datagram transport) ---------------------------------------------------------------
#
# Sender code runs in a fresh interpreter inside the sink namespace (ns.call imports these
# module-level functions by reference), on asyncio's loop or uvloop, and returns JSON. The
# sink tests skip (fixture) where the netns rig cannot run.

LOOPS = ["asyncio", "uvloop"]
DATAGRAM = 64000


async def _sink_sends(dst: str, count: int, fixed: bool, many: bool, connected: bool) -> dict:
    from aiozc.datagram import create_datagram_endpoint

    loop = asyncio.get_running_loop()
    pool = BufferPool(DATAGRAM, 32) if fixed else None
    rx0 = sink_rx_packets()
    kwargs = {"remote_addr": (dst, 9)} if connected else {"local_addr": ("0.0.0.0", 0)}
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, engine="io_uring",
                                                  **kwargs)
    ring = LoopRing.existing(loop)
    assert ring is not None
    fixed0 = ring.fixed_sends
    bufs = list(pool) if pool is not None else [bytearray(b"z" * DATAGRAM) for _ in range(32)]
    completions = []
    addr = None if connected else (dst, 9)
    for _ in range(count // 32):
        if many:
            completions.append(await asyncio.wait_for(transport.sendto_zc_many(bufs, addr), 10))
        else:
            futs = [transport.sendto_zc(b, addr) for b in bufs]
            completions += await asyncio.wait_for(asyncio.gather(*futs), 10)
    stats = transport.stats.as_dict()
    fixed_sends = ring.fixed_sends - fixed0
    transport.close()
    for _ in range(200):
        if not ring.is_open:
            break
        await asyncio.sleep(0.01)
    if pool is not None:
        for b in bufs:
            pool.release(b)
        pool.close()
    return {
        "zerocopy": [c.zerocopy for c in completions],
        "zc_sends": stats["zc_sends"],
        "engine": stats["engine"],
        "rx": sink_rx_packets() - rx0,
        "fixed_sends": fixed_sends,
        "ring_open": ring.is_open,
    }


def sink_sends(dst: str, loop_name: str, count: int, fixed: bool = False, many: bool = False,
               connected: bool = True) -> dict:
    return run_on(loop_name, _sink_sends(dst, count, fixed, many, connected))


async def _sink_abort(dst: str) -> dict:
    from aiozc.datagram import create_datagram_endpoint

    # errqueue_drain_every: no submit-and-reap during the burst, so all are still queued
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, engine="io_uring",
                                                  remote_addr=(dst, 9), errqueue_drain_every=1000)
    ring = LoopRing.existing(asyncio.get_running_loop())
    target = _Weakrefable(b"z" * DATAGRAM)
    target_ref = weakref.ref(target)
    futs = [transport.sendto_zc(target) for _ in range(64)]  # queued SQEs, not yet submitted
    transport.abort()
    results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
    del target
    gc.collect()
    for _ in range(200):
        if not ring.is_open:
            break
        await asyncio.sleep(0.01)
    gc.collect()
    return {
        "errors": sorted({type(r).__name__ for r in results if isinstance(r, BaseException)}),
        "ok": sum(1 for r in results if not isinstance(r, BaseException)),
        "ring_open": ring.is_open,
        "collected": target_ref() is None,
    }


def sink_abort(dst: str, loop_name: str) -> dict:
    return run_on(loop_name, _sink_abort(dst))


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("mode", ["sendto_zc", "sendto_zc_many", "fixed", "unconnected"])
def test_udp_sink_is_zero_copy(sink_ns, loop_name: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    out = sink_ns.call(sink_sends, sink_ns.sink_addr, loop_name, 256, fixed=mode == "fixed",
                       many=mode == "sendto_zc_many", connected=mode != "unconnected",
                       timeout=120)
    assert out["engine"] == "io_uring"
    assert out["zerocopy"] and all(out["zerocopy"]), out
    assert out["zc_sends"] == 256 and out["rx"] == 256
    assert out["fixed_sends"] == (256 if mode == "fixed" else 0)
    assert not out["ring_open"]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_udp_abort_fails_futures_and_keeps_buffers_until_released(sink_ns, loop_name: str) -> None:  # type: ignore[no-untyped-def]
    out = sink_ns.call(sink_abort, sink_ns.sink_addr, loop_name, timeout=60)
    assert out["errors"] == ["ConnectionAbortedError"] and out["ok"] == 0
    assert not out["ring_open"] and out["collected"]


async def test_udp_loopback_intact() -> None:
    """Loopback copies (Completion.zerocopy False) but every datagram arrives intact."""
    from aiozc.datagram import create_datagram_endpoint

    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    try:
        transport, _ = await create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=rx.getsockname(), engine="io_uring",
            zc_threshold=1, fallback_after=1000,
        )
        payloads = [random.randbytes(random.randrange(1, 60_000)) for _ in range(64)]
        futs = [transport.sendto_zc(p) for p in payloads]
        done = await asyncio.wait_for(asyncio.gather(*futs), 10)
        got = [await asyncio.wait_for(loop.sock_recv(rx, 65536), 5) for _ in payloads]
        assert sorted(got) == sorted(payloads)
        assert all(not c.zerocopy for c in done)
        assert transport.stats.engine == "io_uring" and transport.stats.zc_sends == 64
        transport.close()
    finally:
        rx.close()
    assert await ring_closed()


async def _sink_eagain(dst: str, count: int) -> dict:
    """A tiny send buffer and a rate-limited qdisc (the skbs stay charged to the socket until
    tbf lets them go): most SEND_ZCs of a burst complete with -EAGAIN and are requeued."""
    import subprocess

    from aiozc.datagram import create_datagram_endpoint

    subprocess.run("tc qdisc replace dev ifb0 root tbf rate 400mbit burst 128kb latency 5s".split(),
                   check=True)
    rx0 = sink_rx_packets()
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, engine="io_uring",
                                                  remote_addr=(dst, 9))
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    buf = bytearray(b"q" * DATAGRAM)
    futs = [transport.sendto_zc(buf) for _ in range(count)]
    done = await asyncio.wait_for(asyncio.gather(*futs), 20)
    stats = transport.stats.as_dict()
    transport.close()
    await asyncio.sleep(0.05)
    return {"zerocopy": sum(c.zerocopy for c in done), "rx": sink_rx_packets() - rx0,
            "zc_sends": stats["zc_sends"], "ids": stats["ids_zerocopy"] + stats["ids_copied"],
            "eagain": stats["extra"].get("zc_send_eagain", 0), "state": stats["state"]}


def sink_eagain(dst: str, loop_name: str, count: int) -> dict:
    return run_on(loop_name, _sink_eagain(dst, count))


@pytest.mark.parametrize("loop_name", LOOPS)
def test_udp_eagain_results_are_requeued(sink_ns, loop_name: str) -> None:  # type: ignore[no-untyped-def]
    out = sink_ns.call(sink_eagain, sink_ns.sink_addr, loop_name, 128, timeout=60)
    assert out["eagain"] > 0, "no -EAGAIN result: the test did not exercise the retry"
    # Every datagram left once, zero-copy; failed attempts count neither as sends nor as
    # copied notifications (they must not push the policy into copy-fallback).
    assert out["rx"] == 128 and out["zerocopy"] == 128, out
    assert out["zc_sends"] == 128 and out["ids"] == 128 and out["state"] == "zerocopy"


async def test_udp_icmp_error_reported_and_every_future_resolves() -> None:
    """A connected UDP socket to a closed loopback port: the ICMP error comes back as the
    next SEND_ZC's result (-ECONNREFUSED); it is reported once through error_received and
    the datagram is resent, exactly as with send(2)."""
    from aiozc.datagram import create_datagram_endpoint

    transport, proto = await create_datagram_endpoint(
        ErrorRecorder, remote_addr=closed_port(), engine="io_uring", zc_threshold=1,
        fallback_after=1000,
    )
    errors = proto.errors
    try:
        results = []
        for _ in range(8):  # one at a time: each send sees the previous datagram's ICMP error
            fut = transport.sendto_zc(random.randbytes(20_000))
            results.append(await asyncio.wait_for(asyncio.gather(fut, return_exceptions=True), 5))
            await asyncio.sleep(0.01)
        assert all(len(r) == 1 for r in results)
        assert errors and all(isinstance(e, ConnectionRefusedError) for e in errors)
    finally:
        transport.close()
    assert await ring_closed()


async def test_second_pool_reregisters_while_fixed_sends_are_in_flight() -> None:
    """IORING_REGISTER_BUFFERS takes the whole table: a second pool re-registers both while a
    send from the first is still owed its notification (the kernel keeps the old table's
    pages for it). Data from both pools arrives intact."""
    loop = asyncio.get_running_loop()
    pair = await stalled_pair(fallback_after=1000, probe_first=False)
    first = BufferPool(1 << 20, 2)
    second = None
    try:
        ring = LoopRing.existing(loop)
        assert ring is not None
        a = first.acquire()
        a[:] = random.randbytes(len(a))
        fut_a = pair.transport.write_zc(a)
        await asyncio.sleep(0.1)
        assert not fut_a.done() and ring.in_flight >= 1  # notification owed: peer reads nothing
        second = BufferPool(200_000, 2)  # re-registers [first, second] now
        b = second.acquire()
        b[:] = random.randbytes(len(b))
        fut_b = pair.transport.write_zc(b)
        data = await pair.read_all(len(a) + len(b))
        await asyncio.wait_for(asyncio.gather(fut_a, fut_b), 10)
        assert data == bytes(a) + bytes(b)
        assert ring.fixed_sends >= 2
        first.release(a)
        second.release(b)
    finally:
        pair.close()
        await ring_closed()
        first.close()
        if second is not None:
            second.close()
