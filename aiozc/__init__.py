"""aiozc: zero-copy networking for asyncio and uvloop.

``write_zc(buf)`` returns a future that resolves when the kernel no longer needs ``buf``.
"""

from __future__ import annotations

from .base import TransportClosedError, TransportOptions
from .buffers import BufferPool
from .completions import Completion
from .datagram import ZeroCopyDatagramTransport, create_datagram_endpoint
from .policy import ZeroCopyState
from .server import Server, create_connection, create_server
from .stats import TransportStats
from .streams import ZeroCopyStreamWriter, open_connection, start_server
from .transport import ZeroCopyTransport

__version__ = "0.1.0"

__all__ = [
    "BufferPool",
    "Completion",
    "Server",
    "TransportClosedError",
    "TransportOptions",
    "TransportStats",
    "ZeroCopyDatagramTransport",
    "ZeroCopyState",
    "ZeroCopyStreamWriter",
    "ZeroCopyTransport",
    "create_connection",
    "create_datagram_endpoint",
    "create_server",
    "open_connection",
    "start_server",
]
