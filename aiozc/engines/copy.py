"""Plain copying sends: the kernel copies every byte, as a stock transport does."""

from __future__ import annotations

import socket
from typing import Any


class CopyEngine:
    name = "copy"

    def prepare(self, sock: socket.socket) -> str | None:
        return "engine='copy' was chosen"

    def send(
        self, sock: socket.socket, data: memoryview, *, zerocopy: bool, address: Any = None
    ) -> int:
        if address is None:
            return sock.send(data)
        return sock.sendto(data, address)
