"""ZeroCopyPayloadWriter's write_eof: the common response (buffered headers and a whole bytes
body) in one write without aiohttp's helper frames, every other response as aiohttp does it.
Each case runs on a ZeroCopySite and a stock TCPSite of the same runner and must leave the
same bytes and the same accounting on both."""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import aiozc.web as zweb

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def both_sites(handler: Handler) -> AsyncIterator[dict[str, int]]:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    sites = {"aiozc": zweb.ZeroCopySite(runner, "127.0.0.1", 0), "stock": web.TCPSite(runner, "127.0.0.1", 0)}
    for site in sites.values():
        await site.start()
    try:
        yield {name: site.port for name, site in sites.items()}
    finally:
        await runner.cleanup()


async def _get_raw(port: int, path: str = "/") -> bytes:
    """One request; the whole response as it came off the wire (the server closes after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


def _without_date(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith((b"date:", b"server:"))]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("size", [0, 11, 100_000])
async def test_a_whole_bytes_body_leaves_without_the_helper_frames(size: int) -> None:
    """aiohttp's write_eof sends headers and body through _send_headers_with_payload and
    _writelines and then awaits a drain() coroutine, three frames per response (callgrind,
    11 B on uvloop: the Python side of the response path cost more than stock's). On a
    ZeroCopySite none of them runs for a bytes body, and the response is the same."""
    body = os.urandom(size)
    calls: dict[str, list[str]] = {"aiozc": [], "stock": []}

    async def handler(request: web.Request) -> web.Response:
        writer = request._payload_writer
        seen = calls["aiozc" if isinstance(writer, zweb.ZeroCopyPayloadWriter) else "stock"]
        for name in ("_send_headers_with_payload", "_writelines", "drain"):
            original = getattr(writer, name)

            def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
                seen.append(_name)
                return _original(*args)

            setattr(writer, name, spy)  # this writer only: the test's own instances
        return web.Response(body=body)

    async with both_sites(handler) as ports:
        raw = {name: await _get_raw(port) for name, port in ports.items()}
    assert _without_date(raw["aiozc"]) == _without_date(raw["stock"])
    assert raw["aiozc"].endswith(b"\r\n\r\n" + body)
    assert "drain" in calls["stock"]  # the spies do see aiohttp's path
    assert calls["aiozc"] == []


async def test_write_eof_waits_for_a_paused_transport() -> None:
    """The shortcut keeps drain()'s contract: write_eof returns once writing resumed."""
    order: dict[str, list[str]] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen = order.setdefault(type(request._payload_writer).__name__, [])
        response = web.StreamResponse()
        response.content_length = 5
        await response.prepare(request)
        protocol = request.protocol
        protocol.pause_writing()

        def resume() -> None:
            seen.append("resumed")
            protocol.resume_writing()

        asyncio.get_running_loop().call_later(0.05, resume)
        await response.write_eof(b"hello")
        seen.append("write_eof returned")
        return response

    async with both_sites(handler) as ports:
        for port in ports.values():
            assert (await _get_raw(port)).endswith(b"\r\n\r\nhello")
    assert order == {
        "ZeroCopyPayloadWriter": ["resumed", "write_eof returned"],
        "StreamWriter": ["resumed", "write_eof returned"],
    }


async def test_accounting_and_body_notifications_match_stock() -> None:
    """output_size (the response's body_length) and on_body_write, as aiohttp's writer keeps them."""
    body = os.urandom(3000)
    found: dict[str, tuple[int, list[tuple[int, int]]]] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(body)
        writer = await response.prepare(request)
        assert writer is not None
        notes: list[tuple[int, int]] = []
        writer.on_body_write = lambda n, total: notes.append((n, total))
        await response.write_eof(body)
        found[type(writer).__name__] = (response.body_length, notes)
        return response

    async with both_sites(handler) as ports:
        for port in ports.values():
            assert (await _get_raw(port)).endswith(body)
    assert found["ZeroCopyPayloadWriter"] == found["StreamWriter"]
    assert found["StreamWriter"][1]  # a notification was made


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            return out
        out, data = out + data[:size], data[size + 2 :]


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:  # aiohttp's "deflate" may be a raw stream
        return zlib.decompress(data, -zlib.MAX_WBITS)


@pytest.mark.parametrize("kind", ["chunked", "compressed", "empty-after-headers-sent"])
async def test_other_responses_as_aiohttp_sends_them(kind: str) -> None:
    body = os.urandom(2000)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if kind == "chunked":
            response.enable_chunked_encoding()
        elif kind == "compressed":
            response.enable_compression(web.ContentCoding.deflate)
        else:
            response.content_length = len(body)
        await response.prepare(request)
        if kind == "empty-after-headers-sent":
            await response.write(body)  # headers go with this write
            await response.write_eof()
        else:
            await response.write_eof(body)
        return response

    async with both_sites(handler) as ports:
        raw = {name: await _get_raw(port) for name, port in ports.items()}
    assert _without_date(raw["aiozc"]) == _without_date(raw["stock"])
    payload = raw["aiozc"].partition(b"\r\n\r\n")[2]
    if kind == "compressed":
        assert b"Content-Encoding: deflate" in raw["aiozc"]
        assert _inflate(_dechunk(payload) if b"chunked" in raw["aiozc"] else payload) == body
    elif kind == "chunked":
        assert payload == f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    else:
        assert payload == body


async def test_client_sees_the_body_with_aiohttps_client() -> None:
    body = os.urandom(11)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    async with both_sites(handler) as ports, aiohttp.ClientSession() as session:
        for port in ports.values():
            for _ in range(3):  # keep-alive: the writer of each request of one connection
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    assert await response.read() == body
