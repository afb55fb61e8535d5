"""``python -m aiozc bench instructions``: user-space instructions per call, counted by callgrind.

Timings on this 2-core shared machine move by 10-20% between runs; instruction counts do not, so
this is the measure to prove a step of the hot path with. Every case runs in a fresh interpreter
under ``valgrind --tool=callgrind`` (started with instrumentation off, so start-up is quick); the
case's measured phase is bracketed by callgrind client requests (zero the counters, dump them),
compiled into :mod:`aiozc.tools.cref`. Each case runs three times in its process: a warm-up,
then ``calls`` and ``3 * calls`` calls; the per-call figure is the difference of the last two
divided by the difference of their call counts, so set-up, the final awaits and anything paid
once cancel out. Only user-space instructions are counted (system calls are not), including
everything the event loop runs meanwhile (error-queue reads, future callbacks).

Cases:

* UDP, 64000 B datagrams into the ifb sink (as ``bench udp-sink``; root): stock ``sendto``,
  aiozc ``sendto`` (a copy), ``sendto_zc`` (a window of 256 futures, await the oldest),
  coalesced ``sendto_zc``, ``sendto_zc_many`` (per datagram), the io_uring engine with a
  BufferPool, and the C reference senders; on both loops.
* TCP, 64 KiB and 1-byte writes over loopback to a receiver in another process (not under callgrind):
  stock ``write()``, aiozc ``write()`` and ``write_zc()``, on both loops.
* TCP connections (``tcpconn``, :mod:`aiozc.tools.instructions_tcpconn`): a server accepting
  short connections (an 18-byte request, a 40-byte response, close) from a peer in another
  process, on the loop's own server and aiozc's, on both loops; per call = one connection.
* TCP reads (``tcpread``, :mod:`aiozc.tools.instructions_tcpread`): a ``Protocol`` receiving
  11-byte ping-pong messages or a 256 KiB-block stream from a peer in another process, on the
  stock transport and aiozc's, on both loops.

``PYTHONHASHSEED=0`` in every case: dict and set layouts then repeat from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import udp_cases

TCP_WRITE = 64 << 10
TCP_SMALL_SUFFIX = "-1B"  # a TCP case kind with 1-byte writes
# A 64 KiB TCP case whose receiver reads 64 KiB per TCP_PACE_S (~130 MB/s): the sender outruns it
# and pauses on a full socket every few dozen writes, as a real sender does against a fast
# receiver (a callgrind-slowed sender never fills the socket otherwise). Its count per write
# includes the queued writes and the flush on EPOLLOUT, which the other cases never reach. Its
# high-water mark is bench tcp's (1 MiB): up to 16 writes wait in the queue before a pause.
TCP_PACED_SUFFIX = "-paced"
TCP_PACE_S = 0.0005
TCP_PACED_HIGH_WATER = 1 << 20
_PACED_FLAG = 1 << 63  # in the 8-byte length header: the receiver paces this connection
# write_zc with MSG_ZEROCOPY on every send (no copy fallback; loopback copies and notifies): each
# write's count includes its completion (error-queue drain, resolving its future).
TCP_EVERY_ZC = "tcp-aiozc-write_zc-every"
TCP_EVERY_ZC_OPTIONS: dict[str, Any] = {"fallback_after": 1 << 62, "max_pinned_bytes": 1 << 62, "probe_first": False}
UDP_SIZE = 64000
DEFAULT_CALLS = {"udp": 1024, "tcp": 256, "web": 128, "tcpread": 256, "tcpconn": 128}
# udp + tcp: ~3-6 minutes on this machine; web adds 1-2 minutes per case (12 cases).
DEFAULT_FAMILIES = ("udp", "tcp")
WARMUP_CALLS = {"udp": 256, "tcp": 64, "web": 64, "tcpread": 64, "tcpconn": 32}


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # "udp" | "tcp" | "web"
    # a udp_cases kind; "tcp-stock-write" | "tcp-aiozc-write" | "tcp-aiozc-write_zc";
    # "web-<stock|aiozc>-<body size>" (instructions_web)
    kind: str
    loop: str | None  # None: no event loop (the C senders)


def _udp_cases() -> list[Case]:
    cases = [
        Case("C send MSG_ZEROCOPY", "udp", "c-zc", None),
        Case(f"C sendmmsg MSG_ZEROCOPY ({udp_cases.C_PER_CALL} per call)", "udp", "c-mmsg", None),
        Case(f"C io_uring SEND_ZC fixed ({udp_cases.C_PER_CALL} per submit)", "udp", "c-uring-fixed", None),
    ]
    for kind, what in (
        ("stock", "stock sendto"),
        ("aiozc-sendto", "aiozc sendto (a copy)"),
        ("aiozc-sendto+uring", "aiozc sendto (a copy) io_uring (auto's engine)"),
        ("aiozc", "aiozc sendto_zc"),
        ("aiozc-coalesce", "aiozc sendto_zc coalesced"),
        ("aiozc-many", "aiozc sendto_zc_many"),
        ("aiozc+uring", "aiozc sendto_zc io_uring (auto's engine)"),
        ("aiozc+uring-fixed", "aiozc sendto_zc io_uring + pool"),
        ("aiozc-coalesce+uring", "aiozc sendto_zc coalesced io_uring (auto's engine)"),
        ("aiozc-coalesce+uring-fixed", "aiozc sendto_zc coalesced io_uring + pool"),
        ("aiozc-many+uring-fixed", "aiozc sendto_zc_many io_uring + pool"),
    ):
        cases += [Case(f"{what} ({loop})", "udp", kind, loop) for loop in ("asyncio", "uvloop")]
    return cases


def _tcp_cases() -> list[Case]:
    # 1-byte writes never fill the socket, so their count is the write call alone (what an
    # 11 B aiohttp response's write costs); 64 KiB writes fill it now and then, and how often
    # moves their count by a few hundred instructions from run to run.
    return [
        Case(f"TCP {size_name} {what} ({loop})", "tcp", kind + suffix, loop)
        for size_name, suffix in (("64 KiB", ""), ("1 B", TCP_SMALL_SUFFIX))
        for kind, what in (
            ("tcp-stock-write", "stock write"),
            ("tcp-aiozc-write", "aiozc write"),
            ("tcp-aiozc-write_zc", "aiozc write_zc"),
        )
        for loop in ("asyncio", "uvloop")
    ] + [
        Case(f"TCP 64 KiB aiozc write_zc, every send zero-copy, with its completion ({loop})", "tcp",
             TCP_EVERY_ZC, loop)
        for loop in ("asyncio", "uvloop")
    ] + [
        Case(f"TCP 64 KiB {what}, paced receiver ({loop})", "tcp", kind + TCP_PACED_SUFFIX, loop)
        for kind, what in (
            ("tcp-stock-write", "stock write"),
            ("tcp-aiozc-write", "aiozc write"),
            ("tcp-aiozc-write_zc", "aiozc write_zc"),
        )
        for loop in ("asyncio", "uvloop")
    ]


def _web_cases() -> list[Case]:
    from .instructions_web import BODY_SIZES

    return [
        Case(f"aiohttp {size} body, {server} ({loop})", "web", f"web-{server}-{size}", loop)
        for size in BODY_SIZES
        for server in ("stock", "aiozc")
        for loop in ("asyncio", "uvloop")
    ]


def _tcpread_cases() -> list[Case]:
    from .instructions_tcpread import SIZES

    return [
        Case(f"TCP read {size}, {transport} Protocol ({loop})", "tcpread", f"tcpread-{transport}-{size}", loop)
        for size in SIZES
        for transport in ("stock", "aiozc")
        for loop in ("asyncio", "uvloop")
    ]


def _tcpconn_cases() -> list[Case]:
    from .instructions_tcpconn import SERVERS

    return [
        Case(f"TCP connection, request + response + close, {server} server ({loop})", "tcpconn",
             f"tcpconn-{server}", loop)
        for server in SERVERS
        for loop in ("asyncio", "uvloop")
    ]


CASES = _udp_cases() + _tcp_cases() + _web_cases() + _tcpread_cases() + _tcpconn_cases()


@dataclass
class Count:
    case: str
    family: str
    kind: str
    loop: str
    per_call: float  # user instructions per call (per datagram, per write)
    once: float  # instructions of the measured phase not proportional to the calls
    calls: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)  # the case's own counters (last run)


# ----------------------------------------------------------------------------------------------
# Inside the process under callgrind.


def _tcp_receiver(listener: socket.socket) -> None:
    """One connection per measured run: an 8-byte length, the stream, then one byte back."""
    from .benchkit import pin_to_cpu

    pin_to_cpu(1)
    view = memoryview(bytearray(4 << 20))
    while True:
        conn, _ = listener.accept()
        with conn:
            header = b""
            while len(header) < 8:
                chunk = conn.recv(8 - len(header))
                if not chunk:
                    break
                header += chunk
            expected, got = int.from_bytes(header, "big"), 0
            paced, expected = bool(expected & _PACED_FLAG), expected & ~_PACED_FLAG
            into = view[:TCP_WRITE] if paced else view
            while got < expected:
                n = conn.recv_into(into)
                if not n:
                    break
                got += n
                if paced:
                    time.sleep(TCP_PACE_S)
            conn.sendall(b"k" if got == expected else b"!")


async def _tcp_writes(port: int, kind: str, pool: memoryview, count: int) -> dict[str, Any]:
    import aiozc

    from .benchkit import FlowControlledSender

    loop = asyncio.get_running_loop()
    size = 1 if kind.endswith(TCP_SMALL_SUFFIX) else TCP_WRITE
    paced = kind.endswith(TCP_PACED_SUFFIX)
    kind = kind.removesuffix(TCP_SMALL_SUFFIX).removesuffix(TCP_PACED_SUFFIX)
    if kind == "tcp-stock-write":
        transport, proto = await loop.create_connection(FlowControlledSender, "127.0.0.1", port)
    else:
        options: dict[str, Any] = TCP_EVERY_ZC_OPTIONS if kind == TCP_EVERY_ZC else {}
        transport, proto = await aiozc.create_connection(FlowControlledSender, "127.0.0.1", port, **options)
    if paced:
        transport.set_write_buffer_limits(high=TCP_PACED_HIGH_WATER)
    zc = kind in ("tcp-aiozc-write_zc", TCP_EVERY_ZC)
    write = transport.write_zc if zc else transport.write  # type: ignore[attr-defined]
    last: Any = None
    transport.write((count * size | (_PACED_FLAG if paced else 0)).to_bytes(8, "big"))
    slots = len(pool) // size
    pauses = 0
    clock = udp_cases.Clock()
    for i in range(count):
        offset = (i % slots) * size
        last = write(pool[offset : offset + size])
        if not proto.can_write.is_set():
            pauses += 1
            await proto.can_write.wait()
    reply = await proto.reply
    if zc:
        await last  # (resolved in order: every write's completion is counted)
    stats = getattr(transport, "stats", None)
    timed = clock.stop(state=getattr(stats, "state", "-"), pauses=pauses)
    transport.close()
    if reply != b"k":
        raise RuntimeError("the receiver saw a short stream")
    return timed


def _run_once(spec: dict[str, Any], count: int, pool: Any) -> dict[str, Any]:
    if spec["family"] == "udp":
        return udp_cases.measure_case(
            spec["dst"], spec["kind"], spec["loop"], UDP_SIZE, count, 256, {}, udp_cases.DEFAULT_BATCH
        )
    from .benchkit import run_on

    if spec["family"] == "tcpread":
        from .instructions_tcpread import measure

        return run_on(spec["loop"], measure(spec["port"], spec["kind"], count))
    if spec["family"] == "tcpconn":
        from .instructions_tcpconn import measure as measure_conn

        return run_on(spec["loop"], measure_conn(spec["port"], spec["kind"], count))
    return run_on(spec["loop"], _tcp_writes(spec["port"], spec["kind"], pool, count))


def _settle_heap() -> None:
    """Collect, then move every object alive after the warm-up to the permanent generation.

    A full (generation 2) collection traverses the whole start-up heap (aiozc, uvloop, the
    loop: on the order of a million instructions), and when it comes depends on how many
    objects survived, which depends on when completions arrived. One landing in the large run
    only raises the per-call figure and lowers "paid once" by half its cost: the likely cause of
    the quiet run of 2026-12-02 00:39-01:04 UTC giving MSG_ZEROCOPY sendto_zc on asyncio 3,990
    with "paid once" -457,836 (commit 4726b6d), against 3,342 and +354,622 re-measured at that
    commit (3,308 the run before); not reproduced. Frozen objects are not traversed, so a full
    collection then costs what the measured calls left behind, like the young-generation
    collections they always paid (counts with the heap frozen: 3,365 / 3,225, unchanged)."""
    gc.collect()
    gc.freeze()


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up, then ``calls`` and ``3 * calls`` calls, each dumped as its own callgrind part."""
    from . import cref

    built, reason = cref.callgrind_markers()
    if built is None:
        raise RuntimeError(reason)
    lib = built.lib
    if spec["loop"] == "uvloop":
        import uvloop  # noqa: F401  (imported before the counters start)
    import aiozc  # noqa: F401

    pool = memoryview(os.urandom(64 << 20)) if spec["family"] == "tcp" else None
    lib.cref_cg_start()
    runs = (("warmup", spec["warmup"]), ("small", spec["calls"]), ("large", 3 * spec["calls"]))
    info: dict[str, Any] = {}
    for label, count in runs:
        if label == "small":
            _settle_heap()
        udp_cases.CLOCK_HOOKS[:] = [(lib.cref_cg_zero, lambda label=label: lib.cref_cg_dump(label.encode()))]  # type: ignore[misc]
        info = _run_once(spec, count, pool)
        if info.get("skipped"):
            raise RuntimeError(info["skipped"])
    return info


# ----------------------------------------------------------------------------------------------
# Outside: run each case under callgrind, read its dumps.

_TRIGGER = re.compile(r"^desc: Trigger: Client Request: (\S+)", re.M)
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.M)


def parse_dumps(paths: list[Path]) -> dict[str, int]:
    """label -> instructions, from callgrind dump files triggered by ``cref_cg_dump(label)``."""
    counts: dict[str, int] = {}
    for path in paths:
        text = path.read_text(errors="replace")
        trigger, total = _TRIGGER.search(text), _TOTAL.search(text)
        if trigger and total:
            counts[trigger.group(1)] = int(total.group(1))
    return counts


def per_call(counts: dict[str, int], calls: int) -> tuple[float, float]:
    """(instructions per call, instructions paid once) from the ``small``/``large`` dumps."""
    small, large = counts["small"], counts["large"]
    slope = (large - small) / (2 * calls)
    return slope, small - slope * calls


def valgrind_missing() -> str | None:
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install valgrind)"
    from . import cref

    return cref.callgrind_markers()[1]


def _valgrind_argv(out: Path) -> list[str]:
    return [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        "--dump-instr=no", "--dump-line=no", "--compress-strings=no", "--error-limit=no",
        "--quiet",
    ]


def _measure(case: Case, calls: int, argv_prefix: list[str], extra: dict[str, Any]) -> Count:
    spec = {"family": case.family, "kind": case.kind, "loop": case.loop, "calls": calls,
            "warmup": WARMUP_CALLS[case.family], **extra}
    with tempfile.TemporaryDirectory(prefix="aiozc-callgrind-") as tmp:
        out = Path(tmp) / "cg.out"
        argv = argv_prefix + _valgrind_argv(out) + [
            sys.executable, "-m", "aiozc.tools.bench_instructions", "--child", json.dumps(spec),
        ]
        if case.family == "web":
            info = _measure_web(case, calls, argv_prefix + _valgrind_argv(out))
        else:
            env = dict(os.environ, PYTHONHASHSEED="0")
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"{case.name}: callgrind run failed:\n{proc.stderr[-3000:]}")
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            info = json.loads(lines[-1]) if lines else {}
        counts = parse_dumps(sorted(Path(tmp).glob("cg.out*")))
    slope, once = per_call(counts, calls)
    keep = {k: v for k, v in info.items() if k not in ("seconds", "cpu_s")}
    return Count(case.name, case.family, case.kind, case.loop or "-", slope, once, (calls, 3 * calls), keep)


def _measure_web(case: Case, calls: int, valgrind: list[str]) -> dict[str, Any]:
    from . import instructions_web

    _, server, size = case.kind.split("-", 2)
    nbytes = instructions_web.BODY_SIZES[size]
    spec = {"server": server, "size": nbytes, "loop": case.loop}
    argv = valgrind + [sys.executable, "-m", "aiozc.tools.instructions_web", "--web-server", json.dumps(spec)]
    instructions_web.drive(argv, nbytes, WARMUP_CALLS["web"], calls)
    return {}


def _run_web(cases: list[Case], calls: int) -> list[Count]:
    from .instructions_web import CONNECTIONS

    calls = max(CONNECTIONS, calls // CONNECTIONS * CONNECTIONS)  # whole rounds of connections
    return [_measure(c, calls, [], {}) for c in cases]


def _selected(opts: argparse.Namespace) -> list[Case]:
    return [
        c for c in CASES
        if c.family in opts.families
        and (c.loop is None or c.loop in opts.loops)
        and (not opts.kinds or c.kind in opts.kinds)
    ]


def measure_udp(cases: list[Case], ns: Any, calls: int) -> list[Count]:
    """UDP cases inside an open SinkNamespace (``bench udp-sink --callgrind`` reuses it)."""
    prefix = ["ip", "netns", "exec", ns.name]
    return [_measure(c, calls, prefix, {"dst": ns.sink_addr}) for c in cases]


def _run_udp(cases: list[Case], calls: int) -> list[Count]:
    from .benchkit import udp_sink
    from .netns import netns_available

    if not cases:
        return []
    reason = "needs root (a network namespace with an ifb sink)" if os.geteuid() != 0 else netns_available()
    if reason is not None:
        print(f"UDP cases skipped: {reason}")
        return []
    with udp_sink() as ns:
        return measure_udp(cases, ns, calls)


def _run_tcp(cases: list[Case], calls: int) -> list[Count]:
    from .benchkit import loopback_peer

    if not cases:
        return []
    with loopback_peer(_tcp_receiver) as port:
        return [_measure(c, calls, [], {"port": port}) for c in cases]


def _run_with_peer(cases: list[Case], calls: int, family: str = "tcpread") -> list[Count]:
    """Cases whose peer runs in another process, outside callgrind (tcpread, tcpconn)."""
    if family == "tcpconn":
        from .instructions_tcpconn import peer_main
    else:
        from .instructions_tcpread import peer_main

    from .benchkit import loopback_peer

    if not cases:
        return []
    with loopback_peer(peer_main) as port:
        return [_measure(c, calls, [], {"port": port}) for c in cases]


def _is_stock(c: Count) -> bool:
    return c.kind in ("stock", "tcp-stock-write", "tcpconn-stock") or c.kind.startswith(
        ("web-stock-", "tcpread-stock-", "tcp-stock-"))


def _pair(c: Count) -> tuple[str, str, str]:
    """What a row is compared with: stock on the same loop (and body size)."""
    if c.family == "tcp":
        suffix = next((s for s in (TCP_SMALL_SUFFIX, TCP_PACED_SUFFIX) if c.kind.endswith(s)), "")
        return c.family, c.loop, suffix
    return c.family, c.loop, c.kind.rsplit("-", 1)[-1] if c.family in ("web", "tcpread") else ""


def print_table(counts: list[Count]) -> None:
    print("user instructions per call (callgrind; differential over two runs of each case)")
    print(f"{'case':<52}{'instr/call':>12}{'vs stock':>10}{'paid once':>12}  counters")
    stock = {_pair(c): c.per_call for c in counts if _is_stock(c)}
    for c in counts:
        base = stock.get(_pair(c))
        ratio = f"{c.per_call / base:.2f}x" if base and not _is_stock(c) else ""
        info = " ".join(f"{k}={v}" for k, v in c.info.items() if k in ("state", "zc_sends", "errqueue_reads", "syscalls", "pauses"))
        print(f"{c.case:<52}{c.per_call:>12,.0f}{ratio:>10}{c.once:>12,.0f}  {info}")


def _options(args: Any) -> argparse.Namespace:
    return argparse.Namespace(
        families=list(getattr(args, "families", None) or DEFAULT_FAMILIES),
        loops=list(getattr(args, "loops", None) or ["asyncio", "uvloop"]),
        kinds=list(getattr(args, "kinds", None) or []),
        calls=getattr(args, "calls", None),
    )


def run(args: Any = None) -> dict[str, Any]:
    opts = _options(args)
    reason = valgrind_missing()
    if reason is not None:
        print(f"bench instructions skipped: {reason}")
        return {"bench": "instructions", "skipped": reason, "rows": []}
    cases = _selected(opts)
    counts = _run_udp([c for c in cases if c.family == "udp"], opts.calls or DEFAULT_CALLS["udp"])
    counts += _run_tcp([c for c in cases if c.family == "tcp"], opts.calls or DEFAULT_CALLS["tcp"])
    counts += _run_web([c for c in cases if c.family == "web"], opts.calls or DEFAULT_CALLS["web"])
    counts += _run_with_peer([c for c in cases if c.family == "tcpread"], opts.calls or DEFAULT_CALLS["tcpread"])
    counts += _run_with_peer([c for c in cases if c.family == "tcpconn"], opts.calls or DEFAULT_CALLS["tcpconn"],
                           "tcpconn")
    print_table(counts)
    rows = [{**asdict(c), "series": c.case, "instructions": c.per_call} for c in counts]
    return {"bench": "instructions", "options": vars(opts), "rows": rows,
            "plot": {"y": "instructions", "title": "user instructions per call (callgrind)"}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--families", nargs="+", choices=["udp", "tcp", "web", "tcpread", "tcpconn"], default=list(DEFAULT_FAMILIES),
                        help="udp: datagrams into the sink; tcp: 64 KiB writes; tcpread: Protocol reads; "
                        "tcpconn: accepted short connections; "
                        "web: aiohttp requests "
                        "(not by default: ~1-2 minutes per case under callgrind)")
    parser.add_argument("--loops", nargs="+", choices=["asyncio", "uvloop"], default=["asyncio", "uvloop"])
    parser.add_argument("--kinds", nargs="+", choices=sorted({c.kind for c in CASES}), default=None,
                        help="only these case kinds")
    parser.add_argument("--calls", type=int, default=None,
                        help="calls in the smaller measured run (the larger makes 3x); default "
                        f"{DEFAULT_CALLS['udp']} datagrams, {DEFAULT_CALLS['tcp']} TCP writes, "
                        f"{DEFAULT_CALLS['web']} requests")


def _child_entry(argv: list[str]) -> None:
    spec = json.loads(argv[argv.index("--child") + 1])
    print(json.dumps(child_main(spec)))


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child_entry(sys.argv)
    else:
        parser = argparse.ArgumentParser(prog="python -m aiozc.tools.bench_instructions")
        add_arguments(parser)
        run(parser.parse_args())
