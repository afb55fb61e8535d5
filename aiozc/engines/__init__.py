"""Send engines: the only place where zero-copy mechanisms differ.

A transport owns the queue, the completion tracker, the policy and the stats; an engine only
knows how to hand one chunk to the kernel, with or without asking for zero-copy. Engines that
learn about completions themselves (io_uring) report them back through the transport's
``on_zerocopy_range``; MSG_ZEROCOPY completions arrive on the socket's error queue, which the
transport drains for every engine because ICMP errors (IP_RECVERR) arrive there too.
"""

from __future__ import annotations

import socket
from typing import Protocol

Address = object


class Engine(Protocol):
    name: str

    def prepare(self, sock: socket.socket) -> str | None:
        """Make ``sock`` ready for zero-copy sends. ``None`` if it is, else why not."""

    def send(
        self, sock: socket.socket, data: memoryview, *, zerocopy: bool, address: Address | None = None
    ) -> int:
        """One send call. Returns bytes accepted; raises BlockingIOError / OSError like socket.send."""


def get_engine(name: str) -> Engine:
    from .copy import CopyEngine
    from .msg_zerocopy import MsgZeroCopyEngine

    if name in ("auto", "msg_zerocopy"):
        return MsgZeroCopyEngine()
    if name == "copy":
        return CopyEngine()
    raise ValueError(f"unknown engine {name!r}: expected 'auto', 'msg_zerocopy' or 'copy'")
