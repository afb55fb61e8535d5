"""``python -m aiozc bench tensors --memory``: what tensor channels cost in resident memory.

Two measurements, each in a fresh process (``spawn``) on each loop, RSS read from
``/proc/self/statm`` before and after:

* idle: ``--connections`` pairs of channels in one process, each after one small frame each way;
  the cost per pair (two channels, two transports, two sockets).
* read-ahead: a peer sends ``--heavy-frames`` zero-byte frames with ~32 KiB of JSON metadata
  each while the handler is not in ``recv()``; how much the receiver's RSS grows
  (``readahead_bytes`` is 1 MiB).
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import socket
import struct
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .benchkit import run_on

HOST = "127.0.0.1"
LOOPS = ("asyncio", "uvloop")
# Nested one-element lists: ~30 bytes of Python objects per byte of JSON (tracemalloc).
HEAVY_METADATA = [[0]] * 6500


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _open_pairs(count: int) -> tuple[Any, list[Any]]:
    from aiozc import tensors

    peers: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(chan: Any) -> None:
        await peers.put(chan)
        await chan.wait_closed()

    server = await tensors.serve(handler, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    pairs = []
    for _ in range(count):
        client = await tensors.connect(HOST, port)
        peer = await peers.get()
        await client.send(np.arange(4))
        await peer.recv()
        await peer.send(np.arange(4))
        await client.recv()
        pairs.append((client, peer))
    return server, pairs


async def _idle(count: int) -> dict[str, float]:
    server, warm = await _open_pairs(2)  # code paths, spare buffers and the loop warmed up
    gc.collect()
    before = rss_bytes()
    _, pairs = await _open_pairs(count)
    gc.collect()
    grown = rss_bytes() - before
    for client, peer in warm + pairs:
        client.close()
        peer.close()
    server.close()
    return {"pairs": count, "rss_bytes_per_idle_pair": grown / count}


def _heavy_frame() -> bytes:
    raw = json.dumps({"dtype": "|u1", "shape": [0], "metadata": HEAVY_METADATA}).encode()
    return struct.pack("<4sHHIQ", b"AZTF", 1, 0, len(raw), 0) + raw


def _raw_sender(port: int, frames: int) -> None:
    """The hostile peer, in a process of its own so its buffers don't count."""
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(_heavy_frame() * frames)
        sock.recv(1)  # until the receiver closes


async def _readahead(frames: int) -> dict[str, float]:
    from aiozc import tensors

    go, done = asyncio.Event(), asyncio.get_running_loop().create_future()

    async def handler(chan: Any) -> None:
        await go.wait()  # not in recv() while the frames arrive
        for _ in range(frames):
            await chan.recv()
        done.set_result(None)

    server = await tensors.serve(handler, HOST, 0, readahead_bytes=1 << 20)
    gc.collect()
    before = rss_bytes()
    sender = multiprocessing.get_context("spawn").Process(
        target=_raw_sender, args=(server.sockets[0].getsockname()[1], frames), daemon=True
    )
    sender.start()
    await asyncio.sleep(3)  # the sender process starts and sends while nobody is in recv()
    grown = rss_bytes() - before
    go.set()
    await asyncio.wait_for(done, 30)
    server.close()
    sender.join(10)
    return {"frames": frames, "wire_bytes": len(_heavy_frame()) * frames, "rss_growth_bytes": grown}


def _child(what: str, loop: str, amount: int, report: Connection) -> None:
    measure = _idle if what == "idle" else _readahead
    report.send(run_on(loop, measure(amount)))


def _in_fresh_process(what: str, loop: str, amount: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    # Not a daemon: the read-ahead measurement starts a sender process of its own.
    process = ctx.Process(target=_child, args=(what, loop, amount, child))
    process.start()
    try:
        for _ in range(120):
            if parent.poll(1):
                return parent.recv()  # type: ignore[no-any-return]
            if not process.is_alive():
                break
        raise RuntimeError(f"{what} measurement on {loop} produced nothing")
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()


def run(connections: int = 200, heavy_frames: int = 160) -> dict[str, Any]:
    rows = []
    for loop in LOOPS:
        idle = _in_fresh_process("idle", loop, connections)
        heavy = _in_fresh_process("readahead", loop, heavy_frames)
        rows.append({"loop": loop, **idle, **heavy})
        print(
            f"{loop:8s} idle channel: {idle['rss_bytes_per_idle_pair'] / 2048:5.1f} KiB RSS "
            f"({connections} pairs in one process) | {heavy_frames} zero-byte frames with 32 KiB metadata "
            f"({heavy['wire_bytes'] / 1e6:.1f} MB on the wire) read ahead: "
            f"+{heavy['rss_growth_bytes'] / 2**20:.1f} MiB RSS"
        )
    return {"memory": rows}
