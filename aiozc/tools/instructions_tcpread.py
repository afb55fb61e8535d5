"""``bench instructions --families tcpread``: a ``Protocol``'s read path, per read.

The measured process (under callgrind) connects to a peer process outside it and receives
through ``data_received`` on the loop's own transport or on aiozc's:

* ``11B``: ping-pong, the peer sends 11 bytes and waits for a 1-byte reply, so every read is
  one small message (the aiohttp-request case); per call = one read plus one 1-byte write;
* ``11B_oswrite``: the same ping-pong, but the reply is an ``os.write`` on the socket's fd,
  past the transport: per call = one read plus a constant, so the difference between two
  transports is their read path alone (receive, dispatch, ``data_received``);
* ``256KiB``: the peer streams ``calls`` x 256 KiB (reads as large as the transport's read
  size, 256 KiB for all of them); per call = 256 KiB received, whatever the reads were.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from . import udp_cases

SIZES = {"11B": 11, "11B_oswrite": 11, "256KiB": 256 * 1024}
# Cases whose reply goes past the transport (os.write on its fd).
OS_WRITE_REPLY = {"11B_oswrite"}


def peer_main(listener: socket.socket) -> None:
    """Per connection: an 8-byte count and 8-byte size, then the messages or the stream."""
    from .benchkit import pin_to_cpu, recv_exactly

    pin_to_cpu(1)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            header = recv_exactly(conn, 16)
            count, size = int.from_bytes(header[:8], "big"), int.from_bytes(header[8:], "big")
            if size < 1024:
                message = b"m" * size
                for _ in range(count):
                    conn.sendall(message)
                    if not recv_exactly(conn, 1):
                        break
            else:
                block = memoryview(bytes(size))
                for _ in range(count):
                    conn.sendall(block)
                recv_exactly(conn, 1)


class _Reader(asyncio.Protocol):
    def __init__(self, count: int, size: int, os_write_reply: bool = False) -> None:
        self.expected = count * size
        self.ping_pong = size < 1024
        self.os_write_reply = os_write_reply
        self.fd = -1
        self.got = 0
        self.transport: Any = None
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.ping_pong and self.os_write_reply:
            os.write(self.fd, b"k")  # 1 byte into an empty send buffer: never short
        elif self.ping_pong:
            self.transport.write(b"k")
        if self.got >= self.expected and not self.done.done():
            if not self.ping_pong:
                self.transport.write(b"k")
            self.done.set_result(self.got)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


async def measure(port: int, kind: str, count: int) -> dict[str, Any]:
    """One measured run: ``count`` messages (11B) or 256 KiB blocks, inside Clock hooks."""
    import aiozc

    _, transport_kind, size_name = kind.split("-", 2)
    size = SIZES[size_name]
    loop = asyncio.get_running_loop()

    def factory() -> _Reader:
        return _Reader(count, size, size_name in OS_WRITE_REPLY)

    if transport_kind == "stock":
        transport, proto = await loop.create_connection(factory, "127.0.0.1", port)
    else:
        transport, proto = await aiozc.create_connection(factory, "127.0.0.1", port)
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = udp_cases.Clock()
    transport.write(count.to_bytes(8, "big") + size.to_bytes(8, "big"))
    got = await proto.done
    timed = clock.stop()
    transport.close()
    if got != count * size:
        raise RuntimeError(f"{kind}: received {got} bytes, expected {count * size}")
    return timed
