"""The TCP read path in the compiled core (``_core_recv.c``: Reader, Dispatcher) against the
Python path it replaces: every scenario runs on both (and on both loops, conftest), and the
compiled one must be what a transport uses where the core is built."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import weakref
from typing import Any

import pytest
import uvloop

import aiozc
from aiozc import readiness, streamread
from aiozc._sys import core, recv
from aiozc.readiness import EPOLLIN, Multiplexer
from tcp_helpers import BufferedRecordingProtocol, RecordingProtocol, connect_pair, read_path  # noqa: F401 (fixture)

needs_core = pytest.mark.skipif(not core.compiled, reason=f"no compiled core: {core.why_pure}")




def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def queue_then_read(pair: Any, data: bytes) -> None:
    """Send ``data`` while the transport does not read, resume once all of it is queued: the
    reads then see one backlog, whatever the load."""
    await wait_for(lambda: pair.transport.is_reading(), "connection_made")
    pair.transport.pause_reading()
    pair.peer.sendall(data)
    await wait_for(lambda: streamread._unread_bytes(pair.transport._fd) == len(data), "the backlog")
    pair.transport.resume_reading()


async def wait_for(predicate: Any, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@needs_core
async def test_a_protocol_reads_through_the_compiled_reader() -> None:
    pair = await connect_pair()
    try:
        reader = pair.transport.on_readiness
        assert type(reader) is recv.Reader
        assert Multiplexer.handler_for(asyncio.get_running_loop(), pair.transport._fd) is pair.transport
        pair.peer.sendall(b"hello")
        await wait_for(lambda: pair.protocol.received == b"hello", "the data")
        assert reader.fast_reads == 1
        assert repr(reader) == f"<aiozc Reader of {pair.transport!r}>"  # a handler's culprit
    finally:
        pair.close()


@needs_core
async def test_the_private_epoll_is_polled_by_the_compiled_dispatcher() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    seen: list[int] = []

    class Handler:
        def on_readiness(self, events: int) -> None:
            seen.append(events)
            a.recv(100)

    mux = Multiplexer.for_loop(loop)
    mux.register(a.fileno(), Handler(), EPOLLIN)  # the private epoll, on both loops
    try:
        assert type(mux._dispatcher) is recv.Dispatcher
        before = mux.dispatches
        b.send(b"!")
        await wait_for(lambda: seen, "the event")
        assert seen == [EPOLLIN] and mux.dispatches > before
    finally:
        mux.unregister(a.fileno())
        a.close()
        b.close()


async def test_data_arrives_whole_and_in_order(read_path: str) -> None:
    pair = await connect_pair(read_size=4096)
    sizes: list[int] = []
    real = pair.protocol.data_received
    pair.protocol.data_received = lambda data: (sizes.append(len(data)), real(data))  # type: ignore[method-assign]
    try:
        payload = os.urandom(300_000)  # larger than the read size and the reads per event
        await asyncio.get_running_loop().sock_sendall(pair.peer, payload)
        await wait_for(lambda: len(pair.protocol.received) >= len(payload), "the payload")
        assert pair.protocol.received == payload
        assert max(sizes) <= 4096 and all(type(n) is int for n in sizes)
    finally:
        pair.close()


async def test_a_backlog_is_read_in_full_reads_each_its_own_bytes(read_path: str) -> None:
    # Queued before reading resumes: every read of the event fills the read size, and from
    # the second on (and in the next event) the compiled path receives straight into a new
    # bytes object.
    pair = await connect_pair(read_size=4096)
    seen: list[bytes] = []
    real = pair.protocol.data_received
    pair.protocol.data_received = lambda data: (seen.append(data), real(data))  # type: ignore[method-assign]
    try:
        payload = os.urandom(16 * 4096 + 100)
        await queue_then_read(pair, payload)
        await wait_for(lambda: len(pair.protocol.received) == len(payload), "the payload")
        assert b"".join(seen) == payload and all(type(d) is bytes for d in seen)
        assert [len(d) for d in seen[:16]] == [4096] * 16
        assert len({id(d) for d in seen}) == len(seen)  # none reused while held
        if read_path == "compiled":  # 16 reads in one event: the buffer, then 15 new bytes;
            # the next event's (the last 100 bytes) follows a full read: a new bytes too
            reader = pair.transport.on_readiness
            assert reader.fresh_reads + reader.slow_starts == 16
    finally:
        pair.close()


class PausingProtocol(RecordingProtocol):
    """Pauses reading in its first data_received."""

    def __init__(self) -> None:
        super().__init__()
        self.calls_paused = 0
        self.paused = False

    def data_received(self, data: bytes) -> None:
        if self.paused:
            self.calls_paused += 1
        super().data_received(data)
        if not self.paused and len(self.received) == len(data):
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()


async def test_pause_reading_in_data_received_stops_the_next_read(read_path: str) -> None:
    pair = await connect_pair(PausingProtocol, read_size=4096)
    protocol: PausingProtocol = pair.protocol  # type: ignore[assignment]
    try:
        await queue_then_read(pair, b"p" * 60_000)  # fills the first read: the loop would read again
        await wait_for(lambda: protocol.paused, "the first read")
        await asyncio.sleep(0.1)
        assert len(protocol.received) == 4096 and protocol.calls_paused == 0
        assert not pair.transport.is_reading()
        protocol.paused = False
        protocol.received.clear()
        pair.transport.resume_reading()
        protocol.paused = True  # counted from here on only to show reading went on
        await wait_for(lambda: len(protocol.received) == 60_000 - 4096, "the rest")
    finally:
        pair.close()


class HalfClosing(RecordingProtocol):
    keep_open: bool | None = True

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        super().eof_received()
        return self.keep_open


@pytest.mark.parametrize("keep_open", [True, None], ids=["half-close", "close"])
async def test_eof_after_data(read_path: str, keep_open: bool | None) -> None:
    cls = type("P", (HalfClosing,), {"keep_open": keep_open})
    pair = await connect_pair(cls)
    protocol: HalfClosing = pair.protocol  # type: ignore[assignment]
    try:
        pair.peer.sendall(b"before eof")
        pair.peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(protocol.eof.wait(), 5)
        assert protocol.received == b"before eof"
        if keep_open:
            assert not pair.transport.is_closing()
            pair.transport.write(b"after eof")
            assert await pair.read_all(9) == b"after eof"
            pair.transport.close()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert protocol.events == ["made", "eof", "lost"]
    finally:
        pair.close()


class Boom(Exception):
    pass


class RaisingProtocol(RecordingProtocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        raise Boom("data_received")


async def test_a_data_received_that_raises_is_fatal_and_named(read_path: str) -> None:
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, context: handled.append(context))
    pair = await connect_pair(RaisingProtocol)
    try:
        pair.peer.sendall(b"x" * 10)
        lost = await asyncio.wait_for(pair.protocol.lost, 5)
        assert isinstance(lost, Boom)
        await asyncio.sleep(0.05)
        assert len(handled) == 1
        context = handled[0]
        assert context["exception"] is lost
        assert context["message"] == "Fatal error: protocol.data_received() call failed."
        assert context["transport"] is pair.transport and context["protocol"] is pair.protocol
        assert lost.__traceback__ is not None  # where it was raised, for the log
        assert pair.protocol.received == b"x" * 10
    finally:
        loop.set_exception_handler(None)
        pair.close()


async def test_a_reset_after_data_delivers_the_data_then_the_error(read_path: str) -> None:
    pair = await connect_pair()
    try:
        pair.peer.sendall(b"d" * 5000)
        await wait_for(lambda: len(pair.protocol.received) == 5000, "the data")
        reset(pair.peer)
        lost = await asyncio.wait_for(pair.protocol.lost, 5)
        assert isinstance(lost, ConnectionResetError)
    finally:
        pair.transport.abort()


Buffered = BufferedRecordingProtocol


class SwitchingProtocol(RecordingProtocol):
    """Hands the transport to a BufferedProtocol in its first data_received."""

    def __init__(self) -> None:
        super().__init__()
        self.next = Buffered()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport is not None and self.transport.get_protocol() is self:
            self.transport.set_protocol(self.next)


async def test_set_protocol_to_a_buffered_protocol_inside_data_received(read_path: str) -> None:
    pair = await connect_pair(SwitchingProtocol, read_size=4096)
    protocol: SwitchingProtocol = pair.protocol  # type: ignore[assignment]
    try:
        payload = os.urandom(100_000)
        await asyncio.get_running_loop().sock_sendall(pair.peer, payload)
        await wait_for(lambda: len(protocol.received) + len(protocol.next.received) >= len(payload), "the payload")
        assert bytes(protocol.received + protocol.next.received) == payload
        assert len(protocol.received) <= 4096
    finally:
        pair.close()


async def test_close_inside_data_received_reads_no_more(read_path: str) -> None:
    calls: list[int] = []

    class Closing(RecordingProtocol):
        def data_received(self, data: bytes) -> None:
            calls.append(len(data))
            assert self.transport is not None
            self.transport.close()

    pair = await connect_pair(Closing, read_size=4096)
    try:
        await queue_then_read(pair, b"c" * 60_000)
        assert await asyncio.wait_for(pair.protocol.lost, 5) is None
        assert calls == [4096]
    finally:
        pair.close()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("path", ["compiled", "python"])
def test_keyboard_interrupt_in_data_received_reaches_the_caller(
    exc: type[BaseException], loop_kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "compiled" and not core.compiled:
        pytest.skip(f"no compiled core: {core.why_pure}")
    if path == "python":
        monkeypatch.setattr(streamread, "_reader_type", None)
        monkeypatch.setattr(readiness, "_CompiledDispatcher", None)

    class Interrupting(RecordingProtocol):
        def data_received(self, data: bytes) -> None:
            raise exc()

    pairs: list[Any] = []

    async def main() -> None:
        pairs.append(await connect_pair(Interrupting))
        pairs[0].peer.sendall(b"k")
        await asyncio.sleep(5)

    loop = asyncio.SelectorEventLoop() if loop_kind == "asyncio" else uvloop.new_event_loop()
    try:
        with pytest.raises(exc):
            loop.run_until_complete(main())
    finally:
        for pair in pairs:
            pair.close()
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()


async def test_a_dispatched_handler_that_raises_is_reported_with_it(read_path: str) -> None:
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, context: handled.append(context))
    a, b = socket.socketpair()
    a.setblocking(False)

    class Failing:
        def on_readiness(self, events: int) -> None:
            a.recv(100)
            raise Boom(events)

    handler = Failing()
    mux = Multiplexer.for_loop(loop)
    mux.register(a.fileno(), handler, EPOLLIN)  # the private epoll, on both loops
    try:
        b.send(b"!")
        await wait_for(lambda: handled, "the report")
        assert handled[0]["message"] == "aiozc readiness handler failed"
        assert handled[0]["handler"] is handler
        assert isinstance(handled[0]["exception"], Boom) and handled[0]["exception"].args == (EPOLLIN,)
        assert mux.dispatches >= 1
    finally:
        mux.unregister(a.fileno())
        loop.set_exception_handler(None)
        a.close()
        b.close()


@needs_core
def test_a_closed_dispatcher_polls_nothing() -> None:
    import select

    epoll = select.epoll()
    a, b = socket.socketpair()
    called: list[int] = []
    dispatcher = recv.Dispatcher(epoll.fileno(), {a.fileno(): called.append}, lambda fd, exc: None)
    epoll.register(a.fileno(), EPOLLIN)
    b.send(b"!")
    dispatcher()
    assert called == [EPOLLIN] and dispatcher.dispatches == 1
    dispatcher.close()
    dispatcher()
    assert called == [EPOLLIN] and dispatcher.dispatches == 1
    for s in (a, b, epoll):
        s.close()


async def test_a_closed_transport_is_collected(read_path: str) -> None:
    # The compiled Reader refers to its transport, which holds it: a cycle the collector
    # must see through (tp_traverse), or every connection would leak.
    pair = await connect_pair()
    pair.peer.sendall(b"x")
    await wait_for(lambda: pair.protocol.received == b"x", "the data")
    pair.transport.close()
    await asyncio.wait_for(pair.protocol.lost, 5)
    await asyncio.sleep(0)
    ref = weakref.ref(pair.transport)
    pair.peer.close()
    del pair
    for _ in range(3):
        await asyncio.sleep(0)
        gc.collect()
    assert ref() is None


@needs_core
async def test_a_class_with_a_state_property_reads_through_python() -> None:
    # The Reader reads the state from the instance dict: a property there would be bypassed.
    class Watched(aiozc.ZeroCopyTransport):
        @property
        def _closing(self) -> bool:  # type: ignore[override]
            return self.__dict__.get("_closing_flag", False)

        @_closing.setter
        def _closing(self, value: bool) -> None:
            self.__dict__["_closing_flag"] = value

    assert not streamread._plain_state(Watched) and streamread._plain_state(aiozc.ZeroCopyTransport)
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    protocol = RecordingProtocol()
    transport = Watched(loop, a, protocol)
    try:
        assert not isinstance(transport.on_readiness, recv.Reader)
        await wait_for(lambda: transport.is_reading(), "connection_made")
        b.sendall(b"via python")
        await wait_for(lambda: protocol.received == b"via python", "the data")
    finally:
        transport.abort()
        b.close()
