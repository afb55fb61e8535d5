"""``loop.sendfile(transport, file)`` for aiozc transports, with asyncio's contract.

asyncio's ``BaseEventLoop.sendfile`` tries ``_sendfile_native`` and falls back to reading the
file. Its native path is the selector loop's private machinery (it unregisters the transport
from the loop's fd table), its fallback takes only its own transport class, and uvloop has no
``loop.sendfile`` at all, so none of them can send an aiozc transport's file. Here the native
path is :meth:`ZeroCopyTransport.sendfile` (``os.sendfile`` from the page cache, in order with
queued writes) and the fallback reads chunks and writes them under the transport's flow
control, as asyncio's does. Checks, errors
and the file position afterwards are asyncio's (CPython's ``test_sendfile`` is the reference):
the position is ``offset`` plus the bytes sent, also after a failure part-way (in the
fallback, as in asyncio's, bytes handed to the transport).
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import base_events, constants
from collections.abc import Iterator
from typing import IO, Any

from .transport import ZeroCopyTransport

# asyncio's fallback reads 16 KiB at a time; larger chunks cost fewer executor round trips.
FALLBACK_CHUNK = 64 * 1024


def check_params(file: Any, offset: Any, count: Any) -> None:
    """asyncio's ``_check_sendfile_params`` (the socket type is always SOCK_STREAM here)."""
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


def _refuse_write(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("unable to write; sendfile is in progress")


@contextlib.contextmanager
def _writes_refused(transport: ZeroCopyTransport) -> Iterator[None]:
    """asyncio's transports refuse write() while loop.sendfile() runs natively (CPython's
    test_sendfile_prevents_bare_write). ``transport.sendfile`` itself orders later writes
    behind the file; loop.sendfile keeps asyncio's contract by shadowing the write methods on
    this one transport object until the file is sent."""
    names = ("write", "writelines", "write_zc")
    for name in names:
        setattr(transport, name, _refuse_write)
    try:
        yield
    finally:
        for name in names:
            vars(transport).pop(name, None)


def _sendfile_bytes(transport: ZeroCopyTransport) -> int:
    return int(transport.stats.extra.get("sendfile_bytes", 0))


async def native(
    transport: ZeroCopyTransport, file: IO[bytes], offset: int, count: int | None
) -> int:
    """Send with the transport's own sendfile; SendfileNotAvailableError if it cannot."""
    check_params(file, offset, count)
    before = _sendfile_bytes(transport)
    sent = 0
    try:
        with _writes_refused(transport):
            sent = await transport.sendfile(file, offset, count)
    except NotImplementedError as exc:
        raise asyncio.SendfileNotAvailableError("not a regular file") from exc
    except BaseException:
        # The transport's counter tells how far a failed sendfile got (segments are sent one
        # after another, so the difference is this call's unless two overlap).
        sent = _sendfile_bytes(transport) - before
        raise
    finally:
        if sent > 0:
            file.seek(offset + sent)
    return sent


class _FlowControl(asyncio.Protocol):
    """Stands in for the application's protocol while the fallback writes: pause_writing and
    resume_writing gate the next chunk, connection_lost fails it. Reading is paused meanwhile
    (asyncio's fallback does the same), and restore() puts everything back."""

    def __init__(self, transport: ZeroCopyTransport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._app = transport.get_protocol()
        self._resume_reading = transport.is_reading()
        self._app_paused = bool(getattr(transport, "_protocol_paused", False))
        self._ready: asyncio.Future[None] | None = None
        if self._app_paused:
            self._ready = self._loop.create_future()
        transport.pause_reading()
        transport.set_protocol(self)

    async def drain(self) -> None:
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._ready is not None:
            await self._ready

    def pause_writing(self) -> None:
        if self._ready is None:
            self._ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        self._ready = None

    def data_received(self, data: bytes) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self) -> bool:
        raise RuntimeError("Invalid state: reading should be paused")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ConnectionError("Connection is closed by peer"))
        self._app.connection_lost(exc)  # type: ignore[arg-type]

    def restore(self) -> None:
        self._transport.set_protocol(self._app)
        if self._resume_reading:
            self._transport.resume_reading()
        if self._ready is not None:
            self._ready.cancel()
        if self._app_paused:
            # The app was paused when we took over; the transport told us, not it, about
            # the resume, so tell it now (asyncio's fallback does this too).
            self._app.resume_writing()  # type: ignore[attr-defined]


async def read_and_send(
    loop: asyncio.AbstractEventLoop,
    transport: ZeroCopyTransport,
    file: IO[bytes],
    offset: int,
    count: int | None,
) -> int:
    """The fallback: read the file in chunks (in the default executor, as asyncio does) and
    ``write()`` them, under the transport's write flow control.

    As in asyncio's fallback, one buffer is read into again and again (``write()`` copies
    what it cannot send at once, so reuse is safe), and a chunk counts as sent when it is
    handed over. The chunks are copied rather than pinned: this path is for files
    ``os.sendfile`` cannot read, and a pinned chunk with a small send buffer waits on
    completions (measured: 64 KiB took 27 s at SO_SNDBUF 4 KiB on loopback, 0.03 s copied).
    """
    if offset:
        file.seek(offset)
    total = 0
    buffer = bytearray(FALLBACK_CHUNK if count is None else min(count, FALLBACK_CHUNK))
    flow = _FlowControl(transport)
    try:
        while True:
            size = len(buffer) if count is None else min(len(buffer), count - total)
            if size <= 0:
                return total
            view = memoryview(buffer)[:size]
            nread = await loop.run_in_executor(None, file.readinto, view)  # type: ignore[attr-defined]
            if not nread:
                return total
            await flow.drain()
            transport.write(view[:nread])
            total += nread
    finally:
        if total > 0 and hasattr(file, "seek"):
            file.seek(offset + total)
        flow.restore()


async def loop_sendfile(
    loop: Any,
    transport: ZeroCopyTransport,
    file: IO[bytes],
    offset: int = 0,
    count: int | None = None,
    *,
    fallback: bool = True,
) -> int:
    """asyncio's ``BaseEventLoop.sendfile`` for an aiozc transport (whose mode is TRY_NATIVE).

    ``loop._sendfile_native`` is looked up on the loop, as asyncio does, so a loop (or a test)
    replacing it changes the native path.
    """
    if transport.is_closing():
        raise RuntimeError("Transport is closing")
    try:
        sent: int = await loop._sendfile_native(transport, file, offset, count)
        return sent
    except asyncio.SendfileNotAvailableError:
        if not fallback:
            raise
    return await read_and_send(loop, transport, file, offset, count)


async def fallback_mode_sendfile(
    loop: Any,
    transport: asyncio.WriteTransport,
    file: IO[bytes],
    offset: int = 0,
    count: int | None = None,
    *,
    fallback: bool = True,
) -> int:
    """``BaseEventLoop.sendfile`` for a loop without one (uvloop): transports that declare
    asyncio's FALLBACK mode go through asyncio's own ``_sendfile_fallback``, which needs only
    ``run_in_executor`` from the loop; any other transport is not supported, as on uvloop."""
    mode = getattr(transport, "_sendfile_compatible", None)
    if mode is not constants._SendfileMode.FALLBACK:
        raise NotImplementedError(f"sendfile is not supported for transport {transport!r}")
    if transport.is_closing():
        raise RuntimeError("Transport is closing")
    if not fallback:
        raise RuntimeError(
            f"fallback is disabled and native sendfile is not supported for transport "
            f"{transport!r}"
        )
    fallback_fn = base_events.BaseEventLoop._sendfile_fallback  # type: ignore[attr-defined]
    sent: int = await fallback_fn(loop, transport, file, offset, count)
    return sent
