"""What an accepted, short-lived TCP connection costs in system calls (issue #10: connection churn,
HTTP without keep-alive): a client sends a small request, the server writes a small response and
closes. Stock uvloop pays one epoll_ctl per connection; aiozc paid 14 on uvloop and 6 on asyncio
(its private epoll created with the connection and closed with it, the socket registered there
before connection_made, then moved to the loop's selector, plus a getpeername the accept already
answered).

Counted with ``strace -f -c`` on the server's interpreter (the client runs in another, untraced
process), two runs of N and 3N connections: the difference is what 2N connections cost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# The server (traced) and the client (not traced), one script: argv[1] says which.
_CASE = r"""
import asyncio, os, socket, sys, time

REQUEST = b"GET / HTTP/1.0\r\n\r\n"
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"

def client(portfile, count):
    while not os.path.exists(portfile):
        time.sleep(0.01)
    port = int(open(portfile).read())
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(REQUEST)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            assert data == RESPONSE, data

class Respond(asyncio.Protocol):
    def __init__(self, lost):
        self.lost = lost
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(RESPONSE)
        self.transport.close()
    def connection_lost(self, exc):
        self.lost()

async def serve(portfile, count, kind):
    import aiozc
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    seen = 0
    def lost():
        nonlocal seen
        seen += 1
        if seen == count:
            done.set_result(None)
    create = loop.create_server if kind == "stock" else aiozc.create_server
    server = await create(lambda: Respond(lost), "127.0.0.1", 0)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.rename(portfile + ".tmp", portfile)
    await done
    server.close()
    await server.wait_closed()

if sys.argv[1] == "client":
    client(sys.argv[2], int(sys.argv[3]))
else:
    from aiozc.tools.benchkit import run_on
    run_on(sys.argv[4], serve(sys.argv[2], int(sys.argv[3]), sys.argv[1]))
"""

WATCHED = ("epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "close", "setsockopt",
           "getsockopt", "getsockname", "getpeername", "ioctl")


def strace_counts(kind: str, loop: str, count: int) -> dict[str, int]:
    """System calls of the server's process serving ``count`` connections."""
    with tempfile.TemporaryDirectory() as tmp:
        portfile, out = os.path.join(tmp, "port"), os.path.join(tmp, "strace.txt")
        client = subprocess.Popen([sys.executable, "-c", _CASE, "client", portfile, str(count)])
        try:
            proc = subprocess.run(
                ["strace", "-f", "-c", "-o", out, sys.executable, "-c", _CASE, kind, portfile, str(count), loop],
                capture_output=True, text=True, timeout=120,
            )
        finally:
            client.wait(timeout=120)
        if proc.returncode != 0:
            if "ptrace" in proc.stderr or "Operation not permitted" in proc.stderr:
                pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[-200:]}")
            raise AssertionError(proc.stderr)
        assert client.returncode == 0
        calls: dict[str, int] = {}
        with open(out) as f:
            for line in f:
                fields = line.split()
                # "% time  seconds  usecs/call  calls  [errors]  syscall"
                if len(fields) >= 5 and fields[-1] in WATCHED and fields[3].isdigit():
                    calls[fields[-1]] = int(fields[3])
    return calls


def per_connection(kind: str, loop: str, n: int = 40) -> dict[str, float]:
    small, large = strace_counts(kind, loop, n), strace_counts(kind, loop, 3 * n)
    return {name: (large.get(name, 0) - small.get(name, 0)) / (2 * n) for name in WATCHED}


pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_short_connection_opens_no_epoll_and_asks_no_peer_name(loop: str) -> None:
    aiozc = per_connection("aiozc", loop)
    # The private epoll lives with the loop, not with a connection; the accept gave the peer.
    assert aiozc["epoll_create1"] == 0
    assert aiozc["close"] == 1  # the connection's socket only
    assert aiozc["getpeername"] == 0


def test_a_short_connection_on_asyncio_costs_the_stock_epoll_ctl() -> None:
    stock, aiozc = per_connection("stock", "asyncio"), per_connection("aiozc", "asyncio")
    # Registered once connection_made ran, as asyncio's own transports: ADD and DEL.
    assert aiozc["epoll_ctl"] == stock["epoll_ctl"] == 2


def test_a_short_connection_on_asyncio_costs_no_more_system_calls_than_stock() -> None:
    stock, aiozc = per_connection("stock", "asyncio"), per_connection("aiozc", "asyncio")
    for name in WATCHED:
        # SO_ZEROCOPY is the one option stock does not set (TCP_NODELAY both do).
        extra = 1 if name == "setsockopt" else 0
        assert aiozc[name] <= stock[name] + extra, (name, aiozc, stock)


def test_a_short_connection_on_uvloop_costs_at_most_its_poll_handle() -> None:
    aiozc = per_connection("aiozc", "uvloop")
    # libuv's poll handle (pollability check ADD+DEL, its DELs at stop and close) and the
    # sentinel's ADD/DEL in the private epoll; nothing for a writer never registered.
    assert aiozc["epoll_ctl"] <= 8
    assert aiozc["setsockopt"] <= 2 and aiozc["getsockname"] <= 2
