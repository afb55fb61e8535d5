"""``python -m aiozc bench tcp``: aiozc vs stock asyncio and uvloop transports, side by side.

Every variant sends the same bytes (slices of one 64 MiB buffer, so the data is cold in cache as
real payloads are) over loopback to the same receiver, a separate process that drains with
``recv_into``; sender and receiver sit on separate CPUs, the same for every run. "Naive" is
MSG_ZEROCOPY on every send with the copy fallback switched off: on loopback the kernel copies
anyway and still pins and notifies, which is what the fallback saves.

How the comparison is made fair on a noisy 2-core VM (see :data:`METHOD`, printed with the
results): many short rounds; in each, per loop, a block ``stock, aiozc, aiozc, stock again``
whose inner order and loop order alternate from round to round; every aiozc run is compared
with the mean of the two stock runs around it in the same round (a slow stretch of the machine
hits both sides), and the median of those paired ratios is reported with its spread. The two
stock runs of a block against each other (A/A) show how far the same code moves by chance.

``--vm`` runs the same variants inside the guest VM (tools/vm), sending to the peer in the rig's
namespace, where the kernel really sends TCP from our pages. Those numbers are CPU seconds per GB
of the guest process under QEMU's software emulation (TCG): every instruction is emulated, memcpy
included, so they show which variant does less work, not what hardware would do.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiozc
from aiozc._sys import core

from . import benchkit_machine
from .benchkit import FlowControlledSender, pin_to_cpu, run_on
from .benchkit_stats import format_spread, spread

_POOL = 64 << 20
_HIGH_WATER = 1 << 20
_RECV_BUFFER = 4 << 20
_SENDER_CPU, _RECEIVER_CPU = 0, 1  # indexes into this process's allowed CPUs


def _receiver(listener: socket.socket, rounds: int, report: Connection | None = None) -> None:
    """Accept one connection per measurement; count bytes; answer one byte at the end; send
    the CPU seconds (user+sys) it spent on that connection and the times it slept (voluntary
    context switches) to ``report``."""
    pin_to_cpu(_RECEIVER_CPU)
    buf = bytearray(_RECV_BUFFER)
    view = memoryview(buf)
    for _ in range(rounds):
        conn, _ = listener.accept()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        with conn:
            expected = int.from_bytes(_recv_exact(conn, 8), "big")
            got = 0
            while got < expected:
                n = conn.recv_into(view)
                if not n:
                    break
                got += n
            conn.sendall(b"k" if got == expected else b"!")
        if report is not None:
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            report.send((cpu, cpu1.ru_nvcsw - cpu0.ru_nvcsw))


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("sender went away")
        data += chunk
    return data


@dataclass(frozen=True)
class Variant:
    name: str
    loop: str  # "asyncio" | "uvloop"
    kind: str  # "stock" | "aiozc" | "aiozc-write" | "naive"


VARIANTS = [
    Variant("asyncio stock", "asyncio", "stock"),
    Variant("uvloop stock", "uvloop", "stock"),
    Variant("aiozc write_zc (asyncio)", "asyncio", "aiozc"),
    Variant("aiozc write_zc (uvloop)", "uvloop", "aiozc"),
    Variant("aiozc write (asyncio)", "asyncio", "aiozc-write"),
    Variant("aiozc write (uvloop)", "uvloop", "aiozc-write"),
    Variant("naive MSG_ZEROCOPY (uvloop)", "uvloop", "naive"),
]
_BY_NAME = {v.name: v for v in VARIANTS}
_LOOPS = ("asyncio", "uvloop")
_STOCK = {loop: _BY_NAME[f"{loop} stock"] for loop in _LOOPS}
_ARMS = {loop: [_BY_NAME[f"aiozc write_zc ({loop})"], _BY_NAME[f"aiozc write ({loop})"]] for loop in _LOOPS}
_NAIVE = _BY_NAME["naive MSG_ZEROCOPY (uvloop)"]
# aiozc variant -> the stock transport on the same loop it is compared with
_PAIRS = {arm.name: _STOCK[loop].name for loop in _LOOPS for arm in _ARMS[loop]}
# Issue #10: write_zc() and write() >= 1.0x stock on the same loop, at 64 KiB and at 1 MiB.
_TARGET_SIZES = (64 << 10, 1 << 20)
_TARGET_FLOOR = 1.0

METHOD = (
    "sender: this process on CPU {sender_cpu}; receiver: one process on CPU {receiver_cpu}, the same for every run\n"
    "  (recv_into a 4 MiB buffer, a new connection per run). A run: {gib:.2f} GiB in writes of one size,\n"
    "  slices of a 64 MiB random buffer, 1 MiB high-water mark, the writer awaiting resume_writing;\n"
    "  write_zc()'s futures are dropped, as by a writer that never changes the buffer (nothing to wait for);\n"
    "  timed from the first write to the receiver's 1-byte ack; CPU = user+sys of the sender process\n"
    "  in that time (on loopback it also runs much of the kernel's receive path); gc.collect() before each.\n"
    "  busy snd/rcv: CPU time / wall time of the sender and of the receiver: the side near 100% sets the pace.\n"
    "  snd+rcv: CPU s/GB of both processes. On loopback the kernel handles a packet in the context of\n"
    "  whichever process is on the CPU when it arrives: a sender that is always inside send() handles\n"
    "  its own ACKs and the data they let out, receive path included; a sender that waits leaves them\n"
    "  to the receiver. So the sender's CPU moves with its pace; the sum counts that work once, wherever it ran.\n"
    "  pauses: pause_writing calls per run; rcv sleeps: the receiver's voluntary context switches per MiB.\n"
    "Each of {rounds} rounds, per size: per loop [stock, aiozc write_zc, aiozc write, stock again]\n"
    "  (the aiozc pair's order and the loops' order alternate by round), then naive; one discarded\n"
    "  warm-up run of every variant first.\n"
    "Paired ratio, per round: stock time (mean of the block's two stock runs) / aiozc time, so >1 is\n"
    "  aiozc faster; CPU ratio likewise (>1: aiozc spent less CPU per byte). A/A: stock's second run\n"
    "  vs its first, the same code: the noise floor. Table rows: medians over rounds."
)


@dataclass(frozen=True)
class Slot:
    """One run of a round: a variant, and which of a block's two stock runs (1 or 2) it is."""

    variant: Variant
    run: int = 1


def round_schedule(index: int) -> list[Slot]:
    """The runs of round ``index``, in order (see :data:`METHOD`)."""
    loops = _LOOPS if index % 2 == 0 else _LOOPS[::-1]
    slots: list[Slot] = []
    for loop in loops:
        # Inner order on a different beat from the loop order: all four combinations occur.
        arms = _ARMS[loop] if (index // 2) % 2 == 0 else _ARMS[loop][::-1]
        slots += [Slot(_STOCK[loop], 1), *(Slot(arm) for arm in arms), Slot(_STOCK[loop], 2)]
    slots.append(Slot(_NAIVE))
    return slots


class _CountingSender(FlowControlledSender):
    """Counts the transport's pause_writing calls: how often the writer had to wait."""

    pauses = 0

    def pause_writing(self) -> None:
        self.pauses += 1
        super().pause_writing()


async def _connect(variant: Variant, address: tuple[str, int]) -> tuple[Any, _CountingSender]:
    if variant.kind == "stock":
        loop = asyncio.get_running_loop()
        return await loop.create_connection(_CountingSender, *address)
    options: dict[str, Any] = {}
    if variant.kind == "naive":
        options = {"fallback_after": 1 << 62, "max_pinned_bytes": 1 << 62, "probe_first": False}
    return await aiozc.create_connection(_CountingSender, *address, **options)


@dataclass(frozen=True)
class Target:
    """Where the bytes go and how the receiver is told the size and answers."""

    address: tuple[str, int]
    vm_peer: bool = False  # the guest rig's peer (tools/vm/peer.py): a JSON line, EOF, a JSON reply
    receiver_cpu: Connection | None = None  # where _receiver reports its CPU per connection

    def header(self, total: int) -> bytes:
        return b'{"op": "sink"}\n' if self.vm_peer else total.to_bytes(8, "big")

    def received_all(self, reply: bytes, total: int) -> bool:
        if self.vm_peer:
            return json.loads(reply.split(b"\n", 1)[0])["bytes"] == total
        return reply == b"k"


async def _send_once(variant: Variant, target: Target, pool: memoryview, size: int, total: int) -> dict[str, Any]:
    transport, proto = await _connect(variant, target.address)
    transport.set_write_buffer_limits(high=_HIGH_WATER)
    write: Callable[[memoryview], object] = (
        transport.write if variant.kind in ("stock", "aiozc-write") else transport.write_zc
    )
    transport.write(target.header(total))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    offset = 0
    for _ in range(total // size):
        if offset + size > len(pool):
            offset = 0
        write(pool[offset : offset + size])
        offset += size
        if not proto.can_write.is_set():
            await proto.can_write.wait()
    if target.vm_peer:
        transport.write_eof()
    reply = await proto.reply
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = getattr(transport, "stats", None)
    transport.close()
    # Closed now, not when the loop is gone and the collector finds the socket: its teardown
    # stays out of the next run's timed interval.
    await proto.closed
    if not target.received_all(reply, total):
        raise RuntimeError(f"{variant.name}: receiver saw a short stream")
    user, system = cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime
    return {
        "seconds": elapsed,
        "cpu": user + system,
        "user": user,
        "sys": system,
        "pauses": proto.pauses,
        "state": getattr(stats, "state", "-"),
        "zc_bytes": getattr(stats, "zc_bytes", 0),
        "ids_zerocopy": getattr(stats, "ids_zerocopy", 0),
        "ids_copied": getattr(stats, "ids_copied", 0),
    }


def _run_variant(variant: Variant, target: Target, pool: memoryview, size: int, total: int) -> dict[str, Any]:
    # The previous run's garbage (a write_zc arm leaves a future per write) is freed now, not
    # by a collection inside this run's timed interval.
    gc.collect()
    result = run_on(variant.loop, _send_once(variant, target, pool, size, total))
    if target.receiver_cpu is not None:
        result["receiver_cpu"], result["receiver_sleeps"] = target.receiver_cpu.recv()
        result["both_cpu"] = result["cpu"] + result["receiver_cpu"]
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "vm", False):
        return _run_vm(args)
    if getattr(args, "in_guest", False):
        return _run_in_guest(args)
    return _run_loopback(args)


def _run_vm(args: argparse.Namespace) -> dict[str, Any]:
    """Boot the guest, run this bench there (``--in-guest``), bring its result back."""
    from .vm import Unavailable, python_in_guest, run_in_guest  # noqa: PLC0415

    command = python_in_guest(
        ["-m", "aiozc", "bench", "tcp", "--in-guest", "--gib", str(args.gib or 0.25), "--rounds", str(args.rounds or 3)]
    )
    try:
        guest_run = run_in_guest(command, timeout=3600)
    except Unavailable as exc:
        raise SystemExit(f"bench tcp --vm: the guest cannot run here: {exc}") from exc
    result_file = guest_run.out / _GUEST_RESULT
    if guest_run.rc != 0 or not result_file.exists():
        raise SystemExit(f"bench tcp --vm: the guest run failed (rc {guest_run.rc}); see {guest_run.out}")
    result: dict[str, Any] = json.loads(result_file.read_text())
    return result


_SIZES = [64 << 10, 1 << 20]


def _total_bytes(gib: float) -> int:
    return int(gib * (1 << 30)) // _SIZES[-1] * _SIZES[-1]  # whole writes of every size


def _run_in_guest(args: argparse.Namespace) -> dict[str, Any]:
    from .vm import HOST_ADDR  # noqa: PLC0415
    from .vm.guest import PEER_PORT  # noqa: PLC0415

    total = _total_bytes(args.gib)
    pool = memoryview(os.urandom(_POOL))
    target = Target((HOST_ADDR, PEER_PORT), vm_peer=True)
    samples = _measure(target, pool, _SIZES, args.rounds, total, warm_up=False)
    result = _summarize(samples, total)
    del result["targets"]  # the speed targets are for real hardware, not for an emulator
    result["report_name"] = "tcp-vm"
    result["where"] = f"guest VM ({os.uname().release}) -> peer in the rig's namespace, QEMU TCG software emulation"
    print_table(result)
    (Path(os.environ["AIOZC_VM_OUT"]) / _GUEST_RESULT).write_text(json.dumps(result, indent=1))
    return result


_GUEST_RESULT = "bench_tcp.json"  # written into the rig's results share ($AIOZC_VM_OUT)
Samples = dict[tuple[int, str], list[dict[str, Any]]]


def runs_needed(rounds: int, sizes: int = len(_SIZES), *, warm_up: bool = True) -> int:
    """Connections the receiver must accept for a whole bench."""
    return (len(VARIANTS) if warm_up else 0) + rounds * sizes * len(round_schedule(0))


def _measure(target: Target, pool: memoryview, sizes: list[int], rounds: int, total: int,
             *, warm_up: bool = True) -> Samples:
    if warm_up:  # first runs pay one-time costs (the receiver's buffer, imports, code caches)
        for variant in VARIANTS:
            _run_variant(variant, target, pool, sizes[0], total)
    samples: Samples = {}
    for index in range(rounds):
        for size in sizes:
            for slot in round_schedule(index):
                result = _run_variant(slot.variant, target, pool, size, total)
                result.update(round=index, run=slot.run)
                samples.setdefault((size, slot.variant.name), []).append(result)
    return samples


def _run_loopback(args: argparse.Namespace) -> dict[str, Any]:
    total = _total_bytes(args.gib or _DEFAULT_GIB)
    rounds = args.rounds or _DEFAULT_ROUNDS
    pool = memoryview(os.urandom(_POOL))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    address = listener.getsockname()
    ctx = mp.get_context("fork")
    cpu_in, cpu_out = ctx.Pipe(duplex=False)
    receiver = ctx.Process(target=_receiver, args=(listener, runs_needed(rounds), cpu_out), daemon=True)
    receiver.start()
    listener.close()
    cpu_out.close()
    allowed = os.sched_getaffinity(0)
    cpus = sorted(allowed)
    sender_cpu = pin_to_cpu(_SENDER_CPU)
    load_avg = benchkit_machine.load_average()
    watched = [os.getpid(), receiver.pid or 0]
    try:
        before = benchkit_machine.snapshot(watched)
        samples = _measure(Target(address, receiver_cpu=cpu_in), pool, _SIZES, rounds, total)
        after = benchkit_machine.snapshot(watched)
    finally:
        os.sched_setaffinity(0, allowed)  # a caller (a test session) keeps its CPUs
        receiver.join(timeout=10)
        if receiver.is_alive():
            receiver.kill()
        cpu_in.close()
    result = _summarize(samples, total)
    result["rounds"] = rounds
    result["method"] = METHOD.format(
        sender_cpu=sender_cpu if sender_cpu is not None else "any",
        receiver_cpu=cpus[_RECEIVER_CPU % len(cpus)] if len(cpus) >= 2 else "any",
        gib=total / (1 << 30), rounds=rounds,
    )
    result["machine"] = {"cpus": len(cpus), "load_average_at_start": load_avg,
                         **benchkit_machine.load_between(before, after)}
    result["aiozc_core"] = core.path_in_use()  # a stale build runs pure Python: other numbers
    print_table(result)
    return result


def _summarize(samples: Samples, total: int) -> dict[str, Any]:
    rows = []
    for (size, name), results in samples.items():
        seconds = statistics.median(r["seconds"] for r in results)
        cpu = statistics.median(r["cpu"] for r in results)
        rows.append(
            {
                "size": size,
                "series": name,
                "gbps": total / seconds / 1e9,
                "cpu_s_per_gb": cpu / (total / 1e9),
                "sys_s_per_gb": statistics.median(r.get("sys", 0.0) for r in results) / (total / 1e9),
                # share of the wall time each side was on a CPU: the one near 100% sets the pace
                "sender_busy": statistics.median(r["cpu"] / r["seconds"] for r in results),
                "receiver_busy": statistics.median(r.get("receiver_cpu", 0.0) / r["seconds"] for r in results),
                "both_cpu_s_per_gb": statistics.median(r.get("both_cpu", 0.0) for r in results) / (total / 1e9),
                "pauses": statistics.median(r.get("pauses", 0) for r in results),
                "receiver_sleeps_per_mib": statistics.median(r.get("receiver_sleeps", 0) for r in results)
                / (total / (1 << 20)),
                "state": results[-1]["state"],
                "zc_bytes": results[-1]["zc_bytes"],
                "ids_zerocopy": results[-1].get("ids_zerocopy", 0),
                "ids_copied": results[-1].get("ids_copied", 0),
            }
        )
    _add_ratios(rows)
    paired, paired_cpu = _paired_ratios(samples, "seconds"), _paired_ratios(samples, "cpu")
    paired_both = _paired_ratios(samples, "both_cpu")
    return {
        "bench": "tcp",
        "bytes_per_run": total,
        "rows": rows,
        "paired": paired,
        "paired_cpu": paired_cpu,
        "paired_both_cpu": paired_both,
        "aa": _aa_ratios(samples),
        "spread": {name: spread(r) for name, r in paired.items()},
        "spread_cpu": {name: spread(r) for name, r in paired_cpu.items()},
        "spread_both_cpu": {name: spread(r) for name, r in paired_both.items()},
        "targets": _targets(paired),
    }


def _by_round(results: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    rounds: dict[int, list[dict[str, Any]]] = {}
    for position, result in enumerate(results):
        rounds.setdefault(result.get("round", position), []).append(result)
    return rounds


def _label(size: int) -> str:
    return f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20} MiB"


def _paired_ratios(samples: Samples, key: str) -> dict[str, list[float]]:
    """stock / aiozc on the same loop, round by round, of ``key`` ("seconds" or "cpu"):
    the two ran in one block, so a slow stretch of the shared VM hits both, which the ratio
    of medians does not account for. Stock's side is the mean of the block's two runs."""
    paired: dict[str, list[float]] = {}
    for (size, name), results in samples.items():
        stock = samples.get((size, _PAIRS.get(name, "")))
        if stock is None:
            continue
        stock_rounds = _by_round(stock)
        ratios = []
        for index, (result,) in sorted(_by_round(results).items()):
            around = stock_rounds.get(index)
            if around and result.get(key, 0) > 0 and all(key in s for s in around):
                ratios.append(statistics.fmean(s[key] for s in around) / result[key])
        if ratios:
            paired[f"{_label(size)} {name} / {_PAIRS[name]}"] = ratios
    return paired


def _aa_ratios(samples: Samples) -> dict[str, list[float]]:
    """Stock's second run of a block over its first, in GB/s: the same code, so only chance."""
    aa: dict[str, list[float]] = {}
    for (size, name), results in samples.items():
        if name not in _PAIRS.values():
            continue
        ratios = []
        for runs in _by_round(results).values():
            first = [r for r in runs if r.get("run") == 1]
            second = [r for r in runs if r.get("run") == 2]
            if first and second:
                ratios.append(first[0]["seconds"] / second[0]["seconds"])
        if ratios:
            aa[f"{_label(size)} {name} run 2 / run 1 (A/A)"] = ratios
    return aa


def _targets(paired: dict[str, list[float]]) -> dict[str, bool]:
    targets = {}
    for size in _TARGET_SIZES:
        for name, stock in _PAIRS.items():
            ratios = paired.get(f"{_label(size)} {name} / {stock}")
            if ratios:
                targets[f"{_label(size)} {name} >= {_TARGET_FLOOR}x {stock} (median of paired rounds)"] = (
                    statistics.median(ratios) >= _TARGET_FLOOR
                )
    return targets


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    by_key = {(r["size"], r["series"]): r for r in rows}
    for row in rows:
        stock_asyncio = by_key[(row["size"], "asyncio stock")]["gbps"]
        stock_uvloop = by_key[(row["size"], "uvloop stock")]["gbps"]
        row["vs_asyncio"] = row["gbps"] / stock_asyncio
        row["vs_uvloop"] = row["gbps"] / stock_uvloop


def print_table(result: dict[str, Any]) -> None:
    where = result.get("where", "TCP over loopback")
    print(f"{where}, {result['bytes_per_run'] / (1 << 30):.2f} GiB per run")
    if "method" in result:
        print(result["method"])
    if "aiozc_core" in result:
        print(f"aiozc core: {result['aiozc_core']}")
    if "machine" in result:
        print(benchkit_machine.describe(result["machine"]))
    if "where" in result:
        print("SOFTWARE EMULATION (QEMU TCG): guest CPU s/GB, memcpy emulated; compare rows, not hardware")
    print(f"{'write':>8}  {'transport':<28} {'GB/s':>6} {'CPU s/GB':>9} {'of it sys':>9} {'snd+rcv':>8} "
          f"{'busy snd/rcv':>12} {'pauses':>6} {'rcv sleeps':>10} "
          f"{'vs asyncio':>10} {'vs uvloop':>9}  state (kernel ids zc/copied)")
    for row in result["rows"]:
        busy = f"{100 * row.get('sender_busy', 0):.0f}/{100 * row.get('receiver_busy', 0):.0f}%"
        print(
            f"{_label(row['size']):>8}  {row['series']:<28} {row['gbps']:6.2f} {row['cpu_s_per_gb']:9.3f} "
            f"{row.get('sys_s_per_gb', 0.0):9.3f} {row.get('both_cpu_s_per_gb', 0.0):8.3f} {busy:>12} "
            f"{row.get('pauses', 0):6.0f} {row.get('receiver_sleeps_per_mib', 0.0):10.2f} "
            f"{row['vs_asyncio']:9.2f}x {row['vs_uvloop']:8.2f}x  "
            f"{row['state']} ({row.get('ids_zerocopy', 0)}/{row.get('ids_copied', 0)})"
        )
    _print_ratios("paired GB/s ratios (>1: aiozc faster)", result.get("paired", {}))
    _print_ratios("paired CPU s/GB ratios, sender (>1: aiozc cheaper per byte)", result.get("paired_cpu", {}))
    _print_ratios("paired CPU s/GB ratios, sender + receiver (>1: aiozc cheaper per byte)",
                  result.get("paired_both_cpu", {}))
    _print_ratios("A/A, stock against itself: how far the same code moves by chance", result.get("aa", {}))
    for name, ok in result.get("targets", {}).items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")


def _print_ratios(title: str, ratios: dict[str, list[float]]) -> None:
    if not any(ratios.values()):
        return
    print(title)
    for name, values in ratios.items():
        if values:
            print(f"  {name:<56} median {format_spread(spread(values))}")


# 0.25 GiB x 32 rounds: per size 9 runs x 32 x 0.25 GiB = 72 GiB sent, the bytes and wall time
# of the quiet run of 2 GiB x 5 rounds it replaces (7 runs x 5 x 2 GiB = 70 GiB), but in runs
# of ~0.2 s whose stock partners ran just before and after, and 32 pairs per ratio instead of 5.
# That quiet run gave single paired ratios of 0.56-1.58 for the same system calls.
_DEFAULT_GIB = 0.25
_DEFAULT_ROUNDS = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gib", type=float, default=None,
                        help=f"GiB sent per run (one variant, one round; {_DEFAULT_GIB}; --vm: 0.25)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"interleaved rounds ({_DEFAULT_ROUNDS}; --vm: 3)")
    parser.add_argument("--vm", action="store_true", help="run inside the guest VM, where TCP is really zero-copy (software emulation: minutes)")
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
