"""``python -m aiozc bench dask``: dask's tcp:// against aiozc's zc:// on LocalClusters with two
worker processes each, both clusters up at once and the cases interleaved round by round.

Per case and protocol: GB/s (payload bytes / wall time), CPU s/GB summed over the client process
(which hosts the LocalCluster's scheduler) and both worker processes, minor page faults per
MiB over the same processes (from /proc/PID/stat), and user-space bytes copied per payload byte,
counted at the comms' copy points in the same processes (``bench_dask_copies`` says which). On
one host the kernel copies every byte over loopback, so what differs is user-space work:
copies, allocations, faults.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.metadata
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import bench_dask_copies, bench_dask_gc

MiB = 1 << 20
# zc: aiozc's zc:// with its in-process hop (the client's comms to the LocalCluster's scheduler,
# which runs in the client's process and loop, carried by reference); zc-socket: the same with
# the hop turned off, every comm through a socket, as between machines.
PROTOCOLS = ("tcp", "zc", "zc-socket")


@dataclass
class Sample:
    case: str
    protocol: str
    nbytes: int
    seconds: float
    cpu_seconds: float
    minor_faults: int
    copied: dict[str, int] = field(default_factory=dict)  # bytes per copy point
    # CPU seconds per process: the client (which hosts the scheduler), then the workers in
    # Bench.workers order (worker->worker sends from the first to the second)
    cpu_by_process: list[float] = field(default_factory=list)
    faults_by_process: list[int] = field(default_factory=list)  # minor faults, the same order
    # zc's receive pools, summed over the processes: buffers newly made, reused, big ones carved, evicted
    pool: dict[str, int] = field(default_factory=dict)
    # CPU seconds in Python's garbage collections per process (same order), and full ones in all
    gc_by_process: list[float] = field(default_factory=list)
    full_gcs: int = 0
    hop_bytes: int = 0  # frame bytes the in-process hop carried (client process), not a socket

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu_seconds / (self.nbytes / 1e9)

    @property
    def faults_per_mib(self) -> float:
        return self.minor_faults / (self.nbytes / MiB)

    @property
    def hop_ratio(self) -> float:
        """Bytes carried in process per payload byte (gather and scatter: 1, the scheduler hop)."""
        return self.hop_bytes / self.nbytes

    @property
    def copied_ratio(self) -> float:
        """User-space bytes copied per payload byte."""
        return sum(self.copied.values()) / self.nbytes


def _proc_counters(pids: list[int]) -> tuple[float, int]:
    """(user+system CPU seconds, minor faults) summed over ``pids``."""
    per = _per_process(pids)
    return sum(cpu for cpu, _ in per), sum(faults for _, faults in per)


def _per_process(pids: list[int]) -> list[tuple[float, int]]:
    """(user+system CPU seconds, minor faults) of each of ``pids``."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after the command: state(0) ... minflt(7) ... utime(11) stime(12)
        out.append(((int(fields[11]) + int(fields[12])) / ticks, int(fields[7])))
    return out


@contextlib.contextmanager
def zc_entry_point_visible() -> Iterator[None]:
    """Worker processes find zc:// only through the entry point; when this interpreter's aiozc
    metadata predates it (a worktree on PYTHONPATH), lay a temporary dist-info that declares it."""
    if importlib.metadata.entry_points(group="distributed.comm.backends", name="zc"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="aiozc-dask-ep-") as tmp:
        dist = Path(tmp) / "aiozc_dask_entry-0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aiozc-dask-entry\nVersion: 0\n")
        (dist / "entry_points.txt").write_text("[distributed.comm.backends]\nzc = aiozc.dask:ZCBackend\n")
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [tmp, old]))
        sys.path.insert(0, tmp)  # multiprocessing's spawn hands sys.path to the child
        try:
            yield
        finally:
            sys.path.remove(tmp)
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


def _pool_counts() -> dict[str, int]:
    """This process's zc:// receive pool counters (none before a zc:// comm read anything)."""
    from aiozc.dask import comm

    pool = comm._pool
    if pool is None:
        return {}
    return {"mapped": pool.mapped, "reused": pool.reused, "carved": pool.carved, "evicted": pool.evicted}


# -- functions that run on the workers ------------------------------------------------------------


def _make(count: int, nbytes: int, seed: int) -> tuple[Any, ...]:
    import numpy as np

    return tuple(np.full(nbytes, (seed + i) % 251, dtype=np.uint8) for i in range(count))


def _make_one(nbytes: int, seed: int) -> Any:
    import numpy as np

    return np.full(nbytes, seed % 251, dtype=np.uint8)


def _total(parts: tuple[Any, ...]) -> int:
    return sum(int(p[-1]) + p.nbytes for p in parts)


class Bench:
    """One cluster and client per protocol; each case a function of (client, workers, seed)."""

    def __init__(self, protocol: str) -> None:
        import dask
        from distributed import Client, LocalCluster

        self.protocol = protocol
        scheme = protocol.split("-")[0]
        # The listener decides at start whether it takes hops: off for the whole zc-socket cluster.
        with dask.config.set({"distributed.comm.zc.hop": protocol != "zc-socket"}):
            self.cluster = LocalCluster(protocol=f"{scheme}://", processes=True, n_workers=2,
                                        threads_per_worker=1, dashboard_address=None, silence_logs=40)
            self.client = Client(self.cluster, set_as_default=False)
        self.workers = sorted(self.client.scheduler_info()["workers"])
        pids = self.client.run(os.getpid)
        self.pids = [os.getpid(), *(pids[w] for w in self.workers)]
        bench_dask_copies.install()
        self.client.run(bench_dask_copies.install)
        bench_dask_gc.install()
        self.client.run(bench_dask_gc.install)

    def _pool_counts(self) -> collections.Counter[str]:
        total = collections.Counter(_pool_counts())
        for counts in self.client.run(_pool_counts).values():
            total.update(counts)
        return total

    def _take_copies(self) -> dict[str, int]:
        total = collections.Counter(bench_dask_copies.take())
        for counts in self.client.run(bench_dask_copies.take).values():
            total.update(counts)
        return dict(total)

    def _take_gc(self) -> list[dict[str, float]]:
        """Collections since the last take, per process in ``pids`` order."""
        workers = self.client.run(bench_dask_gc.take)
        return [bench_dask_gc.take(), *(workers[w] for w in self.workers)]

    def close(self) -> None:
        self.client.close()
        self.cluster.close()

    def measure(self, case: str, nbytes: int, prepare: Callable[[], Any], timed: Callable[[Any], Any]) -> Sample:
        state = prepare()
        self._take_copies()
        pool = self._pool_counts()
        self._take_gc()
        from aiozc.dask.hop import counts as hop_counts

        hop_counts.take()
        before = _per_process(self.pids)
        start = time.perf_counter()
        timed(state)
        seconds = time.perf_counter() - start
        after = _per_process(self.pids)
        hop_bytes = hop_counts.take()["nbytes"]
        collected = self._take_gc()
        cpu = [a[0] - b[0] for a, b in zip(after, before)]
        faults = [a[1] - b[1] for a, b in zip(after, before)]
        # Taken after the counters: the client.run calls that collect them copy a little too.
        copied = self._take_copies()
        pool = self._pool_counts() - pool
        del state
        self.client.run(lambda: __import__("gc").collect())
        return Sample(case, self.protocol, nbytes, seconds, sum(cpu), sum(faults), copied, cpu,
                      faults, dict(pool), [c["gc_s"] for c in collected],
                      int(sum(c["full"] for c in collected)), hop_bytes)


def _w2w(b: Bench, count: int, size: int, seed: int) -> Sample:
    a, other = b.workers

    def prepare() -> Any:
        from distributed import wait

        data = b.client.submit(_make, count, size, seed, workers=[a], pure=False)
        with b.client.as_current():
            wait(data)  # made on a, not timed; not data.result(), which copied it all to the client
        return data

    def timed(data: Any) -> None:
        b.client.submit(_total, data, workers=[other], allow_other_workers=False, pure=False).result()

    return b.measure(f"worker->worker {count}x{_size(size)}", count * size, prepare, timed)


def _gather(b: Bench, count: int, size: int, seed: int) -> Sample:
    a = b.workers[0]

    def prepare() -> Any:
        from distributed import wait

        futures = [b.client.submit(_make_one, size, seed + i, workers=[a], pure=False) for i in range(count)]
        with b.client.as_current():
            wait(futures)
        return futures

    return b.measure(f"gather {count}x{_size(size)}", count * size, prepare, lambda f: b.client.gather(f))


def _scatter(b: Bench, count: int, size: int, seed: int) -> Sample:
    import numpy as np

    a = b.workers[0]

    def prepare() -> Any:
        return [np.full(size, (seed + i) % 251, dtype=np.uint8) for i in range(count)]

    def timed(arrays: Any) -> None:
        futures = b.client.scatter(arrays, workers=[a], hash=False)
        del futures

    return b.measure(f"scatter {count}x{_size(size)}", count * size, prepare, timed)


def _rechunk(b: Bench, side: int, seed: int) -> Sample:
    import dask.array as da

    def prepare() -> Any:
        x = da.ones((side, side), chunks=(side, side // 16), dtype="float64") * (seed % 7)
        return b.client.persist(x)

    def timed(x: Any) -> None:
        b.client.compute(x.rechunk((side // 16, side)).sum()).result()

    return b.measure(f"rechunk {side}x{side} f8", side * side * 8, prepare, timed)


def _by_process(sample: Sample) -> str:
    gb = sample.nbytes / 1e9
    mib = sample.nbytes / MiB
    return ("/".join(f"{cpu / gb:.2f}" for cpu in sample.cpu_by_process) + " flt/MiB "
            + "/".join(f"{faults / mib:.1f}" for faults in sample.faults_by_process)
            + "".join(f" {key} {n}" for key, n in sample.pool.items())
            + " gc s " + "/".join(f"{s:.3f}" for s in sample.gc_by_process) + f" full {sample.full_gcs}")


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // 1024} KiB"


def cases(scale: int) -> list[tuple[str, str, Callable[[Bench, int], Sample]]]:
    """(kind, the case's name as reported, the function) for every case."""
    big, mid, small = 256 * MiB // scale, 4 * MiB // scale, 32 << 10
    side = 8192 // max(1, int(scale ** 0.5))
    out: list[tuple[str, str, Callable[[Bench, int], Sample]]] = [
        ("w2w", f"worker->worker 4x{_size(big)}", lambda b, s: _w2w(b, 4, big, s)),
    ]
    for count, size in [(4, big), (1, big), (64, mid), (2048 // scale, small)]:
        out.append(("gather", f"gather {count}x{_size(size)}",
                    lambda b, s, c=count, z=size: _gather(b, c, z, s)))  # type: ignore[misc]
        out.append(("scatter", f"scatter {count}x{_size(size)}",
                    lambda b, s, c=count, z=size: _scatter(b, c, z, s)))  # type: ignore[misc]
    out.append(("rechunk", f"rechunk {side}x{side} f8", lambda b, s: _rechunk(b, side, s)))
    return out


def chosen_cases(scale: int, only: list[str] | None = None,
                 names: list[str] | None = None) -> list[tuple[str, str, Callable[[Bench, int], Sample]]]:
    """The cases of the kinds in ``only`` (all if None) whose names contain one of ``names``."""
    return [case for case in cases(scale)
            if (not only or case[0] in only) and (not names or any(n in case[1] for n in names))]


def _table(samples: list[Sample]) -> list[dict[str, Any]]:
    rows = []
    names = list(dict.fromkeys(s.case for s in samples))
    for name in names:
        row: dict[str, Any] = {"case": name}
        for proto in PROTOCOLS:
            mine = [s for s in samples if s.case == name and s.protocol == proto]
            if not mine:
                continue
            key = proto.replace("-", "_")
            row[f"{key}_gbps"] = statistics.median(s.gbps for s in mine)
            row[f"{key}_cpu_s_per_gb"] = statistics.median(s.cpu_s_per_gb for s in mine)
            row[f"{key}_faults_per_mib"] = statistics.median(s.faults_per_mib for s in mine)
            row[f"{key}_copied_ratio"] = statistics.median(s.copied_ratio for s in mine)
            row[f"{key}_hop_ratio"] = statistics.median(s.hop_ratio for s in mine)
        row["speed_ratio"] = row["zc_gbps"] / row["tcp_gbps"]
        row["cpu_ratio"] = row["zc_cpu_s_per_gb"] / row["tcp_cpu_s_per_gb"]
        if "zc_socket_gbps" in row:
            row["socket_speed_ratio"] = row["zc_socket_gbps"] / row["tcp_gbps"]
            row["socket_cpu_ratio"] = row["zc_socket_cpu_s_per_gb"] / row["tcp_cpu_s_per_gb"]
        rows.append(row)
    return rows


def _print(rows: list[dict[str, Any]], rounds: int) -> None:
    print(f"\ndask LocalCluster, 2 worker processes, median of {rounds} interleaved round(s)")
    print("zc: zc:// as it runs, the client's comms to its in-process scheduler through the hop (hop: bytes"
          " carried in process per payload byte); zc-sock: zc:// with the hop off, every byte through a socket")
    print("copied: user-space bytes copied per payload byte (dask's shard rejoin, tcp's message join and"
          " tornado's buffers, zc's joins and scratch; see aiozc.tools.bench_dask_copies)")
    protos = [p for p in ("tcp", "zc", "zc_socket") if f"{p}_gbps" in rows[0]] if rows else []
    short = {"tcp": "tcp", "zc": "zc", "zc_socket": "zc-sock"}
    head = f"{'case':<26}" + "".join(f" {short[p] + ' GB/s':>12}" for p in protos)
    head += f" {'zc/tcp':>7}" + (f" {'sock/tcp':>8}" if "zc_socket" in protos else "") + f" {'hop':>5}"
    for metric in ("CPU s/GB", "flt/MiB", "copied"):
        head += "".join(f" {short[p] + ' ' + metric:>{max(12, len(short[p]) + len(metric) + 2)}}" for p in protos)
    print(head)
    for r in rows:
        line = f"{r['case']:<26}" + "".join(f" {r[f'{p}_gbps']:>12.2f}" for p in protos)
        line += f" {r['speed_ratio']:>6.2f}x"
        if "zc_socket" in protos:
            line += f" {r['socket_speed_ratio']:>7.2f}x"
        line += f" {r['zc_hop_ratio']:>5.2f}"
        for metric, key, fmt in (("CPU s/GB", "cpu_s_per_gb", ".2f"), ("flt/MiB", "faults_per_mib", ".1f"),
                                 ("copied", "copied_ratio", ".4f")):
            line += "".join(f" {r[f'{p}_{key}']:>{max(12, len(short[p]) + len(metric) + 2)}{fmt}}" for p in protos)
        print(line)


def run(args: Any = None) -> dict[str, Any]:
    rounds = getattr(args, "rounds", 3)
    scale = getattr(args, "scale", 1)
    only = getattr(args, "only", None)
    names = getattr(args, "case", None)
    protocols = tuple(p for p in PROTOCOLS if p in (getattr(args, "protocols", None) or PROTOCOLS))
    if not {"tcp", "zc"} <= set(protocols):
        raise SystemExit("--protocols must include tcp and zc (the ratios compare them)")
    chosen = chosen_cases(scale, only, names)
    if not chosen:
        raise SystemExit(f"no case matches --only {only} --case {names}")
    samples: list[Sample] = []
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with zc_entry_point_visible():
        benches = {proto: Bench(proto) for proto in protocols}
        try:
            for _, _, fn in chosen:  # warm-up: connections, pools, imports
                for bench in benches.values():
                    fn(bench, 0)
            for rnd in range(rounds):
                for _, _, fn in chosen:
                    order = protocols if rnd % 2 == 0 else protocols[::-1]
                    for proto in order:
                        sample = fn(benches[proto], rnd + 1)
                        samples.append(sample)
                        print(f"  round {rnd + 1} {sample.case:<26} {proto:>9}: {sample.gbps:6.2f} GB/s "
                              f"{sample.cpu_s_per_gb:5.2f} CPU s/GB {sample.faults_per_mib:7.1f} flt/MiB "
                              f"copied {sample.copied_ratio:.4f} hop {sample.hop_ratio:.2f} by process (client, workers): CPU s/GB "
                              f"{_by_process(sample)}", flush=True)
        finally:
            for bench in benches.values():
                bench.close()
    rows = _table(samples)
    _print(rows, rounds)
    return {"options": {"rounds": rounds, "scale": scale, "only": only, "case": names,
                        "protocols": list(protocols)}, "rows": rows,
            "samples": [asdict(s) for s in samples]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                        help="clusters to run (zc-socket: zc:// with the in-process hop off)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--scale", type=int, default=1, help="divide the payload sizes by this (quick runs)")
    parser.add_argument("--only", nargs="*", choices=["w2w", "gather", "scatter", "rechunk"],
                        help="run only these kinds of case")
    parser.add_argument("--case", action="append", metavar="TEXT",
                        help="run only the cases whose name contains TEXT (repeatable), e.g. --case '64x4'")


if __name__ == "__main__":
    run(argparse.Namespace(rounds=1, scale=8, only=None, case=None))
