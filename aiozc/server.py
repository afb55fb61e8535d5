"""``create_connection`` and ``create_server`` with asyncio's signatures, for zero-copy transports."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .base import TransportOptions, made
from .transport import ZeroCopyTransport

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
P = TypeVar("P", bound=asyncio.BaseProtocol)


def _reject_ssl(ssl: Any) -> None:
    if ssl:
        raise ValueError(
            "aiozc does not support TLS: kernel TLS offload would be needed to send encrypted "
            "data zero-copy; use asyncio's own transports for TLS connections"
        )


def _set_nodelay(sock: socket.socket) -> None:
    # asyncio sets TCP_NODELAY on its TCP transports; match it so latency is comparable.
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _make_transport(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol_factory: Callable[[], P],
    options: TransportOptions,
) -> tuple[ZeroCopyTransport, P]:
    sock.setblocking(False)
    _set_nodelay(sock)
    protocol = protocol_factory()
    waiter: asyncio.Future[None] = loop.create_future()
    transport = ZeroCopyTransport(loop, sock, protocol, options, waiter=waiter)
    await made(transport, waiter)
    return transport, protocol


async def _connect_any(
    loop: asyncio.AbstractEventLoop, host: str | None, port: int | str | None, local_addr: Any
) -> socket.socket:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}, {port!r}) returned nothing")
    errors: list[OSError] = []
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            if local_addr is not None:
                sock.bind(local_addr)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()
            raise
    if len(errors) == 1:
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(map(str, errors))}")


async def create_connection(
    protocol_factory: Callable[[], P],
    host: str | None = None,
    port: int | str | None = None,
    *,
    sock: socket.socket | None = None,
    ssl: Any = None,
    local_addr: Any = None,
    **options: Any,
) -> tuple[ZeroCopyTransport, P]:
    """Like :meth:`asyncio.loop.create_connection`, returning a :class:`ZeroCopyTransport`.

    ``options`` are transport options (``zc_threshold``, ``close_timeout``, ``engine``...).
    """
    _reject_ssl(ssl)
    opts = TransportOptions.from_kwargs(options)
    loop = asyncio.get_running_loop()
    if sock is None:
        if host is None and port is None:
            raise ValueError("host and port, or sock, must be given")
        sock = await _connect_any(loop, host, port, local_addr)
    elif host is not None or port is not None:
        raise ValueError("host/port and sock can not be specified at the same time")
    try:
        return await _make_transport(loop, sock, protocol_factory, opts)
    except BaseException:
        sock.close()
        raise


class Server(asyncio.AbstractServer):
    """asyncio.AbstractServer for listening sockets whose connections are zero-copy transports."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        protocol_factory: ProtocolFactory,
        options: TransportOptions,
        backlog: int,
    ) -> None:
        self._loop = loop
        self._sockets: list[socket.socket] | None = sockets
        self._protocol_factory = protocol_factory
        self._options = options
        self._backlog = backlog
        self._serving = False
        self._serving_forever: asyncio.Future[None] | None = None
        self._transports: set[ZeroCopyTransport] = set()
        self._closed = loop.create_future()

    # -- bookkeeping used by transports ------------------------------------------------------

    def _attach(self, transport: ZeroCopyTransport) -> None:
        self._transports.add(transport)

    def _detach(self, transport: ZeroCopyTransport) -> None:
        self._transports.discard(transport)
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        if self._sockets is None and not self._transports and not self._closed.done():
            self._closed.set_result(None)

    # -- AbstractServer ----------------------------------------------------------------------

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets or ())

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)

    def _start_serving(self) -> None:
        if self._serving or self._sockets is None:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._loop.add_reader(sock.fileno(), self._accept_ready, sock)

    def close(self) -> None:
        """Stop listening; established connections stay open (asyncio's semantics)."""
        sockets, self._sockets = self._sockets, None
        if sockets is None:
            return
        for sock in sockets:
            if self._serving:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._serving = False
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
        self._maybe_closed()

    def close_clients(self) -> None:
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection it accepted is gone."""
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # -- accepting ---------------------------------------------------------------------------

    def _accept_ready(self, listener: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._loop.call_exception_handler(
                    {"message": "aiozc server accept() failed", "exception": exc, "socket": listener}
                )
                return
            self._accept_connection(conn)

    def _accept_connection(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            _set_nodelay(conn)
            protocol = self._protocol_factory()
            ZeroCopyTransport(self._loop, conn, protocol, self._options, server=self)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            self._loop.call_exception_handler(
                {"message": "aiozc server failed to set up a connection", "exception": exc}
            )

    def __repr__(self) -> str:
        return f"<aiozc.Server sockets={self.sockets!r}>"


def _listening_sockets(
    infos: Iterable[tuple[Any, ...]], reuse_address: bool | None, reuse_port: bool | None
) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, type_, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            if reuse_address is None or reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def create_server(
    protocol_factory: ProtocolFactory,
    host: str | Iterable[str] | None = None,
    port: int | str | None = None,
    *,
    sock: socket.socket | None = None,
    backlog: int = 100,
    ssl: Any = None,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    start_serving: bool = True,
    **options: Any,
) -> Server:
    """Like :meth:`asyncio.loop.create_server`; every accepted connection is a ZeroCopyTransport."""
    _reject_ssl(ssl)
    opts = TransportOptions.from_kwargs(options)
    loop = asyncio.get_running_loop()
    if sock is not None:
        if host is not None or port is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        sock.setblocking(False)
        sockets = [sock]
    else:
        hosts = [host] if host is None or isinstance(host, str) else list(host)
        infos: list[tuple[Any, ...]] = []
        for h in hosts:
            infos += await loop.getaddrinfo(
                h or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}, {port!r}) returned nothing")
        sockets = _listening_sockets(infos, reuse_address, reuse_port)
    server = Server(loop, sockets, protocol_factory, opts, backlog)
    if start_serving:
        server._start_serving()
        await asyncio.sleep(0)
    return server
