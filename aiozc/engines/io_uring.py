"""io_uring SEND_ZC: zero-copy sends whose result and release come back as CQEs.

How it fits the transports
--------------------------
A transport keeps one send path (``ZeroCopyTransportBase._send_chunk``). With this engine a
zero-copy-eligible chunk is not sent there and then: :meth:`IoUringEngine.submit_zc` queues an
SQE and ``_send_chunk`` raises :class:`~aiozc.engines.SendPending` (a BlockingIOError), which the
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

The hot path fills SQEs and reads CQEs with ``struct`` on the mapped rings (:class:`_RingIO`)
instead of ``Ring.prep_send_zc`` / ``Ring.reap``: per 64000 B datagram that is ~0.3 us instead
of ~1.4 us of Python. A fixed-buffer datagram costs the kernel ~2.0 us, against ~2.8 us for
MSG_ZEROCOPY through sendmmsg, so io_uring wins only where the Python work per datagram stays
below that difference: batches (one request entry per group, notifications released in runs).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import struct
import weakref
from collections.abc import Callable
from typing import Any

from .._sys import kernel as _kernel, uring as _uring
from .._sys.uring import IORING_CQE_F_MORE, IORING_CQE_F_NOTIF, IORING_NOTIF_USAGE_ZC_COPIED

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


# struct io_uring_sqe / io_uring_cqe (uapi; _uring checks sizes and offsets at import).
# One pack_into per SQE costs ~0.3 us where setting the fields through cffi cost ~1.4 us
# (measured, CPython 3.11): at ~3 us of kernel work per 64000 B datagram that is the
# difference between io_uring trailing MSG_ZEROCOPY and beating it.
_SQE = struct.Struct("<BBHiQQIIQHHHHQQ")
_CQE = struct.Struct("<QiI")
_U32 = 0xFFFFFFFF
_COPIED = IORING_NOTIF_USAGE_ZC_COPIED
_ZC_IOPRIO = _uring.IORING_SEND_ZC_REPORT_USAGE
_ZC_FIXED_IOPRIO = _uring.IORING_SEND_ZC_REPORT_USAGE | _uring.IORING_RECVSEND_FIXED_BUF
_ffi = _uring.ffi
# The cffi backend's functions directly: ffi.cast/ffi.from_buffer wrap them in Python
# (~0.1 us per send, measured).
_from_buffer = _ffi._backend.from_buffer
_unpin = _ffi._backend.release  # ends a from_buffer export (aiozc._sys.mmsg.pin's too: one backend)
_cast = _ffi._backend.cast
_CHAR_ARRAY = _ffi.typeof("char[]")
_UINTPTR = _ffi.typeof("uintptr_t")


# One SEND_ZC in flight is a list, not an object: building it is ~0.4 us cheaper per send,
# which is most of what the datagram hot path can still save (measured, CPython 3.11).
_KEEP = 0  # (chunk memoryview, cffi from_buffer handle[, sockaddr holder]) until released
_EXPECT = 1  # a result of exactly this many bytes needs no callback (None: always call)
_ON_RESULT = 2  # on_result(res, ctx, ident) -> ident
_CTX = 3
_ON_RELEASED = 4  # on_released(lo, hi, copied)
_IDENT = 5  # the u32 id the send consumed, None if none (yet)
_RESULTED = 6  # the result CQE was seen
_NOTIFIED = 7  # notification res seen before the result (defensive), else None
_Request = list  # [keep, expect, on_result, ctx, on_released, ident, resulted, notified]

# A send_zc_many group: [pins, sizes, on_result, ctx, on_released, first id, datagrams not yet
# released, indexes whose id on_result voided (None: none)]. Its SQEs carry user_data
# _GROUP_UD | key << _INDEX_BITS | index; single requests count up from 1, far below.
# The last item is the datagrams' common size (-1 if they differ): the common result CQE then
# needs no per-index lookup.
_G_PINS, _G_SIZES, _G_ON_RESULT, _G_CTX, _G_ON_RELEASED, _G_FIRST, _G_LEFT, _G_VOIDED = range(8)
_G_UNIFORM = 8
_G_KEY = 9  # its key in LoopRing._groups
_G_RESULTS = 10  # result CQEs still to come
_G_ON_DONE = 11  # on_done(ctx) once every result is in, or None
_INDEX_BITS = 20
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_GROUP_SIZE = 1 << _INDEX_BITS
_GROUP_UD = 1 << 63
_GROUP_HI = _GROUP_UD >> _INDEX_BITS  # a group's key is its user_data >> _INDEX_BITS ^ this
_FAILED = object()  # what LoopRing._guarded returns when the callback raised
_NO_RANGE = (0, 0, 0)  # (lo, hi, index) of no fixed buffer: lo <= addr and addr + n <= 0 fails


class _RingIO:
    """Bulk access to a :class:`_uring.Ring`'s mapped SQE array and CQ ring.

    ``Ring.prep_send_zc``/``Ring.reap`` are the reference implementation; LoopRing fills SQEs
    and this reads CQEs through ``struct`` on memoryviews of the mappings, for the
    per-datagram hot path. It uses the Ring's private mapping attributes (same package;
    tests/test_uring.py pins the layout) and the SQ tail is published by ``Ring.submit`` as
    usual.
    """

    def __init__(self, ring: _uring.Ring) -> None:
        self.ring = ring
        self.sqes = self._sqes = memoryview(_ffi.buffer(ring._sqes, ring.sq_entries * 64))
        self._cqes = memoryview(_ffi.buffer(ring._cqes, ring.cq_entries * 16))
        self.sq_mask = self._sq_mask = ring._sq_mask
        self.sq_entries = ring.sq_entries
        self._cq_mask = ring._cq_mask
        # cffi uint32_t pointers into the CQ ring (typed Any: cffi has no stubs)
        self._cq_khead: Any = ring._cq_khead
        self._cq_ktail: Any = ring._cq_ktail

    def release(self) -> None:
        self._sqes.release()
        self._cqes.release()

    def reap(self) -> list[tuple[int, int, int]]:
        """Every available CQE as (user_data, res, flags), like Ring.reap()."""
        ring = self.ring
        if ring._needs_enter():
            _uring._sys_enter(ring.fd, 0, 0, _uring.IORING_ENTER_GETEVENTS)
        out: list[tuple[int, int, int]] = []
        iter_unpack, cqes, mask = _CQE.iter_unpack, self._cqes, self._cq_mask
        while True:
            head = self._cq_khead[0]
            tail = self._cq_ktail[0]
            n = (tail - head) & _U32
            if not n:
                return out
            start = head & mask
            end = start + n
            if end <= mask + 1:
                out += iter_unpack(cqes[start << 4 : end << 4])
            else:  # the batch wraps around the end of the CQ array
                out += iter_unpack(cqes[start << 4 :])
                out += iter_unpack(cqes[: (end - mask - 1) << 4])
            self._cq_khead[0] = tail  # the kernel may now reuse those slots
            # The CQ was full: overflowed CQEs are flushed back only on GETEVENTS.
            kflags: Any = ring._sq_kflags
            if not kflags[0] & _uring.IORING_SQ_CQ_OVERFLOW:
                return out
            _uring._sys_enter(ring.fd, 0, 0, _uring.IORING_ENTER_GETEVENTS)


class LoopRing:
    """The io_uring instance of one event loop; use :meth:`for_loop`."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopRing] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ring: _uring.Ring | None = None
        self._io: _RingIO | None = None
        self._users = 0
        self._requests: dict[int, list[Any]] = {}
        self._next_ud = 1
        self._submit_scheduled = False
        self._pools: list[Any] = []  # BufferPools registered as fixed buffers, index = position
        # Address ranges of the registered pools, (lo, hi, index = fixed buffer index): a send
        # whose bytes lie inside one goes as a fixed buffer.
        self._fixed_ranges: list[tuple[int, int, int]] = []
        self._groups: dict[int, list[Any]] = {}  # send_zc_many groups by key
        self._next_group = 0
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
    def has_pools(self) -> bool:
        """A BufferPool is registered with this loop's ring (see engine="auto")."""
        return bool(self._pools)

    @property
    def in_flight(self) -> int:
        """Requests whose result or notification is still owed (a group counts once)."""
        return len(self._requests) + len(self._groups)

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
            self._io = _RingIO(ring)
        return self._ring

    def _maybe_close(self) -> None:
        # Closing when idle keeps no fd or loop reader alive after the last transport.
        ring = self._ring
        if ring is None or self._users > 0 or self._requests or self._groups or ring.pending():
            return
        self._ring = None
        if self._io is not None:
            self._io.release()
            self._io = None
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
        self._update_fixed_ranges()
        if self._ring is not None:
            self._ring.unregister_buffers()
            self._register_fixed(self._ring)

    def remove_pool(self, pool: Any) -> None:
        if pool not in self._pools:
            return
        self._pools.remove(pool)
        self._update_fixed_ranges()
        if self._ring is not None:
            self._ring.unregister_buffers()
            self._register_fixed(self._ring)
        elif not self._pools and self._users == 0:
            self._by_loop.pop(self._loop, None)

    def _update_fixed_ranges(self) -> None:
        self._fixed_ranges = []
        for index, pool in enumerate(self._pools):
            with _ffi.from_buffer(pool.region) as handle:
                lo = int(_ffi.cast("uintptr_t", handle))
            self._fixed_ranges.append((lo, lo + len(pool.region), index))

    def _fixed_index(self, addr: int, size: int) -> int | None:
        for lo, hi, index in self._fixed_ranges:
            if lo <= addr and addr + size <= hi:
                return index
        return None

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
        addr = int(_cast(_UINTPTR, handle))
        fixed = self._fixed_index(addr, len(handle)) if self._fixed_ranges else None
        ioprio, index = (_ZC_IOPRIO, 0) if fixed is None else (_ZC_FIXED_IOPRIO, fixed)
        if dest is None:
            keep: tuple[Any, ...] = (chunk, handle)
            dest_addr = dest_len = 0
        else:
            holder = _ffi.new("char[]", dest)  # read by the kernel when the send is issued
            keep = (chunk, handle, holder)
            dest_addr, dest_len = int(_cast(_UINTPTR, holder)), len(dest)
        ud = self._next_ud
        ring = io.ring
        khead: Any = ring._sq_khead  # cffi uint32_t pointer (no stubs)
        tail = ring._sq_tail
        if (tail - khead[0]) & _U32 >= io.sq_entries:
            self._submit_now()  # SQ full: this iteration already queued _SQ_ENTRIES sends
            tail = ring._sq_tail
            if (tail - khead[0]) & _U32 >= io.sq_entries:
                raise BlockingIOError(errno.EAGAIN, "io_uring submission queue full")
        _SQE.pack_into(io.sqes, (tail & io.sq_mask) << 6, _uring.IORING_OP_SEND_ZC, 0, ioprio,
                       fd, dest_addr, addr, len(handle), flags, ud, index, 0, dest_len, 0, 0, 0)
        ring._sq_tail = (tail + 1) & _U32
        self._next_ud = ud + 1
        self._requests[ud] = [keep, expect, on_result, ctx, on_released, ident, False, None]
        if fixed is not None:
            self.fixed_sends += 1
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self._loop.call_soon(self._submit_batch)

    def send_zc_many(self, fd: int, pins: list[Any], sizes: list[int], flags: int,
                     on_result: OnResult, on_released: OnReleased, ctx: Any,
                     first_ident: int, on_done: Callable[[Any], None] | None = None) -> None:
        """:meth:`send_zc` for many datagrams of a connected socket, accounted in advance with
        consecutive ids from ``first_ident``, each expecting ``sizes[i]`` bytes; ``ctx`` is
        shared by all.

        ``pins`` are buffer exports from :func:`aiozc._sys.mmsg.pin`, and the engine takes them
        over: it ends them (``_mmsg.unpin``) once the kernel released every datagram of the
        group. One request entry stands for a whole group (user_data = group | index), so per
        datagram there is one ``pack_into`` and no request object or dict entry: the Python
        work per 64000 B datagram that decides whether io_uring beats MSG_ZEROCOPY.

        ``on_done(ctx)`` is called once the result of every datagram is in (after the
        ``on_result`` calls for those that failed): until then a caller cannot know which
        datagrams it must send again."""
        for start in range(0, len(pins), _GROUP_SIZE):
            stop = start + _GROUP_SIZE
            last = stop >= len(pins)
            self._send_group(fd, pins[start:stop], sizes[start:stop], flags, on_result,
                             on_released, ctx, (first_ident + start) & _U32,
                             on_done if last else None)

    def _send_group(self, fd: int, pins: list[Any], sizes: list[int], flags: int,
                    on_result: OnResult, on_released: OnReleased, ctx: Any, first: int,
                    on_done: Callable[[Any], None] | None) -> None:
        io = self._io
        if io is None:
            raise RuntimeError("io_uring ring is closed (no transport attached)")
        ring = io.ring
        key = self._next_group
        self._next_group = key + 1
        ud = _GROUP_UD | (key << _INDEX_BITS)
        uniform = sizes[0] if sizes and sizes.count(sizes[0]) == len(sizes) else -1
        entry = [pins, sizes, on_result, ctx, on_released, first, len(pins), None, uniform, key,
                 len(pins), on_done]
        self._groups[key] = entry
        sqes, sq_mask, pack_into, cast = io.sqes, io.sq_mask, _SQE.pack_into, _cast
        entries = ring.sq_entries
        ranges = self._fixed_ranges
        fixed_lo, fixed_hi, fixed_index = ranges[0] if ranges else _NO_RANGE
        tail = ring._sq_tail
        free = entries - ring.pending()
        fixed_sends = 0
        room = len(pins) <= free  # then the loop needs no SQ-full check
        for pin, size in zip(pins, sizes):
            if not room and not free:
                ring._sq_tail = tail
                self._submit_now()  # SQ full: hand this much to the kernel now
                tail = ring._sq_tail
                free = entries - ring.pending()
                if not free:
                    raise BlockingIOError(errno.EAGAIN, "io_uring submission queue full")
            addr = int(cast(_UINTPTR, pin))
            if fixed_lo <= addr and addr + size <= fixed_hi:
                ioprio, index = _ZC_FIXED_IOPRIO, fixed_index
                fixed_sends += 1
            elif len(ranges) > 1 and (other := self._fixed_index(addr, size)) is not None:
                ioprio, index = _ZC_FIXED_IOPRIO, other
                fixed_sends += 1
            else:
                ioprio, index = _ZC_IOPRIO, 0
            pack_into(sqes, (tail & sq_mask) << 6, _uring.IORING_OP_SEND_ZC, 0, ioprio, fd, 0,
                      addr, size, flags, ud, index, 0, 0, 0, 0, 0)
            tail = (tail + 1) & _U32
            free -= 1
            ud += 1
        ring._sq_tail = tail
        self.fixed_sends += fixed_sends
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self._loop.call_soon(self._submit_batch)

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

    @property
    def queued(self) -> int:
        """SQEs prepared and not yet submitted."""
        return 0 if self._ring is None else self._ring.pending()

    def _submit_batch(self) -> None:
        self._submit_scheduled = False
        if self._ring is None:
            return
        self._submit_now()
        self._reap()
        self._maybe_close()

    def _submit_now(self) -> None:
        ring = self._ring
        if ring is None:
            return
        n = ring.pending()
        if not n:
            return
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
        io = self._io
        if io is None:
            return
        # Releases are delivered after the whole batch, merged into runs of consecutive ids
        # per transport: like MSG_ZEROCOPY's coalesced ranges, one tracker/policy update
        # covers many sends instead of one each.
        releases: list[list[Any]] = []  # [callback, lo, hi, copied bit]
        groups = self._groups
        # The group of the previous CQE, cached: (ud >> _INDEX_BITS, entry, its uniform size).
        cur_hi, entry, uniform = -1, None, -1
        # A run of notifications of one group, consecutive and alike: its entry, the first
        # one's user_data, the user_data that would extend it and their res.
        run_entry: list[Any] | None = None
        run_ud = next_ud = -1
        run_res = 0
        # send_zc_many's CQEs are the hot path, handled inline (a call per CQE cost ~0.2 us
        # per datagram, measured). The kernel posts a send's notification only after its
        # result (the request holds a reference on the notification until it completes), so
        # each datagram ends with its notification, or with a result without F_MORE.
        finished: list[list[Any]] = []  # groups whose results are all in (see on_done)
        for ud, res, flags in io.reap():
            if ud == next_ud and flags == IORING_CQE_F_NOTIF and res == run_res:
                next_ud += 1  # the next datagram of the run is released: the common case
                continue
            if ud >> _INDEX_BITS != cur_hi:
                if ud < _GROUP_UD:
                    self._single_cqe(ud, res, flags, releases)
                    continue
                cur_hi = ud >> _INDEX_BITS
                entry = groups.get(cur_hi ^ _GROUP_HI)
                if entry is None:
                    cur_hi = -1
                    continue
                uniform = entry[_G_UNIFORM]
            assert entry is not None
            if not flags & IORING_CQE_F_NOTIF:  # a result
                entry[_G_RESULTS] -= 1
                if not entry[_G_RESULTS] and entry[_G_ON_DONE] is not None:
                    finished.append(entry)
                if flags == IORING_CQE_F_MORE and res == uniform:
                    continue  # sent whole; its notification follows
            if run_entry is not None:  # anything else ends the run
                if self._end_run(run_entry, run_ud, next_ud, run_res, releases):
                    cur_hi = -1  # its group is done and gone (not this CQE's: that is alive)
                run_entry, next_ud = None, -1
            i = ud & _INDEX_MASK
            if flags & IORING_CQE_F_NOTIF:
                if entry[_G_VOIDED] is None:
                    run_entry, run_ud, next_ud, run_res = entry, ud, ud + 1, res
                    continue
                copied = res & _COPIED
            else:
                if res != entry[_G_SIZES][i]:
                    self._group_result(entry, i, res)
                if flags & IORING_CQE_F_MORE:
                    continue
                copied = _COPIED  # nothing more will come: count it as not zero-copy
            voided = entry[_G_VOIDED]
            if voided is None or i not in voided:
                ident = (entry[_G_FIRST] + i) & _U32
                _add_release(releases, entry[_G_ON_RELEASED], ident, ident, copied)
            entry[_G_LEFT] -= 1
            if not entry[_G_LEFT]:
                self._end_group(entry)
                cur_hi = -1
        if run_entry is not None:
            self._end_run(run_entry, run_ud, next_ud, run_res, releases)
        for cb, lo, hi, copied in releases:
            self._release_run(cb, lo, hi, copied)
        for entry in finished:
            self._call_on_done(entry)

    def _end_run(self, entry: list[Any], first_ud: int, next_ud: int, res: int,
                 releases: list[list[Any]]) -> bool:
        """Release a run of a group's notifications (user_data ``first_ud`` up to, not
        including, ``next_ud``); True if that ended the group."""
        count = next_ud - first_ud
        lo = (entry[_G_FIRST] + (first_ud & _INDEX_MASK)) & _U32
        _add_release(releases, entry[_G_ON_RELEASED], lo, (lo + count - 1) & _U32, res & _COPIED)
        entry[_G_LEFT] -= count
        if entry[_G_LEFT]:
            return False
        self._end_group(entry)
        return True

    def _end_group(self, entry: list[Any]) -> None:
        """Every datagram of the group was released: the kernel references none of its buffers."""
        del self._groups[entry[_G_KEY]]
        for pin in entry[_G_PINS]:
            _unpin(pin)

    def _single_cqe(self, ud: int, res: int, flags: int, releases: list[list[Any]]) -> None:
        """A CQE of a :meth:`send_zc` request."""
        requests = self._requests
        if flags & IORING_CQE_F_NOTIF:
            req = requests.pop(ud, None)  # the kernel no longer references the chunk
            if req is None:
                return
            if not req[_RESULTED]:
                req[_NOTIFIED] = res  # result not seen yet: finish both when it arrives
                requests[ud] = req
            elif req[_IDENT] is not None:
                ident = req[_IDENT]
                _add_release(releases, req[_ON_RELEASED], ident, ident, res & _COPIED)
            return
        req = requests.get(ud)
        if req is None:
            return
        req[_RESULTED] = True
        if res != req[_EXPECT]:
            self._call_on_result(req, res)
        # Always decide from F_MORE: failed sends (-ECONNRESET, -ENOMEM...) carry it too, and
        # until the notification the kernel may reference the chunk.
        if flags & IORING_CQE_F_MORE and req[_NOTIFIED] is None:
            return
        res = _COPIED if req[_NOTIFIED] is None else req[_NOTIFIED]
        # No notification (still) to come: the kernel no longer references the chunk.
        del requests[ud]
        ident = req[_IDENT]
        if ident is not None:
            _add_release(releases, req[_ON_RELEASED], ident, ident, res & _COPIED)

    def _call_on_done(self, entry: list[Any]) -> None:
        self._guarded(entry[_G_ON_DONE], entry[_G_CTX])

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

    def _release_run(self, cb: OnReleased, lo: int, hi: int, copied: int) -> None:
        self._guarded(cb, lo, hi, bool(copied))


def _add_release(releases: list[list[Any]], cb: OnReleased, lo: int, hi: int,
                 copied: int) -> None:
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
        # submit_zc for a connected socket without the per-call dispatch (datagram hot path):
        # (chunk, on_result, on_released, ctx, ident, expect).
        self.submit_zc_connected = functools.partial(ring.send_zc, self._fd, self._flags, None)
        return None

    def forget(self, sock: socket.socket) -> None:
        """The transport is closing ``sock``: submit what is queued for it, leave the ring."""
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.detach()

    def send(self, sock: socket.socket, data: memoryview, *, zerocopy: bool,
             address: Any = None) -> int:
        """A plain copying send (zero-copy sends go through :meth:`submit_zc`)."""
        if address is None:
            return sock.send(data)
        return sock.sendto(data, address)

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

    def submit_zc_many(self, pins: list[Any], sizes: list[int], on_result: OnResult,
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
