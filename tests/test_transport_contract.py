"""asyncio's transport contract where aiozc used to differ: each scenario runs on the stock
transport of the loop and on aiozc's, and both must behave the same (on both loops)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import aiozc
from aiozc.readiness import Multiplexer
from tcp_helpers import RecordingProtocol

Create = Callable[..., Awaitable[tuple[asyncio.Transport, Any]]]


@pytest.fixture(params=["stock", "aiozc"])
def create(request: pytest.FixtureRequest) -> Create:
    """``create_connection`` of the running loop's own transports, or of aiozc's."""
    if request.param == "aiozc":
        return aiozc.create_connection  # type: ignore[return-value]

    async def stock(factory: Callable[[], Any], host: str, port: int) -> Any:
        return await asyncio.get_running_loop().create_connection(factory, host, port)

    return stock


async def connect_to_plain_peer(
    create: Create, factory: Callable[[], Any] = RecordingProtocol
) -> tuple[asyncio.Transport, Any, socket.socket]:
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        transport, protocol = await create(factory, *listener.getsockname())
        peer, _ = await accept
    peer.setblocking(False)
    return transport, protocol, peer


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER {1, 0})."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("nbytes", [1000, 100_000])
@pytest.mark.parametrize("paused", [False, True], ids=["reading", "paused"])
async def test_data_before_a_peer_reset_is_delivered_then_the_error(
    create: Create, nbytes: int, paused: bool
) -> None:
    transport, protocol, peer = await connect_to_plain_peer(create)
    try:
        if paused:
            transport.pause_reading()
        peer.sendall(b"x" * nbytes)
        reset(peer)
        await asyncio.sleep(0.1)  # the reset is seen (EPOLLERR) before anything is read
        if paused:
            mux = Multiplexer.for_loop(asyncio.get_running_loop())
            before = mux.dispatches
            await asyncio.sleep(0.1)
            assert mux.dispatches - before <= 2, "a pending reset spun the loop"
            assert protocol.received == b""
            transport.resume_reading()
        lost = await asyncio.wait_for(protocol.lost, 5)
        assert len(protocol.received) == nbytes
        assert isinstance(lost, ConnectionResetError)
    finally:
        transport.abort()
