"""Where a TCP socket waits for readiness: the loop's own selector (asyncio's, or uvloop's with a
sentinel in the private epoll) until its first zero-copy send, the private epoll while its error
queue can hold notifications (readiness.py)."""

from __future__ import annotations

import asyncio
import selectors
import socket
from typing import Any

from aiozc.readiness import Multiplexer
from tcp_helpers import connect_pair


def _in_loop_selector(loop: asyncio.AbstractEventLoop, fd: int) -> int:
    """The events asyncio's selector watches for ``fd`` (0: not registered there)."""
    selector = getattr(loop, "_selector", None)
    if selector is None:  # uvloop
        return 0
    try:
        return int(selector.get_key(fd).events)
    except KeyError:
        return 0


def _on_asyncio(loop: asyncio.AbstractEventLoop) -> bool:
    return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)


async def _recv_exactly(peer: socket.socket, nbytes: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < nbytes:
        data += await loop.sock_recv(peer, nbytes - len(data))
    return bytes(data)


async def _received_after(pair: Any, data: bytes) -> int:
    """The peer sends ``data``; returns how often the private epoll was polled until it arrived."""
    mux = Multiplexer.for_loop(asyncio.get_running_loop())
    want = bytes(pair.protocol.received) + data
    before = mux.dispatches
    pair.peer.sendall(data)
    for _ in range(500):
        if bytes(pair.protocol.received) == want:
            break
        await asyncio.sleep(0.01)
    assert bytes(pair.protocol.received) == want
    return mux.dispatches - before


async def test_stream_socket_leaves_the_loop_selector_for_zerocopy_and_comes_back() -> None:
    loop = asyncio.get_running_loop()
    pair = await connect_pair()
    transport, fd = pair.transport, pair.transport._fd
    mux = Multiplexer.for_loop(loop)
    try:
        await asyncio.sleep(0)  # connection_made: reading starts
        native = _on_asyncio(loop)
        assert mux.is_on_loop(fd)
        assert _in_loop_selector(loop, fd) == (selectors.EVENT_READ if native else 0)
        transport.write(b"x" * 1000)  # a copy: stays where it is
        assert await _recv_exactly(pair.peer, 1000) == b"x" * 1000
        assert mux.is_on_loop(fd)
        assert await _received_after(pair, b"on the loop") == 0, "the private epoll served a read"

        big = b"z" * (1 << 20)
        seen_private = []
        # Loopback copies every zero-copy send: after fallback_after probes, copy-fallback.
        for _ in range(6):
            fut = transport.write_zc(big)
            if not fut.done():
                seen_private.append(not mux.is_on_loop(fd) and not _in_loop_selector(loop, fd))
            assert await _recv_exactly(pair.peer, len(big)) == big
            await asyncio.wait_for(fut, 10)
        assert seen_private and all(seen_private), "a zero-copy send left from the loop's selector"
        assert transport.get_extra_info("aiozc_stats").state == "copy-fallback"
        assert mux.is_on_loop(fd)  # no notification can come now: back on the loop
        assert _in_loop_selector(loop, fd) == (selectors.EVENT_READ if native else 0)

        # Reading still works wherever it waits, and pausing takes it off the selector.
        assert await _received_after(pair, b"ping") == 0
        transport.pause_reading()  # errors must still be seen: only the private epoll can
        assert _in_loop_selector(loop, fd) == 0 and not mux.is_on_loop(fd)
        transport.resume_reading()
        assert mux.is_on_loop(fd)
        assert _in_loop_selector(loop, fd) == (selectors.EVENT_READ if native else 0)
        assert await _received_after(pair, b"pong") == 0
    finally:
        pair.close()
    await asyncio.sleep(0.05)
    assert _in_loop_selector(loop, fd) == 0
    assert not mux.is_on_loop(fd)


async def test_a_reset_while_reading_is_paused_is_seen() -> None:
    """A socket that does not read leaves the loop's selector (which cannot watch for errors
    alone): a peer's reset then still ends the connection, as it did in the private epoll."""
    pair = await connect_pair()
    try:
        await asyncio.sleep(0)
        pair.transport.pause_reading()
        pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        pair.peer.close()
        lost = await asyncio.wait_for(pair.protocol.lost, 5)
        assert isinstance(lost, ConnectionResetError)
    finally:
        pair.transport.abort()


async def test_a_full_socket_waits_for_writability_in_the_loop_selector() -> None:
    loop = asyncio.get_running_loop()
    pair = await connect_pair()
    transport, fd = pair.transport, pair.transport._fd
    try:
        await asyncio.sleep(0)
        data = bytearray(8 << 20)  # mutable: copied, never zero-copy
        transport.write(data)
        assert transport.get_write_buffer_size() > 0  # the peer does not read yet
        if _on_asyncio(loop):
            assert _in_loop_selector(loop, fd) == selectors.EVENT_READ | selectors.EVENT_WRITE
        assert await _recv_exactly(pair.peer, len(data)) == bytes(len(data))
        assert transport.get_write_buffer_size() == 0
        if _on_asyncio(loop):
            assert _in_loop_selector(loop, fd) == selectors.EVENT_READ
    finally:
        pair.close()
