"""Framed numpy / torch tensor channels over an aiozc connection (issue #6).

Modules: :mod:`.frames` (wire format, limits), :mod:`.dtypes` (dtype <-> JSON),
:mod:`.interop` (numpy / torch), :mod:`.receive` (the protocol: receive state machine,
read-ahead, flow control), this one (the public :class:`Channel`, ``connect``, ``serve``).

A :class:`Channel` sends one array per *frame* and receives the body of each frame straight
into the destination array: the transport's ``recv_into`` writes into a memoryview slice of
a fresh page-aligned array (:func:`aligned_empty`) or of a caller-supplied ``out=`` array. There is no intermediate
``bytes`` object and no join of chunks; the only user-space copy on the receive path is of
the few body bytes (at most :data:`SCRATCH_BYTES`) that happened to arrive in the same
``recv`` as the frame's header.

On the send side the array's own memory goes to ``transport.write_zc`` and ``await
chan.send(arr)`` returns once the kernel no longer references it, so the caller may reuse or
mutate the array immediately afterwards. Non-contiguous arrays are made C-contiguous once
(one copy) before sending.

The wire format (a 20-byte prefix, a JSON header, padding, the raw body) is described in
:mod:`aiozc.tensors.frames`. Bodies of at least ``align_bodies_from`` bytes (64 KiB) start at a
stream offset that is a multiple of 4096, so that with ``zc_receive`` (and an MSS that is a
multiple of 4096) they arrive on page starts and become read-only arrays over the mapped pages.

``dtype`` is numpy's ``dtype.str`` (e.g. ``"<f4"``, ``"|b1"``, ``">c16"``, ``"<M8[ns]"``) or,
for structured dtypes, ``dtype.descr`` as nested JSON lists. Both name the byte order of every
field; ``byteorder`` repeats the array-level one (``|`` for structured and byte-sized types)
and must agree. The frame carries the sender's byte order, so the receiver gets back exactly
the sender's dtype (``arr.astype(arr.dtype.newbyteorder("="))`` normalises it). The
receiver never evaluates or unpickles anything: a scalar descr must match a strict regular
expression before ``np.dtype`` sees it, structured descrs are rebuilt field by field with
depth, field-count and size limits, and object dtypes are refused on both ends. Before any
allocation the receiver checks ``header_len <= max_header_bytes``, ``body_nbytes <=
max_frame_bytes`` and ``body_nbytes == prod(shape) * itemsize``; a malformed frame raises
:class:`FrameError` from ``recv`` and aborts the connection (a byte stream cannot resync).

``tag`` names a torch dtype that numpy lacks (``bfloat16``, ``float8_*``, ``complex32``): the
body is the raw elements, the numpy dtype is an unsigned integer of the same width, and a
receiver that asks for torch (``recv(as_torch=True)`` or ``out=`` a tensor) gets the tensor
back in its torch dtype. A numpy-only receiver gets the raw bits as ``uint16`` etc.

Receive policy: a frame whose header arrives while a ``recv`` is waiting goes straight into
that call's ``out`` (or a new array). Small frames that arrive while nobody waits are read
ahead into fresh arrays, up to ``readahead_bytes`` in total; a larger frame pauses reading
until the next ``recv`` says where it goes, so ``out=`` is filled in place. ``recv(out=...)``
on a frame that was already read ahead copies it into ``out`` (the only case with a full copy).

Backpressure: ``send`` first waits while the transport has paused writing (bytes queued in
user space over the high-water mark), then waits for the frame's completion, so a slow
receiver holds the sender back and one ``send`` pins at most its own array. ``send_nowait``
pipelines frames; pair it with ``await chan.drain()`` (pinned bytes are bounded by the
transport's ``max_pinned_bytes``, past which it copies). Because the completion needs the peer to take the
bytes in, a task that awaits ``send`` of a large array must not be the one that would
``recv`` on the other end (as with blocking sockets, two peers that both send large frames
before either receives can wait on each other: receive in another task).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .aligned import aligned_empty
from .dtypes import decode_dtype, encode_dtype
from .errors import ChannelBroken, ChannelClosed, FrameError, FrameTooLarge, IncompleteFrame, TensorChannelError
from .frames import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_READAHEAD_BYTES,
    MAGIC,
    PREFIX_SIZE,
    SCRATCH_BYTES,
    VERSION,
    ArrayLike,
    ChannelOptions,
    Frame,
    FrameHeader,
    byte_view,
    encode_header,
    header_len_of,
    parse_header,
    parse_prefix,
)
from .interop import _Destination, as_sendable
from .receive import _TensorProtocol

__all__ = [
    "Channel",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelOptions",
    "Frame",
    "FrameError",
    "FrameTooLarge",
    "IncompleteFrame",
    "TensorChannelError",
    "aligned_empty",
    "connect",
    "decode_dtype",
    "encode_dtype",
    "serve",
]

log = logging.getLogger(__name__)

def _write_zc(transport: Any, data: memoryview) -> asyncio.Future[Any]:
    """transport.write_zc, or a plain write on transports without it (they copy what they keep)."""
    write_zc = getattr(transport, "write_zc", None)
    if write_zc is not None:
        return write_zc(data)
    transport.write(data)
    return _done_future(len(data))


def _done_future(nbytes: int) -> asyncio.Future[Any]:
    from aiozc.completions import Completion  # noqa: PLC0415 - keeps this module light

    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(Completion(nbytes=nbytes, zerocopy=False))
    return future


async def _await_release(transport: Any, future: asyncio.Future[Any]) -> Any:
    """The write's Completion; on cancellation, abort first if the array is still in use.

    The rest of a frame cut short cannot be taken back: the transport would go on sending it
    from the caller's array, which a caller told "cancelled" may already be overwriting, so the
    peer would get a frame of mixed old and new bytes. aiozc.web follows the same rule.
    """
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if not future.done():
            transport.abort()  # fails the pending write at once (and releases the array)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(future), 30.0)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller gets
        raise


# --------------------------------------------------------------------------------------------
# The public channel


class Channel:
    """A bidirectional stream of arrays over one connection. Create with connect() or serve()."""

    def __init__(self, protocol: _TensorProtocol) -> None:
        self._protocol = protocol
        self._sent = 0  # stream offset of the next frame: where padding aligns bodies from

    @property
    def transport(self) -> Any:
        return self._protocol.transport

    @property
    def options(self) -> ChannelOptions:
        return self._protocol.options

    # -- sending

    def send_nowait(self, array: ArrayLike, *, name: str | None = None, metadata: Any = None) -> asyncio.Future[Any]:
        """Queue one frame; the future resolves (to an aiozc Completion) once the kernel released
        the array's memory. Don't modify the array before then. Doesn't wait for flow control:
        call ``await chan.drain()`` between bursts."""
        data, tag = as_sendable(array)
        if data.nbytes > self.options.max_frame_bytes:
            raise FrameTooLarge(f"array of {data.nbytes} bytes exceeds max_frame_bytes={self.options.max_frame_bytes}")
        options = self.options
        header = encode_header(data, name=name, metadata=metadata, tag=tag, max_frame_bytes=options.max_frame_bytes,
                               stream_offset=self._sent, align_from=options.align_bodies_from)
        header_len = header_len_of(header)
        if header_len > options.max_header_bytes:
            raise FrameTooLarge(f"frame header of {header_len} bytes exceeds max_header_bytes")
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ChannelClosed("cannot send on a closed channel")
        transport.write(header)
        self._sent += len(header) + data.nbytes
        if data.nbytes == 0:
            return _done_future(0)
        return _write_zc(transport, byte_view(data))

    async def send(self, array: ArrayLike, *, name: str | None = None, metadata: Any = None) -> Any:
        """Send one frame and return once the kernel released the array (it may then be reused).

        Waits first while the transport is over its write high-water mark, so a slow receiver
        holds the sender back. Returns the write's Completion.

        Cancelled before the kernel released the array, it aborts the connection (the peer gets
        an error, never a frame of mixed old and new bytes), and the cancellation reaches the
        caller only once the transport has let go of the array.
        """
        await self.drain()
        return await _await_release(self.transport, self.send_nowait(array, name=name, metadata=metadata))

    async def drain(self) -> None:
        """Wait while the transport has paused writing (queued bytes over the high-water mark)."""
        await self._protocol.drain()

    # -- receiving

    async def recv_frame(self, out: ArrayLike | None = None, *, as_torch: bool = False) -> Frame:
        """The next frame, its body received into ``out`` if given (same shape and dtype).

        Raises ChannelClosed at a clean end, ChannelBroken if the connection failed instead
        (reset, aborted; IncompleteFrame, a subclass, if that cut a frame short), FrameError
        for a malformed frame (the connection is then aborted), ValueError if ``out`` doesn't
        match (the frame stays queued for the next call). Frames that arrived before the end
        are delivered first.
        """
        return await self._protocol.add_waiter(_Destination.of(out, as_torch))

    async def recv(self, out: ArrayLike | None = None, *, as_torch: bool = False) -> ArrayLike:
        """The next array (``out`` itself when given; a torch tensor if asked for or out is one)."""
        return (await self.recv_frame(out, as_torch=as_torch)).array

    def __aiter__(self) -> AsyncIterator[ArrayLike]:
        return self._arrays()

    async def _arrays(self) -> AsyncIterator[ArrayLike]:
        while True:
            try:
                yield await self.recv()
            except ChannelClosed:
                return

    async def frames(self, *, as_torch: bool = False) -> AsyncIterator[Frame]:
        """Iterate over frames (array + name + metadata) until the channel closes cleanly."""
        while True:
            try:
                yield await self.recv_frame(as_torch=as_torch)
            except ChannelClosed:
                return

    # -- lifetime

    def close(self) -> None:
        """Close after queued writes are flushed; pending sends still complete."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._protocol._closed)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default) if self.transport else default


# --------------------------------------------------------------------------------------------
# connect / serve


def _core() -> Any:
    import aiozc  # noqa: PLC0415 - the core may be imported lazily by the package

    return aiozc


async def connect(host: str, port: int, **options: Any) -> Channel:
    """Open a tensor channel to ``host:port``. Channel options (see ChannelOptions) are taken
    out of ``options``; the rest (zc_threshold, max_pinned_bytes, sock...) go to
    ``aiozc.create_connection``."""
    channel_options, transport_options = ChannelOptions.split(dict(options))
    _, protocol = await _core().create_connection(
        lambda: _TensorProtocol(channel_options), host, port, **transport_options
    )
    return protocol.channel


Handler = Callable[[Channel], Awaitable[None]]


async def serve(handler: Handler, host: str | None, port: int, **options: Any) -> Any:
    """Start a server running ``await handler(chan)`` for each connection; returns the Server.

    The channel is closed when the handler returns; a handler's exception is logged.
    """
    channel_options, transport_options = ChannelOptions.split(dict(options))
    tasks: set[asyncio.Task[None]] = set()

    def on_connect(chan: Channel) -> None:
        task = asyncio.get_running_loop().create_task(_run_handler(handler, chan))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await _core().create_server(
        lambda: _TensorProtocol(channel_options, on_connect), host, port, **transport_options
    )
    return server


async def _run_handler(handler: Handler, chan: Channel) -> None:
    try:
        await handler(chan)
    except (ChannelClosed, IncompleteFrame, ConnectionError) as exc:
        log.debug("tensor handler ended: %r", exc)
    except Exception:
        log.exception("tensor channel handler failed")
    finally:
        chan.close()
