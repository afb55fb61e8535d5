"""Kernel ABI for TCP zero-copy receive (``getsockopt(IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE)``).

Nothing here knows about pools, leases or event loops (that is :mod:`aiozc.zcrx`). The layout
of ``struct tcp_zerocopy_receive`` comes from ``<linux/tcp.h>`` and is declared to cffi in ABI
mode, so no compiler is needed. Measured facts (../shared/PLATFORM.md, "Zero-copy receive"):

* the kernel maps only whole, non-compound 4 KiB pages; the rest is reported in
  ``recv_skip_hint`` and must be read with ``recv()``;
* any TCP socket can own the mapping, even one that never connects, and a region mapped on it
  works for the getsockopt of every other TCP socket; a mapping on the *data* socket delays the
  peer's EOF, hence the private owner socket;
* under 4096 bytes queued ``length`` is 0; EIO means nothing is queued after FIN (and also
  comes at an urgent mark after FIN); ``err`` carries the socket error and clears it;
* reading a page of the region the kernel did not map is SIGBUS.
"""

from __future__ import annotations

import errno as _errno
import mmap
import os
import socket
from dataclasses import dataclass
from typing import Any

import cffi  # type: ignore[import-untyped]

TCP_ZEROCOPY_RECEIVE = 35
TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT = 0x1
PAGE_SIZE = mmap.PAGESIZE
# Never merged upstream: the 2024 netdev RFC "sendmsg-returned zerocopy notifications" used
# SOL_SOCKET cmsg type 78. A mainline kernel rejects an unknown SOL_SOCKET cmsg with EINVAL.
SCM_ZC_NOTIFICATION = 78

_ffi: Any = cffi.FFI()  # cffi has no stubs
_ffi.cdef(
    """
    struct tcp_zerocopy_receive {
        uint64_t address;
        uint32_t length;
        uint32_t recv_skip_hint;
        uint32_t inq;
        int32_t  err;
        uint64_t copybuf_address;
        int32_t  copybuf_len;
        uint32_t flags;
        uint64_t msg_control;
        uint64_t msg_controllen;
        uint32_t msg_flags;
        uint32_t reserved;
    };
    int getsockopt(int sockfd, int level, int optname, void *optval, unsigned int *optlen);
    """
)
_libc: Any = _ffi.dlopen(None)
ZC_STRUCT_SIZE = _ffi.sizeof("struct tcp_zerocopy_receive")
assert ZC_STRUCT_SIZE == 64, ZC_STRUCT_SIZE  # the uapi layout since 5.11 (msg_control added)


@dataclass(frozen=True, slots=True)
class ZeroCopyResult:
    """What one getsockopt reported. ``length`` bytes are mapped at the region's start; the
    next ``recv_skip_hint`` bytes of the stream must be copied; ``inq`` is what stays queued."""

    length: int
    recv_skip_hint: int
    inq: int
    err: int


class Request:
    """One reusable ``struct tcp_zerocopy_receive`` and its optlen (allocation once, not per call)."""

    __slots__ = ("_zc", "_optlen")

    def __init__(self) -> None:
        self._zc = _ffi.new("struct tcp_zerocopy_receive *")
        self._optlen = _ffi.new("unsigned int *")

    def receive(self, fd: int, address: int, length: int) -> ZeroCopyResult:
        """Map up to ``length`` bytes of ``fd``'s receive queue at ``address`` (a region from
        :func:`map_region`). Raises ``OSError`` (EIO after FIN with nothing queued, EINVAL for a
        region that is not a TCP mapping, ...)."""
        zc = self._zc
        _ffi.memmove(zc, b"\0" * ZC_STRUCT_SIZE, ZC_STRUCT_SIZE)
        zc.address = address
        zc.length = length
        self._optlen[0] = ZC_STRUCT_SIZE
        rc = _libc.getsockopt(fd, socket.IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE, zc, self._optlen)
        if rc != 0:
            code = _ffi.errno
            raise OSError(code, os.strerror(code))
        return ZeroCopyResult(zc.length, zc.recv_skip_hint, zc.inq, zc.err)


def new_owner_socket() -> socket.socket:
    """The private, never-connected TCP socket that owns every region of a process."""
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def map_region(owner: socket.socket, size: int) -> mmap.mmap:
    """``mmap(PROT_READ, MAP_SHARED)`` of ``size`` bytes (a multiple of the page size) on the
    owner socket, with ``MADV_DONTFORK`` so a forked child never touches the pages.

    The ``mmap`` object counts buffer exports: its ``close()`` raises ``BufferError`` while any
    memoryview (slices, ``numpy.frombuffer`` ...) derived from it lives, which is what makes a
    region impossible to unmap under a live view.
    """
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"region size must be a positive multiple of {PAGE_SIZE}, got {size}")
    region = mmap.mmap(owner.fileno(), size, flags=mmap.MAP_SHARED, access=mmap.ACCESS_READ)
    try:
        region.madvise(mmap.MADV_DONTFORK)
    except BaseException:
        region.close()
        raise
    return region


def region_address(region: mmap.mmap) -> int:
    """Start address of a mapped region (the export is released before returning)."""
    ptr = _ffi.from_buffer(region)
    try:
        return int(_ffi.cast("uintptr_t", ptr))
    finally:
        _ffi.release(ptr)


def zap_region(region: mmap.mmap, length: int) -> None:
    """``MADV_DONTNEED`` over the first ``length`` bytes (rounded up to pages): drops the
    kernel's page references so the region can take the next getsockopt."""
    if length:
        region.madvise(mmap.MADV_DONTNEED, 0, min(len(region), -(-length // PAGE_SIZE) * PAGE_SIZE))


# ------------------------------------------------------------------------------------------
# Probes (for ``python -m aiozc probe`` and test skips)


def zerocopy_receive_unavailable() -> str | None:
    """``None`` if mmap on a TCP socket and TCP_ZEROCOPY_RECEIVE work here, else why not.

    Maps one page on a never-connected socket and asks getsockopt on a fresh connected
    loopback pair with nothing queued: a working kernel answers length 0 without error.
    """
    try:
        owner = new_owner_socket()
    except OSError as exc:
        return f"no TCP socket: {exc}"
    with owner:
        try:
            region = map_region(owner, PAGE_SIZE)
        except OSError as exc:
            return f"mmap on a TCP socket failed: {exc.strerror}"
        try:
            return _probe_getsockopt(region_address(region))
        finally:
            region.close()


def _probe_getsockopt(address: int) -> str | None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()):
            server, _ = listener.accept()
            with server:
                try:
                    Request().receive(server.fileno(), address, PAGE_SIZE)
                except OSError as exc:
                    name = _errno.errorcode.get(exc.errno or 0, str(exc.errno))
                    return f"getsockopt(TCP_ZEROCOPY_RECEIVE) failed: {name}"
    return None
