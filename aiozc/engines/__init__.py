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
* ``"auto"`` (default): io_uring for datagram sockets of transports that can drive it, when
  the probe says it works; MSG_ZEROCOPY otherwise, silently. TCP stays on MSG_ZEROCOPY: a TCP
  socket has at most one SEND_ZC in flight (stream order), so io_uring saves no syscalls
  there, and every TCP zero-copy send on one host is reported copied anyway (PLATFORM.md),
  after which both engines send by plain copy. UDP is where many sends are in flight at once
  and one io_uring_enter submits a whole loop iteration's datagrams.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Protocol

Address = object

ENGINE_NAMES = ("auto", "msg_zerocopy", "io_uring", "copy")


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
    raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(map(repr, ENGINE_NAMES))}")


def _io_uring_engine(loop: asyncio.AbstractEventLoop | None, async_capable: bool) -> Engine:
    from .io_uring import IoUringEngine, uring_unavailable_reason

    if not async_capable or loop is None:
        raise EngineUnavailable(errno.EOPNOTSUPP, "engine='io_uring' is not supported by this transport")
    reason = uring_unavailable_reason()
    if reason is not None:
        raise EngineUnavailable(errno.EOPNOTSUPP, f"engine='io_uring' unavailable: {reason}")
    return IoUringEngine(loop)


def _auto_picks_io_uring(
    sock: socket.socket | None, loop: asyncio.AbstractEventLoop | None, async_capable: bool
) -> bool:
    if not async_capable or loop is None or sock is None or sock.type != socket.SOCK_DGRAM:
        return False
    from .io_uring import uring_unavailable_reason

    return uring_unavailable_reason() is None
