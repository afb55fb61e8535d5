"""The zero-copy UDP transport: asyncio.DatagramTransport plus ``sendto_zc(buf) -> Future[Completion]``.

The class is put together from one module per concern:

* hot.py: the per-call path through the compiled core (one C call per datagram);
* sending.py: the general one-datagram path (queue, retries, errors), every engine;
* batching.py: ``sendto_zc_many`` (sendmmsg); coalescing.py: ``coalesce_zc=True``;
* uring.py: the io_uring engine's SEND_ZC requests and their results.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
from typing import Any

from .._sys import kernel as _kernel, mmsg as _mmsg
from ..base import TransportOptions, ZeroCopyTransportBase, byte_view
from ..completions import Completion
from ..readiness import Multiplexer
from . import hot as _hot
from ._common import (
    _INET_READ_SIZE,
    _READS_PER_EVENT,
    UDP_ERRQUEUE_DRAIN_EVERY,
    UDP_ZC_THRESHOLD,
    _Datagram,
    _enable_recverr_if_inet,
    _socket_error,
    max_datagram_size,
)
from .batching import _BatchingMixin
from .coalescing import _CoalescingMixin
from .hot import _HotPathMixin
from .sending import _SendingMixin
from .uring import _UringMixin


class ZeroCopyDatagramTransport(
    _HotPathMixin,
    _CoalescingMixin,
    _BatchingMixin,
    _UringMixin,
    _SendingMixin,
    ZeroCopyTransportBase,
    asyncio.DatagramTransport,
):
    """UDP transport over MSG_ZEROCOPY (or another engine); see the package docstring."""

    # io_uring: each zero-copy datagram is one SEND_ZC request, many in flight at once.
    _async_sends = True

    # The state every instance sets in __init__ (here and in ZeroCopyTransportBase) lives in
    # slots, not in the instance dict: CPython 3.11 keeps at most 30 attributes inline, and a
    # dict past that (54 attributes) stops LOAD_METHOD from specializing on the transport, so
    # each ``transport.sendto_zc(...)`` in a caller's loop paid a full method lookup (~0.2k
    # instructions, callgrind). None of these names has a class-level default in a base (a
    # slot would shadow it); what stays in the dict are the attributes that do (_hot_*, ...).
    __slots__ = (
        # ZeroCopyTransportBase.__init__
        "_loop", "_make_future", "_copy_completions", "_sock", "_fd", "_protocol", "_options",
        "_reading", "_queued", "_protocol_paused", "_high_water", "_low_water", "_engine_now",
        "_submit_zc_fn", "_zc_in_flight", "_policy", "_tracker", "stats", "_errqueue_ok",
        "_closing", "_conn_lost", "_close_timer", "_zc_since_drain", "_mux",
        # ZeroCopyDatagramTransport.__init__
        "_queue", "_address", "_lost_sends", "_classifying", "_stale_icmp", "_own_error_queued",
        "_enobufs_datagram", "_enobufs_consumed", "_max_size", "_fast_max", "_read_size",
        "_connected", "_mmsg", "_batching", "_deferred_calls", "_coalesce", "_co_handle",
        # read by the compiled sendto_zc / sendto methods (hot.compiled_methods)
        "_hot_zc", "_hot_send",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, method in _hot.subclass_methods(cls).items():  # (see hot.subclass_methods)
            setattr(cls, name, method)

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        options: TransportOptions | None = None,
        *,
        address: Any = None,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        coalesce_zc: bool = False,
    ) -> None:
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"a datagram socket was expected, got {sock!r}")
        self._queue: collections.deque[_Datagram] = collections.deque()
        self._hot_zc = self._hot_send = None  # the compiled path's builtins (_hot_setup)
        self._address = address  # default destination (remote_addr), None if none
        self._lost_sends = 0
        # While a send error is being classified: errno of the exception, and what the error
        # queue said about it (see _classify_send_error).
        self._classifying: int | None = None
        self._stale_icmp = False
        self._own_error_queued = False
        # While a zero-copy send's ENOBUFS is being classified (see _zerocopy_enobufs).
        self._enobufs_datagram: _Datagram | None = None
        self._enobufs_consumed = False
        self._max_size = max_datagram_size(sock)
        options = options or TransportOptions(
            zc_threshold=UDP_ZC_THRESHOLD,
            errqueue_drain_every=UDP_ERRQUEUE_DRAIN_EVERY,
            probe_first=False,
        )
        # Largest datagram of the compiled path and of sendmmsg batches; 0 (none of them)
        # where the size limit is not UDP's.
        self._fast_max = self._max_size or 0
        self._read_size = _INET_READ_SIZE if self._max_size else options.read_size
        _enable_recverr_if_inet(sock)
        self._batches_sends = coalesce_zc
        asyncio.DatagramTransport.__init__(self, extra)
        ZeroCopyTransportBase.__init__(self, loop, sock, protocol, options, extra)
        self._connected = self._extra.get("peername") is not None
        # sendto_zc_many(): the sendmmsg arrays (made on first use), and while a batch is being
        # handed to the kernel, the protocol callbacks it raised (run once it is, see _defer).
        self._mmsg: _mmsg.MmsgSender | None = None
        self._batching = False
        self._deferred_calls: list[tuple[str, Any]] = []
        # coalesce_zc: sendto_zc() datagrams waiting for this loop iteration's sendmmsg flush.
        self._coalesce = coalesce_zc
        self._co: Any = None  # its Coalescer (coalescing.py)
        self._co_handle: asyncio.Handle | None = None
        self._hot_setup()
        self._co_setup()
        loop.call_soon(self._connection_made, waiter)

    # -- readiness -------------------------------------------------------------------------

    def _mask(self) -> int:
        read = self._reading and not self._closing
        return Multiplexer.mask(read=read, write=bool(self._queue))

    def _read_ready(self, events: int) -> None:
        for _ in range(_READS_PER_EVENT):
            if not self._reading or self._closing or self._sock is None:
                return
            try:
                data, addr = self._sock.recvfrom(self._read_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A pending ICMP error (sk_err) is returned by recv once; the same error also
                # sits on the error queue, and is reported from there.
                self._report_soft_error(exc)
                continue
            self._protocol.datagram_received(data, addr)  # type: ignore[attr-defined]

    def _write_ready(self) -> None:
        self._flush()

    def _on_error_event(self) -> None:
        if self._drain_errqueue() or self._sock is None:
            return
        # On a datagram socket sk_err is a soft, per-datagram error (an ICMP error without
        # IP_RECVERR, e.g. AF_UNIX): report it like asyncio does, never close the transport.
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._error_received(OSError(err, os.strerror(err)))

    def _on_socket_error_message(self, message: _kernel.SocketError) -> None:
        if self._classifying is not None and message.errno == self._classifying:
            if message.origin in (_kernel.SO_EE_ORIGIN_ICMP, _kernel.SO_EE_ORIGIN_ICMP6):
                self._stale_icmp = True  # an earlier datagram's ICMP error: report it
            else:
                # A local error queued for the very send that raised (ip_local_error, e.g.
                # EMSGSIZE): the raised exception reports it, don't report it twice.
                self._own_error_queued = True
                return
        self._error_received(_socket_error(message))

    def _sync_state(self) -> None:
        super()._sync_state()
        self._hot_sync()

    # -- sending ---------------------------------------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """asyncio's contract: ``data`` may be reused on return; errors go to error_received.

        Exact ``bytes`` at or above ``zc_threshold`` may be sent zero-copy (held, not copied).
        A zero-length datagram is sent (Python >= 3.12 asyncio behaviour).
        """
        if self._co:
            self._flush_coalesced()  # coalesce_zc: the earlier sendto_zc() datagrams go first
        send = self._hot_send  # (an attribute, then a call: self._hot_send(data) would be an
        # unspecialized LOAD_METHOD, ~250 instructions, callgrind)
        if addr is None and send is not None:
            # The compiled path (hot.py): one C call; r is 0 unless there is more to do.
            r = send(data)
            if r:
                self._hot_sendto_result(r, data)
            return None
        if addr is None and self._direct_copy and (data.__class__ is bytearray or data.__class__ is memoryview):
            return self._direct_sendto(data)  # the pure path's copy: one socket.send
        self._in_sendto(self._sendto, data, addr)

    def sendto_zc(self, buf: Any, addr: Any = None) -> asyncio.Future[Completion]:
        """Send ``buf`` as one datagram without copying it where the kernel allows.

        ``buf`` (any C-contiguous buffer) stays referenced until the future resolves; then it
        may be reused. Raises ValueError for a datagram larger than UDP allows, OSError if the
        kernel refuses it at once (the datagram was not sent); a datagram that had to wait for
        socket space and then failed fails its future instead.

        Pipeline: keep many futures outstanding (at least ``errqueue_drain_every``, 64 by
        default) and await the oldest. Completions then arrive in merged ranges read every 64
        sends (0.03 error-queue reads per send, measured); awaiting each datagram's future
        before the next send costs a loop iteration and 2 reads per datagram (~0.4x).

        With ``coalesce_zc=True`` (see create_datagram_endpoint) the datagram is not sent during
        the call: see :meth:`_sendto_zc_coalesced`.
        """
        if self._coalesce:
            if addr is None and self._connected and self._fast_max and not self._closing:
                return self._sendto_zc_coalesced(buf)
            self._flush_coalesced()
        send = self._hot_zc  # (see sendto)
        if addr is None and send is not None:
            # The compiled path (hot.py, _core_pyhot.c): one C call sends, holds the buffer's
            # export and returns the write's future, filed under its slot; an int when there
            # is more to do. (With the compiled core, the class's sendto_zc is a C method that
            # does this part itself, see the end of this module.)
            future = send(buf)
            if future.__class__ is not int:
                return future  # type: ignore[no-any-return]
            return self._hot_zc_returned(future, buf)
        return self._sendto_zc(buf, addr)

    # -- flow control ----------------------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        """Bytes queued (coalesce_zc ones too) plus pinned bytes the kernel still holds."""
        # (the base's sum, spelled out: asked twice per drain on the per-call path, and a
        # super() call costs ~0.5k instructions on CPython 3.11)
        co = self._co
        return self._queued + self._tracker.pinned_bytes + (co.nbytes if co is not None else 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._co is not None:
            self._co.room = -1  # coalesce_zc: compare exactly until the next flush
        super().set_write_buffer_limits(high, low)
        self._hot_sync()

    def _call_protocol(self, name: str) -> None:
        if self._hot_d is not None:
            self._hot_d.paused = self._protocol_paused  # pause_writing / resume_writing
        if self._batching:
            self._deferred_calls.append((name, None))  # see _error_received
            return
        # (the base's, named: no mixin between overrides it, and a super() call costs ~1k
        # instructions on CPython 3.11, twice per drain on the per-call path: pause, resume)
        ZeroCopyTransportBase._call_protocol(self, name)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading, send what is queued, wait until the kernel released every pinned
        buffer (at most ``close_timeout`` seconds), then close and call connection_lost(None)."""
        if self._closing:
            return
        if self._co:
            self._flush_coalesced()  # coalesce_zc: what sendto_zc() accepted is sent
        self._closing = True
        self._hot_sync()
        self._update_mask()
        if not self._queue:
            self._start_close()

    def abort(self) -> None:
        """Close at once: queued datagrams are dropped and pending futures fail with
        ConnectionAbortedError; connection_lost(None) as with asyncio's datagram transports."""
        if self._conn_lost:
            return
        self._closing = True
        self._hot_sync()
        self._call_connection_lost(None, ConnectionAbortedError("transport aborted"))


# With the compiled core, sendto_zc() and sendto() are C methods: a call from the caller's loop
# reaches the compiled builtin without a Python frame (~0.35k instructions per call, callgrind);
# what they do not handle themselves they pass to the Python methods above.
for _name, _method in _hot.compiled_methods(ZeroCopyDatagramTransport).items():
    setattr(ZeroCopyDatagramTransport, _name, _method)
