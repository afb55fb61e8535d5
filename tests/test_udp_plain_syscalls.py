"""aiozc's plain sendto() (a copy) makes one send(2) per datagram and nothing else while nothing is
pending, on every engine and loop: no io_uring_enter on the io_uring engine (whose ring is idle
then), no extra epoll_wait. What ``bench udp-sink``'s plain-sendto rows compare with stock's
one send per datagram (counted there with strace and kernel tracepoints: the same kernel work).

Counted with ``strace -f -c`` in a fresh interpreter, two runs of N and 3N datagrams: the
difference is what the extra 2N datagrams cost, start-up and teardown cancel out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from aiozc._sys import core as _core
from aiozc.engines.io_uring import uring_unavailable_reason

_CASE = """
import asyncio, json, socket, sys
from aiozc.datagram import create_datagram_endpoint
from aiozc.tools.benchkit import run_on

count, engine, loop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))  # never read: loopback drops what its buffer cannot take, send succeeds

async def main():
    transport, _ = await create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=rx.getsockname(), engine=engine)
    view = memoryview(bytearray(b"p" * 1000))
    for _ in range(count):
        transport.sendto(view)
    out = {"engine": transport.stats.engine, "compiled": transport._hot_d is not None,
           "copy_sends": transport.stats.copy_sends, "queued": transport.get_write_buffer_size()}
    transport.close()
    await asyncio.sleep(0)
    return out

print(json.dumps(run_on(loop, main())))
"""

_WATCHED = ("sendto", "sendmsg", "io_uring_enter", "epoll_wait", "epoll_pwait")


def _strace_counts(count: int, engine: str, loop: str) -> tuple[dict[str, int], dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "strace.txt")
        proc = subprocess.run(
            ["strace", "-f", "-c", "-o", out, sys.executable, "-c", _CASE, str(count), engine, loop],
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            if "ptrace" in proc.stderr or "Operation not permitted" in proc.stderr:
                pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[-200:]}")
            raise AssertionError(proc.stderr)
        calls: dict[str, int] = {}
        with open(out) as f:
            for line in f:
                fields = line.split()
                # "% time  seconds  usecs/call  calls  [errors]  syscall"
                if len(fields) >= 5 and fields[-1] in _WATCHED and fields[3].isdigit():
                    calls[fields[-1]] = int(fields[3])
    return calls, json.loads(proc.stdout.strip().splitlines()[-1])


ENGINES = ["msg_zerocopy", "io_uring"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("engine", ENGINES)
def test_plain_sendto_is_one_send_syscall_per_datagram_and_nothing_else(engine: str, loop: str) -> None:
    if engine == "io_uring" and uring_unavailable_reason() is not None:
        pytest.skip(f"io_uring: {uring_unavailable_reason()}")
    n = 300
    small, info = _strace_counts(n, engine, loop)
    large, info_large = _strace_counts(3 * n, engine, loop)
    assert info["engine"] == engine and info["queued"] == 0
    assert info["compiled"] == _core.compiled  # the compiled path where there is one
    assert info_large["copy_sends"] == 3 * n
    extra = {name: large.get(name, 0) - small.get(name, 0) for name in _WATCHED}
    assert extra == {"sendto": 2 * n, "sendmsg": 0, "io_uring_enter": 0, "epoll_wait": 0, "epoll_pwait": 0}
