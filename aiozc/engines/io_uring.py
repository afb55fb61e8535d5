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
import collections
import os
import socket
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .._sys import kernel as _kernel, uring as _uring
from .._sys.uring_io import (
    EV_G_END, EV_G_RELEASE, EV_G_RELEASE_COPIED, EV_G_RESULT, EV_G_RESULTS_IN, EV_S_DONE,
    EV_S_RESULT, GROUP_SIZE, CRingIO, PyRingIO, RingIO, ring_io,
)

__all__ = ["IoUringEngine", "LoopRing", "uring_unavailable_reason"]

# on_result(res, ctx, ident) -> the id the send consumed, or None (see LoopRing.send_zc).
OnResult = Callable[[int, Any, "int | None"], "int | None"]
# on_released(lo, hi, copied): ids lo..hi (u32, inclusive) are no longer referenced.
OnReleased = Callable[[int, int, bool], None]

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


_U32 = 0xFFFFFFFF
_ffi = _uring.ffi
# The cffi backend's functions directly: ffi.cast/ffi.from_buffer wrap them in Python
# (~0.1 us per send, measured).
_from_buffer = _ffi._backend.from_buffer
_unpin = _ffi._backend.release  # ends a from_buffer export (aiozc._sys.mmsg.pin's too: one backend)
_CHAR_ARRAY = _ffi.typeof("char[]")
_consume: Callable[[Iterable[Any]], None] = collections.deque(maxlen=0).extend  # runs an iterator to its end

# One SEND_ZC in flight is a list, not an object (cheaper to build, measured).
_KEEP = 0  # (chunk memoryview, cffi from_buffer handle[, sockaddr holder]) until released
_ON_RESULT = 1  # on_result(res, ctx, ident) -> ident
_CTX = 2
_ON_RELEASED = 3  # on_released(lo, hi, copied)
_IDENT = 4  # the u32 id the send consumed, None if none (yet)
_Request = list  # [keep, on_result, ctx, on_released, ident]

# A send_zc_many group (its SQEs and CQEs are the RingIO's): [pins, on_result, ctx,
# on_released, first id, indexes whose id on_result voided (None: none), on_done].
_G_PINS, _G_ON_RESULT, _G_CTX, _G_ON_RELEASED, _G_FIRST, _G_VOIDED, _G_ON_DONE = range(7)
_FAILED = object()  # what LoopRing._guarded returns when the callback raised


class LoopRing:
    """The io_uring instance of one event loop; use :meth:`for_loop`."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopRing] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
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
                self._loop.add_reader(efd, self._on_eventfd)
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
        self._reregister()

    def remove_pool(self, pool: Any) -> None:
        if pool not in self._pools:
            return
        self._pools.remove(pool)
        self._reregister()
        if self._ring is None and not self._pools and self._users == 0:
            self._by_loop.pop(self._loop, None)

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
            self._loop.call_soon(self._submit_batch)

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
                self._loop.call_soon(self._submit_batch)
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

    def _dispatch(self, events: list[int]) -> None:
        """Hand a reap's events (aiozc._sys.uring_io) to the transports' callbacks.

        on_result runs in CQE order; releases are delivered after the whole batch, merged
        into runs of consecutive ids per transport: like MSG_ZEROCOPY's coalesced ranges, one
        tracker/policy update covers many sends instead of one each. on_done comes before them.
        """
        releases: list[list[Any]] = []  # [callback, lo, hi, copied]
        finished: list[list[Any]] = []  # groups whose results are all in (see on_done)
        groups, requests = self._groups, self._requests
        it = iter(events)
        for kind, key, a, b in zip(it, it, it, it):
            if kind == EV_G_RELEASE or kind == EV_G_RELEASE_COPIED:
                entry = groups[key]
                self._group_released(entry, a, b, kind == EV_G_RELEASE_COPIED, releases)
            elif kind == EV_G_END:
                _unpin_group(groups.pop(key)[_G_PINS])  # the kernel references none of them
            elif kind == EV_S_DONE:
                req = requests.pop(key, None)
                if req is not None and req[_IDENT] is not None:
                    ident = req[_IDENT]
                    _add_release(releases, req[_ON_RELEASED], ident, ident, bool(a))
            elif kind == EV_S_RESULT:
                req = requests.get(key)
                if req is not None:
                    self._call_on_result(req, a)
            elif kind == EV_G_RESULT:
                self._group_result(groups[key], a, b)
            elif kind == EV_G_RESULTS_IN:
                entry = groups[key]
                if entry[_G_ON_DONE] is not None:
                    finished.append(entry)
        # on_done before the releases: a closing transport that sees no id outstanding after
        # them closes at once, and a group still waiting for its on_done then failed its batch
        # (close() right after sendto_zc_many raised ConnectionAbortedError on io_uring).
        for entry in finished:
            self._guarded(entry[_G_ON_DONE], entry[_G_CTX])
        for cb, lo, hi, copied in releases:
            self._release_run(cb, lo, hi, copied)

    @staticmethod
    def _group_released(entry: list[Any], index: int, count: int, copied: bool,
                        releases: list[list[Any]]) -> None:
        """Datagrams ``index .. index + count - 1`` of a group released: their ids, but those
        that on_result voided."""
        first, cb, voided = entry[_G_FIRST], entry[_G_ON_RELEASED], entry[_G_VOIDED]
        if voided is None:
            lo = (first + index) & _U32
            _add_release(releases, cb, lo, (lo + count - 1) & _U32, copied)
            return
        for i in range(index, index + count):
            if i not in voided:
                ident = (first + i) & _U32
                _add_release(releases, cb, ident, ident, copied)

    def _group_result(self, entry: list[Any], i: int, res: int) -> None:
        """An unexpected result in a group: the transport hears of it (on_result) and, if it
        says the send consumed no id (None), the id is not released again later."""
        ident = (entry[_G_FIRST] + i) & _U32
        if self._guarded(entry[_G_ON_RESULT], res, entry[_G_CTX], ident) is None:
            if entry[_G_VOIDED] is None:
                entry[_G_VOIDED] = set()
            entry[_G_VOIDED].add(i)

    def _call_on_result(self, req: list[Any], res: int) -> None:
        ident = self._guarded(req[_ON_RESULT], res, req[_CTX], req[_IDENT])
        if ident is not _FAILED:
            req[_IDENT] = ident

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or ``_FAILED`` after reporting what it raised to the loop: a transport's
        callback must not stop the reaping of every other transport's completions."""
        try:
            return fn(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report(exc)
            return _FAILED

    def _report(self, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {"message": "aiozc io_uring completion handler failed", "exception": exc}
        )

    def _release_run(self, cb: OnReleased, lo: int, hi: int, copied: bool) -> None:
        self._guarded(cb, lo, hi, copied)


def _unpin_group(pins: Any) -> None:
    """End a group's buffer exports: a PinSet's in one call, cffi pins consumed in C."""
    if pins.__class__ is list:
        _consume(map(_unpin, pins))
    else:
        pins.release()


def _add_release(releases: list[list[Any]], cb: OnReleased, lo: int, hi: int,
                 copied: bool) -> None:
    """Extend the last run of ``releases`` with ids ``lo..hi`` if they continue it, else
    start a new one."""
    if releases:
        last = releases[-1]
        # == not is: a transport passes a bound method, a new object at every attribute lookup
        if (last[2] + 1) & _U32 == lo and last[3] == copied and last[0] == cb:
            last[2] = hi
            return
    releases.append([cb, lo, hi, copied])


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
            ring.detach()

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
