"""MSG_ZEROCOPY: send(2) with a flag; completions arrive on the socket's error queue."""

from __future__ import annotations

import socket
from typing import Any

from .._sys.kernel import MSG_ZEROCOPY, enable_zerocopy


class MsgZeroCopyEngine:
    name = "msg_zerocopy"

    def prepare(self, sock: socket.socket) -> str | None:
        return enable_zerocopy(sock)

    def send(
        self, sock: socket.socket, data: memoryview, *, zerocopy: bool, address: Any = None
    ) -> int:
        flags = MSG_ZEROCOPY if zerocopy else 0
        if address is None:
            return sock.send(data, flags)
        return sock.sendto(data, flags, address)
