"""os.sendfile in the TCP transport's queue: in order with the writes, from the page cache."""

from __future__ import annotations

import asyncio
import io
import os
import stat
from typing import Any

# One os.sendfile call moves at most this much; the socket buffer limits it long before.
_SENDFILE_MAX = 1 << 30


class _FileSegment:
    """A queue entry sent with os.sendfile: pages go from the page cache, never through us.

    It owns a dup of the file descriptor, so the caller closing (or reusing) its file after a
    cancellation can never make us send from the wrong file.
    """

    __slots__ = ("fd", "start", "offset", "end", "future")
    held = False  # never a buffer of the caller's, never tracked by the completion tracker
    write = None
    data = None

    def __init__(self, fd: int, offset: int, end: int, future: asyncio.Future[int]) -> None:
        self.fd = fd
        self.start = self.offset = offset
        self.end = end
        self.future = future

    def finish(self, exc: BaseException | None = None) -> None:
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
    stats: Any

    async def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (to EOF if None) with os.sendfile.

        In order: after everything written before, before anything written after. Zero-copy
        from the page cache, nothing is pinned and no buffer is held. Returns bytes sent (less
        than ``count`` only if the file is shorter). Raises NotImplementedError, before sending
        anything, for objects os.sendfile cannot send from, so callers can fall back to reads
        (what asyncio's loop.sendfile contract and aiohttp's FileResponse expect).
        """
        self._check_writable("sendfile")  # type: ignore[attr-defined]
        if self._eof:
            raise RuntimeError("Cannot call sendfile() after write_eof()")
        end = _file_end(file, offset, count)
        if end <= offset:
            return 0
        future: asyncio.Future[int] = self._loop.create_future()
        self._queue.append(_FileSegment(os.dup(file.fileno()), offset, end, future))
        if len(self._queue) == 1:
            self._flush()  # type: ignore[attr-defined]
        else:
            self._update_mask()  # type: ignore[attr-defined]
        return await future

    def _send_file_head(self, seg: _FileSegment) -> bool:
        """One os.sendfile call from the head file segment; True when it is done."""
        if seg.future.done():
            # The caller was cancelled. Unsent, the segment just goes; half sent, the peer's
            # framing is broken, so the connection must go too.
            self._queue.popleft()
            seg.finish()
            if seg.offset != seg.start:
                raise ConnectionAbortedError("sendfile() cancelled after it had started")
            return True
        sent = os.sendfile(self._fd, seg.fd, seg.offset, min(seg.end - seg.offset, _SENDFILE_MAX))
        if sent == 0:
            seg.end = seg.offset  # the file shrank under us: report what was sent
        seg.offset += sent
        self.stats.extra["sendfile_bytes"] = self.stats.extra.get("sendfile_bytes", 0) + sent
        if seg.offset < seg.end:
            return False
        self._queue.popleft()
        seg.finish()
        return True


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
