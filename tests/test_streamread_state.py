"""The compiled Reader's remembered transport state (``_core_recv.c``, PEP 509's dict
version): an event may skip the state lookups only while no attribute of the transport
changed since they were made. Every behaviour here runs on both loops (conftest) and on the
compiled and the Python read path; the Reader's own counters only where the core is built."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import textwrap
import weakref

import pytest

import aiozc
from aiozc import streamread
from aiozc._sys import core, recv
from aiozc.readiness import EPOLLIN
from tcp_helpers import RecordingProtocol, connect_pair, read_path  # noqa: F401 (fixture)

# The dict version the Reader keys on exists in CPython 3.6-3.11 only (see _core_recv.c).
REMEMBERS = core.compiled and sys.version_info < (3, 12)




async def wait_for(predicate: object, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def ping(pair: object, message: bytes, rounds: int) -> None:
    """``rounds`` separate reads of ``message`` (each waited for: one event each)."""
    start = len(pair.protocol.received)  # type: ignore[attr-defined]
    for k in range(1, rounds + 1):
        pair.peer.sendall(message)  # type: ignore[attr-defined]
        await wait_for(lambda: len(pair.protocol.received) == start + k * len(message), "a ping")  # type: ignore[attr-defined]


async def queued(pair: object, nbytes: int) -> None:
    await wait_for(lambda: streamread._unread_bytes(pair.transport._fd) == nbytes, "the queued bytes")  # type: ignore[attr-defined]


async def test_small_reads_reuse_the_state_and_deliver_everything(read_path: str) -> None:
    pair = await connect_pair()
    try:
        await ping(pair, b"0123456789a", 20)
        assert bytes(pair.protocol.received) == b"0123456789a" * 20
        reader = pair.transport.on_readiness
        if read_path == "compiled" and REMEMBERS:
            assert reader.state_reuses >= 10  # the first events look the state up
    finally:
        pair.close()


async def test_pause_reading_between_events_is_seen(read_path: str) -> None:
    # After the state was remembered, pause_reading() from outside data_received must stop the
    # next event's read even when the event reaches the reader (called here directly).
    pair = await connect_pair()
    try:
        await ping(pair, b"x", 5)
        pair.transport.pause_reading()
        pair.peer.sendall(b"late")
        await queued(pair, 4)
        pair.transport.on_readiness(EPOLLIN)
        assert bytes(pair.protocol.received) == b"x" * 5
        pair.transport.resume_reading()
        await wait_for(lambda: pair.protocol.received.endswith(b"late"), "the data after resume")
    finally:
        pair.close()


async def test_set_protocol_between_events_delivers_to_the_new_one(read_path: str) -> None:
    pair = await connect_pair()
    try:
        await ping(pair, b"old", 5)
        new = RecordingProtocol()
        pair.transport.set_protocol(new)
        pair.peer.sendall(b"new")
        await wait_for(lambda: new.received == b"new", "the new protocol's data")
        assert bytes(pair.protocol.received) == b"old" * 5
    finally:
        pair.close()


async def test_eof_after_remembered_state_is_delivered(read_path: str) -> None:
    pair = await connect_pair()
    try:
        await ping(pair, b"e", 5)
        pair.peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(pair.protocol.eof.wait(), 5)
        assert bytes(pair.protocol.received) == b"e" * 5
    finally:
        pair.close()


async def test_closing_between_events_reads_no_more(read_path: str) -> None:
    pair = await connect_pair()
    try:
        await ping(pair, b"c", 5)
        pair.transport._closing = True  # what close() sets first, before the fd goes
        pair.peer.sendall(b"unread")
        await queued(pair, 6)
        pair.transport.on_readiness(EPOLLIN)
        assert bytes(pair.protocol.received) == b"c" * 5
        pair.transport._closing = False
    finally:
        pair.close()


@pytest.mark.skipif(not core.compiled, reason=f"no compiled core: {core.why_pure}")
async def test_a_class_default_state_is_looked_up_each_event(monkeypatch: pytest.MonkeyPatch) -> None:
    # _eof_received from the class, not the instance dict: the dict's version does not cover a
    # class attribute, so the Reader never reuses what it read.
    pair = await connect_pair()
    try:
        monkeypatch.setattr(aiozc.ZeroCopyTransport, "_eof_received", False, raising=False)
        del pair.transport.__dict__["_eof_received"]  # the class default from now on
        await ping(pair, b"k", 5)
        reader = pair.transport.on_readiness
        before = reader.state_reuses
        await ping(pair, b"k", 5)
        assert reader.state_reuses == before
        assert bytes(pair.protocol.received) == b"k" * 10
    finally:
        pair.close()


@pytest.mark.skipif(not core.compiled, reason=f"no compiled core: {core.why_pure}")
async def test_the_reader_called_without_an_event_reads() -> None:
    # The loop's reader callback: registered without an argument, it stands for EPOLLIN.
    pair = await connect_pair()
    try:
        reader = pair.transport.on_readiness
        assert type(reader) is recv.Reader
        pair.transport.pause_reading()
        pair.peer.sendall(b"arg-less")
        await queued(pair, 8)
        pair.transport.resume_reading()
        reader()
        assert bytes(pair.protocol.received) == b"arg-less"
        with pytest.raises(TypeError):
            reader(EPOLLIN, EPOLLIN)
    finally:
        pair.close()


async def test_a_closed_transport_drops_its_reader(read_path: str) -> None:
    # The compiled Reader and its transport refer to each other: dropped at close, a closed
    # connection is freed by reference counting instead of waiting for the collector.
    pair = await connect_pair()
    try:
        await ping(pair, b"z", 1)
        pair.transport.close()
        await asyncio.wait_for(pair.protocol.lost, 5)
        assert "on_readiness" not in vars(pair.transport)
    finally:
        pair.peer.close()


async def test_a_closed_transport_is_freed_without_the_collector(read_path: str) -> None:
    # Reference counting alone frees a closed connection, as the loops' own transports: no
    # cycle through the Reader or the bound read step (connection churn ran gen-0 collections).
    pair = await connect_pair()
    gc.disable()
    try:
        await ping(pair, b"z", 1)
        ref = weakref.ref(pair.transport)
        pair.transport.close()
        await asyncio.wait_for(pair.protocol.lost, 5)
        pair.peer.close()
        pair.protocol.transport = None
        del pair
        for _ in range(3):
            await asyncio.sleep(0)  # the socket's close and connection_lost run from the loop
        assert ref() is None
    finally:
        gc.enable()


_THREADS = textwrap.dedent("""
    import asyncio, os, sys, uvloop
    import aiozc

    async def main():
        server = await aiozc.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await aiozc.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transport.close()
        server.close()
        print(len(os.listdir("/proc/self/task")))

    (uvloop.run if sys.argv[1] == "uvloop" else asyncio.run)(main())
""")


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_numeric_address_starts_no_resolver_thread(loop_name: str) -> None:
    # getaddrinfo runs in a thread pool (asyncio's executor, libuv's 4 threads); a second
    # thread costs every later system call glibc's cancellation bookkeeping.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", _THREADS, loop_name], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    assert out.stdout.split() == ["1"], out.stderr


async def test_connecting_to_a_closed_port_fails_as_the_loop_does() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(ConnectionRefusedError) as caught:
        await aiozc.create_connection(asyncio.Protocol, "127.0.0.1", port)
    assert f"('127.0.0.1', {port})" in str(caught.value)


@pytest.mark.skipif(not core.compiled, reason=f"no compiled core: {core.why_pure}")
async def test_after_a_full_read_the_next_event_reads_into_a_new_bytes() -> None:
    # A stream: the event after one whose read filled the read size reads straight into a new
    # bytes object (no copy out of the thread's buffer); a small read goes back to the buffer.
    pair = await connect_pair(read_size=4096)
    try:
        reader = pair.transport.on_readiness
        await ping(pair, b"s", 1)
        assert reader.fresh_reads == 0
        pair.transport.pause_reading()
        pair.peer.sendall(b"f" * 4096)
        await queued(pair, 4096)
        pair.transport.resume_reading()
        await wait_for(lambda: len(pair.protocol.received) == 1 + 4096, "the full read")
        fresh = reader.fresh_reads
        await ping(pair, b"n", 1)  # the event after the full read
        assert reader.fresh_reads == fresh + 1
        await ping(pair, b"m", 1)  # after a small read: the buffer again
        assert reader.fresh_reads == fresh + 1
        assert bytes(pair.protocol.received) == b"s" + b"f" * 4096 + b"nm"
    finally:
        pair.close()


# (read size, [(a read's size, whether the next event's read goes into a new bytes)]):
# "large" is a quarter of the read size, at most 16 KiB (_core_recv.c large_read_at).
LARGE_READS = {
    4096: [(3000, True), (1024, True), (1023, False), (4096, True)],
    256 * 1024: [(20000, True), (16384, True), (16383, False), (100000, True), (11, False)],
}


@pytest.mark.skipif(not core.compiled, reason=f"no compiled core: {core.why_pure}")
@pytest.mark.parametrize("read_size", sorted(LARGE_READS))
async def test_after_a_large_partial_read_the_next_event_reads_into_a_new_bytes(read_size: int) -> None:
    # A stream whose receiver keeps up reads less than the read size per event (180-250 KiB
    # of 256 KiB over loopback, and 16-64 KiB when it wakes per segment or two): those reads
    # count as a stream's too, or each event's read goes through the thread's buffer and a
    # copy (copied_bytes: what that copy moved).
    pair = await connect_pair(read_size=read_size)
    try:
        reader = pair.transport.on_readiness
        for size, fresh_next in LARGE_READS[read_size]:
            pair.transport.pause_reading()
            pair.peer.sendall(b"p" * size)
            await queued(pair, size)
            start = len(pair.protocol.received)
            pair.transport.resume_reading()
            await wait_for(lambda: len(pair.protocol.received) == start + size, "the partial read")
            fresh, read_into, copied = reader.fresh_reads + reader.slow_starts, reader.fresh_reads, reader.copied_bytes
            await ping(pair, b"n", 1)  # the event after that read
            assert reader.fresh_reads + reader.slow_starts == fresh + fresh_next, size
            # the byte was copied unless it was read into its bytes (not at a slow offset)
            assert reader.copied_bytes == copied + (reader.fresh_reads == read_into), size
        assert bytes(pair.protocol.received) == b"".join(b"p" * n + b"n" for n, _ in LARGE_READS[read_size])
    finally:
        pair.close()
