"""TCP zero-copy receive: a bounded per-process region pool, leases, and a synchronous step.

A :class:`Lease` is a read-only ``memoryview`` over pages the kernel mapped out of a socket's
receive queue (``TCP_ZEROCOPY_RECEIVE``). It stays valid until :meth:`Lease.release` or the end
of its ``with`` block. The region under it is never unmapped or reused while *any* view derived
from it lives (slices, ``numpy.frombuffer`` ...): the region is an ``mmap.mmap`` object, whose
``close()`` refuses with ``BufferError`` while buffer exports exist, and a refused release is
retried later instead of forcing it. Views never reach past what the kernel mapped, so reading
one cannot SIGBUS.

Regions belong to one private, never-connected TCP socket per process (a mapping on the data
socket would delay the peer's EOF, and closing a connection must not wait for held leases).

This module has no event-loop code: :func:`receive` is the step a transport runs when its
socket is readable; :class:`RegionPool` tells it to pause (``ReceiveStep.paused``) when every
region is held and calls its ``on_available`` callbacks, from whichever thread released one.
"""

from __future__ import annotations

import atexit
import errno
import mmap
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from ._sys import zcrx as _sys

DEFAULT_CHUNK = 256 * 1024
DEFAULT_REGIONS = 64


class Lease:
    """Mapped stream bytes, read-only, valid until :meth:`release` (or the ``with`` block ends)."""

    __slots__ = ("_pool", "_region", "_view", "nbytes")

    def __init__(self, pool: "RegionPool", region: mmap.mmap, nbytes: int) -> None:
        self._pool = pool
        self._region: mmap.mmap | None = region
        self._view: memoryview | None = memoryview(region)[:nbytes]
        self.nbytes = nbytes

    @property
    def view(self) -> memoryview:
        """The mapped bytes. Derived views keep the pages alive past :meth:`release`."""
        if self._view is None:
            raise ValueError("lease released")
        return self._view

    @property
    def released(self) -> bool:
        return self._view is None

    def __len__(self) -> int:
        return self.nbytes

    def release(self) -> bool:
        """Give the pages back. Returns ``True`` if the region was freed now, ``False`` if a
        view derived from this lease still lives (the pool frees it once that view is gone).
        Idempotent; safe from any thread."""
        view, self._view = self._view, None
        region, self._region = self._region, None
        if region is None:
            return False
        try:
            view.release()  # type: ignore[union-attr]
        except BufferError:
            # Something (numpy.frombuffer, a bytes-like consumer) holds this very memoryview;
            # its buffer keeps the region's export count up, so close() below refuses too.
            pass
        return self._pool._give_back(region)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A lease dropped without release() must not cost the pool a region for good.
        if self._region is not None:
            try:
                self.release()
            except Exception:  # noqa: BLE001 - e.g. a closed loop at interpreter exit
                pass

    def __repr__(self) -> str:
        state = "released" if self._view is None else "live"
        return f"<Lease {self.nbytes} bytes {state}>"


class RegionPool:
    """At most ``regions`` mapped regions of ``chunk`` bytes each, on one private TCP socket.

    ``acquire()`` returns ``None`` when every region is held: the caller pauses reading and
    registers with :meth:`add_on_available`; a release from any thread calls the callbacks.
    """

    def __init__(self, *, chunk: int = DEFAULT_CHUNK, regions: int = DEFAULT_REGIONS) -> None:
        if chunk <= 0 or chunk % _sys.PAGE_SIZE:
            raise ValueError(f"chunk must be a positive multiple of {_sys.PAGE_SIZE}")
        if regions <= 0:
            raise ValueError("regions must be positive")
        self.chunk = chunk
        self.regions = regions
        self._owner = _sys.new_owner_socket()
        self._lock = threading.Lock()
        self._idle: list[tuple[mmap.mmap, int]] = []  # mapped, nothing mapped by the kernel yet
        self._deferred: list[mmap.mmap] = []  # released leases whose views still live
        self._held = 0  # regions out as leases or deferred
        self._callbacks: list[Callable[[], None]] = []
        self._closed = False
        self.pid = os.getpid()  # after fork() the regions are not mapped (MADV_DONTFORK)

    # -- for receive() ------------------------------------------------------------------------
    def acquire(self) -> tuple[mmap.mmap, int] | None:
        """An empty mapped region and its address, or ``None`` if all are held."""
        with self._lock:
            if self._idle:
                self._held += 1
                return self._idle.pop()
            if self._held >= self.regions:
                self._collect_locked()
            if self._held >= self.regions:
                return None
            self._held += 1
        try:
            region = _sys.map_region(self._owner, self.chunk)
            return region, _sys.region_address(region)
        except BaseException:
            with self._lock:
                self._held -= 1
            raise

    def put_back_unused(self, slot: tuple[mmap.mmap, int]) -> None:
        """Return a region the kernel mapped nothing into (kept mapped for the next call)."""
        with self._lock:
            self._held -= 1
            if not self._closed:
                self._idle.append(slot)
                return
        slot[0].close()

    # -- lease lifetime ----------------------------------------------------------------------
    def _give_back(self, region: mmap.mmap) -> bool:
        try:
            region.close()  # munmap: drops the kernel's page references too
        except BufferError:
            with self._lock:
                self._deferred.append(region)
            return False
        with self._lock:
            self._held -= 1
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()
        return True

    def _collect_locked(self) -> None:
        still: list[mmap.mmap] = []
        for region in self._deferred:
            try:
                region.close()
            except BufferError:
                still.append(region)
            else:
                self._held -= 1
        self._deferred = still

    def collect(self) -> int:
        """Free released regions whose derived views have died since; returns how many are
        still held by such views."""
        with self._lock:
            self._collect_locked()
            return len(self._deferred)

    def add_on_available(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from the releasing thread) whenever a region frees."""
        with self._lock:
            self._callbacks.append(callback)

    def remove_on_available(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks.remove(callback)

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    @property
    def deferred(self) -> int:
        """Released regions still pinned by a derived view (freed by :meth:`collect`)."""
        with self._lock:
            return len(self._deferred)

    def available(self) -> bool:
        """Whether :meth:`acquire` would return a region now."""
        with self._lock:
            return bool(self._idle) or self._held < self.regions

    def close(self) -> None:
        """Unmap idle regions and close the owner socket. Live leases keep their own mapping
        (an mmap object holds a dup of the owner fd)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for region, _ in idle:
            region.close()
        self._owner.close()


Piece = Union[Lease, bytes]


@dataclass(slots=True)
class ReceiveStep:
    """What one :func:`receive` call got, in stream order."""

    pieces: list[Piece] = field(default_factory=list)
    mapped: int = 0
    copied: int = 0
    eof: bool = False
    paused: bool = False  # every region is held: wait for RegionPool's on_available
    error: OSError | None = None  # socket error (``err``, reset); pieces before it are valid


def receive(sock: socket.socket, pool: RegionPool, *, max_bytes: int = 4 << 20,
            request: _sys.Request | None = None) -> ReceiveStep:
    """Take what ``sock``'s receive queue holds now, up to about ``max_bytes``.

    Mapped pages come back as leases; bytes the kernel cannot map (``recv_skip_hint``, under
    4096 bytes queued, urgent data after FIN) are copied with ``recv`` and returned as bytes.
    Never blocks.
    """
    step = ReceiveStep()
    req = request if request is not None else _sys.Request()
    fd = sock.fileno()
    while step.mapped + step.copied < max_bytes and not step.eof and step.error is None:
        slot = pool.acquire()
        if slot is None:
            step.paused = True
            break
        if not _one_call(sock, fd, pool, slot, req, step):
            break
    return step


def _one_call(sock: socket.socket, fd: int, pool: RegionPool, slot: tuple[mmap.mmap, int],
              req: _sys.Request, step: ReceiveStep) -> bool:
    """One getsockopt plus the copies it asks for; ``False`` when the queue is drained."""
    region, address = slot
    try:
        zc = req.receive(fd, address, len(region))
    except OSError as exc:
        pool.put_back_unused(slot)
        if exc.errno == errno.EIO:  # nothing queued after FIN, or an urgent mark after FIN
            return _copy(sock, 1 << 16, step)
        step.error = exc
        return False
    if zc.length:
        step.pieces.append(Lease(pool, region, zc.length))
        step.mapped += zc.length
    else:
        pool.put_back_unused(slot)
    if zc.err:
        code = -zc.err  # the kernel stores sock_error(), a negative errno
        step.error = OSError(code, os.strerror(code))  # ConnectionResetError for ECONNRESET
        return False
    if zc.recv_skip_hint:
        return _copy(sock, zc.recv_skip_hint, step)
    if zc.length == 0:
        if zc.inq == 0:
            return False
        return _copy(sock, min(zc.inq, len(region)), step)  # under a page queued
    return True


def _copy(sock: socket.socket, nbytes: int, step: ReceiveStep) -> bool:
    try:
        data = sock.recv(nbytes, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError as exc:
        step.error = exc
        return False
    if not data:
        step.eof = True
        return False
    step.pieces.append(data)
    step.copied += len(data)
    return True


# ------------------------------------------------------------------------------------------
# The transport option


@dataclass(frozen=True, slots=True)
class ZeroCopyReceive:
    """Opt-in zero-copy receive for a TCP transport: ``create_connection(...,
    zc_receive=ZeroCopyReceive(chunk=..., regions=...))`` (and create_server, start_server,
    open_connection, the aiozc loop's methods).

    ``chunk`` is the most one lease holds (one region); ``regions`` bounds how many leases may
    be held at once by all connections of this process with the same ``chunk`` and
    ``regions`` (they share one pool: :meth:`pool`). Reading pauses while all are held.

    A connection judges itself after ``judge_after`` bytes: if less than ``min_mapped`` of
    them were mapped (a peer sending with plain ``send()`` maps nothing), it goes back to the
    plain read path for good and its stats say why.
    """

    chunk: int = DEFAULT_CHUNK
    regions: int = DEFAULT_REGIONS
    min_mapped: float = 0.5
    judge_after: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("chunk", "regions", "judge_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"ZeroCopyReceive.{name} must be an int, got {value!r}")
        if self.chunk <= 0 or self.chunk % _sys.PAGE_SIZE:
            raise ValueError(f"ZeroCopyReceive.chunk must be a positive multiple of {_sys.PAGE_SIZE}")
        if self.regions <= 0:
            raise ValueError("ZeroCopyReceive.regions must be positive")
        if self.judge_after < 0:
            raise ValueError("ZeroCopyReceive.judge_after must be >= 0")
        if not isinstance(self.min_mapped, (int, float)) or not 0 <= self.min_mapped <= 1:
            raise ValueError(f"ZeroCopyReceive.min_mapped must be in [0, 1], got {self.min_mapped!r}")

    def pool(self) -> RegionPool:
        """This process's pool for (chunk, regions), made on first use (again after fork())."""
        key = (self.chunk, self.regions)
        with _POOLS_LOCK:
            pool = _POOLS.get(key)
            if pool is None or pool.pid != os.getpid():
                pool = _POOLS[key] = RegionPool(chunk=self.chunk, regions=self.regions)
            return pool

    @classmethod
    def coerce(cls, value: object) -> "ZeroCopyReceive | None":
        """The ``zc_receive`` transport option: None/False (off), True (defaults) or an instance."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        raise TypeError(f"zc_receive must be a ZeroCopyReceive, True or None, got {value!r}")


_POOLS: dict[tuple[int, int], RegionPool] = {}
_POOLS_LOCK = threading.Lock()


@atexit.register
def _close_pools() -> None:
    # Leases still alive keep their mappings (each region holds a dup of the owner fd).
    with _POOLS_LOCK:
        pools = [p for p in _POOLS.values() if p.pid == os.getpid()]
        _POOLS.clear()
    for pool in pools:
        pool.close()
