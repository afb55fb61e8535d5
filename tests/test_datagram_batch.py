"""sendto_zc_many(): many datagrams, one future, sendmmsg underneath (loopback; both loops).

Loopback copies zero-copy sends (the transport soon drops to copy-fallback); true zero-copy and
the id-per-datagram behaviour of sendmmsg are tested on the sink rig (tests/test_udp_sink.py).
Partial sendmmsg results and errors are driven by wrapping the transport's sendmmsg sender.
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiozc._sys import core as _core, mmsg as _mmsg
from aiozc.base import TransportClosedError
from aiozc.completions import Completion
from aiozc.datagram import MAX_UDP4_PAYLOAD, ZeroCopyDatagramTransport, create_datagram_endpoint
from aiozc.engines.io_uring import uring_unavailable_reason
from test_datagram import BIG, Recorder, payload, receiver, sender
from udp_helpers import closed_port


class ScriptedSender:
    """Wraps a real MmsgSender. Each call pops the next step of ``script``: an int k > 0 sends
    at most k datagrams (a partial result), a negative int returns that -errno without sending;
    once the script is empty every call is passed through."""

    def __init__(self, script: list[int]) -> None:
        self.inner = _mmsg.MmsgSender()
        self.capacity = self.inner.capacity
        self.script = list(script)
        self.calls: list[tuple[int, int]] = []  # (datagrams asked, result)

    def send(self, fd: int, pins: Any, sizes: Any, start: int, stop: int, flags: int) -> int:
        step = self.script.pop(0) if self.script else None
        if step is not None and step < 0:
            result = step
        else:
            if step is not None:
                stop = min(stop, start + step)
            result = self.inner.send(fd, pins, sizes, start, stop, flags)
        self.calls.append((stop - start, result))
        return result


def scripted(t: ZeroCopyDatagramTransport, script: list[int]) -> ScriptedSender:
    fake = ScriptedSender(script)
    t._mmsg = fake  # type: ignore[assignment]
    return fake


async def pair(**options: Any) -> tuple[Any, Recorder, ZeroCopyDatagramTransport, Recorder]:
    """A receiver and a connected sender, on MSG_ZEROCOPY unless ``engine`` is given: these
    tests drive its sendmmsg (engine="auto" picks io_uring for a connected socket)."""
    options.setdefault("engine", "msg_zerocopy")
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"), **options)
    return rt, rp, t, p


async def finish(rt: Any, t: ZeroCopyDatagramTransport, p: Recorder) -> None:
    t.close()
    rt.close()
    await asyncio.wait_for(p.lost, 5)


# ------------------------------------------------------------------------------------------


async def test_sendmmsg_binding_is_usable() -> None:
    assert _mmsg.available() is None
    with pytest.raises(ValueError):
        _mmsg.MmsgSender(0)
    with pytest.raises(ValueError):
        _mmsg.MmsgSender(_mmsg.MAX_BATCH + 1)


async def test_batch_keeps_call_order_with_sendto_and_sendto_zc() -> None:
    rt, rp, t, p = await pair()
    sizes = [BIG, 100, 0, BIG, BIG, 3000, MAX_UDP4_PAYLOAD, 1]
    batch = [bytearray(payload(i, n)) for i, n in enumerate(sizes)]
    t.sendto(b"first")
    one = t.sendto_zc(bytearray(payload(99, BIG)))
    many = t.sendto_zc_many(batch)
    t.sendto(b"last")
    completion = await asyncio.wait_for(many, 5)
    await asyncio.wait_for(one, 5)
    assert isinstance(completion, Completion)
    assert completion.nbytes == sum(map(len, batch))
    expected = [b"first", payload(99, BIG)] + [bytes(b) for b in batch] + [b"last"]
    assert await rp.wait_for(len(expected)) == expected
    assert t._mmsg is not None  # it went through sendmmsg
    assert t.stats.zc_sends + t.stats.copy_sends == len(expected)
    assert t._tracker.pending_writes == 0 and t._tracker.unexpected_ids == 0
    await finish(rt, t, p)


async def test_empty_batch_resolves_at_once() -> None:
    rt, rp, t, p = await pair()
    future = t.sendto_zc_many([])
    assert future.done() and future.result() == Completion(0, False)
    await finish(rt, t, p)


async def test_bad_batches_send_nothing() -> None:
    rt, rp, t, p = await pair()
    keep = bytearray(BIG)
    with pytest.raises(ValueError):
        t.sendto_zc_many([keep, bytes(MAX_UDP4_PAYLOAD + 1)])
    with pytest.raises(TypeError):
        t.sendto_zc_many([keep, "text"])
    keep.append(1)  # no view of it is left behind
    with pytest.raises(ValueError):
        t.sendto_zc_many([b"x"], addr=("127.0.0.1", 1))  # not the connected address
    assert t.stats.zc_sends == t.stats.copy_sends == 0
    t.close()
    with pytest.raises(TransportClosedError):
        t.sendto_zc_many([b"x"])
    rt.close()
    await p.lost


async def test_one_buffer_instead_of_an_iterable_is_named() -> None:
    # Iterating b"abc" gives ints: the error used to say "got int" (issue #12, point 6).
    import numpy as np

    rt, rp, t, p = await pair()
    for one in (b"abc", bytearray(b"abc"), memoryview(b"abc"), np.zeros(3, np.uint8)):
        with pytest.raises(TypeError, match=r"iterable of buffers, got one buffer \(\w+\)"):
            t.sendto_zc_many(one)
    assert t.stats.zc_sends == t.stats.copy_sends == 0
    await finish(rt, t, p)


async def test_buffers_are_held_until_the_batch_resolves() -> None:
    rt, rp, t, p = await pair()
    bufs = [bytearray(payload(i, BIG)) for i in range(4)]
    future = t.sendto_zc_many(bufs)
    assert not future.done()  # zero-copy ids are outstanding
    with pytest.raises(BufferError):
        bufs[0].append(0)
    assert t.get_write_buffer_size() == 4 * BIG
    completion = await asyncio.wait_for(future, 5)
    assert completion.zc_sends == 4
    for buf in bufs:
        buf.append(0)  # released
    assert t.get_write_buffer_size() == 0
    await rp.wait_for(4)
    await finish(rt, t, p)


@pytest.mark.parametrize("script", [[3, 1, 2], [5], [1] * 20])
async def test_partial_sendmmsg_sends_the_rest(script: list[int]) -> None:
    rt, rp, t, p = await pair(errqueue_drain_every=4)
    fake = scripted(t, script)
    bufs = [payload(i, BIG if i % 2 else 500) for i in range(30)]
    completion = await asyncio.wait_for(t.sendto_zc_many(bufs), 5)
    assert completion.nbytes == sum(map(len, bufs))
    assert await rp.wait_for(30) == bufs
    assert sum(max(r, 0) for _, r in fake.calls) == 30  # each datagram sent exactly once
    assert t._tracker.unexpected_ids == 0 and t._tracker.pending_writes == 0
    await finish(rt, t, p)


async def test_eagain_queues_the_rest_in_call_order() -> None:
    rt, rp, t, p = await pair()
    scripted(t, [4, -errno.EAGAIN])
    bufs = [payload(i, BIG) for i in range(10)]
    future = t.sendto_zc_many(bufs)
    t.sendto(b"after")
    second = t.sendto_zc_many([b"second batch", payload(77, BIG)])
    assert len(t._queue) == 6 + 1 + 2  # the socket was "full": queued, flushed on EPOLLOUT
    await asyncio.wait_for(asyncio.gather(future, second), 5)
    assert await rp.wait_for(13) == bufs + [b"after", b"second batch", payload(77, BIG)]
    assert t._tracker.unexpected_ids == 0
    await finish(rt, t, p)


async def test_refused_datagram_goes_to_error_received_and_the_batch_resolves() -> None:
    rt, rp, t, p = await pair()
    scripted(t, [2, -errno.ENETUNREACH])

    def error_received(exc: OSError) -> None:
        p.errors.append(exc)
        t.sendto(b"from the callback")  # must not land inside the batch's id run

    p.error_received = error_received  # type: ignore[method-assign]
    bufs = [payload(i, BIG) for i in range(6)]
    completion = await asyncio.wait_for(t.sendto_zc_many(bufs), 5)
    assert completion.nbytes == 6 * BIG
    assert not completion.zerocopy  # one datagram never left
    assert [e.errno for e in p.errors] == [errno.ENETUNREACH]
    assert await rp.wait_for(6) == bufs[:2] + bufs[3:] + [b"from the callback"]
    assert t._tracker.unexpected_ids == 0 and t._tracker.pending_writes == 0
    await finish(rt, t, p)


async def test_copy_engine_batches_without_zerocopy() -> None:
    rt, rp, t, p = await pair(engine="copy")
    bufs = [payload(i, BIG) for i in range(20)]
    completion = await asyncio.wait_for(t.sendto_zc_many(bufs), 5)
    assert completion == Completion(20 * BIG, False)
    assert t.stats.zc_sends == 0 and t.stats.copy_sends == 20
    assert await rp.wait_for(20) == bufs
    await finish(rt, t, p)


async def test_unconnected_endpoint_sends_a_batch_to_an_address() -> None:
    rt, rp = await receiver()
    t, p = await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    bufs = [payload(i, BIG if i % 2 else 64) for i in range(8)]
    completion = await asyncio.wait_for(t.sendto_zc_many(bufs, rt.get_extra_info("sockname")), 5)
    assert completion.nbytes == sum(map(len, bufs))
    assert await rp.wait_for(8) == bufs
    with pytest.raises(ValueError):
        t.sendto_zc_many([b"x"])  # no address, not connected
    await finish(rt, t, p)  # type: ignore[arg-type]


async def test_more_than_one_sendmmsg_call() -> None:
    rt, rp, t, p = await pair(zc_threshold=1)
    n = _mmsg.MAX_BATCH + 300
    bufs = [i.to_bytes(4, "big") * 16 for i in range(n)]
    completion = await asyncio.wait_for(t.sendto_zc_many(bufs), 10)
    assert completion.nbytes == 64 * n
    assert await rp.wait_for(n, timeout=10) == bufs
    await finish(rt, t, p)


async def test_abort_fails_a_pending_batch() -> None:
    rt, rp, t, p = await pair()
    scripted(t, [1, -errno.EAGAIN])
    future = t.sendto_zc_many([payload(i, BIG) for i in range(5)])
    t.abort()
    with pytest.raises(ConnectionAbortedError):
        await asyncio.wait_for(future, 5)
    await asyncio.wait_for(p.lost, 5)
    rt.close()


async def test_icmp_errors_during_a_batch() -> None:
    t, p = await sender(closed_port())
    futures = [t.sendto_zc_many([bytes(BIG), bytes(100)]) for _ in range(5)]
    for future in futures:
        assert (await asyncio.wait_for(future, 5)).nbytes == BIG + 100
    for _ in range(50):
        if len(p.errors) >= 10:
            break
        await asyncio.sleep(0.01)
    assert p.errors and all(isinstance(e, ConnectionRefusedError) for e in p.errors)
    assert not t.is_closing()
    t.close()
    await p.lost


# ------------------------------------------------------------------------------------------
# coalesce_zc=True: sendto_zc() datagrams leave in one sendmmsg per loop iteration.


# engine="auto" picks io_uring for coalesce_zc where it works: both engines are covered.
COALESCE_ENGINES = ["msg_zerocopy"] + (["io_uring"] if uring_unavailable_reason() is None else [])
# The engines whose coalesce_zc goes through a Coalescer: on io_uring with the compiled core
# the per-call ring path sends instead (coalescing._co_setup; test below).
COALESCER_ENGINES = ["msg_zerocopy"] + (
    ["io_uring"] if uring_unavailable_reason() is None and not _core.compiled else [])


async def coalescing_pair(**options: Any) -> tuple[Any, Recorder, ZeroCopyDatagramTransport, Recorder]:
    rt, rp = await receiver()
    t, p = await create_datagram_endpoint(
        Recorder, remote_addr=rt.get_extra_info("sockname"), coalesce_zc=True, **options
    )
    return rt, rp, t, p  # type: ignore[return-value]


@pytest.mark.parametrize("engine", COALESCER_ENGINES)
async def test_coalesced_sendto_zc_is_sent_at_the_end_of_the_iteration_in_call_order(engine: str) -> None:
    rt, rp, t, p = await coalescing_pair(engine=engine)
    futures = []
    expected = []
    for i in range(30):
        data = payload(i, BIG if i % 3 else 100)
        expected.append(data)
        if i % 5 == 4:
            t.sendto(data)  # flushes the sendto_zc() datagrams before it
        else:
            futures.append(t.sendto_zc(bytearray(data)))
    futures.append(t.sendto_zc(b"x" * 10))
    expected.append(b"x" * 10)
    futures.append(t.sendto_zc_many([b"many"]))
    expected.append(b"many")
    assert len(t._co) == 0  # sendto_zc_many flushed too
    t.sendto_zc(b"tail")
    expected.append(b"tail")
    assert len(t._co) == 1 and t.get_write_buffer_size() >= 4
    done = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert [c.nbytes for c in done[:-1]] == [len(e) for i, e in enumerate(expected[:-3]) if i % 5 != 4] + [10]
    assert await rp.wait_for(len(expected)) == expected
    assert t._tracker.unexpected_ids == 0 and t._tracker.pending_writes == 0
    await finish(rt, t, p)


@pytest.mark.parametrize("engine", COALESCER_ENGINES)
async def test_coalesced_datagrams_wait_for_the_loop(engine: str) -> None:
    rt, rp, t, p = await coalescing_pair(engine=engine)
    futures = [t.sendto_zc(payload(i, BIG)) for i in range(3)]
    assert t.stats.zc_sends + t.stats.copy_sends == 0  # nothing sent during the calls
    assert t.get_write_buffer_size() == 3 * BIG
    await asyncio.sleep(0)
    assert t.stats.zc_sends + t.stats.copy_sends == 3  # one flush
    completions = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert [c.nbytes for c in completions] == [BIG] * 3
    assert await rp.wait_for(3) == [payload(i, BIG) for i in range(3)]
    await finish(rt, t, p)


@pytest.mark.parametrize("engine", COALESCER_ENGINES)
async def test_coalesced_flush_at_1024_datagrams(engine: str) -> None:
    rt, rp, t, p = await coalescing_pair(engine=engine)
    n = _mmsg.MAX_BATCH + 10
    futures = [t.sendto_zc(i.to_bytes(4, "big")) for i in range(n)]
    assert len(t._co) == 10  # the first 1024 went in one call
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert await rp.wait_for(n) == [i.to_bytes(4, "big") for i in range(n)]
    await finish(rt, t, p)


@pytest.mark.skipif(uring_unavailable_reason() is not None or not _core.compiled,
                    reason="io_uring unavailable or the compiled core not in use")
async def test_coalesced_on_io_uring_is_the_per_call_ring_path() -> None:
    from aiozc.engines.io_uring import LoopRing

    rt, rp, t, p = await coalescing_pair(engine="io_uring")
    assert t._co is None and t._hot_zc is not None and t._engine.hot_bound
    ring = LoopRing.existing(asyncio.get_running_loop())
    assert ring is not None
    submits = ring.submits
    expected = [payload(i, BIG) for i in range(200)]
    futures = []
    for i, data in enumerate(expected):
        if i % 50 == 49:
            t.sendto(data)  # a copy goes after the SEND_ZCs queued before it
        else:
            futures.append(t.sendto_zc(bytearray(data)))
    # the SQEs went together: every 64th datagram and before each copy, not one by one
    assert ring.submits - submits <= 200 // 64 + 4
    done = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert [c.nbytes for c in done] == [BIG] * len(futures)
    assert await rp.wait_for(len(expected)) == expected
    assert t._tracker.unexpected_ids == 0 and t._tracker.pending_writes == 0
    await finish(rt, t, p)


@pytest.mark.parametrize("engine", COALESCE_ENGINES)
async def test_coalesced_errors_are_raised_at_the_call(engine: str) -> None:
    rt, rp, t, p = await coalescing_pair(engine=engine)
    with pytest.raises(ValueError):
        t.sendto_zc(bytes(MAX_UDP4_PAYLOAD + 1))
    with pytest.raises(TypeError):
        t.sendto_zc("text")
    with pytest.raises(ValueError):
        t.sendto_zc(memoryview(bytearray(10))[::2])
    assert not t._co  # (None on the per-call ring path)
    assert t.stats.zc_sends + t.stats.copy_sends == 0
    t.close()
    with pytest.raises(TransportClosedError):
        t.sendto_zc(b"late")
    rt.close()
    await p.lost


async def test_coalesced_refusal_goes_to_error_received() -> None:
    # (scripts MSG_ZEROCOPY's sendmmsg; io_uring's refusals: test_uring_groups)
    rt, rp, t, p = await coalescing_pair(engine="msg_zerocopy")
    scripted(t, [-errno.ENETUNREACH])
    first = t.sendto_zc(payload(1, BIG))
    second = t.sendto_zc(payload(2, BIG))
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert not a.zerocopy and not b.zerocopy  # the flush was not all zero-copy
    assert [e.errno for e in p.errors] == [errno.ENETUNREACH]
    assert await rp.wait_for(1) == [payload(2, BIG)]
    await finish(rt, t, p)


@pytest.mark.parametrize("engine", COALESCE_ENGINES)
async def test_close_sends_coalesced_datagrams_and_abort_fails_them(engine: str) -> None:
    rt, rp, t, p = await coalescing_pair(engine=engine)
    future = t.sendto_zc(payload(5, BIG))
    t.close()
    assert (await asyncio.wait_for(future, 5)).nbytes == BIG
    assert await rp.wait_for(1) == [payload(5, BIG)]
    await asyncio.wait_for(p.lost, 5)
    t, p = await create_datagram_endpoint(  # type: ignore[assignment]
        Recorder, remote_addr=rt.get_extra_info("sockname"), coalesce_zc=True
    )
    buf = bytearray(BIG)
    future = t.sendto_zc(buf)
    t.abort()
    with pytest.raises(ConnectionAbortedError):
        await asyncio.wait_for(future, 5)
    buf.append(0)  # unpinned
    await asyncio.wait_for(p.lost, 5)
    rt.close()


@pytest.mark.parametrize("engine", COALESCE_ENGINES)
async def test_coalesced_pause_writing(engine: str) -> None:
    rt, rp, t, p = await coalescing_pair(engine=engine)
    t.set_write_buffer_limits(high=2 * BIG, low=BIG // 2)
    futures = [t.sendto_zc(payload(i, BIG)) for i in range(3)]
    assert p.events == ["made", "pause"]
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    await rp.wait_for(3)
    assert p.events == ["made", "pause", "resume"]
    await finish(rt, t, p)


async def test_coalescing_on_an_unconnected_endpoint_sends_at_once() -> None:
    rt, rp = await receiver()
    t, p = await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0), coalesce_zc=True)
    future = t.sendto_zc(b"direct", rt.get_extra_info("sockname"))
    assert t.stats.copy_sends + t.stats.zc_sends == 1
    await asyncio.wait_for(future, 5)
    assert await rp.wait_for(1) == [b"direct"]
    await finish(rt, t, p)  # type: ignore[arg-type]


async def test_batch_respects_max_pinned_bytes() -> None:
    rt, rp, t, p = await pair(max_pinned_bytes=2 * BIG + 1)
    bufs = [payload(i, BIG) for i in range(5)]
    completion = await asyncio.wait_for(t.sendto_zc_many(bufs), 5)
    # As sendto_zc() one by one: zero-copy while pinned bytes are below the cap, then copies.
    assert completion.zc_sends == 3
    assert t._mmsg is not None
    assert t.stats.peak_pinned_bytes <= 3 * BIG and t.stats.copy_sends == 2
    assert await rp.wait_for(5) == bufs
    await finish(rt, t, p)


@pytest.mark.parametrize("flags", [[], ["--no-pool", "--uvloop"]], ids=["pool", "no-pool-uvloop"])
def test_udp_pool_example_delivers_every_datagram(flags: list[str]) -> None:
    """examples/udp_pool.py: every datagram arrives; engine=auto picks io_uring for its
    coalesce_zc endpoint (where the kernel has it), with or without the registered pool
    (without one only with the compiled core)."""
    from aiozc.engines.io_uring import uring_unavailable_reason

    example = Path(__file__).resolve().parent.parent / "examples" / "udp_pool.py"
    out = subprocess.run(
        [sys.executable, str(example), "--count", "2000", "--size", "30000", *flags],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "receiver got 2000 datagrams, 60000000 bytes" in out, out
    from aiozc._sys import core as _core

    # (on the pure path auto waits for a registered pool: aiozc/engines/__init__.py)
    uring = uring_unavailable_reason() is None and (_core.compiled or not flags)
    assert f"engine {'io_uring' if uring else 'msg_zerocopy'}," in out, out
