"""The io_uring kernel ABI for :mod:`aiozc._sys.uring`: uapi constants and structs, the raw
system calls, in cffi ABI mode.

Why it looks like this
----------------------
* The package must install without a compiler, so this binding uses no liburing and no cffi
  API mode: the three io_uring syscalls go through libc's variadic ``syscall()`` (``ffi.dlopen(None)``),
  the rings are mapped with libc ``mmap``, and the uapi structs from
  ``include/uapi/linux/io_uring.h`` are declared below by hand.  Their sizes are checked at
  import time against the kernel ABI (sqe 64, cqe 16, params 120 bytes), so a typo in a
  declaration fails loudly instead of corrupting the ring.
* It is sans-loop: nothing here imports asyncio.  An engine registers the eventfd from
  :meth:`Ring.register_eventfd` with its loop and calls :meth:`Ring.reap` when it fires.  The
  eventfd, not the ring fd, is the wakeup to use: with ``IORING_SETUP_DEFER_TASKRUN`` a ring
  fd watched with ``add_reader`` was seen to miss a delayed notification (PLATFORM.md).
* A :class:`Ring` is not thread-safe; use it from one thread.  Calls that block in the kernel
  (:meth:`Ring.submit` with ``wait_nr > 0``) release the GIL, as every cffi call does.

Memory ordering
---------------
The SQ tail and the CQ head are written, and the SQ head / CQ tail read, through plain cffi
``uint32_t *`` loads and stores.  That is sound on x86_64: TSO makes every aligned 4-byte load
an acquire and every store a release, and CPython cannot reorder across the cffi calls.  On
aarch64 a plain load/store is *not* acquire/release; there, the SQ side is still safe because
without SQPOLL the kernel only reads the SQ tail inside ``io_uring_enter`` (a full barrier),
but reading a CQE right after loading the CQ tail is formally racy.  We accept that on the
pure path; the compiled core (``_core_uring.c``, used when built) loads and stores them with
``__atomic`` acquire/release.
"""

from __future__ import annotations

import errno as _errno
import os
import platform
import socket
import struct
from typing import Any, Final

import cffi  # type: ignore[import-untyped]

# --- syscall numbers: the same on x86_64 and aarch64 (unified numbering since 5.1) --------
_SYSCALLS: Final = {"x86_64": (425, 426, 427), "aarch64": (425, 426, 427)}
_NR_SETUP, _NR_ENTER, _NR_REGISTER = _SYSCALLS.get(platform.machine(), (-1, -1, -1))

# --- uapi constants (include/uapi/linux/io_uring.h) --------------------------------------
IORING_SETUP_CQSIZE: Final = 1 << 3
IORING_SETUP_CLAMP: Final = 1 << 4
IORING_SETUP_SUBMIT_ALL: Final = 1 << 7
IORING_SETUP_COOP_TASKRUN: Final = 1 << 8
IORING_SETUP_TASKRUN_FLAG: Final = 1 << 9
IORING_SETUP_SINGLE_ISSUER: Final = 1 << 12
IORING_SETUP_DEFER_TASKRUN: Final = 1 << 13
# Setup flags this binding can drive.  SQPOLL/IOPOLL need a different submit protocol and
# SQE128/CQE32/NO_MMAP/NO_SQARRAY a different ring layout; they are rejected, not half-supported.
_SUPPORTED_SETUP: Final = (
    IORING_SETUP_CLAMP
    | IORING_SETUP_SUBMIT_ALL
    | IORING_SETUP_COOP_TASKRUN
    | IORING_SETUP_TASKRUN_FLAG
    | IORING_SETUP_SINGLE_ISSUER
    | IORING_SETUP_DEFER_TASKRUN
)

IORING_FEAT_SINGLE_MMAP: Final = 1 << 0
IORING_FEAT_NODROP: Final = 1 << 1

IORING_OFF_SQ_RING: Final = 0
IORING_OFF_CQ_RING: Final = 0x8000000
IORING_OFF_SQES: Final = 0x10000000

IORING_SQ_CQ_OVERFLOW: Final = 1 << 1
IORING_SQ_TASKRUN: Final = 1 << 2

IORING_ENTER_GETEVENTS: Final = 1 << 0

IORING_REGISTER_BUFFERS: Final = 0
IORING_UNREGISTER_BUFFERS: Final = 1
IORING_REGISTER_EVENTFD: Final = 4
IORING_UNREGISTER_EVENTFD: Final = 5
IORING_REGISTER_PROBE: Final = 8
IO_URING_OP_SUPPORTED: Final = 1 << 0

IORING_OP_NOP: Final = 0
IORING_OP_SEND: Final = 26
IORING_OP_SEND_ZC: Final = 47

# sqe->ioprio for send/recv
IORING_RECVSEND_POLL_FIRST: Final = 1 << 0
IORING_RECVSEND_FIXED_BUF: Final = 1 << 2
IORING_SEND_ZC_REPORT_USAGE: Final = 1 << 3  # absent from liburing-dev 2.3 headers
# notification cqe->res when REPORT_USAGE was requested (a flag; other bits reserved)
IORING_NOTIF_USAGE_ZC_COPIED: Final = 1 << 31  # absent from liburing-dev 2.3 headers

IORING_CQE_F_BUFFER: Final = 1 << 0
IORING_CQE_F_MORE: Final = 1 << 1
IORING_CQE_F_SOCK_NONEMPTY: Final = 1 << 2
IORING_CQE_F_NOTIF: Final = 1 << 3

_PROT_READ, _PROT_WRITE = 0x1, 0x2
_MAP_SHARED, _MAP_POPULATE = 0x01, 0x8000
_PROBE_OPS: Final = 256

ffi: Any = cffi.FFI()  # cffi has no stubs; its cdata objects are typed Any too
ffi.cdef(
    """
    struct io_sqring_offsets {
        uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
        uint64_t user_addr;
    };
    struct io_cqring_offsets {
        uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
        uint64_t user_addr;
    };
    struct io_uring_params {
        uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle;
        uint32_t features, wq_fd, resv[3];
        struct io_sqring_offsets sq_off;
        struct io_cqring_offsets cq_off;
    };
    /* Only the union members a send needs; offsets match the uapi header. */
    struct io_uring_sqe {
        uint8_t  opcode;
        uint8_t  flags;
        uint16_t ioprio;       /* send: IORING_RECVSEND_* / IORING_SEND_ZC_REPORT_USAGE */
        int32_t  fd;
        union { uint64_t off; uint64_t addr2; };   /* send: dest sockaddr pointer */
        union { uint64_t addr; uint64_t splice_off_in; };
        uint32_t len;
        union { uint32_t rw_flags; uint32_t msg_flags; };
        uint64_t user_data;
        uint16_t buf_index;    /* packed union with buf_group in the header */
        uint16_t personality;
        union {
            int32_t  splice_fd_in;
            uint32_t file_index;
            struct { uint16_t addr_len; uint16_t pad3; };
        };
        uint64_t addr3;
        uint64_t pad2;
    };
    struct io_uring_cqe {
        uint64_t user_data;
        int32_t  res;
        uint32_t flags;
    };
    struct io_uring_probe_op { uint8_t op, resv; uint16_t flags; uint32_t resv2; };
    struct io_uring_probe {
        uint8_t last_op, ops_len; uint16_t resv; uint32_t resv2[3];
        struct io_uring_probe_op ops[];
    };
    struct iovec { void *iov_base; size_t iov_len; };

    long syscall(long number, ...);
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
    int munmap(void *addr, size_t length);
    """
)
_libc: Any = ffi.dlopen(None)

for _name, _size in (
    ("struct io_uring_sqe", 64),
    ("struct io_uring_cqe", 16),
    ("struct io_uring_params", 120),
    ("struct io_sqring_offsets", 40),
    ("struct io_uring_probe", 16),
    ("struct io_uring_probe_op", 8),
):
    if ffi.sizeof(_name) != _size:  # pragma: no cover - a declaration bug, not a runtime state
        raise ImportError(f"aiozc._sys.uring: sizeof({_name}) = {ffi.sizeof(_name)}, want {_size}")
for _field, _off in (("addr2", 8), ("addr", 16), ("len", 24), ("msg_flags", 28),
                     ("user_data", 32), ("buf_index", 40), ("addr_len", 44), ("addr3", 48)):
    if ffi.offsetof("struct io_uring_sqe", _field) != _off:  # pragma: no cover
        raise ImportError(f"aiozc._sys.uring: io_uring_sqe.{_field} at wrong offset")

_ZERO_SQE: Final = bytes(64)
_MAP_FAILED: Final = ffi.cast("void *", -1)


class UringUnavailable(OSError):
    """io_uring (or SEND_ZC) cannot be used here; ``str(exc)`` says why in plain words."""


# --- raw syscalls ------------------------------------------------------------------------

def _u32(v: int) -> Any:
    return ffi.cast("unsigned int", v)


def _check(ret: int, what: str) -> int:
    """Turn a ``-1``/errno return into OSError, keeping the errno for callers to classify."""
    if ret < 0:
        err = ffi.errno
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _sys_setup(entries: int, params: Any) -> int:
    return _check(_libc.syscall(_NR_SETUP, _u32(entries), params), "io_uring_setup")


def _sys_enter(fd: int, to_submit: int, min_complete: int, flags: int) -> int:
    """io_uring_enter, retried on EINTR (a signal must not look like a failed submit)."""
    while True:
        ret = _libc.syscall(
            _NR_ENTER, ffi.cast("int", fd), _u32(to_submit), _u32(min_complete), _u32(flags),
            ffi.NULL, ffi.cast("size_t", 0),
        )
        if ret >= 0:
            return ret
        if ffi.errno != _errno.EINTR:
            return _check(ret, "io_uring_enter")


def _sys_register(fd: int, opcode: int, arg: Any, nr_args: int) -> int:
    return _check(
        _libc.syscall(_NR_REGISTER, ffi.cast("int", fd), _u32(opcode), arg, _u32(nr_args)),
        f"io_uring_register({opcode})",
    )


def _mmap(fd: int, length: int, offset: int) -> Any:
    ptr = _libc.mmap(ffi.NULL, length, _PROT_READ | _PROT_WRITE, _MAP_SHARED | _MAP_POPULATE,
                     fd, offset)
    if ptr == _MAP_FAILED:
        err = ffi.errno
        raise OSError(err, f"mmap io_uring region {offset:#x}: {os.strerror(err)}")
    return ptr


def pack_sockaddr(family: int, address: tuple) -> bytes:
    """Pack an AF_INET/AF_INET6 address (as given to ``sendto``) into a ``struct sockaddr``.

    SEND_ZC takes the destination as raw bytes (sqe->addr2/addr_len); numeric hosts only,
    so packing never blocks on DNS.
    """
    if family == socket.AF_INET:
        host, port = address[0], address[1]
        return struct.pack("=HH4s8x", family, socket.htons(port), socket.inet_pton(family, host))
    if family == socket.AF_INET6:
        host, port = address[0], address[1]
        flowinfo = address[2] if len(address) > 2 else 0
        scope_id = address[3] if len(address) > 3 else 0
        return struct.pack("=HHI16sI", family, socket.htons(port), socket.htonl(flowinfo),
                           socket.inet_pton(family, host), scope_id)
    raise ValueError(f"unsupported address family {family}")


def _address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))
