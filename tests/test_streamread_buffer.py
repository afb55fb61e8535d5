"""The TCP transport's Protocol read path receives into a page-aligned per-thread buffer
(aiozc.buffers.thread_read_buffer) and hands data_received bytes copies (issue #14 point 3).
Async tests run on both loops."""

from __future__ import annotations

import asyncio
import mmap
import socket
import threading
from typing import Any

import pytest

import aiozc
from aiozc import buffers
from tcp_helpers import Recording, RecordingProtocol

PAGE = mmap.PAGESIZE


class Chunks(Recording, asyncio.Protocol):
    """Keeps every object data_received was given, as given."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[Any] = []
        self.arrived = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.chunks.append(data)
        self.arrived.set()


async def connect(read_size: int | None = None, factory: Any = Chunks) -> tuple[Any, Any, socket.socket]:
    loop = asyncio.get_running_loop()
    options = {} if read_size is None else {"read_size": read_size}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        transport, protocol = await aiozc.create_connection(factory, *listener.getsockname(), **options)
        peer, _ = await accept
    peer.setblocking(False)
    return transport, protocol, peer


async def receive(protocol: Any, nbytes: int) -> None:
    async with asyncio.timeout(10):
        while len(protocol.received) < nbytes:
            protocol.arrived.clear()
            await protocol.arrived.wait()


# ---------------------------------------------------------------------------------------------
# the buffer


@pytest.mark.parametrize("nbytes", [1, 11, PAGE + 1, 256 * 1024])
def test_thread_read_buffer_is_page_aligned_and_of_the_size_asked(nbytes: int) -> None:
    buf = buffers.thread_read_buffer(nbytes)
    assert len(buf) == nbytes
    assert buffers.address_of(buf) % PAGE == 0


def test_thread_read_buffer_is_one_per_thread_and_size() -> None:
    here = buffers.thread_read_buffer(4096)
    assert buffers.thread_read_buffer(4096) is here
    assert buffers.thread_read_buffer(8192) is not here
    there: list[mmap.mmap] = []
    worker = threading.Thread(target=lambda: there.append(buffers.thread_read_buffer(4096)))
    worker.start()
    worker.join()
    # recv_into releases the GIL: two loops' threads must never read into the same memory.
    assert there[0] is not here
    assert buffers.address_of(there[0]) != buffers.address_of(here)


def test_thread_read_buffer_refuses_empty() -> None:
    with pytest.raises(ValueError):
        buffers.thread_read_buffer(0)


# ---------------------------------------------------------------------------------------------
# the transport


async def test_a_protocol_is_read_into_the_threads_page_aligned_buffer() -> None:
    transport, protocol, peer = await connect()
    try:
        peer.send(b"hello")
        await receive(protocol, 5)
        buf = transport._read_buffer
        assert buf is buffers.thread_read_buffer(transport._options.read_size)
        assert len(buf) == 256 * 1024
        assert buffers.address_of(buf) % PAGE == 0
        assert bytes(protocol.received) == b"hello"
    finally:
        transport.abort()
        peer.close()


async def test_data_received_gets_bytes_that_later_reads_do_not_change() -> None:
    # Two transports on one thread share the buffer: the second's reads overwrite what the
    # first's read left there, so anything but a copy would change under the first protocol.
    first_t, first, first_peer = await connect()
    second_t, second, second_peer = await connect()
    try:
        first_peer.send(b"A" * 1000)
        await receive(first, 1000)
        kept = list(first.chunks)
        for round_ in range(3):
            first_peer.send(bytes([round_]) * 1000)
            second_peer.send(b"B" * 5000)
            await receive(first, 1000 * (round_ + 2))
            await receive(second, 5000 * (round_ + 1))
        assert first_t._read_buffer is second_t._read_buffer
        assert all(type(chunk) is bytes for chunk in first.chunks + second.chunks)
        assert b"".join(kept) == b"A" * 1000
        assert bytes(first.received) == b"A" * 1000 + b"".join(bytes([i]) * 1000 for i in range(3))
        assert bytes(second.received) == b"B" * 15000
    finally:
        for t, p in ((first_t, first_peer), (second_t, second_peer)):
            t.abort()
            p.close()


@pytest.mark.parametrize("read_size", [7, 4096])
async def test_reads_are_at_most_read_size(read_size: int) -> None:
    transport, protocol, peer = await connect(read_size)
    try:
        payload = bytes(range(256)) * 40
        peer.sendall(payload)
        await receive(protocol, len(payload))
        assert bytes(protocol.received) == payload
        assert max(len(c) for c in protocol.chunks) == read_size
        assert len(transport._read_buffer) == read_size
        assert buffers.address_of(transport._read_buffer) % PAGE == 0
    finally:
        transport.abort()
        peer.close()


async def test_read_buffers_of_two_loops_threads_are_distinct() -> None:
    """A second loop in another thread reads into that thread's buffer, not this one's."""
    transport, protocol, peer = await connect()
    result: list[Any] = []

    async def other_loop_reader() -> None:
        t, p, s = await connect()
        try:
            s.send(b"x" * 100)
            await receive(p, 100)
            result.append((t._read_buffer, bytes(p.received)))
        finally:
            t.abort()
            s.close()

    try:
        peer.send(b"y" * 100)
        await receive(protocol, 100)
        worker = threading.Thread(target=lambda: asyncio.run(other_loop_reader()))
        worker.start()
        await asyncio.get_running_loop().run_in_executor(None, worker.join)
        other_buffer, other_data = result[0]
        assert other_data == b"x" * 100
        assert other_buffer is not transport._read_buffer
        assert bytes(protocol.received) == b"y" * 100
    finally:
        transport.abort()
        peer.close()


async def test_eof_after_data_through_the_aligned_buffer() -> None:
    transport, protocol, peer = await connect(factory=RecordingProtocol)
    try:
        peer.sendall(b"z" * 300_000)
        peer.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(10):
            await protocol.eof.wait()
        assert bytes(protocol.received) == b"z" * 300_000
    finally:
        transport.abort()
        peer.close()
