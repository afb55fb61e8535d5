"""The wrk-driven cases of ``bench aiohttp``: many keep-alive requests, stock vs ZeroCopySite.

wrk (``apt-get install wrk``) keeps ``connections`` keep-alive connections busy for
``duration`` seconds against one URL, from one thread pinned to the second core; the server
(stock ``web.TCPSite`` and :class:`aiozc.web.ZeroCopySite` of one app, on one loop) runs in this
process on the first core. Every response is small enough that per-request and per-event costs
show, which the 256 MiB case hides. Cases: ``web.Response(body=bytes)`` of 11 B, 100 kB, 1 MB;
``web.FileResponse`` of 1 MiB and 64 MiB.

Both arms run under the same conditions: one process and loop, the same warm-up run, wrk on
the same core, rounds interleaved with the order alternating (stock first in even rounds, aiozc
first in odd ones, so neither always follows the other's connection teardown or profits from a
drift), and a pause after each run for the last one's connections to go. The ratio reported
is the median over rounds of each round's aiozc/stock pair, with the lowest and highest pair:
a drift of the machine between rounds moves both arms of a pair alike.

Reported per run: requests/s, GB/s read by wrk, the server's CPU microseconds per request (this
process's ``process_time``, executor threads included), socket errors and non-2xx responses.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .benchkit import pin_to_cpu, run_on

MiB = 1 << 20
# name -> (kind, size in bytes); names are what --wrk-cases takes.
WRK_CASES: dict[str, tuple[str, int]] = {
    "body-11B": ("body", 11),
    "body-100kB": ("body", 100_000),
    "body-1MB": ("body", 1_000_000),
    "file-1MiB": ("file", MiB),
    "file-64MiB": ("file", 64 * MiB),
}
DEFAULT_CONNECTIONS = 32
DEFAULT_DURATION = 3
DEFAULT_ROUNDS = 5
# After each run: wrk has closed its connections, the server is still tearing them down.
SETTLE_S = 0.3
SERVERS = ("stock", "aiozc")

_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_SUMMARY = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)([KMGT]?B) read")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class WrkRun:
    requests: int
    seconds: float
    bytes_read: float
    errors: int  # socket errors of any kind, plus non-2xx responses
    server_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_wrk(output: str) -> tuple[int, float, float, int]:
    """(requests, seconds, bytes read, errors) from wrk's report."""
    summary = _SUMMARY.search(output)
    if summary is None:
        raise ValueError(f"unexpected wrk output:\n{output[-2000:]}")
    requests = int(summary.group(1))
    seconds = float(summary.group(2)) * _TIME_UNITS[summary.group(3)]
    nbytes = float(summary.group(4)) * _UNITS[summary.group(5)]
    errors = 0
    socket_errors = _SOCKET_ERRORS.search(output)
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non_2xx = _NON_2XX.search(output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return requests, seconds, nbytes, errors


@dataclass
class WrkCase:
    case: str
    loop: str
    server: str
    rps: float  # median over rounds
    gbps: float
    server_us_per_request: float
    errors: int  # over all rounds
    runs_rps: list[float] = field(default_factory=list)
    series: str = ""
    state: str = ""  # aiozc: how the bodies left (policy state, or sendfile)
    # aiozc: each round's aiozc/stock bytes/s, the two runs of one round paired
    paired: list[float] = field(default_factory=list)

    @property
    def paired_ratio(self) -> float | None:
        return statistics.median(self.paired) if self.paired else None


def wrk_missing() -> str | None:
    if shutil.which("wrk") is None:
        return "wrk is not installed (apt-get install wrk; `make os-deps` does it as root)"
    return None


def _make_app(bodies: dict[str, bytes], files: dict[str, Path], transports: list[Any]) -> Any:
    from aiohttp import web

    def note(request: web.Request) -> None:
        if request.transport is not None and hasattr(request.transport, "write_zc"):
            transports.append(request.transport)

    async def body_handler(request: web.Request) -> web.Response:
        note(request)
        return web.Response(body=bodies[request.match_info["name"]])

    async def file_handler(request: web.Request) -> web.FileResponse:
        note(request)
        return web.FileResponse(files[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/body/{name}", body_handler)
    app.router.add_get("/file/{name}", file_handler)
    return app


async def _wrk(port: int, path: str, opts: argparse.Namespace, duration: int) -> WrkRun:
    argv = [  # wrk takes whole seconds only
        "wrk", "-t1", f"-c{opts.connections}", f"-d{max(1, int(duration))}s", "--timeout", "10s",
        f"http://127.0.0.1:{port}{path}",
    ]
    cpu0 = time.process_time()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: pin_to_cpu(1),
    )
    out, err = await proc.communicate()
    cpu = time.process_time() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()[-2000:]}")
    requests, seconds, nbytes, errors = parse_wrk(out.decode())
    return WrkRun(requests, seconds, nbytes, errors, cpu)


def _summarise(case: str, loop: str, server: str, runs: list[WrkRun]) -> WrkCase:
    rps = statistics.median(r.rps for r in runs)
    gbps = statistics.median(r.bytes_read / r.seconds / 1e9 for r in runs)
    us = statistics.median(r.server_cpu_s / max(r.requests, 1) * 1e6 for r in runs)
    return WrkCase(case, loop, server, rps, gbps, us, sum(r.errors for r in runs),
                   [r.rps for r in runs], f"{loop} / {server}")


def round_order(index: int) -> tuple[str, ...]:
    """The arms' order in round ``index``: alternating, so neither is always first."""
    return SERVERS if index % 2 == 0 else SERVERS[::-1]


def paired_ratios(stock: list[WrkRun], aiozc: list[WrkRun]) -> list[float]:
    """aiozc/stock bytes/s of each round (bytes, not requests: a 64 MiB run finishes few
    responses, and wrk counts the bytes of unfinished ones too)."""
    return [
        (z.bytes_read / z.seconds) / (s.bytes_read / s.seconds)
        for s, z in zip(stock, aiozc) if s.bytes_read and s.seconds and z.seconds
    ]


def _states(transports: list[Any]) -> str:
    stats = [t.get_extra_info("aiozc_stats") for t in {id(t): t for t in transports}.values()]
    transports.clear()
    if any(st.extra.get("sendfile_copied_bytes") for st in stats):
        return "sendfile-copy"  # streamfile: a large file to a receiver on this host
    if any(st.extra.get("sendfile_bytes") for st in stats):
        return "sendfile"
    return ",".join(sorted({st.state for st in stats}))


async def _bench_loop(loop_name: str, opts: argparse.Namespace, workdir: Path) -> list[WrkCase]:
    from aiohttp import web

    from aiozc.web import ZeroCopySite

    bodies = {name: _payload(size) for name, (kind, size) in WRK_CASES.items() if kind == "body"}
    files = {name: _make_file(workdir / name, size)
             for name, (kind, size) in WRK_CASES.items() if kind == "file"}
    transports: list[Any] = []
    runner = web.AppRunner(_make_app(bodies, files, transports), access_log=None)
    await runner.setup()
    stock = web.TCPSite(runner, "127.0.0.1", 0)
    zc = ZeroCopySite(runner, "127.0.0.1", 0, **opts.transport_options)
    await stock.start()
    await zc.start()
    ports = {"stock": stock.port, "aiozc": zc.port}
    results: list[WrkCase] = []
    try:
        for name in opts.wrk_cases:
            kind, _ = WRK_CASES[name]
            path = f"/{kind}/{name}"
            for server in SERVERS:  # warm both: first connections, page cache, code paths
                await _wrk(ports[server], path, opts, 1)
                await asyncio.sleep(SETTLE_S)
            transports.clear()
            runs: dict[str, list[WrkRun]] = {s: [] for s in SERVERS}
            for index in range(opts.wrk_rounds):
                for server in round_order(index):
                    runs[server].append(await _wrk(ports[server], path, opts, opts.wrk_duration))
                    await asyncio.sleep(SETTLE_S)
            for server in SERVERS:
                results.append(_summarise(name, loop_name, server, runs[server]))
            results[-1].state = _states(transports)
            results[-1].paired = paired_ratios(runs["stock"], runs["aiozc"])
    finally:
        await runner.cleanup()
    return results


def _payload(size: int) -> bytes:
    import os

    return os.urandom(size)


def _make_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(0, size, MiB):
            f.write(_payload(min(MiB, size)))
        f.truncate(size)
    with open(path, "rb") as f:  # warm the page cache: we measure sending, not the disk
        while f.read(16 * MiB):
            pass
    return path


def ratios(cases: list[WrkCase]) -> dict[str, float]:
    """aiozc / stock in bytes read per second: the median of the rounds' paired ratios. Both
    servers send the same headers (one app), so this is the ratio of requests/s, but it still
    counts when a run finishes few requests (64 MiB files: wrk counts the bytes of unfinished
    responses too). Rows without pairs (older results) fall back to the ratio of medians."""
    by = {(c.case, c.loop, c.server): c for c in cases}
    found = {}
    for c in cases:
        base = by.get((c.case, c.loop, "stock"))
        if c.server != "aiozc" or base is None:
            continue
        paired = c.paired_ratio
        if paired is not None:
            found[f"wrk {c.case}/{c.loop}"] = paired
        elif base.gbps > 0:
            found[f"wrk {c.case}/{c.loop}"] = c.gbps / base.gbps
    return found


def print_table(cases: list[WrkCase], opts: argparse.Namespace) -> None:
    print(
        f"aiohttp under wrk: {opts.connections} keep-alive connections, {opts.wrk_duration} s per run, "
        f"{opts.wrk_rounds} interleaved rounds, order alternating; server on core 0, wrk (1 thread) "
        "on core 1; req/s, GB/s, CPU: medians over rounds; vs stock: median of the rounds' paired "
        "bytes/s ratios [lowest-highest pair]"
    )
    print(f"{'case':<12}{'loop':<9}{'server':<8}{'req/s':>10}{'GB/s':>8}{'us CPU/req':>12}"
          f"{'vs stock':>22}{'errors':>8}  rounds (req/s); how it left")
    stock = {(c.case, c.loop): c.gbps for c in cases if c.server == "stock"}
    for c in cases:
        print(f"{c.case:<12}{c.loop:<9}{c.server:<8}{c.rps:>10.0f}{c.gbps:>8.2f}"
              f"{c.server_us_per_request:>12.1f}{_ratio_cell(c, stock.get((c.case, c.loop))):>22}"
              f"{c.errors:>8}  {' '.join(f'{r:.0f}' for r in c.runs_rps)}"
              f"{'; ' + c.state if c.state else ''}")


def _ratio_cell(c: WrkCase, stock_gbps: float | None) -> str:
    if c.server == "stock":
        return ""
    if c.paired:
        return f"{statistics.median(c.paired):.2f}x [{min(c.paired):.2f}-{max(c.paired):.2f}]"
    return f"{c.gbps / stock_gbps:.2f}x" if stock_gbps else ""


def run(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every selected wrk case on every selected loop; prints the table, returns the rows.
    The caller pins this process (the server) to its core; wrk goes on the next one."""
    reason = wrk_missing()
    if reason is not None:
        print(f"wrk cases skipped: {reason}")
        return {"skipped": reason, "cases": [], "ratios": {}}
    cases: list[WrkCase] = []
    for loop_name in opts.loops:
        cases += run_on(loop_name, _bench_loop(loop_name, opts, workdir))
    print_table(cases, opts)
    found = ratios(cases)
    for name, value in found.items():
        print(f"  {name:<32}{value:>6.2f}x")
    return {"cases": [asdict(c) for c in cases], "ratios": found}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wrk-cases", nargs="+", choices=list(WRK_CASES), default=list(WRK_CASES),
                        help="wrk cases to run (default: all)")
    parser.add_argument("--wrk-duration", type=int, default=DEFAULT_DURATION,
                        help="seconds per wrk run (whole seconds, as wrk takes them)")
    parser.add_argument("--wrk-rounds", type=int, default=DEFAULT_ROUNDS,
                        help="interleaved rounds per wrk case (the median paired ratio counts)")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                        help="wrk keep-alive connections")
    parser.add_argument("--zc-engine", default=None, choices=["auto", "msg_zerocopy", "io_uring", "copy"],
                        help="ZeroCopySite's engine (default: the transport's)")
