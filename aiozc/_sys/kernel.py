"""Kernel ABI for MSG_ZEROCOPY: constants Python's socket module lacks, and the error queue.

Nothing here knows about event loops or futures. The layout of ``struct sock_extended_err``
comes from ``<linux/errqueue.h>`` and is declared to cffi in ABI mode, so no compiler is needed.
"""

from __future__ import annotations

import _socket
import errno as _errno
import socket
from dataclasses import dataclass
from typing import Any, Union

import cffi  # type: ignore[import-untyped]

SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
SO_EE_ORIGIN_ZEROCOPY = 5
SO_EE_CODE_ZEROCOPY_COPIED = 1
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_IP = socket.SOL_IP
SOL_IPV6 = socket.IPPROTO_IPV6
MSG_ERRQUEUE = 0x2000
MSG_CTRUNC = socket.MSG_CTRUNC

_ffi: Any = cffi.FFI()  # cffi has no stubs
_ffi.cdef(
    """
    struct sock_extended_err {
        uint32_t ee_errno;
        uint8_t  ee_origin;
        uint8_t  ee_type;
        uint8_t  ee_code;
        uint8_t  ee_pad;
        uint32_t ee_info;
        uint32_t ee_data;
    };
    """
)
_EE_SIZE = _ffi.sizeof("struct sock_extended_err")
# One extended error plus an offender sockaddr_in6 (28 bytes) fits with room to spare; the
# kernel sends one cmsg per message on the error queue.
_CMSG_SPACE = socket.CMSG_SPACE(_EE_SIZE + 32)


@dataclass(frozen=True, slots=True)
class ZeroCopyRange:
    """Send calls ``lo..hi`` (inclusive, u32, may wrap) no longer reference user pages."""

    lo: int
    hi: int
    copied: bool


@dataclass(frozen=True, slots=True)
class SocketError:
    """Any other extended error on the queue (ICMP errors with IP_RECVERR, local errors)."""

    errno: int
    origin: int
    type: int
    code: int
    info: int
    address: object  # the destination the failed datagram was sent to, if the kernel gave it


ErrQueueMessage = Union[ZeroCopyRange, SocketError]


class ErrQueueTruncated(OSError):
    """The control buffer was too small for a message (MSG_CTRUNC): a notification was lost."""


# socket.socket's family and type properties build an IntEnum from the int on every read (about
# 9 reads per accepted TCP connection, ~1/20 of its Python set-up under cProfile); the C slots
# beneath them hold the same ints (the type already without SOCK_NONBLOCK/SOCK_CLOEXEC).
raw_family = _socket.socket.family.__get__
raw_type = _socket.socket.type.__get__
_ZC_FAMILIES = frozenset((int(socket.AF_INET), int(socket.AF_INET6)))
_ZC_TYPES = frozenset((int(socket.SOCK_STREAM), int(socket.SOCK_DGRAM)))


def is_zerocopy_capable(sock: socket.socket) -> str | None:
    """Return ``None`` if MSG_ZEROCOPY may be used on ``sock``, else why not."""
    if raw_family(sock) in _ZC_FAMILIES and raw_type(sock) in _ZC_TYPES:
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        # AF_UNIX ignores SO_ZEROCOPY and MSG_ERRQUEUE on it returns application data.
        return f"address family {sock.family!r} has no zero-copy send"
    if sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        return f"socket type {sock.type!r} has no zero-copy send"
    return None


def enable_zerocopy(sock: socket.socket) -> str | None:
    """Set SO_ZEROCOPY. Returns ``None`` on success, else the reason zero-copy is unavailable.

    Without SO_ZEROCOPY the kernel silently ignores MSG_ZEROCOPY and never notifies, so a
    failure here must switch the socket to copy-only mode, never be ignored.
    """
    reason = is_zerocopy_capable(sock)
    if reason is not None:
        return reason
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    except OSError as exc:
        return f"setsockopt(SO_ZEROCOPY) failed: {exc.strerror or exc}"
    return None


def enable_recverr(sock: socket.socket) -> None:
    """Queue ICMP errors for a datagram socket on its error queue (IP_RECVERR / IPV6_RECVERR)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
    else:
        sock.setsockopt(SOL_IP, IP_RECVERR, 1)


def _parse_extended_err(data: bytes, address: object) -> ErrQueueMessage:
    ee = _ffi.from_buffer("struct sock_extended_err *", data)
    if ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY and ee.ee_errno == 0:
        # ee_info is the first id of the range, ee_data the last (both u32, inclusive).
        return ZeroCopyRange(
            int(ee.ee_info), int(ee.ee_data), ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0
        )
    return SocketError(
        int(ee.ee_errno), int(ee.ee_origin), int(ee.ee_type), int(ee.ee_code), int(ee.ee_info), address
    )


def _is_recverr_cmsg(level: int, kind: int) -> bool:
    return (level == SOL_IP and kind == IP_RECVERR) or (level == SOL_IPV6 and kind == IPV6_RECVERR)


def read_errqueue(sock: socket.socket, limit: int = 64) -> list[ErrQueueMessage]:
    """Drain up to ``limit`` messages from the socket's error queue without blocking.

    Returns an empty list when the queue is empty. ``sock`` must be non-blocking or blocking
    without a timeout: CPython waits for readiness on sockets with a timeout before recvmsg,
    so MSG_DONTWAIT alone would not stop it from blocking there. Raises ``ErrQueueTruncated`` if the kernel
    truncated a control message (a lost notification would leave a future pending forever).
    """
    if is_zerocopy_capable(sock) is not None:
        raise ValueError("MSG_ERRQUEUE is only meaningful on AF_INET/AF_INET6 sockets")
    out: list[ErrQueueMessage] = []
    for _ in range(limit):
        try:
            _, ancdata, flags, address = sock.recvmsg(0, _CMSG_SPACE, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        if flags & MSG_CTRUNC:
            raise ErrQueueTruncated(_errno.EMSGSIZE, "error-queue control message truncated")
        for level, kind, data in ancdata:
            if _is_recverr_cmsg(level, kind) and len(data) >= _EE_SIZE:
                out.append(_parse_extended_err(data, address))
    return out
