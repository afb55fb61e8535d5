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

from ..buffers import aligned_buffer
from .aligned import aligned_empty
from .errors import ChannelBroken, ChannelClosed, FrameError, IncompleteFrame
from .frames import (
    ALIGN_BODIES_FROM,
    BODY_ALIGN,
    PREFIX_SIZE,
    SCRATCH_BYTES,
    ChannelOptions,
    Frame,
    FrameHeader,
    byte_view,
    parse_frame_prefix,
    parse_header,
)
from .interop import _Destination

if TYPE_CHECKING:
    from . import Channel

log = logging.getLogger("aiozc.tensors")

# What a read-ahead frame is charged beyond its body and header: its Frame, FrameHeader and
# ndarray objects (~230 bytes measured with tracemalloc for an empty array), with room to spare.
_FRAME_OVERHEAD = 1024
# Bytes of Python objects per byte of JSON header, an upper bound: json.loads of 32 KiB headers
# measured with tracemalloc cost 4x (a list of 0s), 24x ({} or [0] items), 34x ([[[]]] items)
# and 44x (one-element lists nested as deep as allowed), the worst found.
_PARSED_BYTES_PER_HEADER_BYTE = 48

# Receive scratch buffers not in use by any connection. A connection holds one only while bytes
# of a prefix or header wait in it, so idle connections cost no 64 KiB each; the few spares
# spare active connections a fresh zero-filled bytearray per read.
_SPARE_SCRATCH: list[memoryview] = []
_MAX_SPARE_SCRATCH = 8


def _take_scratch() -> memoryview:
    try:
        return _SPARE_SCRATCH.pop()
    except IndexError:
        return aligned_buffer(SCRATCH_BYTES)


def _give_back_scratch(view: memoryview) -> None:
    if len(_SPARE_SCRATCH) < _MAX_SPARE_SCRATCH:
        _SPARE_SCRATCH.append(view)


def readahead_charge(header: FrameHeader) -> int:
    """What a frame read ahead is taken to hold, conservatively (see ChannelOptions)."""
    return header.nbytes + header.header_bytes * _PARSED_BYTES_PER_HEADER_BYTE + _FRAME_OVERHEAD


def allocate(header: FrameHeader) -> np.ndarray:
    """The array a frame's body is received into (page-aligned: see .aligned); FrameError if
    numpy cannot make it."""
    try:
        return aligned_empty(header.shape, header.dtype)
    except (ValueError, MemoryError) as exc:
        raise FrameError(f"cannot allocate a {header.dtype} array of shape {header.shape[:8]}: {exc}") from None

# --------------------------------------------------------------------------------------------
# The protocol: receive state machine and write flow control

_HEAD = "head"  # collecting a prefix + header in the scratch buffer
_PAD = "pad"  # dropping the padding between a version-2 header and its body
_WAIT_DEST = "wait-dest"  # header parsed, no destination yet: reading paused until recv()
_BODY = "body"  # recv_into the destination array


@dataclass
class _Waiter:
    future: asyncio.Future[Frame]
    dest: _Destination


@dataclass
class _ReadAhead:
    frame: Frame
    header: FrameHeader
    charge: int


class _TensorProtocol(asyncio.BufferedProtocol):
    def __init__(self, options: ChannelOptions, on_connect: Callable[[Channel], None] | None = None) -> None:
        from . import Channel  # noqa: PLC0415 - the public half of this pair imports us

        self.options = options
        self.channel = Channel(self)
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self._scratch_view: memoryview | None = None  # taken while _fill > 0 or a read is due
        self._fill = 0
        self._state = _HEAD
        self._header: FrameHeader | None = None
        self._pad_left = 0
        self._head_end = PREFIX_SIZE  # scratch bytes the prefix (then prefix + header) needs
        # No header yet, or the peer has padded one since its first: see lease_size_hint.
        self._peer_pads = True
        self._headers_seen = 0
        self._leases_seen = False  # zc_receive delivers leases: bodies may arrive mapped
        self._body: np.ndarray | None = None
        self._body_view: memoryview | None = None
        self._body_filled = 0
        self._body_owner: _Waiter | None = None  # None: read-ahead
        self._ready: collections.deque[_ReadAhead] = collections.deque()
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
        if self._state == _BODY and (self._body_view is not None or self._allocate_late()):
            return self._body_view[self._body_filled :]  # type: ignore[index]
        # _WAIT_DEST pauses reading; if a read still slips in, the scratch has room for it.
        if self._scratch_view is None:
            self._scratch_view = _take_scratch()
        return self._scratch_view[self._fill :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._error is not None:
            return  # the connection is being aborted: the bytes go nowhere
        if self._state == _BODY:
            self._body_filled += nbytes
            if self._body_filled == self._header.nbytes:  # type: ignore[union-attr]
                self._finish_body()
        else:
            self._fill += nbytes
        self._advance()

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides whether a frame was cut short

    def lease_received(self, lease: Any) -> int:
        """Mapped pages (``zc_receive``, aiozc.zcread), fed through the state machine here.

        A body that starts on a page of the lease (its start or a page boundary inside it:
        the sender pads headers so that large bodies start at 4096-aligned stream offsets) and
        fits in the rest of it, with no ``out=`` waiting for it, becomes a read-only array over
        those pages, which stay mapped while the array lives. Everything else (headers, bodies
        that span leases or start mid-page) is copied as get_buffer() would have it; padding
        is skipped. Returns how far it got: it stops when reading pauses (the transport holds
        the rest back until resume_reading) or the connection fails."""
        self._leases_seen = True
        view = lease.view
        offset = 0
        while offset < len(view) and self._takes_lease_bytes():
            taken = self._take_from_lease(view, offset)
            if not taken:  # an empty get_buffer(): the transport reports it on the rest
                break
            offset += taken
        return offset

    def lease_size_hint(self) -> int | None:
        """How many bytes the next lease should hold at most (zc_receive asks before mapping):
        the rest of a body, the rest of a padding, or the rest of a header when the peer pads
        (its header pages then end where a body starts; small frames in between cost a
        getsockopt per page then). Without it a lease of a whole region ends anywhere, and the
        body it cuts arrives in two leases, copied (measured: 11 of 16 bodies of 256 KiB mapped
        with 1 MiB regions, against 16 of 16 with the hint). None: as much as is queued; a peer
        whose first header was not padded and no later one either gets whole regions."""
        if self._state == _BODY and self._header is not None:
            return self._header.nbytes - self._body_filled
        if self._state == _PAD:
            return self._pad_left - self._fill or None
        if self._state == _HEAD and self._peer_pads:
            return max(self._head_end - self._fill, 1)
        return None

    def _takes_lease_bytes(self) -> bool:
        transport = self.transport
        return (
            self._error is None and not self._lost and self._state != _WAIT_DEST
            and transport is not None and not transport.is_closing()
        )

    def _take_from_lease(self, view: memoryview, offset: int) -> int:
        rest = len(view) - offset
        if self._state == _PAD and not self._fill:
            skip = min(self._pad_left, rest)
            self._pad_left -= skip
            self._advance()
            return skip
        if self._state == _BODY:
            adopted = self._adopt_mapped_body(view, offset)
            if adopted:
                self._advance()
                return adopted
        if self._state == _HEAD and self._head_end > self._fill:
            # Only the header: body bytes copied into the scratch with it would not map.
            rest = min(rest, self._head_end - self._fill)
        buf = self.get_buffer(rest)
        n = min(len(buf), rest)
        buf[:n] = view[offset : offset + n]
        self.buffer_updated(n)
        return n

    def _mapped_body_allowed(self) -> bool:
        owner = self._body_owner  # recv(out=) is filled in place; torch wants writable memory
        return owner is None or (owner.dest.view is None and not owner.dest.as_torch)

    def _adopt_mapped_body(self, view: memoryview, offset: int) -> int:
        header = self._header
        if self._body_filled or header is None or not ALIGN_BODIES_FROM <= header.nbytes <= len(view) - offset:
            return 0
        # A small body is copied even where a lease happens to start with it (that depends on
        # when the receiver read): mapping saves nothing at that size (see ALIGN_BODIES_FROM),
        # and a 40-byte array would keep the whole region from being unmapped.
        # The lease starts on a page (the region's start); a body mid-page is not page-backed
        # for the consumer's purposes (numpy alignment, the sender did not pad it).
        if offset % BODY_ALIGN or not self._mapped_body_allowed():
            return 0
        self._body = np.frombuffer(view[offset : offset + header.nbytes], header.dtype).reshape(header.shape)
        self._body_filled = header.nbytes
        self._finish_body()
        return header.nbytes

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
            elif self._state == _PAD:
                if not self._skip_padding():
                    break
            elif self._state == _WAIT_DEST:
                if not self._choose_destination():
                    break
            else:  # _BODY: the transport delivers the rest
                break
        self._serve_waiter()
        self._fail_body_owner_if_lost()
        self._update_reading()
        if not self._fill:
            self._drop_scratch()

    def _drop_scratch(self) -> None:
        view, self._scratch_view = self._scratch_view, None
        if view is not None:
            _give_back_scratch(view)

    def _parse_header(self) -> bool:
        self._head_end = PREFIX_SIZE
        if self._fill < PREFIX_SIZE:
            return False
        scratch = self._scratch_view
        assert scratch is not None
        try:
            header_len, padding, nbytes = parse_frame_prefix(scratch[:PREFIX_SIZE], self.options)
            end = PREFIX_SIZE + header_len
            if self._fill < end:
                self._head_end = end
                return False
            header = parse_header(scratch[PREFIX_SIZE:end], nbytes, self.options.max_frame_bytes)
        except FrameError as exc:
            self._fail(exc)
            return False
        self._consume_scratch(end)
        self._head_end = PREFIX_SIZE
        self._header = header
        self._pad_left = padding
        self._peer_pads = padding > 0 or (self._peer_pads and self._headers_seen > 0)
        self._headers_seen += 1
        self._state = _PAD if padding else _WAIT_DEST
        return True

    def _skip_padding(self) -> bool:
        """Drop the padding bytes buffered so far; True once all of it is gone."""
        if self._pad_left:
            drop = min(self._fill, self._pad_left)
            self._consume_scratch(drop)
            self._pad_left -= drop
            if self._pad_left:
                return False
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
            return self._start_body(waiter.dest.view, waiter)
        options = self.options
        if (
            len(self._ready) < options.readahead_frames
            and self._ready_bytes + readahead_charge(header) <= options.readahead_bytes
        ):
            return self._start_body(None, None)
        return False  # stays _WAIT_DEST; _update_reading pauses until recv() picks a destination

    def _start_body(self, array: np.ndarray | None, owner: _Waiter | None) -> bool:
        """Receive the body into ``array`` (a new one if None); False if it can't be made."""
        header = self._header
        assert header is not None
        self._body_owner = owner
        if array is None and self._leases_seen and not self._fill and header.nbytes >= ALIGN_BODIES_FROM:
            # The body may come as mapped pages: allocate only if it is copied after all (an
            # unused 256 KiB array cost 5 us to make and free).
            self._body = self._body_view = None
            self._body_filled = 0
            self._state = _BODY
            return True
        if array is None:
            try:
                array = allocate(header)
            except FrameError as exc:
                if owner is not None:
                    owner.future.set_exception(exc)
                self._fail(exc)
                return False
        self._body = array
        self._body_view = byte_view(array)
        self._state = _BODY
        # Body bytes that arrived with the header: the one small copy on the receive path.
        take = min(self._fill, header.nbytes)
        if take:
            self._body_view[:take] = self._scratch_view[:take]  # type: ignore[index]
            self._consume_scratch(take)
        self._body_filled = take
        if take == header.nbytes:
            self._finish_body()
        return True

    def _allocate_late(self) -> bool:
        """The array of a body that was not mapped after all; False (connection failed) if
        numpy cannot make it."""
        assert self._header is not None
        try:
            self._body = allocate(self._header)
        except FrameError as exc:
            owner = self._body_owner
            if owner is not None and not owner.future.done():
                owner.future.set_exception(exc)
            self._fail(exc)
            return False
        self._body_view = byte_view(self._body)
        return True

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
            charge = readahead_charge(header)
            self._ready.append(_ReadAhead(frame, header, charge))
            self._ready_bytes += charge

    def _consume_scratch(self, n: int) -> None:
        rest = self._fill - n
        if rest:
            scratch = self._scratch_view
            assert scratch is not None
            scratch[:rest] = scratch[n : self._fill]
        self._fill = rest

    def _serve_waiter(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.future.done():
            self._waiter = None
            return
        if self._ready:
            try:
                waiter.dest.check(self._ready[0].header)
            except ValueError as exc:
                self._waiter = None
                waiter.future.set_exception(exc)
                return
            held = self._ready.popleft()
            self._ready_bytes -= held.charge
            frame = held.frame
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
        elif self._lost_exc is not None:
            exc = ChannelBroken(f"connection lost: {self._lost_exc!r}")
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
            if self._lost_exc is not None:
                raise ChannelBroken(f"cannot send: connection lost: {self._lost_exc!r}") from self._lost_exc
            raise ChannelClosed("cannot send: the connection is closed")

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

