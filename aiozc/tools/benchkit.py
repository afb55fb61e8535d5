"""What the demo and the benchmarks share: running a coroutine on a named loop, a sending
protocol that honours pause_writing/resume_writing, and the UDP sink namespace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

if TYPE_CHECKING:
    from .netns import SinkNamespace

LOOPS = ("asyncio", "uvloop")
T = TypeVar("T")


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        return uvloop.new_event_loop()
    if name == "asyncio":
        return asyncio.SelectorEventLoop()
    raise ValueError(f"unknown loop {name!r}: expected one of {LOOPS}")


def run_on(name: str, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a fresh loop of the named kind."""
    loop = new_loop(name)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# The CPUs this process could use before any pin_to_cpu narrowed them. A child forked after
# its parent pinned itself inherits the parent's one CPU; choosing from that would put, e.g.,
# bench aiohttp's wrk (pin_to_cpu(1) in a preexec_fn) on the server's core (it did: its
# affinity mask was 1 during runs). Children inherit this list from the parent's memory.
_ALLOWED_CPUS = sorted(os.sched_getaffinity(0))


def pin_to_cpu(index: int) -> int | None:
    """Put this process on a core of its own, when there are two or more; returns that CPU.

    Sender and receiver of one benchmark on separate cores: the scheduler moving them around
    was the largest source of run-to-run spread on the 2-core machine (measured). ``index``
    counts in the CPUs allowed before any pinning, also in a child of a pinned process.
    """
    cpus = _ALLOWED_CPUS
    if len(cpus) < 2:
        return None
    cpu = cpus[index % len(cpus)]
    os.sched_setaffinity(0, {cpu})
    return cpu


class FlowControlledSender(asyncio.Protocol):
    """Writers await ``can_write`` after each write; ``reply`` gets the first bytes back;
    ``closed`` is done once the transport called ``connection_lost``."""

    def __init__(self) -> None:
        self.can_write = asyncio.Event()
        self.can_write.set()
        loop = asyncio.get_running_loop()
        self.reply: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.reply.done():
            # b"": closed without a reply (the demo never expects one); errors stay errors.
            if exc is None:
                self.reply.set_result(b"")
            else:
                self.reply.set_exception(exc)
        self.can_write.set()  # never leave a writer waiting on a dead connection
        if not self.closed.done():
            self.closed.set_result(None)


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``conn``, or fewer if the peer closes first."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


@contextlib.contextmanager
def loopback_peer(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """A forked process running ``serve(listener)`` on a loopback listener; yields the port.

    Forked, so the peer stays outside whatever measures this process (callgrind, rusage).
    """
    import multiprocessing as mp

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    peer = mp.get_context("fork").Process(target=serve, args=(listener,), daemon=True)
    peer.start()
    port = listener.getsockname()[1]
    listener.close()
    try:
        yield port
    finally:
        peer.kill()
        peer.join(timeout=10)


@contextlib.contextmanager
def udp_sink() -> Iterator["SinkNamespace"]:
    """A sink namespace (ifb0) whose rx_packets counter counts only the datagrams sent to it.

    IPv6 is off on ifb0: its router solicitations and MLD reports would add packets to the count.
    Root only; check :func:`aiozc.tools.netns.netns_available` first for the reason it cannot run.
    """
    from .netns import SinkNamespace

    with SinkNamespace(prefix="aiozc-sink") as ns:
        ns.set_sysctl("net.ipv6.conf.ifb0.disable_ipv6", 1)
        yield ns
