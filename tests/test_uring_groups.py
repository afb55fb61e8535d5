"""sendto_zc_many over io_uring: one LoopRing group per batch, which owns the batch's pins.

The sink tests run the sender in a fresh interpreter inside the ifb sink namespace (truly
zero-copy; module-level functions called through ``sink_ns.call``); the others use loopback,
where the kernel copies but data and accounting must still be exact. Every async test runs on
asyncio's loop and on uvloop (conftest).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket

import pytest

from aiozc.buffers import BufferPool
from aiozc.datagram import create_datagram_endpoint
from aiozc.engines.io_uring import LoopRing, uring_unavailable_reason
from aiozc.tools.benchkit import run_on
from aiozc.tools.netns import sink_rx_packets
from udp_helpers import ErrorRecorder, buffer_locked as _locked, closed_port

REASON = uring_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"io_uring unavailable: {REASON}")

LOOPS = ["asyncio", "uvloop"]
DATAGRAM = 64000
# Loopback copies: keep every datagram zero-copy-eligible so the batch takes the group path.
LOOPBACK_OPTS = {"engine": "io_uring", "zc_threshold": 1, "fallback_after": 1_000_000}


async def _wait_ring_idle(ring: LoopRing, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while ring.in_flight or ring.is_open:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


# --- on the ifb sink (runs inside the namespace) --------------------------------------------


async def _sink_batch(dst: str) -> dict:
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, engine="io_uring",
                                                  remote_addr=(dst, 9))
    ring = LoopRing.existing(asyncio.get_running_loop())
    assert ring is not None
    bufs = [bytearray(b"s" * DATAGRAM) for _ in range(8)]
    target = bufs[3]
    fut = transport.sendto_zc_many(bufs)
    before = {"queued": ring.queued, "in_flight": ring.in_flight, "locked": _locked(target)}
    completion = await asyncio.wait_for(fut, 10)
    after = {"in_flight": ring.in_flight, "locked": _locked(target)}
    stats = transport.stats
    out = {"before": before, "after": after, "nbytes": completion.nbytes,
           "zerocopy": completion.zerocopy, "zc_sends": stats.zc_sends,
           "pinned": stats.pinned_bytes}
    transport.close()
    out["idle"] = await _wait_ring_idle(ring)
    return out


def sink_batch(dst: str, loop_name: str) -> dict:
    return run_on(loop_name, _sink_batch(dst))


async def _sink_abort(dst: str) -> dict:
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, engine="io_uring",
                                                  remote_addr=(dst, 9))
    loop = asyncio.get_running_loop()
    ring = LoopRing.existing(loop)
    assert ring is not None
    bufs = [bytearray(b"a" * DATAGRAM) for _ in range(16)]
    target = bufs[5]
    fut = transport.sendto_zc_many(bufs)
    queued = ring.queued
    transport.abort()  # the loop has not run: nothing reaped, maybe not even submitted
    error = type(fut.exception()).__name__ if fut.done() else None
    at_abort = {"in_flight": ring.in_flight, "locked": _locked(target)}
    mismatches = []  # observations where "pinned" and "group still in flight" disagree
    deadline = loop.time() + 5
    while ring.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.001)
        if _locked(target) != bool(ring.in_flight):
            mismatches.append(ring.in_flight)
    idle = await _wait_ring_idle(ring)
    return {"queued": queued, "error": error, "at_abort": at_abort, "mismatches": mismatches,
            "locked_later": _locked(target), "in_flight_later": ring.in_flight, "idle": idle}


def sink_abort(dst: str, loop_name: str) -> dict:
    return run_on(loop_name, _sink_abort(dst))


@pytest.mark.parametrize("loop_name", LOOPS)
def test_batch_is_one_group_and_unpins_when_resolved(sink_ns, loop_name: str) -> None:  # type: ignore[no-untyped-def]
    """A batch is one in-flight group whose buffers stay pinned until it resolves, then none."""
    out = sink_ns.call(sink_batch, sink_ns.sink_addr, loop_name, timeout=60)
    assert out["before"] == {"queued": 8, "in_flight": 1, "locked": True}, out
    assert out["after"] == {"in_flight": 0, "locked": False}, out
    assert out["nbytes"] == 8 * DATAGRAM and out["zerocopy"] and out["zc_sends"] == 8, out
    assert out["pinned"] == 0 and out["idle"], out


@pytest.mark.parametrize("loop_name", LOOPS)
def test_abort_fails_batch_but_keeps_pins_until_notifications(sink_ns, loop_name: str) -> None:  # type: ignore[no-untyped-def]
    """abort() fails the batch's future at once; its pins last exactly as long as the group."""
    out = sink_ns.call(sink_abort, sink_ns.sink_addr, loop_name, timeout=60)
    assert out["queued"] == 16 and out["error"] == "ConnectionAbortedError", out
    assert out["at_abort"] == {"in_flight": 1, "locked": True}, out
    assert out["mismatches"] == [], out
    assert not out["locked_later"] and out["in_flight_later"] == 0 and out["idle"], out


# --- loopback ---------------------------------------------------------------------------------


@pytest.fixture
def handler_calls() -> list[dict]:
    """Contexts passed to the running loop's exception handler (installed by the test)."""
    return []


def _record_exceptions(calls: list[dict]) -> None:
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: calls.append(ctx))


def _receiver() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    return rx


async def _receive(rx: socket.socket, count: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    return [await asyncio.wait_for(loop.sock_recv(rx, 65536), 5) for _ in range(count)]


async def test_refused_datagrams_resolve_report_and_release_once(handler_calls) -> None:  # type: ignore[no-untyped-def]
    """ECONNREFUSED results in a group: futures resolve, errors reach error_received, each id
    is released once (voided ids are not), no handler call, nothing left pinned."""
    _record_exceptions(handler_calls)
    transport, proto = await create_datagram_endpoint(
        ErrorRecorder, remote_addr=closed_port(), **LOOPBACK_OPTS
    )
    errors = proto.errors
    ring = LoopRing.existing(asyncio.get_running_loop())
    assert ring is not None
    total = 0
    completions = []
    for _ in range(4):  # each batch sees the ICMP errors its predecessor drew
        bufs = [bytearray(random.randbytes(5000)) for _ in range(6)]
        completions.append(await asyncio.wait_for(transport.sendto_zc_many(bufs), 5))
        total += len(bufs)
        assert ring.in_flight == 0 and not any(_locked(b) for b in bufs)
        await asyncio.sleep(0.02)
    stats = transport.stats
    refused = total - stats.zc_sends  # a refused datagram's send is taken back from zc_sends
    assert refused > 0, "no send was refused: the test did not exercise voided ids"
    assert errors and all(isinstance(e, ConnectionRefusedError) for e in errors), errors
    assert len(errors) >= refused
    assert stats.ids_zerocopy + stats.ids_copied == stats.zc_sends, stats  # no double release
    assert sum(c.nbytes for c in completions) == total * 5000
    assert not any(c.zerocopy for c in completions)
    assert stats.pinned_bytes == 0 and transport.get_write_buffer_size() == 0
    assert handler_calls == []
    transport.close()
    assert await _wait_ring_idle(ring)
    assert handler_calls == []


async def test_mixed_sizes_arrive_intact_and_in_order(handler_calls) -> None:  # type: ignore[no-untyped-def]
    """A batch of differing sizes (no uniform-size shortcut) is sent whole, in order."""
    _record_exceptions(handler_calls)
    rx = _receiver()
    try:
        transport, _ = await create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=rx.getsockname(), **LOOPBACK_OPTS)
        ring = LoopRing.existing(asyncio.get_running_loop())
        assert ring is not None
        sizes = [1, 60000, 1000, 1000, 65000, 7, 33333, 1000, 2, 50000] * 3
        payloads = [bytearray(random.randbytes(n)) for n in sizes]
        submitted = ring.submitted
        completion = await asyncio.wait_for(transport.sendto_zc_many(payloads), 5)
        assert ring.submitted - submitted == len(sizes)  # all went through the ring's group
        got = await _receive(rx, len(sizes))
        assert got == [bytes(p) for p in payloads]
        assert completion.nbytes == sum(sizes)
        stats = transport.stats
        assert stats.zc_sends == len(sizes) and stats.ids_copied + stats.ids_zerocopy == len(sizes)
        assert ring.in_flight == 0 and not any(_locked(p) for p in payloads)
        assert stats.pinned_bytes == 0
        transport.close()
        assert await _wait_ring_idle(ring)
    finally:
        rx.close()
    assert handler_calls == []


@pytest.mark.parametrize("coalesce", [False, True])
async def test_batch_whose_tail_is_below_the_threshold_sends_the_tail_by_copy(
    handler_calls, coalesce: bool  # type: ignore[no-untyped-def]
) -> None:
    """The head goes as a ring group, the datagrams after it below zc_threshold by copy, all in
    order. The group's PinSet split used to shorten the batch's count, so the tail was never
    sent and the future never resolved (found when engine="auto" began to pick io_uring for
    coalesce_zc)."""
    _record_exceptions(handler_calls)
    rx = _receiver()
    try:
        transport, _ = await create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=rx.getsockname(), engine="io_uring",
            coalesce_zc=coalesce, fallback_after=1_000_000)
        threshold = transport._options.zc_threshold
        sizes = [threshold + 1000, threshold, threshold // 2, 100, 7]
        payloads = [bytearray(random.randbytes(n)) for n in sizes]
        if coalesce:
            done = await asyncio.wait_for(asyncio.gather(*map(transport.sendto_zc, payloads)), 5)
            assert [c.nbytes for c in done] == sizes
        else:
            completion = await asyncio.wait_for(transport.sendto_zc_many(payloads), 5)
            assert completion.nbytes == sum(sizes)
        assert await _receive(rx, len(sizes)) == [bytes(p) for p in payloads]
        stats = transport.stats
        assert stats.zc_sends == 2 and stats.copy_sends == 3, stats
        assert stats.pinned_bytes == 0 and transport.get_write_buffer_size() == 0
        transport.close()
    finally:
        rx.close()
    assert handler_calls == []


async def test_second_pool_slices_are_fixed_sends(handler_calls) -> None:  # type: ignore[no-untyped-def]
    """With two pools registered, slices of the second one go as fixed-buffer sends, intact."""
    _record_exceptions(handler_calls)
    rx = _receiver()
    first = BufferPool(DATAGRAM, 4)
    second = BufferPool(20000, 8)
    try:
        transport, _ = await create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=rx.getsockname(), **LOOPBACK_OPTS)
        ring = LoopRing.existing(asyncio.get_running_loop())
        assert ring is not None and len(ring._fixed_ranges) == 2
        bufs = list(second)
        for b in bufs:
            b[:] = random.randbytes(len(b))
        plain = bytearray(random.randbytes(3000))  # not fixed: must not be counted
        fixed0 = ring.fixed_sends
        completion = await asyncio.wait_for(transport.sendto_zc_many(bufs + [plain]), 5)
        assert ring.fixed_sends - fixed0 == len(bufs)
        got = await _receive(rx, len(bufs) + 1)
        assert got == [bytes(b) for b in bufs] + [bytes(plain)]
        assert completion.nbytes == 20000 * len(bufs) + 3000
        assert ring.in_flight == 0 and transport.stats.pinned_bytes == 0
        for b in bufs:
            second.release(b)  # BufferError if a pin on the slice were still alive
        transport.close()
        assert await _wait_ring_idle(ring)
    finally:
        rx.close()
        first.close()
        second.close()
    assert handler_calls == []


async def _send_batches_into_full_socket(dst: str, engine: str, batches: int, batch: int,
                                         coalesce: bool) -> dict[str, object]:
    """Inside the sink namespace, whose ifb0 is rate-limited: a small send buffer fills and
    sends fail with EAGAIN. Returns what the caller would see and the sink's packet count."""
    import socket as socket_mod

    before = sink_rx_packets()
    transport, proto = await create_datagram_endpoint(
        ErrorRecorder, remote_addr=(dst, 9), engine=engine, coalesce_zc=coalesce
    )
    transport.get_extra_info("socket").setsockopt(
        socket_mod.SOL_SOCKET, socket_mod.SO_SNDBUF, 256 << 10
    )
    bufs = [bytearray(random.randbytes(DATAGRAM)) for _ in range(batch)]
    completions = []
    for _ in range(batches):
        if coalesce:
            futures = [transport.sendto_zc(b) for b in bufs]
            completions += await asyncio.wait_for(asyncio.gather(*futures), 30)
        else:
            completions.append(await asyncio.wait_for(transport.sendto_zc_many(bufs), 30))
    extra = dict(transport.stats.extra)
    transport.close()
    deadline = asyncio.get_running_loop().time() + 10
    while sink_rx_packets() - before < batches * batch and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return {
        "rx": sink_rx_packets() - before,
        "errors": [repr(e) for e in proto.errors],
        "nbytes": sum(c.nbytes for c in completions),
        "extra": extra,
    }


@pytest.mark.skipif(shutil.which("tc") is None, reason="needs tc (iproute2) for a tbf qdisc")
@pytest.mark.parametrize("coalesce", [False, True], ids=["many", "coalesced"])
@pytest.mark.parametrize("engine", ["msg_zerocopy", "io_uring"])
def test_full_socket_loses_no_batched_datagram(sink_ns, engine: str, coalesce: bool) -> None:  # type: ignore[no-untyped-def]
    """A rate-limited device behind a small send buffer: batched datagrams the kernel refuses
    with EAGAIN wait for room and are sent, on both engines; none is lost or reported."""
    sink_ns.run(["tc", "qdisc", "replace", "dev", "ifb0", "root", "tbf", "rate", "2gbit",
                 "burst", "256kb", "limit", "64mb"], check=True)
    try:
        res = sink_ns.call(_send_batches_into_full_socket, sink_ns.sink_addr, engine, 8, 64,
                           coalesce, timeout=120)
    finally:
        sink_ns.run(["tc", "qdisc", "del", "dev", "ifb0", "root"])
    # The socket did fill: io_uring saw EAGAIN results, sendmmsg stopped short.
    full = "zc_send_eagain" if engine == "io_uring" else "sendmmsg_partial"
    assert res["extra"].get(full, 0) > 0, res
    assert res["errors"] == [], res
    assert res["nbytes"] == 8 * 64 * DATAGRAM, res
    assert res["rx"] == 8 * 64, res
