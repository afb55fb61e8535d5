"""What the datagram transport's modules share: limits, the queued datagram, small helpers."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._sys import core as _core, kernel as _kernel
from ..base import logger
from ..completions import MASK32, Completion
from ..policy import ZeroCopyState

if TYPE_CHECKING:
    import collections

    from .._sys import mmsg as _mmsg
    from ..base import ZeroCopyTransportBase
    from .batching import _Batch

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def _core_pins() -> tuple[Any, Any, Any]:
    """The compiled core's PinSet and Coalescer types and set_results() (_core_pins.c,
    _core_coalesce.c), or (None, None, None)."""
    if not _core.compiled:
        return None, None, None
    found: dict[str, Any] = {"Future": asyncio.Future}
    if _core.lib.zc_pins_export(id(found), id(asyncio.InvalidStateError)) < 0:
        return None, None, None  # out of memory at import: the cffi pins
    return found["PinSet"], found["Coalescer"], found["set_results"]


# PinSet: a batch's buffer exports and its sendmmsg in C (the compiled path; else cffi pins
# in a list, see aiozc._sys.mmsg). Coalescer: coalesce_zc's sendto_zc() (coalescing.py).
# set_results(futures, result): a flush's fan-out.
PinSet, Coalescer, set_results = _core_pins()

# Largest UDP payload: 65535 minus the IPv4 (20) and UDP (8) headers; IPv6's payload-length field
# excludes its own header, so 65535 - 8 there (no jumbograms).
MAX_UDP4_PAYLOAD = 65507
MAX_UDP6_PAYLOAD = 65527
# A datagram never exceeds 64 KiB, so reading with a larger buffer only costs allocation.
_INET_READ_SIZE = 65536
# Datagrams read per readiness event: level-triggered epoll would call again anyway, reading a
# few in one go saves dispatches under load without starving other sockets.
_READS_PER_EVENT = 32
# A send refused because of an earlier datagram's ICMP error is retried this many times.
_STALE_ERROR_RETRIES = 3
_LOG_LOST_SENDS = 5
_ZEROCOPY = ZeroCopyState.ZEROCOPY
_COPY_FALLBACK = ZeroCopyState.COPY_FALLBACK
# Drain the error queue every this many zero-copy sends (unless the caller chose a value). Each
# drain costs one read per message plus the read that finds the queue empty, and the kernel merges
# contiguous notifications into one message, so a drain every 32 sends costs 2/32 = 0.0625 reads
# per send; every 64 sends halves that (measured on the ifb sink, both loops) with at most 64
# datagrams pinned between drains.
UDP_ERRQUEUE_DRAIN_EVERY = 64
# Datagrams smaller than this are sent by copy unless the caller chose a threshold. On the ifb
# sink (kernel 6.18, CPython 3.11, uvloop) the Python bookkeeping of a zero-copy datagram costs
# more CPU than copying it up to ~48 KiB: aiozc zero-copy vs aiozc copy was 0.66x vs 0.83x of
# stock asyncio at 32 KiB, 0.86x vs 0.89x at 48 KiB, ~0.95x vs ~0.9x at 64000 B (after the
# tracker's one-step sent_whole: 0.79x vs 0.83x, 1.02x vs 0.87x, 1.12x vs 0.88x).
UDP_ZC_THRESHOLD = 48 * 1024


def max_datagram_size(sock: socket.socket) -> int | None:
    """Largest payload the kernel accepts on ``sock``, or ``None`` if not a UDP/IP socket."""
    if sock.type != socket.SOCK_DGRAM:
        return None
    if sock.family == socket.AF_INET:
        return MAX_UDP4_PAYLOAD
    if sock.family == socket.AF_INET6:
        return MAX_UDP6_PAYLOAD
    return None


class _Datagram:
    """One queued datagram. ``held`` data may go zero-copy and stays referenced until resolved."""

    __slots__ = ("view", "nbytes", "addr", "future", "held", "copy_only", "batch")

    def __init__(
        self,
        view: memoryview,
        addr: Any,
        future: asyncio.Future[Completion] | None,
        held: bool,
        batch: _Batch | None = None,
    ) -> None:
        self.view = view
        self.nbytes = len(view)  # the view is released once sent: keep its length
        self.addr = addr
        self.future = future
        self.held = held
        self.copy_only = False  # set after the kernel refused it zero-copy (ENOBUFS)
        self.batch = batch  # the sendto_zc_many() call it belongs to, if any


def _result_error(res: int, nbytes: int) -> OSError:
    """The error of a datagram's io_uring result: -errno, or a short count (truncated)."""
    if res < 0:
        return OSError(-res, os.strerror(-res))
    return OSError(errno.EMSGSIZE, f"datagram truncated: {res} of {nbytes} bytes sent")


def _covers(lo: int, hi: int, ident: int) -> bool:
    """Is u32 ``ident`` inside the inclusive, possibly wrapping, range ``lo..hi``?"""
    return (ident - lo) & MASK32 <= (hi - lo) & MASK32


def _socket_error(message: _kernel.SocketError) -> OSError:
    """OSError (errno-specific subclass, e.g. ConnectionRefusedError) for an error-queue message."""
    text = os.strerror(message.errno)
    if message.origin in (_kernel.SO_EE_ORIGIN_ICMP, _kernel.SO_EE_ORIGIN_ICMP6):
        text += f" (ICMP type {message.type} code {message.code}"
        text += f", datagram to {message.address!r})" if message.address else ")"
    return OSError(message.errno, text)


def _enable_recverr_if_inet(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            _kernel.enable_recverr(sock)
        except OSError as exc:  # pragma: no cover - every Linux has it
            logger.debug("IP_RECVERR not enabled on %r: %s", sock, exc)


if TYPE_CHECKING:

    class _DatagramHost(ZeroCopyTransportBase, asyncio.DatagramTransport):
        """What each mixin of ZeroCopyDatagramTransport sees of the whole (for mypy only): the
        state ZeroCopyDatagramTransport.__init__ sets, and the methods one mixin calls on
        another (their definitions, in the module named above each group, are the truth;
        mypy checks that they agree)."""

        _queue: collections.deque[_Datagram]
        _address: Any
        _lost_sends: int
        _classifying: int | None
        _stale_icmp: bool
        _own_error_queued: bool
        _enobufs_datagram: _Datagram | None
        _enobufs_consumed: bool
        _max_size: int | None
        _fast_max: int
        _read_size: int
        _connected: bool
        _mmsg: _mmsg.MmsgSender | None
        _batching: bool
        _deferred_calls: list[tuple[str, Any]]
        _coalesce: bool
        _co: Any  # coalesce_zc's Coalescer (or PyCoalescer), None without one
        _co_handle: asyncio.Handle | None
        _hot_tokens: dict[int, Any]
        _hot_fns: dict[str, Any]
        _hot_d: Any
        _hot_loop: Any

        # hot.py
        def _hot_setup(self) -> None: ...
        def _hot_sync(self) -> None: ...
        def _hot_sendto_result(self, r: int, data: Any) -> None: ...
        def _hot_zc_returned(self, r: int, buf: Any) -> asyncio.Future[Completion]: ...
        def _hot_sendto_zc_result(self, r: int, buf: Any, future: asyncio.Future[Completion]) -> asyncio.Future[Completion]: ...
        def _hot_release(self) -> None: ...
        def _direct_sendto(self, data: bytearray | memoryview) -> None: ...
        # sending.py
        def _sendto(self, data: Any, addr: Any) -> None: ...
        def _sendto_zc(self, buf: Any, addr: Any) -> asyncio.Future[Completion]: ...
        def _destination(self, addr: Any) -> Any: ...
        def _submit(self, dg: _Datagram) -> None: ...
        def _send_failed_now(self, dg: _Datagram, exc: OSError) -> None: ...
        def _classify_send_error(self, exc: OSError) -> bool: ...
        def _drain_claiming_id(self, dg: _Datagram) -> bool: ...
        def _direct_send_failed(self, dg: _Datagram, exc: OSError, zerocopy: bool) -> asyncio.Future[Completion]: ...
        def _requeue(self, dg: _Datagram, at_head: bool = True) -> None: ...
        def _report_local_drop(self) -> None: ...
        def _finish_send(self, dg: _Datagram, sent: int, *, zerocopy: bool) -> None: ...
        def _send_address(self, dg: _Datagram) -> Any: ...
        def _flush(self) -> None: ...
        def _queued_send_failed(self, dg: _Datagram, exc: OSError) -> None: ...
        def _in_sendto(self, send: Callable[..., Any], *args: Any) -> None: ...
        def _report_soft_error(self, exc: OSError) -> None: ...
        def _error_received(self, exc: OSError) -> None: ...
        # batching.py
        def _send_batch(self, batch: _Batch, addr: Any) -> None: ...
        def _batch_fast_ok(self) -> bool: ...
        def _batch_datagram_done(self, dg: _Datagram) -> None: ...
        def _batch_step(self, batch: _Batch, count: int = 1) -> None: ...
        def _batch_refused(self, dg: _Datagram, exc: OSError) -> None: ...
        # coalescing.py
        def _sendto_zc_coalesced(self, buf: Any) -> asyncio.Future[Completion]: ...
        def _co_setup(self) -> None: ...
        def _flush_coalesced(self) -> None: ...
        def _fail_coalesced(self, error: Exception) -> None: ...
        # uring.py
        def _send_batch_uring(self, batch: _Batch) -> int: ...
        def _submit_datagram_zc(self, dg: _Datagram) -> None: ...

else:
    _DatagramHost = object
