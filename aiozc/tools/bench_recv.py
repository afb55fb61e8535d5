"""``python -m aiozc bench recv``: receiver CPU per GB over one host's TCP, side by side.

Each row streams ``--gib`` GiB from a sender process to a receiver process (each pinned to a
core of its own when there are two), over a fresh connection on ``lo`` in a private network
namespace whose MTU is 61492, so the MSS is a multiple of 4096 and a MSG_ZEROCOPY sender's
pages can map whole (../shared/PLATFORM.md, "Zero-copy receive"). The receiver measures its
own CPU time (user + system) after a warm-up and reports it per 1e9 bytes. Receivers:

* ``recv() -> bytes``: ``sock.recv(chunk)``, a fresh ``bytes`` per call (the TCP transport's
  ``Protocol`` read path: ``data_received`` gets ``bytes``);
* ``recv_into aligned + bytes()``: ``recv_into`` a page-aligned buffer, then ``bytes`` of what
  arrived: the aligned alternative for that path, which pays a second copy (it measured
  slower than ``recv()``, so the transport does not do it);
* ``recv_into bytearray``: a reused ``bytearray``; where its data starts depends on malloc
  (an mmap'd chunk: 16 bytes past a page; from the heap: anywhere), so the row prints it;
* ``recv_into page + 16``: a reused buffer starting 16 bytes past a page, as a large
  ``bytearray`` or ``np.empty`` array does when malloc maps it;
* ``recv_into aligned``: a reused page-aligned buffer (:func:`aiozc.buffers.aligned_buffer`);
* ``zero-copy receive``: ``aiozc.zcrx.receive`` (``TCP_ZEROCOPY_RECEIVE``), each lease released
  at once; bytes that do not map are copied with ``recv``;
* ``Protocol, <stock|aiozc> transport (<loop>)``: an ``asyncio.Protocol`` whose
  ``data_received`` only counts, on the loop's own transport or on aiozc's (read size 256 KiB
  for both), on asyncio's default loop and on uvloop: what a ``Protocol`` user pays, event loop
  included. aiozc's transport receives into a page-aligned buffer and gives ``bytes`` copies.

The ``Protocol`` rows' aiozc/stock comparison is paired, round by round, with a target line
(:mod:`aiozc.tools.bench_recv_pairs` says why: over loopback part of the receiver's system time
is the sender's transmit path, run in the receiver's softirq).

Senders: ``plain`` (``send``) and ``MSG_ZEROCOPY`` (over loopback the kernel copies the pages
into fresh order-0 pages, which is what makes them mappable). No receiver touches the data
after the kernel put it in place, so the rows compare what receiving costs, nothing else.
On the 2-core VM this was written on, zero-copy receive was not cheaper than ``recv_into`` an
aligned buffer: treat it as a correctness path there, not a speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import multiprocessing
import os
import resource
import select
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .. import zcrx
from .._sys import kernel
from .._sys import zcrx as zsys
from ..buffers import PAGE_SIZE, address_of, aligned_buffer
from . import bench_recv_pairs as pairs
from .benchkit import pin_to_cpu

MTU = 61492  # MSS 61440 = 15 pages (PLATFORM.md)
DEFAULT_CHUNK = 256 * 1024  # the TCP transport's default read_size
WARMUP = 64 << 20
ERRQUEUE_EVERY = 32  # MSG_ZEROCOPY sends between error-queue drains
SENDERS = ("plain", "MSG_ZEROCOPY")
PAIR_ROUNDS = 15  # the Protocol rows' rounds: a 95% CI of the paired median from its 4th to 12th ratio


@dataclass
class Row:
    sender: str
    receiver: str
    cpu_ms_per_gb: float  # receiver CPU (user + sys) per 1e9 bytes, median over rounds
    user_ms_per_gb: float
    sys_ms_per_gb: float
    gbps: float  # 1e9 bytes per second seen by the receiver
    mapped_pct: float  # bytes mapped by zero-copy receive (0 for the other receivers)
    page_offset: int  # where the recv_into destination started in its page (-1: not recv_into)
    runs_cpu_ms_per_gb: list[float] = field(default_factory=list)
    reads_per_gb: float = 0.0  # reads that returned data (recv calls; data_received calls)
    sleeps_per_gb: float = 0.0  # the receiver's voluntary context switches
    faults_per_gb: float = 0.0  # the receiver's minor page faults
    tx_ms_per_gb: float = 0.0  # the sender's CPU (user + sys) per 1e9 bytes it sent
    softirqd_ms_per_gb: float = 0.0  # ksoftirqd threads' CPU during the run
    pair_ms_per_gb: float = 0.0  # receiver + sender + ksoftirqd


@dataclass
class Sample:
    nbytes: int  # measured: after the warm-up
    mapped: float  # fraction of the whole stream that zero-copy receive mapped
    page_offset: int  # where a recv_into destination starts in its page (-1: none)
    user: float
    sys: float
    wall: float
    reads: int = 0  # after the warm-up, as the counters below
    sleeps: int = 0
    faults: int = 0
    tx_cpu: float = 0.0  # the sender's user + sys seconds, for all it sent (warm-up included)
    tx_bytes: int = 0
    softirqd: float = 0.0  # ksoftirqd seconds over the whole run

    def per_gb(self, seconds: float) -> float:
        return seconds / (self.nbytes / 1e9) * 1e3

    @property
    def cpu_ms_per_gb(self) -> float:
        return self.per_gb(self.user + self.sys)

    @property
    def pair_ms_per_gb(self) -> float:
        whole = (self.tx_bytes or self.nbytes) / 1e9
        return self.cpu_ms_per_gb + (self.tx_cpu + self.softirqd) / whole * 1e3


# ---------------------------------------------------------------------------------------------
# receivers: each reads ``sock`` (blocking) to EOF; returns (bytes, bytes mapped) and calls
# at_warmup(bytes so far) once, with the reads so far in _reads[0]

Receiver = Callable[[socket.socket, int, Callable[[int], None]], tuple[int, int]]
_reads = [0]


def _recv_bytes(sock: socket.socket, chunk: int, at_warmup: Callable[[int], None]) -> tuple[int, int]:
    total = 0
    mark = WARMUP
    while data := sock.recv(chunk):
        total += len(data)
        _reads[0] += 1
        if total >= mark:
            at_warmup(total)
            mark = 1 << 62
    return total, 0


def _recv_into(buf: memoryview) -> Receiver:
    def receive(sock: socket.socket, chunk: int, at_warmup: Callable[[int], None]) -> tuple[int, int]:
        total = 0
        mark = WARMUP
        while n := sock.recv_into(buf, chunk):
            total += n
            _reads[0] += 1
            if total >= mark:
                at_warmup(total)
                mark = 1 << 62
        return total, 0

    receive.destination = buf  # type: ignore[attr-defined]
    return receive


def alignment_offset(buf: memoryview) -> int:
    """Where ``buf`` starts within its page."""
    return address_of(buf) % PAGE_SIZE


def _recv_into_then_bytes(sock: socket.socket, chunk: int, at_warmup: Callable[[int], None]) -> tuple[int, int]:
    buf = aligned_buffer(chunk)
    total = 0
    mark = WARMUP
    while n := sock.recv_into(buf, chunk):
        data = bytes(buf[:n])
        total += len(data)
        _reads[0] += 1
        if total >= mark:
            at_warmup(total)
            mark = 1 << 62
    return total, 0


def _zerocopy(sock: socket.socket, chunk: int, at_warmup: Callable[[int], None]) -> tuple[int, int]:
    sock.setblocking(False)
    pool = zcrx.RegionPool(chunk=chunk, regions=8)
    request = zsys.Request()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    total = mapped = 0
    mark = WARMUP
    try:
        while True:
            poller.poll()
            step = zcrx.receive(sock, pool, request=request)
            for piece in step.pieces:
                if isinstance(piece, zcrx.Lease):
                    piece.release()
            total += step.mapped + step.copied
            mapped += step.mapped
            _reads[0] += 1
            if total >= mark:
                at_warmup(total)
                mark = 1 << 62
            if step.error is not None:
                raise step.error
            if step.eof:
                return total, mapped
    finally:
        pool.close()


class _Counting(asyncio.Protocol):
    def __init__(self, at_warmup: Callable[[int], None], done: asyncio.Future[int]) -> None:
        self.total = 0
        self.mark = WARMUP
        self.at_warmup = at_warmup
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        _reads[0] += 1
        if self.total >= self.mark:
            self.at_warmup(self.total)
            self.mark = 1 << 62

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(self.total)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before EOF"))


def _protocol_receiver(transport: str, loop_name: str) -> Receiver:
    """A Protocol over the loop's own transport or aiozc's (``chunk`` is aiozc's read size;
    the stock transports read 256 KiB, asyncio's max_size and uvloop's buffer)."""

    def receive(sock: socket.socket, chunk: int, at_warmup: Callable[[int], None]) -> tuple[int, int]:
        from .benchkit import run_on

        async def main() -> int:
            import aiozc

            loop = asyncio.get_running_loop()
            done: asyncio.Future[int] = loop.create_future()
            sock.setblocking(False)
            if transport == "aiozc":
                t, _ = await aiozc.create_connection(lambda: _Counting(at_warmup, done), sock=sock,
                                                     read_size=chunk)
            else:
                t, _ = await loop.create_connection(lambda: _Counting(at_warmup, done), sock=sock)
            try:
                return await done
            finally:
                t.close()

        return run_on(loop_name, main()), 0

    return receive


def _receivers(chunk: int) -> dict[str, Receiver]:
    return {
        "recv() -> bytes": _recv_bytes,
        "recv_into aligned + bytes()": _recv_into_then_bytes,
        "recv_into bytearray": _recv_into(memoryview(bytearray(chunk))),
        "recv_into page + 16": _recv_into(aligned_buffer(chunk + 16)[16:]),
        "recv_into aligned": _recv_into(aligned_buffer(chunk)),
        "zero-copy receive": _zerocopy,
        **{f"Protocol, {transport} transport ({loop})": _protocol_receiver(transport, loop)
           for loop in ("asyncio", "uvloop") for transport in ("stock", "aiozc")},
    }


RECEIVERS = tuple(_receivers(4096))


def _receiver_main(sock: socket.socket, name: str, chunk: int, report: Connection) -> None:
    pin_to_cpu(0)
    start: list[float] = []

    def at_warmup(total: int) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start[:] = [usage.ru_utime, usage.ru_stime, time.perf_counter(), total, _reads[0], usage.ru_nvcsw,
                    usage.ru_minflt]

    receive = _receivers(chunk)[name]
    destination = getattr(receive, "destination", None)
    page_offset = alignment_offset(destination) if destination is not None else -1
    nbytes, mapped = receive(sock, chunk, at_warmup)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    end = time.perf_counter()
    sock.close()
    if not start:
        report.send(None)
        return
    report.send(Sample(nbytes - int(start[3]), mapped / nbytes, page_offset, usage.ru_utime - start[0],
                       usage.ru_stime - start[1], end - start[2], _reads[0] - int(start[4]),
                       usage.ru_nvcsw - int(start[5]), usage.ru_minflt - int(start[6])))


# ---------------------------------------------------------------------------------------------
# senders


def _send_main(sock: socket.socket, zerocopy: bool, chunk: int, total: int, report: Connection) -> None:
    pin_to_cpu(1)
    buf = aligned_buffer(chunk)
    buf[:] = os.urandom(chunk)
    flags = kernel.MSG_ZEROCOPY if zerocopy else 0
    sent = 0
    sends = 0
    while sent < total:
        try:
            sent += sock.send(buf[: min(chunk, total - sent)], flags)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:  # optmem full of notifications: drain, retry
                raise
            _drain(sock, wait=True)
            continue
        sends += 1
        if zerocopy and sends % ERRQUEUE_EVERY == 0:
            _drain(sock, wait=False)
    sock.shutdown(socket.SHUT_WR)
    if zerocopy:
        _drain(sock, wait=False)
    sock.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report.send((usage.ru_utime + usage.ru_stime, sent))


def _drain(sock: socket.socket, *, wait: bool) -> None:
    if wait:
        select.select([], [], [sock], 0.1)
    kernel.read_errqueue(sock, 1024)


# ---------------------------------------------------------------------------------------------
# running rows


def namespace_name(pid: int) -> str:
    """``aiozc-probe-PID-recv``: the PID right after the prefix, where reap_stale_namespaces
    looks for it (``aiozc-probe-recv-PID`` was never reaped after a killed run)."""
    return f"aiozc-probe-{pid}-recv"


@contextmanager
def _network() -> Iterator[tuple[Callable[[], socket.socket], str]]:
    """Socket factory in a netns with lo MTU 61492, or the host's lo if that cannot be had."""
    from .netns import NetNamespace, netns_available

    reason = netns_available()
    if reason is not None:
        yield (lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)), f"host lo (no netns: {reason})"
        return
    ns = NetNamespace(namespace_name(os.getpid())).create()
    try:
        ns.ip("link", "set", "lo", "mtu", str(MTU))
        yield (lambda: ns.socket(socket.AF_INET, socket.SOCK_STREAM)), f"netns lo, MTU {MTU}"
    finally:
        ns.close()


def _pair(new_socket: Callable[[], socket.socket], zerocopy: bool) -> tuple[socket.socket, socket.socket]:
    with new_socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = new_socket()
        if zerocopy and kernel.enable_zerocopy(sender) is not None:
            sender.close()
            raise RuntimeError("SO_ZEROCOPY unavailable: no MSG_ZEROCOPY sender")
        sender.connect(listener.getsockname())
        receiver, _ = listener.accept()
    return sender, receiver


def run_once(new_socket: Callable[[], socket.socket], sender: str, receiver: str, chunk: int,
             total: int) -> Sample:
    zerocopy = sender == "MSG_ZEROCOPY"
    tx, rx = _pair(new_socket, zerocopy)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    tx_parent, tx_child = ctx.Pipe(duplex=False)
    procs = [
        ctx.Process(target=_receiver_main, args=(rx, receiver, chunk, child), daemon=True),
        ctx.Process(target=_send_main, args=(tx, zerocopy, chunk, total + WARMUP, tx_child), daemon=True),
    ]
    softirqd = pairs.ksoftirqd_ms()
    try:
        for proc in procs:
            proc.start()
        tx.close()
        rx.close()
        if not parent.poll(300):
            raise RuntimeError(f"{receiver} <- {sender}: no result within 300 s")
        sample = parent.recv()
        if sample is not None and tx_parent.poll(30):
            sample.tx_cpu, sample.tx_bytes = tx_parent.recv()
            sample.softirqd = (pairs.ksoftirqd_ms() - softirqd) / 1e3
        for proc in procs:
            proc.join(30)
            if proc.exitcode != 0:
                raise RuntimeError(f"{receiver} <- {sender}: a process failed (exit code {proc.exitcode})")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    if sample is None:
        raise RuntimeError(f"{receiver} <- {sender}: stream shorter than the warm-up")
    return sample


def _row(sender: str, receiver: str, samples: list[Sample]) -> Row:
    runs = [s.cpu_ms_per_gb for s in samples]
    mid = sorted(samples, key=lambda s: s.cpu_ms_per_gb)[len(samples) // 2]

    def median_per_gb(count: Callable[[Sample], float]) -> float:
        return statistics.median(count(s) / (s.nbytes / 1e9) for s in samples)

    whole = [(s.tx_bytes or s.nbytes) / 1e9 for s in samples]
    return Row(
        sender, receiver, statistics.median(runs), mid.per_gb(mid.user), mid.per_gb(mid.sys),
        mid.nbytes / mid.wall / 1e9, 100.0 * mid.mapped, mid.page_offset, [round(r, 1) for r in runs],
        median_per_gb(lambda s: s.reads), median_per_gb(lambda s: s.sleeps), median_per_gb(lambda s: s.faults),
        statistics.median(s.tx_cpu / g * 1e3 for s, g in zip(samples, whole)),
        statistics.median(s.softirqd / g * 1e3 for s, g in zip(samples, whole)),
        statistics.median(s.pair_ms_per_gb for s in samples),
    )


def _print_table(rows: list[Row], where: str, load: tuple[float, float, float]) -> None:
    print(f"receiver CPU per GB (user+sys, ms), {where}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          "reads, sleeps (voluntary context switches), faults per GB; tx: the sender's CPU; pair: receiver + "
          "sender + ksoftirqd")
    width = max(len(r.receiver) for r in rows) + 2
    for sender in dict.fromkeys(r.sender for r in rows):
        print(f"sender: {sender}")
        print(f"  {'receiver':<{width}}{'ms/GB':>8}{'user':>7}{'sys':>7}{'GB/s':>6}{'mapped':>7}{'page+':>6}"
              f"{'reads':>7}{'sleeps':>7}{'faults':>7}{'tx':>6}{'pair':>6}  runs")
        for r in (r for r in rows if r.sender == sender):
            print(f"  {r.receiver:<{width}}{r.cpu_ms_per_gb:>8.1f}{r.user_ms_per_gb:>7.1f}{r.sys_ms_per_gb:>7.1f}"
                  f"{r.gbps:>6.2f}{r.mapped_pct:>6.1f}%{r.page_offset if r.page_offset >= 0 else '-':>6}"
                  f"{r.reads_per_gb:>7.0f}{r.sleeps_per_gb:>7.0f}{r.faults_per_gb:>7.0f}{r.tx_ms_per_gb:>6.0f}"
                  f"{r.pair_ms_per_gb:>6.0f}  {r.runs_cpu_ms_per_gb}")
    for sender in dict.fromkeys(r.sender for r in rows):
        by = {r.receiver: r.cpu_ms_per_gb for r in rows if r.sender == sender}
        aligned = by.get("recv_into aligned")
        if aligned:
            ratios = ", ".join(f"{name} {value / aligned:.2f}x" for name, value in by.items()
                               if name != "recv_into aligned")
            print(f"{sender}: against recv_into aligned: {ratios}")


def _print_paired(ratios: list[pairs.PairedRatio]) -> None:
    if not ratios:
        return
    print("Protocol path, aiozc / stock transport: median of per-round ratios (arms back to back, order "
          "alternating), [range]")
    for line in pairs.format_ratios(ratios):
        print(line)
    print(pairs.target_line(ratios, "receiver"))
    print(pairs.target_line(ratios, "pair"))


def run(args: Any = None) -> dict[str, Any]:
    chunk = getattr(args, "chunk", DEFAULT_CHUNK)
    total = int(getattr(args, "gib", 1.0) * (1 << 30))
    global WARMUP
    WARMUP = int(getattr(args, "warmup_mib", WARMUP >> 20) * (1 << 20))  # forked children see it
    rounds = getattr(args, "rounds", 5)
    pair_rounds = max(rounds, getattr(args, "pair_rounds", rounds))
    senders = getattr(args, "senders", None) or list(SENDERS)
    receivers = getattr(args, "receivers", None) or list(RECEIVERS)
    if zsys.zerocopy_receive_unavailable() is not None and "zero-copy receive" in receivers:
        print(f"zero-copy receive unavailable: {zsys.zerocopy_receive_unavailable()}; row skipped")
        receivers.remove("zero-copy receive")
    samples: dict[tuple[str, str], list[Sample]] = {(s, r): [] for s in senders for r in receivers}
    load_before = os.getloadavg()
    with _network() as (new_socket, where):
        # Interleaved rounds: load from anything else on the machine spreads over every row;
        # the stock and aiozc arms of a pair run back to back (bench_recv_pairs).
        # Past `rounds`, the compared Protocol rows alone, to pair_rounds (bench_recv_pairs).
        for index in range(pair_rounds):
            chosen = receivers if index < rounds else pairs.paired_rows(receivers)
            for sender, receiver in pairs.schedule(senders, chosen, index):
                samples[sender, receiver].append(run_once(new_socket, sender, receiver, chunk, total))
    rows = [_row(s, r, v) for (s, r), v in samples.items()]
    paired = (pairs.paired_ratios(pairs.by_round(samples, lambda s: s.cpu_ms_per_gb), senders, "receiver")
              + pairs.paired_ratios(pairs.by_round(samples, lambda s: s.pair_ms_per_gb), senders, "pair"))
    load = os.getloadavg()
    _print_table(rows, where, load)
    _print_paired(paired)
    print("zero-copy receive maps only a MSG_ZEROCOPY sender's pages; on this project's 2-core VM it "
          "did not cost less receiver CPU than recv_into an aligned buffer (see the rows above).")
    return {
        "options": {"chunk": chunk, "bytes": total, "warmup": WARMUP, "rounds": rounds,
                    "pair_rounds": pair_rounds, "network": where,
                    "cpus": {"receiver": 0, "sender": 1, "available": sorted(os.sched_getaffinity(0))}},
        "load_average": {"before": load_before, "after": load},
        "rows": [asdict(r) for r in rows],
        "paired": [asdict(r) for r in paired],
        "target": {m: pairs.target_line(paired, m) for m in ("receiver", "pair")},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gib", type=float, default=1.0, help="GiB measured per row and round (after 64 MiB warm-up)")
    parser.add_argument("--warmup-mib", type=float, default=WARMUP >> 20, help="MiB received before measuring")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="bytes per recv / region size")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every row (medians)")
    parser.add_argument("--pair-rounds", type=int, default=PAIR_ROUNDS,
                        help="rounds of the paired Protocol rows (more than --rounds: see bench_recv_pairs)")
    parser.add_argument("--senders", nargs="+", choices=list(SENDERS), help="default: both")
    parser.add_argument("--receivers", nargs="+", choices=list(RECEIVERS), help="default: all")
