"""TLS over aiozc transports: asyncio's own SSL protocol layered on a zero-copy transport.

``asyncio.sslproto.SSLProtocol`` is a ``BufferedProtocol`` that encrypts into its own buffers and
hands the ciphertext to ``transport.write()``; asyncio's ``_SSLProtocolTransport`` over it is what
the application sees. The same pair runs on asyncio's loop and on uvloop, over any transport
with ``write``/``pause_reading``/``resume_reading``/``close``/``abort``/``_force_close``, so
layering it on a :class:`~aiozc.transport.ZeroCopyTransport` gives TLS with asyncio's exact
semantics (handshake and shutdown timeouts, errors, ``get_extra_info('ssl_object')``...).

What TLS costs: encryption reads the plaintext and writes new ciphertext, so every byte is
copied once on the way out, and the application's buffers are never pinned (the TLS transport
has no ``write_zc``). Sending ciphertext without that copy needs kernel TLS (``TCP_ULP "tls"``:
the kernel encrypts from the page cache, which makes ``sendfile`` and ``MSG_ZEROCOPY`` apply
again). :func:`kernel_tls_status` reports whether this kernel has it; the seam where a
kernel-TLS transport would take over after the handshake is :func:`app_transport`. Nothing in
aiozc uses kernel TLS today.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from asyncio import sslproto
from typing import Any

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - Python built without OpenSSL
    _ssl = None  # type: ignore[assignment]

# linux/tcp.h: TCP_ULP selects an upper-layer protocol; "tls" is the kernel TLS module.
TCP_ULP = getattr(socket, "TCP_ULP", 31)


def check_timeouts(
    ssl: Any, handshake_timeout: float | None, shutdown_timeout: float | None
) -> None:
    if handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


def check_not_ssl_socket(ssl: Any, sock: socket.socket | None) -> None:
    if sock is not None and _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def check_client_arguments(
    ssl: Any,
    host: str | None,
    server_hostname: str | None,
    handshake_timeout: float | None,
    shutdown_timeout: float | None,
    sock: socket.socket | None,
) -> str | None:
    """asyncio's checks of create_connection's TLS arguments; returns the server_hostname to use."""
    if server_hostname is not None and not ssl:
        raise ValueError("server_hostname is only meaningful with ssl")
    if server_hostname is None and ssl:
        if not host:
            raise ValueError("You must set server_hostname when using ssl without a host")
        server_hostname = host
    check_timeouts(ssl, handshake_timeout, shutdown_timeout)
    check_not_ssl_socket(ssl, sock)
    return server_hostname


def check_server_arguments(
    ssl: Any, handshake_timeout: float | None, shutdown_timeout: float | None
) -> None:
    """asyncio's checks of create_server's TLS arguments."""
    if isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    if handshake_timeout is not None and ssl is None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown_timeout is not None and ssl is None:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


class _SSLProtocol(sslproto.SSLProtocol):
    """asyncio's SSL protocol, also fed by ``data_received``.

    ``start_tls`` swaps it in for a ``Protocol`` on a live transport; a transport that keeps the
    read path it was made with then calls ``data_received``, which goes into the SSL protocol's
    own buffer through asyncio's helper for exactly that.
    """

    def data_received(self, data: bytes) -> None:
        asyncio.protocols._feed_data_to_buffered_proto(self, data)  # type: ignore[attr-defined]


def wrap(
    loop: asyncio.AbstractEventLoop,
    app_protocol: asyncio.BaseProtocol,
    ssl: Any,
    waiter: asyncio.Future[None] | None,
    *,
    server_side: bool,
    server_hostname: str | None,
    handshake_timeout: float | None,
    shutdown_timeout: float | None,
    call_connection_made: bool = True,
) -> sslproto.SSLProtocol:
    """The protocol to give the zero-copy transport; ``ssl=True`` means a default context."""
    sslcontext = None if isinstance(ssl, bool) else ssl
    return _SSLProtocol(
        loop, app_protocol, sslcontext, waiter,  # type: ignore[arg-type]
        server_side, server_hostname,
        call_connection_made=call_connection_made,
        ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]
        ssl_shutdown_timeout=shutdown_timeout,  # type: ignore[arg-type]
    )


def app_transport(ssl_protocol: sslproto.SSLProtocol) -> asyncio.Transport:
    """What the application writes to. A kernel-TLS variant would hand the keys of the finished
    handshake to the socket here and return the plain zero-copy transport instead."""
    return ssl_protocol._app_transport  # type: ignore[no-any-return]


def is_aiozc_transport(transport: Any) -> bool:
    """An aiozc transport, or asyncio's TLS transport over one (start_tls inside TLS)."""
    from .transport import ZeroCopyTransport

    while isinstance(transport, sslproto._SSLProtocolTransport):
        transport = getattr(transport._ssl_protocol, "_transport", None)
    return isinstance(transport, ZeroCopyTransport)


async def start_tls(
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    sslcontext: Any,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> asyncio.Transport:
    """``loop.start_tls`` for an aiozc transport, on any loop (asyncio's algorithm and errors).

    uvloop's own ``start_tls`` only takes uvloop transports; this one takes aiozc's.
    """
    if _ssl is None:  # pragma: no cover
        raise RuntimeError("Python ssl module is not available")
    if not isinstance(sslcontext, _ssl.SSLContext):
        raise TypeError(
            f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
        )
    if not is_aiozc_transport(transport):
        raise TypeError(f"transport {transport!r} is not supported by start_tls()")
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    ssl_protocol = wrap(
        loop, protocol, sslcontext, waiter, server_side=server_side,
        server_hostname=server_hostname, handshake_timeout=ssl_handshake_timeout,
        shutdown_timeout=ssl_shutdown_timeout, call_connection_made=False,
    )
    # Paused first so that no data reaches the SSL protocol before its connection_made().
    stream = transport  # type: ignore[assignment]
    stream.pause_reading()  # type: ignore[attr-defined]
    stream.set_protocol(ssl_protocol)
    conmade = loop.call_soon(ssl_protocol.connection_made, stream)
    resume = loop.call_soon(stream.resume_reading)  # type: ignore[attr-defined]
    try:
        await waiter
    except BaseException:
        stream.close()
        conmade.cancel()
        resume.cancel()
        raise
    return app_transport(ssl_protocol)


def kernel_tls_status() -> str:
    """Whether this kernel accepts ``TCP_ULP "tls"`` on a connected TCP socket, and why not."""
    listener = socket.socket()
    client = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client.connect(listener.getsockname())
        try:
            client.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return (
                    'not available (TCP_ULP "tls": ENOENT, this kernel has no tls module); '
                    "TLS runs in asyncio's SSL layer, ciphertext copied"
                )
            return f"not available (TCP_ULP \"tls\": {errno.errorcode.get(exc.errno or 0, exc.errno)})"
        return "available (TCP_ULP \"tls\" accepted); aiozc does not use it yet"
    finally:
        client.close()
        listener.close()
