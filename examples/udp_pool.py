"""Send datagrams from a registered BufferPool with sendto_zc, and check they all arrived.

    python examples/udp_pool.py [--count 20000] [--size 60000] [--no-pool] [--uvloop]

The sender fills slots of an ``aiozc.BufferPool``, sends each with ``sendto_zc`` on an
endpoint made with ``coalesce_zc=True`` (one sendmmsg, or one io_uring submission, per loop
iteration), and gives a slot back to the pool once its future says the kernel released it.
``engine="auto"`` picks io_uring for it where the kernel has it; with the pool registered its
slots go as fixed buffers (the kernel skips pinning their pages).

The receiver is a stock asyncio endpoint on loopback, where the kernel copies every datagram
(so expect ``zerocopy`` False and the copy fallback here); into a real network device, or the
ifb sink of ``python -m aiozc bench udp-sink``, the same code sends zero-copy. Loopback drops
what does not fit the receiver's buffer (a few datagrams of this size), so the sender stays at
most ``AHEAD`` datagrams ahead of what arrived: this shows the API, the bench shows the speed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

import uvloop

import aiozc

WINDOW = 256  # futures outstanding: completions then arrive in merged ranges
AHEAD = 2  # datagrams sent but not yet received, at most (loopback pacing, see above)


class Counter(asyncio.DatagramProtocol):
    def __init__(self, expected: int) -> None:
        self.received = 0
        self.bytes = 0
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received += 1
        self.bytes += len(data)
        if self.received == self.expected and not self.done.done():
            self.done.set_result(None)


async def main(count: int, size: int, use_pool: bool) -> None:
    loop = asyncio.get_running_loop()
    rx, counter = await loop.create_datagram_endpoint(
        lambda: Counter(count), local_addr=("127.0.0.1", 0)
    )
    # Made inside the running loop, a pool registers with the loop's io_uring by default
    # (fixed buffers: io_uring sends them without pinning pages).
    pool = aiozc.BufferPool(size, WINDOW + 1, register=use_pool)
    tx, _ = await aiozc.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=rx.get_extra_info("sockname"), coalesce_zc=True
    )
    in_flight: collections.deque[tuple[asyncio.Future[aiozc.Completion], memoryview]] = (
        collections.deque()
    )
    zerocopy = 0
    start = time.perf_counter()
    for i in range(count):
        if len(in_flight) >= WINDOW:
            future, slot = in_flight.popleft()
            zerocopy += (await future).zerocopy
            pool.release(slot)  # the kernel is done with it: reuse
        slot = pool.acquire()
        slot[:8] = i.to_bytes(8, "big")  # fill it (here: just a sequence number)
        in_flight.append((tx.sendto_zc(slot), slot))
        while i + 1 - counter.received > AHEAD:
            await asyncio.sleep(0)  # pace by the receiver (loopback drops what does not fit)
    for future, slot in in_flight:
        zerocopy += (await future).zerocopy
        pool.release(slot)
    seconds = time.perf_counter() - start
    await asyncio.wait_for(counter.done, 10)
    stats = tx.stats
    print(
        f"{count} datagrams of {size} B in {seconds:.2f} s, engine {stats.engine},"
        f" state {stats.state}, {zerocopy} completed zero-copy"
    )
    print(f"receiver got {counter.received} datagrams, {counter.bytes} bytes")
    tx.close()
    rx.close()
    await asyncio.sleep(0.1)  # the last completions, then the pool can go
    pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--size", type=int, default=60000)
    parser.add_argument(
        "--no-pool", action="store_true", help="do not register the pool (no fixed buffers)"
    )
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    runner = uvloop.run if args.uvloop else asyncio.run
    runner(main(args.count, args.size, not args.no_pool))
