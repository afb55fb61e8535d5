"""``python -m aiozc bench udp-sink``: UDP into an ifb sink, where MSG_ZEROCOPY really is zero-copy.

The bench builds a private network namespace with an ``ifb0`` device (see :mod:`aiozc.tools.netns`),
runs every case in a fresh interpreter inside it (``ip netns exec``) and deletes it afterwards.
ifb drops what it is handed, so the kernel releases zero-copy pages without copying them: this is
the one place on a single host where zero-copy sending can be measured for real (TCP to a local
receiver is always copied). Needs root.

Cases, for each datagram size (slices of one 64 MiB buffer, walked in order so the data is cold in
the cache when a copying send reads it):

* raw sendto: a plain Python loop of ``sock.send(slice)`` on a blocking socket.
* raw MSG_ZEROCOPY: the same with ``MSG_ZEROCOPY``, draining the error queue every 256 sends.
* asyncio stock: ``loop.create_datagram_endpoint`` + ``transport.sendto(slice)``, on asyncio's
  loop and on uvloop (both reported: uvloop's transport is a different implementation).
* aiozc sendto_zc: ``aiozc.create_datagram_endpoint`` + ``transport.sendto_zc(slice)``, keeping up
  to ``window`` futures outstanding (awaiting the oldest), which lets the kernel merge
  notifications; on both loops.
* aiozc sendto_zc_many: ``transport.sendto_zc_many(slices)`` with ``batch`` datagrams per call
  (one future and one tracker write per batch, sendmmsg underneath), keeping up to ``window``
  datagrams' worth of batch futures outstanding; on both loops. A different API, labeled as such:
  the sendto_zc rows stay the per-datagram figures.
* aiozc sendto_zc coalesced: the sendto_zc case on a transport made with ``coalesce_zc=True``
  (each datagram still its own call and future, sent by one sendmmsg per loop iteration).
* "io_uring" rows: the same three API cases with ``engine="io_uring"`` (IORING_OP_SEND_ZC), and
  "fixed" ones sending slices of an ``aiozc.BufferPool`` registered with the loop's ring; their
  "vs MSG_ZC" column compares them with the same API on MSG_ZEROCOPY, same loop.

Reported: GB/s (1e9 bytes / wall second), CPU seconds per GB (user + system of the sending process:
ifb transmits in the sender's context, so the kernel's share is counted too), ratios, and for aiozc
the error-queue reads per zero-copy send. The sink's rx_packets counter checks every datagram left.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import json
import os
import socket
import time
from typing import Any

from .benchkit import run_on, udp_sink  # uvloop with it: imported before any case's clock starts
from .netns import sink_rx_packets

MiB = 1 << 20
POOL_BYTES = 64 * MiB
DEFAULT_SIZES = (4096, 16384, 64000)
DEFAULT_COUNT = 100_000
DEFAULT_WINDOW = 256
DEFAULT_BATCH = 256
RAW_DRAIN_EVERY = 256
SINK_PORT = 9

# (series name, kind, loop) in table order; the loop is None for the raw socket loops.
VARIANTS: tuple[tuple[str, str, str | None], ...] = (
    ("raw sendto", "raw", None),
    ("raw MSG_ZEROCOPY", "raw-zc", None),
    ("asyncio stock (asyncio loop)", "stock", "asyncio"),
    ("asyncio stock (uvloop)", "stock", "uvloop"),
    ("aiozc sendto_zc (asyncio loop)", "aiozc", "asyncio"),
    ("aiozc sendto_zc (uvloop)", "aiozc", "uvloop"),
    ("aiozc sendto_zc coalesced (asyncio loop)", "aiozc-coalesce", "asyncio"),
    ("aiozc sendto_zc coalesced (uvloop)", "aiozc-coalesce", "uvloop"),
    ("aiozc sendto_zc_many (asyncio loop)", "aiozc-many", "asyncio"),
    ("aiozc sendto_zc_many (uvloop)", "aiozc-many", "uvloop"),
    # engine="io_uring" (IORING_OP_SEND_ZC): the same API calls, only the engine differs;
    # "fixed": the slices come from an aiozc.BufferPool registered with the loop's ring.
    ("aiozc sendto_zc io_uring (asyncio loop)", "aiozc+uring", "asyncio"),
    ("aiozc sendto_zc io_uring (uvloop)", "aiozc+uring", "uvloop"),
    ("aiozc sendto_zc io_uring fixed (asyncio loop)", "aiozc+uring-fixed", "asyncio"),
    ("aiozc sendto_zc io_uring fixed (uvloop)", "aiozc+uring-fixed", "uvloop"),
    ("aiozc sendto_zc coalesced io_uring (asyncio loop)", "aiozc-coalesce+uring", "asyncio"),
    ("aiozc sendto_zc coalesced io_uring (uvloop)", "aiozc-coalesce+uring", "uvloop"),
    ("aiozc sendto_zc coalesced io_uring fixed (asyncio loop)", "aiozc-coalesce+uring-fixed", "asyncio"),
    ("aiozc sendto_zc coalesced io_uring fixed (uvloop)", "aiozc-coalesce+uring-fixed", "uvloop"),
    ("aiozc sendto_zc_many io_uring (asyncio loop)", "aiozc-many+uring", "asyncio"),
    ("aiozc sendto_zc_many io_uring (uvloop)", "aiozc-many+uring", "uvloop"),
    ("aiozc sendto_zc_many io_uring fixed (asyncio loop)", "aiozc-many+uring-fixed", "asyncio"),
    ("aiozc sendto_zc_many io_uring fixed (uvloop)", "aiozc-many+uring-fixed", "uvloop"),
)
# Case kinds that are aiozc transports (ratios, error-queue reads per zero-copy send).
AIOZC_KINDS = ("aiozc", "aiozc-coalesce", "aiozc-many")
# io_uring cases: "<aiozc kind>+uring[-fixed]", compared with the same API on MSG_ZEROCOPY.
URING_KINDS = tuple(
    f"{k}+uring{f}" for k in ("aiozc", "aiozc-coalesce", "aiozc-many") for f in ("", "-fixed")
)
# The per-datagram API (one sendto_zc() call and one future per datagram), in each of its
# modes and engines: what the 1.6x target is about.
SENDTO_ZC_KINDS = ("aiozc", "aiozc-coalesce") + tuple(
    k for k in URING_KINDS if not k.startswith("aiozc-many")
)
TARGET_URING_VS_MSG_ZEROCOPY = 1.2

TARGET_RATIO_AT_64000 = 1.6
TARGET_ERRQ_READS_PER_ZC_SEND = 0.05


# ----------------------------------------------------------------------------------------------
# Inside the namespace: one case per fresh interpreter (called through SinkNamespace.call).


def _pool_slices(size: int) -> tuple[Any, list[memoryview]]:
    """The same walk over a 64 MiB aiozc.BufferPool (fixed buffers once registered with the
    loop's ring; each slot is page-aligned, so 64000 B slots take 64 KiB)."""
    from ..buffers import BufferPool

    pool = BufferPool(size, POOL_BYTES // (-(-size // 4096) * 4096), register=False)
    chunk = os.urandom(MiB)
    pool.region[:] = (chunk * (len(pool.region) // MiB + 1))[: len(pool.region)]
    return pool, list(pool)


def _split_kind(kind: str, options: dict[str, Any] | None) -> tuple[str, dict[str, Any], bool]:
    """("aiozc-many+uring-fixed", opts) -> ("aiozc-many", opts + engine, fixed buffers?)."""
    opts = dict(options or {})
    base, _, variant = kind.partition("+")
    if base in AIOZC_KINDS:
        opts["engine"] = "io_uring" if variant else "msg_zerocopy"
    return base, opts, variant.endswith("-fixed")


def _slices(size: int) -> list[memoryview]:
    """Consecutive ``size``-byte slices of a 64 MiB buffer: a walk that keeps the cache cold."""
    pool = memoryview(bytearray(os.urandom(MiB) * (POOL_BYTES // MiB)))
    return [pool[off : off + size] for off in range(0, POOL_BYTES - size + 1, size)]


def _raw_socket(dst: str, zerocopy: bool) -> socket.socket:
    from .._sys import kernel as _kernel

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if zerocopy:
        reason = _kernel.enable_zerocopy(sock)
        if reason is not None:
            raise OSError(reason)
    sock.connect((dst, SINK_PORT))
    return sock


class _Clock:
    """Wall and CPU time of a case's sending phase only.

    Interpreter start, imports (aiozc's own take ~0.1 s, uvloop's ~0.05 s, measured), loop and
    endpoint set-up stay outside: at 64000 B a case sends for ~0.5 s, so they would shift the
    ratios by up to 20%, and not by the same amount for every case.
    """

    def __init__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self, **info: Any) -> dict[str, Any]:
        seconds, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        return {"seconds": seconds, "cpu_s": cpu, **info}


def _raw_sendto(dst: str, views: list[memoryview], count: int) -> dict[str, Any]:
    sock = _raw_socket(dst, zerocopy=False)
    n = len(views)
    clock = _Clock()
    for i in range(count):
        sock.send(views[i % n])
    timed = clock.stop()
    sock.close()
    return timed


def _raw_zerocopy(dst: str, views: list[memoryview], count: int) -> dict[str, Any]:
    """MSG_ZEROCOPY as a hand-written loop would do it: drain now and then, copy on ENOBUFS."""
    from .._sys import kernel as _kernel

    sock = _raw_socket(dst, zerocopy=True)
    n = len(views)
    reads = enobufs = 0
    clock = _Clock()
    for i in range(count):
        try:
            sock.send(views[i % n], _kernel.MSG_ZEROCOPY)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            enobufs += 1
            sock.send(views[i % n])
        if i % RAW_DRAIN_EVERY == RAW_DRAIN_EVERY - 1:
            reads += len(_kernel.read_errqueue(sock, 1 << 16)) + 1
    timed = clock.stop(errqueue_reads=reads, enobufs=enobufs)
    sock.close()
    return timed


async def _stock(dst: str, views: list[memoryview], count: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    can_write = asyncio.Event()
    can_write.set()

    class Proto(asyncio.DatagramProtocol):
        def pause_writing(self) -> None:
            can_write.clear()

        def resume_writing(self) -> None:
            can_write.set()

    transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=(dst, SINK_PORT))
    n = len(views)
    clock = _Clock()
    for i in range(count):
        if not can_write.is_set():
            await can_write.wait()
        transport.sendto(views[i % n])
    # Until what had to wait for socket space is sent too. (get_write_buffer_size(): asyncio's
    # datagram transport has it, typeshed's DatagramTransport does not.)
    while transport.get_write_buffer_size():  # type: ignore[attr-defined]
        await asyncio.sleep(0)
    timed = clock.stop()
    transport.close()
    await asyncio.sleep(0)
    return timed


async def _aiozc(
    dst: str, views: list[memoryview], count: int, window: int, options: dict[str, Any]
) -> dict[str, Any]:
    transport, _ = await _endpoint(dst, options)
    n = len(views)
    outstanding: collections.deque[asyncio.Future[Any]] = collections.deque()
    zerocopy = 0
    clock = _Clock()
    for i in range(count):
        outstanding.append(transport.sendto_zc(views[i % n]))
        if len(outstanding) >= window:
            zerocopy += (await outstanding.popleft()).zerocopy
    for future in outstanding:
        zerocopy += (await future).zerocopy
    stats = transport.stats
    transport.close()
    return clock.stop(**{
        "zerocopy_writes": zerocopy,
        "zc_sends": stats.zc_sends,
        "errqueue_reads": stats.errqueue_reads,
        "enobufs": stats.enobufs,
        "state": stats.state,
    })


async def _aiozc_many(
    dst: str, views: list[memoryview], count: int, window: int, batch: int, options: dict[str, Any]
) -> dict[str, Any]:
    transport, _ = await _endpoint(dst, options)
    n = len(views)
    outstanding: collections.deque[asyncio.Future[Any]] = collections.deque()
    max_batches = max(1, window // batch)
    zerocopy = 0
    clock = _Clock()
    for start in range(0, count, batch):
        first = start % n
        stop = first + min(batch, count - start)
        chunk = views[first:stop] if stop <= n else views[first:] + views[: stop - n]
        outstanding.append(transport.sendto_zc_many(chunk))
        if len(outstanding) >= max_batches:
            done = await outstanding.popleft()
            zerocopy += done.zc_sends - done.copied_sends
    for future in outstanding:
        done = await future
        zerocopy += done.zc_sends - done.copied_sends
    stats = transport.stats
    transport.close()
    return clock.stop(**{
        "zerocopy_writes": zerocopy,  # datagrams sent zero-copy, here
        "zc_sends": stats.zc_sends,
        "errqueue_reads": stats.errqueue_reads,
        "enobufs": stats.enobufs,
        "state": stats.state,
    })


async def _endpoint(dst: str, options: dict[str, Any]) -> Any:
    """The aiozc endpoint of a case; a BufferPool in ``options["pool"]`` is registered with
    this loop's ring first (fixed buffers)."""
    from ..datagram import create_datagram_endpoint

    options = dict(options)
    pool = options.pop("pool", None)
    if pool is not None:
        pool.register(asyncio.get_running_loop())
    return await create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(dst, SINK_PORT), **options
    )


def measure_case(
    dst: str, kind: str, loop: str | None, size: int, count: int, window: int,
    options: dict[str, Any] | None = None, batch: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """One case, timed (its sending phase: see _Clock): wall and CPU seconds, the sink's packet
    count, the case's own counters.
    ``options`` are aiozc transport options for the aiozc cases."""
    kind, options, fixed = _split_kind(kind, options)
    if fixed:
        options["pool"], views = _pool_slices(size)
    else:
        views = _slices(size)
    rx0 = sink_rx_packets()
    if kind == "raw":
        info = _raw_sendto(dst, views, count)
    elif kind == "raw-zc":
        info = _raw_zerocopy(dst, views, count)
    elif kind == "stock":
        info = run_on(loop or "asyncio", _stock(dst, views, count))
    elif kind == "aiozc":
        info = run_on(loop or "asyncio", _aiozc(dst, views, count, window, options or {}))
    elif kind == "aiozc-coalesce":
        coalesce = {**(options or {}), "coalesce_zc": True}
        info = run_on(loop or "asyncio", _aiozc(dst, views, count, window, coalesce))
    elif kind == "aiozc-many":
        info = run_on(
            loop or "asyncio", _aiozc_many(dst, views, count, window, batch, options or {})
        )
    else:
        raise ValueError(f"unknown case kind {kind!r}")
    return {"sink_rx": sink_rx_packets() - rx0, **info}


# ----------------------------------------------------------------------------------------------
# Outside: build the namespace, run the cases, summarise.


def _row(series: str, kind: str, loop: str | None, size: int, count: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run
    nbytes = size * count
    row: dict[str, Any] = {
        "size": size,
        "series": series,
        "kind": kind,
        "loop": loop or "-",
        "datagrams": count,
        "gbps": nbytes / best["seconds"] / 1e9,
        "cpu_s_per_gb": best["cpu_s"] / (nbytes / 1e9),
        "seconds": best["seconds"],
        "cpu_s": best["cpu_s"],
        "sink_rx": best["sink_rx"],
        "runs_gbps": [nbytes / r["seconds"] / 1e9 for r in runs],
    }
    for key in ("zc_sends", "errqueue_reads", "enobufs", "state", "zerocopy_writes"):
        if key in best:
            row[key] = best[key]
    if best.get("zc_sends"):
        row["errq_reads_per_zc_send"] = best["errqueue_reads"] / best["zc_sends"]
    return row


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Throughput ratios, and CPU-efficiency ratios (stock CPU s/GB over this row's): on two
    shared cores the wall clock also measures the neighbours, CPU time much less so."""
    stock = {(r["size"], r["loop"]): r for r in rows if r["kind"] == "stock"}
    raw = {r["size"]: r["gbps"] for r in rows if r["kind"] == "raw"}
    for row in rows:
        base = stock.get((row["size"], row["loop"]))
        if base is not None:
            row["vs_stock_same_loop"] = row["gbps"] / base["gbps"]
            row["cpu_vs_stock_same_loop"] = base["cpu_s_per_gb"] / row["cpu_s_per_gb"]
        if row["size"] in raw:
            row["vs_raw_sendto"] = row["gbps"] / raw[row["size"]]
    # io_uring rows against the same API on MSG_ZEROCOPY, same loop.
    msg_zc = {(r["size"], r["loop"], r["kind"]): r for r in rows if r["kind"] in AIOZC_KINDS}
    for row in rows:
        if row["kind"] in URING_KINDS:
            base = msg_zc.get((row["size"], row["loop"], row["kind"].partition("+")[0]))
            if base is not None:
                row["vs_msg_zerocopy"] = row["gbps"] / base["gbps"]
                row["cpu_vs_msg_zerocopy"] = base["cpu_s_per_gb"] / row["cpu_s_per_gb"]


def _summary(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, bool]]:
    ratios: dict[str, float] = {}
    for row in rows:
        if row["kind"] in AIOZC_KINDS and "vs_stock_same_loop" in row:
            what = {"aiozc": "aiozc", "aiozc-coalesce": "aiozc coalesced"}.get(row["kind"], "aiozc many")
            ratios[f"{row['size']} B {what}/stock GB/s ({row['loop']})"] = row["vs_stock_same_loop"]
            ratios[f"{row['size']} B {what}/stock CPU efficiency ({row['loop']})"] = row[
                "cpu_vs_stock_same_loop"
            ]
    for row in rows:
        if row["kind"] == "raw-zc" and row["size"] in {r["size"] for r in rows if r["kind"] == "raw"}:
            ratios[f"{row['size']} B raw MSG_ZEROCOPY / raw sendto GB/s"] = row["vs_raw_sendto"]
    big = [r for r in rows if r["size"] == 64000]
    aiozc_best = max((r["gbps"] for r in big if r["kind"] == "aiozc"), default=0.0)
    stock_best = max((r["gbps"] for r in big if r["kind"] == "stock"), default=0.0)
    if aiozc_best and stock_best:
        ratios["64000 B best aiozc / best stock"] = aiozc_best / stock_best
    per_loop = [r["vs_stock_same_loop"] for r in big if r["kind"] == "aiozc" and "vs_stock_same_loop" in r]
    many = [r["vs_stock_same_loop"] for r in big if r["kind"] == "aiozc-many" and "vs_stock_same_loop" in r]
    coalesced = [
        r["vs_stock_same_loop"] for r in big if r["kind"] == "aiozc-coalesce" and "vs_stock_same_loop" in r
    ]
    reads = [
        r["errq_reads_per_zc_send"] for r in rows if r["kind"] in AIOZC_KINDS and "errq_reads_per_zc_send" in r
    ]
    targets: dict[str, bool] = {}
    # The best sendto_zc() mode on each loop (MSG_ZEROCOPY or io_uring, sent during the call
    # or coalesced per loop iteration): the per-datagram API against stock sendto().
    best_sendto_zc: dict[str, dict[str, Any]] = {}
    for row in big:
        if row["kind"] in SENDTO_ZC_KINDS and "vs_stock_same_loop" in row:
            held = best_sendto_zc.get(row["loop"])
            if held is None or row["vs_stock_same_loop"] > held["vs_stock_same_loop"]:
                best_sendto_zc[row["loop"]] = row
    for loop, row in sorted(best_sendto_zc.items()):
        ratios[f"64000 B best sendto_zc mode/stock GB/s ({loop}): {row['series']}"] = row[
            "vs_stock_same_loop"
        ]
    if best_sendto_zc:
        targets[
            f"64000 B aiozc sendto_zc (one call, one future per datagram; best mode) >= "
            f"{TARGET_RATIO_AT_64000}x stock on each loop, in GB/s and CPU efficiency"
        ] = all(
            min(r["vs_stock_same_loop"], r["cpu_vs_stock_same_loop"]) >= TARGET_RATIO_AT_64000
            for r in best_sendto_zc.values()
        )
    if per_loop:
        targets[f"64000 B aiozc sendto_zc sent during the call (MSG_ZEROCOPY) >= {TARGET_RATIO_AT_64000}x stock on each loop"] = min(per_loop) >= TARGET_RATIO_AT_64000
    if coalesced:
        targets[f"64000 B aiozc sendto_zc coalesced (MSG_ZEROCOPY) >= {TARGET_RATIO_AT_64000}x stock on each loop"] = (
            min(coalesced) >= TARGET_RATIO_AT_64000
        )
    if many:
        targets[f"64000 B aiozc sendto_zc_many (MSG_ZEROCOPY) >= {TARGET_RATIO_AT_64000}x stock on each loop"] = (
            min(many) >= TARGET_RATIO_AT_64000
        )
    if reads:
        targets[f"errqueue reads per zero-copy send <= {TARGET_ERRQ_READS_PER_ZC_SEND}"] = (
            max(reads) <= TARGET_ERRQ_READS_PER_ZC_SEND
        )
    uring = [r for r in big if "vs_msg_zerocopy" in r]
    for row in uring:
        ratios[f"64000 B {row['series']} / MSG_ZEROCOPY GB/s"] = row["vs_msg_zerocopy"]
        ratios[f"64000 B {row['series']} / MSG_ZEROCOPY CPU efficiency"] = row["cpu_vs_msg_zerocopy"]
    if uring:
        # Judged on both wall clock and CPU time: on two shared cores a neighbour can slow one
        # row's wall clock alone (seen: a MSG_ZEROCOPY row at 0.82x of stock GB/s with the
        # same CPU s/GB as the other loop's 1.12x), which is no win for io_uring.
        best: dict[str, float] = {}  # per loop: the best io_uring row
        for r in uring:
            worse = min(r["vs_msg_zerocopy"], r["cpu_vs_msg_zerocopy"])
            best[r["loop"]] = max(best.get(r["loop"], 0.0), worse)
        targets[
            f"64000 B aiozc io_uring >= {TARGET_URING_VS_MSG_ZEROCOPY}x MSG_ZEROCOPY, same API and "
            "loop, in GB/s and CPU efficiency (best row on each loop)"
        ] = min(best.values()) >= TARGET_URING_VS_MSG_ZEROCOPY
    lost = [r for r in rows if r["sink_rx"] != r["datagrams"]]
    targets["every datagram reached the sink"] = not lost
    return ratios, targets


def print_table(result: dict[str, Any]) -> None:
    opts = result["options"]
    print(
        f"UDP into an ifb sink (true zero-copy), {opts['count']} datagrams per case, slices of a "
        f"{POOL_BYTES // MiB} MiB buffer, median of {opts['repeat']} interleaved rounds; aiozc window {opts['window']}"
        f", sendto_zc_many batch {opts.get('batch', DEFAULT_BATCH)}"
    )
    header = (
        f"{'size':>7}  {'series':<56}{'GB/s':>7}{'CPU s/GB':>10}{'vs stock':>10}{'CPU vs':>8}"
        f"{'vs MSG_ZC':>11}{'zc sends':>10}{'errq/zc':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        mine = "vs_stock_same_loop" in row and row["kind"] != "stock"
        ratio = f"{row['vs_stock_same_loop']:.2f}x" if mine else ""
        cpu_ratio = f"{row['cpu_vs_stock_same_loop']:.2f}x" if mine else ""
        zc = f"{row['zc_sends']}" if "zc_sends" in row else ""
        errq = f"{row['errq_reads_per_zc_send']:.4f}" if "errq_reads_per_zc_send" in row else ""
        vs_zc = f"{row['vs_msg_zerocopy']:.2f}x" if "vs_msg_zerocopy" in row else ""
        print(
            f"{row['size']:>7}  {row['series']:<56}{row['gbps']:>7.2f}{row['cpu_s_per_gb']:>10.3f}"
            f"{ratio:>10}{cpu_ratio:>8}{vs_zc:>11}{zc:>10}{errq:>9}"
        )
    print()
    for name, value in result["ratios"].items():
        print(f"  {name:<88}{value:>6.2f}x")
    for name, ok in result["targets"].items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")


def _options(args: Any) -> argparse.Namespace:
    """Defaults for every knob, so ``run`` takes the CLI's namespace, a partial one, or None."""
    return argparse.Namespace(
        sizes=list(getattr(args, "sizes", None) or DEFAULT_SIZES),
        count=getattr(args, "count", None) or DEFAULT_COUNT,
        window=getattr(args, "window", None) or DEFAULT_WINDOW,
        batch=getattr(args, "batch", None) or DEFAULT_BATCH,
        repeat=getattr(args, "repeat", None) or 1,
        loops=list(getattr(args, "loops", None) or ["asyncio", "uvloop"]),
        drain_every=getattr(args, "drain_every", None),
        zc_threshold=getattr(args, "zc_threshold", None),
    )


def _selected(loops: list[str]) -> list[tuple[str, str, str | None]]:
    return [v for v in VARIANTS if v[2] is None or v[2] in loops]


def run(args: Any = None) -> dict[str, Any]:
    """Build a sink namespace, run every case inside it, print the table, return the numbers.

    ``args``: an argparse namespace (or anything) with optional ``sizes``, ``count``, ``window``,
    ``repeat``, ``loops``; missing ones take the defaults. Root only.
    """
    from .netns import netns_available

    if os.geteuid() != 0:
        raise SystemExit("bench udp-sink needs root: it creates a network namespace with an ifb device")
    reason = netns_available()
    if reason is not None:
        raise SystemExit(f"bench udp-sink cannot build its sink namespace: {reason}")
    opts = _options(args)
    options: dict[str, Any] = {}
    if opts.drain_every is not None:
        options["errqueue_drain_every"] = opts.drain_every
    if opts.zc_threshold is not None:
        options["zc_threshold"] = opts.zc_threshold
    rows: list[dict[str, Any]] = []
    with udp_sink() as ns:
        variants = _selected(opts.loops)
        for size in opts.sizes:
            # Rounds interleave the cases (every case once per round), so a noisy neighbour on
            # the shared cores hits all of them alike; the median run of each case is kept.
            runs: dict[str, list[dict[str, Any]]] = {series: [] for series, _, _ in variants}
            for _ in range(opts.repeat):
                for series, kind, loop in variants:
                    runs[series].append(
                        ns.call(
                            measure_case, ns.sink_addr, kind, loop, size, opts.count, opts.window,
                            options, opts.batch, timeout=300,
                        )
                    )
            for series, kind, loop in variants:
                rows.append(_row(series, kind, loop, size, opts.count, runs[series]))
    _add_ratios(rows)
    ratios, targets = _summary(rows)
    result = {
        "bench": "udp-sink",
        "options": vars(opts),
        "rows": rows,
        "ratios": ratios,
        "targets": targets,
        "plot": {
            "title": "UDP into an ifb sink (true zero-copy), one process per case",
            "xlabel": "datagram size",
        },
    }
    print_table(result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs, for ``python -m aiozc bench udp-sink``."""
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="datagram sizes (B)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="datagrams per case")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="aiozc futures outstanding")
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="datagrams per sendto_zc_many call"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (median counts)")
    parser.add_argument("--loops", nargs="+", default=["asyncio", "uvloop"], choices=["asyncio", "uvloop"])
    parser.add_argument(
        "--drain-every", type=int, default=None,
        help="aiozc errqueue_drain_every transport option (default: the transport's)",
    )
    parser.add_argument(
        "--zc-threshold", type=int, default=None,
        help="aiozc zc_threshold transport option (default: the transport's)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aiozc.tools.bench_udp", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--out", help="write udp-sink.json and udp-sink.png into this directory")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    result = run(args)
    if args.out:
        from .report import write_report

        print("wrote " + ", ".join(map(str, write_report(args.out, "udp-sink", result))))
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
