"""Stream numpy arrays between two processes with aiozc.tensors.

    python examples/tensor_stream.py                       # 64 x 16 MiB float32 arrays
    python examples/tensor_stream.py --size-mib 64 --count 32 --loop asyncio

A *consumer* process serves a tensor channel on loopback and receives every array straight
into one preallocated buffer (``recv(out=buf)``); a *producer* process connects and sends.
Both are ordinary asyncio programs, started with multiprocessing's ``spawn``. The consumer
shows a progress bar (tqdm if installed, else a plain text bar) and both print throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from aiozc import tensors

MiB = 1 << 20
HOST = "127.0.0.1"


class Progress(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


class TextBar:
    """A dependency-free progress bar for terminals without tqdm."""

    def __init__(self, total: int, desc: str, width: int = 40) -> None:
        self.total, self.desc, self.width = total, desc, width
        self.done = 0
        self.started = time.perf_counter()
        self._last_draw = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last_draw > 0.1 or self.done >= self.total:  # redraw at most 10x/s
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        rate = self.done / max(now - self.started, 1e-9) / MiB
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r{self.desc} [{bar}] {fraction:6.1%} {rate:8.1f} MiB/s")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def progress_bar(total_bytes: int, desc: str) -> Progress:
    try:
        from tqdm import tqdm
    except ImportError:
        return TextBar(total_bytes, desc)
    return tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


def make_array(shape: tuple[int, ...], index: int) -> np.ndarray:
    """Deterministic content, so the consumer can check every array arrived intact."""
    array = np.empty(shape, np.float32)
    array.fill(index)
    return array


def report(role: str, nbytes: int, seconds: float) -> None:
    print(f"{role}: {nbytes / MiB:.0f} MiB in {seconds:.2f} s = {nbytes / seconds / 1e9:.2f} GB/s", flush=True)


# ------------------------------------------------------------------------------ consumer process


async def consume(args: argparse.Namespace, ready: Connection) -> None:
    finished = asyncio.get_running_loop().create_future()

    async def handler(chan: tensors.Channel) -> None:
        first = await chan.recv_frame()  # the first frame says what follows
        shape, count = first.array.shape, first.metadata["count"]
        buffer = np.empty(shape, np.float32)  # every later array lands here, in place
        bar = progress_bar(count * buffer.nbytes, "received")
        started = time.perf_counter()
        for index in range(count):
            frame = await chan.recv_frame(out=buffer)
            if frame.metadata["index"] != index or buffer[0, 0] != index or buffer[-1, -1] != index:
                raise AssertionError(f"array {index} arrived damaged")
            bar.update(buffer.nbytes)
        bar.close()
        report("consumer", count * buffer.nbytes, time.perf_counter() - started)
        await chan.send(np.array(count), name="done")  # tell the producer we have everything
        finished.set_result(None)

    async with await tensors.serve(handler, HOST, 0) as server:
        ready.send(server.sockets[0].getsockname()[1])
        await finished


# ------------------------------------------------------------------------------ producer process


async def produce(args: argparse.Namespace, port: int) -> None:
    rows = args.size_mib * MiB // 4 // 1024
    shape = (rows, 1024)
    async with await tensors.connect(HOST, port) as chan:
        await chan.send(np.zeros(shape, np.float32), name="shape", metadata={"count": args.count})
        # Two arrays alternate: while one is still pinned by the kernel the other is refilled.
        arrays = [make_array(shape, 0), make_array(shape, 1)]
        in_flight: list[asyncio.Future[Any]] = [asyncio.get_running_loop().create_future() for _ in arrays]
        for f in in_flight:
            f.set_result(None)
        started = time.perf_counter()
        for index in range(args.count):
            slot = index % 2
            await in_flight[slot]  # the kernel released this array: safe to overwrite
            arrays[slot].fill(index)
            await chan.drain()  # the transport's high-water mark bounds what we pin
            in_flight[slot] = chan.send_nowait(arrays[slot], name="chunk", metadata={"index": index})
        await asyncio.gather(*in_flight)
        ack = await chan.recv_frame()
        assert ack.name == "done" and int(ack.array) == args.count
        report("producer", args.count * arrays[0].nbytes, time.perf_counter() - started)


# ------------------------------------------------------------------------------ process plumbing


def run_loop(loop_name: str, coro: Any) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop]
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


def consumer_main(args: argparse.Namespace, ready: Connection) -> None:
    run_loop(args.loop, consume(args, ready))


def producer_main(args: argparse.Namespace, port: int) -> None:
    run_loop(args.loop, produce(args, port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=16, help="size of each array (MiB)")
    parser.add_argument("--count", type=int, default=64, help="number of arrays")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)

    ctx = multiprocessing.get_context("spawn")
    ready_recv, ready_send = ctx.Pipe(duplex=False)
    consumer = ctx.Process(target=consumer_main, args=(args, ready_send), name="consumer")
    consumer.start()
    if not ready_recv.poll(60):
        consumer.kill()
        raise SystemExit("the consumer did not start")
    producer = ctx.Process(target=producer_main, args=(args, ready_recv.recv()), name="producer")
    producer.start()
    producer.join()
    consumer.join(30)
    failed = [p.name for p in (producer, consumer) if p.exitcode != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
