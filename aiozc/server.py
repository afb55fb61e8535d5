"""``create_server`` with asyncio's signature and errors, for zero-copy transports.

The client side (``create_connection``, ``connect_accepted_socket``) is in :mod:`aiozc.connect`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from asyncio import trsock
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from . import tls
from ._sys.kernel import raw_family, raw_type
from .base import TransportOptions, logger
from .connect import (
    check_stream_socket,
    connect_accepted_socket,
    create_connection,
    numeric_info,
    set_nodelay,
)
from .transport import ZeroCopyTransport

__all__ = ["Server", "connect_accepted_socket", "create_connection", "create_server"]

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
P = TypeVar("P", bound=asyncio.BaseProtocol)

# accept() errors meaning "out of descriptors or memory". Linux keeps reporting the listener
# readable while they last, so retrying at once spins the loop; asyncio removes the reader and
# retries after constants.ACCEPT_RETRY_DELAY (1 s). uvloop (libuv) backs off too.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY_DELAY = 1.0


class Server(asyncio.AbstractServer):
    """asyncio.AbstractServer for listening sockets whose connections are zero-copy transports."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        protocol_factory: ProtocolFactory,
        options: TransportOptions,
        backlog: int,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
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
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        # Out-of-resources back-off: listener fd -> the timer that re-adds its reader.
        self._retry_timers: dict[int, asyncio.TimerHandle] = {}
        self._out_of_resources_logged = False
        self.accept_retry_delay = ACCEPT_RETRY_DELAY

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
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        # asyncio hands out TransportSocket wrappers: no accept()/recv() behind the server's back.
        return tuple(trsock.TransportSocket(sock) for sock in self._sockets or ())

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
            timer = self._retry_timers.pop(sock.fileno(), None)
            if timer is not None:
                timer.cancel()
            elif self._serving:
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
        # socket.accept() without its Python frame and its two IntEnum conversions of the
        # listener's family and type (per connection; same socket made: the listener is
        # non-blocking, so accept()'s setblocking(True) branch never runs).
        accept = listener._accept  # type: ignore[attr-defined]  # (socket.accept is this plus what follows)
        family, kind, proto = raw_family(listener), raw_type(listener), listener.proto
        for _ in range(self._backlog):
            try:
                fd, _addr = accept()
                conn = socket.socket(family, kind, proto, fileno=fd)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._back_off(listener, exc)
                else:
                    self._loop.call_exception_handler(
                        {"message": "aiozc server accept() failed", "exception": exc,
                         "socket": trsock.TransportSocket(listener)}
                    )
                return
            if self._out_of_resources_logged:
                self._out_of_resources_logged = False
                logger.info("%r: accepting again", self)
            self._accept_connection(conn, _addr)

    def _back_off(self, listener: socket.socket, exc: OSError) -> None:
        """Stop watching ``listener`` and try again later; report the first failure only."""
        if not self._out_of_resources_logged:
            self._out_of_resources_logged = True
            self._loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": exc,
                 "socket": trsock.TransportSocket(listener),
                 "retry_delay": self.accept_retry_delay}
            )
        fd = listener.fileno()
        self._loop.remove_reader(fd)
        self._retry_timers[fd] = self._loop.call_later(
            self.accept_retry_delay, self._retry_accept, listener
        )

    def _retry_accept(self, listener: socket.socket) -> None:
        self._retry_timers.pop(listener.fileno(), None)
        if self._serving and self._sockets is not None:
            self._loop.add_reader(listener.fileno(), self._accept_ready, listener)

    def _accept_connection(self, conn: socket.socket, peername: Any = None) -> None:
        try:
            conn.setblocking(False)
            set_nodelay(conn)
            protocol = self._protocol_factory()
            if self._ssl:
                self._accept_tls(conn, protocol)
            else:
                # The peer accept() returned, as asyncio's server passes it: no getpeername.
                extra = None if peername is None else {"peername": peername}
                ZeroCopyTransport(self._loop, conn, protocol, self._options, extra=extra, server=self)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            self._loop.call_exception_handler(
                {"message": "aiozc server failed to set up a connection", "exception": exc}
            )

    def _accept_tls(self, conn: socket.socket, app_protocol: asyncio.BaseProtocol) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        ssl_protocol = tls.wrap(
            self._loop, app_protocol, self._ssl, waiter, server_side=True, server_hostname=None,
            handshake_timeout=self._ssl_handshake_timeout,
            shutdown_timeout=self._ssl_shutdown_timeout,
        )
        transport = ZeroCopyTransport(self._loop, conn, ssl_protocol, self._options, server=self)

        def handshake_done(fut: asyncio.Future[None]) -> None:
            # The SSL protocol already reported and closed on failure (asyncio logs the
            # failure only in debug mode); retrieve it so no "never retrieved" warning follows.
            if not fut.cancelled() and fut.exception() is not None:
                transport.close()

        waiter.add_done_callback(handshake_done)

    def __repr__(self) -> str:
        return f"<aiozc.Server sockets={self.sockets!r}>"


def _hosts(host: str | Iterable[str] | None) -> list[str | None]:
    if host == "":
        return [None]
    if host is None or isinstance(host, str) or not isinstance(host, Iterable):
        return [host]
    return list(host)


async def _server_infos(
    loop: asyncio.AbstractEventLoop, host: str | None, port: Any, family: int, flags: int
) -> list[tuple[Any, ...]]:
    info = numeric_info(host, port, family)
    if info is not None:  # no resolver thread (connect.numeric_info)
        return [info]
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM, flags=flags)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned empty list")
    return list(infos)


def _bind(sock: socket.socket, address: Any) -> bool:
    """Bind, with asyncio's error message; False if the address family is not enabled."""
    try:
        sock.bind(address)
    except OSError as err:
        if err.errno == errno.EADDRNOTAVAIL:
            return False  # asyncio: assume the family is not enabled (bpo-30945)
        reason = (err.strerror or "").lower()
        msg = f"error while attempting to bind on address {address!r}: {reason}"
        raise OSError(err.errno, msg) from None
    return True


def _listening_sockets(
    infos: list[tuple[Any, ...]], reuse_address: bool | None, reuse_port: bool | None
) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, type_, proto)
            except OSError:
                continue  # asyncio: a family/type/protocol combination this host lacks
            if reuse_address is None or reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sockets.append(sock)
            if not _bind(sock, address):
                sockets.pop().close()
        if not sockets:
            raise OSError(f"could not bind on any address out of {[i[4] for i in infos]!r}")
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
    family: int = socket.AF_UNSPEC,
    flags: int = socket.AI_PASSIVE,
    sock: socket.socket | None = None,
    backlog: int = 100,
    ssl: Any = None,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
    start_serving: bool = True,
    **options: Any,
) -> Server:
    """Like :meth:`asyncio.loop.create_server`; every accepted connection is a ZeroCopyTransport
    (with ``ssl``, asyncio's SSL transport over one)."""
    tls.check_server_arguments(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
    tls.check_not_ssl_socket(ssl, sock)
    opts = TransportOptions.from_kwargs(options)
    loop = asyncio.get_running_loop()
    if host is not None or port is not None:
        if sock is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        infos: list[tuple[Any, ...]] = []
        for h in _hosts(host):
            infos += await _server_infos(loop, h, port, family, flags)
        sockets = _listening_sockets(infos, reuse_address, reuse_port)
    else:
        if sock is None:
            raise ValueError("Neither host/port nor sock were specified")
        check_stream_socket(sock)
        sockets = [sock]
    for s in sockets:
        s.setblocking(False)
    server = Server(
        loop, sockets, protocol_factory, opts, backlog, ssl, ssl_handshake_timeout,
        ssl_shutdown_timeout,
    )
    if start_serving:
        server._start_serving()
        await asyncio.sleep(0)  # let the add_reader calls go through, as asyncio does
    return server
