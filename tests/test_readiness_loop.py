"""A quiet TCP socket served by the loop's own selector (readiness.py, on_loop): a peer's reset
or hang-up there is handled as in the private epoll, on asyncio's loop and on uvloop (whose poll
handle runs its callback once on POLLERR and then closes itself; the private epoll's sentinel
serves the rest)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from aiozc.readiness import Multiplexer
from tcp_helpers import connect_pair


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("nbytes", [1000, 100_000])
async def test_a_reset_while_on_the_loop_delivers_the_data_then_the_error_once(nbytes: int) -> None:
    # 1 KiB reads: one readiness callback reads at most 16 KiB, so the data before the reset
    # needs more events than uvloop's one callback on POLLERR gives.
    pair = await connect_pair(read_size=1024)
    mux = Multiplexer.for_loop(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0)
        assert mux.is_on_loop(pair.transport._fd)
        data = bytes(range(256)) * (nbytes // 256) + b"z" * (nbytes % 256)
        pair.peer.setblocking(True)
        pair.peer.sendall(data)
        _reset(pair.peer)  # data and RST are both queued before the loop looks
        lost = await asyncio.wait_for(pair.protocol.lost, 5)
        await asyncio.sleep(0.05)
        assert bytes(pair.protocol.received) == data
        assert isinstance(lost, ConnectionResetError)
        assert pair.protocol.events.count("lost") == 1
    finally:
        pair.transport.abort()


async def test_a_reset_without_data_while_on_the_loop_ends_the_connection() -> None:
    pair = await connect_pair()
    try:
        await asyncio.sleep(0)
        _reset(pair.peer)
        lost = await asyncio.wait_for(pair.protocol.lost, 5)
        assert isinstance(lost, ConnectionResetError)
        await asyncio.sleep(0.05)
        assert pair.protocol.events.count("lost") == 1
    finally:
        pair.transport.abort()


async def test_a_hangup_while_reading_on_the_loop_does_not_spin() -> None:
    pair = await connect_pair()
    mux = Multiplexer.for_loop(asyncio.get_running_loop())
    try:
        transport = pair.transport
        await asyncio.sleep(0)
        assert mux.is_on_loop(transport._fd)
        pair.peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(pair.protocol.eof.wait(), 5)  # eof_received keeps it open
        transport.write_eof()  # both directions shut: EPOLLHUP from now on
        await asyncio.sleep(0.05)
        before = mux.dispatches
        loop_time = asyncio.get_running_loop().time()
        ticks = 0
        while asyncio.get_running_loop().time() - loop_time < 0.3:
            await asyncio.sleep(0.01)
            ticks += 1
        assert mux.dispatches - before <= 2, "EPOLLHUP spun the private epoll"
        assert ticks > 5  # the loop was not starved by a spinning reader either
        assert not pair.protocol.lost.done()
        transport.close()
        assert await asyncio.wait_for(pair.protocol.lost, 5) is None
    finally:
        pair.close()


async def test_the_socket_reads_on_after_leaving_and_rejoining_the_loop_many_times() -> None:
    """Pausing leaves the loop's selector and resuming returns; on uvloop each return makes a
    new poll handle (~6 system calls), so after a few a socket stays in the private epoll."""
    loop = asyncio.get_running_loop()
    pair = await connect_pair()
    mux = Multiplexer.for_loop(loop)
    on_loop_after: list[bool] = []
    try:
        await asyncio.sleep(0)
        want = b""
        for i in range(20):
            pair.transport.pause_reading()
            assert not mux.is_on_loop(pair.transport._fd)
            chunk = b"%d;" % i
            pair.peer.send(chunk)
            want += chunk
            await asyncio.sleep(0)
            pair.transport.resume_reading()
            on_loop_after.append(mux.is_on_loop(pair.transport._fd))
        for _ in range(300):
            if bytes(pair.protocol.received) == want:
                break
            await asyncio.sleep(0.01)
        assert bytes(pair.protocol.received) == want
        if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            assert all(on_loop_after)  # asyncio's selector: the same cost either way
        else:
            assert on_loop_after[0] and not any(on_loop_after[10:])
    finally:
        pair.close()
