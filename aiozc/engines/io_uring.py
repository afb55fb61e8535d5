"""io_uring SEND_ZC: zero-copy sends whose result and release come back as CQEs.

How it fits the transports
--------------------------
A transport keeps one send path (``StreamSending._send_zc`` in streamsend.py). With this engine a
zero-copy-eligible chunk is not sent there and then: :meth:`IoUringEngine.submit_zc` queues an
SQE and ``_send_zc`` raises :class:`~aiozc.engines.SendPending` (a BlockingIOError), which the
transports already treat as "wait". Later the engine calls

* ``on_result(res, ctx, ident) -> id | None`` with the result CQE's ``res`` (bytes sent or
  ``-errno``); the transport accounts the send through the same tracker as MSG_ZEROCOPY and
  returns the u32 id the tracker assigned (None if the send consumed none). A datagram goes
  whole or not at all, so the datagram transport accounts it when submitting and passes the
  id and the expected length: then only an unexpected result calls back.
* ``on_released(lo, hi, copied)`` for the notification CQEs of sends that consumed an id,
  merged per reap into runs of consecutive ids (what MSG_ZEROCOPY's error queue does too);
  ``copied`` is ``res & IORING_NOTIF_USAGE_ZC_COPIED``.

Copying sends (the policy said no zero-copy) stay plain synchronous ``sock.send``.

One ring per event loop (:class:`LoopRing`, like :class:`~aiozc.readiness.Multiplexer`):
SQEs prepared during a loop iteration are submitted together by one ``loop.call_soon``;
completions are reaped right after that submit and whenever the ring's registered eventfd
(watched with ``loop.add_reader``) fires. The eventfd, not the ring fd: with
IORING_SETUP_DEFER_TASKRUN a ring fd watched by the loop missed a delayed notification
(PLATFORM.md); the ring now uses the default task-work mode anyway (see :func:`_open_ring`).

Sends carry MSG_DONTWAIT: a full socket then completes at once with -EAGAIN (the transport
waits for EPOLLOUT through its multiplexer, as with send(2)) instead of io_uring arming an
internal poll. So no request outlives its result CQE inside the socket layer, and a transport
can close or abort its socket without cancelling anything: only the notification, which
needs no file reference, is still owed.

Buffers: each request keeps its chunk (the engine's own memoryview, holding the caller's
buffer export), the cffi ``from_buffer`` handle whose address is in the SQE (an export on that
view, so nobody can release it) and the destination sockaddr until its notification CQE,
whatever happens to the awaiting task or the transport. A :meth:`LoopRing.send_zc_many` group
owns its datagrams' pins (buffer exports) and ends them once every datagram was released.

The SQE fill, the submit and the CQE reap are :mod:`aiozc._sys.uring_io`'s: in the compiled
core one C call per batch (``_core_uring.c``), else the pure-Python reference. What comes back
is a list of compact events (a group's datagrams released, an unexpected result, a single
send done) that :meth:`LoopRing._dispatch` maps to the transports' callbacks. A fixed-buffer
datagram costs the kernel ~2.0 us, against ~2.8 us for MSG_ZEROCOPY through sendmmsg, so
io_uring wins only where the Python work per datagram stays below that difference: batches
(one request entry per group, notifications released in runs).
"""

from __future__ import annotations

import asyncio
import os
import socket
import weakref
from collections.abc import Callable
from typing import Any

from .._sys import kernel as _kernel, uring as _uring
from .._sys.uring_io import GROUP_SIZE, CRingIO, PyRingIO, RingIO, ring_io
from .uring_events import _U32, OnReleased, OnResult, RingEvents

__all__ = ["IoUringEngine", "LoopRing", "uring_unavailable_reason"]


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


_ffi = _uring.ffi
# The cffi backend's functions directly: ffi.cast/ffi.from_buffer wrap them in Python
# (~0.1 us per send, measured).
_from_buffer = _ffi._backend.from_buffer
_CHAR_ARRAY = _ffi.typeof("char[]")


class LoopRing(RingEvents):
    """The io_uring instance of one event loop; use :meth:`for_loop`."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopRing] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: _by_loop's value must not keep its key alive (every loop that ever used a
        # ring was kept, with a uvloop Loop's 256 KiB read buffer).
        self._loop_ref = weakref.ref(loop)
        self._ring: _uring.Ring | None = None
        self._io: PyRingIO | CRingIO | None = None
        self._users = 0
        self._requests: dict[int, list[Any]] = {}  # single sends by user_data
        self._submit_scheduled = False
        self._pools: list[Any] = []  # BufferPools registered as fixed buffers, index = position
        # Address ranges of the registered pools, (lo, hi, index = fixed buffer index): a send
        # whose bytes lie inside one goes as a fixed buffer.
        self._fixed_ranges: list[tuple[int, int, int]] = []
        self._groups: dict[int, list[Any]] = {}  # send_zc_many groups by key
        # The counters of rings closed before (the RingIO of the open one counts on).
        self._counted = [0, 0, 0]
        # Compiled datagram paths sending through this ring (_core_udpring.c), by event tag:
        # what to call when one has completions to apply (EV_D_PENDING).
        self._dgrams: dict[int, Callable[[], None]] = {}
        self._next_tag = 1

    @property
    def submits(self) -> int:
        """io_uring_enter calls made to submit (tests: batching)."""
        return self._counted[0] + (self._io.submits if self._io is not None else 0)

    @property
    def submitted(self) -> int:
        """SQEs submitted."""
        return self._counted[1] + (self._io.submitted if self._io is not None else 0)

    @property
    def fixed_sends(self) -> int:
        """Sends from a registered BufferPool (IORING_RECVSEND_FIXED_BUF)."""
        return self._counted[2] + (self._io.fixed_sends if self._io is not None else 0)

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
    def has_pools(self) -> bool:
        """A BufferPool is registered with this loop's ring (see engine="auto")."""
        return bool(self._pools)

    @property
    def in_flight(self) -> int:
        """Requests whose result or notification is still owed (a group counts once)."""
        return len(self._requests) + len(self._groups)

    @property
    def compiled(self) -> bool:
        """The ring's SQEs and CQEs go through the compiled core (else pure Python)."""
        return isinstance(self._io, CRingIO)

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
                io = ring_io(ring)
                io.set_fixed([(lo, hi) for lo, hi, _ in self._fixed_ranges])
                self._loop_ref().add_reader(efd, self._on_eventfd)  # type: ignore[union-attr]
            except BaseException:
                ring.close()
                raise
            self._ring = ring
            self._io = io
        return self._ring

    def _maybe_close(self) -> None:
        # Closing when idle keeps no fd or loop reader alive after the last transport.
        ring, io = self._ring, self._io
        if ring is None or io is None or self._users > 0 or self._requests or self._groups:
            return
        if io.pending():
            return
        self._ring = self._io = None
        counted = self._counted
        counted[0] += io.submits
        counted[1] += io.submitted
        counted[2] += io.fixed_sends
        io.release()
        loop = self._loop_ref()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(ring.eventfd)
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
        self._reregister()

    def remove_pool(self, pool: Any) -> None:
        if pool not in self._pools:
            return
        self._pools.remove(pool)
        self._reregister()
        if self._ring is None and not self._pools and self._users == 0:
            loop = self._loop_ref()
            if loop is not None:
                self._by_loop.pop(loop, None)

    def _reregister(self) -> None:
        self._update_fixed_ranges()
        if self._ring is not None and self._io is not None:
            self._ring.unregister_buffers()
            self._register_fixed(self._ring)
            self._io.set_fixed([(lo, hi) for lo, hi, _ in self._fixed_ranges])

    def _update_fixed_ranges(self) -> None:
        self._fixed_ranges = []
        for index, pool in enumerate(self._pools):
            with _ffi.from_buffer(pool.region) as handle:
                lo = int(_ffi.cast("uintptr_t", handle))
            self._fixed_ranges.append((lo, lo + len(pool.region), index))

    def _register_fixed(self, ring: _uring.Ring) -> None:
        if self._pools:
            ring.register_buffers([p.region for p in self._pools])

    # -- the compiled datagram path --------------------------------------------------------

    def bind_dgram(self, d: Any, flags: int, on_pending: Callable[[], None]) -> int | None:
        """Let the compiled per-call datagram path ``d`` fill its SEND_ZCs into this ring
        (_core_udpring.c); ``on_pending()`` is called when a reap found completions of its
        sends. Returns the tag to pass to :meth:`unbind_dgram`, or None: the ring is the pure
        one (or closed), and ``d`` keeps sending through send(2)."""
        io = self._io
        if not isinstance(io, CRingIO):
            return None
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        self._dgrams[tag] = on_pending
        io.bind_dgram(d, tag, flags)
        return tag

    def unbind_dgram(self, d: Any, tag: int) -> None:
        if self._dgrams.pop(tag, None) is not None and isinstance(self._io, CRingIO):
            self._io.unbind_dgram(d)

    def schedule_submit(self) -> None:
        """Submit this loop iteration's SQEs at its end (a compiled send filled the first)."""
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self._loop_ref().call_soon(self._submit_batch)  # type: ignore[union-attr]

    def reap_waiting(self) -> None:
        """Dispatch the events a compiled send's reap left in the ring's buffer (and any
        completion that came since)."""
        self._reap()

    # -- submission ------------------------------------------------------------------------

    def send_zc(self, fd: int, flags: int, dest: bytes | None, chunk: memoryview,
                on_result: OnResult, on_released: OnReleased, ctx: Any = None,
                ident: int | None = None, expect: int | None = None) -> None:
        """Queue one SEND_ZC; it is submitted with this loop iteration's batch.

        ``on_result(res, ctx, ident)`` is called with the result CQE's ``res`` and returns the
        id the send consumed (or None). A caller that accounted the send in advance (a
        datagram goes whole or not at all) passes that ``ident`` and ``expect`` = its length:
        a result of exactly ``expect`` bytes then needs no callback, any other result still
        gets one (and its return value replaces ``ident``). A slice of a registered
        :class:`~aiozc.buffers.BufferPool` goes as a fixed buffer (recognised by address: the
        pool's region spans its whole mmap, so any view of its memory lies inside)."""
        io = self._io
        if io is None:
            raise RuntimeError("io_uring ring is closed (no transport attached)")
        handle = _from_buffer(_CHAR_ARRAY, chunk, False)
        if dest is None:
            keep: tuple[Any, ...] = (chunk, handle)
            ud = io.send(fd, flags, handle, None, 0, expect)
        else:
            holder = _ffi.new("char[]", dest)  # read by the kernel when the send is issued
            keep = (chunk, handle, holder)
            ud = io.send(fd, flags, handle, holder, len(dest), expect)
        self._requests[ud] = [keep, on_result, ctx, on_released, ident]
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self._loop_ref().call_soon(self._submit_batch)  # type: ignore[union-attr]

    def send_zc_many(self, fd: int, pins: Any, sizes: list[int], flags: int,
                     on_result: OnResult, on_released: OnReleased, ctx: Any,
                     first_ident: int, on_done: Callable[[Any], None] | None = None) -> None:
        """:meth:`send_zc` for many datagrams of a connected socket, accounted in advance with
        consecutive ids from ``first_ident``, each expecting ``sizes[i]`` bytes; ``ctx`` is
        shared by all.

        ``pins`` are buffer exports: a list from :func:`aiozc._sys.mmsg.pin`, or the compiled
        core's PinSet (aiozc/_sys/_core_pins.c, whose exports the C fill reads directly), and
        the engine takes them over: it ends them once the kernel released every datagram of
        the group. One request entry stands for a whole group (user_data = group | index), and
        the RingIO fills its SQEs in one call.

        ``on_done(ctx)`` is called once the result of every datagram is in (after the
        ``on_result`` calls for those that failed): until then a caller cannot know which
        datagrams it must send again."""
        io = self._io
        if io is None:
            raise RuntimeError("io_uring ring is closed (no transport attached)")
        total = len(pins)
        for start in range(0, total, GROUP_SIZE):
            stop = start + GROUP_SIZE
            group_pins = pins
            if pins.__class__ is list:
                if start or total > stop:
                    group_pins = pins[start:stop]
            elif len(pins) > GROUP_SIZE:  # a PinSet: the group takes its first ones
                group_pins = pins.split(GROUP_SIZE)
            key, error = io.send_group(fd, flags, group_pins, sizes[start:stop] if start or total > stop else sizes)
            self._groups[key] = [group_pins, on_result, ctx, on_released,
                                 (first_ident + start) & _U32, None,
                                 on_done if stop >= total else None]
            if not self._submit_scheduled:
                self._submit_scheduled = True
                self._loop_ref().call_soon(self._submit_batch)  # type: ignore[union-attr]
            if error is not None:
                raise error

    def submit_and_reap(self) -> None:
        """Enter the kernel now for what is queued and handle every completion available.

        For a caller that queues many sends in one go (a datagram burst): like MSG_ZEROCOPY's
        error-queue drain every 64 sends, completions then resolve futures during the burst
        instead of one loop iteration later. Completion callbacks run inside this call, so a
        caller must have accounted every send it queued.
        """
        if self._ring is None:
            return
        self._submit_now()
        self._reap()

    def submit_queued(self) -> None:
        """Submit the SQEs queued so far (if any) now, not at the end of the loop iteration:
        before a copying send, so that datagrams leave in call order (a SEND_ZC with socket
        space is sent inside io_uring_enter)."""
        io = self._io
        if io is not None and io.pending():
            io.submit()

    @property
    def queued(self) -> int:
        """SQEs prepared and not yet submitted."""
        return 0 if self._io is None else self._io.pending()

    def _submit_batch(self) -> None:
        self._submit_scheduled = False
        if self._ring is None:
            return
        self._submit_now()
        self._reap()
        self._maybe_close()

    def _submit_now(self) -> None:
        if self._io is not None:
            self._io.submit()

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
        io = self._io
        if io is None:
            return
        events = io.reap()
        if events:
            self._dispatch(events)

def _open_ring() -> _uring.Ring:
    """A ring for one loop thread, with the kernel's default task-work mode.

    Not DEFER_TASKRUN: there the kernel (6.18) posts deferred completions 20 at a time per
    io_uring_enter, so after submitting 256 SEND_ZC to the ifb sink only 60 notifications could
    be reaped, the rest trickled in over ~12 more eventfd wakeups (two system calls and a loop
    iteration each): 4.35 us per 64000 B datagram against 3.81 us with the default mode, which
    had all 256 ready when submit returned (measured, sendto_zc_many, fixed buffers). Not
    COOP_TASKRUN either: it skips the wakeup of a task sleeping in epoll_wait, and a TCP
    notification that arrives when the peer reads would then wait for an unrelated event.
    """
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
        self._fd = -1

    def prepare(self, sock: socket.socket) -> str | None:
        reason = _kernel.is_zerocopy_capable(sock)
        if reason is not None:
            return reason
        self._flags = _STREAM_FLAGS if sock.type == socket.SOCK_STREAM else _DGRAM_FLAGS
        self._fd = sock.fileno()
        ring = LoopRing.for_loop(self._loop)
        ring.attach()
        self._ring = ring
        return None

    def forget(self, sock: socket.socket) -> None:
        """The transport is closing ``sock``: submit what is queued for it, leave the ring."""
        ring, self._ring = self._ring, None
        if ring is not None:
            self.unbind_hot(ring)
            ring.detach()

    # -- the compiled per-call datagram path (aiozc/datagram/hot.py, _core_udpring.c) -------

    _hot: tuple[Any, int] | None = None  # (its zc_dgram, its tag in the ring)

    def bind_hot(self, d: Any, on_pending: Callable[[], None]) -> bool:
        """Let the compiled datagram path ``d`` send through this engine's ring; False where
        it cannot (the pure ring): the transport then keeps the general path."""
        ring = self._ring
        if ring is None or self._hot is not None:
            return False
        tag = ring.bind_dgram(d, self._flags, on_pending)
        if tag is None:
            return False
        self._hot = (d, tag)
        return True

    def unbind_hot(self, ring: LoopRing | None = None) -> None:
        hot, self._hot = self._hot, None
        ring = ring or self._ring
        if hot is not None and ring is not None:
            ring.unbind_dgram(*hot)

    @property
    def hot_bound(self) -> bool:
        return self._hot is not None

    def schedule_submit(self) -> None:
        if self._ring is not None:
            self._ring.schedule_submit()

    def reap_waiting(self) -> None:
        if self._ring is not None:
            self._ring.reap_waiting()

    def send(self, sock: socket.socket, data: memoryview, *, zerocopy: bool,
             address: Any = None) -> int:
        """A plain copying send (zero-copy sends go through :meth:`submit_zc`), after the
        SEND_ZCs queued before it."""
        self.submit_queued()
        if address is None:
            return sock.send(data)
        return sock.sendto(data, address)

    def submit_queued(self) -> None:
        """The ring's queued SEND_ZCs go now (see :meth:`LoopRing.submit_queued`)."""
        if self._ring is not None:
            self._ring.submit_queued()

    def submit_zc(self, sock: socket.socket, chunk: memoryview, address: Any,
                  on_result: OnResult, on_released: OnReleased, ctx: Any = None,
                  ident: int | None = None, expect: int | None = None) -> None:
        """Queue a SEND_ZC of ``chunk``; results come back through the callbacks (see
        :meth:`LoopRing.send_zc` for ``ident``/``expect``). ``chunk`` must be the engine's
        own view: it holds a buffer export on it until the notification."""
        ring = self._ring
        if ring is None:
            raise RuntimeError("io_uring engine is not attached to a socket")
        dest = None if address is None else _uring.pack_sockaddr(sock.family, address)
        ring.send_zc(self._fd, self._flags, dest, chunk, on_result, on_released, ctx, ident, expect)

    def submit_zc_many(self, pins: Any, sizes: list[int], on_result: OnResult,
                       on_released: OnReleased, ctx: Any, first_ident: int,
                       on_done: Callable[[Any], None] | None = None) -> None:
        """:meth:`submit_zc` for many datagrams of a connected socket, accounted in advance
        with consecutive ids; the engine takes over ``pins`` (see
        :meth:`LoopRing.send_zc_many`)."""
        ring = self._ring
        if ring is None:
            raise RuntimeError("io_uring engine is not attached to a socket")
        ring.send_zc_many(self._fd, pins, sizes, self._flags, on_result, on_released, ctx,
                          first_ident, on_done)

    def submit_and_reap(self) -> None:
        """Submit this loop's queued sends now and handle the completions available (see
        :meth:`LoopRing.submit_and_reap`)."""
        if self._ring is not None:
            self._ring.submit_and_reap()
