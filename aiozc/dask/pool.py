"""Receive buffers for zc:// messages: page-aligned and reused, so a receiver does not fault.

Measured with a first prototype that allocated a fresh buffer per group: 128-256 page faults per
MiB on 64 x 4 MiB and 2048 x 32 KiB messages, where dask's tcp comm reused malloc'd memory.
Here every buffer of POOLED_MIN bytes or more is one anonymous mmap (page-aligned) of a size
class. dask (and the arrays it deserializes) keep slices of it alive for as long as they like;
when the last one is gone a weakref finalizer puts the mapping back on its class's free list, its
pages still faulted in, while the idle total stays under ``max_idle_bytes``. Smaller buffers come
from numpy (malloc), as dask's tcp comm allocates them, aligned to 64 bytes.
"""

from __future__ import annotations

import mmap
import threading
import weakref
from dataclasses import dataclass

import numpy as np

POOLED_MIN = 256 << 10
ALIGN = 64
HUGE_PAGE = 2 << 20


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up to one of 8 steps per power of two, then to whole pages (<= 12.5%
    waste)."""
    step = max(mmap.PAGESIZE, 1 << max(0, nbytes.bit_length() - 4))
    return -(-nbytes // step) * step


class ReceivePool:
    def __init__(self, max_idle_bytes: int) -> None:
        self.max_idle_bytes = max_idle_bytes
        self._idle: dict[int, list[_Region]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()  # finalizers run wherever the last slice dies (offload threads)
        self.mapped = 0  # new mappings made: a reuse makes none
        self.reused = 0
        self.outstanding = 0  # pooled buffers handed out and still referenced

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    def acquire(self, nbytes: int) -> memoryview:
        """A writable, C-contiguous uint8 memoryview of exactly ``nbytes``."""
        if nbytes < POOLED_MIN:
            return _aligned_small(nbytes)
        cls = size_class(nbytes)
        region = self._take_idle(cls)
        if region is None:
            region = _new_region(cls)
            self.mapped += 1
        else:
            self.reused += 1
        # Its death tells us the buffer is free. It must be made from the mmap itself, not as a
        # view of another array: numpy collapses a view's base to the array owning the memory,
        # so an array dask makes from a slice would skip an intermediate view and let it die.
        handed = np.frombuffer(region.mapping, dtype=np.uint8, count=nbytes, offset=region.offset)
        with self._lock:
            self.outstanding += 1
        weakref.finalize(handed, self._give_back, region)
        return memoryview(handed)

    def _take_idle(self, cls: int) -> _Region | None:
        with self._lock:
            bucket = self._idle.get(cls)
            if not bucket:
                return None
            self._idle_bytes -= cls
            return bucket.pop()

    def _give_back(self, region: _Region) -> None:
        cls = region.size
        with self._lock:
            self.outstanding -= 1
            if self._idle_bytes + cls > self.max_idle_bytes:
                return  # dropped: the mapping is unmapped once numpy lets go of it
            self._idle.setdefault(cls, []).append(region)
            self._idle_bytes += cls

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()
            self._idle_bytes = 0


@dataclass(frozen=True)
class _Region:
    mapping: mmap.mmap
    offset: int  # where the buffer starts: a huge-page boundary for big ones
    size: int


def _new_region(nbytes: int) -> _Region:
    """An anonymous (page-aligned) mapping. From 2 MiB up, started on a 2 MiB boundary inside a
    mapping 2 MiB larger (the slack is never touched, so never resident) and advised for
    transparent huge pages (THP is "madvise" here): 256 faults per MiB on first touch with 4 KiB
    pages, 0.5-1 with huge pages (measured). An mmap of 32 MiB alone came back 4 KiB-aligned: no THP.
    """
    if nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return _Region(_anonymous(nbytes), 0, nbytes)
    mapping = _anonymous(nbytes + HUGE_PAGE)
    address = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    offset = -address % HUGE_PAGE
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE, offset, nbytes)
    except OSError:  # THP compiled out or disabled: 4 KiB pages
        pass
    return _Region(mapping, offset, nbytes)


def _anonymous(nbytes: int) -> mmap.mmap:
    # Private: mmap's default MAP_SHARED is shmem, which gets no huge pages (shmem_enabled).
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _aligned_small(nbytes: int) -> memoryview:
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return memoryview(raw[skip : skip + nbytes])
