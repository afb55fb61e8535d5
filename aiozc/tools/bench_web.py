"""``python -m aiozc bench aiohttp``: stock aiohttp vs :class:`aiozc.web.ZeroCopySite`.

One app, two sites on the same loop (aiohttp's ``TCPSite`` and ``ZeroCopySite``), two workloads:
a large in-memory ``web.Response(body=bytes)`` and a large ``web.FileResponse``. The clients live
in a separate process (plain blocking sockets, one thread per connection, ``recv_into`` one reused
buffer) so they cost the server nothing but the cores they share; the server's CPU time is the
bench process's own ``process_time`` over the run (executor threads included), measured per case.
Each case runs ``repeat`` times and the median counts. Ratios are aiozc / stock on the same loop;
the file ratio is also given against stock aiohttp on asyncio's loop, the one where it uses
native ``sendfile`` (on uvloop stock aiohttp reads the file in chunks).

On loopback the kernel copies every MSG_ZEROCOPY send, so the transport's policy soon switches
to plain sends ("copy-fallback"): what the body numbers show there is the copies aiohttp and the
stock transports make in Python (header+body join, buffering of the unsent rest), which aiozc
does not make on any path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from . import web_wrk
from .benchkit import pin_to_cpu, run_on

MiB = 1 << 20

# The client: stdlib only, so its start-up is quick and it imports nothing of ours.
CLIENT = r"""
import json, socket, sys, threading, time
host, port, path, clients, rounds, expected = sys.argv[1:7]
port, clients, rounds, expected = int(port), int(clients), int(rounds), int(expected)
buf = None

def get(sock, view):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in headers")
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:"))
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    got = len(body)
    while got < length:
        n = sock.recv_into(view)
        if not n:
            raise ConnectionError("closed in body")
        got += n
    assert got == length == expected, (got, length, expected)
    return got

def worker(results, i):
    view = memoryview(bytearray(1 << 20))
    with socket.create_connection((host, port)) as sock:
        results[i] = sum(get(sock, view) for _ in range(rounds))

results = [0] * clients
threads = [threading.Thread(target=worker, args=(results, i)) for i in range(clients)]
t0 = time.perf_counter(); c0 = time.process_time()
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"bytes": sum(results), "seconds": time.perf_counter() - t0,
                  "client_cpu": time.process_time() - c0}))
"""


@dataclass
class Case:
    workload: str  # body | file
    loop: str  # asyncio | uvloop
    server: str  # stock | aiozc
    gbps: float  # GB/s (1e9) delivered to the clients, median over repeats
    server_cpu_s: float  # server process CPU seconds, median
    cpu_s_per_gib: float
    series: str = ""  # "loop / server", the line or bar a report draws this case in
    state: str = ""  # aiozc only: how the body left ("sendfile", or the MSG_ZEROCOPY policy state)
    sendfile_bytes: int = 0  # aiozc only: bytes the transport sent with os.sendfile, all repeats


def _make_app(body: bytes, file: Path, transports: list[Any]) -> Any:
    from aiohttp import web

    def note(request: web.Request) -> None:
        # aiozc transports are kept for their stats (what really happened on the wire)
        if request.transport is not None and hasattr(request.transport, "write_zc"):
            transports.append(request.transport)

    async def body_handler(request: web.Request) -> web.Response:
        note(request)
        return web.Response(body=body)

    async def file_handler(request: web.Request) -> web.FileResponse:
        note(request)
        return web.FileResponse(file)

    app = web.Application()
    app.router.add_get("/body", body_handler)
    app.router.add_get("/file", file_handler)
    return app


async def _run_client(port: int, path: str, clients: int, rounds: int, size: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, "127.0.0.1", str(port), path, str(clients), str(rounds),
        str(size), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: pin_to_cpu(1),
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench client failed: {err.decode()[-2000:]}")
    return json.loads(out)


async def _measure(port: int, path: str, clients: int, rounds: int, size: int) -> tuple[float, float]:
    cpu0 = time.process_time()
    result = await _run_client(port, path, clients, rounds, size)
    cpu = time.process_time() - cpu0
    return result["bytes"] / result["seconds"] / 1e9, cpu


async def _bench_loop(loop_name: str, opts: argparse.Namespace, body: bytes, file: Path) -> list[Case]:
    from aiohttp import web

    from aiozc.web import ZeroCopySite

    transports: list[Any] = []
    runner = web.AppRunner(_make_app(body, file, transports), access_log=None)
    await runner.setup()
    stock = web.TCPSite(runner, "127.0.0.1", 0)
    zc = ZeroCopySite(runner, "127.0.0.1", 0)
    await stock.start()
    await zc.start()
    size = len(body)
    servers = {"stock": stock.port, "aiozc": zc.port}
    cases: list[Case] = []
    try:
        for workload in opts.workloads:
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
            for _ in range(opts.repeat):
                # Interleaved, so drift on a shared machine hits both servers alike.
                for name, port in servers.items():
                    measured = await _measure(port, "/" + workload, opts.clients, opts.rounds, size)
                    runs[name].append(measured)
            for name in servers:
                cases.append(_case(workload, loop_name, name, runs[name], opts, size))
            _add_transport_stats(cases[-1], transports)
    finally:
        await runner.cleanup()
    return cases


def _case(
    workload: str, loop: str, server: str, runs: list[tuple[float, float]],
    opts: argparse.Namespace, size: int,
) -> Case:
    gbps = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    gib_per_run = opts.clients * opts.rounds * size / (1 << 30)
    return Case(workload, loop, server, gbps, cpu, cpu / gib_per_run, f"{loop} / {server}")


def _add_transport_stats(case: Case, transports: list[Any]) -> None:
    """What the aiozc transports of this case did (the stock site's never get recorded)."""
    unique = {id(t): t for t in transports}.values()  # keep-alive: one per connection
    stats = [t.get_extra_info("aiozc_stats") for t in unique]
    case.sendfile_bytes = sum(st.extra.get("sendfile_bytes", 0) for st in stats)
    # A file body never meets the MSG_ZEROCOPY policy (only its headers do): say what it took.
    states = {st.state for st in stats}
    if case.sendfile_bytes:  # streamfile copies a large file to a receiver on this host
        copied = any(st.extra.get("sendfile_copied_bytes") for st in stats)
        case.state = "sendfile-copy" if copied else "sendfile"
    else:
        case.state = ",".join(sorted(states))
    transports.clear()


def _ratios(cases: list[Case]) -> dict[str, float]:
    by = {(c.workload, c.loop, c.server): c for c in cases}
    ratios: dict[str, float] = {}
    for (workload, loop, server), case in by.items():
        if server != "aiozc":
            continue
        ratios[f"{workload}/{loop}"] = case.gbps / by[(workload, loop, "stock")].gbps
        if workload == "file" and ("file", "asyncio", "stock") in by:
            ratios[f"file/{loop} vs stock sendfile"] = (
                case.gbps / by[("file", "asyncio", "stock")].gbps
            )
    return ratios


def _print_table(cases: list[Case], ratios: dict[str, float], opts: argparse.Namespace) -> None:
    print(
        f"aiohttp: {opts.size_mib} MiB responses, {opts.clients} clients x {opts.rounds} requests, "
        f"median of {opts.repeat} (loopback; client in a separate process)"
    )
    print(
        f"{'workload':<9}{'loop':<9}{'server':<8}{'GB/s':>8}{'server CPU s':>14}{'CPU s/GiB':>11}"
        f"  {'sendfile':>9}  how it left"
    )
    for c in cases:
        sendfile = f"{c.sendfile_bytes / (1 << 30):.2f} GiB" if c.sendfile_bytes else "-"
        print(
            f"{c.workload:<9}{c.loop:<9}{c.server:<8}{c.gbps:>8.2f}{c.server_cpu_s:>14.3f}"
            f"{c.cpu_s_per_gib:>11.3f}  {sendfile:>9}  {c.state or '-'}"
        )
    print("ratios (aiozc / stock, throughput):")
    for name, value in ratios.items():
        print(f"  {name:<32}{value:>6.2f}x")


def _make_inputs(size: int, workdir: Path) -> tuple[bytes, Path]:
    body = os.urandom(size)
    file = workdir / "bench-file.bin"
    file.write_bytes(body[::-1])
    with open(file, "rb") as f:  # warm the page cache: we measure sending, not the disk
        while f.read(16 * MiB):
            pass
    return body, file


def _options(args: Any) -> argparse.Namespace:
    """Defaults for every knob, so ``run`` takes the CLI's namespace or anything with some."""
    return argparse.Namespace(
        size_mib=getattr(args, "size_mib", 256),
        clients=getattr(args, "clients", 2),
        rounds=getattr(args, "rounds", 2),
        repeat=getattr(args, "repeat", 5),
        loops=getattr(args, "loops", ["asyncio", "uvloop"]),
        workloads=getattr(args, "workloads", ["body", "file"]),
        suites=getattr(args, "suites", ["big", "wrk"]),
        wrk_cases=getattr(args, "wrk_cases", list(web_wrk.WRK_CASES)),
        wrk_duration=getattr(args, "wrk_duration", web_wrk.DEFAULT_DURATION),
        wrk_rounds=getattr(args, "wrk_rounds", web_wrk.DEFAULT_ROUNDS),
        connections=getattr(args, "connections", web_wrk.DEFAULT_CONNECTIONS),
        transport_options=(
            {"engine": args.zc_engine} if getattr(args, "zc_engine", None) else {}
        ),
    )


def _target(ratios: dict[str, float], which: Callable[[str], bool], floor: float) -> bool | None:
    """Every selected ratio at or above ``floor``; None when the run measured none of them."""
    values = [v for k, v in ratios.items() if which(k)]
    return all(v >= floor for v in values) if values else None


def _run_big(opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The in-memory and file 256 MiB cases (two clients of our own)."""
    body, file = _make_inputs(opts.size_mib * MiB, tmp)
    cases: list[Case] = []
    for loop_name in opts.loops:
        cases += run_on(loop_name, _bench_loop(loop_name, opts, body, file))
    ratios = _ratios(cases)
    _print_table(cases, ratios, opts)
    targets = {
        "body >= 1.0x stock": _target(ratios, lambda k: k.startswith("body/"), 1.0),
        "file >= 0.95x stock sendfile": _target(ratios, lambda k: k.endswith("stock sendfile"), 0.95),
    }
    return {"cases": [asdict(c) for c in cases], "ratios": ratios, "targets": targets}


def run(args: Any) -> dict[str, Any]:
    """Run the benchmark, print the tables, return the numbers (cases, ratios, targets)."""
    opts = _options(args)
    pin_to_cpu(0)  # the server; each client process goes on the other core
    big: dict[str, Any] = {"cases": [], "ratios": {}, "targets": {}}
    wrk: dict[str, Any] = {"cases": [], "ratios": {}}
    with tempfile.TemporaryDirectory(prefix="aiozc-bench-web-") as tmp:
        if "big" in opts.suites:
            big = _run_big(opts, Path(tmp))
        if "wrk" in opts.suites:
            wrk = web_wrk.run(opts, Path(tmp))
    targets = dict(big["targets"])
    if wrk["ratios"]:
        targets["wrk: ZeroCopySite >= 1.0x stock req/s, every case and loop"] = all(
            v >= 1.0 for v in wrk["ratios"].values()
        )
    for name, ok in targets.items():
        print(f"target {name}: {'n/a' if ok is None else 'met' if ok else 'MISSED'}")
    return {
        "options": vars(opts),
        "cases": big["cases"],
        "ratios": {**big["ratios"], **wrk["ratios"]},
        "wrk": wrk["cases"],
        "wrk_skipped": wrk.get("skipped"),
        "targets": targets,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs, for whoever wires the CLI (``python -m aiozc bench aiohttp``)."""
    parser.add_argument("--size-mib", type=int, default=256, help="response size (MiB)")
    parser.add_argument("--clients", type=int, default=2, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=2, help="requests per connection")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (median counts)")
    parser.add_argument("--loops", nargs="+", default=["asyncio", "uvloop"],
                        choices=["asyncio", "uvloop"])
    parser.add_argument("--workloads", nargs="+", default=["body", "file"], choices=["body", "file"],
                        help="the big (--size-mib) cases")
    parser.add_argument("--suites", nargs="+", default=["big", "wrk"], choices=["big", "wrk"],
                        help="big: --size-mib responses to two clients; wrk: the wrk cases")
    web_wrk.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
