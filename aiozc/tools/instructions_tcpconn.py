"""``bench instructions --families tcpconn``: an accepted, short-lived connection, per connection.

The measured process (under callgrind) serves on the loop's own server or aiozc's; a peer in
another process makes ``calls`` connections one after the other: connect, send a 18-byte
request, read the 40-byte response until the server closes (HTTP/1.0 without keep-alive,
connection churn). Per call = accept, set-up, one read, one write, close and teardown.
The same cases give wall time per connection (:func:`wall_pairs`, outside callgrind).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
from typing import Any

from . import udp_cases

REQUEST = b"GET / HTTP/1.0\r\n\r\n"
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
SERVERS = ("stock", "aiozc")


def peer_main(listener: socket.socket) -> None:
    """Per connection to the control listener: an 8-byte port and 8-byte count, the connections, then b"k"."""
    from .benchkit import pin_to_cpu, recv_exactly

    pin_to_cpu(1)
    while True:
        conn, _ = listener.accept()
        with conn:
            header = recv_exactly(conn, 16)
            port, count = int.from_bytes(header[:8], "big"), int.from_bytes(header[8:], "big")
            ok = all(_one_connection(port) for _ in range(count))
            conn.sendall(b"k" if ok else b"!")


def _one_connection(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(REQUEST)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data == RESPONSE


class _Respond(asyncio.Protocol):
    """Reads the request, writes the response, closes (what an HTTP/1.0 server does)."""

    def __init__(self, lost: Any) -> None:
        self.lost = lost
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE)
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost()


async def measure(control_port: int, kind: str, count: int) -> dict[str, Any]:
    """One measured run of ``count`` connections to a ``kind`` ("tcpconn-<server>") server."""
    import aiozc

    server_kind = kind.split("-", 1)[1]
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    seen = 0

    def lost() -> None:
        nonlocal seen
        seen += 1
        if seen == count and not done.done():
            done.set_result(None)

    create = loop.create_server if server_kind == "stock" else aiozc.create_server
    server = await create(lambda: _Respond(lost), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", control_port)
    clock = udp_cases.Clock()
    writer.write(port.to_bytes(8, "big") + count.to_bytes(8, "big"))
    await done
    reply = await reader.readexactly(1)
    timed = clock.stop()
    writer.close()
    server.close()
    await server.wait_closed()
    if reply != b"k":
        raise RuntimeError(f"{kind}: the peer saw a wrong response")
    return timed


def wall_pairs(control_port: int, loop_name: str, count: int, rounds: int) -> dict[str, Any]:
    """Seconds per connection, stock and aiozc alternating in each round; the median of the
    per-round ratios aiozc/stock (each round's pair ran back to back on the loaded machine)."""
    from .benchkit import run_on
    from .benchkit_stats import spread

    ratios: list[float] = []
    per: dict[str, list[float]] = {name: [] for name in SERVERS}
    for i in range(rounds):
        order = SERVERS if i % 2 == 0 else SERVERS[::-1]
        times = {name: run_on(loop_name, measure(control_port, f"tcpconn-{name}", count))["seconds"] / count
                 for name in order}
        for name, t in times.items():
            per[name].append(t)
        ratios.append(times["aiozc"] / times["stock"])
    return {"loop": loop_name, "us_per_conn": {k: statistics.median(v) * 1e6 for k, v in per.items()},
            "ratio": spread(ratios)}


def main() -> None:
    import argparse

    from .benchkit import loopback_peer
    from .benchkit_stats import format_spread

    parser = argparse.ArgumentParser(prog="python -m aiozc.tools.instructions_tcpconn")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--loops", nargs="+", default=["asyncio", "uvloop"])
    opts = parser.parse_args()
    with loopback_peer(peer_main) as port:
        for loop_name in opts.loops:
            r = wall_pairs(port, loop_name, opts.count, opts.rounds)
            us = r["us_per_conn"]
            print(f"{loop_name:8} stock {us['stock']:7.1f} us/conn  aiozc {us['aiozc']:7.1f} us/conn  "
                  f"aiozc/stock time {format_spread(r['ratio'])} of {opts.count} connections")

if __name__ == "__main__":
    main()
