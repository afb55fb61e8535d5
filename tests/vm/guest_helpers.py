"""What the guest tests share: the peer in the rig's namespace, and a stream it can check.

These tests only mean something inside the guest (``make vm-test``): there the kernel sends TCP
from our pages through a virtio NIC. Outside they skip; on one host every TCP send is copied.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
from typing import Any

import pytest

import aiozc
from aiozc.tools.vm.peer import pattern_pool

IN_GUEST = bool(os.environ.get("AIOZC_VM_GUEST"))
guest_only = pytest.mark.skipif(
    not IN_GUEST, reason="runs inside the guest VM, where TCP zero-copy happens: `make vm-test`"
)

MiB = 1 << 20
POOL = (8 << 20) + 4093  # an odd size, so writes do not line up with the pool's end


def peer_address() -> tuple[str, int]:
    host, port = os.environ["AIOZC_VM_PEER"].rsplit(":", 1)
    return host, int(port)


@functools.lru_cache(maxsize=4)
def doubled_pool(seed: int) -> memoryview:
    """The pattern pool twice over: any stream offset starts a contiguous slice of up to POOL."""
    pool = pattern_pool(seed, POOL)
    return memoryview(pool + pool)


def stream_slice(seed: int, offset: int, size: int) -> memoryview:
    """Bytes ``offset .. offset+size`` of the pattern stream (the pool repeated)."""
    assert size <= POOL
    start = offset % POOL
    return doubled_pool(seed)[start : start + size]


class PeerClient(asyncio.Protocol):
    """Records flow-control calls and the order of events; collects the peer's JSON reply."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.flow: list[str] = []  # "pause" / "resume", in the order the transport called them
        self.events: list[str] = []
        self.reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.reply.add_done_callback(lambda f: f.cancelled() or f.exception())  # may go unread
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.queued_at_lost: int | None = None  # get_write_buffer_size() when connection_lost came
        self._transport: asyncio.WriteTransport | None = None
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._transport = transport

    def pause_writing(self) -> None:
        self.flow.append("pause")
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.flow.append("resume")
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\n" in self._buf and not self.reply.done():
            self.reply.set_result(json.loads(self._buf.split(b"\n", 1)[0]))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("connection_lost")
        if self._transport is not None:
            self.queued_at_lost = self._transport.get_write_buffer_size()
        self.can_write.set()
        if not self.lost.done():
            self.lost.set_result(exc)
        if not self.reply.done():
            self.reply.set_exception(ConnectionError(f"closed before the peer replied ({exc!r})"))


async def open_peer(spec: dict[str, Any], **options: Any) -> tuple[Any, PeerClient]:
    """An aiozc connection to the peer, its first line telling the peer what to do."""
    transport, proto = await aiozc.create_connection(PeerClient, *peer_address(), **options)
    transport.write(json.dumps(spec).encode() + b"\n")
    return transport, proto


async def ask_peer(spec: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any] | None]:
    """A plain control connection: send ``spec``, read the first reply line."""
    reader, writer = await asyncio.open_connection(*peer_address())
    writer.write(json.dumps(spec).encode() + b"\n")
    await writer.drain()
    line = await reader.readline()
    return reader, writer, json.loads(line) if line else None


class GatedPeer:
    """The peer's ``gated`` op (see peer.py): a receiver that reads only as far as it is told,
    so what the guest's kernel still holds unacknowledged is set by the test, not by timing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self._reader, self._writer, self.port = reader, writer, port

    async def read(self, until: int | None) -> dict[str, Any]:
        """Let the peer read up to ``until`` bytes in all (None: to EOF); its reply."""
        self._writer.write(json.dumps({"read": until}).encode() + b"\n")
        await self._writer.drain()
        line = await asyncio.wait_for(self._reader.readline(), 120)
        assert line, "the peer ended the gated connection"
        return dict(json.loads(line))

    def close(self) -> None:
        self._writer.close()


async def open_gated(expect: dict[str, Any], *, rcvbuf: int = 128 << 10, **options: Any) -> tuple[GatedPeer, Any, PeerClient]:
    """An aiozc connection to a gated receiver with SO_RCVBUF ``rcvbuf`` from its SYN on."""
    reader, writer, reply = await ask_peer({"op": "gated", "listen_rcvbuf": rcvbuf, "expect": expect})
    assert reply is not None
    gate = GatedPeer(reader, writer, reply["port"])
    host, _ = peer_address()
    transport, proto = await aiozc.create_connection(PeerClient, host, gate.port, **options)
    return gate, transport, proto


async def send_random_mix(transport: Any, proto: PeerClient, seed: int, total: int) -> tuple[list[Any], dict[str, int]]:
    """``total`` bytes of the pattern stream as a random mix of write (of immutable and of
    mutated buffers), writelines and write_zc of 1 B - 2 MiB; returns the write_zc
    completions and how many calls of each kind were made."""
    rng = random.Random(seed)
    futures, offset, kinds = [], 0, {"write": 0, "write_mutated": 0, "writelines": 0, "write_zc": 0}
    while offset < total:
        size = min(total - offset, rng.choice([rng.randrange(1, 4096), rng.randrange(16 << 10, 80 << 10), rng.randrange(MiB // 2, 2 * MiB)]))
        kind = rng.choice(list(kinds))
        kinds[kind] += 1
        chunk = stream_slice(seed, offset, size)
        if kind == "write":
            transport.write(chunk)
        elif kind == "write_mutated":  # asyncio's contract: the caller may reuse it at once
            scratch = bytearray(chunk)
            transport.write(scratch)
            scratch[:] = bytes(len(scratch))
        elif kind == "writelines":
            cut = rng.randrange(size + 1)
            transport.writelines([chunk[:cut], bytes(chunk[cut:])])
        else:
            futures.append(transport.write_zc(chunk))
        offset += size
        await proto.can_write.wait()
    return list(await asyncio.gather(*futures)), kinds


def alternates(flow: list[str]) -> bool:
    """pause, resume, pause, ... : never two of a kind in a row, starting with pause."""
    return all(call == ("pause" if i % 2 == 0 else "resume") for i, call in enumerate(flow))
