"""Zero-copy receive wired into the TCP transport (``zc_receive=ZeroCopyReceive(...)``).

:class:`ZeroCopyReader` is the transport's read step while zero-copy receive is on. Each step is
one ``getsockopt(TCP_ZEROCOPY_RECEIVE)`` into a region of the per-process pool, then the copies
the kernel asks for, delivered in stream order:

* mapped pages -> ``protocol.lease_received(lease)`` (an :class:`aiozc.zcrx.Lease`); a protocol
  without that method gets them copied (``data_received`` or ``get_buffer``/``buffer_updated``)
  and the lease released at once, so every protocol, StreamReaderProtocol included, works;
* bytes that cannot be mapped (``recv_skip_hint``, under a page queued) -> the plain read
  path's own read for ``data_received`` (the transport's ``_read_data``: the thread's aligned
  buffer, then a ``bytes`` copy), or ``recv_into`` the protocol's buffer;
* EOF, a reset (``err``, read and cleared by the getsockopt), EIO (nothing queued after FIN)
  -> the transport's own EOF and error handling (data before a reset is delivered first).

Bounded: when every region is held the transport stops watching for reads (``_rx_blocked``);
a region freed from any thread wakes it through ``loop.call_soon_threadsafe``. A region pinned
by a derived view after its lease was released frees only when that view dies, which nothing
announces, so while starved with such regions a timer looks again.

Urgent data: the kernel's zero-copy receive ignores the urgent mark (it maps the urgent byte in
line, where ``recv`` would skip it), so the transport sets ``SO_OOBINLINE``: mapped and copied
bytes then agree, and urgent bytes stay in the stream in order.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._sys import zcrx as _sys
from .readiness import EPOLLIN
from .zcrx import Lease, RegionPool, ZeroCopyReceive

# While starved with regions pinned by derived views, look again this often (seconds).
_COLLECT_INTERVAL = 0.02
# getsockopt errors meaning "this socket or kernel cannot do it": fall back, nothing was read.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EINVAL, errno.ENOTCONN}

_probe_result: list[str | None] = []


def _unavailable() -> str | None:
    """Why zero-copy receive cannot work in this process (probed once), or None."""
    if not _probe_result:
        _probe_result.append(_sys.zerocopy_receive_unavailable())
    return _probe_result[0]


@dataclass
class ReceiveStats:
    """``transport.stats.extra["zc_receive"]``: what zero-copy receive did on a connection."""

    state: str = "mapping"  # mapping | paused (every region held) | disabled
    reason: str = ""  # why disabled
    mapped_bytes: int = 0  # bytes that arrived as leases
    copied_bytes: int = 0  # bytes the kernel could not map, read with recv
    lease_copied_bytes: int = 0  # mapped bytes copied out for a protocol without lease_received
    leases: int = 0
    calls: int = 0  # getsockopt(TCP_ZEROCOPY_RECEIVE) calls
    pauses: int = 0  # times reading paused because every region was held

    @property
    def mapped_fraction(self) -> float:
        total = self.mapped_bytes + self.copied_bytes
        return self.mapped_bytes / total if total else 0.0


def is_buffered(protocol: Any) -> bool:
    # The plain read path's rule (streamread._read_path): uvloop's, covering asyncio's.
    return hasattr(protocol, "get_buffer") and not isinstance(protocol, asyncio.Protocol)


class ZeroCopyReader:
    """One transport's zero-copy read path; ``transport`` is a ZeroCopyTransport."""

    def __init__(self, transport: Any, config: ZeroCopyReceive) -> None:
        self._transport = transport
        self._config = config
        self.stats = ReceiveStats()
        transport.stats.extra["zc_receive"] = self.stats
        self._pool: RegionPool | None = None
        self._request = _sys.Request()
        self._starved = False
        self._wake_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._lease_received: Callable[[Lease], Any] | None = None
        self._lease_size_hint: Callable[[], int | None] | None = None
        self._buffered = False
        # Lease bytes the protocol has not taken yet because it paused reading meanwhile: the
        # kernel gave them up already, so they go first once reading resumes.
        self._backlog: tuple[Lease, int] | None = None
        self._copy: Callable[[int], bool] = self._recv_data
        reason = self._why_not(transport._sock)
        if reason is not None:
            self._disable(reason)
            return
        self._pool = config.pool()
        try:
            transport._sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        except OSError as exc:
            self._disable(f"SO_OOBINLINE failed: {exc}")

    @staticmethod
    def _why_not(sock: socket.socket) -> str | None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return "not a TCP socket"
        return _unavailable()

    @property
    def enabled(self) -> bool:
        return self.stats.state != "disabled"

    # -- the transport's hooks -----------------------------------------------------------

    def read_path(self, protocol: Any) -> Callable[[], bool] | None:
        """The read step for ``protocol``, or None for the transport's plain path."""
        if not self.enabled:
            return None
        if isinstance(protocol, sslproto.SSLProtocol):
            self._disable("TLS: records are decrypted into SSLProtocol's own buffer")
            return None
        self._lease_received = getattr(protocol, "lease_received", None)
        self._lease_size_hint = getattr(protocol, "lease_size_hint", None)
        self._buffered = buffered = is_buffered(protocol)
        self._copy = self._recv_into_buffer if buffered else self._recv_data
        return self._read_once

    def close(self) -> None:
        """The connection is gone: stop waiting for regions. Held leases stay valid."""
        self._stop_waiting()
        if self._backlog is not None:
            self._backlog[0].release()
            self._backlog = None

    # -- one step ------------------------------------------------------------------------

    def _read_once(self) -> bool:
        """One getsockopt and the copies it asks for; True if more is likely queued."""
        transport = self._transport
        pool = self._pool
        assert pool is not None
        if self._backlog is not None and not self._feed_backlog():
            return False
        slot = pool.acquire()
        if slot is None:
            self._starve()
            return False
        region, address = slot
        try:
            zc = self._request.receive(transport._fd, address, self._lease_length(len(region)))
        except OSError as exc:
            pool.put_back_unused(slot)
            return self._on_receive_error(exc)
        stats = self.stats
        stats.calls += 1
        delivered = True
        if zc.length:
            stats.mapped_bytes += zc.length
            stats.leases += 1
            delivered = self._deliver(Lease(pool, region, zc.length))
            if transport._sock is None:
                return False
        else:
            pool.put_back_unused(slot)
        if zc.err:
            code = -zc.err  # sock_error(): a negative errno, read and cleared by the call
            transport._on_socket_error(_oserror(code))
            if transport._sock is None:
                return False
        if not delivered or not transport._reading:
            # Paused in lease_received: nothing more. Bytes to copy stay queued and the next
            # call reports them again.
            return False
        if zc.recv_skip_hint:
            more = self._copy(zc.recv_skip_hint)
        elif zc.length == 0:
            # Nothing mapped and nothing to skip: nothing queued. recv tells EOF (a reset
            # without FIN says no EIO) from a spurious wake-up (EAGAIN).
            more = self._copy(transport._options.read_size)
        else:
            more = zc.inq > 0
        self._judge()
        return more and transport._sock is not None

    def _lease_length(self, region_bytes: int) -> int:
        """How much to map: the region, or less if the protocol says where a useful lease ends
        (``lease_size_hint()``, rounded up to whole pages): a tensor channel asks for the rest
        of a body, so that the next body starts a lease instead of straddling two."""
        hint_of = self._lease_size_hint
        hint = hint_of() if hint_of is not None else None
        if not hint or hint <= 0:
            return region_bytes
        page = _sys.PAGE_SIZE
        return min(region_bytes, -(-hint // page) * page)

    def _on_receive_error(self, exc: OSError) -> bool:
        if exc.errno == errno.EIO:  # nothing queued after FIN (or an urgent mark after FIN)
            return self._copy(self._transport._options.read_size)
        if exc.errno in _UNSUPPORTED:
            self._disable(f"getsockopt(TCP_ZEROCOPY_RECEIVE): {os.strerror(exc.errno or 0)}")
            self._switch_to_plain()
            return True
        self._transport._fatal_error(exc, "Fatal read error on socket transport")
        return False

    # -- copies: the same calls and error rules as the plain read path ---------------------

    def _recv_data(self, nbytes: int) -> bool:
        transport = self._transport
        got = transport._read_data(min(nbytes, transport._options.read_size))
        self.stats.copied_bytes += got
        return got > 0

    def _recv_into_buffer(self, nbytes: int) -> bool:
        transport = self._transport
        buf = self._get_buffer(nbytes)
        if buf is None:
            return False
        try:
            got = transport._sock.recv_into(buf, min(nbytes, len(buf)))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            transport._fatal_error(exc, "Fatal read error on socket transport")
            return False
        if not got:
            transport._on_end_of_data()
            return False
        self.stats.copied_bytes += got
        return self._call(transport._protocol.buffer_updated, got, "buffer_updated")

    def _get_buffer(self, sizehint: int) -> Any:
        transport = self._transport
        try:
            buf = transport._protocol.get_buffer(sizehint)
            if not len(buf):
                raise RuntimeError("get_buffer() returned an empty buffer")
            return buf
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            transport._fatal_error(transport._get_buffer_error(exc),
                                   "Fatal error: protocol.get_buffer() call failed.")
            return None

    # -- leases for protocols without lease_received ---------------------------------------

    def _deliver(self, lease: Lease) -> bool:
        """Hand ``lease`` to the protocol; False if the connection failed or reading paused."""
        lease_received = self._lease_received
        taken: Any = 0
        if lease_received is not None:
            try:
                taken = lease_received(lease)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._transport._fatal_error(exc, "Fatal error: protocol.lease_received() call failed.")
                return False
            if taken is None:
                return self._transport._sock is not None  # the protocol took it all
            if not 0 <= taken <= lease.nbytes:
                lease.release()
                error = ValueError(f"lease_received() returned {taken!r}, not None or 0..{lease.nbytes}")
                self._transport._fatal_error(error, "Fatal error: protocol.lease_received() call failed.")
                return False
        self._backlog = (lease, taken)
        return self._feed_backlog()

    def _feed_backlog(self) -> bool:
        """Copy the lease bytes not taken yet into the protocol, as far as it reads them; the
        lease is released once they are all in. False if it paused (or the connection failed)."""
        assert self._backlog is not None
        lease, offset = self._backlog
        transport = self._transport
        view = lease.view
        while offset < len(view):
            if not transport._reading or transport._sock is None:
                self._backlog = (lease, offset)
                return False
            n = self._copy_out(view, offset)
            if n < 0:
                self._backlog = None
                lease.release()
                return False
            offset += n
        self._backlog = None
        lease.release()
        return transport._sock is not None

    def _copy_out(self, view: memoryview, offset: int) -> int:
        """One data_received or get_buffer/buffer_updated of lease bytes; -1 on failure."""
        protocol = self._transport._protocol
        if not self._buffered:
            data = bytes(view[offset:])
            self.stats.lease_copied_bytes += len(data)
            return len(data) if self._call(protocol.data_received, data, "data_received") else -1
        buf = self._get_buffer(len(view) - offset)
        if buf is None:
            return -1
        with memoryview(buf) as dest, dest.cast("B") as flat:
            n = min(len(flat), len(view) - offset)
            flat[:n] = view[offset:offset + n]
        self.stats.lease_copied_bytes += n
        return n if self._call(protocol.buffer_updated, n, "buffer_updated") else -1

    def on_resume_reading(self) -> None:
        """The protocol resumed reading: lease bytes held back go first, even if the socket
        has nothing new (no readiness would come for them)."""
        if self._backlog is not None:
            self._transport._loop.call_soon(self._after_resume)

    def _after_resume(self) -> None:
        transport = self._transport
        if self._backlog is not None and transport._reading and transport._sock is not None:
            transport._read_ready(EPOLLIN)

    def _call(self, method: Callable[[Any], Any], arg: Any, name: str) -> bool:
        transport = self._transport
        try:
            method(arg)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            transport._fatal_error(exc, f"Fatal error: protocol.{name}() call failed.")
            return False
        return transport._sock is not None

    # -- bounded: pause while every region is held ------------------------------------------

    def _starve(self) -> None:
        if self._starved:
            return
        pool = self._pool
        assert pool is not None
        self._starved = True
        self.stats.state = "paused"
        self.stats.pauses += 1
        transport = self._transport
        transport._rx_blocked = True
        transport._update_mask()
        pool.add_on_available(self._on_available)
        if pool.available():  # freed between acquire() and add_on_available()
            self._on_available()
        elif pool.deferred:
            self._timer = transport._loop.call_later(_COLLECT_INTERVAL, self._collect)

    def _on_available(self) -> None:
        """A region was freed, on any thread: resume in the loop's thread."""
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._transport._loop.call_soon_threadsafe(self._resume)
        except RuntimeError:  # the loop is closed: nothing to resume
            pass

    def _collect(self) -> None:
        self._timer = None
        pool = self._pool
        if not self._starved or pool is None:
            return
        pool.collect()
        if pool.available():
            self._resume()
        else:
            self._timer = self._transport._loop.call_later(_COLLECT_INTERVAL, self._collect)

    def _resume(self) -> None:
        self._wake_pending = False
        if not self._starved:
            return
        self._stop_waiting()
        if self.enabled:
            self.stats.state = "mapping"
        transport = self._transport
        transport._rx_blocked = False
        transport._update_mask()  # level-triggered: queued data makes it readable at once

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._starved and self._pool is not None:
            try:
                self._pool.remove_on_available(self._on_available)
            except ValueError:
                pass
        self._starved = False

    # -- auto-disable -------------------------------------------------------------------

    def _judge(self) -> None:
        stats = self.stats
        config = self._config
        if stats.state == "disabled" or stats.mapped_bytes + stats.copied_bytes < config.judge_after:
            return
        if stats.mapped_fraction >= config.min_mapped:
            self._judge = _judged  # type: ignore[method-assign]
            return
        total = stats.mapped_bytes + stats.copied_bytes
        self._disable(
            f"{stats.mapped_fraction:.1%} of the first {total} bytes mapped (below "
            f"min_mapped={config.min_mapped:g}): the peer does not send whole pages, e.g. "
            "plain send() instead of MSG_ZEROCOPY"
        )
        self._switch_to_plain()

    def _disable(self, reason: str) -> None:
        self.stats.state = "disabled"
        self.stats.reason = reason

    def _switch_to_plain(self) -> None:
        transport = self._transport
        self._stop_waiting()
        transport._rx_blocked = False
        if transport._protocol is not None:
            transport._read_once = transport._read_path(transport._protocol)


def _judged() -> None:
    """The connection mapped enough: no more judging."""


def _oserror(code: int) -> OSError:
    cls = {errno.ECONNRESET: ConnectionResetError, errno.EPIPE: BrokenPipeError}.get(code, OSError)
    return cls(code, os.strerror(code))

