"""The receive side of a zc:// connection: an asyncio BufferedProtocol that reads each frame
group straight into its own pooled buffer (recv_into), and the send-side flow control."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable

from distributed.comm.core import CommClosedError

from . import wire
from .pool import ReceivePool

# Prefixes, tables and small messages are read into this scratch; the bytes of a group that
# arrive with them are copied into the group's buffer: at most this much per message.
SCRATCH_BYTES = 64 << 10



class CopyCounts:
    """User-space bytes this process's zc:// comms copied, by where (bench dask reports them).

    ``send_join``: small frames joined into one write; ``recv_scratch``: bytes that arrived in
    the scratch with a prefix or table and were copied into their frame's buffer (or moved
    within the scratch, or into a large table's buffer). The receive buffers themselves are
    filled by the kernel (recv_into), the arrays held by write_zc: neither is a copy here.
    """

    __slots__ = ("send_join", "recv_scratch")

    def __init__(self) -> None:
        self.send_join = 0
        self.recv_scratch = 0

    def take(self) -> dict[str, int]:
        out = {"send_join": self.send_join, "recv_scratch": self.recv_scratch}
        self.send_join = self.recv_scratch = 0
        return out


copies = CopyCounts()

_HEAD = "head"
_TABLE = "table"  # a frame table larger than the scratch, read into its own buffer
_BODY = "body"


class _Message:
    """The buffers of the message being received, one per receive unit, in wire order."""

    def __init__(self, layout: wire.Layout, pool: ReceivePool) -> None:
        self.layout = layout
        self.units = layout.units()
        self.nbytes = sum(unit.nbytes for unit in self.units)
        self.pool = pool
        self.buffers: list[memoryview] = []
        self.filled = 0  # bytes in the current (last) buffer

    def next_buffer(self) -> memoryview | None:
        """Start the next unit; None when every unit is in."""
        index = len(self.buffers)
        if index == len(self.units):
            return None
        unit = self.units[index]
        n = unit.nbytes
        if unit.small:
            # Not pooled: these are ~1% of an array message, and dropped once deserialized.
            self.buffers.append(memoryview(wire.SmallFrames(n)))
        else:
            self.buffers.append(self.pool.acquire(n) if n else memoryview(bytearray(0)))
        self.filled = 0
        return self.buffers[-1]

    def frames(self) -> list[memoryview]:
        """The frames in dask's order, each a slice of its unit's buffer."""
        lengths = self.layout.lengths
        out: list[memoryview] = [None] * len(lengths)  # type: ignore[list-item]
        for buf, unit in zip(self.buffers, self.units):
            if len(unit.frames) == 1:  # one array: its buffer, not a second view of it apiece
                out[unit.frames[0]] = buf
                continue
            offset = 0
            for i in unit.frames:
                n = lengths[i]
                out[i] = buf[offset : offset + n]
                offset += n
        return out


class ZCProtocol(asyncio.BufferedProtocol):
    def __init__(self, pool: ReceivePool, limits: wire.Limits, readahead_bytes: int,
                 on_made: Callable[[ZCProtocol], None] | None = None) -> None:
        self.pool = pool
        self.limits = limits
        self.readahead_bytes = readahead_bytes
        self.transport: Any = None
        self._on_made = on_made
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))
        self._start = 0  # unread bytes of the scratch are [_start, _fill)
        self._fill = 0
        self._state = _HEAD
        self._counts = (0, 0)
        self._table: memoryview | None = None
        self._table_filled = 0
        self._message: _Message | None = None
        self._body: memoryview | None = None
        self._ready: collections.deque[tuple[list[memoryview], int]] = collections.deque()
        self._ready_bytes = 0
        self._reader: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.error: BaseException | None = None  # why no more messages will come
        self.lost = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self._on_made is not None:
            self._on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == _BODY:
            return self._body[self._message.filled :]  # type: ignore[index,union-attr]
        if self._state == _TABLE:
            return self._table[self._table_filled :]  # type: ignore[index]
        if self._start == self._fill:
            self._start = self._fill = 0
        elif self._fill > SCRATCH_BYTES - wire.PREFIX_SIZE:
            self._compact()
        return self._scratch[self._fill :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == _BODY:
            self._message.filled += nbytes  # type: ignore[union-attr]
        elif self._state == _TABLE:
            self._table_filled += nbytes
        else:
            self._fill += nbytes
        try:
            self._advance()
        except wire.WireError as exc:
            self._fail(CommClosedError(f"zc:// protocol error: {exc}"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.error is None:
            if self._state != _HEAD or self._fill > self._start:
                reason = "in the middle of a message"
            else:
                reason = "by the peer" if exc is None else f"({type(exc).__name__}: {exc})"
            self.error = CommClosedError(f"zc:// connection closed {reason}")
            self.error.__cause__ = exc
        self._message = self._body = self._table = None  # partial buffers go back to the pool
        self._wake_reader()
        self._wake_drain_waiters()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_drain_waiters()

    # -- parsing ------------------------------------------------------------------------

    def _advance(self) -> None:
        while True:
            if self._state == _HEAD and not self._parse_head():
                break
            if self._state == _TABLE:
                if self._table_filled < len(self._table):  # type: ignore[arg-type]
                    break
                self._begin_message(self._table)  # type: ignore[arg-type]
            if self._state == _BODY and not self._fill_groups():
                break
        self._update_reading()

    def _parse_head(self) -> bool:
        avail = self._fill - self._start
        if avail < wire.PREFIX_SIZE:
            return False
        start = self._start
        nframes, ngroups = wire.parse_prefix(self._scratch[start : start + wire.PREFIX_SIZE], self.limits)
        need = wire.table_size(nframes, ngroups)
        self._counts = (nframes, ngroups)
        table_start = start + wire.PREFIX_SIZE
        if wire.PREFIX_SIZE + need <= avail:
            self._start = table_start + need
            self._begin_message(self._scratch[table_start : table_start + need])
            return True
        if wire.PREFIX_SIZE + need <= SCRATCH_BYTES:
            if self._fill + (wire.PREFIX_SIZE + need - avail) > SCRATCH_BYTES:
                self._compact()
            return False  # the rest of the table arrives into the scratch
        self._table = memoryview(bytearray(need))
        have = avail - wire.PREFIX_SIZE
        self._table[:have] = self._scratch[table_start : self._fill]
        copies.recv_scratch += have
        self._table_filled = have
        self._start = self._fill = 0
        self._state = _TABLE
        return True

    def _begin_message(self, table: memoryview) -> None:
        layout = wire.parse_table(table, *self._counts, self.limits)
        self._table = None
        self._message = _Message(layout, self.pool)
        self._body = self._message.next_buffer()
        self._state = _BODY

    def _fill_groups(self) -> bool:
        """Move scratch bytes into the groups; True when the message is complete."""
        message = self._message
        assert message is not None
        while self._body is not None:
            want = len(self._body) - message.filled
            take = min(want, self._fill - self._start)
            if take:
                self._body[message.filled : message.filled + take] = self._scratch[self._start : self._start + take]
                copies.recv_scratch += take
                message.filled += take
                self._start += take
            if message.filled < len(self._body):
                return False
            self._body = message.next_buffer()
        frames = message.frames()
        nbytes = message.nbytes
        self._ready.append((frames, nbytes))
        self._ready_bytes += nbytes
        self._message = None
        self._state = _HEAD
        self._wake_reader()
        return True

    def _compact(self) -> None:
        rest = self._fill - self._start
        self._scratch[:rest] = self._scratch[self._start : self._fill]
        copies.recv_scratch += rest
        self._start, self._fill = 0, rest

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._wake_reader()
        if self.transport is not None:
            self.transport.abort()

    # -- what the comm awaits -------------------------------------------------------------

    async def next_frames(self) -> list[memoryview]:
        while not self._ready:
            if self.error is not None:
                raise self.error
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        frames, nbytes = self._ready.popleft()
        self._ready_bytes -= nbytes
        self._update_reading()
        return frames

    async def drain(self) -> None:
        while self._paused_writing and not self.lost:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.lost:
            raise self.error or CommClosedError("zc:// connection closed")

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _update_reading(self) -> None:
        # Read-ahead is bounded: past readahead_bytes of unread messages, stop reading.
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        pause = self._ready_bytes >= self.readahead_bytes
        if pause != self._paused_reading:
            (transport.pause_reading if pause else transport.resume_reading)()
            self._paused_reading = pause
