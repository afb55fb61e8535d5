"""An asyncio event loop whose TCP and UDP transports are aiozc's, for libraries left unchanged.

``aiozc.new_event_loop(base="uvloop" | "asyncio")`` is the base loop with six methods replaced:
``create_connection``, ``create_server``, ``connect_accepted_socket``,
``create_datagram_endpoint``, ``sendfile`` and ``start_tls``. Everything else (timers, DNS,
subprocesses, Unix sockets, executors, signal handling) is the base loop's own. aiohttp,
``asyncio.open_connection`` / ``start_server``, websockets... then run over zero-copy
transports, and ``write_zc`` is there for code that wants it (``writer.transport.write_zc``).

Like ``uvloop.run`` / ``uvloop.install``: ``aiozc.run(main())``, ``aiozc.EventLoopPolicy`` and
``aiozc.install()``. Transport options given to any of them (``zc_threshold=...``) become the
loop's defaults; keyword arguments of a call override them.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from . import connect, datagram, sendfile, server, tls
from .base import TransportOptions
from .readiness import Multiplexer
from .transport import ZeroCopyTransport

T = TypeVar("T")
BASES = ("uvloop", "asyncio")
_UNSET: Any = object()


class _AiozcLoopMixin:
    """The methods that make transports; ``_aiozc_options`` are the loop's transport defaults."""

    _aiozc_options: dict[str, Any]

    def _aiozc_init(self, options: dict[str, Any]) -> None:
        self._aiozc_options = dict(options)
        try:
            TransportOptions.from_kwargs(dict(options))  # reject bad options now, not at first use
        except BaseException:
            self.close()  # type: ignore[attr-defined]
            raise

    def _with_defaults(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**self._aiozc_options, **kwargs}

    def _aiozc_transport_of(self, fd: int) -> Any:
        """The aiozc transport whose socket is ``fd``. Those sockets sit in aiozc's private
        epoll, which the base loop cannot see, so its own "used by transport" check misses them."""
        return Multiplexer.handler_for(self, fd)  # type: ignore[arg-type]

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None, **kwargs: Any
    ) -> tuple[asyncio.Transport, Any]:
        return await connect.create_connection(
            protocol_factory, host, port, **self._with_defaults(kwargs)
        )

    async def create_server(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None, **kwargs: Any
    ) -> asyncio.Server:
        return await server.create_server(  # type: ignore[return-value]
            protocol_factory, host, port, **self._with_defaults(kwargs)
        )

    async def connect_accepted_socket(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], sock: socket.socket, **kwargs: Any
    ) -> tuple[asyncio.Transport, Any]:
        return await connect.connect_accepted_socket(
            protocol_factory, sock, **self._with_defaults(kwargs)
        )

    async def create_datagram_endpoint(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], local_addr: Any = None,
        remote_addr: Any = None, **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, Any]:
        # Datagram sockets other than AF_INET/AF_INET6 (AF_UNIX) stay on the base loop: the
        # error queue aiozc relies on is IP's.
        sock = kwargs.get("sock")
        family = kwargs.get("family", 0)
        if (sock is not None and sock.family not in (socket.AF_INET, socket.AF_INET6)) or (
            family not in (0, socket.AF_INET, socket.AF_INET6)
        ):
            return await super().create_datagram_endpoint(  # type: ignore[misc,no-any-return]
                protocol_factory, local_addr, remote_addr, **kwargs
            )
        return await datagram.create_datagram_endpoint(
            protocol_factory, local_addr, remote_addr, **self._with_defaults(kwargs)
        )

    async def sendfile(  # type: ignore[override]
        self, transport: asyncio.WriteTransport, file: Any, offset: int = 0,
        count: int | None = None, *, fallback: bool = True,
    ) -> int:
        if isinstance(transport, ZeroCopyTransport):
            return await sendfile.loop_sendfile(
                self, transport, file, offset, count, fallback=fallback  # type: ignore[arg-type]
            )
        if not isinstance(self, asyncio.BaseEventLoop):
            # uvloop has no loop.sendfile. Transports that declare asyncio's FALLBACK mode
            # (asyncio's TLS transport over an aiozc one) get asyncio's read-and-write path.
            return await sendfile.fallback_mode_sendfile(
                self, transport, file, offset, count, fallback=fallback
            )
        return await super().sendfile(  # type: ignore[misc,no-any-return]
            transport, file, offset, count, fallback=fallback
        )

    async def _sendfile_native(
        self, transport: Any, file: Any, offset: int, count: int | None
    ) -> int:
        if isinstance(transport, ZeroCopyTransport):
            return await sendfile.native(transport, file, offset, count)
        return await super()._sendfile_native(  # type: ignore[misc,no-any-return]
            transport, file, offset, count
        )

    async def start_tls(  # type: ignore[override]
        self, transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol, sslcontext: Any,
        **kwargs: Any,
    ) -> asyncio.Transport:
        if tls.is_aiozc_transport(transport):
            return await tls.start_tls(transport, protocol, sslcontext, **kwargs)
        return await super().start_tls(  # type: ignore[misc,no-any-return]
            transport, protocol, sslcontext, **kwargs
        )


def _fileobj_fd(fileobj: Any) -> int | None:
    """The fd of an int or an object with fileno(), None where the loop itself must refuse it."""
    if isinstance(fileobj, int):
        return fileobj
    try:
        return int(fileobj.fileno())
    except (AttributeError, TypeError, ValueError, OSError):
        return None


class AiozcSelectorEventLoop(_AiozcLoopMixin, asyncio.SelectorEventLoop):
    """asyncio's selector loop with aiozc transports."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._aiozc_init(options)

    def _ensure_fd_no_transport(self, fd: Any) -> None:
        # asyncio's add_/remove_reader/writer and sock_* methods call this: refuse an aiozc
        # transport's socket as asyncio refuses its own transports' (until close()).
        super()._ensure_fd_no_transport(fd)  # type: ignore[misc]
        fileno = _fileobj_fd(fd)
        transport = None if fileno is None else self._aiozc_transport_of(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")


class AiozcUVLoop(_AiozcLoopMixin, uvloop.Loop):  # type: ignore[misc]
    """uvloop's loop with aiozc transports."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._aiozc_init(options)

    async def create_datagram_endpoint(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], local_addr: Any = None,
        remote_addr: Any = None, *, reuse_address: Any = _UNSET, **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, Any]:
        # uvloop still takes reuse_address (asyncio 3.11 removed it): True is refused, any
        # other value warns, and with sock= it is ignored. Its messages, word for word.
        if reuse_address is not _UNSET and kwargs.get("sock") is None:
            if reuse_address:
                raise ValueError(
                    "Passing `reuse_address=True` is no longer supported, as the usage of "
                    "SO_REUSEPORT in UDP poses a significant security concern."
                )
            warnings.warn(
                "The *reuse_address* parameter has been deprecated as of 0.15.",
                DeprecationWarning, stacklevel=2,
            )
        return await super().create_datagram_endpoint(
            protocol_factory, local_addr, remote_addr, **kwargs
        )

    # uvloop refuses add_/remove_reader/writer on a transport's fd until the transport's handle
    # is closed (after connection_lost); aiozc's sockets are unknown to it, so check them here.
    def _ensure_fd_no_aiozc_transport(self, fileobj: Any) -> None:
        fd = _fileobj_fd(fileobj)
        transport = None if fd is None else self._aiozc_transport_of(fd)
        if transport is not None:
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    # The base is asyncio's or uvloop's loop, whose stubs disagree on these signatures.
    def add_reader(self, fileobj: Any, callback: Callable[..., Any], *args: Any) -> None:  # type: ignore[override]
        self._ensure_fd_no_aiozc_transport(fileobj)
        super().add_reader(fileobj, callback, *args)

    def remove_reader(self, fileobj: Any) -> bool:  # type: ignore[override]
        self._ensure_fd_no_aiozc_transport(fileobj)
        return bool(super().remove_reader(fileobj))  # type: ignore[func-returns-value]

    def add_writer(self, fileobj: Any, callback: Callable[..., Any], *args: Any) -> None:  # type: ignore[override]
        self._ensure_fd_no_aiozc_transport(fileobj)
        super().add_writer(fileobj, callback, *args)

    def remove_writer(self, fileobj: Any) -> bool:  # type: ignore[override]
        self._ensure_fd_no_aiozc_transport(fileobj)
        return bool(super().remove_writer(fileobj))  # type: ignore[func-returns-value]

    # uvloop's sock_recv, sock_recv_into and sock_accept always wait through its own reader
    # registration, which refuses a transport's fd: the same refusal for aiozc's.
    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        self._ensure_fd_no_aiozc_transport(sock)
        return await super().sock_recv(sock, n)  # type: ignore[no-any-return]

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        self._ensure_fd_no_aiozc_transport(sock)
        return await super().sock_recv_into(sock, buf)  # type: ignore[no-any-return]

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        self._ensure_fd_no_aiozc_transport(sock)
        return await super().sock_accept(sock)  # type: ignore[no-any-return]


def new_event_loop(base: str = "uvloop", **options: Any) -> asyncio.AbstractEventLoop:
    """A new aiozc loop on ``base`` ("uvloop" or "asyncio"); ``options`` are transport defaults."""
    if base == "uvloop":
        return AiozcUVLoop(**options)
    if base == "asyncio":
        return AiozcSelectorEventLoop(**options)
    raise ValueError(f"base must be one of {BASES}, not {base!r}")


def loop_factory(base: str = "uvloop", **options: Any) -> Callable[[], asyncio.AbstractEventLoop]:
    """For ``asyncio.Runner(loop_factory=...)`` and pytest-asyncio's loop factories."""
    new_event_loop(base, **options).close()  # check base and options here, not in the runner

    def factory() -> asyncio.AbstractEventLoop:
        return new_event_loop(base, **options)

    return factory


def run(
    main: Coroutine[Any, Any, T], *, base: str = "uvloop", debug: bool | None = None,
    **options: Any,
) -> T:
    """``asyncio.run(main)`` on a new aiozc loop (like ``uvloop.run``)."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory(base, **options), debug=debug) as runner:
            return runner.run(main)
    policy = asyncio.get_event_loop_policy()  # pragma: no cover - Python 3.10
    asyncio.set_event_loop_policy(EventLoopPolicy(base, **options))
    try:
        return asyncio.run(main, debug=bool(debug))
    finally:
        asyncio.set_event_loop_policy(policy)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event-loop policy whose loops are aiozc loops (like ``uvloop.EventLoopPolicy``)."""

    def __init__(self, base: str = "uvloop", **options: Any) -> None:
        super().__init__()
        self._aiozc_factory = loop_factory(base, **options)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return self._aiozc_factory()


def install(base: str = "uvloop", **options: Any) -> None:
    """Make aiozc loops the default (``asyncio.set_event_loop_policy``, like ``uvloop.install``)."""
    asyncio.set_event_loop_policy(EventLoopPolicy(base, **options))
