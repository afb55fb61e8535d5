"""Send engines: the only place where zero-copy mechanisms differ.

A transport owns the queue, the completion tracker, the policy and the stats; an engine only
knows how to hand one chunk to the kernel, with or without asking for zero-copy. Engines that
learn about completions themselves (io_uring) report them back through the transport's
``on_zerocopy_range``; MSG_ZEROCOPY completions arrive on the socket's error queue, which the
transport drains for every engine because ICMP errors (IP_RECVERR) arrive there too.

Choosing an engine (``engine=`` transport option)
-------------------------------------------------
* ``"msg_zerocopy"``: send(2) with MSG_ZEROCOPY, completions on the error queue.
* ``"io_uring"``: IORING_OP_SEND_ZC through one ring per event loop (engines/io_uring.py).
  Where io_uring cannot be used (``kernel.io_uring_disabled``, a seccomp filter, a kernel
  before 6.2 without REPORT_USAGE) asking for it explicitly raises
  :class:`EngineUnavailable` at transport creation, with the probe's reason: a caller who
  names an engine wants to know, not to benchmark the wrong one.
* ``"copy"``: plain copying sends.
* ``"auto"`` (default): io_uring for the socket types in :data:`AUTO_IO_URING_TYPES` when
  the probe says it works and the transport can drive it; MSG_ZEROCOPY otherwise, silently.
  The set is empty: io_uring was not faster in any case measured (kernel 6.18, CPython 3.11,
  uvloop, 2 shared cores; GB/s, medians of interleaved runs):

  - TCP loopback, 512 MiB of write_zc: with the default copy fallback both engines end up
    sending by plain copy (every zero-copy send on one host is reported copied): 64 KiB
    writes 2.94 (MSG_ZEROCOPY) vs 3.05 (io_uring), 1 MiB 3.86 vs 4.57 -- noise-level. With
    zero-copy forced on every send: 64 KiB 1.82 vs 1.19 (0.65x: one SEND_ZC in flight per
    socket costs a loop iteration per write), 1 MiB 1.89 vs 2.14.
  - UDP into the ifb sink, 64000 B datagrams (true zero-copy), same API and loop on both
    engines (``python -m aiozc bench udp-sink``, median of 3, uvloop; asyncio's loop within
    2%): sendto_zc 10.7 (MSG_ZEROCOPY) vs 8.9 (io_uring, 0.83x; BufferPool fixed buffers
    10.0, 0.93x), sendto_zc_many 17.1 vs 12.9 (0.76x; fixed buffers 14.9, 0.87x). CPU per
    GB gives the same ratios. The kernel side of io_uring is cheaper (~3.0 vs ~3.8 us per
    datagram, ~2.1 us with fixed buffers), but filling an SQE and reading two CQEs per
    datagram in Python costs more than one send(2) or one sendmmsg(2) slot.

  Add SOCK_DGRAM to AUTO_IO_URING_TYPES where measurements say otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Protocol

Address = object

ENGINE_NAMES = ("auto", "msg_zerocopy", "io_uring", "copy")
# Socket types for which engine="auto" picks io_uring (where available); see the docstring.
AUTO_IO_URING_TYPES: frozenset[int] = frozenset()


class SendPending(BlockingIOError):
    """Raised by ``_send_chunk`` when an engine took a zero-copy send whose result comes later
    (io_uring): callers that treat BlockingIOError as "wait" need no other change."""

    def __init__(self) -> None:
        super().__init__(errno.EAGAIN, "zero-copy send submitted; its result arrives later")


class EngineUnavailable(OSError):
    """``engine='io_uring'`` was asked for where io_uring cannot be used; ``str()`` says why."""


class Engine(Protocol):
    name: str

    def prepare(self, sock: socket.socket) -> str | None:
        """Make ``sock`` ready for zero-copy sends. ``None`` if it is, else why not."""

    def send(
        self, sock: socket.socket, data: memoryview, *, zerocopy: bool, address: Address | None = None
    ) -> int:
        """One send call. Returns bytes accepted; raises BlockingIOError / OSError like socket.send."""

    # Optional, asynchronous engines only (io_uring):
    #   submit_zc(sock, chunk, address, on_result, on_released) -> None
    #   forget(sock) -> None   # the transport is about to close sock


def get_engine(
    name: str,
    *,
    sock: socket.socket | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    async_capable: bool = False,
) -> Engine:
    """The engine ``name`` for ``sock`` on ``loop``.

    ``async_capable``: the transport can drive an engine that completes sends later
    (``submit_zc``); without it ``"io_uring"`` is refused and ``"auto"`` never picks it.
    """
    from .copy import CopyEngine
    from .msg_zerocopy import MsgZeroCopyEngine

    if name == "msg_zerocopy":
        return MsgZeroCopyEngine()
    if name == "copy":
        return CopyEngine()
    if name == "io_uring":
        return _io_uring_engine(loop, async_capable)
    if name == "auto":
        if _auto_picks_io_uring(sock, loop, async_capable):
            return _io_uring_engine(loop, async_capable)
        return MsgZeroCopyEngine()
    expected = ", ".join(map(repr, ENGINE_NAMES))
    raise ValueError(f"unknown engine {name!r}: expected one of {expected}")


def _io_uring_engine(loop: asyncio.AbstractEventLoop | None, async_capable: bool) -> Engine:
    from .io_uring import IoUringEngine, uring_unavailable_reason

    if not async_capable or loop is None:
        raise EngineUnavailable(
            errno.EOPNOTSUPP, "engine='io_uring' is not supported by this transport"
        )
    reason = uring_unavailable_reason()
    if reason is not None:
        raise EngineUnavailable(errno.EOPNOTSUPP, f"engine='io_uring' unavailable: {reason}")
    return IoUringEngine(loop)


def _auto_picks_io_uring(
    sock: socket.socket | None, loop: asyncio.AbstractEventLoop | None, async_capable: bool
) -> bool:
    if not async_capable or loop is None or sock is None:
        return False
    if sock.type not in AUTO_IO_URING_TYPES:
        return False
    from .io_uring import uring_unavailable_reason

    return uring_unavailable_reason() is None
