"""sendmmsg(2) through cffi in ABI mode (no compiler): many datagrams in one system call.

Only what the datagram transport's batch path needs: connected sockets (no ``msg_name``), one
iovec per datagram, no control messages. With ``MSG_ZEROCOPY`` every datagram the call sends
consumes one notification id, in order, exactly as one ``send()`` per datagram would (measured
on the ifb sink, see tests/test_udp_sink.py).

Return convention of the kernel (``__sys_sendmmsg``): the number of datagrams sent if at least
one was; -1 with ``errno`` only if the first one failed. An error on a later datagram is *lost*
(the call just returns fewer), so the caller retries the rest and sees the error then.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import cffi  # type: ignore[import-untyped]

__all__ = ["MAX_BATCH", "MmsgSender", "available", "pin", "unpin"]

# UIO_MAXIOV: the kernel caps vlen at 1024 (silently: more are just not sent).
MAX_BATCH = 1024

_ffi: Any = cffi.FFI()  # cffi has no stubs
_ffi.cdef(
    """
    struct iovec {
        void  *iov_base;
        size_t iov_len;
    };
    struct msghdr {
        void         *msg_name;
        unsigned int  msg_namelen;
        struct iovec *msg_iov;
        size_t        msg_iovlen;
        void         *msg_control;
        size_t        msg_controllen;
        int           msg_flags;
    };
    struct mmsghdr {
        struct msghdr msg_hdr;
        unsigned int  msg_len;
    };
    int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
    """
)

try:
    _lib: Any = _ffi.dlopen(None)
    _sendmmsg = _lib.sendmmsg
except (OSError, AttributeError) as _exc:  # pragma: no cover - every glibc/musl Linux has it
    _sendmmsg = None
    _why: str | None = f"sendmmsg unavailable: {_exc}"
else:
    _why = None

assert _ffi.sizeof("struct mmsghdr") == 64 or _ffi.sizeof("void *") != 8  # x86_64/aarch64 ABI


# pin(buf): a ``char[]`` cdata over ``buf``'s bytes (any C-contiguous buffer; BufferError if not
# contiguous, TypeError if not a buffer) holding a buffer export on it: ``buf`` can be neither
# freed nor resized until unpin(). ``len()`` is its size in bytes. ffi.from_buffer() without
# its Python wrapper (~20 ns less per datagram).
pin = functools.partial(_ffi._backend.from_buffer, _ffi.BCharA)
unpin = _ffi._backend.release  # ends a pin's buffer export now


def available() -> str | None:
    """``None`` if sendmmsg can be called, else why not."""
    return _why


class MmsgSender:
    """A reusable ``struct mmsghdr[capacity]`` whose headers each point at their own iovec.

    ``send()`` fills only ``iov_base``/``iov_len`` per datagram: the headers are wired once.
    Not thread-safe (one per transport).
    """

    __slots__ = ("capacity", "_msgs", "_iovs", "_iov_list", "_msg_list")

    def __init__(self, capacity: int = MAX_BATCH) -> None:
        if not 1 <= capacity <= MAX_BATCH:
            raise ValueError(f"capacity must be 1..{MAX_BATCH}")
        if _sendmmsg is None:  # pragma: no cover
            raise OSError(_why)
        self.capacity = capacity
        self._msgs = _ffi.new("struct mmsghdr[]", capacity)
        self._iovs = _ffi.new("struct iovec[]", capacity)
        # Pointers to each iovec: indexing a cdata array builds a new object each time.
        self._iov_list = [self._iovs + i for i in range(capacity)]
        self._msg_list = [self._msgs + i for i in range(capacity)]
        for i in range(capacity):
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = self._iov_list[i]
            hdr.msg_iovlen = 1

    def send(
        self, fd: int, pins: Sequence[Any], sizes: Sequence[int], start: int, stop: int, flags: int
    ) -> int:
        """sendmmsg of datagrams ``start:stop`` (at most ``capacity``) on connected ``fd``:
        datagram ``k`` is ``sizes[k]`` bytes at ``pins[k]`` (from :func:`pin`, which the caller
        keeps until the kernel is done with the memory).

        Returns how many datagrams the kernel took (>= 1), or ``-errno`` if the first failed.
        ``pins`` may also be the compiled core's PinSet, which fills its iovecs and calls
        sendmmsg in C (aiozc/_sys/_core_pins.c).
        """
        sendmmsg = getattr(pins, "sendmmsg", None)
        if sendmmsg is not None:
            return int(sendmmsg(fd, start, stop if stop - start <= self.capacity else start + self.capacity, flags))
        count = stop - start
        if count > self.capacity:
            count = self.capacity
        stop = start + count
        for iov, ptr, size in zip(self._iov_list, pins[start:stop], sizes[start:stop]):
            iov.iov_base = ptr
            iov.iov_len = size
        n = _sendmmsg(fd, self._msgs, count, flags)
        if n < 0:
            return -_ffi.errno
        return n

    def sent_len(self, i: int) -> int:
        """Bytes the kernel took for datagram ``i`` of the last call (``msg_len``)."""
        return int(self._msg_list[i].msg_len)
