"""What a Protocol's reads cost in system calls, counted with ``strace -f -c`` on the reading
interpreter, two runs of N and 3N messages (the difference is what 2N messages cost).

A message of 20 or 100 kB is read in one recv straight into a new bytes of the read size (cut to
what came: _core_recv.c read_once). glibc serves such a 256 KiB malloc from mmap until a chunk
that large was freed, and a reader whose reads never fill the read size never frees one: on
uvloop (whose process had not freed one) each read then cost mmap, mremap and munmap, 3 system
calls and a page fault more than stock uvloop's read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from udp_helpers import strace_call_counts

# The reader (traced): messages of argv[3] bytes from the other end of a socket pair, each
# waited for, written by the traced process itself (a send per message, counted apart).
_CASE = r"""
import asyncio, socket, sys

class Counting(asyncio.Protocol):
    def __init__(self):
        self.got = 0
        self.arrived = asyncio.Event()
    def data_received(self, data):
        self.got += len(data)
        self.arrived.set()

async def main(kind, size, count):
    import aiozc
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    create = aiozc.create_connection if kind == "aiozc" else loop.create_connection
    transport, protocol = await create(Counting, sock=ours)
    message = b"m" * size
    for k in range(1, count + 1):
        theirs.send(message)
        while protocol.got < k * size:
            protocol.arrived.clear()
            await protocol.arrived.wait()
    transport.close()
    theirs.close()

kind, loop_name, size, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if loop_name == "uvloop":
    import uvloop
    uvloop.run(main(kind, size, count))
else:
    asyncio.run(main(kind, size, count))
"""

MAPPING = ("mmap", "mremap", "munmap")
READS = ("recvfrom", "read", "recvmsg")


def strace_counts(kind: str, loop: str, size: int, count: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "strace.txt")
        proc = subprocess.run(
            ["strace", "-f", "-c", "-o", out, sys.executable, "-c", _CASE, kind, loop, str(size), str(count)],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        )
        if proc.returncode != 0:
            if "ptrace" in proc.stderr or "Operation not permitted" in proc.stderr:
                pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[-200:]}")
            raise AssertionError(proc.stderr)
        with open(out) as f:
            return strace_call_counts(f.read())


def per_message(kind: str, loop: str, size: int, n: int = 100) -> dict[str, float]:
    small, large = strace_counts(kind, loop, size, n), strace_counts(kind, loop, size, 3 * n)
    return {name: (large.get(name, 0) - small.get(name, 0)) / (2 * n) for name in set(small) | set(large)}


pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


@pytest.mark.parametrize("size", [20_000, 100_000])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_partial_read_maps_no_memory(loop: str, size: int) -> None:
    calls = per_message("aiozc", loop, size)
    # (the fault was 3 per read; the interpreter's own arenas may map a few in 2N messages)
    assert sum(calls.get(name, 0) for name in MAPPING) < 0.2, {n: calls.get(n) for n in MAPPING + READS}
    # one read per message (the sender's one send lands before the reader wakes, mostly)
    assert 0.95 <= sum(calls.get(name, 0) for name in READS) <= 1.5, {n: calls.get(n) for n in MAPPING + READS}


def test_a_read_on_asyncio_waits_once_in_the_loop_selector() -> None:
    # A reading socket sits in asyncio's own selector (readiness, on_loop): the loop's
    # epoll_waits are stock asyncio's (here 2 per message: the read's, then the iteration
    # that runs the woken coroutine), and none is added in the private epoll.
    stock, ours = per_message("stock", "asyncio", 20_000), per_message("aiozc", "asyncio", 20_000)
    assert ours.get("epoll_wait", 0) <= stock.get("epoll_wait", 0) + 0.05, (ours, stock)
    assert ours.get("recvfrom", 0) <= stock.get("recvfrom", 0) + 0.05, (ours, stock)
