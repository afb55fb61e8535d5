"""Batched SEND_ZC on a mapped :class:`~aiozc._sys.uring.Ring`: the SQE fill, the submit and the
CQE reap of the engine's hot path, turned into compact events.

Two implementations of one contract:

* :class:`CRingIO`, the compiled core (``aiozc/_sys/_core_uring.c``): one C call fills a
  batch's SQEs, one submits, one reaps every CQE and folds it into events.
* :class:`PyRingIO`, the pure-Python reference (cffi ABI mode, ``struct`` on memoryviews of
  the mappings), used without the compiled core (``AIOZC_NO_EXTENSIONS=1``, no compiler).

Both hand out the same user_data and group keys (counted from 1 and 0) and return the same
events for the same CQEs (tests/test_uring_io_diff.py). What an event means, 4 ints each,
``(kind, key, a, b)``, is documented with the ``EV_*`` constants and in the C source; the
engine (aiozc/engines/io_uring.py) maps keys to its callbacks and futures.

Sends carry REPORT_USAGE. A send whose bytes lie inside a registered fixed buffer
(:meth:`set_fixed`) goes with IORING_RECVSEND_FIXED_BUF and that buffer's index. Neither
implementation keeps a reference to a buffer: the caller keeps it (and the destination
sockaddr) alive until the events say the kernel let it go.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Any, Protocol

from . import core as _core
from . import uring as _uring
from .uring import IORING_CQE_F_MORE, IORING_CQE_F_NOTIF, IORING_NOTIF_USAGE_ZC_COPIED

__all__ = ["RingIO", "PyRingIO", "CRingIO", "ring_io", "GROUP_SIZE", "EV_G_RESULT",
           "EV_G_RELEASE", "EV_G_RELEASE_COPIED", "EV_G_RESULTS_IN", "EV_G_END",
           "EV_S_RESULT", "EV_S_DONE", "EV_D_PENDING"]

# Events (kind, key, a, b); key is a group key or a single send's user_data.
EV_G_RESULT = 1  # a group's result other than its datagram's size: a = index, b = res
EV_G_RELEASE = 2  # datagrams a .. a + b - 1 of a group released, zero-copy
EV_G_RELEASE_COPIED = 3  # the same, copied (or never sent: a result without F_MORE)
EV_G_RESULTS_IN = 4  # every result of the group is in
EV_G_END = 5  # every datagram of the group released: its buffers may go
EV_S_RESULT = 6  # a single send's result other than its expected length: a = res
EV_S_DONE = 7  # the kernel no longer references a single send: a = copied (0/1)
# A compiled datagram path (_core_udpring.c; CRingIO only) has results to apply: key = its tag.
EV_D_PENDING = 8

# A group's datagrams carry user_data _GROUP_UD | key << _INDEX_BITS | index; single sends
# count up from 1, far below.
_INDEX_BITS = 20
_INDEX_MASK = (1 << _INDEX_BITS) - 1
GROUP_SIZE = 1 << _INDEX_BITS
_GROUP_UD = 1 << 63
_U32 = 0xFFFFFFFF
_COPIED = IORING_NOTIF_USAGE_ZC_COPIED
_ZC_IOPRIO = _uring.IORING_SEND_ZC_REPORT_USAGE
_ZC_FIXED_IOPRIO = _uring.IORING_SEND_ZC_REPORT_USAGE | _uring.IORING_RECVSEND_FIXED_BUF
_OP_SEND_ZC = _uring.IORING_OP_SEND_ZC

# struct io_uring_sqe / io_uring_cqe (uapi; uring.py checks sizes and offsets at import).
# One pack_into per SQE costs ~0.3 us where setting the fields through cffi cost ~1.4 us
# (measured, CPython 3.11).
_SQE = struct.Struct("<BBHiQQIIQHHHHQQ")
_CQE = struct.Struct("<QiI")
_ffi = _uring.ffi
_cast = _ffi._backend.cast  # ffi.cast wraps it in Python (~0.1 us per call, measured)
_UINTPTR = _ffi.typeof("uintptr_t")


def _sq_full() -> BlockingIOError:
    return BlockingIOError(errno.EAGAIN, "io_uring submission queue full")


def _enter_error(err: int) -> OSError:
    return OSError(err, f"io_uring_enter: {os.strerror(err)}")


class RingIO(Protocol):
    submits: int  # io_uring_enter rounds that submitted (tests: batching)
    submitted: int  # SQEs submitted
    fixed_sends: int  # sends that went as fixed buffers

    def pending(self) -> int:
        """SQEs prepared and not yet consumed by the kernel."""

    def set_fixed(self, ranges: list[tuple[int, int]]) -> None:
        """Address ranges ``(lo, hi)`` of the registered fixed buffers, index = position."""

    def send(self, fd: int, flags: int, handle: Any, dest: Any, dest_len: int,
             expect: int | None) -> int:
        """Queue one SEND_ZC of ``handle`` (a cffi ``from_buffer``); its user_data. A result
        of exactly ``expect`` bytes yields no EV_S_RESULT (None: every result does).
        Submits first if the SQ is full; BlockingIOError if it stays full, OSError if the
        submit failed."""

    def send_group(self, fd: int, flags: int, pins: list[Any],
                   sizes: list[int]) -> tuple[int, OSError | None]:
        """Queue a SEND_ZC per datagram (at most GROUP_SIZE) as one group: ``(key, error)``.
        The group is registered whole; ``error`` says why not every SQE was filled."""

    def submit(self) -> None:
        """Hand what is queued to the kernel (OSError if io_uring_enter failed)."""

    def reap(self) -> list[int]:
        """Every available CQE, as events: a flat list, 4 ints per event."""

    def release(self) -> None:
        """Before the Ring is unmapped."""


class PyRingIO:
    """The pure-Python reference of :class:`CRingIO` (see the module docstring)."""

    def __init__(self, ring: _uring.Ring) -> None:
        self.ring = ring
        self._sqes = memoryview(_ffi.buffer(ring._sqes, ring.sq_entries * 64))
        self._cqes = memoryview(_ffi.buffer(ring._cqes, ring.cq_entries * 16))
        self._sq_mask = ring._sq_mask
        self._sq_entries = ring.sq_entries
        self._cq_mask = ring._cq_mask
        # cffi uint32_t pointers into the rings (typed Any: cffi has no stubs)
        self._sq_khead: Any = ring._sq_khead
        self._cq_khead: Any = ring._cq_khead
        self._cq_ktail: Any = ring._cq_ktail
        self._fixed: list[tuple[int, int]] = []
        self._singles: dict[int, list[Any]] = {}  # ud -> [expect, resulted, notified res]
        self._groups: dict[int, list[Any]] = {}  # key -> [sizes, left, results]
        self.next_ud = 1
        self.next_group = 0
        self.submits = self.submitted = self.fixed_sends = 0

    def release(self) -> None:
        self._sqes.release()
        self._cqes.release()

    def pending(self) -> int:
        return self.ring.pending()

    def set_fixed(self, ranges: list[tuple[int, int]]) -> None:
        self._fixed = list(ranges)

    def _fixed_index(self, addr: int, size: int) -> int | None:
        for index, (lo, hi) in enumerate(self._fixed):
            if lo <= addr and addr + size <= hi:
                return index
        return None

    def submit(self) -> None:
        n = self.ring.pending()
        if not n:
            return
        self.ring.submit()
        self.submits += 1
        self.submitted += n

    def _room(self) -> None:
        ring = self.ring
        if ring.pending() >= self._sq_entries:
            self.submit()
            if ring.pending() >= self._sq_entries:
                raise _sq_full()

    def _fill(self, fd: int, flags: int, addr: int, size: int, dest_addr: int, dest_len: int,
              ud: int) -> None:
        fixed = self._fixed_index(addr, size) if self._fixed else None
        if fixed is None:
            ioprio, index = _ZC_IOPRIO, 0
        else:
            ioprio, index = _ZC_FIXED_IOPRIO, fixed
            self.fixed_sends += 1
        ring = self.ring
        tail = ring._sq_tail
        _SQE.pack_into(self._sqes, (tail & self._sq_mask) << 6, _OP_SEND_ZC, 0, ioprio, fd,
                       dest_addr, addr, size, flags, ud, index, 0, dest_len, 0, 0, 0)
        ring._sq_tail = (tail + 1) & _U32

    def send(self, fd: int, flags: int, handle: Any, dest: Any, dest_len: int,
             expect: int | None) -> int:
        self._room()
        ud = self.next_ud
        self.next_ud = ud + 1
        self._singles[ud] = [expect, False, None]
        dest_addr = 0 if dest is None else int(_cast(_UINTPTR, dest))
        self._fill(fd, flags, int(_cast(_UINTPTR, handle)), len(handle), dest_addr, dest_len, ud)
        return ud

    def send_group(self, fd: int, flags: int, pins: Any,
                   sizes: list[int]) -> tuple[int, OSError | None]:
        if len(pins) > GROUP_SIZE:
            raise ValueError(f"a group holds at most {GROUP_SIZE} datagrams")
        cast = _cast
        # cffi pins, or the compiled core's PinSet (its buffers' addresses)
        addrs = [int(cast(_UINTPTR, pin)) for pin in pins] if pins.__class__ is list else pins.addresses()
        key = self.next_group
        self.next_group = key + 1
        n = len(pins)
        self._groups[key] = [list(sizes), n, n]
        ring = self.ring
        entries = self._sq_entries
        sqes, sq_mask, pack_into = self._sqes, self._sq_mask, _SQE.pack_into
        fixed = self._fixed
        fixed_lo, fixed_hi = fixed[0] if fixed else (0, 0)
        ud = _GROUP_UD | key << _INDEX_BITS
        tail = ring._sq_tail
        free = entries - ring.pending()
        fixed_sends = 0
        error: OSError | None = None
        for addr, size in zip(addrs, sizes):
            if not free:
                ring._sq_tail = tail
                try:
                    self.submit()  # SQ full: hand this much to the kernel now
                except OSError as exc:
                    error = exc
                    break
                tail = ring._sq_tail
                free = entries - ring.pending()
                if not free:
                    error = _sq_full()
                    break
            if fixed_lo <= addr and addr + size <= fixed_hi:
                ioprio, index = _ZC_FIXED_IOPRIO, 0
                fixed_sends += 1
            elif len(fixed) > 1 and (other := self._fixed_index(addr, size)) is not None:
                ioprio, index = _ZC_FIXED_IOPRIO, other
                fixed_sends += 1
            else:
                ioprio, index = _ZC_IOPRIO, 0
            pack_into(sqes, (tail & sq_mask) << 6, _OP_SEND_ZC, 0, ioprio, fd, 0, addr, size,
                      flags, ud, index, 0, 0, 0, 0, 0)
            tail = (tail + 1) & _U32
            free -= 1
            ud += 1
        ring._sq_tail = tail
        self.fixed_sends += fixed_sends
        return key, error

    # -- completion ------------------------------------------------------------------------

    def _read_cqes(self) -> list[tuple[int, int, int]]:
        """Every available CQE as (user_data, res, flags), like Ring.reap()."""
        ring = self.ring
        if ring._needs_enter():
            _uring._sys_enter(ring.fd, 0, 0, _uring.IORING_ENTER_GETEVENTS)
        out: list[tuple[int, int, int]] = []
        iter_unpack, cqes, mask = _CQE.iter_unpack, self._cqes, self._cq_mask
        while True:
            head = self._cq_khead[0]
            tail = self._cq_ktail[0]  # acquire-load on x86 TSO (see uring.py)
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

    def reap(self) -> list[int]:
        ev: list[int] = []
        groups = self._groups
        cur_key, entry = -1, None
        # The user_data of the notification that would extend the last event (a release run)
        # and its copied bit: the common case, one datagram after the other.
        next_ud, run_copied = -1, 0
        for ud, res, flags in self._read_cqes():
            if ud < _GROUP_UD:
                next_ud = -1
                self._single_cqe(ev, ud, res, flags)
                continue
            if ud == next_ud and flags == IORING_CQE_F_NOTIF and res & _COPIED == run_copied:
                assert entry is not None
                ev[-1] += 1
                entry[1] -= 1
                if entry[1]:
                    next_ud += 1
                    continue
                self._end_group(ev, cur_key)
                cur_key, next_ud = -1, -1
                continue
            next_ud = -1
            key = (ud ^ _GROUP_UD) >> _INDEX_BITS
            if key != cur_key:
                found = groups.get(key)
                if found is None:
                    continue
                cur_key, entry = key, found
            assert entry is not None
            i = ud & _INDEX_MASK
            if i >= len(entry[0]):
                continue
            if flags & IORING_CQE_F_NOTIF:
                copied = res & _COPIED
            else:
                entry[2] -= 1
                if not entry[2]:
                    ev += (EV_G_RESULTS_IN, key, 0, 0)
                if res != entry[0][i]:
                    ev += (EV_G_RESULT, key, i, res)
                if flags & IORING_CQE_F_MORE:
                    continue  # its notification follows
                copied = _COPIED  # nothing more will come: not zero-copy
            if self._release(ev, entry, key, i, copied):
                cur_key = -1
            elif flags & IORING_CQE_F_NOTIF and i + 1 < len(entry[0]):
                next_ud, run_copied = ud + 1, copied
        return ev

    def _release(self, ev: list[int], entry: list[Any], key: int, i: int, copied: int) -> bool:
        """Datagram ``i`` of group ``key`` released (extends the last release run if it can);
        True if that ended the group."""
        kind = EV_G_RELEASE_COPIED if copied else EV_G_RELEASE
        if ev and ev[-4] == kind and ev[-3] == key and ev[-2] + ev[-1] == i:
            ev[-1] += 1
        else:
            ev += (kind, key, i, 1)
        entry[1] -= 1
        if entry[1]:
            return False
        self._end_group(ev, key)
        return True

    def _end_group(self, ev: list[int], key: int) -> None:
        del self._groups[key]
        ev += (EV_G_END, key, 0, 0)

    def _single_cqe(self, ev: list[int], ud: int, res: int, flags: int) -> None:
        singles = self._singles
        s = singles.get(ud)
        if s is None:
            return
        if flags & IORING_CQE_F_NOTIF:
            if not s[1]:
                s[2] = res  # result not seen yet: finish both when it arrives
                return
            del singles[ud]
            ev += (EV_S_DONE, ud, 1 if res & _COPIED else 0, 0)
            return
        s[1] = True
        if res != s[0]:
            ev += (EV_S_RESULT, ud, res, 0)
        if flags & IORING_CQE_F_MORE and s[2] is None:
            return
        del singles[ud]
        ev += (EV_S_DONE, ud, 1 if s[2] is None or s[2] & _COPIED else 0, 0)


class CRingIO:
    """:class:`PyRingIO` in C (``_core_uring.c``); needs the compiled core."""

    def __init__(self, ring: _uring.Ring) -> None:
        lib, ffi = _core.lib, _core.ffi
        r = lib.zc_uring_new(
            ring.fd, ring.setup_flags, ring._sq_khead, ring._sq_ktail, ring._sq_kflags,
            ring._sq_mask, ring.sq_entries, ring._sqes, ring._cq_khead, ring._cq_ktail,
            ring._cq_mask, ring._cqes,
        )
        if r == ffi.NULL:
            raise MemoryError("zc_uring_new")
        self.ring = ring
        self._r: Any = r
        self._lib: Any = lib
        self._unpack = ffi.unpack
        self._null = ffi.NULL
        self._send = lib.zc_uring_send
        self._send_group = lib.zc_uring_send_group
        self._send_pins = lib.zc_uring_send_pins
        self._reap = lib.zc_uring_reap
        self._expect_any = lib.ZU_EXPECT_ANY

    # The counters live in the C struct.
    @property
    def submits(self) -> int:
        return int(self._r.submits)

    @property
    def submitted(self) -> int:
        return int(self._r.submitted)

    @property
    def fixed_sends(self) -> int:
        return int(self._r.fixed_sends)

    @property
    def next_ud(self) -> int:
        return int(self._r.next_ud)

    @property
    def next_group(self) -> int:
        return int(self._r.next_group)

    def release(self) -> None:
        r, self._r = self._r, None
        if r is not None:
            # The Ring's local tail follows ours, so that Ring.pending()/close() agree.
            self.ring._sq_tail = int(r.sq_tail)
            self._lib.zc_uring_free(r)

    def __del__(self) -> None:
        self.release()

    def pending(self) -> int:
        return int(self._lib.zc_uring_pending(self._r))

    def set_fixed(self, ranges: list[tuple[int, int]]) -> None:
        rc = self._lib.zc_uring_set_fixed(self._r, [lo for lo, _ in ranges],
                                          [hi for _, hi in ranges], len(ranges))
        if rc < 0:
            raise ValueError(f"at most 64 fixed buffers, got {len(ranges)}")

    def submit(self) -> None:
        r = self._r
        r.submit_asked = 0  # a compiled send asks for the next loop iteration's submit again
        ret = self._lib.zc_uring_submit(r)
        if ret < 0:
            raise _enter_error(-ret)

    def send(self, fd: int, flags: int, handle: Any, dest: Any, dest_len: int,
             expect: int | None) -> int:
        ud = self._send(self._r, fd, flags, handle, len(handle),
                        self._null if dest is None else dest, dest_len,
                        self._expect_any if expect is None else expect)
        if ud < 0:
            raise _sq_full() if ud == -errno.EAGAIN else _enter_error(-ud)
        return ud  # type: ignore[no-any-return]

    def send_group(self, fd: int, flags: int, pins: Any,
                   sizes: list[int]) -> tuple[int, OSError | None]:
        if len(pins) > GROUP_SIZE:
            raise ValueError(f"a group holds at most {GROUP_SIZE} datagrams")
        r = self._r
        n = len(pins)
        if pins.__class__ is not list:  # a PinSet: addresses and sizes read in C
            key = self._send_pins(r, fd, flags, id(pins))
        elif n and sizes.count(sizes[0]) == n:  # one size (the usual batch): no list to convert
            key = self._send_group(r, fd, flags, pins, self._null, n, sizes[0])
        else:
            key = self._send_group(r, fd, flags, pins, sizes, n, -1)
        if key < 0:
            raise MemoryError("zc_uring_send_group")
        if r.filled == n:
            return key, None
        err = r.err
        return key, _sq_full() if err == errno.EAGAIN else _enter_error(err)

    def reap(self) -> list[int]:
        r = self._r
        n = self._reap(r)
        if n <= 0:
            if n < 0:
                raise _enter_error(-n) if n != -errno.ENOMEM else MemoryError("zc_uring_reap")
            return []
        events = self._unpack(r.ev, n * 4)
        r.nev = 0  # (a reap inside a compiled datagram send leaves its events for this one)
        return events  # type: ignore[no-any-return]

    def bind_dgram(self, d: Any, tag: int, flags: int) -> None:
        """Let the compiled datagram path ``d`` (_core_dgram.c) send through this ring, its
        completions reported as EV_D_PENDING events keyed ``tag`` (see _core_udpring.c)."""
        self._lib.zc_dgram_set_uring(d, self._r, tag, flags)

    def unbind_dgram(self, d: Any) -> None:
        """``d`` sends through send(2) again; its sends still in flight are forgotten."""
        self._lib.zc_dgram_set_uring(d, self._null, 0, 0)


def ring_io(ring: _uring.Ring) -> PyRingIO | CRingIO:
    """The compiled implementation when the core is in use, else the pure-Python one."""
    return CRingIO(ring) if _core.compiled else PyRingIO(ring)
