"""loop.sendfile(transport, file) on aiozc transports through the aiozc loop, both bases.

Modelled on CPython's Lib/test/test_asyncio/test_sendfile.py (SendfileMixin): the same
cases, return values, file positions and errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import ssl
from asyncio import base_events
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

import aiozc

DATA = b"SendfileBaseTests" * (1 << 14)  # 272 KiB: more than the reduced socket buffers hold


@pytest.fixture(params=["uvloop", "asyncio"])
def base(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


class Receiver(asyncio.Protocol):
    """The peer: counts bytes, optionally closes after ``close_after`` of them."""

    def __init__(self, close_after: int = 0) -> None:
        self.data = bytearray()
        self.close_after = close_after
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.close_after and len(self.data) >= self.close_after:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Sender(asyncio.Protocol):
    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


Case = Callable[[asyncio.AbstractEventLoop, asyncio.Transport, Receiver], Awaitable[Any]]


def run_case(
    base: str, case: Case, *, close_after: int = 0, tls: bool = False, small_buffers: bool = False
) -> Any:
    small_buffers = small_buffers or bool(close_after)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        receiver = Receiver(close_after)
        server_ssl = client_ssl = None
        if tls:
            ca = trustme.CA()
            server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("localhost").configure_cert(server_ssl)
            client_ssl = ssl.create_default_context()
            ca.configure_trust(client_ssl)
        server = await loop.create_server(lambda: receiver, "127.0.0.1", 0, ssl=server_ssl)
        if small_buffers:
            # Small buffers, as CPython's test sets them: the peer that closes early stops us
            # soon. (Not everywhere: zero-copy sends with 2 KiB windows crawl on loopback.)
            server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        transport, sender = await loop.create_connection(
            Sender, *server.sockets[0].getsockname(), ssl=client_ssl,
            server_hostname="localhost" if tls else None,
        )
        if small_buffers:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2048)
        try:
            return await case(loop, transport, receiver)
        finally:
            transport.close()
            await asyncio.wait_for(receiver.done, 30)
            server.close()
            await server.wait_closed()

    return aiozc.run(main(), base=base)


def test_sendfile(base: str, data_file: Path) -> None:
    with data_file.open("rb") as f:

        async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
            assert isinstance(transport, aiozc.ZeroCopyTransport)
            ret = await loop.sendfile(transport, f)
            transport.close()
            await rx.done
            return ret, bytes(rx.data), f.tell()

        assert run_case(base, case) == (len(DATA), DATA, len(DATA))


def test_sendfile_partial_and_pre_and_post_data(base: str, data_file: Path) -> None:
    prefix, suffix = b"PREFIX__" * 1024, b"--SUFFIX" * 1024
    with data_file.open("rb") as f:

        async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
            transport.write(prefix)
            ret = await loop.sendfile(transport, f, 1000, 100)
            transport.write(suffix)
            transport.close()
            await rx.done
            return ret, bytes(rx.data), f.tell()

        assert run_case(base, case) == (100, prefix + DATA[1000:1100] + suffix, 1100)


def test_sendfile_closing_transport(base: str, data_file: Path) -> None:
    with data_file.open("rb") as f:

        async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
            transport.close()
            with pytest.raises(RuntimeError, match="is closing"):
                await loop.sendfile(transport, f)
            await rx.done
            return len(rx.data), f.tell()

        assert run_case(base, case) == (0, 0)


def _force_fallback(loop: Any) -> None:
    # What CPython's test does: the native path raises SendfileNotAvailableError.
    loop._sendfile_native = lambda transp, file, offset, count: (
        base_events.BaseEventLoop._sendfile_native(loop, transp, file, offset, count)
    )


def test_sendfile_force_fallback_and_unsupported_native(base: str, data_file: Path) -> None:
    with data_file.open("rb") as f:

        async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
            _force_fallback(loop)
            with pytest.raises(asyncio.SendfileNotAvailableError, match="not supported"):
                await loop.sendfile(transport, f, fallback=False)
            assert f.tell() == 0 and not rx.data
            ret = await loop.sendfile(transport, f)
            transport.close()
            await rx.done
            return ret, bytes(rx.data), f.tell()

        assert run_case(base, case) == (len(DATA), DATA, len(DATA))


def test_sendfile_of_a_file_without_fileno_falls_back(base: str) -> None:
    f = io.BytesIO(DATA)

    async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
        with pytest.raises(asyncio.SendfileNotAvailableError, match="not a regular file"):
            await loop.sendfile(transport, f, fallback=False)
        ret = await loop.sendfile(transport, f, 10)
        transport.close()
        await rx.done
        return ret, bytes(rx.data), f.tell()

    assert run_case(base, case) == (len(DATA) - 10, DATA[10:], len(DATA))


def test_sendfile_argument_errors(base: str, data_file: Path) -> None:
    async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
        with data_file.open("rb") as f:
            with pytest.raises(ValueError, match="count must be a positive integer"):
                await loop.sendfile(transport, f, 0, 0)
            with pytest.raises(ValueError, match="offset must be a non-negative integer"):
                await loop.sendfile(transport, f, -1)
            with pytest.raises(TypeError, match="offset must be a non-negative integer"):
                await loop.sendfile(transport, f, "1")
        with data_file.open("r") as text:
            with pytest.raises(ValueError, match="binary mode"):
                await loop.sendfile(transport, text)
        return len(rx.data)

    assert run_case(base, case) == 0


@pytest.mark.parametrize("forced_fallback", [False, True])
def test_sendfile_peer_closes_in_the_middle(
    base: str, data_file: Path, forced_fallback: bool
) -> None:
    with data_file.open("rb") as f:

        async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
            if forced_fallback:
                _force_fallback(loop)
            with pytest.raises(ConnectionError):
                await loop.sendfile(transport, f)
            await rx.done
            return len(rx.data), f.tell(), transport.is_closing()

        received, position, closing = run_case(base, case, close_after=1024)
        assert 1024 <= received < len(DATA)
        assert 1024 <= position < len(DATA)
        assert closing


def test_sendfile_over_tls(base: str, data_file: Path) -> None:
    """The TLS transport is asyncio's (mode FALLBACK): read-and-write, also on uvloop."""
    with data_file.open("rb") as f:

        async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
            ret = await loop.sendfile(transport, f, 1000, 100)
            with pytest.raises(RuntimeError, match="fallback is disabled"):
                await loop.sendfile(transport, f, fallback=False)
            transport.close()
            await rx.done
            return ret, bytes(rx.data), f.tell()

        assert run_case(base, case, tls=True) == (100, DATA[1000:1100], 1100)


def test_plain_aiohttp_file_response(base: str, tmp_path: Path) -> None:
    """web.FileResponse in a plain aiohttp app (no aiozc.web) on the aiozc loop: whole file and
    a range, sent by the transport's sendfile."""
    path = tmp_path / "big.bin"
    body = os.urandom(5 << 20)
    path.write_bytes(body)

    async def main() -> tuple[str, bytes, int]:
        transports: list[Any] = []

        async def file(request: web.Request) -> web.FileResponse:
            transports.append(request.transport)
            return web.FileResponse(path)

        app = web.Application()
        app.router.add_get("/f", file)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/f"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as resp:
                    digest = hashlib.sha256(await resp.read()).hexdigest()
                async with session.get(url, headers={"Range": "bytes=1000-1999"}) as resp:
                    part = await resp.read()
        finally:
            await runner.cleanup()
        assert all(isinstance(t, aiozc.ZeroCopyTransport) for t in transports)
        return digest, part, transports[0].stats.extra.get("sendfile_bytes", 0)

    digest, part, sendfile_bytes = aiozc.run(main(), base=base)
    assert digest == hashlib.sha256(body).hexdigest()
    assert part == body[1000:2000]
    assert sendfile_bytes >= len(body)  # native: os.sendfile, not the read-and-write fallback


def test_write_during_native_sendfile_is_refused(base: str, data_file: Path) -> None:
    """asyncio's contract (CPython's test_sendfile_prevents_bare_write); afterwards writes work."""
    with data_file.open("rb") as f:

        async def case(loop: Any, transport: asyncio.Transport, rx: Receiver) -> Any:
            task = asyncio.ensure_future(loop.sendfile(transport, f))
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="sendfile is in progress"):
                transport.write(b"data")
            ret = await task
            transport.write(b"after")
            transport.close()
            await rx.done
            return ret, bytes(rx.data)

        assert run_case(base, case, small_buffers=True) == (len(DATA), DATA + b"after")
