"""TLS over aiozc transports (asyncio's SSLProtocol layered on them), on both loops."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

import aiozc
from aiozc import tls
from aiozc import web as zcweb

PAYLOAD = os.urandom(3 << 20)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 20):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(PAYLOAD)
    await writer.drain()
    data = await reader.readexactly(len(PAYLOAD))
    writer.close()
    await writer.wait_closed()
    return data


async def test_aiozc_client_and_server(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    raw: list[Any] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw.append(writer.transport.get_extra_info("aiozc_stats"))
        await _echo(reader, writer)

    server = await aiozc.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await aiozc.open_connection(
        "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
    )
    ssl_object = writer.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLObject) and ssl_object.version() is not None
    assert writer.get_extra_info("peercert")["subjectAltName"][0] == ("DNS", "localhost")
    # Under the TLS transport sits an aiozc transport: its stats are visible through it.
    assert writer.get_extra_info("aiozc_stats") is not None
    assert await _round_trip(reader, writer) == PAYLOAD
    server.close()
    await server.wait_closed()
    assert raw and raw[0] is not None and raw[0].copy_bytes + raw[0].zc_bytes > len(PAYLOAD)


async def test_interoperates_with_the_loops_own_tls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    stock_server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server_ctx)
    port = stock_server.sockets[0].getsockname()[1]
    reader, writer = await aiozc.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                 server_hostname="localhost")
    assert await _round_trip(reader, writer) == PAYLOAD
    stock_server.close()
    await stock_server.wait_closed()

    zc_server = await aiozc.start_server(_echo, "127.0.0.1", 0, ssl=server_ctx)
    port = zc_server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                   server_hostname="localhost")
    assert await _round_trip(reader, writer) == PAYLOAD
    zc_server.close()
    await zc_server.wait_closed()


async def test_certificate_errors_and_handshake_timeout(
    server_ctx: ssl.SSLContext,
) -> None:
    server = await aiozc.start_server(_echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    untrusting = ssl.create_default_context()  # does not trust the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        await aiozc.open_connection("127.0.0.1", port, ssl=untrusting, server_hostname="localhost")
    server.close()
    await server.wait_closed()

    # A peer that accepts TCP and never answers the ClientHello.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
            await aiozc.create_connection(
                asyncio.Protocol, *silent.getsockname(), ssl=ssl.create_default_context(),
                server_hostname="localhost", ssl_handshake_timeout=0.2,
            )


async def _upgrade(
    writer: asyncio.StreamWriter, ctx: ssl.SSLContext, *, server_side: bool
) -> asyncio.BaseTransport:
    """StreamWriter.start_tls with aiozc.start_tls in place of loop.start_tls (the stock loops'
    start_tls refuses transports that are not their own)."""
    await writer.drain()
    protocol = writer._protocol  # type: ignore[attr-defined]
    new_transport = await aiozc.start_tls(
        writer.transport, protocol, ctx, server_side=server_side,
        server_hostname=None if server_side else "localhost",
    )
    writer._transport = new_transport  # type: ignore[attr-defined]
    protocol._replace_writer(writer)
    return new_transport


async def test_start_tls_upgrades_an_aiozc_transport(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """STARTTLS-style: plaintext first, then both ends upgrade the same aiozc transports."""

    async def upgrade_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(8) == b"STARTTLS"
        writer.write(b"GO AHEAD")
        await _upgrade(writer, server_ctx, server_side=True)
        await _echo(reader, writer)

    server = await aiozc.start_server(upgrade_then_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await aiozc.open_connection("127.0.0.1", port)
    writer.write(b"STARTTLS")
    assert await reader.readexactly(8) == b"GO AHEAD"
    new_transport = await _upgrade(writer, client_ctx, server_side=False)
    assert new_transport.get_extra_info("ssl_object") is not None
    assert await _round_trip(reader, writer) == PAYLOAD
    server.close()
    await server.wait_closed()


async def test_start_tls_argument_errors(client_ctx: ssl.SSLContext) -> None:
    with pytest.raises(TypeError, match="sslcontext is expected to be an instance"):
        await aiozc.start_tls(None, None, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is not supported by start_tls"):
        await aiozc.start_tls(object(), None, client_ctx)  # type: ignore[arg-type]


def test_start_tls_through_the_aiozc_loop(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """StreamWriter.start_tls, unmodified, on the aiozc loop: loop.start_tls takes aiozc's."""

    async def main() -> bytes:
        async def upgrade_then_echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readexactly(8)
            w.write(b"GO AHEAD")
            await w.start_tls(server_ctx)
            await _echo(r, w)

        server = await asyncio.start_server(upgrade_then_echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        assert isinstance(writer.transport, aiozc.ZeroCopyTransport)
        writer.write(b"STARTTLS")
        assert await reader.readexactly(8) == b"GO AHEAD"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        data = await _round_trip(reader, writer)
        server.close()
        await server.wait_closed()
        return data

    for base in ("uvloop", "asyncio"):
        assert aiozc.run(main(), base=base) == PAYLOAD


def test_aiohttp_https_through_the_aiozc_loop(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async def main() -> tuple[bytes, bytes]:
        async def blob(request: web.Request) -> web.Response:
            return web.Response(body=PAYLOAD)

        app = web.Application()
        app.router.add_get("/", blob)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"https://localhost:{port}/", ssl=client_ctx) as resp:
                    assert resp.connection is not None
                    ssl_object = resp.connection.transport.get_extra_info("ssl_object")
                    return await resp.read(), ssl_object.version().encode()
        finally:
            await runner.cleanup()

    for base in ("uvloop", "asyncio"):
        body, version = aiozc.run(main(), base=base)
        assert body == PAYLOAD and version.startswith(b"TLS")


async def test_zero_copy_site_serves_https(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD)

    app = web.Application()
    app.router.add_get("/", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = zcweb.ZeroCopySite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    assert site.name.startswith("https://")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://localhost:{site.port}/", ssl=client_ctx) as resp:
                assert await resp.read() == PAYLOAD
    finally:
        await runner.cleanup()


def test_probe_reports_kernel_tls() -> None:
    status = tls.kernel_tls_status()
    assert status.startswith(("available", "not available"))
    # This kernel has no tls module (PLATFORM.md): the probe must say so, not claim support.
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as client:
        client.connect(listener.getsockname())
        try:
            client.setsockopt(socket.IPPROTO_TCP, tls.TCP_ULP, b"tls")
            kernel_has_it = True
        except OSError:
            kernel_has_it = False
    assert status.startswith("available") == kernel_has_it


async def test_writes_from_resume_writing_during_close_are_sent() -> None:
    """asyncio's transports take writes made from resume_writing() while close() drains the
    buffer; asyncio's SSL protocol writes its last records exactly then. aiozc dropped them
    (uvloop's test_remote_shutdown_receives_trailing_data lost ~640 KiB of TLS records)."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:

        class TailOnResume(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def resume_writing(self) -> None:
                if not getattr(self, "tail_written", False):
                    self.tail_written = True
                    self.transport.write(b"tail")  # type: ignore[attr-defined]

        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
        transport, _ = await aiozc.create_connection(
            TailOnResume, *listener.getsockname(), zc_threshold=1 << 30
        )
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
        peer, _ = listener.accept()
        peer.setblocking(False)
        transport.set_write_buffer_limits(high=1)
        transport.write(PAYLOAD)  # the peer is not reading yet: queued, writing paused
        assert transport.get_write_buffer_size() > 0
        transport.close()
        received = bytearray()
        while True:
            chunk = await loop.sock_recv(peer, 1 << 20)
            if not chunk:
                break
            received += chunk
        peer.close()
    assert bytes(received) == PAYLOAD + b"tail"


async def test_connect_accepted_socket_serves_tls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """The server side of TLS on a socket accepted elsewhere (asyncio's server_side=True)."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        connecting = asyncio.ensure_future(aiozc.open_connection(
            *listener.getsockname(), ssl=client_ctx, server_hostname="localhost"
        ))
        accepted, _ = await loop.sock_accept(listener)
        reader = asyncio.StreamReader()
        transport, _ = await aiozc.connect_accepted_socket(
            lambda: asyncio.StreamReaderProtocol(reader), accepted, ssl=server_ctx,
            ssl_handshake_timeout=30,
        )
        client_reader, client_writer = await connecting
        assert transport.get_extra_info("ssl_object").server_side
        client_writer.write(b"over tls")
        assert await reader.readexactly(8) == b"over tls"
        client_writer.close()
        transport.close()


async def test_start_tls_over_an_aiozc_tls_connection(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """TLS inside TLS: start_tls() on the TLS transport of an aiozc connection (uvloop's
    test_create_server_ssl_over_ssl hung on the uvloop base: the outer transport was refused)."""

    async def upgrade_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(8) == b"STARTTLS"
        writer.write(b"GO AHEAD")
        await _upgrade(writer, server_ctx, server_side=True)
        await _echo(reader, writer)

    server = await aiozc.start_server(upgrade_then_echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await aiozc.open_connection(
        "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
    )
    writer.write(b"STARTTLS")
    assert await reader.readexactly(8) == b"GO AHEAD"
    outer = writer.transport
    inner = await _upgrade(writer, client_ctx, server_side=False)
    assert inner.get_extra_info("ssl_object") is not outer.get_extra_info("ssl_object")
    assert await _round_trip(reader, writer) == PAYLOAD
    server.close()
    await server.wait_closed()
