"""``python -m aiozc bench tensors``: float32 arrays between two processes on loopback.

Each case streams ``frames`` arrays of one size from this process (the sender) to a receiver
process started with multiprocessing's ``spawn``, and times from the first send until the
receiver acknowledges the last frame (so the receive side is fully included). Peers:

* ``aiozc.tensors``: ``chan.send(arr)`` (two frames in flight) / ``chan.recv(out=buf)`` into
  one preallocated ``np.empty`` array (16 bytes past a page for 1 MiB and more), on uvloop.
  Variants on the receive side only (issue #14: aligned destinations):
  ``out=aligned_empty`` (a page-aligned ``out``), ``recv() allocates`` (the channel's own
  page-aligned arrays), and ``recv() allocates np.empty`` (the channel's allocation before
  #14, for a before/after in one run).
* ``asyncio streams + pickle 5``: ``pickle.dumps(arr, protocol=5, buffer_callback=...)`` with
  the out-of-band buffer written straight from the array, ``readexactly`` + ``pickle.loads``
  on the other side, on uvloop, StreamReader limit raised to 4 MiB.
* ``multiprocessing.connection``: ``send_bytes(arr)`` / ``recv_bytes_into(buf)`` over TCP.
* ``pyzmq copy=False`` (if pyzmq is installed): PAIR sockets over TCP, ``send(arr,
  copy=False)`` / ``recv(copy=False)`` + ``np.frombuffer``.

On loopback the kernel copies TCP data on both ends whatever the sender asks for, so every peer
pays the same two kernel copies; differences come from user space: extra copies, pickling,
fresh allocations (page faults on every large message) and syscall counts. aiozc receives each
body with ``recv_into`` straight into the reused destination array.

Each case also reports the receiver process's CPU time (user + system, ``getrusage``) over the
timed frames, per 1e9 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import multiprocessing
import os
import pickle
import resource
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .benchkit import run_on

MiB = 1 << 20
HOST = "127.0.0.1"
WARMUP_FRAMES = 2
DEFAULT_SIZES_MIB = (1, 16, 64)
DEFAULT_TOTAL_MIB = 512
AIOZC = "aiozc.tensors"
AIOZC_ALIGNED_OUT = "aiozc.tensors, out=aligned_empty"
AIOZC_FRESH = "aiozc.tensors, recv() allocates"
AIOZC_FRESH_NP = "aiozc.tensors, recv() allocates np.empty"
AIOZC_SERIES = (AIOZC, AIOZC_ALIGNED_OUT, AIOZC_FRESH, AIOZC_FRESH_NP)
# --peers key -> the name in tables and JSON rows
PEERS = {
    "aiozc": AIOZC,
    "aiozc-aligned": AIOZC_ALIGNED_OUT,
    "aiozc-fresh": AIOZC_FRESH,
    "aiozc-fresh-np": AIOZC_FRESH_NP,
    "pickle5": "asyncio streams + pickle5",
    "mp": "multiprocessing.connection",
    "zmq": "pyzmq copy=False",
}
PEER_NAMES = tuple(PEERS.values())


@dataclass
class Case:
    series: str
    size: int  # bytes per array
    frames: int
    seconds: float
    gbps: float  # 1e9 bytes per second of array payload (median over runs)
    runs_gbps: list[float] = field(default_factory=list)
    receiver_cpu_ms_per_gb: float = 0.0  # receiver user + sys over the timed frames (median)
    runs_receiver_cpu: list[float] = field(default_factory=list)


class _ReceiverCpu:
    """The receiver process's CPU time from the first timed frame to the last."""

    def __init__(self) -> None:
        self._start = 0.0
        self.seconds = 0.0

    @staticmethod
    def _now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def before_frame(self, index: int) -> None:
        if index == WARMUP_FRAMES:
            self._start = self._now()

    def stop(self) -> None:
        self.seconds = self._now() - self._start


def _expected_value(index: int) -> float:
    return float(index % 1000)


def _stamp(array: np.ndarray, index: int) -> None:
    """Mark an array so the receiver can check it got frame ``index`` whole."""
    array[0] = array[-1] = _expected_value(index)


def _check(array: np.ndarray, index: int) -> None:
    if array[0] != _expected_value(index) or array[-1] != _expected_value(index):
        raise AssertionError(f"frame {index} arrived damaged: {array[0]}, {array[-1]}")


# ---------------------------------------------------------------------------------------------
# aiozc.tensors


async def _aiozc_receive(nbytes: int, total: int, report: Connection, series: str = AIOZC) -> None:
    from aiozc import tensors

    done = asyncio.get_running_loop().create_future()
    out: np.ndarray | None = np.empty(nbytes // 4, np.float32)
    if series == AIOZC_ALIGNED_OUT:
        out = tensors.aligned_empty(nbytes // 4, np.float32)
    elif series in (AIOZC_FRESH, AIOZC_FRESH_NP):
        out = None
    if series == AIOZC_FRESH_NP:
        from aiozc.tensors import receive

        receive.allocate = lambda header: np.empty(header.shape, header.dtype)  # before #14
    cpu = _ReceiverCpu()

    async def handler(chan: tensors.Channel) -> None:
        for i in range(total):
            cpu.before_frame(i)
            _check(await chan.recv(out=out), i)
        cpu.stop()
        report.send(cpu.seconds)
        await chan.send(np.zeros(1, np.uint8))
        await chan.wait_closed()
        done.set_result(None)

    server = await tensors.serve(handler, HOST, 0)
    report.send(server.sockets[0].getsockname()[1])
    await done
    server.close()


async def _aiozc_send(port: int, array: np.ndarray, total: int) -> float:
    from aiozc import tensors

    chan = await tensors.connect(HOST, port)
    in_flight: collections.deque[asyncio.Future[Any]] = collections.deque()
    # Two arrays alternate so one can be stamped while the other is still pinned for sending.
    arrays = [array, array.copy()]
    started = 0.0
    for i in range(total):
        if i == WARMUP_FRAMES:
            await asyncio.gather(*in_flight)
            in_flight.clear()
            started = time.perf_counter()
        while len(in_flight) >= 2:
            await in_flight.popleft()
        current = arrays[i % 2]
        _stamp(current, i)
        await chan.drain()
        in_flight.append(chan.send_nowait(current))
    await asyncio.gather(*in_flight)
    await chan.recv()  # the receiver's ack: it has every frame
    elapsed = time.perf_counter() - started
    chan.close()
    await chan.wait_closed()
    return elapsed


# ---------------------------------------------------------------------------------------------
# asyncio streams + pickle protocol 5

_PICKLE_HEAD = struct.Struct("<QI")
_LEN = struct.Struct("<Q")
STREAM_LIMIT = 4 * MiB


async def _pickle_receive(nbytes: int, total: int, report: Connection) -> None:
    done = asyncio.get_running_loop().create_future()

    cpu = _ReceiverCpu()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(total):
            cpu.before_frame(i)
            head_len, nbuffers = _PICKLE_HEAD.unpack(await reader.readexactly(_PICKLE_HEAD.size))
            head = await reader.readexactly(head_len)
            buffers = []
            for _ in range(nbuffers):
                (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
                buffers.append(await reader.readexactly(size))
            _check(pickle.loads(head, buffers=buffers), i)
        cpu.stop()
        report.send(cpu.seconds)
        writer.write(b"k")
        await writer.drain()
        writer.close()
        done.set_result(None)

    server = await asyncio.start_server(handler, HOST, 0, limit=STREAM_LIMIT)
    report.send(server.sockets[0].getsockname()[1])
    await done
    server.close()


def _pickle_frame(array: np.ndarray) -> list[bytes | memoryview]:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    parts: list[bytes | memoryview] = [_PICKLE_HEAD.pack(len(head), len(buffers)) + head]
    for buffer in buffers:
        raw = buffer.raw()
        parts += [_LEN.pack(raw.nbytes), raw]
    return parts


async def _pickle_send(port: int, array: np.ndarray, total: int) -> float:
    reader, writer = await asyncio.open_connection(HOST, port, limit=STREAM_LIMIT)
    arrays = [array, array.copy()]  # drain() may leave < 64 KiB of the last one queued
    started = 0.0
    for i in range(total):
        if i == WARMUP_FRAMES:
            started = time.perf_counter()
        current = arrays[i % 2]
        _stamp(current, i)
        writer.writelines(_pickle_frame(current))
        await writer.drain()
    await reader.readexactly(1)
    elapsed = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    return elapsed


# ---------------------------------------------------------------------------------------------
# multiprocessing.connection


def _mp_receive(nbytes: int, total: int, report: Connection) -> None:
    from multiprocessing.connection import Listener

    out = np.empty(nbytes // 4, np.float32)
    cpu = _ReceiverCpu()
    with Listener((HOST, 0)) as listener:
        report.send(listener.address[1])
        with listener.accept() as conn:
            for i in range(total):
                cpu.before_frame(i)
                conn.recv_bytes_into(out)
                _check(out, i)
            cpu.stop()
            report.send(cpu.seconds)
            conn.send_bytes(b"k")


def _mp_send(port: int, array: np.ndarray, total: int) -> float:
    from multiprocessing.connection import Client

    buf: Any = array  # numpy's stubs don't declare Buffer
    started = 0.0
    with Client((HOST, port)) as conn:
        for i in range(total):
            if i == WARMUP_FRAMES:
                started = time.perf_counter()
            _stamp(array, i)
            conn.send_bytes(memoryview(buf).cast("B"))
        conn.recv_bytes()
        return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# pyzmq


def _zmq_receive(nbytes: int, total: int, report: Connection) -> None:
    import zmq

    with zmq.Context() as ctx, ctx.socket(zmq.PAIR) as sock:
        report.send(sock.bind_to_random_port(f"tcp://{HOST}"))
        cpu = _ReceiverCpu()
        for i in range(total):
            cpu.before_frame(i)
            frame = sock.recv(copy=False)
            _check(np.frombuffer(frame.buffer, np.float32), i)
        cpu.stop()
        report.send(cpu.seconds)
        sock.send(b"k")
        sock.recv()  # the sender's goodbye, so nothing is lost in linger


def _zmq_send(port: int, array: np.ndarray, total: int) -> float:
    import zmq

    with zmq.Context() as ctx, ctx.socket(zmq.PAIR) as sock:
        sock.connect(f"tcp://{HOST}:{port}")
        arrays: list[Any] = [array, array.copy()]  # numpy's stubs don't declare Buffer
        trackers: collections.deque[Any] = collections.deque()
        started = 0.0
        for i in range(total):
            if i == WARMUP_FRAMES:
                started = time.perf_counter()
            while len(trackers) >= 2:
                trackers.popleft().wait()  # libzmq released that array: safe to stamp again
            current = arrays[i % 2]
            _stamp(current, i)
            trackers.append(sock.send(memoryview(current), copy=False, track=True))
        sock.recv()
        elapsed = time.perf_counter() - started
        sock.send(b"bye")
        return elapsed


# ---------------------------------------------------------------------------------------------
# running cases


def _receiver_main(peer: str, nbytes: int, total: int, report: Connection) -> None:
    """Entry point of the receiver process (module level so ``spawn`` can import it)."""
    if peer in AIOZC_SERIES:
        run_on("uvloop", _aiozc_receive(nbytes, total, report, peer))
    elif peer == "asyncio streams + pickle5":
        run_on("uvloop", _pickle_receive(nbytes, total, report))
    elif peer == "multiprocessing.connection":
        _mp_receive(nbytes, total, report)
    else:
        _zmq_receive(nbytes, total, report)


def _sender(peer: str) -> Callable[[int, np.ndarray, int], float]:
    if peer in AIOZC_SERIES:
        return lambda port, array, total: run_on("uvloop", _aiozc_send(port, array, total))
    if peer == "asyncio streams + pickle5":
        return lambda port, array, total: run_on("uvloop", _pickle_send(port, array, total))
    if peer == "multiprocessing.connection":
        return _mp_send
    return _zmq_send


def _available(peers: list[str]) -> list[str]:
    usable = []
    for peer in peers:
        if peer == "pyzmq copy=False" and importlib.util.find_spec("zmq") is None:
            print("pyzmq not installed: skipping its peer")
            continue
        usable.append(peer)
    return usable


def run_case(peer: str, size: int, frames: int) -> Case:
    """Stream ``frames`` arrays of ``size`` bytes to a fresh receiver process; time it."""
    total = frames + WARMUP_FRAMES
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=_receiver_main, args=(peer, size, total, child), daemon=True)
    receiver.start()
    try:
        if not parent.poll(60):
            raise RuntimeError(f"{peer} receiver did not start")
        port = parent.recv()
        array = np.random.default_rng(0).random(size // 4, dtype=np.float32)
        seconds = _sender(peer)(port, array, total)
        if not parent.poll(30):
            raise RuntimeError(f"{peer} receiver sent no CPU time")
        cpu_seconds = parent.recv()
        receiver.join(30)
        if receiver.exitcode != 0:
            raise RuntimeError(f"{peer} receiver failed (exit code {receiver.exitcode})")
    finally:
        if receiver.is_alive():
            receiver.kill()
            receiver.join()
    cpu_ms_per_gb = cpu_seconds / (size * frames / 1e9) * 1e3
    return Case(peer, size, frames, seconds, size * frames / seconds / 1e9, receiver_cpu_ms_per_gb=cpu_ms_per_gb)


def _median_case(runs: list[Case]) -> Case:
    middle = sorted(runs, key=lambda c: c.gbps)[len(runs) // 2]
    return Case(
        middle.series, middle.size, middle.frames, middle.seconds,
        statistics.median(c.gbps for c in runs), [round(c.gbps, 3) for c in runs],
        statistics.median(c.receiver_cpu_ms_per_gb for c in runs),
        [round(c.receiver_cpu_ms_per_gb, 1) for c in runs],
    )


def _frames_for(size: int, total_bytes: int, minimum: int) -> int:
    return max(minimum, total_bytes // size)


def _ratios(cases: list[Case]) -> dict[str, dict[str, float | str | None]]:
    """Per size: aiozc / best other peer, and which peer that was."""
    out: dict[str, dict[str, float | str | None]] = {}
    for size in sorted({c.size for c in cases}):
        ours = [c for c in cases if c.size == size and c.series == AIOZC]
        others = [c for c in cases if c.size == size and c.series not in AIOZC_SERIES]
        if not ours or not others:
            continue
        best = max(others, key=lambda c: c.gbps)
        out[f"{size // MiB} MiB"] = {"ratio": ours[0].gbps / best.gbps, "best_peer": best.series}
    return out


def _print_table(cases: list[Case], ratios: dict[str, dict[str, Any]]) -> None:
    sizes = sorted({c.size for c in cases})
    series = [p for p in PEER_NAMES if any(c.series == p for c in cases)]
    gbps = {(c.series, c.size): c.gbps for c in cases}
    lines = [(name, [f"{gbps[name, s]:.2f}" if (name, s) in gbps else "-" for s in sizes]) for name in series]
    for name in series:
        if name not in AIOZC_SERIES:
            cells = [
                f"{gbps[AIOZC, s] / gbps[name, s]:.2f}x" if (AIOZC, s) in gbps and (name, s) in gbps else "-"
                for s in sizes
            ]
            lines.append((f"aiozc / {name}", cells))
    width = max(len(label) for label, _ in lines) + 2
    print(f"{'GB/s, float32 arrays, loopback':<{width}}" + "".join(f"{f'{s // MiB} MiB':>10}" for s in sizes))
    for label, cells in lines:
        print(f"{label:<{width}}" + "".join(f"{c:>10}" for c in cells))
    cpu = {(c.series, c.size): c.receiver_cpu_ms_per_gb for c in cases}
    print(f"{'receiver CPU ms per GB':<{width}}" + "".join(f"{f'{s // MiB} MiB':>10}" for s in sizes))
    for name in series:
        print(f"{name:<{width}}" + "".join(f"{cpu[name, s]:>10.1f}" if (name, s) in cpu else f"{'-':>10}" for s in sizes))
    for size, r in ratios.items():
        print(f"{size}: aiozc is {r['ratio']:.2f}x the best other peer ({r['best_peer']})")


def _options(args: Any) -> argparse.Namespace:
    return argparse.Namespace(
        sizes_mib=list(getattr(args, "sizes_mib", None) or DEFAULT_SIZES_MIB),
        total_mib=getattr(args, "total_mib", DEFAULT_TOTAL_MIB),
        min_frames=getattr(args, "min_frames", 6),
        peers=[PEERS.get(p, p) for p in (getattr(args, "peers", None) or PEERS)],
        repeat=getattr(args, "repeat", 3),
    )


def run(args: Any = None) -> dict[str, Any]:
    """Run every peer at every size, print the table, return rows + ratios for JSON."""
    if getattr(args, "memory", False):
        from . import mem_tensors  # noqa: PLC0415 - a different measurement, same command

        return mem_tensors.run(args.connections, args.heavy_frames)
    opts = _options(args)
    peers = _available(opts.peers)
    runs: dict[tuple[str, int], list[Case]] = collections.defaultdict(list)
    # Round-robin over peers and sizes, repeat after repeat, so load from anything else on
    # the machine spreads over every peer instead of hitting one; the median counts.
    for _ in range(opts.repeat):
        for size_mib in opts.sizes_mib:
            size = size_mib * MiB
            for peer in peers:
                runs[peer, size].append(run_case(peer, size, _frames_for(size, opts.total_mib * MiB, opts.min_frames)))
    cases = [_median_case(r) for r in runs.values()]
    ratios = _ratios(cases)
    _print_table(cases, ratios)
    target = ratios.get("64 MiB")
    met = None if target is None else target["ratio"] >= 1.5  # type: ignore[operator]
    print(f"target >= 1.5x best peer at 64 MiB: {'n/a' if met is None else 'met' if met else 'MISSED'}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return {
        "options": vars(opts),
        "load_average": load,
        "rows": [asdict(c) for c in cases],
        "ratios": ratios,
        "targets": {">= 1.5x best peer at 64 MiB": met},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs, for ``python -m aiozc bench tensors``."""
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=list(DEFAULT_SIZES_MIB), help="array sizes")
    parser.add_argument("--total-mib", type=int, default=DEFAULT_TOTAL_MIB, help="payload per case (MiB)")
    parser.add_argument("--min-frames", type=int, default=6, help="frames per case at least")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median counts)")
    parser.add_argument("--memory", action="store_true",
                        help="measure RSS per idle connection and of read-ahead instead (mem_tensors)")
    parser.add_argument("--connections", type=int, default=200, help="--memory: idle pairs")
    parser.add_argument("--heavy-frames", type=int, default=160, help="--memory: frames with 32 KiB metadata")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS),
                        help="which implementations to compare (default: all; zmq needs pyzmq)")
