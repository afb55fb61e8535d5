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
a bytearray each (an mmap apiece would be a VMA per 32 KiB array),
aligned to 64 bytes. Buffers below POOLED_MIN come from numpy, as dask's tcp comm makes them.

A request finds no idle buffer of its class often when the workload changes: bench dask's
client, its pool full of 256 MiB buffers after gathers of 4 x 256 MiB, mapped 128 fresh 4 MiB
buffers for every gather of 64 x 4 MiB (its scheduler hop's and its own) and reused none: the
kernel zeroed 512 MiB a gather, where tcp's 4 MiB arrays came back from glibc's free lists.
So a request takes an idle buffer up to one class short of twice its size, else a slice of an
idle big region (2 MiB or more) cut into slices of its class, at most MAX_SLICES of them. The
region is whole again, and can serve its own size, once every slice is back; an idle slice
evicted meanwhile gives its pages back to the kernel (MADV_DONTNEED), and the region is then
dropped once its slices are back rather than kept with holes.
"""

from __future__ import annotations

import collections
import mmap
import threading
import weakref
from typing import Any

import numpy as np

POOLED_MIN = 4 << 10
MAPPED_MIN = 256 << 10
ALIGN = 64
HUGE_PAGE = 2 << 20
# An idle big region is cut into at most this many slices (made eagerly: ~1 us each).
MAX_SLICES = 64


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up to one of 8 steps per power of two (<= 12.5% waste), then to whole
    pages from MAPPED_MIN up, to 64 bytes below."""
    step = 1 << max(0, nbytes.bit_length() - 4)
    step = max(mmap.PAGESIZE if nbytes >= MAPPED_MIN else ALIGN, step)
    return -(-nbytes // step) * step


class _Region:
    """A receive buffer's memory: a whole region, or a slice carved from an idle big one."""

    __slots__ = ("memory", "offset", "size", "parent", "slices", "handed", "holed", "idle")

    def __init__(self, memory: Any, offset: int, size: int, parent: _Region | None = None) -> None:
        self.memory = memory  # an mmap, or a bytearray: never an ndarray (see acquire)
        self.offset = offset  # where the buffer starts in it: a huge-page boundary for big mappings
        self.size = size
        self.parent = parent  # the big region this slice was carved from
        self.slices: list[_Region] = []  # while carved: every slice of it
        self.handed = 0  # while carved: its slices handed out and still referenced
        self.holed = False  # while carved: an idle slice was evicted (its pages given back)
        self.idle = False


class _Handed(weakref.ref):  # type: ignore[type-arg]
    """The weakref on a buffer handed out, carrying its region: no (ref, region) tuple apiece.
    A scheduler holds thousands at once (a gather's arrays), and every GC-tracked object it
    holds makes the full collections of its large heap come sooner."""

    __slots__ = ("region",)
    region: _Region


class ReceivePool:
    def __init__(self, max_idle_bytes: int) -> None:
        self.max_idle_bytes = max_idle_bytes
        # Idle regions by size class, and oldest-returned first (keys: id(region)) in two
        # orders: huge-page regions, evicted first, and the smaller ones; dicts for O(1) removal.
        self._idle: dict[int, dict[int, _Region]] = {}
        self._idle_order = (collections.OrderedDict[int, _Region](), collections.OrderedDict[int, _Region]())
        self._idle_whole_big: dict[int, _Region] = {}  # the idle regions that may be carved
        self._idle_bytes = 0
        # Weakref callbacks run wherever the last slice dies: in another thread, or in this one
        # when a garbage collection starts inside a locked section (any allocation can start
        # one). So a callback never waits for the lock: it queues the buffer, and whoever holds
        # the lock takes it back before letting go (a blocking callback deadlocked there).
        self._lock = threading.Lock()
        self._returned: collections.deque[int] = collections.deque()
        self._handed: dict[int, _Handed] = {}
        self._give_back_callback = self._give_back  # one bound method, not one per buffer
        self.mapped = 0  # new regions made (mmaps and malloc'd ones): a reuse makes none
        self.reused = 0  # buffers served from idle memory: a region of their class, one a
        # class or more larger, or a slice carved from an idle big region
        self.carved = 0  # idle big regions cut into slices of a smaller class
        self.evicted = 0  # idle regions (or slices) dropped to make room for a newer one

    @property
    def idle_bytes(self) -> int:
        self._take_back_returned()
        return self._idle_bytes

    @property
    def outstanding(self) -> int:
        """Pooled buffers handed out and still referenced."""
        self._take_back_returned()
        return len(self._handed) - len(self._returned)

    def acquire(self, nbytes: int) -> memoryview:
        """A writable, C-contiguous uint8 memoryview of exactly ``nbytes``."""
        if nbytes < POOLED_MIN:
            return _aligned_small(nbytes)
        cls = size_class(nbytes)
        with self._lock:
            region = self._take_idle(cls)
        self._take_back_returned()
        if region is None:
            region = _new_region(cls)
            self.mapped += 1
        # Its death tells us the buffer is free. It must be made from the region's memory (an
        # mmap or a bytearray), not as a view of another array: numpy collapses a view's base
        # to the array owning the memory, so an array dask makes from a slice would skip an
        # intermediate view and let it die while still in use. ndarray(buffer=) keeps that
        # object as its base; frombuffer made a memoryview of it apiece (one more GC-tracked
        # object per buffer, see _Handed).
        handed = np.ndarray((nbytes,), dtype=np.uint8, buffer=region.memory, offset=region.offset)
        ref = _Handed(handed, self._give_back_callback)  # cheaper than weakref.finalize: ~2 us
        ref.region = region
        with self._lock:
            self._handed[id(ref)] = ref
        self._take_back_returned()
        return memoryview(handed)  # type: ignore[arg-type]  # numpy's stubs lack __buffer__ on 3.11

    def _take_idle(self, cls: int) -> _Region | None:
        """An idle region for a buffer of class ``cls`` (lock held): one of that class, the last
        returned (its pages are the warmest); else one of a larger class below twice as large;
        else a slice of an idle big region carved into ``cls`` slices."""
        bucket = self._idle.get(cls)
        if not bucket:
            larger = [c for c, b in self._idle.items() if b and cls < c < 2 * cls]
            bucket = self._idle[min(larger)] if larger else None
        if bucket:
            # popitem takes the last returned in O(1); reversed(bucket) walked past every
            # entry deleted from its end before (dict deletions leave dummies): 16k user
            # instructions per buffer at 2048 a message, 4.6% of a scheduler hop (callgrind).
            region = bucket.popitem()[1]
            self._unidle(region, in_bucket=False)
        else:
            arena = self._carvable(cls)
            if arena is None:
                return None
            region = self._carve(arena, cls)
        if region.parent is not None:
            region.parent.handed += 1
        self.reused += 1
        return region

    def _carvable(self, cls: int) -> _Region | None:
        """The smallest idle whole big region that holds 2 to MAX_SLICES slices of ``cls``."""
        if cls < MAPPED_MIN:  # slices must be whole pages
            return None
        fits = [r for r in self._idle_whole_big.values() if 2 * cls <= r.size <= MAX_SLICES * cls]
        return min(fits, key=lambda r: r.size) if fits else None

    def _carve(self, arena: _Region, cls: int) -> _Region:
        """Cut the idle ``arena`` into slices of ``cls``: the first one returned, the rest idle."""
        self._unidle(arena)
        arena.slices = [_Region(arena.memory, arena.offset + i * cls, cls, arena)
                        for i in range(arena.size // cls)]
        arena.holed = False
        for piece in reversed(arena.slices[1:]):  # the lowest addresses handed out first
            self._make_idle(piece)
        self.carved += 1
        return arena.slices[0]

    def _give_back(self, ref: weakref.ref[Any]) -> None:
        self._returned.append(id(ref))  # atomic: no lock needed
        self._take_back_returned()

    def _take_back_returned(self) -> None:
        """Take back the queued buffers, unless the lock is held: its holder calls this again
        once it let go, so nothing queued before then is left behind."""
        while self._returned:
            if not self._lock.acquire(blocking=False):
                return
            try:
                while self._returned:
                    self._take_back(self._returned.popleft())
            finally:
                self._lock.release()

    def _take_back(self, key: int) -> None:
        ref = self._handed.pop(key, None)
        if ref is None:
            return
        region = ref.region
        arena = region.parent
        if arena is not None:
            arena.handed -= 1
            if arena.handed == 0:
                self._join(arena)
                return
        elif region.size > self.max_idle_bytes:
            return  # dropped: freed once numpy lets go of it
        self._keep(region)

    def _join(self, arena: _Region) -> None:
        """Every slice of ``arena`` is back: it is one region again, or dropped if it has holes
        (kept, its holes would fault in again, uncounted by the cap)."""
        for piece in arena.slices:
            if piece.idle:
                self._unidle(piece)
        arena.slices = []
        if not arena.holed:
            self._keep(arena)

    def _keep(self, region: _Region) -> None:
        while self._idle_bytes + region.size > self.max_idle_bytes and self._idle_bytes:
            self._evict_oldest()
        if self._idle_bytes + region.size <= self.max_idle_bytes:
            self._make_idle(region)

    def _make_idle(self, region: _Region) -> None:
        key = id(region)
        self._idle.setdefault(region.size, {})[key] = region
        self._idle_order[_order(region)][key] = region
        if region.parent is None and region.size >= HUGE_PAGE:
            self._idle_whole_big[key] = region
        self._idle_bytes += region.size
        region.idle = True

    def _unidle(self, region: _Region, in_bucket: bool = True) -> None:
        key = id(region)
        if in_bucket:
            del self._idle[region.size][key]
        del self._idle_order[_order(region)][key]
        self._idle_whole_big.pop(key, None)
        self._idle_bytes -= region.size
        region.idle = False

    def _evict_oldest(self) -> None:
        """Drop the huge-page region idle longest, else the small one idle longest: made again,
        a huge-page region faults ~0.5 times per MiB, a smaller one 256 times (4 KiB pages).
        The bench's cycle (4 x 256 MiB, then 64 x 4 MiB, then 2048 x 32 KiB messages through a
        1 GiB pool) evicted every 32 KiB buffer under plain LRU: 3552 made again, 164 faults/MiB.
        An idle slice gives its pages back to the kernel (its big region lives on while other
        slices are in use)."""
        huge, small = self._idle_order
        region = next(iter((huge or small).values()))
        self._unidle(region)
        self.evicted += 1
        arena = region.parent
        if arena is not None:
            arena.holed = True
            _give_pages_back(arena.memory, region.offset, region.size)

    def clear(self) -> None:
        with self._lock:
            for order in self._idle_order:
                for region in list(order.values()):
                    self._unidle(region)
                    if region.parent is not None:
                        region.parent.holed = True  # its memory stays until the slices are back
        self._take_back_returned()


def _order(region: _Region) -> int:
    """Which eviction order a region is in: 0 for huge-page regions, 1 for the others."""
    return 0 if region.size >= HUGE_PAGE else 1


def _new_region(nbytes: int) -> _Region:
    if nbytes < MAPPED_MIN:
        # A bytearray, not an ndarray: arrays made on it must stop at the handed one (acquire).
        memory = bytearray(nbytes + ALIGN)
        skip = -np.frombuffer(memory, dtype=np.uint8, count=1).ctypes.data % ALIGN
        return _Region(memory, skip, nbytes)
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


def _give_pages_back(memory: Any, offset: int, nbytes: int) -> None:
    """MADV_DONTNEED: the slice's pages leave the process now; touched again they read zeros."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is not None and isinstance(memory, mmap.mmap):
        memory.madvise(advice, offset, nbytes)
