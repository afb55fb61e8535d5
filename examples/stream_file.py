"""Stream a large buffer to a server with write_zc and check it arrived intact.

    python examples/stream_file.py [--mib 512] [--uvloop]

The server hashes what it receives; the client reuses one buffer for every write, which is
only safe because it awaits each write's completion (the kernel released the pages) before
refilling it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time

import uvloop

import aiozc

CHUNK = 4 << 20


async def main(mib: int) -> None:
    received = hashlib.sha256()
    finished = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: aiozc.ZeroCopyStreamWriter) -> None:
        while data := await reader.read(1 << 20):
            received.update(data)
        writer.close()
        finished.set()

    async with await aiozc.start_server(handle, "127.0.0.1", 0) as server:
        reader, writer = await aiozc.open_connection(*server.sockets[0].getsockname())
        buf = bytearray(CHUNK)
        sent = hashlib.sha256()
        start = time.perf_counter()
        for _ in range(mib * (1 << 20) // CHUNK):
            buf[:] = os.urandom(CHUNK)  # new data in the same buffer...
            sent.update(buf)
            completion = await writer.write_zc(buf)  # ...only after the kernel let go of it
        elapsed = time.perf_counter() - start
        writer.close()
        await writer.wait_closed()
        await finished.wait()
        stats = writer.transport.stats  # type: ignore[attr-defined]
        print(f"{mib} MiB in {elapsed:.2f}s ({mib / 1024 / elapsed:.2f} GiB/s incl. urandom)")
        print(f"last completion: {completion}")
        print(f"state: {stats.state} ({stats.reason})")
        print("sha256 match:", received.hexdigest() == sent.hexdigest())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    (uvloop.run if args.uvloop else asyncio.run)(main(args.mib))
