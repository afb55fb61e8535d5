"""The aiozc event loop: unmodified asyncio libraries get aiozc transports.

Each test is synchronous and runs its coroutine with ``aiozc.run(..., base=...)`` on both
bases, since the loop under test is the aiozc loop itself, not conftest's stock loops.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
import websockets.asyncio.client
import websockets.asyncio.server
from aiohttp import web

import aiozc
from aiozc.loop import AiozcSelectorEventLoop, AiozcUVLoop

BASES = ["uvloop", "asyncio"]


@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_new_event_loop_is_the_base_loop(base: str) -> None:
    loop = aiozc.new_event_loop(base=base)
    try:
        expected = uvloop.Loop if base == "uvloop" else asyncio.SelectorEventLoop
        assert isinstance(loop, expected)
        assert isinstance(loop, AiozcUVLoop if base == "uvloop" else AiozcSelectorEventLoop)
    finally:
        loop.close()
    with pytest.raises(ValueError, match="base must be one of"):
        aiozc.new_event_loop(base="trio")
    with pytest.raises(TypeError, match="no_such_option"):
        aiozc.new_event_loop(base=base, no_such_option=1)


def test_streams_get_aiozc_transports(base: str) -> None:
    async def main() -> tuple[type, type, bytes, int]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(1 << 20))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = os.urandom(1 << 20)
        completion = await writer.transport.write_zc(payload)  # type: ignore[attr-defined]
        data = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return type(writer.transport), type(server), data + payload, completion.nbytes

    transport_type, server_type, both, nbytes = aiozc.run(main(), base=base)
    assert transport_type is aiozc.ZeroCopyTransport
    assert server_type is aiozc.Server
    assert both[: 1 << 20] == both[1 << 20 :] and nbytes == 1 << 20


def test_datagram_endpoint_is_aiozc(base: str) -> None:
    async def main() -> tuple[type, bytes]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.set_result(data)

        rx, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        tx, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=rx.get_extra_info("sockname")
        )
        tx.sendto(b"ping")
        data = await asyncio.wait_for(got, 10)
        tx.close()
        rx.close()
        return type(tx), data

    tx_type, data = aiozc.run(main(), base=base)
    assert issubclass(tx_type, aiozc.ZeroCopyDatagramTransport) and data == b"ping"


def test_options_become_loop_defaults_and_calls_override_them(base: str) -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        t1, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        t2, _ = await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", port, zc_threshold=4096
        )
        thresholds = (
            t1._options.zc_threshold,  # type: ignore[attr-defined]
            t2._options.zc_threshold,  # type: ignore[attr-defined]
        )
        t1.close()
        t2.close()
        server.close()
        return thresholds

    assert aiozc.run(main(), base=base, zc_threshold=1 << 20) == (1 << 20, 4096)


def test_policy_and_install(base: str) -> None:
    previous = asyncio.get_event_loop_policy()
    try:
        aiozc.install(base=base)
        assert isinstance(asyncio.get_event_loop_policy(), aiozc.EventLoopPolicy)

        async def loop_type() -> type:
            return type(asyncio.get_running_loop())

        expected = AiozcUVLoop if base == "uvloop" else AiozcSelectorEventLoop
        assert asyncio.run(loop_type()) is expected
    finally:
        asyncio.set_event_loop_policy(previous)


def test_unix_sockets_stay_on_the_base_loop(base: str, tmp_path: Path) -> None:
    async def main() -> str:
        path = str(tmp_path / "s")
        server = await asyncio.start_unix_server(lambda r, w: w.close(), path)
        _, writer = await asyncio.open_unix_connection(path)
        name = type(writer.transport).__name__
        writer.close()
        server.close()
        await server.wait_closed()
        return name

    assert aiozc.run(main(), base=base) != "ZeroCopyTransport"


def test_aiohttp_client_and_server_unmodified(base: str) -> None:
    """A plain aiohttp app and ClientSession: both ends are aiozc transports, bodies intact."""

    async def main() -> tuple[bytes, bytes, bytes, list[type]]:
        body = os.urandom(3 << 20)
        seen: list[type] = []

        async def blob(request: web.Request) -> web.Response:
            seen.append(type(request.transport))
            return web.Response(body=body)

        async def echo(request: web.Request) -> web.Response:
            return web.Response(body=await request.read())

        app = web.Application(client_max_size=8 << 20)
        app.router.add_get("/blob", blob)
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url + "/blob") as resp:
                    assert resp.connection is not None
                    seen.append(type(resp.connection.transport))
                    got = await resp.read()
                async with session.post(url + "/echo", data=body) as resp:
                    echoed = await resp.read()
        finally:
            await runner.cleanup()
        return body, got, echoed, seen

    body, got, echoed, seen = aiozc.run(main(), base=base)
    assert got == body and echoed == body
    assert seen == [aiozc.ZeroCopyTransport, aiozc.ZeroCopyTransport]


def test_websockets_unmodified(base: str) -> None:
    async def main() -> tuple[list[bytes], bytes, list[type]]:
        seen: list[type] = []

        async def echo(ws: websockets.asyncio.server.ServerConnection) -> None:
            seen.append(type(ws.transport))
            async for message in ws:
                await ws.send(message)

        message = os.urandom(1 << 20)
        async with websockets.asyncio.server.serve(echo, "127.0.0.1", 0, max_size=None) as srv:
            port = next(iter(srv.sockets)).getsockname()[1]
            async with websockets.asyncio.client.connect(
                f"ws://127.0.0.1:{port}", max_size=None
            ) as ws:
                seen.append(type(ws.transport))
                replies = []
                for _ in range(3):
                    await ws.send(message)
                    replies.append(bytes(await ws.recv()))  # type: ignore[arg-type]
        return replies, message, seen

    replies, message, seen = aiozc.run(main(), base=base)
    assert replies == [message] * 3
    assert seen == [aiozc.ZeroCopyTransport, aiozc.ZeroCopyTransport]


def test_example_runs(base: str) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "event_loop.py"
    result = subprocess.run(
        [sys.executable, str(example), "--base", base, "--size-mib", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ZeroCopyTransport") == 4
    assert "MISMATCH" not in result.stdout


def test_loop_accepts_a_connected_socket(base: str) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            b = socket.create_connection(listener.getsockname())
            a, _ = listener.accept()
        got: asyncio.Future[bytes] = loop.create_future()

        class Recv(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.set_result(data)

        transport, _ = await loop.connect_accepted_socket(Recv, a)
        assert isinstance(transport, aiozc.ZeroCopyTransport)
        b.send(b"hello")
        data = await asyncio.wait_for(got, 10)
        transport.close()
        b.close()
        return data

    assert aiozc.run(main(), base=base) == b"hello"
