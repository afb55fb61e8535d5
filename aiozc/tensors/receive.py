"""The channel's protocol: the receive state machine, read-ahead and write flow control."""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ChannelClosed, FrameError, IncompleteFrame
from .frames import PREFIX_SIZE, SCRATCH_BYTES, ChannelOptions, Frame, FrameHeader, byte_view, parse_header, parse_prefix
from .interop import _Destination

if TYPE_CHECKING:
    from . import Channel

log = logging.getLogger("aiozc.tensors")

# What one read-ahead frame is charged beyond its body, so a flood of empty arrays is bounded too.
_FRAME_OVERHEAD = 256

# --------------------------------------------------------------------------------------------
# The protocol: receive state machine and write flow control

_HEAD = "head"  # collecting a prefix + header in the scratch buffer
_WAIT_DEST = "wait-dest"  # header parsed, no destination yet: reading paused until recv()
_BODY = "body"  # recv_into the destination array


@dataclass
class _Waiter:
    future: asyncio.Future[Frame]
    dest: _Destination


class _TensorProtocol(asyncio.BufferedProtocol):
    def __init__(self, options: ChannelOptions, on_connect: Callable[[Channel], None] | None = None) -> None:
        from . import Channel  # noqa: PLC0415 - the public half of this pair imports us

        self.options = options
        self.channel = Channel(self)
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self._scratch = bytearray(SCRATCH_BYTES)
        self._scratch_view = memoryview(self._scratch)
        self._fill = 0
        self._state = _HEAD
        self._header: FrameHeader | None = None
        self._body: np.ndarray | None = None
        self._body_view: memoryview | None = None
        self._body_filled = 0
        self._body_owner: _Waiter | None = None  # None: read-ahead
        self._ready: collections.deque[Frame] = collections.deque()
        self._ready_bytes = 0
        self._waiter: _Waiter | None = None
        self._reading_paused = False
        self._error: BaseException | None = None  # FrameError found while parsing
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._size_socket_buffers()
        if self._on_connect is not None:
            self._on_connect(self.channel)

    def _size_socket_buffers(self) -> None:
        size = self.options.socket_buffer_bytes
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if size is None or sock is None:
            return
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError as exc:  # best effort: the connection works either way
                log.debug("setsockopt(%s, %d) failed: %s", option, size, exc)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == _BODY:
            return self._body_view[self._body_filled :]  # type: ignore[index]
        # _WAIT_DEST pauses reading; if a read still slips in, the scratch has room for it.
        return self._scratch_view[self._fill :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == _BODY:
            self._body_filled += nbytes
            if self._body_filled == self._header.nbytes:  # type: ignore[union-attr]
                self._finish_body()
        else:
            self._fill += nbytes
        self._advance()

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides whether a frame was cut short

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_exc = exc
        self._wake_drain_waiters()
        self._advance()  # frames already complete in the scratch can still be handed out
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain_waiters()

    # -- receive state machine

    def _advance(self) -> None:
        """Run the state machine as far as buffered bytes and the waiting recv() allow."""
        while self._error is None:
            if self._state == _HEAD:
                if not self._parse_header():
                    break
            elif self._state == _WAIT_DEST:
                if not self._choose_destination():
                    break
            else:  # _BODY: the transport delivers the rest
                break
        self._serve_waiter()
        self._fail_body_owner_if_lost()
        self._update_reading()

    def _parse_header(self) -> bool:
        if self._fill < PREFIX_SIZE:
            return False
        try:
            header_len, nbytes = parse_prefix(self._scratch_view[:PREFIX_SIZE], self.options)
            end = PREFIX_SIZE + header_len
            if self._fill < end:
                return False
            header = parse_header(self._scratch_view[PREFIX_SIZE:end], nbytes)
        except FrameError as exc:
            self._fail(exc)
            return False
        self._consume_scratch(end)
        self._header = header
        self._state = _WAIT_DEST
        return True

    def _choose_destination(self) -> bool:
        header = self._header
        assert header is not None
        waiter = self._waiter
        if waiter is not None and waiter.future.done():  # its recv() was cancelled
            waiter = self._waiter = None
        # Frames read ahead come first: a waiter takes the new frame only when none wait.
        if waiter is not None and not self._ready:
            try:
                waiter.dest.check(header)
            except ValueError as exc:
                self._waiter = None
                waiter.future.set_exception(exc)
                return False
            self._waiter = None
            self._start_body(waiter.dest.array_for(header), waiter)
            return True
        if self._ready_bytes + header.nbytes + _FRAME_OVERHEAD <= self.options.readahead_bytes:
            self._start_body(np.empty(header.shape, header.dtype), None)
            return True
        return False  # stays _WAIT_DEST; _update_reading pauses until recv() picks a destination

    def _start_body(self, array: np.ndarray, owner: _Waiter | None) -> None:
        self._body = array
        self._body_view = byte_view(array)
        self._body_owner = owner
        self._state = _BODY
        # Body bytes that arrived with the header: the one small copy on the receive path.
        take = min(self._fill, self._header.nbytes)  # type: ignore[union-attr]
        self._body_view[:take] = self._scratch_view[:take]
        self._consume_scratch(take)
        self._body_filled = take
        if take == self._header.nbytes:  # type: ignore[union-attr]
            self._finish_body()

    def _finish_body(self) -> None:
        header = self._header
        assert header is not None and self._body is not None
        frame = Frame(self._body, header.name, header.metadata, header.tag)
        owner = self._body_owner
        self._header = self._body = self._body_view = self._body_owner = None
        self._state = _HEAD
        if owner is not None and not owner.future.done():
            self._resolve(owner, frame)
        else:  # read ahead, or its recv() was cancelled: keep it for the next recv()
            if owner is not None and owner.dest.view is not None:
                # The cancelled caller owns that memory again; don't hand it to someone else.
                frame = Frame(frame.array.copy(), frame.name, frame.metadata, frame.tag)
            self._ready.append(frame)
            self._ready_bytes += header.nbytes + _FRAME_OVERHEAD

    def _consume_scratch(self, n: int) -> None:
        rest = self._fill - n
        if rest:
            self._scratch_view[:rest] = self._scratch_view[n : self._fill]
        self._fill = rest

    def _serve_waiter(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.future.done():
            self._waiter = None
            return
        if self._ready:
            try:
                waiter.dest.check(_header_of(self._ready[0]))
            except ValueError as exc:
                self._waiter = None
                waiter.future.set_exception(exc)
                return
            frame = self._ready.popleft()
            self._ready_bytes -= frame.array.nbytes + _FRAME_OVERHEAD
            if waiter.dest.view is not None:
                np.copyto(waiter.dest.view, frame.array)  # it was read ahead before out= was known
            self._waiter = None
            self._resolve(waiter, frame)
            return
        if self._state != _BODY or self._lost:
            error = self._terminal_error()
            if error is not None:
                self._waiter = None
                waiter.future.set_exception(error)

    def _fail_body_owner_if_lost(self) -> None:
        owner = self._body_owner
        if self._lost and self._state == _BODY and owner is not None and not owner.future.done():
            owner.future.set_exception(self._terminal_error())  # type: ignore[arg-type]

    def _resolve(self, waiter: _Waiter, frame: Frame) -> None:
        try:
            waiter.future.set_result(waiter.dest.result(frame))
        except Exception as exc:  # e.g. as_torch without torch installed
            waiter.future.set_exception(exc)

    def _terminal_error(self) -> BaseException | None:
        """The error a recv() gets when no more frames can come; None while they still can."""
        if self._error is not None:
            return self._error
        if not self._lost:
            return None
        if self._state != _HEAD or self._fill:
            got = self._body_filled if self._state == _BODY else self._fill
            exc: BaseException = IncompleteFrame(f"connection closed in the middle of a frame ({got} bytes of it received)")
        else:
            exc = ChannelClosed("channel closed")
        exc.__cause__ = self._lost_exc
        return exc

    def _fail(self, exc: FrameError) -> None:
        self._error = exc
        if self.transport is not None:
            self.transport.abort()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self._lost or transport.is_closing():
            return
        pause = self._state == _WAIT_DEST
        if pause and not self._reading_paused:
            transport.pause_reading()  # type: ignore[attr-defined]
        elif not pause and self._reading_paused:
            transport.resume_reading()  # type: ignore[attr-defined]
        self._reading_paused = pause

    def add_waiter(self, dest: _Destination) -> asyncio.Future[Frame]:
        if self._waiter is not None and not self._waiter.future.done():
            raise RuntimeError("recv() called while another recv() is already waiting on this channel")
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        if self._ready:
            self._waiter = _Waiter(future, dest)
        elif self._state == _BODY and self._body_owner is None and dest.view is None:
            self._body_owner = _Waiter(future, dest)  # adopt the read-ahead in progress
            return future
        else:
            self._waiter = _Waiter(future, dest)
        self._advance()
        return future

    # -- write flow control

    async def drain(self) -> None:
        while self._write_paused and not self._lost:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(future)
            await future
        if self._lost:
            raise ChannelClosed("cannot send: the connection is closed") from self._lost_exc

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


def _header_of(frame: Frame) -> FrameHeader:
    array = frame.array
    return FrameHeader(array.dtype, array.shape, array.nbytes, frame.name, frame.metadata, frame.tag)
