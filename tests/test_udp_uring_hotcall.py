"""The compiled per-call sendto_zc() / sendto() on the io_uring engine (aiozc/_sys/_core_udpring.c):
it must do what the general path (aiozc/datagram/uring.py) does, on both loops.

Each scenario runs in a fresh interpreter (inside the ifb sink namespace, or on loopback where a
receiver must see the datagrams), once as the suite runs it and once with
AIOZC_NO_EXTENSIONS=1 (the general path): the outcomes must be the same.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from aiozc._sys import core as _core
from aiozc.engines.io_uring import uring_unavailable_reason
from aiozc.tools.benchkit import run_on
from aiozc.tools.netns import SinkNamespace, sink_rx_packets

LOOPS = ["asyncio", "uvloop"]
DATAGRAM = 64000

pytestmark = pytest.mark.skipif(uring_unavailable_reason() is not None,
                                reason=f"io_uring: {uring_unavailable_reason()}")


class _FlowRecorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


async def _window(dst: str, count: int, fixed: bool, transports: int) -> dict[str, Any]:
    """A user's loop (a window of 256 futures, await the oldest) over ``transports`` io_uring
    transports sharing the loop's ring, taking turns, plus a sendto() of bytes every 100th."""
    from aiozc.buffers import BufferPool
    from aiozc.datagram import create_datagram_endpoint

    pool = BufferPool(DATAGRAM, 16) if fixed else None
    bufs: list[Any] = list(pool) if pool is not None else [bytearray(b"u" * DATAGRAM) for _ in range(16)]
    rx0 = sink_rx_packets()
    pairs = [await create_datagram_endpoint(_FlowRecorder, engine="io_uring", remote_addr=(dst, 9))
             for _ in range(transports)]
    window: collections.deque[Any] = collections.deque()
    completions = []
    sent_bytes = 0
    for i in range(count):
        transport = pairs[i % transports][0]
        if i % 100 == 99:
            transport.sendto(b"s" * DATAGRAM)  # exact bytes: zero-copy too, no future
            sent_bytes += 1
        window.append(transport.sendto_zc(bufs[i % len(bufs)]))
        if len(window) >= 256:
            completions.append(await window.popleft())
    completions += [await f for f in window]
    for _ in range(100):  # the last sendto() datagrams' notifications
        if all(t.get_write_buffer_size() == 0 for t, _ in pairs):
            break
        await asyncio.sleep(0.01)
    result = {
        "compiled": [t._hot_d is not None and t._engine.hot_bound for t, _ in pairs],
        "states": [t.stats.state for t, _ in pairs],
        "zerocopy": sum(c.zerocopy for c in completions),
        "zc_sends": sum(t.stats.zc_sends for t, _ in pairs),
        "zc_writes": sum(t.stats.zc_writes for t, _ in pairs),
        "pinned": sum(t.get_write_buffer_size() for t, _ in pairs),
        "flow": [_alternates(p.calls) for _, p in pairs],
        "paused": [t._protocol_paused for t, _ in pairs],
    }
    for t, _ in pairs:
        t.close()
    await asyncio.sleep(0.05)
    result["rx"] = sink_rx_packets() - rx0
    result["expected_rx"] = count + sent_bytes
    if pool is not None:
        for b in bufs:
            pool.release(b)
        pool.close()
    return result


def _alternates(calls: list[str]) -> bool:
    return bool(calls) and calls[0] == "pause" and all(a != b for a, b in zip(calls, calls[1:]))


def window(dst: str, loop: str, count: int, fixed: bool, transports: int) -> dict[str, Any]:
    return run_on(loop, _window(dst, count, fixed, transports))


def _both_paths(ns: SinkNamespace, monkeypatch: pytest.MonkeyPatch, *args: Any) -> tuple[dict, dict]:
    this = ns.call(window, ns.sink_addr, *args, timeout=120)
    with monkeypatch.context() as m:
        m.setenv("AIOZC_NO_EXTENSIONS", "1")
        pure = ns.call(window, ns.sink_addr, *args, timeout=120)
    return this, pure


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("fixed", [False, True], ids=["buffers", "pool"])
@pytest.mark.parametrize("transports", [1, 2])
def test_window_into_the_sink_as_the_general_path(sink_ns: SinkNamespace, monkeypatch: pytest.MonkeyPatch,
                                                 loop: str, fixed: bool, transports: int) -> None:
    count = 1500
    this, pure = _both_paths(sink_ns, monkeypatch, loop, count, fixed, transports)
    assert this["compiled"] == [_core.compiled] * transports
    assert pure["compiled"] == [False] * transports
    expected_sends = count + count // 100
    for out in (this, pure):
        assert out["states"] == ["zerocopy"] * transports, out
        assert out["zerocopy"] == count and out["zc_sends"] == expected_sends, out
        assert out["zc_writes"] == expected_sends and out["pinned"] == 0, out
        assert out["rx"] == out["expected_rx"], out
        assert all(out["flow"]), out  # pause/resume strictly alternate, starting with pause
    this.pop("compiled"), pure.pop("compiled")
    assert this == pure


async def _order(count: int) -> dict[str, Any]:
    """sendto_zc() and sendto() of a mutable buffer (a copy) taking turns on loopback: the
    receiver gets them in call order (a copy waits for the SEND_ZCs queued before it)."""
    import socket

    from aiozc.datagram import create_datagram_endpoint

    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, engine="io_uring",
                                                  remote_addr=rx.getsockname())
    futures = []
    for i in range(count):
        payload = i.to_bytes(4, "big") * 4000
        if i % 3 == 2:
            transport.sendto(bytearray(payload))
        else:
            futures.append(transport.sendto_zc(payload))
    done = await asyncio.wait_for(asyncio.gather(*futures), 10)
    got = [await asyncio.wait_for(loop.sock_recv(rx, 65536), 5) for _ in range(count)]
    compiled = transport._hot_d is not None
    transport.close()
    rx.close()
    return {"order": [int.from_bytes(g[:4], "big") for g in got], "compiled": compiled,
            "copied": sum(not c.zerocopy for c in done), "futures": len(done)}


async def test_copies_and_send_zcs_leave_in_call_order() -> None:
    out = await _order(60)
    assert out["compiled"] == _core.compiled
    assert out["order"] == list(range(60))
    assert out["copied"] == out["futures"] == 40  # loopback copies: reported, not zero-copy



async def _bursts(dst: str) -> dict[str, Any]:
    """Three bursts of 40 sendto_zc() (2.5 drain intervals each, no loop iteration inside a
    burst, one between them): how often the compiled path asked Python to schedule the loop
    iteration's submit, and what was left queued after each burst and after its iteration."""
    from aiozc.datagram import create_datagram_endpoint

    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, engine="io_uring",
                                                  remote_addr=(dst, 9), errqueue_drain_every=16)
    engine = transport._engine
    ring = engine._ring  # the loop's LoopRing
    asked: list[int] = []
    schedule = engine.schedule_submit
    engine.schedule_submit = lambda: (asked.append(ring.queued), schedule())[1]
    futures, after_burst, after_iteration = [], [], []
    for _ in range(3):
        for _ in range(40):
            futures.append(transport.sendto_zc(b"z" * DATAGRAM))
        after_burst.append((len(asked), ring.queued))
        await asyncio.sleep(0)  # the submit it asked for runs
        after_iteration.append(ring.queued)
    done = await asyncio.wait_for(asyncio.gather(*futures), 10)
    out = {"compiled": transport._hot_d is not None and engine.hot_bound, "asked": asked,
           "after_burst": after_burst, "after_iteration": after_iteration,
           "zerocopy": sum(c.zerocopy for c in done), "state": transport.stats.state}
    transport.close()
    return out


def bursts(dst: str, loop: str) -> dict[str, Any]:
    return run_on(loop, _bursts(dst))


@pytest.mark.skipif(not _core.compiled, reason="the compiled core is not in use")
@pytest.mark.parametrize("loop", LOOPS)
def test_a_burst_asks_python_for_one_submit_per_loop_iteration(sink_ns: SinkNamespace, loop: str) -> None:
    # The compiled sendto_zc asks Python (DG_F_SUBMIT) to schedule the loop iteration's submit
    # at its first SQE, and not again until that submit ran: a burst longer than the drain
    # interval (each drain submits inside the call) used to ask again after every drain.
    out = sink_ns.call(bursts, sink_ns.sink_addr, loop, timeout=120)
    assert out["compiled"] and out["state"] == "zerocopy", out
    assert out["asked"] == [1, 1, 1], out  # (what was queued when it asked: its first SQE)
    assert out["after_burst"] == [[1, 8], [2, 8], [3, 8]], out  # (JSON: lists)
    assert out["after_iteration"] == [0, 0, 0], out
    assert out["zerocopy"] == 120, out


async def _finalizers_that_send(dst: str, engine: str) -> dict[str, Any]:
    """Datagrams in buffers whose last reference is the transport's export, with a finalizer
    that sends another datagram on the same transport: it runs while the compiled path ends
    the exports of a resolved drain (and may drain again inside)."""
    from aiozc.datagram import create_datagram_endpoint

    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, engine=engine,
                                                  remote_addr=(dst, 9))
    inner: list[Any] = []

    class Sending(bytearray):
        def __del__(self) -> None:
            inner.append(transport.sendto_zc(b"i" * DATAGRAM))

    rx0 = sink_rx_packets()
    outer = [transport.sendto_zc(memoryview(Sending(DATAGRAM))) for _ in range(300)]
    done = await asyncio.wait_for(asyncio.gather(*outer), 20)
    for _ in range(100):
        if len(inner) == 300:
            break
        await asyncio.sleep(0.01)
    inner_done = await asyncio.wait_for(asyncio.gather(*inner), 20)
    out = {"compiled": transport._hot_d is not None, "outer": sum(c.zerocopy for c in done),
           "inner": sum(c.zerocopy for c in inner_done), "pinned": transport.get_write_buffer_size(),
           "state": transport.stats.state}
    transport.close()
    await asyncio.sleep(0.05)
    out["rx"] = sink_rx_packets() - rx0
    return out


def finalizers_that_send(dst: str, loop: str, engine: str) -> dict[str, Any]:
    return run_on(loop, _finalizers_that_send(dst, engine))


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("engine", ["io_uring", "msg_zerocopy"])
def test_a_finalizer_run_by_an_export_ending_may_send(sink_ns: SinkNamespace, loop: str, engine: str) -> None:
    out = sink_ns.call(finalizers_that_send, sink_ns.sink_addr, loop, engine, timeout=120)
    assert out == {"compiled": _core.compiled, "outer": 300, "inner": 300, "pinned": 0,
                   "state": "zerocopy", "rx": 600}, out
