"""Channels for the aiozc.tensors tests: a connected pair, or a channel facing a raw peer."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiozc import tensors
from aiozc.tensors import Channel

HOST = "127.0.0.1"


class Pair:
    """A connected client channel and the server-side channel for it."""

    def __init__(self, server: Any, client: Channel, peer: Channel) -> None:
        self.server, self.client, self.peer = server, client, peer

    async def aclose(self) -> None:
        self.client.close()
        self.peer.close()
        await asyncio.wait_for(asyncio.gather(self.client.wait_closed(), self.peer.wait_closed()), 5)
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 5)


async def open_pair(**options: Any) -> Pair:
    peers: asyncio.Queue[Channel] = asyncio.Queue()

    async def handler(chan: Channel) -> None:
        await peers.put(chan)
        await chan.wait_closed()

    server = await tensors.serve(handler, HOST, 0, **options)
    port = server.sockets[0].getsockname()[1]
    client = await tensors.connect(HOST, port, **options)
    peer = await asyncio.wait_for(peers.get(), 5)
    return Pair(server, client, peer)


RawScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def channel_to_raw_script(script: RawScript, **options: Any) -> tuple[Channel, asyncio.Server]:
    """A tensor channel connected to a plain asyncio server that runs ``script`` on its side.

    The script may see the channel abort the connection: that ends it quietly.
    """

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except ConnectionError:
            writer.transport.abort()

    server = await asyncio.start_server(run, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    chan = await tensors.connect(HOST, port, **options)
    return chan, server


async def channel_to_raw_peer(payload: bytes, *, close: bool = True, **options: Any) -> tuple[Channel, Any]:
    """A tensor channel connected to a plain asyncio server that writes ``payload`` (then closes)."""

    async def raw_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        if close:
            writer.close()
        else:
            await reader.read()  # hold the connection until the channel closes it

    return await channel_to_raw_script(raw_handler, **options)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER {1, 0}: the kernel sends a RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def frame_bytes(header: dict[str, Any] | bytes, nbytes: int, body: bytes = b"", *, magic: bytes = b"AZTF") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<4sHHIQ", magic, 1, 0, len(raw), nbytes) + raw + body
