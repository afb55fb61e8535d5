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
* ``"auto"`` (default): io_uring for a datagram socket (:data:`AUTO_IO_URING_TYPES`) when
  the probe says io_uring works, the transport can drive it and the compiled core is in use,
  MSG_ZEROCOPY otherwise, silently (``stats.engine`` and ``python -m aiozc probe`` say which):

  - ``coalesce_zc=True``: any such socket. A registered :class:`~aiozc.buffers.BufferPool` is
    not needed (on the pure path it still is): coalesced batches from ordinary buffers ran
    1.16-1.40x the MSG_ZEROCOPY engine's (2026-12-01 19:00-19:25 UTC, two quiet full runs;
    2.10/1.85x and 2.19/2.08x of stock ``sendto`` on asyncio/uvloop against 1.58/1.53x and
    1.88/1.48x): the compiled fill and reap made the per-SQE cost smaller than what SEND_ZC
    saves over the error queue.
  - ``sendto_zc()`` sent during the call (no ``coalesce_zc``): a connected AF_INET/AF_INET6
    socket, the one the compiled per-call path (aiozc/_sys/_core_udpring.c) serves. Two quiet
    full runs (2026-12-02 00:39-01:04 UTC on main 4726b6d, docs/bench/udp-sink.txt and
    udp-sink-2.txt, 64000 B into the ifb sink, window of 256): 2.28/2.02x and 2.29/2.07x of
    stock ``sendto`` (asyncio/uvloop) against MSG_ZEROCOPY's 1.68/1.42x and 1.86/1.77x, i.e.
    1.17-1.43x of per-call MSG_ZEROCOPY in GB/s and CPU s/GB in both runs on both loops;
    callgrind 4.3k/3.6k user instructions per datagram (MSG_ZEROCOPY 4.0k/3.3k). Unconnected,
    every datagram takes the general Python path, whose SQE fill ran 0.39-0.62x of stock on
    io_uring: MSG_ZEROCOPY there. Without the compiled core, MSG_ZEROCOPY too.

  Ask for ``engine="io_uring"`` to send a pool's slices with ``sendto_zc_many()`` on it.
  Earlier measurements (kernel 6.18, CPython 3.11, 2 shared cores; ``python -m aiozc bench udp-sink``, 64000 B datagrams into
  the ifb sink, median of 3, same API and loop on both engines; before the compiled ring core):

  - from a registered BufferPool (fixed buffers): sendto_zc_many 1.25-1.27x the MSG_ZEROCOPY
    engine, sendto_zc with coalesce_zc 1.21-1.25x, sendto_zc sent during the call 1.01x.
    The kernel skips pinning pages (~2.0 us per datagram against ~2.8 us).
  - from ordinary buffers: 0.95-0.97x batched, 0.88-0.90x sent during the call: filling an
    SQE and reading two CQEs in Python cost about what the kernel saved (then "auto" waited for a
    registered pool; the compiled core since made ordinary buffers pay too, see above).
  - TCP over loopback: every zero-copy send is reported copied, both engines end up sending
    by plain copy (noise-level differences); with zero-copy forced on every send io_uring
    ran 0.65x at 64 KiB (one SEND_ZC in flight per socket costs a loop iteration per write).
    So TCP stays on MSG_ZEROCOPY.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Protocol

from .._sys.kernel import raw_type

Address = object

ENGINE_NAMES = ("auto", "msg_zerocopy", "io_uring", "copy")
# Socket types for which engine="auto" picks io_uring (where io_uring is available); see the
# docstring.
AUTO_IO_URING_TYPES: frozenset[int] = frozenset({socket.SOCK_DGRAM})
# Families whose connected datagram sockets the compiled per-call path serves (datagram/hot.py
# needs UDP's size limit): "auto" picks io_uring for a transport that does not batch only there.
AUTO_PER_CALL_FAMILIES: frozenset[int] = frozenset({socket.AF_INET, socket.AF_INET6})


class SendPending(BlockingIOError):
    """Raised by the stream transport's ``_send_zc`` when an engine took a zero-copy send whose result comes later
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
    batches_sends: bool = True,
) -> Engine:
    """The engine ``name`` for ``sock`` on ``loop``.

    ``async_capable``: the transport can drive an engine that completes sends later
    (``submit_zc``); without it ``"io_uring"`` is refused and ``"auto"`` never picks it.
    ``batches_sends``: the transport hands the engine batches (a datagram transport with
    ``coalesce_zc=True``); without it ``"auto"`` picks io_uring only where the compiled
    per-call path sends (a connected UDP socket, the compiled core): through the general
    Python path one SEND_ZC per call runs slower than stock (see the docstring).
    """
    if name == "msg_zerocopy":
        return MsgZeroCopyEngine()
    if name == "copy":
        return CopyEngine()
    if name == "io_uring":
        return _io_uring_engine(loop, async_capable)
    if name == "auto":
        if _auto_picks_io_uring(sock, loop, async_capable, batches_sends):
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
    sock: socket.socket | None, loop: asyncio.AbstractEventLoop | None, async_capable: bool,
    batches_sends: bool,
) -> bool:
    if not async_capable or loop is None or sock is None:
        return False
    if raw_type(sock) not in AUTO_IO_URING_TYPES:
        return False
    from .._sys import core as _core
    from .io_uring import LoopRing, uring_unavailable_reason

    if not batches_sends and not (_core.compiled and _per_call_path_serves(sock)):
        return False
    if uring_unavailable_reason() is not None:
        return False
    if _core.compiled:
        return True
    # The pure path fills SQEs and reaps CQEs in Python: from ordinary buffers that cost about
    # what the kernel saves (0.95-0.97x batched, see the docstring); a registered pool pays.
    ring = LoopRing.existing(loop)
    return ring is not None and ring.has_pools


def _per_call_path_serves(sock: socket.socket) -> bool:
    """Whether the compiled per-call datagram path can send for ``sock`` (datagram/hot.py)."""
    if sock.family not in AUTO_PER_CALL_FAMILIES:
        return False
    try:
        sock.getpeername()
    except OSError:
        return False  # unconnected: every datagram takes the general path
    return True


# Imported here, not in get_engine: a function-level import runs the import machinery on every
# call (get_engine runs once per accepted connection), and these need nothing from above.
from .copy import CopyEngine  # noqa: E402
from .msg_zerocopy import MsgZeroCopyEngine  # noqa: E402
