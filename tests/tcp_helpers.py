"""A zero-copy client transport connected to a plain peer socket the test drives by hand, and
an aiozc server whose connections a test drives through their transports."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

import aiozc
from aiozc import readiness, streamread
from aiozc._sys import core


class Recording:
    """What a protocol saw; mixed into a Protocol or a BufferedProtocol (uvloop takes a class
    that is both for a plain Protocol)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.eof = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        self.eof.set()
        return True

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


class RecordingProtocol(Recording, asyncio.Protocol):
    pass


class BufferedRecordingProtocol(Recording, asyncio.BufferedProtocol):
    """A BufferedProtocol that reads into one 1000-byte buffer and records what came."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray(1000)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buf[:nbytes]


@dataclass
class Pair:
    transport: aiozc.ZeroCopyTransport
    protocol: RecordingProtocol
    peer: socket.socket
    received: bytearray = field(default_factory=bytearray)

    async def read_all(self, nbytes: int) -> bytes:
        loop = asyncio.get_running_loop()
        while len(self.received) < nbytes:
            chunk = await loop.sock_recv(self.peer, 1 << 20)
            if not chunk:
                break
            self.received += chunk
        return bytes(self.received)

    async def read_until_eof(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await loop.sock_recv(self.peer, 1 << 20)
            if not chunk:
                return bytes(self.received)
            self.received += chunk

    def close(self) -> None:
        self.transport.abort()
        self.peer.close()


async def connect_pair(
    protocol_cls: type = RecordingProtocol, *, peer_rcvbuf: int | None = None, **options: Any
) -> Pair:
    """Our transport connected to a plain peer socket; ``peer_rcvbuf`` sets the peer's receive
    buffer (before listen(), so the accepted socket has it)."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    if peer_rcvbuf is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    try:
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        transport, protocol = await aiozc.create_connection(
            protocol_cls, *listener.getsockname(), **options
        )
        peer, _ = await accept
    finally:
        listener.close()
    peer.setblocking(False)
    return Pair(transport, protocol, peer)  # type: ignore[arg-type]


def sha(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def raw_server(run: Callable[[asyncio.Transport], Any]) -> AsyncIterator[int]:
    """An aiozc server whose connections are driven by ``run(transport)``."""
    tasks: list[asyncio.Task[Any]] = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            tasks.append(asyncio.ensure_future(run(transport)))  # type: ignore[arg-type]

    server = await aiozc.create_server(Proto, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
        await asyncio.gather(*tasks)
    finally:
        server.close()
        await server.wait_closed()


def report_ranges_as(monkeypatch: Any, copied: Callable[[Any], bool]) -> None:
    """Rewrite the copied flag of every zero-copy range the kernel reports to ``copied(range)``:
    how a test shows the transport a route that one host cannot give (TCP is always copied
    here). Other error-queue messages pass unchanged."""
    from aiozc._sys import kernel as _kernel

    real = _kernel.read_errqueue

    def read_errqueue(sock: socket.socket, limit: int = 64) -> list[_kernel.ErrQueueMessage]:
        out: list[_kernel.ErrQueueMessage] = []
        for m in real(sock, limit):
            if isinstance(m, _kernel.ZeroCopyRange):
                m = _kernel.ZeroCopyRange(m.lo, m.hi, copied=copied(m))
            out.append(m)
        return out

    monkeypatch.setattr(_kernel, "read_errqueue", read_errqueue)


@pytest.fixture(params=["compiled", "python"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Transports made in the test read through the compiled Reader and Dispatcher, or
    through the Python methods (the pure path, also without AIOZC_NO_EXTENSIONS)."""
    if request.param == "compiled":
        if not core.compiled:
            pytest.skip(f"no compiled core: {core.why_pure}")
    else:
        monkeypatch.setattr(streamread, "_reader_type", None)
        monkeypatch.setattr(readiness, "_CompiledDispatcher", None)
    yield request.param


def open_fd_count() -> int:
    """This process's open fds, less the running loop's private epoll: it stays open until the
    loop closes (readiness), so it is no connection's leak."""
    import os

    private = readiness.Multiplexer.for_loop(asyncio.get_running_loop()).epoll_fd is not None
    return len(os.listdir("/proc/self/fd")) - private
