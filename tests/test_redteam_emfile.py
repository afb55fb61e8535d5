"""Out of file descriptors when the loop's private epoll must open (readiness: it opens with
the first socket that needs it, which a stock transport never does).

Before: on asyncio's loop a first write_zc() raised KeyError out of the multiplexer and the
connection was lost with its bytes, pause_reading() raised OSError and left the socket in no
selector (resume_reading() then raised KeyError); on uvloop a new connection was never
watched at all (connection_made's exception went to the loop's handler, then nothing: no
data, no connection_lost). Now the socket stays where it is (the write goes by copy), and
where it cannot (uvloop's sentinel needs the epoll) the connection is lost with the OSError.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import aiozc
from aiozc.readiness import Multiplexer
from aiozc.streamread import on_uvloop
from tcp_helpers import RecordingProtocol, connect_pair


@contextmanager
def fds_left(free: int) -> Iterator[None]:
    """Only ``free`` more descriptors can be opened inside (RLIMIT_NOFILE caps fd numbers:
    the holes below the highest open one are filled first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(name) for name in os.listdir("/proc/self/fd"))
    hog: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1 + free, hard))
    try:
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        for _ in range(free):
            os.close(hog.pop())
        yield
    finally:
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def no_private_epoll_yet() -> None:
    if Multiplexer.for_loop(asyncio.get_running_loop()).epoll_fd is not None:
        pytest.skip("this loop's private epoll is open already")


async def test_first_write_zc_without_a_private_epoll_goes_by_copy() -> None:
    pair = await connect_pair(RecordingProtocol)
    try:
        t = pair.transport
        no_private_epoll_yet()
        data = bytes(range(256)) * 800
        with fds_left(0):
            future = t.write_zc(data)
        assert (await asyncio.wait_for(pair.read_all(len(data)), 5)) == data
        completion = await asyncio.wait_for(future, 5)
        assert completion.nbytes == len(data) and not completion.zerocopy
        pair.peer.send(b"ping")  # still read
        for _ in range(100):
            if pair.protocol.received:
                break
            await asyncio.sleep(0.01)
        assert bytes(pair.protocol.received) == b"ping"
        assert pair.protocol.events == ["made"]
    finally:
        pair.close()


async def test_pause_reading_without_a_private_epoll_leaves_the_socket_in_the_loop() -> None:
    pair = await connect_pair(RecordingProtocol)
    try:
        t = pair.transport
        no_private_epoll_yet()
        with fds_left(0):
            t.pause_reading()  # stock: never raises
        pair.peer.send(b"ping")
        await asyncio.sleep(0.05)
        assert not pair.protocol.received
        t.resume_reading()
        for _ in range(100):
            if pair.protocol.received:
                break
            await asyncio.sleep(0.01)
        assert bytes(pair.protocol.received) == b"ping"
        t.write(b"pong")
        assert (await asyncio.wait_for(pair.read_all(4), 5)) == b"pong"
    finally:
        pair.close()


async def test_a_connection_made_without_room_for_the_private_epoll_is_served_or_lost() -> None:
    """The client socket takes the last descriptor; the transport reads, or (uvloop) is lost
    with the error: never left unwatched."""
    no_private_epoll_yet()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    try:
        with fds_left(1):
            transport, protocol = await asyncio.wait_for(
                aiozc.create_connection(RecordingProtocol, *listener.getsockname()), 5
            )
        peer, _ = listener.accept()
        with peer:
            peer.sendall(b"hello")
            for _ in range(200):
                if protocol.received or protocol.lost.done():
                    break
                await asyncio.sleep(0.01)
            if on_uvloop(asyncio.get_running_loop()):
                exc = await asyncio.wait_for(protocol.lost, 5)
                assert isinstance(exc, OSError) and exc.errno == errno.EMFILE
            else:
                assert bytes(protocol.received) == b"hello"
            transport.abort()
        assert errors == []
    finally:
        listener.close()


async def test_a_failed_register_leaves_no_handler_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Multiplexer.register into the private epoll, the epoll not openable: nothing recorded,
    so the fd can be registered once it can open."""
    mux = Multiplexer.for_loop(asyncio.get_running_loop())
    no_private_epoll_yet()
    a, b = socket.socketpair()
    with a, b:

        class Handler:
            def on_readiness(self, events: int) -> None:
                pass

        handler = Handler()
        with fds_left(0), pytest.raises(OSError):
            mux.register(a.fileno(), handler, 0)
        assert mux.handler_for(asyncio.get_running_loop(), a.fileno()) is None
        mux.register(a.fileno(), handler, 0)
        mux.unregister(a.fileno())
