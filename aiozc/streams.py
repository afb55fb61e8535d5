"""asyncio streams over zero-copy transports: ``open_connection``, ``start_server``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .completions import Completion
from .server import Server, create_connection, create_server

_DEFAULT_LIMIT = 2**16


class ZeroCopyStreamWriter(asyncio.StreamWriter):
    """asyncio.StreamWriter with :meth:`write_zc`."""

    def write_zc(self, buf: Any) -> asyncio.Future[Completion]:
        """Queue ``buf`` without copying; await the result before reusing ``buf``."""
        return self.transport.write_zc(buf)  # type: ignore[attr-defined,no-any-return]


ClientConnectedCallback = Callable[
    [asyncio.StreamReader, ZeroCopyStreamWriter], Awaitable[None] | None
]


async def open_connection(
    host: str | None = None,
    port: int | str | None = None,
    *,
    limit: int = _DEFAULT_LIMIT,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, ZeroCopyStreamWriter]:
    """Like :func:`asyncio.open_connection`; the writer has ``write_zc``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, host, port, **kwds)
    writer = ZeroCopyStreamWriter(transport, protocol, reader, loop)
    return reader, writer


class _ZeroCopyStreamProtocol(asyncio.StreamReaderProtocol):
    """Hands the client callback a ZeroCopyStreamWriter instead of a plain StreamWriter."""

    def __init__(self, callback: ClientConnectedCallback, limit: int) -> None:
        loop = asyncio.get_running_loop()
        # StreamReaderProtocol only holds the reader weakly unless it runs the callback itself.
        self._zc_reader = asyncio.StreamReader(limit=limit, loop=loop)
        super().__init__(self._zc_reader, loop=loop)
        self._zc_callback = callback

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        reader = self._zc_reader
        writer = ZeroCopyStreamWriter(transport, self, reader, loop)  # type: ignore[arg-type]
        result = self._zc_callback(reader, writer)
        if asyncio.iscoroutine(result):
            task = loop.create_task(result)
            task.add_done_callback(_report_callback_error(loop, transport))


def _report_callback_error(
    loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport
) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            transport.close()
            return
        exc = task.exception()
        if exc is not None:
            loop.call_exception_handler(
                {"message": "Unhandled exception in client_connected_cb", "exception": exc}
            )
            transport.close()

    return done


async def start_server(
    client_connected_cb: ClientConnectedCallback,
    host: str | None = None,
    port: int | str | None = None,
    *,
    limit: int = _DEFAULT_LIMIT,
    **kwds: Any,
) -> Server:
    """Like :func:`asyncio.start_server`; each writer has ``write_zc``."""
    return await create_server(lambda: _ZeroCopyStreamProtocol(client_connected_cb, limit), host, port, **kwds)
