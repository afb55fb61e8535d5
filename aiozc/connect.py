"""Client side: ``create_connection`` and ``connect_accepted_socket`` with asyncio's arguments.

Argument checks, their error messages, the address resolution and the order in which
addresses are tried follow ``asyncio.BaseEventLoop.create_connection`` (CPython 3.11), so code
written against asyncio's loop sees the same behaviour; happy eyeballs (RFC 8305) races the
connection attempts with asyncio's own ``staggered_race``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import socket
from asyncio import base_events, staggered
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import uvloop

from . import tls
from ._sys import kernel as _kernel
from .base import TransportOptions, made
from .streamread import on_uvloop
from .transport import ZeroCopyTransport

P = TypeVar("P", bound=asyncio.BaseProtocol)
AddrInfo = tuple[Any, ...]

_INET = frozenset((int(socket.AF_INET), int(socket.AF_INET6)))


def set_nodelay(sock: socket.socket) -> None:
    # asyncio sets TCP_NODELAY on its TCP transports; match it so latency is comparable.
    if _kernel.raw_family(sock) in _INET and _kernel.raw_type(sock) == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def check_stream_socket(sock: socket.socket) -> None:
    if _kernel.raw_type(sock) != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")


async def make_transport(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol_factory: Callable[[], P],
    options: TransportOptions,
    ssl: Any = None,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> tuple[asyncio.Transport, P]:
    """A zero-copy transport on ``sock`` (TLS over it if ``ssl``), once connection_made ran.

    With TLS the returned transport is asyncio's own SSL transport over the zero-copy one,
    returned after the handshake, like asyncio's ``_create_connection_transport``.
    """
    sock.setblocking(False)
    set_nodelay(sock)
    protocol = protocol_factory()
    waiter: asyncio.Future[None] = loop.create_future()
    if ssl:
        ssl_protocol = tls.wrap(
            loop, protocol, ssl, waiter, server_side=server_side,
            server_hostname=server_hostname, handshake_timeout=ssl_handshake_timeout,
            shutdown_timeout=ssl_shutdown_timeout,
        )
        raw = ZeroCopyTransport(loop, sock, ssl_protocol, options)
        await made(raw, waiter)
        return tls.app_transport(ssl_protocol), protocol
    transport = ZeroCopyTransport(loop, sock, protocol, options, waiter=waiter)
    await made(transport, waiter)
    return transport, protocol


def interleave_addrinfos(infos: Sequence[AddrInfo], first_family_count: int = 1) -> list[AddrInfo]:
    """RFC 8305's address ordering: alternate families, ``first_family_count`` of the first."""
    by_family: collections.OrderedDict[Any, list[AddrInfo]] = collections.OrderedDict()
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    ordered: list[AddrInfo] = []
    if first_family_count > 1 and lists:
        ordered += lists[0][: first_family_count - 1]
        lists[0] = lists[0][first_family_count - 1 :]
    for group in itertools.zip_longest(*lists):
        ordered += [info for info in group if info is not None]
    return ordered


def numeric_info(host: Any, port: Any, family: int, proto: int = 0) -> AddrInfo | None:
    """The one address of a numeric ``host`` (as asyncio's ``_ensure_resolved``), else None.

    getaddrinfo runs in a thread pool (asyncio's executor, libuv's on uvloop): a process with
    a second thread pays glibc's cancellation bookkeeping on every system call after that
    (callgrind, one 11-byte read on uvloop: ~90 of 4.6k instructions per recv), which the
    loops' own create_connection / create_server avoid for a numeric address, as here."""
    return base_events._ipaddr_info(host, port, family, socket.SOCK_STREAM, proto)  # type: ignore[attr-defined,no-any-return]


async def resolve(
    loop: asyncio.AbstractEventLoop, address: Any, family: int, proto: int, flags: int
) -> list[AddrInfo]:
    host, port = address[:2]
    info = numeric_info(host, port, family, proto)
    if info is not None:
        return [info]
    return await loop.getaddrinfo(
        host, port, family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
    )


async def _connect_sock(
    loop: asyncio.AbstractEventLoop,
    exceptions: list[list[OSError]],
    addr_info: AddrInfo,
    local_addr_infos: list[AddrInfo] | None,
) -> socket.socket:
    """Create, bind and connect one socket (asyncio's ``_connect_sock``, same messages)."""
    my_exceptions: list[OSError] = []
    exceptions.append(my_exceptions)
    family, type_, proto, _, address = addr_info
    sock = None
    try:
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        if local_addr_infos is not None:
            _bind_local(sock, family, local_addr_infos, my_exceptions)
        await sock_connect(loop, sock, address)
        return sock
    except OSError as exc:
        my_exceptions.append(exc)
        if sock is not None:
            sock.close()
        raise
    except BaseException:
        if sock is not None:
            sock.close()
        raise


async def sock_connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
    """``loop.sock_connect`` of a resolved address. uvloop's resolves it again, in libuv's
    thread pool (4 threads, for good: see numeric_info); this is its connect without that:
    a non-blocking connect(), then writability and SO_ERROR, with uvloop's error message."""
    if not on_uvloop(loop):
        await loop.sock_connect(sock, address)
        return
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
    fd = sock.fileno()
    connected = loop.create_future()
    uv_loop: Any = loop
    # uvloop.Loop's own method: the aiozc loop refuses its users the fds of its transports.
    uvloop.Loop.add_writer(uv_loop, fd, _set_done, connected)
    try:
        await connected
    finally:
        uvloop.Loop.remove_writer(uv_loop, fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"Connect call failed {address}")


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _bind_local(
    sock: socket.socket, family: int, local_addr_infos: list[AddrInfo], errors: list[OSError]
) -> None:
    for lfamily, _, _, _, laddr in local_addr_infos:
        if lfamily != family:
            continue
        try:
            sock.bind(laddr)
            return
        except OSError as exc:
            reason = (exc.strerror or "").lower()
            msg = f"error while attempting to bind on address {laddr!r}: {reason}"
            errors.append(OSError(exc.errno, msg))
    if errors:
        raise errors.pop()
    raise OSError(f"no matching local address with family={family!r} found")


def _combined_error(exceptions: list[list[OSError]], all_errors: bool) -> BaseException:
    flat = [exc for sub in exceptions for exc in sub]
    if all_errors:
        return ExceptionGroup("create_connection failed", flat)  # noqa: F821 (3.11+)
    if len(flat) == 1:
        return flat[0]
    model = str(flat[0])
    if all(str(exc) == model for exc in flat):
        return flat[0]
    return OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in flat)}")


async def open_socket(
    loop: asyncio.AbstractEventLoop,
    host: Any,
    port: Any,
    *,
    family: int = 0,
    proto: int = 0,
    flags: int = 0,
    local_addr: Any = None,
    happy_eyeballs_delay: float | None = None,
    interleave: int | None = None,
    all_errors: bool = False,
) -> socket.socket:
    """A connected socket to (host, port), tried address by address or raced (happy eyeballs)."""
    infos = await resolve(loop, (host, port), family, proto, flags)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    laddr_infos = None
    if local_addr is not None:
        laddr_infos = await resolve(loop, local_addr, family, proto, flags)
        if not laddr_infos:
            raise OSError("getaddrinfo() returned empty list")
    if happy_eyeballs_delay is not None and interleave is None:
        interleave = 1  # asyncio's default: happy eyeballs alternates families
    if interleave:
        infos = interleave_addrinfos(infos, interleave)
    exceptions: list[list[OSError]] = []
    sock: socket.socket | None = None
    if happy_eyeballs_delay is None:
        for addr_info in infos:
            try:
                sock = await _connect_sock(loop, exceptions, addr_info, laddr_infos)
                break
            except OSError:
                continue
    else:
        sock = (
            await staggered.staggered_race(
                [
                    # A default argument, not functools.partial: each attempt gets its own info.
                    lambda info=info: _connect_sock(  # type: ignore[misc]
                        loop, exceptions, info, laddr_infos
                    )
                    for info in infos
                ],
                happy_eyeballs_delay,
                loop=loop,
            )
        )[0]
    if sock is None:
        raise _combined_error(exceptions, all_errors)
    return sock


async def create_connection(
    protocol_factory: Callable[[], P],
    host: str | None = None,
    port: int | str | None = None,
    *,
    ssl: Any = None,
    family: int = 0,
    proto: int = 0,
    flags: int = 0,
    sock: socket.socket | None = None,
    local_addr: Any = None,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
    happy_eyeballs_delay: float | None = None,
    interleave: int | None = None,
    all_errors: bool = False,
    **options: Any,
) -> tuple[asyncio.Transport, P]:
    """Like :meth:`asyncio.loop.create_connection`, returning a :class:`ZeroCopyTransport`
    (or, with ``ssl``, asyncio's SSL transport over one).

    ``options`` are aiozc transport options (``zc_threshold``, ``close_timeout``, ``engine``...).
    """
    server_hostname = tls.check_client_arguments(
        ssl, host, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout, sock
    )
    opts = TransportOptions.from_kwargs(options)
    loop = asyncio.get_running_loop()
    if host is not None or port is not None:
        if sock is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        sock = await open_socket(
            loop, host, port, family=family, proto=proto, flags=flags, local_addr=local_addr,
            happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave,
            all_errors=all_errors,
        )
    else:
        if sock is None:
            raise ValueError("host and port was not specified and no sock specified")
        check_stream_socket(sock)
    try:
        return await make_transport(
            loop, sock, protocol_factory, opts, ssl, server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
    except BaseException:
        sock.close()
        raise


async def connect_accepted_socket(
    protocol_factory: Callable[[], P],
    sock: socket.socket,
    *,
    ssl: Any = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
    **options: Any,
) -> tuple[asyncio.Transport, P]:
    """Like :meth:`asyncio.loop.connect_accepted_socket`: a zero-copy transport (server side
    of TLS if ``ssl``) on a socket accepted elsewhere."""
    check_stream_socket(sock)
    tls.check_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
    tls.check_not_ssl_socket(ssl, sock)
    opts = TransportOptions.from_kwargs(options)
    loop = asyncio.get_running_loop()
    return await make_transport(
        loop, sock, protocol_factory, opts, ssl, server_side=True, server_hostname="",
        ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
