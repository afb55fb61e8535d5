"""aiohttp on aiozc transports: a site, ``run_app``, zero-copy bodies and file responses.

Three things stand between an unchanged aiohttp app and zero-copy sends, and this module handles
each one per site (nothing global is patched):

* Bodies. On Python < 3.12.9 aiohttp's ``StreamWriter`` joins the headers and the body into one
  new ``bytes`` before writing (``SKIP_WRITELINES``, CVE-2024-12254 in asyncio's own
  ``writelines``). That copy alone costs as much as the send. The site's connections get a writer
  that hands the chunks to aiozc's ``writelines``, which has no such bug, so the user's body object
  reaches the transport untouched and the transport can send it without copying (webwriter.py).
* Buffers (numpy arrays, mutable memory). The asyncio contract lets a caller reuse a buffer as
  soon as ``write`` returns, so the transport copies mutable inputs. :func:`write_buffer` and
  :func:`buffer_response` opt out of that contract explicitly: they send through ``write_zc`` and
  await the kernel's release, so the buffer is never pinned past the ``await``.
* Files. ``web.FileResponse`` calls ``loop.sendfile(transport, ...)``. The site installs, on its
  own loop object only, a ``sendfile`` that sends an aiozc transport's file with the transport's
  ``sendfile`` (``os.sendfile`` in order with the queued writes, zero-copy from the page cache) and
  passes every other transport to the loop's own method. A transport without ``sendfile`` gets
  ``NotImplementedError``, the one error aiohttp turns into its chunked-read fallback; asyncio's
  own fallback would instead reuse one 16 KiB bytearray for every chunk.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import fields
from typing import IO, Any, Optional, Union

from aiohttp import web, web_protocol
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from aiohttp.payload import Payload
from aiohttp.web_log import AccessLogger
from aiohttp.web_runner import BaseRunner

import aiozc
from aiozc.webwriter import (
    BufferLike,
    ClientConnectionResetError,
    ZeroCopyPayloadWriter,
    _handler_class,
    _wrap_request_factory,
    is_zerocopy_transport,
)

__all__ = [
    "ZeroCopySite",
    "ZeroCopyPayloadWriter",
    "BufferPayload",
    "buffer_response",
    "write_buffer",
    "install_sendfile",
    "is_zerocopy_transport",
    "run_app",
]

log = logging.getLogger("aiozc.web")

# --------------------------------------------------------------------------------------------
# Buffers: explicit zero-copy with a completion the caller awaits


async def _await_release(transport: asyncio.Transport, fut: asyncio.Future[Any]) -> Any:
    """Wait until the kernel released the buffer, even if our task is cancelled meanwhile.

    Returning earlier would hand a pinned buffer back to a caller that may overwrite it. On
    cancellation the connection is aborted (the response can't complete anyway), which makes the
    transport resolve the future promptly, and only then is the cancellation passed on.
    """
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if fut.done():
            raise
        transport.abort()
        with suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(fut), 30.0)
        raise


def _flat_view(buf: BufferLike) -> memoryview:
    view = memoryview(buf)
    if not view.c_contiguous:
        raise ValueError("zero-copy buffers must be C-contiguous (use numpy.ascontiguousarray)")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


async def _write_view(writer: AbstractStreamWriter, view: memoryview) -> Optional[aiozc.Completion]:
    """Send ``view`` as (part of) the body through write_zc and wait for its release.

    Returns the transport's Completion (did the kernel send from ``view`` or copy it), or None
    where nothing went through write_zc (stock transport, compression, empty view).
    """
    transport = getattr(writer, "transport", None)
    if (
        not isinstance(writer, StreamWriter)
        or not is_zerocopy_transport(transport)
        or writer._compress is not None
    ):
        # Stock transports and compressed bodies copy under the asyncio contract.
        await writer.write(view)
        return None
    if writer.length is not None:  # Content-Length clipping, as StreamWriter.write does it
        view = view[: writer.length]
        writer.length -= view.nbytes
    if not view.nbytes:
        return None
    assert transport is not None
    if transport.is_closing():
        raise ClientConnectionResetError("Cannot write to closing transport")
    send_headers = getattr(writer, "send_headers", None)  # aiohttp < 3.12 sent them at once
    if send_headers is not None:
        send_headers()  # flushes buffered headers ahead of the body, in order
    if writer.chunked:
        transport.write(f"{view.nbytes:x}\r\n".encode("ascii"))
    fut = transport.write_zc(view)  # type: ignore[attr-defined]
    if writer.chunked:
        transport.write(b"\r\n")
    writer.output_size += view.nbytes
    if writer.on_body_write is not None:
        writer.on_body_write(view.nbytes, writer.output_size)
    completion: aiozc.Completion = await _await_release(transport, fut)
    return completion


async def write_buffer(response: web.StreamResponse, buf: BufferLike) -> Optional[aiozc.Completion]:
    """``await response.write(buf)`` without the copy: returns once the kernel released ``buf``.

    The response must be prepared. ``buf`` is anything with the C-contiguous buffer protocol
    (bytes, bytearray, memoryview, numpy arrays); it must not change until this returns.
    Returns the :class:`aiozc.Completion` (``zerocopy`` says whether the kernel really sent from
    ``buf``), or None on a transport that is not aiozc's (then ``buf`` was copied).
    """
    writer = response._payload_writer
    if writer is None:
        raise RuntimeError("Cannot call write_buffer() before prepare()")
    if response._eof_sent:
        raise RuntimeError("Cannot call write_buffer() after write_eof()")
    return await _write_view(writer, _flat_view(buf))


class BufferPayload(Payload):
    """A body payload sent with ``write_zc``; writing it returns when the kernel released it."""

    def __init__(self, value: BufferLike, *args: Any, **kwargs: Any) -> None:
        view = _flat_view(value)
        kwargs.setdefault("content_type", "application/octet-stream")
        super().__init__(view, *args, **kwargs)
        self._size = view.nbytes

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return bytes(self._value)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await _write_view(writer, self._value)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: Optional[int]
    ) -> None:
        view = self._value if content_length is None else self._value[:content_length]
        await _write_view(writer, view)


def buffer_response(
    buf: BufferLike,
    *,
    status: int = 200,
    reason: Optional[str] = None,
    headers: Optional[Mapping[str, str]] = None,
    content_type: str = "application/octet-stream",
) -> web.Response:
    """A ``web.Response`` whose body is ``buf``, sent zero-copy on aiozc transports.

    aiohttp writes a returned response after the handler is done, so ``buf`` must not change
    until then. To know when it is free again, send it inside the handler: after
    ``await resp.prepare(request); await resp.write_eof()`` the kernel has released ``buf``
    (the body write awaits the completion). On other transports the body is copied.
    """
    payload = BufferPayload(buf, content_type=content_type)
    return web.Response(body=payload, status=status, reason=reason, headers=headers)


# --------------------------------------------------------------------------------------------
# Files: loop.sendfile -> transport.sendfile, on the site's loop object only


class _SendfileHook:
    """Stands in for ``loop.sendfile`` on one loop object; other transports pass straight on."""

    def __init__(self, original: Callable[..., Awaitable[int]]) -> None:
        self.original = original

    async def __call__(
        self,
        transport: asyncio.WriteTransport,
        file: IO[bytes],
        offset: int = 0,
        count: Optional[int] = None,
        *,
        fallback: bool = True,
    ) -> int:
        if not is_zerocopy_transport(transport):
            return await self.original(transport, file, offset, count, fallback=fallback)
        native = getattr(transport, "sendfile", None)
        if native is None:
            # aiohttp falls back to reading fresh bytes chunks for exactly this error.
            raise NotImplementedError("this aiozc transport has no sendfile")
        sent: int = await native(file, offset, count)
        if sent:
            file.seek(offset + sent)  # loop.sendfile's contract: position after the last byte
        return sent


def install_sendfile(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop.sendfile`` use aiozc transports' own sendfile. Idempotent, this loop only.

    Set as an attribute of the loop object (asyncio's and uvloop's loops both take one), so it
    lives and dies with that loop and no class or module is patched.

    Looked up with getattr, never ``vars(loop)``: on CPython 3.11 reading an instance's
    ``__dict__`` turns its inline attribute values into a dict for good, and every method call
    on asyncio's (pure Python) loop then misses its specialisation: callgrind, an
    ``await asyncio.sleep(0)`` cycle 20.3k -> 24.1k user instructions.
    """
    if isinstance(getattr(loop, "sendfile", None), _SendfileHook):
        return
    loop.sendfile = _SendfileHook(loop.sendfile)  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------
# The site and run_app


class ZeroCopySite(web.BaseSite):
    """``web.TCPSite`` on an aiozc server: ``ZeroCopySite(runner, host, port, **transport_options)``."""

    __slots__ = ("_host", "_port", "_sock", "_bound_port", "_reuse_address", "_reuse_port",
                 "_transport_options")

    def __init__(
        self,
        runner: BaseRunner,
        host: Optional[str] = None,
        port: Optional[int] = None,
        *,
        sock: Optional[socket.socket] = None,
        backlog: int = 128,
        reuse_address: Optional[bool] = None,
        reuse_port: Optional[bool] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        **transport_options: Any,
    ) -> None:
        # With ssl_context, asyncio's TLS layer sits on the aiozc transport: bodies are
        # encrypted (copied) and sent by write(), files by loop.sendfile's read-and-write path.
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = 8080 if port is None and sock is None else port
        self._sock = sock
        self._bound_port: Optional[int] = None
        self._reuse_address = reuse_address
        self._reuse_port = reuse_port
        # A client on this host (a local reverse proxy, a load generator) gets copies from the
        # first response: the kernel copies every zero-copy send delivered locally, and each new
        # connection's probes (4 pinned writes) were 16% of 1 MB responses in a 2 s wrk run.
        self._transport_options = {"local_peer_copy": True, **transport_options}

    @property
    def port(self) -> int:
        """The bound port once started (useful with ``port=0``), else the requested one."""
        if self._bound_port is not None:
            return self._bound_port
        return self._port or 0

    @property
    def name(self) -> str:
        host = self._host or "0.0.0.0"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def server(self) -> Optional[asyncio.AbstractServer]:
        """The aiozc server (``asyncio.AbstractServer``-compatible) once started."""
        return self._server

    def _protocol_factory(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        handler = server()
        # Per connection, not per app: stock sites of the same runner keep aiohttp's writer.
        handler_class = _handler_class()
        if handler_class is not None and type(handler) is web_protocol.RequestHandler:
            try:
                handler.__class__ = handler_class
                return handler
            except TypeError:
                pass
        factory = handler._request_factory
        assert factory is not None  # only cleared when the connection is lost
        handler._request_factory = _wrap_request_factory(factory)
        return handler

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        install_sendfile(loop)
        address: dict[str, Any] = {"sock": self._sock} if self._sock is not None else {}
        self._server = await aiozc.create_server(  # type: ignore[attr-defined]
            self._protocol_factory,
            None if self._sock is not None else self._host,
            None if self._sock is not None else self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl=self._ssl_context,
            **address,
            **self._transport_options,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def _is_transport_option(name: str) -> bool:
    return name.startswith("zc_") or name in {f.name for f in fields(aiozc.TransportOptions)}


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Transport options (``aiozc.TransportOptions`` fields) go to the transport; the rest go to
    ``AppRunner``, as in aiohttp's run_app."""
    transport = {k: v for k, v in kwargs.items() if _is_transport_option(k)}
    runner = {k: v for k, v in kwargs.items() if not _is_transport_option(k)}
    return transport, runner


def _make_sites(
    runner: web.AppRunner,
    host: Union[str, Iterable[str], None],
    port: Optional[int],
    path: Optional[str],
    sock: Optional[socket.socket],
    backlog: int,
    reuse_address: Optional[bool],
    reuse_port: Optional[bool],
    transport_options: dict[str, Any],
) -> list[web.BaseSite]:
    common: dict[str, Any] = dict(
        backlog=backlog, reuse_address=reuse_address, reuse_port=reuse_port
    )
    sites: list[web.BaseSite] = []
    hosts: list[Optional[str]] = [host] if isinstance(host, str) or host is None else list(host)
    if host is not None or (path is None and sock is None) or port is not None:
        for h in hosts:
            sites.append(ZeroCopySite(runner, h, port, **common, **transport_options))
    if path is not None:
        # AF_UNIX has no SO_ZEROCOPY: a Unix socket is served by aiohttp's own site.
        sites.append(web.UnixSite(runner, path, backlog=backlog))
    if sock is not None:
        sites.append(ZeroCopySite(runner, sock=sock, backlog=backlog, **transport_options))
    return sites


async def _run_app(
    app: Union[web.Application, Awaitable[web.Application]],
    *,
    host: Union[str, Iterable[str], None],
    port: Optional[int],
    path: Optional[str],
    sock: Optional[socket.socket],
    print: Optional[Callable[..., None]],
    backlog: int,
    reuse_address: Optional[bool],
    reuse_port: Optional[bool],
    transport_options: dict[str, Any],
    **runner_kwargs: Any,
) -> None:
    if asyncio.iscoroutine(app):
        app = await app
    assert isinstance(app, web.Application)
    runner = web.AppRunner(app, **runner_kwargs)
    await runner.setup()
    try:
        sites = _make_sites(runner, host, port, path, sock, backlog, reuse_address, reuse_port,
                            transport_options)
        for site in sites:
            await site.start()
        if print:
            names = sorted(str(s.name) for s in runner.sites)
            print(
                "======== Running on {} (aiozc zero-copy) ========\n"
                "(Press CTRL+C to quit)".format(", ".join(names))
            )
        while True:  # until cancelled or GracefulExit, as aiohttp does it
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()  # graceful: stop accepting, finish handlers, close connections


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def run_app(
    app: Union[web.Application, Awaitable[web.Application]],
    *,
    host: Union[str, Iterable[str], None] = None,
    port: Optional[int] = None,
    path: Optional[str] = None,
    sock: Optional[socket.socket] = None,
    shutdown_timeout: float = 60.0,
    keepalive_timeout: float = 75.0,
    print: Optional[Callable[..., None]] = print,
    backlog: int = 128,
    access_log_class: type = AccessLogger,
    access_log_format: str = AccessLogger.LOG_FORMAT,
    access_log: Optional[logging.Logger] = logging.getLogger("aiohttp.access"),
    handle_signals: bool = True,
    reuse_address: Optional[bool] = None,
    reuse_port: Optional[bool] = None,
    handler_cancellation: bool = False,
    loop: Optional[asyncio.AbstractEventLoop] = None,
    transport_options: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> None:
    """``aiohttp.web.run_app`` on aiozc transports; same keywords, same graceful shutdown.

    Transport options (``aiozc.TransportOptions``: ``zc_threshold``, ``max_pinned_bytes``, ...)
    come as keywords or as ``transport_options={...}``; every other extra keyword goes to
    ``AppRunner`` as in aiohttp. Pass ``loop=uvloop.new_event_loop()`` to run on uvloop.
    """
    zc_kwargs, runner_kwargs = _split_options(kwargs)
    options = {**(transport_options or {}), **zc_kwargs}
    if loop is None:
        loop = asyncio.new_event_loop()
    main_task = loop.create_task(
        _run_app(
            app,
            host=host,
            port=port,
            path=path,
            sock=sock,
            print=print,
            backlog=backlog,
            reuse_address=reuse_address,
            reuse_port=reuse_port,
            transport_options=options,
            shutdown_timeout=shutdown_timeout,
            keepalive_timeout=keepalive_timeout,
            access_log_class=access_log_class,
            access_log_format=access_log_format,
            access_log=access_log,
            handle_signals=handle_signals,
            handler_cancellation=handler_cancellation,
            **runner_kwargs,
        )
    )
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main_task.done():
                main_task.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main_task)
        finally:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
