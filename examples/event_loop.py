"""Unmodified aiohttp and websockets code on the aiozc event loop.

    python examples/event_loop.py [--base uvloop|asyncio] [--size-mib 8]

Nothing below imports aiozc except the last line: a plain aiohttp app (AppRunner + TCPSite),
aiohttp's client and a websockets echo server and client. ``aiozc.run`` gives them a loop
whose create_server / create_connection make aiozc transports, and the script prints which
transport each connection got and its zero-copy stats. Exits non-zero if a body or a message
comes back wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys

import aiohttp
import websockets.asyncio.client
import websockets.asyncio.server
from aiohttp import web


def describe(transport: asyncio.BaseTransport | None) -> str:
    stats = transport.get_extra_info("aiozc_stats") if transport is not None else None
    name = type(transport).__name__
    if stats is None:
        return f"{name} (not aiozc)"
    return f"{name}: state {stats.state}, {stats.zc_bytes + stats.copy_bytes} bytes sent"


async def http_round_trip(size: int) -> bool:
    body = hashlib.sha256(b"seed").digest() * (size // 32)

    seen: dict[str, asyncio.BaseTransport | None] = {}

    async def blob(request: web.Request) -> web.Response:
        seen["server"] = request.transport
        return web.Response(body=body)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=2 * size)
    app.router.add_get("/blob", blob)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/blob") as resp:
                seen["client"] = resp.connection.transport if resp.connection else None
                got = await resp.read()
            async with session.post(f"http://127.0.0.1:{port}/echo", data=body) as resp:
                echoed = await resp.read()
    finally:
        await runner.cleanup()
    ok = got == body and echoed == body
    for side, transport in seen.items():
        print(f"  {side} transport: {describe(transport)}")
    print(f"aiohttp: GET and POST of {size / 2**20:.1f} MiB {'OK' if ok else 'MISMATCH'}")
    return ok


async def websocket_round_trip(size: int) -> bool:
    seen: dict[str, asyncio.BaseTransport] = {}

    async def echo(ws: websockets.asyncio.server.ServerConnection) -> None:
        seen["server"] = ws.transport
        async for message in ws:
            await ws.send(message)

    message = os.urandom(size)  # incompressible: websockets deflates messages by default
    async with websockets.asyncio.server.serve(echo, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with websockets.asyncio.client.connect(
            f"ws://127.0.0.1:{port}", max_size=None
        ) as ws:
            seen["client"] = ws.transport
            replies = []
            for _ in range(3):
                await ws.send(message)
                replies.append(await ws.recv())
    ok = all(reply == message for reply in replies)
    for side, transport in seen.items():
        print(f"  {side} transport: {describe(transport)}")
    print(f"websockets: 3 echoes of {size / 2**20:.1f} MiB {'OK' if ok else 'MISMATCH'}")
    return ok


async def main(size: int) -> bool:
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__name__}")
    return await http_round_trip(size) & await websocket_round_trip(size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--size-mib", type=float, default=8)
    args = parser.parse_args()
    import aiozc

    sys.exit(0 if aiozc.run(main(int(args.size_mib * 2**20)), base=args.base) else 1)
