"""io_uring SEND_ZC: zero-copy sends whose result and release come back as CQEs.

How it fits the transports
--------------------------
A transport keeps one send path (``ZeroCopyTransportBase._send_chunk``). With this engine a
zero-copy-eligible chunk is not sent there and then: :meth:`IoUringEngine.submit_zc` queues an
SQE and ``_send_chunk`` raises :class:`~aiozc.engines.SendPending` (a BlockingIOError), which the
transports already treat as "wait". Later the engine calls

* ``on_result(res) -> id | None`` with the result CQE's ``res`` (bytes sent or ``-errno``); the
  transport accounts the send through the same tracker as MSG_ZEROCOPY and returns the u32 id
  the tracker assigned (None if the send consumed none);
* ``on_released(id, copied)`` with the notification CQE, if the result consumed an id.

Copying sends (the policy said no zero-copy) stay plain synchronous ``sock.send``.

One ring per event loop (:class:`LoopRing`, like :class:`~aiozc.readiness.Multiplexer`):
SQEs prepared during a loop iteration are submitted together by one ``loop.call_soon``;
completions are reaped right after that submit and whenever the ring's registered eventfd
(watched with ``loop.add_reader``) fires. The eventfd, not the ring fd: with
IORING_SETUP_DEFER_TASKRUN a ring fd watched by the loop missed a delayed notification
(PLATFORM.md).

Sends carry MSG_DONTWAIT: a full socket then completes at once with -EAGAIN (the transport
waits for EPOLLOUT through its multiplexer, as with send(2)) instead of io_uring arming an
internal poll. So no request outlives its result CQE inside the socket layer, and a transport
can close or abort its socket without cancelling anything: only the notification, which
needs no file reference, is still owed.

Buffers: each request keeps its chunk (a memoryview, which holds the caller's buffer export)
until its notification CQE, whatever happens to the awaiting task or the transport; the ring
keeps the destination sockaddr until the result CQE (``_uring.Ring._dests``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import weakref
from collections.abc import Callable
from typing import Any

from .. import _kernel, _uring
from .._uring import IORING_CQE_F_MORE, IORING_CQE_F_NOTIF, IORING_NOTIF_USAGE_ZC_COPIED

__all__ = ["IoUringEngine", "LoopRing", "uring_unavailable_reason"]

OnResult = Callable[[int], "int | None"]
OnReleased = Callable[[int, bool], None]

# SQ size: requests prepared in one loop iteration before a forced early submit.
_SQ_ENTRIES = 256
# Each SEND_ZC posts two CQEs and notifications may wait on a slow peer; NODROP keeps overflow
# anyway (reap() flushes it), this only makes overflow rare.
_CQ_ENTRIES = 8192
_STREAM_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
_DGRAM_FLAGS = socket.MSG_DONTWAIT


def uring_unavailable_reason() -> str | None:
    """None if SEND_ZC with REPORT_USAGE works here, else why not (cached probes).

    REPORT_USAGE (Linux 6.2+) is required: without it a notification cannot say whether the
    kernel copied, and the copy-fallback policy would never learn that loopback copies.
    """
    reason = _uring.probe()
    if reason is not None:
        return reason
    if not _uring.report_usage_supported():
        return "io_uring SEND_ZC lacks IORING_SEND_ZC_REPORT_USAGE (needs Linux 6.2+)"
    return None


class _Request:
    """One SEND_ZC in flight: what it must keep alive and whom to tell."""

    __slots__ = ("chunk", "on_result", "on_released", "ident", "notified")

    def __init__(self, chunk: memoryview, on_result: OnResult, on_released: OnReleased) -> None:
        self.chunk: memoryview | None = chunk
        self.on_result: OnResult | None = on_result
        self.on_released = on_released
        self.ident: int | None = None
        self.notified: int | None = None  # notification res seen before the result (defensive)


class LoopRing:
    """The io_uring instance of one event loop; use :meth:`for_loop`."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopRing] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ring: _uring.Ring | None = None
        self._users = 0
        self._requests: dict[int, _Request] = {}
        self._next_ud = 1
        self._submit_scheduled = False
        self._pools: list[Any] = []  # BufferPools registered as fixed buffers, index = position
        self._fixed: dict[int, int] = {}  # id(pool's exporter object) -> fixed buffer index
        self.submits = 0  # io_uring_enter calls made to submit (tests: batching)
        self.submitted = 0  # SQEs submitted
        self.fixed_sends = 0  # sends from a registered BufferPool (IORING_RECVSEND_FIXED_BUF)

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> LoopRing:
        ring = cls._by_loop.get(loop)
        if ring is None:
            ring = cls._by_loop[loop] = cls(loop)
        return ring

    @classmethod
    def existing(cls, loop: asyncio.AbstractEventLoop) -> LoopRing | None:
        return cls._by_loop.get(loop)

    @property
    def is_open(self) -> bool:
        return self._ring is not None

    @property
    def in_flight(self) -> int:
        """Requests whose result or notification is still owed."""
        return len(self._requests)

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self) -> None:
        """A transport starts using the ring (opened on first use)."""
        self._open()
        self._users += 1

    def detach(self) -> None:
        """A transport is done with it: submit what it queued (its fd is about to close, and
        a queued SQE names the fd *number*), close the ring once nothing is owed."""
        self._users -= 1
        self._submit_now()
        self._maybe_close()

    def _open(self) -> _uring.Ring:
        if self._ring is None:
            ring = _open_ring()
            try:
                efd = ring.register_eventfd()
                self._register_fixed(ring)
                self._loop.add_reader(efd, self._on_eventfd)
            except BaseException:
                ring.close()
                raise
            self._ring = ring
        return self._ring

    def _maybe_close(self) -> None:
        # Closing when idle keeps no fd or loop reader alive after the last transport.
        ring = self._ring
        if ring is None or self._users > 0 or self._requests or ring.pending():
            return
        self._ring = None
        if not self._loop.is_closed():
            self._loop.remove_reader(ring.eventfd)
        ring.close()

    # -- fixed buffers ---------------------------------------------------------------------

    def add_pool(self, pool: Any) -> None:
        """Register ``pool``'s memory as a fixed buffer, beside the pools already registered.

        IORING_REGISTER_BUFFERS takes the whole table at once, so the ring's table is
        re-registered with every pool's region (index = position in ``_pools``).
        """
        if pool in self._pools:
            return
        self._pools.append(pool)
        self._fixed[id(pool.exporter)] = len(self._pools) - 1
        if self._ring is not None:
            self._ring.unregister_buffers()
            self._register_fixed(self._ring)

    def remove_pool(self, pool: Any) -> None:
        if pool not in self._pools:
            return
        self._pools.remove(pool)
        self._fixed = {id(p.exporter): i for i, p in enumerate(self._pools)}
        if self._ring is not None:
            self._ring.unregister_buffers()
            self._register_fixed(self._ring)
        elif not self._pools and self._users == 0:
            self._by_loop.pop(self._loop, None)

    def _register_fixed(self, ring: _uring.Ring) -> None:
        if self._pools:
            ring.register_buffers([p.region for p in self._pools])

    def fixed_index(self, chunk: memoryview) -> int | None:
        """The fixed buffer ``chunk`` lies in (a slice of a registered BufferPool), or None."""
        if not self._fixed:
            return None
        return self._fixed.get(id(chunk.obj))

    # -- submission ------------------------------------------------------------------------

    def send_zc(self, fd: int, chunk: memoryview, flags: int, dest: bytes | None,
                on_result: OnResult, on_released: OnReleased) -> None:
        """Queue one SEND_ZC; it is submitted with this loop iteration's batch."""
        ring = self._ring
        if ring is None:
            raise RuntimeError("io_uring ring is closed (no transport attached)")
        ud = self._next_ud
        self._next_ud = ud + 1
        fixed = self.fixed_index(chunk)
        if not ring.prep_send_zc(fd, chunk, flags, ud, dest=dest, fixed_index=fixed):
            self._submit_now()  # SQ full: this iteration already queued _SQ_ENTRIES sends
            if not ring.prep_send_zc(fd, chunk, flags, ud, dest=dest, fixed_index=fixed):
                raise BlockingIOError(errno.EAGAIN, "io_uring submission queue full")
        self._requests[ud] = _Request(chunk, on_result, on_released)
        if fixed is not None:
            self.fixed_sends += 1
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self._loop.call_soon(self._submit_batch)

    def _submit_batch(self) -> None:
        self._submit_scheduled = False
        if self._ring is None:
            return
        self._submit_now()
        self._reap()
        self._maybe_close()

    def _submit_now(self) -> None:
        ring = self._ring
        if ring is None or not ring.pending():
            return
        n = ring.pending()
        ring.submit()
        self.submits += 1
        self.submitted += n

    # -- completion ------------------------------------------------------------------------

    def _on_eventfd(self) -> None:
        ring = self._ring
        if ring is None:
            return
        try:
            os.eventfd_read(ring.eventfd)
        except BlockingIOError:
            pass
        self._reap()
        self._maybe_close()

    def _reap(self) -> None:
        ring = self._ring
        if ring is None:
            return
        for ud, res, flags in ring.reap():
            try:
                if flags & IORING_CQE_F_NOTIF:
                    self._on_notification(ud, res)
                else:
                    self._on_result(ud, res, flags)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler(
                    {"message": "aiozc io_uring completion handler failed", "exception": exc}
                )

    def _on_result(self, ud: int, res: int, flags: int) -> None:
        req = self._requests.get(ud)
        if req is None:
            return
        on_result, req.on_result = req.on_result, None
        # Always decide from F_MORE: failed sends (-ECONNRESET, -ENOMEM...) carry it too, and
        # until the notification the kernel may still reference the chunk.
        more = bool(flags & IORING_CQE_F_MORE) and req.notified is None
        if not more:
            del self._requests[ud]
        ident = on_result(res) if on_result is not None else None
        req.ident = ident
        if not more:
            self._release(req, req.notified)

    def _on_notification(self, ud: int, res: int) -> None:
        req = self._requests.get(ud)
        if req is None:
            return
        if req.on_result is not None:
            req.notified = res  # result not seen yet: finish both when it arrives
            return
        del self._requests[ud]
        self._release(req, res)

    def _release(self, req: _Request, notif_res: int | None) -> None:
        """The kernel no longer references the chunk: drop it, report the id if one was used."""
        req.chunk = None
        ident = req.ident
        if ident is not None:
            copied = notif_res is None or bool(notif_res & IORING_NOTIF_USAGE_ZC_COPIED)
            req.on_released(ident, copied)


def _open_ring() -> _uring.Ring:
    """A ring for one loop thread. DEFER_TASKRUN|SINGLE_ISSUER: completion work runs only
    when we enter the kernel (reap/submit), never interrupting the loop; kernels before 6.1
    reject the flags with EINVAL, so retry without them."""
    flags = _uring.IORING_SETUP_SINGLE_ISSUER | _uring.IORING_SETUP_DEFER_TASKRUN
    try:
        return _uring.Ring(_SQ_ENTRIES, flags=flags, cq_entries=_CQ_ENTRIES)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return _uring.Ring(_SQ_ENTRIES, cq_entries=_CQ_ENTRIES)


class IoUringEngine:
    """Zero-copy sends through the loop's io_uring; copying sends are plain ``sock.send``.

    One engine per transport (it holds the transport's share of the loop's ring).
    """

    name = "io_uring"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ring: LoopRing | None = None
        self._flags = 0

    def prepare(self, sock: socket.socket) -> str | None:
        reason = _kernel.is_zerocopy_capable(sock)
        if reason is not None:
            return reason
        self._flags = _STREAM_FLAGS if sock.type == socket.SOCK_STREAM else _DGRAM_FLAGS
        ring = LoopRing.for_loop(self._loop)
        ring.attach()
        self._ring = ring
        return None

    def forget(self, sock: socket.socket) -> None:
        """The transport is closing ``sock``: submit what is queued for it, leave the ring."""
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.detach()

    def send(self, sock: socket.socket, data: memoryview, *, zerocopy: bool,
             address: object | None = None) -> int:
        """A plain copying send (zero-copy sends go through :meth:`submit_zc`)."""
        if address is None:
            return sock.send(data)
        return sock.sendto(data, address)

    def submit_zc(self, sock: socket.socket, chunk: memoryview, address: object | None,
                  on_result: OnResult, on_released: OnReleased) -> None:
        """Queue a SEND_ZC of ``chunk``; results come back through the callbacks."""
        ring = self._ring
        if ring is None:
            raise RuntimeError("io_uring engine is not attached to a socket")
        dest = None if address is None else _uring.pack_sockaddr(sock.family, address)
        ring.send_zc(sock.fileno(), chunk, self._flags, dest, on_result, on_released)
