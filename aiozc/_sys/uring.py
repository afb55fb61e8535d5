"""A minimal io_uring binding for zero-copy sends (IORING_OP_SEND_ZC), in cffi ABI mode.

SEND_ZC semantics (what callers must handle)
--------------------------------------------
Each SEND_ZC produces a *result* CQE: ``res`` is bytes sent (possibly partial on a stream
socket) or ``-errno``.  If its flags carry :data:`IORING_CQE_F_MORE`, a *notification* CQE
with :data:`IORING_CQE_F_NOTIF` and the same ``user_data`` follows later, when the kernel no
longer references the buffer.  Always decide from ``F_MORE``: failed sends (e.g.
``-ECONNRESET``) carry it too.  With ``report_usage`` the notification's ``res`` has
:data:`IORING_NOTIF_USAGE_ZC_COPIED` set if the data was (at least partly) copied after all,
as loopback always does -- and also when nothing went out zero-copy at all: measured on 6.18,
failed sends (-ECONNRESET, -EPIPE) and zero-length sends get F_MORE and a notification with
the COPIED bit.  Without ``report_usage`` the notification's ``res`` is 0.  UDP out of a real
(or ifb) device is truly zero-copy: ``res`` 0.  ``res`` is the kernel's signed s32, so the
COPIED bit reads as -2**31: test it with ``res & IORING_NOTIF_USAGE_ZC_COPIED``, never ``==``.

Until the notification arrives the caller must keep the buffer alive and unmodified: the Ring
keeps no reference to it.  That includes the gap between ``prep_send_zc`` and ``submit``:
``prep_send_zc(fd, bytes(1 << 20), ...)`` with a temporary was measured to fail with -EFAULT
(the 1 MiB allocation was already unmapped at submit); a small temporary would instead be
reused by the allocator and send whatever replaced it.

Pinned-page accounting: for a process without CAP_IPC_LOCK, bytes in flight in non-fixed
SEND_ZC requests count against RLIMIT_MEMLOCK until notified.  Measured as nobody with a
256 KiB limit: a 1 MiB SEND_ZC completed with -ENOMEM (F_MORE set, notification follows) and a
64 KiB one succeeded; root is exempt.  -ENOMEM is therefore a cue to fall back to a copying
send, not a fatal error.

The ABI (constants, struct declarations, raw system calls) is in :mod:`aiozc._sys.uring_abi`;
everything is re-exported here.
"""

from __future__ import annotations

import errno as _errno
import os
import platform
import socket
import warnings
from typing import Any

from .uring_abi import (  # the constants are part of this module's API too
    IORING_CQE_F_BUFFER, IORING_CQE_F_MORE, IORING_CQE_F_NOTIF, IORING_CQE_F_SOCK_NONEMPTY,
    IORING_ENTER_GETEVENTS, IORING_FEAT_NODROP, IORING_FEAT_SINGLE_MMAP,
    IORING_NOTIF_USAGE_ZC_COPIED, IORING_OFF_CQ_RING, IORING_OFF_SQES, IORING_OFF_SQ_RING,
    IORING_OP_NOP, IORING_OP_SEND, IORING_OP_SEND_ZC, IORING_RECVSEND_FIXED_BUF,
    IORING_RECVSEND_POLL_FIRST, IORING_REGISTER_BUFFERS, IORING_REGISTER_EVENTFD,
    IORING_REGISTER_PROBE, IORING_SEND_ZC_REPORT_USAGE, IORING_SETUP_CLAMP,
    IORING_SETUP_COOP_TASKRUN, IORING_SETUP_CQSIZE, IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_SUBMIT_ALL, IORING_SETUP_TASKRUN_FLAG,
    IORING_SQ_CQ_OVERFLOW, IORING_SQ_TASKRUN, IORING_UNREGISTER_BUFFERS,
    IORING_UNREGISTER_EVENTFD, IO_URING_OP_SUPPORTED, UringUnavailable, ffi, pack_sockaddr,
)
from .uring_abi import (
    _NR_SETUP, _PROBE_OPS, _SUPPORTED_SETUP, _ZERO_SQE, _address, _libc, _mmap, _sys_enter,
    _sys_register, _sys_setup,
)

__all__ = [
    "Ring", "UringUnavailable", "pack_sockaddr", "probe", "report_usage_supported",
    "IORING_CQE_F_BUFFER", "IORING_CQE_F_MORE", "IORING_CQE_F_NOTIF",
    "IORING_CQE_F_SOCK_NONEMPTY", "IORING_ENTER_GETEVENTS", "IORING_FEAT_NODROP",
    "IORING_FEAT_SINGLE_MMAP", "IORING_NOTIF_USAGE_ZC_COPIED", "IORING_OFF_CQ_RING",
    "IORING_OFF_SQES", "IORING_OFF_SQ_RING", "IORING_OP_NOP", "IORING_OP_SEND",
    "IORING_OP_SEND_ZC", "IORING_RECVSEND_FIXED_BUF", "IORING_RECVSEND_POLL_FIRST",
    "IORING_REGISTER_BUFFERS", "IORING_REGISTER_EVENTFD", "IORING_REGISTER_PROBE",
    "IORING_SEND_ZC_REPORT_USAGE", "IORING_SETUP_CLAMP", "IORING_SETUP_COOP_TASKRUN",
    "IORING_SETUP_CQSIZE", "IORING_SETUP_DEFER_TASKRUN", "IORING_SETUP_SINGLE_ISSUER",
    "IORING_SETUP_SUBMIT_ALL", "IORING_SETUP_TASKRUN_FLAG", "IORING_SQ_CQ_OVERFLOW",
    "IORING_SQ_TASKRUN", "IORING_UNREGISTER_BUFFERS", "IORING_UNREGISTER_EVENTFD",
    "IO_URING_OP_SUPPORTED",
]

# --- availability ------------------------------------------------------------------------

def _explain(err: OSError) -> str:
    """A human reason for a failed io_uring_setup, because bare EPERM helps nobody."""
    code = err.errno
    if code == _errno.ENOSYS:
        return "io_uring_setup: ENOSYS (kernel built without io_uring, or a seccomp filter)"
    if code == _errno.EPERM:
        return ("io_uring_setup: EPERM (kernel.io_uring_disabled restricts it to "
                "kernel.io_uring_group, or a container seccomp profile blocks io_uring)")
    if code == _errno.ENOMEM:
        return "io_uring_setup: ENOMEM (RLIMIT_MEMLOCK too low for the rings on kernels < 5.12)"
    return f"io_uring_setup failed: {err}"


def _disabled_sysctl() -> str | None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            value = f.read().strip()
    except OSError:
        return None  # sysctl predates 6.6: io_uring is not disabled by it
    if value == "2":
        return "io_uring is disabled (/proc/sys/kernel/io_uring_disabled = 2)"
    return None  # "1" still allows root / io_uring_group members; setup will tell


def _supported_ops(ring_fd: int) -> set[int]:
    buf = ffi.new("char[]", ffi.sizeof("struct io_uring_probe") + _PROBE_OPS * 8)
    p = ffi.cast("struct io_uring_probe *", buf)
    _sys_register(ring_fd, IORING_REGISTER_PROBE, p, _PROBE_OPS)
    return {p.ops[i].op for i in range(p.ops_len) if p.ops[i].flags & IO_URING_OP_SUPPORTED}


_probe_result: list[str | None] = []


def probe() -> str | None:
    """Return ``None`` if SEND_ZC works here, else the reason it does not (cached)."""
    if not _probe_result:
        _probe_result.append(_probe_uncached())
    return _probe_result[0]


def _probe_uncached() -> str | None:
    if _NR_SETUP < 0:
        return f"io_uring syscall numbers unknown for architecture {platform.machine()!r}"
    reason = _disabled_sysctl()
    if reason:
        return reason
    try:
        ring = Ring(2)
    except OSError as exc:  # UringUnavailable, or mmap of the rings failing
        return str(exc)
    try:
        if IORING_OP_SEND_ZC not in _supported_ops(ring.fd):
            return "kernel io_uring lacks IORING_OP_SEND_ZC (needs Linux 6.0+)"
    except OSError as exc:
        return f"IORING_REGISTER_PROBE failed: {exc}"
    finally:
        ring.close()
    return None


_report_usage_result: list[bool] = []


def report_usage_supported() -> bool:
    """Whether SEND_ZC accepts IORING_SEND_ZC_REPORT_USAGE (Linux 6.2+; 6.0/6.1 say EINVAL).

    Measured by sending 0 bytes with the flag on an unconnected UDP socket: the flag is
    checked when the SQE is prepared (-EINVAL), the missing address only when it is issued
    (-EDESTADDRREQ).  Cached; False also when io_uring is unavailable.
    """
    if not _report_usage_result:
        _report_usage_result.append(probe() is None and _report_usage_uncached())
    return _report_usage_result[0]


def _report_usage_uncached() -> bool:
    with Ring(2) as ring, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ring.prep_send_zc(sock.fileno(), b"", 0, 1, report_usage=True)
        ring.submit(wait_nr=1)
        # The notification still owed is simply dropped with the ring.
        return next(res for ud, res, flags in ring.reap()
                    if not flags & IORING_CQE_F_NOTIF) != -_errno.EINVAL


# --- the ring ----------------------------------------------------------------------------

class Ring:
    """One io_uring instance: an SQ to prepare sends into and a CQ to reap completions from.

    ``entries`` is the SQ size (the kernel rounds it up to a power of two); the CQ defaults to
    twice that, or ``cq_entries``.  Each SEND_ZC needs two CQ slots (result + notification),
    and notifications may be held for as long as a peer does not read, so size the CQ for the
    sends in flight.  Overflow is not lost on kernels with IORING_FEAT_NODROP (5.5+):
    :meth:`reap` flushes it.

    ``flags``: ``IORING_SETUP_COOP_TASKRUN`` (with ``TASKRUN_FLAG``) saves the kernel an IPI
    per completion; ``IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`` defers
    completion work until :meth:`reap`/:meth:`submit` enter the kernel, and then the ring
    must only be used from the thread that created it.  Close it explicitly (or use ``with``);
    a Ring collected unclosed is closed with a ResourceWarning, like a socket.
    """

    def __init__(self, entries: int = 256, *, flags: int = 0, cq_entries: int | None = None):
        if flags & ~_SUPPORTED_SETUP:
            raise ValueError(f"unsupported io_uring setup flags {flags & ~_SUPPORTED_SETUP:#x}")
        self._closed = True  # until fully set up, so close() from __del__ paths is safe
        self._maps: list[tuple[Any, int]] = []
        self._eventfd = -1
        self._buffers: list[Any] = []             # from_buffer cdata of registered buffers
        self._buf_ranges: list[tuple[int, int]] = []
        self._dests: dict[int, list[Any]] = {}  # user_data -> sockaddr kept until result CQE
        params = ffi.new("struct io_uring_params *")
        params.flags = flags
        if cq_entries is not None:
            params.flags |= IORING_SETUP_CQSIZE
            params.cq_entries = cq_entries
        if _NR_SETUP < 0:
            raise UringUnavailable(_errno.ENOSYS, f"no io_uring on {platform.machine()!r}")
        try:
            self.fd = _sys_setup(entries, params)  # the kernel sets O_CLOEXEC on it
        except OSError as exc:
            raise UringUnavailable(exc.errno, _explain(exc)) from exc
        self.setup_flags = params.flags
        self.features = params.features
        try:
            self._map_rings(params)
        except BaseException:
            self._unmap()
            os.close(self.fd)
            raise
        self._closed = False

    def _map_rings(self, p: Any) -> None:
        """mmap the SQ ring, CQ ring (one region with FEAT_SINGLE_MMAP) and the SQE array."""
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * ffi.sizeof("struct io_uring_cqe")
        if p.features & IORING_FEAT_SINGLE_MMAP:
            sq_size = cq_size = max(sq_size, cq_size)
        sq = self._map(sq_size, IORING_OFF_SQ_RING)
        cq = sq if p.features & IORING_FEAT_SINGLE_MMAP else self._map(cq_size, IORING_OFF_CQ_RING)
        sqes = self._map(p.sq_entries * ffi.sizeof("struct io_uring_sqe"), IORING_OFF_SQES)

        def u32(base: Any, off: int) -> Any:
            return ffi.cast("uint32_t *", ffi.cast("char *", base) + off)

        self._sq_khead = u32(sq, p.sq_off.head)
        self._sq_ktail = u32(sq, p.sq_off.tail)
        self._sq_kflags = u32(sq, p.sq_off.flags)
        self._sq_mask = u32(sq, p.sq_off.ring_mask)[0]
        self._sq_entries = u32(sq, p.sq_off.ring_entries)[0]
        array = u32(sq, p.sq_off.array)
        for i in range(self._sq_entries):  # identity map, as liburing does: SQE i is slot i
            array[i] = i
        self._sqes = ffi.cast("struct io_uring_sqe *", sqes)
        self._sq_tail = self._sq_ktail[0]  # local tail; published to the kernel in submit()

        self._cq_khead = u32(cq, p.cq_off.head)
        self._cq_ktail = u32(cq, p.cq_off.tail)
        self._cq_mask = u32(cq, p.cq_off.ring_mask)[0]
        self.cq_entries = u32(cq, p.cq_off.ring_entries)[0]
        self._cqes = ffi.cast("struct io_uring_cqe *", ffi.cast("char *", cq) + p.cq_off.cqes)

    def _map(self, length: int, offset: int) -> Any:
        ptr = _mmap(self.fd, length, offset)
        self._maps.append((ptr, length))
        return ptr

    def _unmap(self) -> None:
        for ptr, length in self._maps:
            _libc.munmap(ptr, length)
        self._maps.clear()

    # -- lifecycle --

    @property
    def sq_entries(self) -> int:
        return self._sq_entries

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unmap the rings and close the ring fd and eventfd; idempotent.

        In-flight sends are cancelled or completed by the kernel on its own; their CQEs are
        lost.  The kernel holds its own page references for un-notified buffers, so this is
        memory-safe, but data sent from a buffer reused after close() may be the new data.
        """
        if self._closed:
            return
        self._closed = True
        self._unmap()
        self._buffers.clear()  # releases the Py_buffer exports (e.g. lets an mmap close)
        self._buf_ranges.clear()
        self._dests.clear()
        if self._eventfd >= 0:
            os.close(self._eventfd)
            self._eventfd = -1
        os.close(self.fd)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed io_uring Ring fd={self.fd}", ResourceWarning, source=self)
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd} sq={self._sq_entries}"
        return f"<Ring {state}>"

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("io_uring Ring is closed")

    # -- registration --

    def register_eventfd(self) -> int:
        """Create and register an eventfd that becomes readable when CQEs are posted.

        This is the wakeup an event loop should watch (``add_reader``); drain it with
        ``os.eventfd_read`` then call :meth:`reap`.  The Ring owns and closes the fd.
        """
        self._check_open()
        if self._eventfd >= 0:
            return self._eventfd
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            _sys_register(self.fd, IORING_REGISTER_EVENTFD, ffi.new("int *", efd), 1)
        except BaseException:
            os.close(efd)
            raise
        self._eventfd = efd
        return efd

    @property
    def eventfd(self) -> int:
        """The registered eventfd, or -1."""
        return self._eventfd

    def register_buffers(self, buffers: list[memoryview]) -> None:
        """Register fixed buffers (IORING_REGISTER_BUFFERS) for ``prep_send_zc(fixed_index=)``.

        The kernel pins the pages once here instead of on every send.  Buffers must be
        writable (the kernel pins with FOLL_WRITE) and should be page-aligned (e.g. an
        anonymous ``mmap``).  The Ring holds the buffer exports until :meth:`unregister_buffers`
        or :meth:`close`, so e.g. an ``mmap`` cannot be closed underneath it.
        """
        self._check_open()
        if self._buffers:
            raise ValueError("buffers already registered; unregister_buffers() first")
        holders = [ffi.from_buffer(b, require_writable=True) for b in buffers]
        iovecs = ffi.new("struct iovec[]", len(holders))
        for iov, h in zip(iovecs, holders):
            iov.iov_base = h
            iov.iov_len = len(h)
        _sys_register(self.fd, IORING_REGISTER_BUFFERS, iovecs, len(holders))
        self._buffers = holders
        self._buf_ranges = [(_address(h), len(h)) for h in holders]

    def unregister_buffers(self) -> None:
        """Drop the fixed buffers (no send may still be using them) and release their exports."""
        self._check_open()
        if self._buffers:
            _sys_register(self.fd, IORING_UNREGISTER_BUFFERS, ffi.NULL, 0)
            self._buffers = []
            self._buf_ranges = []

    # -- submission --

    def space_left(self) -> int:
        """Free SQ slots (what prep_* can still fill before submit())."""
        return self._sq_entries - (self._sq_tail - self._sq_khead[0]) % (1 << 32)

    def _get_sqe(self) -> Any | None:
        if self.space_left() <= 0:
            return None
        sqe = self._sqes + (self._sq_tail & self._sq_mask)
        ffi.memmove(sqe, _ZERO_SQE, 64)
        self._sq_tail = (self._sq_tail + 1) & 0xFFFFFFFF
        return sqe

    def _unget_sqe(self) -> None:
        """Give back the slot of a half-filled SQE (the local tail is not published yet)."""
        self._sq_tail = (self._sq_tail - 1) & 0xFFFFFFFF

    def _prep_send(self, opcode: int, fd: int, buf: memoryview | bytes | bytearray, flags: int,
                   user_data: int, dest: bytes | None, ioprio: int = 0,
                   buf_index: int = 0) -> bool:
        """Fill one send SQE, all or nothing: a bad argument (OverflowError, TypeError...)
        must not leave a zeroed SQE behind, which the kernel would run as a NOP."""
        self._check_open()
        ptr = ffi.from_buffer(buf)  # released when `ptr` dies; the caller keeps `buf` alive
        sqe = self._get_sqe()
        if sqe is None:
            return False
        try:
            sqe.opcode = opcode
            sqe.ioprio = ioprio
            sqe.fd = fd
            sqe.addr = _address(ptr)
            sqe.len = len(ptr)
            sqe.msg_flags = flags
            sqe.user_data = user_data
            sqe.buf_index = buf_index
            if dest is not None:
                # Kept until the result CQE: older kernels read the sockaddr at issue time,
                # which may be after submit() returned (poll-armed retry).
                holder = ffi.new("char[]", dest)
                sqe.addr2 = _address(holder)
                sqe.addr_len = len(dest)
                self._dests.setdefault(user_data, []).append(holder)
        except BaseException:
            self._unget_sqe()
            raise
        return True

    def prep_send_zc(self, fd: int, buf: memoryview | bytes | bytearray, flags: int,
                     user_data: int, *, report_usage: bool = True,
                     fixed_index: int | None = None, dest: bytes | None = None) -> bool:
        """Queue an IORING_OP_SEND_ZC of ``buf`` on socket ``fd``; False if the SQ is full.

        ``flags`` are send(2) flags; pass ``socket.MSG_NOSIGNAL`` for stream sockets (io_uring
        does not add it).  ``dest`` is a packed sockaddr (:func:`pack_sockaddr`) for an
        unconnected datagram socket.  With ``fixed_index`` the bytes must lie inside the fixed
        buffer of that index (:meth:`register_buffers`); the kernel then skips pinning.  The
        caller must keep ``buf`` alive and unchanged until the notification CQE (see module
        docstring): the Ring keeps no reference to it.  Nothing is sent before :meth:`submit`.
        """
        ioprio = IORING_SEND_ZC_REPORT_USAGE if report_usage else 0
        if fixed_index is not None:
            self._check_fixed(buf, fixed_index)
            ioprio |= IORING_RECVSEND_FIXED_BUF
        return self._prep_send(IORING_OP_SEND_ZC, fd, buf, flags, user_data, dest,
                               ioprio, fixed_index or 0)

    def prep_send(self, fd: int, buf: memoryview | bytes | bytearray, flags: int,
                  user_data: int, dest: bytes | None = None) -> bool:
        """Queue a plain, copying IORING_OP_SEND (one CQE, no notification); False if SQ full.

        The kernel copies ``buf`` while executing the request, so it must stay alive until
        the result CQE.  ``dest`` with IORING_OP_SEND needs Linux 6.1+.
        """
        return self._prep_send(IORING_OP_SEND, fd, buf, flags, user_data, dest)

    def prep_nop(self, user_data: int) -> bool:
        """Queue a no-op (one CQE with res 0): useful to wake a reaper or test plumbing."""
        self._check_open()
        sqe = self._get_sqe()
        if sqe is None:
            return False
        try:
            sqe.opcode = IORING_OP_NOP
            sqe.fd = -1
            sqe.user_data = user_data
        except BaseException:
            self._unget_sqe()
            raise
        return True

    def _check_fixed(self, buf: memoryview | bytes | bytearray, index: int) -> None:
        """Fail in Python rather than with a bare EFAULT CQE when a slice is out of range."""
        if not 0 <= index < len(self._buf_ranges):
            raise IndexError(f"no registered buffer {index}")
        start, size = self._buf_ranges[index]
        with ffi.from_buffer(buf) as p:
            addr, n = _address(p), len(p)
        if addr < start or addr + n > start + size:
            raise ValueError(f"buffer is not inside registered buffer {index}")

    def pending(self) -> int:
        """SQEs prepared but not yet consumed by the kernel."""
        return (self._sq_tail - self._sq_khead[0]) % (1 << 32)

    def submit(self, wait_nr: int = 0) -> int:
        """Publish prepared SQEs and enter the kernel; return how many it consumed.

        With ``wait_nr > 0`` block (GIL released) until that many CQEs are available.
        Without IORING_SETUP_SUBMIT_ALL the kernel stops consuming at the first SQE that fails
        its checks (that one still gets an error CQE) and then skips the wait; we enter again
        for the rest, so on return every prepared SQE has been consumed unless the kernel
        consumed none in a round (then they stay queued for the next call, see pending()).
        Raises OSError for io_uring_enter failures (e.g. EBUSY, EAGAIN under memory pressure).
        """
        self._check_open()
        self._sq_ktail[0] = self._sq_tail  # release-store on x86 TSO (see module docstring)
        total = 0
        while True:
            to_submit = self.pending()
            needs_enter = self._needs_enter()
            if to_submit == 0 and wait_nr == 0 and not needs_enter:
                return total
            flags = IORING_ENTER_GETEVENTS if wait_nr > 0 or needs_enter else 0
            done = _sys_enter(self.fd, to_submit, wait_nr, flags)
            total += done
            if done == 0 or done >= to_submit:
                return total

    def _needs_enter(self) -> bool:
        """Whether completions are parked in the kernel until we enter with GETEVENTS.

        DEFER_TASKRUN runs completion task work only inside io_uring_enter(GETEVENTS);
        COOP_TASKRUN|TASKRUN_FLAG advertises pending work with IORING_SQ_TASKRUN; and with
        NODROP an overflowed CQ is only flushed back into the ring on GETEVENTS.
        """
        if self.setup_flags & IORING_SETUP_DEFER_TASKRUN:
            return True
        return bool(self._sq_kflags[0] & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN))

    # -- completion --

    def reap(self) -> list[tuple[int, int, int]]:
        """Return ``(user_data, res, flags)`` for every available CQE, advancing the CQ head.

        Enters the kernel first only if completions are parked there (see ``_needs_enter``).
        """
        self._check_open()
        if self._needs_enter():
            _sys_enter(self.fd, 0, 0, IORING_ENTER_GETEVENTS)
        out: list[tuple[int, int, int]] = []
        while True:
            batch = self._reap_ring()
            if not batch:
                return out
            out.extend(batch)
            # The ring was full: overflowed CQEs are flushed back only on GETEVENTS.
            if not self._sq_kflags[0] & IORING_SQ_CQ_OVERFLOW:
                return out
            _sys_enter(self.fd, 0, 0, IORING_ENTER_GETEVENTS)

    def _reap_ring(self) -> list[tuple[int, int, int]]:
        head = self._cq_khead[0]
        tail = self._cq_ktail[0]  # acquire-load on x86 TSO
        out = []
        while head != tail:
            cqe = self._cqes[head & self._cq_mask]
            entry = (cqe.user_data, cqe.res, cqe.flags)
            out.append(entry)
            head = (head + 1) & 0xFFFFFFFF
            if self._dests and not entry[2] & IORING_CQE_F_NOTIF:
                self._drop_dest(entry[0])
        self._cq_khead[0] = head  # release-store: the kernel may now reuse those slots
        return out

    def _drop_dest(self, user_data: int) -> None:
        held = self._dests.get(user_data)
        if held:
            held.pop(0)
            if not held:
                del self._dests[user_data]
