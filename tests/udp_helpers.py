"""Small helpers shared by the UDP and io_uring tests."""

from __future__ import annotations

import asyncio
import re
import socket


def strace_call_counts(table: str) -> dict[str, int]:
    """Calls per system call from an ``strace -c`` table (the errors column may be empty)."""
    calls: dict[str, int] = {}
    for line in table.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    return calls


def closed_port() -> tuple[str, int]:
    """A loopback UDP address nobody listens on: datagrams sent there draw ICMP port
    unreachable, which a connected socket reports as ECONNREFUSED."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    addr = s.getsockname()
    s.close()
    return addr


class ErrorRecorder(asyncio.DatagramProtocol):
    """Keeps what error_received() got."""

    def __init__(self) -> None:
        self.errors: list[OSError] = []

    def error_received(self, exc: OSError) -> None:
        self.errors.append(exc)


def buffer_locked(buf: bytearray) -> bool:
    """True while some buffer export (a pin, a memoryview) prevents resizing ``buf``."""
    try:
        buf.append(0)
    except BufferError:
        return True
    buf.pop()
    return False
