"""sendfile() in the TCP transport's queue: in order with the writes, from the page cache.

Two ways out, chosen per file:

* ``os.sendfile``: the pages go from the page cache, the NIC reads them, nothing is copied on
  this host. Always, unless the next point applies.
* One copy, ``send()`` from a read-only mapping of the file, for a file of at least
  COPY_MIN_BYTES to a receiver on this host (loopback, our own address, AF_UNIX). Such a
  receiver copies every byte anyway, and it copies sendfile's page-cache fragments much more
  slowly than the private pages a send() fills. Measured under wrk (32 connections, server and
  wrk on a core each): wrk's kernel time was 0.98-1.09 s/GB receiving a 64 MiB file a raw
  server sent with os.sendfile, 0.61-0.62 s/GB when it copied the file from a mapping, for
  ~0.1 s/GB more on the server. Through aiohttp, 64 MiB: 35 against 63 ms of wrk CPU per
  response (server 20 against 16 ms), 1.5-2x the bytes/s. A 1 MiB file stays in L3 and the
  receiver gains less (0.40-0.50 against 0.57-0.64 ms per response) than the server pays
  (+0.3 ms, the mapping included), so small files keep os.sendfile: their server core, busy
  with aiohttp's per-request work, is the one that limits.
"""

from __future__ import annotations

import asyncio
import errno
import io
import ipaddress
import mmap
import os
import socket
import stat
from typing import Any

# One os.sendfile call moves at most this much; the socket buffer limits it long before.
_SENDFILE_MAX = 1 << 30
# The copy path maps the file this much at a time: few mmap calls per file, bounded address
# space and page tables for huge files. Each send() takes what the socket buffer has room for.
MAP_WINDOW = 8 << 20
# Copy files to receivers on this host (see the module docstring); False: always os.sendfile.
COPY_TO_LOCAL_PEERS = True
# Below this many bytes per sendfile() call, os.sendfile even to a receiver on this host.
COPY_MIN_BYTES = 4 << 20


class _FileSegment:
    """A queue entry sent from a file: pages go from the page cache, never through Python.

    It owns a dup of the file descriptor, so the caller closing (or reusing) its file after a
    cancellation can never make us send from the wrong file.
    """

    __slots__ = ("fd", "start", "offset", "end", "future", "copy", "window", "window_start",
                 "window_end")
    held = False  # never a buffer of the caller's, never tracked by the completion tracker
    write = None
    data = None

    def __init__(
        self, fd: int, offset: int, end: int, future: asyncio.Future[int], *, copy: bool = False
    ) -> None:
        self.fd = fd
        self.start = self.offset = offset
        self.end = end
        self.future = future
        self.copy = copy  # send() from a mapping, not os.sendfile
        self.window: mmap.mmap | None = None
        self.window_start = self.window_end = offset

    def close_window(self) -> None:
        if self.window is not None:
            # No view of it outlives a send() call, so nothing still exports it.
            self.window.close()
            self.window = None

    def map_window(self) -> mmap.mmap | None:
        """Map the file from ``offset`` (page-aligned down) for up to MAP_WINDOW bytes; None
        if it cannot be mapped (a file system without mmap, or the file shrank below it)."""
        self.close_window()
        base = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY
        length = min(self.end, base + MAP_WINDOW) - base
        try:
            # CPython's mmap refuses (ValueError) a range past the file's current end.
            window = mmap.mmap(self.fd, length, prot=mmap.PROT_READ, offset=base)
        except (OSError, ValueError):
            return None
        self.window, self.window_start, self.window_end = window, base, base + length
        return window

    def finish(self, exc: BaseException | None = None) -> None:
        self.close_window()
        os.close(self.fd)
        if self.future.done():
            return
        if exc is None:
            self.future.set_result(self.offset - self.start)
        else:
            self.future.set_exception(exc)


class StreamFiles:
    """Mixed into ZeroCopyTransport: ``sendfile()`` queues a _FileSegment, the flush sends it."""

    _queue: Any
    _loop: Any
    _fd: int
    _eof: bool
    _sock: Any
    _zc_in_flight: int
    stats: Any
    _copy_files: bool | None = None  # per connection, decided at its first sendfile()

    async def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (to EOF if None).

        In order: after everything written before, before anything written after. From the
        page cache, with os.sendfile, or with one copy from a mapping when a large file goes to
        a receiver on this host (module docstring); nothing is pinned and no buffer of the caller's is held.
        Returns bytes sent (less than ``count`` only if the file is shorter). Raises
        NotImplementedError, before sending anything, for objects os.sendfile cannot send
        from, so callers can fall back to reads (what asyncio's loop.sendfile contract and
        aiohttp's FileResponse expect).
        """
        self._check_writable("sendfile")  # type: ignore[attr-defined]
        if self._eof:
            raise RuntimeError("Cannot call sendfile() after write_eof()")
        end = _file_end(file, offset, count)
        if end <= offset:
            return 0
        if self._copy_files is None:
            self._copy_files = COPY_TO_LOCAL_PEERS and _peer_on_this_host(self._sock)
        copy = self._copy_files and end - offset >= COPY_MIN_BYTES
        sent: int | None = None  # None: not tried, or failed (the queued path raises it)
        if not copy and not self._queue and not self._zc_in_flight:
            sent = self._send_file_now(file.fileno(), offset, end)
            if sent is not None and (sent < 0 or offset + sent >= end):
                return max(sent, 0)
        future: asyncio.Future[int] = self._loop.create_future()
        seg = _FileSegment(os.dup(file.fileno()), offset, end, future, copy=copy)
        seg.offset += sent or 0
        self._queue.append(seg)
        if len(self._queue) == 1 and sent is None:
            self._flush()  # type: ignore[attr-defined]
        else:
            self._update_mask()  # type: ignore[attr-defined]
        return await future

    def _send_file_now(self, fd: int, offset: int, end: int) -> int | None:
        """Nothing queued: one os.sendfile straight from the caller's descriptor. Bytes sent,
        -1 if the file ended (it shrank since _file_end), 0 if the socket is full, None if the
        call failed otherwise: it sent nothing, and the queued path tries again and raises
        the error there as it always did.

        A file the socket takes whole (a 1 MiB FileResponse to wrk on loopback: every one,
        strace) needs no queue entry, so no dup of the descriptor, which a queue entry holds
        only so that it can outlive the caller's file: the dup + close were 2 of the loop
        thread's ~11 syscalls per response, and both release the GIL."""
        try:
            sent = os.sendfile(self._fd, fd, offset, min(end - offset, _SENDFILE_MAX))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return None
        if sent == 0:
            return -1
        self._count_file_bytes(sent)
        return sent

    def _count_file_bytes(self, sent: int) -> None:
        extra = self.stats.extra
        extra["sendfile_bytes"] = extra.get("sendfile_bytes", 0) + sent

    def _send_file_head(self, seg: _FileSegment) -> bool:
        """One send from the head file segment; True when it is done."""
        if seg.future.done():
            # The caller was cancelled. Unsent, the segment just goes; half sent, the peer's
            # framing is broken, so the connection must go too.
            self._queue.popleft()
            seg.finish()
            if seg.offset != seg.start:
                raise ConnectionAbortedError("sendfile() cancelled after it had started")
            return True
        if seg.copy:
            sent = self._send_file_copy(seg)
        else:
            sent = os.sendfile(self._fd, seg.fd, seg.offset, min(seg.end - seg.offset, _SENDFILE_MAX))
        if sent == 0:
            seg.end = seg.offset  # the file shrank under us: report what was sent
        seg.offset += sent
        self._count_file_bytes(sent)
        if seg.offset < seg.end:
            return False
        self._queue.popleft()
        seg.finish()
        return True

    def _send_file_copy(self, seg: _FileSegment) -> int:
        """One send() from the segment's mapping; 0 when the file ends before ``seg.end``."""
        window = seg.window
        if window is None or seg.offset >= seg.window_end:
            window = seg.map_window()
            if window is None:
                seg.copy = False  # not mappable: os.sendfile for the rest (it reports EOF too)
                return os.sendfile(self._fd, seg.fd, seg.offset, min(seg.end - seg.offset, _SENDFILE_MAX))
        try:
            sent: int = self._sock.send(
                memoryview(window)[seg.offset - seg.window_start : seg.window_end - seg.window_start]
            )
        except OSError as exc:
            # The file was truncated under the mapping: the kernel's copy faults (EFAULT, in
            # the kernel never SIGBUS) at the first missing page.
            if exc.errno == errno.EFAULT:
                return 0
            raise
        extra = self.stats.extra
        extra["sendfile_copied_bytes"] = extra.get("sendfile_copied_bytes", 0) + sent
        return sent


def _peer_on_this_host(sock: socket.socket | None) -> bool:
    """The receiver is a process on this host: AF_UNIX, a loopback peer, or our own address."""
    if sock is None:
        return False
    if sock.family == getattr(socket, "AF_UNIX", None):
        return True
    try:
        peer, local = sock.getpeername()[0], sock.getsockname()[0]
    except OSError:
        return False
    try:
        address = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback) or peer == local


def _file_end(file: Any, offset: int, count: int | None) -> int:
    """Where a sendfile of ``file`` stops; NotImplementedError if os.sendfile can't read it."""
    if offset < 0 or (count is not None and count < 0):
        raise ValueError(f"offset and count must be >= 0 (got {offset!r}, {count!r})")
    try:
        fileno = file.fileno()
    except (AttributeError, io.UnsupportedOperation) as exc:
        raise NotImplementedError("not a regular file") from exc
    st = os.fstat(fileno)
    if not stat.S_ISREG(st.st_mode):
        raise NotImplementedError("os.sendfile needs a regular file")
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    end = st.st_size if count is None else min(offset + count, st.st_size)
    return max(end, offset)
