"""Receive buffers for zc:// messages: aligned and reused, so a receiver does not page-fault.

Measured with a first prototype that allocated a fresh buffer per group: 128-256 page faults per
MiB on 64 x 4 MiB and 2048 x 32 KiB messages. dask's tcp comm allocates the same way (one
``numpy.empty`` per frame) and faults as much: glibc trims the top of the heap once a message's
arrays are freed, so the next message faults every page in again (traced in bench dask: ~220
faults/MiB inside ``recv_into`` on the receiving worker, for tcp and zc alike; 512 fresh 32 KiB
buffers touched: 3988 faults a round, every round).

So every buffer of POOLED_MIN bytes or more comes from a size class and goes back to its class's
free list, its pages still faulted in, once dask and the arrays it deserialized let go of it (a
weakref on the array handed out). The idle total stays under ``max_idle_bytes`` by dropping the
buffers idle longest, whatever their class: a pool that dropped the buffer coming back instead
stayed full of what an earlier workload left (bench dask: a client's 1 GiB of idle 256 MiB
buffers after a 4 x 256 MiB gather, then 2048 x 32 KiB gathers faulted 292 times per MiB,
every message, where tcp faulted 60 times). Classes
from MAPPED_MIN up are anonymous mmaps (page-aligned, huge pages from 2 MiB); smaller ones are
slices of one malloc'd numpy array each (an mmap apiece would be a VMA per 32 KiB array),
aligned to 64 bytes. Buffers below POOLED_MIN come from numpy, as dask's tcp comm makes them.
"""

from __future__ import annotations

import collections
import mmap
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

POOLED_MIN = 4 << 10
MAPPED_MIN = 256 << 10
ALIGN = 64
HUGE_PAGE = 2 << 20


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up to one of 8 steps per power of two (<= 12.5% waste), then to whole
    pages from MAPPED_MIN up, to 64 bytes below."""
    step = 1 << max(0, nbytes.bit_length() - 4)
    step = max(mmap.PAGESIZE if nbytes >= MAPPED_MIN else ALIGN, step)
    return -(-nbytes // step) * step


@dataclass(frozen=True)
class _Region:
    memory: Any  # an mmap, or a memoryview of a numpy array: never an ndarray (see acquire)
    offset: int  # where the buffer starts in it: a huge-page boundary for big mappings
    size: int


class ReceivePool:
    def __init__(self, max_idle_bytes: int) -> None:
        self.max_idle_bytes = max_idle_bytes
        # Idle regions by size class, and oldest-returned first (keys: id(region)) in two
        # orders: huge-page regions, evicted first, and the smaller ones; dicts for O(1) removal.
        self._idle: dict[int, dict[int, _Region]] = {}
        self._idle_order = (collections.OrderedDict[int, _Region](), collections.OrderedDict[int, _Region]())
        self._idle_bytes = 0
        self._lock = threading.Lock()  # weakref callbacks run wherever the last slice dies
        self._handed: dict[int, tuple[weakref.ref[Any], _Region]] = {}
        self.mapped = 0  # new regions made (mmaps and malloc'd ones): a reuse makes none
        self.reused = 0
        self.evicted = 0  # idle regions dropped to make room for a newer one

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    @property
    def outstanding(self) -> int:
        """Pooled buffers handed out and still referenced."""
        return len(self._handed)

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
        # Its death tells us the buffer is free. It must be made from the region's memory (an
        # mmap or a memoryview), not as a view of another array: numpy collapses a view's base
        # to the array owning the memory, so an array dask makes from a slice would skip an
        # intermediate view and let it die while still in use.
        handed = np.frombuffer(region.memory, dtype=np.uint8, count=nbytes, offset=region.offset)
        ref = weakref.ref(handed, self._give_back)  # cheaper than weakref.finalize: ~2 us
        with self._lock:
            self._handed[id(ref)] = (ref, region)
        return memoryview(handed)  # type: ignore[arg-type]  # numpy's stubs lack __buffer__ on 3.11

    def _take_idle(self, cls: int) -> _Region | None:
        with self._lock:
            bucket = self._idle.get(cls)
            if not bucket:
                return None
            key, region = bucket.popitem()  # the last returned: its pages are the warmest
            del self._idle_order[_order(region)][key]
            self._idle_bytes -= cls
            return region

    def _give_back(self, ref: weakref.ref[Any]) -> None:
        with self._lock:
            entry = self._handed.pop(id(ref), None)
            if entry is None:
                return
            region = entry[1]
            if region.size > self.max_idle_bytes:
                return  # dropped: freed once numpy lets go of it
            while self._idle_bytes + region.size > self.max_idle_bytes:
                self._evict_oldest()
            key = id(region)
            self._idle.setdefault(region.size, {})[key] = region
            self._idle_order[_order(region)][key] = region
            self._idle_bytes += region.size

    def _evict_oldest(self) -> None:
        """Drop the huge-page region idle longest, else the small one idle longest: made again,
        a huge-page region faults ~0.5 times per MiB, a smaller one 256 times (4 KiB pages).
        The bench's cycle (4 x 256 MiB, then 64 x 4 MiB, then 2048 x 32 KiB messages through a
        1 GiB pool) evicted every 32 KiB buffer under plain LRU: 3552 made again, 164 faults/MiB."""
        huge, small = self._idle_order
        key, region = (huge or small).popitem(last=False)
        del self._idle[region.size][key]
        self._idle_bytes -= region.size
        self.evicted += 1

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()
            for order in self._idle_order:
                order.clear()
            self._idle_bytes = 0


def _order(region: _Region) -> int:
    """Which eviction order a region is in: 0 for huge-page regions, 1 for the others."""
    return 0 if region.size >= HUGE_PAGE else 1


def _new_region(nbytes: int) -> _Region:
    if nbytes < MAPPED_MIN:
        return _Region(_aligned_small(nbytes), 0, nbytes)
    return _new_mapping(nbytes)


def _aligned_small(nbytes: int) -> memoryview:
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return memoryview(raw)[skip : skip + nbytes]  # type: ignore[arg-type]  # as above


def _new_mapping(nbytes: int) -> _Region:
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
