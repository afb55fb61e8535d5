"""What ``bench udp-sink`` runs inside its sink namespace: one case per fresh interpreter
(called through ``SinkNamespace.call``; ``bench instructions`` runs the same cases under
callgrind). A case sends ``count`` datagrams, slices of one 64 MiB buffer, and returns the
wall and CPU time of its sending phase (see :class:`Clock`) with its own counters.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from .benchkit import run_on  # uvloop with it: imported before any case's clock starts
from .netns import sink_rx_packets

MiB = 1 << 20
POOL_BYTES = 64 * MiB
DEFAULT_BATCH = 256
RAW_DRAIN_EVERY = 256
SINK_PORT = 9
# Case kinds that are aiozc transports (ratios, error-queue reads per zero-copy send).
AIOZC_KINDS = ("aiozc", "aiozc-coalesce", "aiozc-many", "aiozc-sendto")
# The C reference senders (aiozc.tools.cref): kind -> (function, its extra arguments).
C_PER_CALL = 32  # datagrams per sendmmsg call, SQEs per io_uring_enter
C_KINDS: dict[str, tuple[str, tuple[int, ...]]] = {
    "c-send": ("cref_send", ()),
    "c-zc": ("cref_send_zc", (RAW_DRAIN_EVERY,)),
    "c-mmsg": ("cref_sendmmsg_zc", (C_PER_CALL,)),
    "c-uring": ("cref_uring_send_zc", (C_PER_CALL, 0)),
    "c-uring-fixed": ("cref_uring_send_zc", (C_PER_CALL, 1)),
}


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


# (start, stop) callables run as each case's measured phase begins and ends: bench instructions
# puts callgrind's zero / dump client requests here.
CLOCK_HOOKS: list[tuple[Callable[[], None], Callable[[], None]]] = []


class Clock:
    """Wall and CPU time of a case's sending phase only.

    Interpreter start, imports (aiozc's own take ~0.1 s, uvloop's ~0.05 s, measured), loop and
    endpoint set-up stay outside: at 64000 B a case sends for ~0.5 s, so they would shift the
    ratios by up to 20%, and not by the same amount for every case.
    """

    def __init__(self) -> None:
        # (outside the hooks' window: bench instructions counts what the case itself runs)
        self.s0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        for start, _ in CLOCK_HOOKS:
            start()
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self, **info: Any) -> dict[str, Any]:
        seconds, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        for _, stop in CLOCK_HOOKS:
            stop()
        # The kernel's share (the copy, the UDP/IP stack, ifb's xmit): user and system are
        # split from the precise total by tick samples, so within a few percent.
        system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - self.s0
        return {"seconds": seconds, "cpu_s": cpu, "sys_s": system, **info}


def _raw_sendto(dst: str, views: list[memoryview], count: int) -> dict[str, Any]:
    sock = _raw_socket(dst, zerocopy=False)
    n = len(views)
    clock = Clock()
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
    clock = Clock()
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


async def _stock(
    dst: str, views: list[memoryview], count: int, aiozc_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``transport.sendto(view)`` in a loop, pausing when told to: on the loop's own transport,
    or on aiozc's when ``aiozc_options`` is given (its plain, copying sendto)."""
    loop = asyncio.get_running_loop()
    can_write = asyncio.Event()
    can_write.set()

    class Proto(asyncio.DatagramProtocol):
        def pause_writing(self) -> None:
            can_write.clear()

        def resume_writing(self) -> None:
            can_write.set()

    if aiozc_options is None:
        transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=(dst, SINK_PORT))
    else:
        transport, _ = await _endpoint(dst, aiozc_options, Proto)
    n = len(views)
    clock = Clock()
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
    clock = Clock()
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
    clock = Clock()
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


async def _endpoint(
    dst: str, options: dict[str, Any], protocol: Callable[[], asyncio.DatagramProtocol] = asyncio.DatagramProtocol
) -> Any:
    """The aiozc endpoint of a case; a BufferPool in ``options["pool"]`` is registered with
    this loop's ring first (fixed buffers)."""
    from ..datagram import create_datagram_endpoint

    options = dict(options)
    pool = options.pop("pool", None)
    if pool is not None:
        pool.register(asyncio.get_running_loop())
    return await create_datagram_endpoint(protocol, remote_addr=(dst, SINK_PORT), **options)


def _c_sender(dst: str, kind: str, size: int, count: int) -> dict[str, Any]:
    """A C reference loop over a 64 MiB buffer (the same walk); ``skipped`` says why not."""
    from . import cref

    built, reason = cref.load()
    if built is None:
        return {"skipped": reason}
    function, extra = C_KINDS[kind]
    pool = bytearray(os.urandom(MiB) * (POOL_BYTES // MiB))
    sock = _raw_socket(dst, zerocopy=kind != "c-send")
    result = built.new_result()
    send = getattr(built.lib, function)
    args = (sock.fileno(), built.pointer(pool), len(pool), size, count)
    clock = Clock()
    rc = send(*args, *extra, result)
    timed = clock.stop(**cref.result_dict(result))
    sock.close()
    if rc < 0:
        raise OSError(-rc, f"{function}: {os.strerror(-rc)}")
    timed["errqueue_reads"] = timed.pop("errq_reads")
    return timed


def measure_case(
    dst: str, kind: str, loop: str | None, size: int, count: int, window: int,
    options: dict[str, Any] | None = None, batch: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """One case, timed (its sending phase: see Clock): wall and CPU seconds, the sink's packet
    count, the case's own counters.
    ``options`` are aiozc transport options for the aiozc cases."""
    if kind in C_KINDS:
        rx0 = sink_rx_packets()
        info = _c_sender(dst, kind, size, count)
        return {"sink_rx": sink_rx_packets() - rx0, **info}
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
    elif kind == "aiozc-sendto":
        info = run_on(loop or "asyncio", _stock(dst, views, count, options or {}))
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


