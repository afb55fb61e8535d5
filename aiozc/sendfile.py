"""``loop.sendfile(transport, file)`` for aiozc transports, with asyncio's contract.

asyncio's ``BaseEventLoop.sendfile`` tries ``_sendfile_native`` and falls back to reading the
file. Its native path is the selector loop's private machinery (it unregisters the transport
from the loop's fd table), and uvloop has no ``loop.sendfile`` at all, so neither can send an
aiozc transport's file. Here the native path is :meth:`ZeroCopyTransport.sendfile`
(``os.sendfile`` from the page cache, in order with queued writes) and the fallback reads
chunks and sends them with ``write_zc``, whose futures are the flow control. Checks, errors
and the file position afterwards are asyncio's (CPython's ``test_sendfile`` is the reference):
the position is ``offset`` plus the bytes sent, also after a failure part-way (in the
fallback, as in asyncio's, bytes handed to the transport).
"""

from __future__ import annotations

import asyncio
from asyncio import base_events, constants
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


async def read_and_send(
    loop: asyncio.AbstractEventLoop,
    transport: ZeroCopyTransport,
    file: IO[bytes],
    offset: int,
    count: int | None,
) -> int:
    """The fallback: read the file in chunks (in the default executor, as asyncio does) and
    ``write_zc`` them.

    Each chunk is a fresh ``bytes`` that nothing else holds, so it may go zero-copy. The next
    chunk is handed over once the previous one's future resolved (that is the flow control),
    and, as in asyncio's fallback, a chunk counts as sent when it is handed to the transport.
    """
    if offset:
        file.seek(offset)
    total = 0
    previous: asyncio.Future[Any] | None = None
    try:
        while True:
            size = FALLBACK_CHUNK if count is None else min(FALLBACK_CHUNK, count - total)
            data = await loop.run_in_executor(None, file.read, size) if size > 0 else b""
            if previous is not None:
                await previous
            if not data:
                return total
            previous = transport.write_zc(data)
            total += len(data)
    finally:
        if total > 0 and hasattr(file, "seek"):
            file.seek(offset + total)


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
