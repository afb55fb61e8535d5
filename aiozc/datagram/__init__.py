"""The zero-copy UDP transport: asyncio.DatagramTransport plus ``sendto_zc(buf) -> Future[Completion]``.

One datagram is one send call, so one zero-copy datagram consumes exactly one MSG_ZEROCOPY id and
is one tracker write; a copied datagram is done once the kernel took it and resolves at once. Every
datagram given to ``sendto()`` and ``sendto_zc()`` leaves in call order through one queue; the queue
only fills while the socket's send buffer is full (EAGAIN).

Batches. ``sendto_zc_many(bufs)`` sends many datagrams with one future and one tracker write:
on a connected socket through sendmmsg(2) (:mod:`aiozc._sys.mmsg`), up to 1024 datagrams per call,
each consuming one MSG_ZEROCOPY id in order (measured on the ifb sink). sendmmsg reports an
error only for its first datagram; a later one that failed just ends the call early, and if
that was a qdisc drop (ENOBUFS with IP_RECVERR) its id was used: the transport checks the error
queue for it before resending. ``coalesce_zc=True`` makes ``sendto_zc()`` queue its datagram for
one such batch per event-loop iteration. On the sink at 64000 B (CPU per datagram): raw
MSG_ZEROCOPY loop ~3.2 us, sendto_zc_many ~3.8 us, coalesced sendto_zc ~4.4 us, sendto_zc
~5.7 us, stock asyncio sendto ~6.5 us.

What may go zero-copy: buffers given to ``sendto_zc()`` (held until their future resolves) and exact
``bytes`` given to ``sendto()`` (immutable, so holding a reference is as good as a copy). Anything
mutable given to ``sendto()`` is sent at once from the caller's buffer by a plain copying send, or
copied into the queue if it has to wait: asyncio's contract lets the caller reuse it on return.

Errors. The transport enables IP_RECVERR / IPV6_RECVERR, so ICMP errors (port unreachable...) are
queued on the socket's error queue next to the zero-copy notifications; the shared drain hands them
to ``_on_socket_error_message`` and they reach ``protocol.error_received`` exactly once. Linux also
stores an ICMP error in ``sk_err``, which the *next* send or recv on the socket returns (and

The transport is assembled from one module per concern (see transport.py); endpoint.py has
``create_datagram_endpoint``.
"""

from __future__ import annotations

from ._common import (
    MAX_UDP4_PAYLOAD,
    MAX_UDP6_PAYLOAD,
    UDP_ERRQUEUE_DRAIN_EVERY,
    UDP_ZC_THRESHOLD,
    max_datagram_size,
)
from .endpoint import create_datagram_endpoint
from .transport import ZeroCopyDatagramTransport

__all__ = [
    "MAX_UDP4_PAYLOAD",
    "MAX_UDP6_PAYLOAD",
    "UDP_ERRQUEUE_DRAIN_EVERY",
    "UDP_ZC_THRESHOLD",
    "ZeroCopyDatagramTransport",
    "create_datagram_endpoint",
    "max_datagram_size",
]
