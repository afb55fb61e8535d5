"""BufferPool: page-aligned send buffers registered with the loop's io_uring as fixed buffers.

A SEND_ZC from ordinary memory makes the kernel pin (get_user_pages) the pages of every
request and, without CAP_IPC_LOCK, charge them to RLIMIT_MEMLOCK until the notification.
A fixed buffer (IORING_REGISTER_BUFFERS) is pinned once at registration; sends from inside it
(IORING_RECVSEND_FIXED_BUF) skip that work. Slices of a pool sent through an ``io_uring``
transport on the pool's loop take that path; with other engines, or on another loop, they are
ordinary buffers and go the normal way.

Usage::

    pool = aiozc.BufferPool(64000, 256)        # inside the loop, or pool.register(loop)
    buf = pool.acquire()                       # a writable memoryview of 64000 bytes
    buf[:] = payload
    await transport.sendto_zc(buf)             # or write_zc on TCP
    pool.release(buf)                          # after the future resolved

One region per pool (one anonymous mmap); the ring's fixed-buffer table holds every
registered pool's region and is re-registered as a whole when pools come and go.

Aligned receive buffers
-----------------------
:func:`aligned_buffer` is for ``recv_into`` (a ``BufferedProtocol``'s ``get_buffer``). Measured
with ``python -m aiozc bench recv`` on this project's 2-core VM: ``recv_into`` a buffer starting
16 bytes past a page boundary (where a large ``bytearray`` or ``np.empty`` starts when malloc
maps it) cost 1.8-2.2x the receiver CPU of a page-aligned one; a scan of start offsets found
page offsets 1-31 slow and 0 or 32 and up fast, so a 64-byte-aligned start is enough.

:func:`thread_read_buffer` is the TCP transport's ``Protocol`` read path's buffer: one
page-aligned ``mmap`` per thread and size, which every transport reading in that thread
receives into before ``data_received`` gets a ``bytes`` copy of what arrived.
"""

from __future__ import annotations

import asyncio
import mmap
import threading
from collections.abc import Iterator

from ._sys import uring as _uring

__all__ = [
    "CACHE_LINE", "PAGE_SIZE", "BufferPool", "address_of", "aligned_buffer", "alignment_of",
    "thread_read_buffer",
]

PAGE_SIZE = mmap.PAGESIZE
CACHE_LINE = 64  # a multiple of 64 is never 1-31 bytes into a page: the slow starts (measured)


def aligned_buffer(nbytes: int) -> memoryview:
    """A writable, zero-filled buffer of ``nbytes`` bytes whose first byte is on a page boundary.

    An anonymous ``mmap`` under the view: its pages are faulted in on first touch and unmapped
    when the last view of it is gone. Use it (or a slice of it starting at a multiple of 64)
    as ``recv_into``'s destination; see the module docstring for why.
    """
    if nbytes < 1:
        raise ValueError(f"nbytes={nbytes}: an aligned buffer needs at least 1 byte")
    return memoryview(mmap.mmap(-1, nbytes))


def address_of(buf: object) -> int:
    """The start address of a buffer (the export is released before returning)."""
    with _uring.ffi.from_buffer(buf) as ptr:
        return int(_uring.ffi.cast("uintptr_t", ptr))


def alignment_of(buf: object) -> int:
    """The largest power of two, up to the page size, that divides ``buf``'s start address."""
    address = address_of(buf)
    return min(address & -address, PAGE_SIZE) if address else PAGE_SIZE


class _ThreadBuffers(threading.local):
    def __init__(self) -> None:
        self.by_size: dict[int, mmap.mmap] = {}


_thread_buffers = _ThreadBuffers()


def thread_read_buffer(nbytes: int) -> mmap.mmap:
    """This thread's page-aligned receive buffer of exactly ``nbytes`` bytes (made on first use).

    Shared by every reader in the thread, so its contents are valid only until the next read:
    ``recv_into`` it, then take a copy (slicing an ``mmap`` gives ``bytes``) before anything
    else can run. One per thread because ``recv_into`` releases the GIL: readers on two
    threads (two event loops) must not share one. Only pages a read touched are resident.
    """
    if nbytes < 1:
        raise ValueError(f"nbytes={nbytes}: a read buffer needs at least 1 byte")
    buffers = _thread_buffers.by_size
    buf = buffers.get(nbytes)
    if buf is None:
        buf = buffers[nbytes] = mmap.mmap(-1, nbytes)
    return buf


class BufferPool:
    """``count`` buffers of ``size`` bytes each, every one starting on a page boundary."""

    def __init__(self, size: int, count: int, *, loop: asyncio.AbstractEventLoop | None = None,
                 register: bool = True) -> None:
        if size < 1 or count < 1:
            raise ValueError("size and count must be >= 1")
        self.size = size
        self.count = count
        # Each slot starts on a page: a slice never shares a page with its neighbour, so a
        # slot being rewritten can't touch pages another slot's send still has in flight.
        self._stride = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        self.exporter = mmap.mmap(-1, self._stride * count)  # anonymous: page-aligned, zeroed
        self.region = memoryview(self.exporter)
        self._base = _address_of(self.region)
        self._free = list(range(count - 1, -1, -1))
        self._in_use: set[int] = set()
        self._rings: list[object] = []
        self._closed = False
        if register:
            loop = loop or _running_loop()
            if loop is not None:
                self.register(loop)

    def __repr__(self) -> str:
        return f"<BufferPool {self.count}x{self.size}B free={len(self._free)}>"

    # -- registration -----------------------------------------------------------------------

    def register(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Register the pool with ``loop``'s ring; False (nothing done) without io_uring."""
        from .engines.io_uring import LoopRing, uring_unavailable_reason

        if self._closed:
            raise ValueError("BufferPool is closed")
        if uring_unavailable_reason() is not None:
            return False
        ring = LoopRing.for_loop(loop)
        ring.add_pool(self)
        if ring not in self._rings:
            self._rings.append(ring)
        return True

    # -- slots ------------------------------------------------------------------------------

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self) -> memoryview:
        """A free buffer (writable memoryview of ``size`` bytes); IndexError when none left."""
        if self._closed:
            raise ValueError("BufferPool is closed")
        if not self._free:
            raise IndexError("BufferPool exhausted: release() buffers whose sends completed")
        slot = self._free.pop()
        self._in_use.add(slot)
        start = slot * self._stride
        return self.region[start : start + self.size]

    def release(self, buf: memoryview) -> None:
        """Give a buffer from :meth:`acquire` back (only once its send has completed)."""
        if _is_released(buf):
            # release() ends the view itself, so this is the second release() of the same view
            # (or one after the caller's own buf.release(), which leaves the slot acquired).
            raise ValueError(
                "this buffer was already given back: release() was called twice on it, or the "
                "memoryview was released by hand before release()"
            )
        slot = self._slot_of(buf)
        if slot not in self._in_use:
            raise ValueError("this pool's slot is not acquired: it was already released through another view")
        self._in_use.discard(slot)
        self._free.append(slot)
        buf.release()

    def __iter__(self) -> Iterator[memoryview]:
        """Acquire every free buffer (e.g. to fill them all once)."""
        while self._free:
            yield self.acquire()

    def _slot_of(self, buf: memoryview) -> int:
        if buf.obj is not self.exporter:
            raise ValueError("buffer does not belong to this pool")
        offset = _address_of(buf) - self._base
        slot, rest = divmod(offset, self._stride)
        if rest or not 0 <= slot < self.count:
            raise ValueError("not a buffer handed out by acquire()")
        return slot

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Unregister from every ring and unmap. Sends from the pool must have completed and
        every acquired buffer must have been released (BufferError otherwise)."""
        if self._closed:
            return
        if self._in_use:
            raise BufferError(
                f"{len(self._in_use)} buffer(s) of the pool still acquired: release() them first"
            )
        for ring in self._rings:
            ring.remove_pool(self)  # type: ignore[attr-defined]
        self._rings.clear()
        self.region.release()
        self.exporter.close()
        self._closed = True

    def __enter__(self) -> BufferPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_released(buf: object) -> bool:
    if not isinstance(buf, memoryview):
        return False
    try:
        buf.obj  # noqa: B018 - the one way to ask a memoryview whether it was released
    except ValueError:
        return True
    return False


def _address_of(buf: memoryview) -> int:
    with _uring.ffi.from_buffer(buf) as ptr:
        return int(_uring.ffi.cast("uintptr_t", ptr))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
