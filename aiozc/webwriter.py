"""aiohttp response bodies on aiozc transports: the writer each request of a ZeroCopySite gets.

On Python < 3.12.9 aiohttp's ``StreamWriter`` joins the headers and the body into one new
``bytes`` before writing (``SKIP_WRITELINES``, CVE-2024-12254 in asyncio's own ``writelines``).
That copy alone costs as much as the send. :class:`ZeroCopyPayloadWriter` hands the chunks to
aiozc's ``writelines`` instead, which has no such bug, so the user's body object reaches the
transport untouched and the transport can send it without copying. Its ``write_eof`` sends the
common response (buffered headers and a whole bytes body) itself, without aiohttp's three
helper frames per response.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Iterable
from typing import Any, Optional, TypeGuard, Union, cast

from aiohttp import web, web_protocol
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

try:  # aiohttp >= 3.10; written against 3.14, older releases lack these names
    from aiohttp.client_exceptions import ClientConnectionResetError
    from aiohttp.http_writer import MIN_PAYLOAD_FOR_WRITELINES
except ImportError:  # pragma: no cover
    ClientConnectionResetError = ConnectionResetError  # type: ignore[misc,assignment]
    MIN_PAYLOAD_FOR_WRITELINES = 2048

from .policy import DEFAULT_THRESHOLD

BufferLike = Union[bytes, bytearray, memoryview, Any]  # anything with the buffer protocol


def is_zerocopy_transport(transport: Optional[asyncio.BaseTransport]) -> bool:
    """True for aiozc transports (they, and only they, offer per-write completions)."""
    return transport is not None and callable(getattr(transport, "write_zc", None))


# aiohttp >= 3.12 keeps the serialized headers until the first body write (write_eof's
# shortcut below relies on these names; other releases keep aiohttp's own write_eof).
_BUFFERS_HEADERS = all(
    hasattr(StreamWriter, name) for name in ("_send_headers_with_payload", "send_headers", "set_eof")
) and hasattr(web_protocol.RequestHandler, "_drain_helper")

# Below the default zero-copy threshold the transport would copy the slice anyway.
_SMALL_SLICE = DEFAULT_THRESHOLD


def _nbytes(chunk: BufferLike) -> int:
    return chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)


def _immutable_view_of_bytes(chunk: BufferLike) -> TypeGuard[memoryview]:
    """A memoryview over exact ``bytes``: nobody can change it, so pinning it is safe."""
    return isinstance(chunk, memoryview) and type(chunk.obj) is bytes and chunk.c_contiguous


def _swallow_result(fut: asyncio.Future[Any]) -> None:
    # Completions of fire-and-forget sends of immutable data: the outcome already reaches the
    # protocol through connection_lost; retrieving it keeps asyncio from logging it again.
    if not fut.cancelled():
        fut.exception()


def _send_chunk(transport: asyncio.Transport, chunk: BufferLike) -> None:
    """Queue one chunk in order, keeping immutable data zero-copy-eligible."""
    if _immutable_view_of_bytes(chunk):
        view: memoryview = chunk
        obj = cast(bytes, view.obj)  # exact bytes, checked above
        if view.nbytes == len(obj):
            # The whole object: the transport's own exact-bytes rule applies.
            transport.write(obj)
        elif view.nbytes < _SMALL_SLICE:
            transport.write(view)  # copying a few pages beats tracking a completion
        else:
            # A slice of immutable bytes may be pinned without asking the caller to wait.
            transport.write_zc(view).add_done_callback(_swallow_result)  # type: ignore[attr-defined]
        return
    transport.write(chunk)


class ZeroCopyPayloadWriter(StreamWriter):
    """aiohttp's writer, minus the header+body join on old Pythons, for aiozc transports only."""

    def _live_transport(self) -> asyncio.Transport:
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        return transport

    def _write(self, chunk: BufferLike) -> None:
        size = _nbytes(chunk)
        self.buffer_size += size
        self.output_size += size
        transport = self._live_transport()
        if not is_zerocopy_transport(transport):
            transport.write(chunk)
            return
        _send_chunk(transport, chunk)

    def _writelines(self, chunks: Iterable[BufferLike]) -> None:
        # aiohttp hands a tuple of 2-4 items (headers, [chunk size,] body, [trailer]): this runs
        # once per response, so it stays as lean as aiohttp's own (11 B bodies under wrk).
        if type(chunks) is not tuple:
            chunks = tuple(chunks)
        size = 0
        all_bytes = True
        for chunk in chunks:
            if type(chunk) is bytes:
                size += len(chunk)
            else:
                size += _nbytes(chunk)
                all_bytes = False
        self.buffer_size += size
        self.output_size += size
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        if size < MIN_PAYLOAD_FOR_WRITELINES or not is_zerocopy_transport(transport):
            # Small, or not ours: joining is what aiohttp does and is safe everywhere.
            transport.write(b"".join(chunks))
        elif all_bytes:
            # Headers and a bytes body: the transport sends them in one sendmsg when neither
            # goes zero-copy (one segment, like aiohttp's join), each on its own path otherwise.
            transport.writelines(chunks)
        else:
            for chunk in chunks:  # in order, each one on its own zero-copy or copy path
                _send_chunk(transport, chunk)

    if _BUFFERS_HEADERS:

        async def write_eof(self, chunk: bytes = b"") -> None:
            # The common response, buffered headers and a whole bytes body (web.Response of
            # bytes, a prepared StreamResponse's last write): sent here, in aiohttp's order and
            # with its accounting. aiohttp's write_eof goes through _send_headers_with_payload
            # and _writelines and awaits a drain() coroutine, three Python frames per response
            # (callgrind per request, uvloop: 11 B 148.5k -> 144.4k, stock 148.2k).
            headers = self._headers_buf
            if (
                not headers or type(chunk) is not bytes or self._headers_written or self._eof
                or self.chunked or self._compress is not None
                or (chunk and self._on_chunk_sent is not None)
            ):
                await super().write_eof(chunk)
                return
            self._headers_written = True
            self._headers_buf = None
            size = len(headers) + len(chunk)
            self.buffer_size += size
            self.output_size += size
            transport = self._protocol.transport
            if transport is None or transport.is_closing():
                raise ClientConnectionResetError("Cannot write to closing transport")
            if size >= MIN_PAYLOAD_FOR_WRITELINES and chunk and is_zerocopy_transport(transport):
                # As _writelines does it for bytes: one sendmsg when neither goes zero-copy.
                transport.writelines((headers, chunk))
            else:
                transport.write(headers + chunk)  # small, or not ours: aiohttp's join
            if chunk and (notify := self.on_body_write) is not None:
                notify(len(chunk), self.output_size)
            protocol = self._protocol
            if protocol.transport is not None and protocol._paused:  # aiohttp's drain()
                await protocol._drain_helper()
            self._eof = True


def _wrap_request_factory(factory: Callable[..., web.BaseRequest]) -> Callable[..., web.BaseRequest]:
    """Give every request of one connection a :class:`ZeroCopyPayloadWriter` (the fallback
    where :func:`_handler_class` cannot be built)."""

    def make_request(
        message: Any, payload: Any, protocol: Any, writer: AbstractStreamWriter, task: Any
    ) -> web.BaseRequest:
        if type(writer) is StreamWriter:
            try:
                writer.__class__ = ZeroCopyPayloadWriter
            except TypeError:  # an aiohttp whose StreamWriter got __slots__
                writer = ZeroCopyPayloadWriter(protocol, writer.loop)
        return factory(message, payload, protocol, writer, task)

    return make_request


_HANDLER_CLASS: list[Optional[type]] = []  # built once, on first use


def _handler_class() -> Optional[type]:
    """``RequestHandler`` whose ``start`` makes a :class:`ZeroCopyPayloadWriter` per request.

    ``start`` creates each request's writer as ``StreamWriter(self, loop)`` from its module's
    globals; this subclass runs the same code with globals in which that name is our writer, so
    nothing global is patched and no request pays for a second writer. Swapping each writer's
    class afterwards instead cost ~8.4k instructions per request (callgrind: CPython 3.11
    materialises the instance dict on a ``__class__`` change and the writer's attribute reads
    lose their specialisation), 4% of an 11 B response. None where ``start`` is not that shape.
    """
    if not _HANDLER_CLASS:
        _HANDLER_CLASS.append(_build_handler_class())
    return _HANDLER_CLASS[0]


def _build_handler_class() -> Optional[type]:
    base = web_protocol.RequestHandler
    start = base.__dict__.get("start")
    code = getattr(start, "__code__", None)
    if start is None or code is None or code.co_freevars or "StreamWriter" not in code.co_names:
        return None
    if web_protocol.__dict__.get("StreamWriter") is not StreamWriter:
        return None
    namespace = dict(vars(web_protocol), StreamWriter=ZeroCopyPayloadWriter)
    zc_start = types.FunctionType(code, namespace, start.__name__, start.__defaults__)
    zc_start.__kwdefaults__ = start.__kwdefaults__
    zc_start.__qualname__ = "ZeroCopyRequestHandler.start"
    zc_start.__doc__ = start.__doc__
    slots = () if "__slots__" in base.__dict__ else None
    body: dict[str, Any] = {"start": zc_start, "__module__": __name__}
    if slots is not None:
        body["__slots__"] = slots  # same layout: an instance's class may be switched
    return type("ZeroCopyRequestHandler", (base,), body)
