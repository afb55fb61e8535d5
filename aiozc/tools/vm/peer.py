"""The guest tests' peer: a host process inside the rig's namespace, steered per connection.

Each connection starts with one JSON line saying what the peer does with it (``op``); results
come back as one JSON line. The peer does the hashing: sha256 under software emulation costs
the guest far more than the sends being tested, so the guest sends a stream the peer can
regenerate from a seed (``pattern``) and never hashes anything itself.

Any op: ``rcvbuf`` sets the peer's SO_RCVBUF first (it also stops the window's autotuning).

ops:
  sink     read until EOF (after ``delay`` s, ``chunk_delay`` s between reads of ``read_size``),
           reply {"bytes", "sha256", "expected"} (expected: sha256 of ``expect`` = pattern args)
  reset    read ``after`` bytes (after ``delay`` s), then reset the connection (SO_LINGER 0)
  http_get GET ``url`` (a server in the guest), reply {"status", "bytes", "sha256", "expected"}
  tensors  serve aiozc.tensors on a new port, reply {"port"}; once that channel ends, reply
           {"arrays": [{"dtype", "shape", "sha256", "expected"}, ...]} on this connection
           (expected: pattern sha256 for each entry of ``expect`` = [{seed, pool, total}])
  gated    listen on a new port (SO_RCVBUF ``listen_rcvbuf`` set before listen, so the window the
           guest sees is small from the SYN on), reply {"port"}, accept one connection and read
           *nothing* from it until told: each further line on this connection, {"read": N},
           reads it until N bytes in all have been read and replies {"bytes"}; {"read": null}
           reads to EOF and replies {"bytes", "sha256", "expected"}. A plain blocking socket in
           a thread, not asyncio's streams: a StreamReader's transport reads ahead (up to
           2 x limit = 2 MiB here) whatever the handler does, and every byte it reads is ACKed,
           so "the peer has not read" would not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import socket
import struct
import sys
from typing import Any

_GATED_TIMEOUT = 120.0  # a test that never sends its next command must not hold a thread forever


def pattern_pool(seed: int, size: int) -> bytes:
    """The bytes both ends derive from ``seed``: the stream is this pool repeated."""
    return random.Random(seed).randbytes(size)


def pattern_sha256(seed: int, pool_size: int, total: int) -> str:
    pool = pattern_pool(seed, pool_size)
    digest = hashlib.sha256()
    whole, rest = divmod(total, pool_size)
    for _ in range(whole):
        digest.update(pool)
    digest.update(pool[:rest])
    return digest.hexdigest()


async def _reply(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    writer.write(json.dumps(payload).encode() + b"\n")
    await writer.drain()


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: dict[str, Any]) -> None:
    if spec.get("delay"):
        # Paused, or the transport would go on reading (and the kernel ACKing) up to 2 MiB
        # ahead of the handler: the delay would not hold the sender back.
        transport = writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        await asyncio.sleep(spec["delay"])
        transport.resume_reading()
    digest, total = hashlib.sha256(), 0
    read_size, chunk_delay = spec.get("read_size", 1 << 20), spec.get("chunk_delay", 0)
    try:
        while chunk := await reader.read(read_size):
            digest.update(chunk)
            total += len(chunk)
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
    except ConnectionError as exc:
        print(f"peer: sink ended by {exc!r} after {total} bytes", file=sys.stderr)
        return
    expect = spec.get("expect")
    expected = pattern_sha256(expect["seed"], expect["pool"], expect["total"]) if expect else None
    await _reply(writer, {"bytes": total, "sha256": digest.hexdigest(), "expected": expected})


async def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: dict[str, Any]) -> None:
    await asyncio.sleep(spec.get("delay", 0))
    if spec.get("after", 0):
        await reader.readexactly(spec["after"])
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: dict[str, Any]) -> None:
    import aiohttp  # noqa: PLC0415 - only this op needs it

    digest, total = hashlib.sha256(), 0
    async with aiohttp.ClientSession() as session, session.get(spec["url"]) as response:
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            total += len(chunk)
    expect = spec.get("expect")
    expected = pattern_sha256(expect["seed"], expect["pool"], expect["total"]) if expect else None
    await _reply(writer, {"status": response.status, "bytes": total, "sha256": digest.hexdigest(), "expected": expected})


async def _tensors(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: dict[str, Any]) -> None:
    from aiozc import tensors  # noqa: PLC0415 - numpy only for this op

    arrays: list[dict[str, Any]] = []
    finished = asyncio.get_running_loop().create_future()

    expected = [pattern_sha256(e["seed"], e["pool"], e["total"]) for e in spec.get("expect", [])]

    async def handler(chan: Any) -> None:
        try:
            async for array in chan:
                digest = hashlib.sha256(array.tobytes()).hexdigest()
                want = expected[len(arrays)] if len(arrays) < len(expected) else None
                arrays.append({"dtype": str(array.dtype), "shape": list(array.shape), "sha256": digest, "expected": want})
        finally:
            if not finished.done():
                finished.set_result(None)

    server = await tensors.serve(handler, spec["host"], 0)
    try:
        await _reply(writer, {"port": server.sockets[0].getsockname()[1]})
        await finished
        await _reply(writer, {"arrays": arrays})
    finally:
        server.close()


class _GatedReader:
    """The accepted socket of a ``gated`` op, read only as far as each command says."""

    def __init__(self, sock: socket.socket, expect: dict[str, Any] | None) -> None:
        self.sock, self.expect = sock, expect
        self.digest, self.total = hashlib.sha256(), 0

    def read(self, until: int | None) -> dict[str, Any]:
        buf = memoryview(bytearray(1 << 20))
        while until is None or self.total < until:
            want = len(buf) if until is None else min(len(buf), until - self.total)
            n = self.sock.recv_into(buf, want)
            if n == 0:
                break
            self.digest.update(buf[:n])
            self.total += n
        if until is not None:
            return {"bytes": self.total}
        e = self.expect
        expected = pattern_sha256(e["seed"], e["pool"], e["total"]) if e else None
        return {"bytes": self.total, "sha256": self.digest.hexdigest(), "expected": expected}


async def _gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: dict[str, Any]) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, spec.get("listen_rcvbuf", 128 << 10))
        listener.bind((writer.get_extra_info("sockname")[0], 0))
        listener.listen(1)
        listener.settimeout(_GATED_TIMEOUT)
        await _reply(writer, {"port": listener.getsockname()[1]})
        sock, _ = await asyncio.to_thread(listener.accept)
    finally:
        listener.close()
    with sock:
        sock.settimeout(_GATED_TIMEOUT)
        gated = _GatedReader(sock, spec.get("expect"))
        while line := await reader.readline():
            until = json.loads(line)["read"]
            await _reply(writer, await asyncio.to_thread(gated.read, until))
            if until is None:
                return


_OPS = {"sink": _sink, "gated": _gated, "reset": _reset, "http_get": _http_get, "tensors": _tensors}


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        if not line:  # connected and gone (a test checking that a connect is refused)
            return
        spec = json.loads(line)
        if "rcvbuf" in spec:  # a small window keeps the guest's sends queued, pages pinned
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, spec["rcvbuf"])
        await _OPS[spec["op"]](reader, writer, spec)
    except Exception as exc:  # one bad connection must not stop the peer for the other tests
        print(f"peer: {exc!r}", file=sys.stderr)
    finally:
        writer.close()


async def _serve(host: str, port: int) -> None:
    server = await asyncio.start_server(_handle, host, port, limit=1 << 20)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
