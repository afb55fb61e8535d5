"""A writer paced by the socket's room (pause_writing / resume_writing against a slow peer):
what its flushes leave registered, how often they flip EPOLLOUT, and the protocol calls the
compiled path makes itself (_core_tcpflush.c tq_after_flush, _core_tcpzc.c tz_pause), on both
paths (``path``) and both loops.

Driven by hand as test_transport_cqueue: the peer reads a fixed amount, then the test calls
_write_ready() as the loop would on EPOLLOUT.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from aiozc import readiness
from aiozc.readiness import EPOLLOUT
from aiozc.streamread import on_uvloop
from test_transport_cmethods import path  # noqa: F401  (the fixture)
from test_transport_cqueue import paced_pair, peer_read

PAYLOAD = bytes(range(256)) * 256  # 64 KiB


def write_until_paused(pair: Any) -> int:
    writes = 0
    while not pair.protocol.events or pair.protocol.events[-1] != "pause":
        pair.transport.write(PAYLOAD)
        writes += 1
        assert writes < 64, "never paused"
    return writes


def drain_by_hand(pair: Any) -> None:
    t = pair.transport
    while t.get_write_buffer_size():
        peer_read(pair, 1 << 20)
        t._write_ready()


def make_private(t: Any) -> None:
    """The socket into the private epoll for good (as after its uvloop poll handle failed)."""
    t._mux._stay_private.add(t._fd)
    t._mux.modify(t._fd, t._mask(), on_loop=False)
    assert not t._mux.is_on_loop(t._fd)


@pytest.mark.parametrize("where", ["selector", "private"])
async def test_epollout_lingers_on_uvloop_until_the_next_writable_event(path: str, where: str) -> None:
    """uvloop, the socket in its selector or in the private epoll: the flush that empties the
    queue leaves EPOLLOUT asked for; the writable event that follows finds nothing queued and
    drops it. asyncio drops it at once (it would poll before the woken writer runs: one event
    more per pause)."""
    pair = await paced_pair(path)
    t = pair.transport
    try:
        lingers = on_uvloop(t._loop)
        assert t._mux.is_on_loop(t._fd)
        if where == "private":
            make_private(t)
        writes = write_until_paused(pair)
        assert t._registered_mask & EPOLLOUT
        drain_by_hand(pair)
        assert pair.protocol.events[-1] == "resume"
        assert bool(t._registered_mask & EPOLLOUT) == lingers
        flushes = 0
        real = t._write_ready

        def counted() -> None:
            nonlocal flushes
            flushes += 1
            real()

        t._write_ready = counted
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not t._registered_mask & EPOLLOUT
        assert flushes == (1 if lingers else 0)  # one writable event, then nothing: no spin
        await asyncio.wait_for(pair.read_all(writes * len(PAYLOAD)), 30)
        assert bytes(pair.received) == PAYLOAD * writes
    finally:
        pair.close()


async def test_a_paced_writer_in_the_private_epoll_flips_epollout_once_on_uvloop(path: str) -> None:
    """As below with the socket in the private epoll: one mask change asks for EPOLLOUT for all
    the pauses on uvloop (two epoll_ctl per pause before)."""
    if not on_uvloop(asyncio.get_running_loop()):
        pytest.skip("asyncio's selector takes a reading socket back at its next mask change")
    pair = await paced_pair(path)
    t = pair.transport
    flips: list[int] = []
    real = t._mux.modify

    def modify(fd: int, mask: int, **kwargs: Any) -> None:
        if (mask ^ t._mux._masks.get(fd, 0)) & EPOLLOUT:
            flips.append(mask & EPOLLOUT)
        real(fd, mask, **kwargs)

    try:
        make_private(t)
        t._mux.modify = modify
        cycles, writes = 5, 0
        for _ in range(cycles):
            writes += write_until_paused(pair)
            drain_by_hand(pair)
        assert pair.protocol.events.count("resume") == cycles
        assert flips == [EPOLLOUT]
        await asyncio.wait_for(pair.read_all(writes * len(PAYLOAD)), 30)
        assert bytes(pair.received) == PAYLOAD * writes
    finally:
        pair.close()


async def test_a_paced_writer_asks_for_epollout_once_on_uvloop(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write until paused, drain, write again at resume: on uvloop EPOLLOUT is added once for
    all the pauses (each add/remove pair cost ~7.5k user instructions and 4 epoll_ctl)."""
    adds: list[int] = []
    registrar = readiness._UvloopRegistrar if on_uvloop(asyncio.get_running_loop()) else readiness._SelectorRegistrar
    real_add = registrar.add_writer

    def add_writer(loop: Any, fd: int, callback: Any, *args: Any) -> None:
        adds.append(fd)
        real_add(loop, fd, callback, *args)

    monkeypatch.setattr(registrar, "add_writer", staticmethod(add_writer))
    pair = await paced_pair(path)
    t = pair.transport
    try:
        cycles, writes = 6, 0
        for _ in range(cycles):
            writes += write_until_paused(pair)
            drain_by_hand(pair)
            assert pair.protocol.events[-1] == "resume"
        assert pair.protocol.events.count("pause") == pair.protocol.events.count("resume") == cycles
        assert len(adds) == (1 if on_uvloop(t._loop) else cycles)
        await asyncio.wait_for(pair.read_all(writes * len(PAYLOAD)), 30)
        assert bytes(pair.received) == PAYLOAD * writes
    finally:
        pair.close()


async def test_a_failing_pause_or_resume_goes_to_the_loops_handler(path: str) -> None:
    """protocol.pause_writing() / resume_writing() raising: the loop's exception handler gets
    it, as the base's _call_protocol hands it on, and the transport goes on (both paths)."""
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    pair = await paced_pair(path)
    t = pair.transport
    calls: list[str] = []

    def failing(name: str) -> Any:
        def call() -> None:
            calls.append(name)
            raise RuntimeError(name)

        return call

    pair.protocol.pause_writing = failing("pause")
    pair.protocol.resume_writing = failing("resume")
    try:
        writes = 0
        while not calls:
            t.write(PAYLOAD)
            writes += 1
        assert calls == ["pause"] and t._protocol_paused
        drain_by_hand(pair)
        assert calls == ["pause", "resume"] and not t._protocol_paused
        assert [c["message"] for c in contexts] == ["protocol.pause_writing() failed",
                                                    "protocol.resume_writing() failed"]
        assert [str(c["exception"]) for c in contexts] == ["pause", "resume"]
        assert all(c["transport"] is t for c in contexts)
        t.write(PAYLOAD)
        await asyncio.wait_for(pair.read_all((writes + 1) * len(PAYLOAD)), 30)
        assert bytes(pair.received) == PAYLOAD * (writes + 1)
    finally:
        loop.set_exception_handler(None)
        pair.close()


async def test_state_stored_between_queued_writes_is_seen(path: str) -> None:
    """The compiled queued write keeps what it read for the next one while the instance dict
    is unchanged (tz_hold): a plain attribute store in between is seen, as by Python's _hold
    (_update_mask, _maybe_pause_protocol) on both paths."""
    pair = await paced_pair(path)
    t = pair.transport
    try:
        t.set_write_buffer_limits(high=1 << 30)
        writes = 0
        while not t.get_write_buffer_size():
            t.write(PAYLOAD)
            writes += 1
        for _ in range(3):
            t.write(PAYLOAD)
        writes += 3
        assert "pause" not in pair.protocol.events
        t._high_water = t.get_write_buffer_size()  # stores, no method called
        t._reading = False
        assert t._registered_mask & readiness.EPOLLIN
        t.write(PAYLOAD)
        writes += 1
        assert pair.protocol.events[-1] == "pause"
        assert not t._registered_mask & readiness.EPOLLIN and t._registered_mask & EPOLLOUT
        t.resume_reading()
        drain_by_hand(pair)
        await asyncio.wait_for(pair.read_all(writes * len(PAYLOAD)), 30)
        assert bytes(pair.received) == PAYLOAD * writes
    finally:
        pair.close()


async def test_write_eof_while_epollout_lingers_shuts_down_once(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_eof() after the queue drained (EPOLLOUT lingering on uvloop): the peer gets the
    data and the EOF, the writable event that follows neither shuts down again nor fails."""
    pair = await paced_pair(path)
    t = pair.transport
    shutdowns: list[int] = []
    real = t._shutdown_write

    def counted() -> None:
        shutdowns.append(1)
        real()

    t._shutdown_write = counted
    try:
        writes = write_until_paused(pair)
        drain_by_hand(pair)
        t.write_eof()
        assert shutdowns == [1]
        for _ in range(10):
            await asyncio.sleep(0.005)
        assert shutdowns == [1] and not t._registered_mask & EPOLLOUT
        assert not t.is_closing() and "lost" not in pair.protocol.events
        await asyncio.wait_for(pair.read_all(writes * len(PAYLOAD)), 30)
        pair.peer.setblocking(True)
        pair.peer.settimeout(5)
        assert pair.peer.recv(1) == b""
        assert bytes(pair.received) == PAYLOAD * writes
    finally:
        pair.close()


@pytest.mark.parametrize("call", ["write", "write_zc"])
async def test_the_compiled_path_paces_without_python_frames(path: str, call: str) -> None:
    """Pause, drain, resume, for write() and write_zc(): the compiled path calls none of the
    Python methods it stands for (a write_zc() the socket took part of: _queue_zc_rest; the
    end of a flush: _after_flush); the pure path runs them."""
    pair = await paced_pair(path)
    t = pair.transport
    names = ("_queue_rest", "_queue_zc_rest", "_write_queued", "_hold", "_send_head", "_send_gathered",
             "_after_flush", "_enqueue_held")
    calls: list[str] = []
    for name in names:
        real = getattr(t, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        setattr(t, name, counted)
    futures: list[Any] = []
    try:
        writes = 0
        for _ in range(3):
            while not pair.protocol.events or pair.protocol.events[-1] != "pause":
                futures.append(getattr(t, call)(PAYLOAD))
                writes += 1
            drain_by_hand(pair)
            assert pair.protocol.events[-1] == "resume"
        await asyncio.wait_for(pair.read_all(writes * len(PAYLOAD)), 30)
        assert bytes(pair.received) == PAYLOAD * writes
        if call == "write_zc":
            done = await asyncio.wait_for(asyncio.gather(*futures), 30)
            assert [c.nbytes for c in done] == [len(PAYLOAD)] * writes
        if path == "pure":
            assert {"_send_gathered", "_after_flush"} <= set(calls)
        else:
            assert calls == []
    finally:
        pair.close()


async def test_cancelled_queued_write_zc_futures_are_flushed_alike(path: str) -> None:
    """write_zc() futures cancelled while their writes wait in the queue: the flush still
    sends and counts them, the cancelled stay cancelled, the others get their Completion."""
    pair = await paced_pair(path)
    t = pair.transport
    try:
        futures = []
        while not pair.protocol.events or pair.protocol.events[-1] != "pause":
            futures.append(t.write_zc(PAYLOAD))
        futures.append(t.write_zc(PAYLOAD))
        waiting = [f for f in futures if not f.done()]
        assert len(waiting) >= 2
        for f in waiting[::2]:
            f.cancel()
        before = t.stats.copy_writes
        drain_by_hand(pair)
        await asyncio.wait_for(pair.read_all(len(futures) * len(PAYLOAD)), 30)
        assert bytes(pair.received) == PAYLOAD * len(futures)
        assert t.stats.copy_writes - before == len(waiting)
        assert all(f.cancelled() for f in waiting[::2])
        assert all(f.result().nbytes == len(PAYLOAD) for f in waiting[1::2])
    finally:
        pair.close()


async def test_a_flush_sends_the_queued_copies_in_one_writev(path: str) -> None:
    """Segments waiting behind a full socket leave in one gathered send per flush (one write
    system call per segment before), their counters and the bytes as before."""
    pair = await paced_pair(path)
    t = pair.transport
    t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    t.set_write_buffer_limits(high=4 << 20)
    try:
        writes = 0
        while len(t._queue) < 6:
            t.write(PAYLOAD)
            writes += 1
        queued, sends, sent_bytes = len(t._queue), t.stats.copy_sends, t.stats.copy_bytes
        for _ in range(5):  # the peer makes room for more than two of them (the loop not run)
            peer_read(pair, 8 << 20)
        t._write_ready()
        assert queued - len(t._queue) >= 2
        assert t.stats.copy_sends - sends == 1
        assert t.stats.copy_bytes - sent_bytes >= 2 * len(PAYLOAD)
        drain_by_hand(pair)
        await asyncio.wait_for(pair.read_all(writes * len(PAYLOAD)), 30)
        assert bytes(pair.received) == PAYLOAD * writes
        assert t.get_write_buffer_size() == 0
    finally:
        pair.close()
