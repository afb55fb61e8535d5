"""A closed event loop that used aiozc can be freed, as one that did not.

The per-loop registries (readiness.Multiplexer, engines.io_uring.LoopRing) are weak-keyed by
the loop; a value holding its key strongly kept every such loop alive for good (a uvloop Loop
carries a 256 KiB read buffer: 258 KB of Python heap per asyncio.run(), tracemalloc), and with
it any transport its program left open, socket included.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

import aiozc
from aiozc.engines.io_uring import uring_unavailable_reason
from tcp_helpers import connect_pair

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop, "uvloop": uvloop.new_event_loop,
}


async def tcp_round(**options: Any) -> None:
    pair = await connect_pair(**options)
    future = pair.transport.write_zc(b"z" * 100_000)
    pair.transport.write(b"w" * 100)
    await pair.read_all(100_100)
    await asyncio.wait_for(future, 5)
    pair.close()
    await pair.protocol.lost


async def udp_round(**options: Any) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        transport, _ = await aiozc.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=sink.getsockname(), **options
        )
        await asyncio.wait_for(asyncio.gather(*(transport.sendto_zc(b"d" * 4000) for _ in range(8))), 5)
        transport.close()
        await asyncio.sleep(0.01)
    finally:
        sink.close()


async def left_open() -> None:
    """A program that forgets its transport (stock asyncio frees it, socket and all, once the
    loop is closed and nothing refers to it)."""
    pair = await connect_pair()
    pair.transport.write(b"x" * 100)
    await pair.read_all(100)
    pair.peer.close()


ROUNDS: dict[str, Callable[[], Any]] = {
    "tcp": tcp_round,
    "tcp-io_uring": lambda: tcp_round(engine="io_uring"),
    "udp": udp_round,
    "udp-io_uring": lambda: udp_round(engine="io_uring"),
    "tcp-left-open": left_open,
}


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("kind", sorted(ROUNDS))
def test_a_closed_loop_is_freed(loop_name: str, kind: str) -> None:
    if "io_uring" in kind and uring_unavailable_reason():
        pytest.skip(str(uring_unavailable_reason()))
    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(ROUNDS[kind]())
    finally:
        loop.close()
    ref = weakref.ref(loop)
    del loop
    if kind == "tcp-left-open":  # what is left open goes when the next loop starts with aiozc
        asyncio.run(tcp_round())
    fds = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # (the forgotten socket's)
        gc.collect()
    assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]
    if kind == "tcp-left-open":
        assert len(os.listdir("/proc/self/fd")) < fds  # the forgotten socket closed with it
