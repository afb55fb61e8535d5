"""aiozc: zero-copy networking for asyncio and uvloop.

``write_zc(buf)`` returns a future that resolves when the kernel no longer needs ``buf``.
"""

from __future__ import annotations

from .base import TransportClosedError, TransportOptions
from .buffers import BufferPool
from .completions import Completion
from .datagram import ZeroCopyDatagramTransport, create_datagram_endpoint
from .policy import ZeroCopyState
from .connect import connect_accepted_socket
from .loop import EventLoopPolicy, install, new_event_loop, run
from .server import Server, create_connection, create_server
from .tls import start_tls
from .stats import TransportStats
from .streams import ZeroCopyStreamWriter, open_connection, start_server
from .transport import ZeroCopyTransport

__version__ = "0.1.0"

__all__ = [
    "BufferPool",
    "Completion",
    "EventLoopPolicy",
    "Server",
    "TransportClosedError",
    "TransportOptions",
    "TransportStats",
    "ZeroCopyDatagramTransport",
    "ZeroCopyState",
    "ZeroCopyStreamWriter",
    "ZeroCopyTransport",
    "connect_accepted_socket",
    "create_connection",
    "create_datagram_endpoint",
    "create_server",
    "install",
    "new_event_loop",
    "open_connection",
    "run",
    "start_server",
    "start_tls",
]
