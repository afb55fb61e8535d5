"""``bench instructions --families web``: an aiohttp server's user instructions per request.

The server (one app, ``web.TCPSite`` or :class:`aiozc.web.ZeroCopySite`, ``web.Response`` of a
bytes body) runs under callgrind; the client runs here, outside it: ``CONNECTIONS`` keep-alive
connections, each sending its share of the requests one after another. Between phases the
client signals the server (SIGUSR1: zero the counters, SIGUSR2: dump them), and the server says
on stdout when it did, so each dump covers exactly the requests of one phase; the cyclic
collector is off from zero to dump (see ``mark``). Per request =
difference of the two measured phases over the difference of their request counts.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
from typing import IO, Any

CONNECTIONS = 8
BODY_SIZES = {"11B": 11, "100kB": 100_000, "1MB": 1_000_000}


# ----------------------------------------------------------------------------------------------
# The server, under callgrind.


async def _serve(spec: dict[str, Any], lib: Any) -> None:
    from aiohttp import web

    from aiozc.web import ZeroCopySite

    body = os.urandom(spec["size"])

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: Any = (
        web.TCPSite(runner, "127.0.0.1", 0) if spec["server"] == "stock"
        else ZeroCopySite(runner, "127.0.0.1", 0)
    )
    await site.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def mark(label: str) -> None:
        # The collector is off while a phase is measured: each phase opens CONNECTIONS new
        # connections, and whether a gen-0 collection of their leftovers falls into one phase
        # or the other moved the per-request count by +-1.2k (of ~150k), either way, for the
        # same code. Per-request garbage is the same for both servers (gc.get_count() over
        # 800 requests: stock +207, aiozc +249 less its 25 objects per closed connection).
        if label == "zero":
            gc.collect()
            gc.disable()
            lib.cref_cg_zero()
        else:
            lib.cref_cg_dump(label.encode())
            gc.enable()
        print(label, flush=True)

    phases = iter(("settle", "small", "large"))
    loop.add_signal_handler(signal.SIGUSR1, mark, "zero")
    loop.add_signal_handler(signal.SIGUSR2, lambda: mark(next(phases, "extra")))
    loop.add_signal_handler(signal.SIGTERM, done.set)
    print(f"port {site.port}", flush=True)
    await done.wait()
    await runner.cleanup()


def server_main(spec: dict[str, Any]) -> None:
    from . import cref
    from .benchkit import run_on

    built, reason = cref.callgrind_markers()
    if built is None:
        raise RuntimeError(reason)
    built.lib.cref_cg_start()
    run_on(spec["loop"], _serve(spec, built.lib))


# ----------------------------------------------------------------------------------------------
# The client, outside.


async def _one_connection(port: int, requests: int, size: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        for _ in range(requests):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if length != size or not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {head[:80]!r}")
            await reader.readexactly(length)
    finally:
        writer.close()


async def _phase(port: int, requests: int, size: int) -> None:
    per = max(1, requests // CONNECTIONS)
    await asyncio.gather(*(_one_connection(port, per, size) for _ in range(CONNECTIONS)))


def _expect(stream: IO[str], word: str) -> str:
    line = stream.readline()
    if not line.startswith(word):
        raise RuntimeError(f"server said {line!r}, expected {word!r}")
    return line


def drive(argv: list[str], size: int, warmup: int, calls: int) -> None:
    """Start the server (``argv``: valgrind ... python -m ... --web-server SPEC), run the phases."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    try:
        port = int(_expect(proc.stdout, "port").split()[1])
        asyncio.run(_phase(port, warmup, size))
        # "settle" is not counted: callgrind's first dump after the counters were first zeroed
        # holds 1.6-3.9M instructions its summary line leaves out (its totals line has them),
        # which varied run to run by ~9k per request at 128 requests.
        for label, requests in (("settle", warmup), ("small", calls), ("large", 3 * calls)):
            proc.send_signal(signal.SIGUSR1)
            _expect(proc.stdout, "zero")
            asyncio.run(_phase(port, requests, size))
            proc.send_signal(signal.SIGUSR2)
            _expect(proc.stdout, label)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    except BaseException:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"server under callgrind failed:\n{err[-3000:]}") from None


if __name__ == "__main__":
    server_main(json.loads(sys.argv[sys.argv.index("--web-server") + 1]))
