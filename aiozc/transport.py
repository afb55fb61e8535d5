"""The zero-copy TCP transport: asyncio.Transport plus ``write_zc(buf) -> Future[Completion]``.

Ordering: every byte given to write(), writelines() and write_zc() leaves in call order through
one queue. Each queue entry is either a *held* buffer (write_zc, or an immutable ``bytes`` from
write() at or above the threshold) that may be sent zero-copy and stays referenced until the
kernel releases it, or a *copy* buffer of our own (what asyncio's contract lets the caller mutate
after write() returns), which is only ever sent by plain copying sends.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import operator
import socket
import struct
from os import write as _fd_write
from typing import Any

from ._sys import core as _core
from .base import (
    LazyTracker, TransportOptions, ZeroCopyTransportBase, _debug_source, _future_loop_offset, _plain_futures, byte_view, logger,
)
from .completions import Completion
from .policy import NEVER, ZeroCopyState
from .stats import TransportStats
from .readiness import EPOLLET, EPOLLIN, EPOLLOUT
from .streamread import StreamReading, on_uvloop
from .streamfile import StreamFiles, _FileSegment, _peer_on_this_host
from .streamheld import StreamHeld, _Segment
from .streamsend import StreamSending, _immutable

class ZeroCopyTransport(StreamReading, StreamHeld, StreamSending, StreamFiles, ZeroCopyTransportBase, asyncio.Transport):
    """TCP transport over MSG_ZEROCOPY (or another engine); see the module docstring."""

    # The compiled core's direct-path state (a TcpHot, see the end of this module), or None.
    __slots__ = ("_hot",)

    # io_uring: at most one zero-copy send in flight (stream order); its result advances the
    # head segment like a synchronous send would (_after_zc_result).
    _async_sends = True
    _lost_before_release = True  # see base; close() never waits for the peer to read
    # In no epoll until connection_made's _update_mask (or any earlier one): the loop's selector
    # takes the socket then, without a stop in the private epoll (readiness).
    _defer_registration = True
    # Made at the first zero-copy write (or anything else that asks for it), then bound to the
    # compiled write_zc: until then the compiled paths, seeing no tracker, take Python's.
    _lazy_tracker = True
    _tracker = LazyTracker()  # type: ignore[assignment]

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        options: TransportOptions | None = None,
        *,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        self._queue: collections.deque[_Segment | _FileSegment] = collections.deque()
        self._hot = _TcpHot() if _TcpHot is not None else None
        if self._hot is not None:
            self._hot.queue = self._queue
        self._eof_received = False
        self._hup = False
        self._eof = False
        self._lost_writes = 0
        # A peer's reset read from SO_ERROR while received data was still queued: delivered
        # after that data, as the stock transports do (their recv() reports it at the end).
        self._read_error: OSError | None = None
        self._server = server
        self._init_sending()
        self._registered_mask = -1
        options = options or TransportOptions()
        # No zero-copy notification can be pending: the socket may wait in the loop's own
        # selector (readiness). Zero-copy receive's reader keeps to the private epoll.
        self._errqueue_quiet = options.zc_receive is None
        asyncio.Transport.__init__(self, extra)
        ZeroCopyTransportBase.__init__(self, loop, sock, protocol, options, extra)
        if self._hot is not None:
            self._bind_hot(self._hot)
        if self._options.zc_receive is not None:
            from .zcread import ZeroCopyReader  # noqa: PLC0415 - its cffi only for those who opt in

            self._zc_reader = ZeroCopyReader(self, self._options.zc_receive)
        self._read_once = self._read_path(protocol)
        self._registered_mask = -1  # deferred (base): the first _update_mask places the socket
        if self._options.local_peer_copy and _peer_on_this_host(sock):
            self._policy.assume_copied(
                "peer on this host (local_peer_copy): the kernel copies every zero-copy send"
            )
            self._sync_state()
        self._refresh_direct()
        if server is not None:
            server._attach(self)
        loop.call_soon(self._connection_made, waiter)

    def _init_sending(self) -> None:
        hot = self._hot
        if hot is None:
            super()._init_sending()
            return
        # StreamSending's values, set in the TcpHot without a Python property setter each
        # (a new TcpHot's other fields are 0 already).
        hot.peer_window_at = hot.peer_window_peak_at = float("-inf")
        hot.plain_budget = NEVER

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The C methods read their state from the TcpHot: a subclass that redefines any of
        # it keeps the Python methods.
        if any(name in vars(klass) for klass in cls.__mro__[:cls.__mro__.index(ZeroCopyTransport)]
               for name in C_STATE):
            for name, method in PURE_METHODS.items():
                if name not in cls.__dict__:
                    setattr(cls, name, method)

    def _bind_hot(self, hot: Any) -> None:
        """The state the C methods share with the Python ones (once the base is set up)."""
        hot.fd = self._fd
        hot.make_future = self._make_future
        hot.completions = self._copy_completions
        loop = self._loop
        if _plain_futures(loop):  # write_zc()'s futures made in C (_core_pyhot.c zc_futures_new)
            debug = _debug_source(loop)  # (held while C takes its reference: uvloop's is a bound method)
            _core.lib.zc_tcp_futures(id(hot), id(loop), id(asyncio.Future), id(debug), _future_loop_offset())
        if type(self.stats) is not _HotStats:  # (a subclass's own _new_stats)
            self.stats = _HotStats.moved_from(self.stats, hot)

    def _new_stats(self, engine: str) -> TransportStats:
        hot = self._hot
        if hot is None:
            return super()._new_stats(engine)
        return _HotStats.fresh(hot, engine)

    def _tracker_made(self) -> Any:
        return self.__dict__.get("_tracker")

    def _tracker_bound(self, tracker: Any) -> None:
        if self._hot is not None:
            self._bind_zc(self._hot)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # The stock transports differ once the fd is closed: asyncio gives the closed socket,
        # uvloop None (its test_tcp_handle_abort_in_connection_made). Follow the loop's own.
        if name == "socket" and self._sock is None and on_uvloop(self._loop):
            sock = self._extra.get("socket")
            if sock is None or sock.fileno() == -1:
                return default
        return super().get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        """Bytes queued in user space, as with the stock transports. Bytes sent zero-copy and
        not yet released are in the kernel's send buffer like any sent data; they are bounded
        by ``max_pinned_bytes`` (above it data is sent by copy) and shown in stats."""
        return self._queued

    # -- readiness -------------------------------------------------------------------------

    def _on_loop_for(self, mask: int) -> bool:
        # Only while reading: a socket that does not read must still see a reset (EPOLLERR),
        # which only the private epoll reports with no event asked for.
        return self._errqueue_quiet and bool(mask & EPOLLIN)

    def _mask(self) -> int:
        read = self._reading and not self._eof_received and not self._closing and not self._rx_blocked
        mask = EPOLLIN if read else 0
        # While a zero-copy send is in flight its result, not EPOLLOUT, resumes flushing.
        if self._queue and not self._zc_in_flight:
            mask |= EPOLLOUT
        # A hung-up socket stays readable/EPOLLHUP forever; edge-triggered while we are not
        # reading keeps that from spinning the loop while completions can still arrive.
        if self._closing or (self._hup and not read):
            mask |= EPOLLET
        return mask

    def _update_mask(self) -> None:
        mask = self._mask()
        if mask != self._registered_mask and self._sock is not None:
            self._registered_mask = mask
            try:
                self._mux.modify(self._fd, mask, on_loop=self._on_loop_for(mask))
            except OSError as exc:
                self._private_epoll_failed(mask, exc)

    def _private_epoll_failed(self, mask: int, exc: OSError) -> None:
        """The private epoll, opened with the first socket that needs it, could not open (out
        of fds: EMFILE). A socket with no notification due that stops reading stays in the
        loop's selector, as a stock transport's (a reset is then seen at its next read or
        write); one that cannot (uvloop's sentinel needs the epoll) fails, as a socket error."""
        if self._errqueue_quiet and self._sock is not None:
            try:
                self._mux.modify(self._fd, mask, on_loop=True)
                return
            except OSError as again:
                exc = again
        self._fatal_error(exc)

    def _write_ready(self) -> None:
        if self._queue:
            self._flush()
        else:
            # EPOLLOUT left asked for by the flush that emptied the queue (_writer_lingers),
            # which did what follows a flush then (resume_writing, shutdown after write_eof):
            # it is dropped, and nothing is done twice.
            self._update_mask()

    def _open_for_direct(self) -> bool:
        return not (
            self._sock is None or self._closing or self._eof or self._conn_lost
            or self._close_timer is not None
        )

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        kind = type(data)
        if kind is bytes or kind is bytearray:
            nbytes = len(data)
        elif kind is memoryview and data.c_contiguous:  # type: ignore[union-attr]
            nbytes = data.nbytes  # type: ignore[union-attr]
        else:
            nbytes = 0
        if 0 < nbytes < self._direct_max and not self._queue:
            # The direct path (streamsend): the policy would copy this write, nothing is
            # queued ahead of it, so it goes to the kernel at once, as a stock transport's
            # does. write(2) on the fd, as libuv does: os.write costs ~540 fewer user
            # instructions per call than socket.send (argument clinic, no timeout logic).
            # _direct_max is 0 before the socket is released, so the fd is still ours.
            try:
                sent = _fd_write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal_error(exc)
                return
            if sent:
                stats = self.stats
                stats.copy_sends += 1
                stats.copy_bytes += sent
                self._plain_sent += sent
                if self._plain_sent >= self._plain_budget:
                    self._refresh_direct()
                if sent == nbytes:
                    return
            self._queue_rest(data, nbytes, sent)
            return
        self._write_queued(data)

    def _write_queued(self, data: bytes | bytearray | memoryview) -> None:
        """write() off the direct path: type and state checks, then the queue's rules."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return  # before the closed state, as both stock transports: not a lost write
        if self._drop_if_lost():
            return
        # An exact bytes object (or a view of one) cannot change under us, so holding a
        # reference is as good as a copy: it may go zero-copy. Anything mutable must be copied
        # if it has to wait.
        if _immutable(data) and len(data) >= self._options.zc_threshold and self._zc_possible():
            self._enqueue_held(byte_view(data), None)
        else:
            self._enqueue_copy(data)

    def _drop_if_lost(self) -> bool:
        """Whether a write is dropped because the transport is closed, counted as asyncio
        counts them. Like asyncio, writes are taken after close() until the queue has drained
        and the close began: resume_writing() during close() may write more (TLS's last
        records do)."""
        if self._sock is None or self._conn_lost or self._close_timer is not None:
            # asyncio's count: every lost write from the 5th on is logged, not only the 5th.
            self._lost_writes += 1
            if self._lost_writes >= 5:
                logger.warning("%r: socket.send() raised exception (write() on a closing or closed transport)", self)
            return True
        return False

    def _queue_rest(self, data: bytes | bytearray | memoryview, nbytes: int, sent: int) -> None:
        """What the socket did not take of a direct write waits, held if immutable (it may
        still go zero-copy), else copied (asyncio's contract lets the caller reuse it)."""
        view = byte_view(data)
        if _immutable(data) and nbytes >= self._options.zc_threshold and self._zc_possible():
            seg = _Segment(view, True)
            seg.offset = sent
            self._queue.append(seg)
            self._queued += nbytes - sent
        else:
            with view:
                self._append_copy(view[sent:])
        self._update_mask()
        self._maybe_pause_protocol()

    def write_zc(self, buf: Any) -> asyncio.Future[Completion]:
        """Send ``buf`` without copying it where the kernel allows.

        ``buf`` is any C-contiguous buffer; it stays referenced (a ``bytearray`` cannot be
        resized) until the returned future resolves, after which it may be reused or mutated.
        The future's :class:`Completion` says how many bytes and whether the kernel really sent
        them from ``buf`` (``zerocopy``) or copied them.
        """
        kind = type(buf)
        if kind is bytes or kind is bytearray:
            nbytes = len(buf)
        elif kind is memoryview and buf.c_contiguous:
            nbytes = buf.nbytes
        else:
            nbytes = 0
        if 0 < nbytes < self._direct_max and not self._queue:
            # The direct path, as write()'s; a write sent whole is done: nothing is pinned.
            # Written out here and in write() on purpose: one shared helper pair measured
            # 9.5k user instructions per 64 KiB write() against 7.3k (callgrind, both loops).
            try:
                sent = _fd_write(self._fd, buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal_error(exc)
                return self._failed_future()
            # Future(loop=...), never Future(): on CPython 3.11 each running-loop lookup is
            # a getpid() system call (see the datagram hot path), which callgrind misses.
            future = self._make_future()
            if sent:
                stats = self.stats
                stats.copy_sends += 1
                stats.copy_bytes += sent
                self._plain_sent += sent
                if self._plain_sent >= self._plain_budget:
                    self._refresh_direct()
                if sent == nbytes:
                    stats.copy_writes += 1
                    completion = self._copy_completions.get(nbytes) or self._copy_completion(nbytes)
                    future.set_result(completion)
                    return future
            self._queue_zc_rest(buf, nbytes, sent, future)
            return future
        return self._write_zc_queued(buf)

    def _queue_zc_rest(self, buf: Any, nbytes: int, sent: int, future: asyncio.Future[Completion]) -> None:
        """What the socket did not take of a direct write_zc() waits, held, with its future."""
        seg = _Segment(byte_view(buf), True, future)
        seg.offset = sent
        self._queue.append(seg)
        self._queued += nbytes - sent
        self._update_mask()
        self._maybe_pause_protocol()

    def _write_zc_queued(self, buf: Any) -> asyncio.Future[Completion]:
        self._check_writable("write_zc")
        if self._eof:
            raise RuntimeError("Cannot call write_zc() after write_eof()")
        view = byte_view(buf)
        if not len(view):
            view.release()
            return self._done_future(Completion(0, False))
        future = self._make_future()  # (the base's _new_future, one call less)
        self._enqueue_held(view, future)
        return future

    def _failed_future(self) -> asyncio.Future[Completion]:
        """A write_zc() that never entered the queue: the connection was lost sending it."""
        future = self._make_future()
        future.set_exception(ConnectionResetError("connection lost during write_zc()"))
        return future

    def _zc_possible(self) -> bool:
        return self._policy.state is not ZeroCopyState.DISABLED

    def _enqueue_copy(self, data: bytes | bytearray | memoryview) -> None:
        view = byte_view(data) if isinstance(data, memoryview) else memoryview(data)
        with view:
            sent = 0
            if not self._queue:
                sent = self._try_send_now(view)
                if sent < 0:
                    return
            if sent == len(view):
                return
            self._append_copy(view[sent:])
        self._update_mask()
        self._maybe_pause_protocol()

    def _try_send_now(self, view: memoryview) -> int:
        """A plain send with no queue ahead of it; -1 after a fatal error."""
        try:
            return self._send_copy(view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._fatal_error(exc)
            return -1

    def _append_copy(self, view: memoryview) -> None:
        tail = self._queue[-1] if self._queue else None
        if tail is not None and type(tail) is _Segment and not tail.held:
            tail.data += view  # type: ignore[operator]
        else:
            self._queue.append(_Segment(bytearray(view), False))
        self._queued += len(view)

    def _flush(self, head_wanted: bool = False) -> None:
        """Send queued segments until the socket is full. ``head_wanted``: the caller has just
        asked the policy about the head segment, a new held write, and it said zero-copy: it is
        not asked again for that segment's first send (nothing ran in between to change it)."""
        if self._zc_in_flight:
            return  # the head segment is being sent; _after_zc_result resumes
        drained = bool(self._queue)
        try:
            while self._queue:
                gathered = None if head_wanted or len(self._queue) < 2 else self._send_gathered()
                if gathered is None:
                    if not self._send_head(head_wanted):
                        break
                    head_wanted = False
                elif not gathered:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._fatal_error(exc)
            return
        self._after_flush(drained)

    def _after_flush(self, drained: bool = False) -> None:
        """After sends from the queue. ``drained``: the flush found data queued; if it sent it
        all, EPOLLOUT may stay asked for (_writer_lingers)."""
        if self._sock is None:
            return
        # resume_writing() before connection_lost(), as asyncio's transports order them.
        if self._protocol_paused:
            self._maybe_resume_protocol()
        if not self._queue:
            if self._eof:
                self._shutdown_write()
            if self._closing:
                self._start_close()
                return
            if drained and self._writer_lingers():
                return
        self._update_mask()

    def _writer_lingers(self) -> bool:
        """Whether EPOLLOUT, asked for while data was queued, stays asked for now that the
        queue is empty: on uvloop (Multiplexer.writer_may_linger), until the next writable event
        (whose _flush finds nothing queued and drops it). A writer the socket's room paces
        (pause_writing / resume_writing) writes again on resume_writing, which uvloop runs
        before its next poll; the socket is full again by then, so no writable event comes,
        and the remove_writer + add_writer pair it would have cost per pause is not made:
        ~7.5k user instructions in uvloop (a new Handle, _ensure_fd_no_transport) plus ours
        (callgrind), and 4 epoll_ctl (libuv's uv_poll_start drops the fd and adds it back),
        against stock uvloop's ~1 per pause (strace); in the private epoll, 2 epoll_ctl and
        two Python mux.modify calls per pause. Only on uvloop: asyncio polls before it runs the
        woken writer, so the lingering EPOLLOUT would be one event more per pause."""
        mask = self._mask()
        return (self._registered_mask == mask | EPOLLOUT and self._sock is not None
                and self._mux.writer_may_linger(self._fd))

    def _shutdown_write(self) -> None:
        assert self._sock is not None
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal_error(exc)

    def _flushed(self) -> bool:
        return not self._queue

    def _discard_queue(self) -> None:
        for seg in self._queue:
            if isinstance(seg, _FileSegment):
                seg.finish(ConnectionResetError("connection lost before the file was sent"))
            elif seg.held and seg.write is None:
                # Into the tracker, so that _fail_pending fails its future with the others.
                self._track(seg)
        self._queue.clear()
        self._queued = 0

    def _after_completions(self) -> None:
        super()._after_completions()
        if not self._conn_lost:
            self._maybe_resume_protocol()

    # -- closing ---------------------------------------------------------------------------

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        self._direct_max = 0
        if not self._queue:
            self._shutdown_write()

    def close(self) -> None:
        """Flush queued data, then call connection_lost(None), as the stock transports do once
        everything is in the kernel. Until the kernel has released every pinned buffer (at most
        ``close_timeout`` seconds) the socket stays open behind the scenes, so write_zc()
        futures still resolve and held buffers stay alive."""
        if self._closing:
            return
        self._closing = True
        self._direct_max = 0
        if self._queue:
            self._update_mask()
        else:
            self._start_close()

    def _lose_protocol(self, exc: BaseException | None) -> None:
        super()._lose_protocol(exc)
        self._direct_max = 0

    def _force_close(self, exc: BaseException | None, pending_error: BaseException | None = None) -> None:
        self._direct_max = 0
        super()._force_close(exc, pending_error)

    def _before_socket_close(self, sock: socket.socket, pinned: bool) -> None:
        # Closing a socket whose send queue still holds pages of buffers we are giving back
        # (their futures fail now) would let the kernel go on sending them after the caller
        # reused them: the peer would get the new contents. RST (SO_LINGER {1, 0}) makes
        # close() drop that queue. With nothing pinned a plain close (FIN), as asyncio's abort.
        if pinned and sock.type == socket.SOCK_STREAM:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass

    def _notify_connection_lost(self, exc: BaseException | None) -> None:
        if self._zc_reader is not None:
            self._zc_reader.close()  # held leases stay valid: their regions are the pool's
        try:
            super()._notify_connection_lost(exc)
        finally:
            if self._server is not None:
                self._server._detach(self)
                self._server = None


# The compiled core's write(), write_zc(), writelines(), is_closing() (_core_tcp.c, the queued
# zero-copy write in _core_tcpzc.c, the queued copy write in _core_tcpq.c), _flush() (_core_tcpflush.c),
# _resolve_range() and _drain_errqueue() (_core_tcpdone.c):
# the direct path and the common case of the queued zero-copy write and its completion in C,
# everything else through the Python methods kept here (the reference).
PURE_METHODS: dict[str, Any] = {
    name: getattr(ZeroCopyTransport, name)
    for name in ("write", "write_zc", "writelines", "is_closing", "_resolve_range", "_drain_errqueue", "_flush")
}
# The state the C methods use: a subclass that redefines one keeps the Python methods.
C_STATE = ("_direct_max", "_queue", "_fd", "_plain_sent", "_plain_budget", "stats", "_make_future",
           "_copy_completions", "_closing", "_hot",
           # and the queued zero-copy write_zc's (_core_tcpzc.c): what it reads, what it stands for
           "_policy", "_protocol_paused", "_reading", "_eof_received", "_rx_blocked", "_hup",
           "_registered_mask", "_errqueue_quiet", "_zc_since_drain", "_tracker", "_mask", "_update_mask",
           "_write_zc_queued", "_enqueue_held", "_hold", "_high_water", "_conn_lost", "_zc_in_flight",
           "_wants_zerocopy", "_peer_window", "_read_peer_window",
           "_flush", "_send_head", "_track", "_send_zc", "_account_send", "_count_zc_sends",
           "_advance_held", "_close_write", "_after_flush", "_maybe_pause_protocol",
           "get_write_buffer_size", "_queued", "_resolve", "_resolve_closed", "_sock", "_errqueue_ok",
           "on_zerocopy_range", "_on_socket_error_message", "_fatal_error",
           # and the queued copy write's (_core_tcpq.c) and _flush's (_core_tcpflush.c)
           "_write_queued", "_zc_possible", "_drop_if_lost", "_send_copy", "_write_ready",
           # and what the compiled _flush's end and gathered send stand for (_core_tcpflush.c)
           "_maybe_resume_protocol", "_call_protocol", "_protocol_failed", "_writer_lingers", "_mux",
           "_low_water", "_eof", "_shutdown_write", "_start_close", "_protocol", "_send_gathered")
# Transport attributes that live in the TcpHot with the compiled core (its field names).
_HOT_FIELDS = {"_direct_max": "direct_max", "_plain_sent": "plain_sent", "_plain_budget": "plain_budget",
               "_zc_since_drain": "zc_since_drain", "_errqueue_quiet": "errqueue_quiet",
               "_peer_window_at": "peer_window_at", "_peer_window_peak_at": "peer_window_peak_at",
               "_peer_window_peak": "peer_window_peak"}
# TransportStats counters that live in the TcpHot (same names).
_HOT_COUNTERS = ("copy_sends", "copy_bytes", "copy_writes", "zc_sends", "zc_bytes", "pinned_bytes", "peak_pinned_bytes",
                 "zc_writes", "zc_write_bytes", "errqueue_reads", "socket_errors")


def _compiled_methods(cls: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if _core.compiled and _core.lib.zc_tcp_methods(id(cls), id(PURE_METHODS), id(found)) < 0:
        return {}
    return found


def _hot_property(field: str) -> property:
    get = operator.attrgetter(f"_hot.{field}")

    def set_(self: Any, value: int) -> None:
        # (a C long long: NEVER, 2**62, is the largest budget or bound the code sets)
        setattr(self._hot, field, value if value < NEVER else NEVER)

    return property(get, set_)


class _HotStats(TransportStats):
    """TransportStats whose per-write copy counters live in the transport's TcpHot."""

    def __init__(self, hot: Any, **fields: Any) -> None:
        self._hot = hot
        super().__init__(**fields)

    @classmethod
    def fresh(cls, hot: Any, engine: str) -> _HotStats:
        """A new transport's stats (TransportStats(engine=engine)'s values), its counters those
        of the new TcpHot ``hot`` (all 0): no dataclass __init__ per connection, nothing moved."""
        new = cls.__new__(cls)
        values = new.__dict__
        values.update(_FRESH_STATS)
        for name, make in _FRESH_FACTORIES:
            values[name] = make()
        values["_hot"] = hot
        values["engine"] = engine
        return new

    @classmethod
    def moved_from(cls, stats: TransportStats, hot: Any) -> _HotStats:
        """``stats``'s values, its counters moved into ``hot``. Per connection: the dataclass
        __init__ through 11 property setters and ``dataclasses.fields`` cost ~1/10 of an
        accepted connection's set-up (cProfile, bench instructions --families tcpconn)."""
        new = cls.__new__(cls)
        values = dict(vars(stats))
        new.__dict__["_hot"] = hot
        for name in _HOT_COUNTERS:
            value = values.pop(name)
            if value:  # a new TcpHot's counters are 0
                setattr(new, name, value)
        new.__dict__.update(values)
        return new


# TransportStats' plain defaults other than the counters in the TcpHot, and its default
# factories, called per instance as the dataclass __init__ calls them (core, extra).
_FRESH_STATS = {f.name: f.default for f in dataclasses.fields(TransportStats)
                if f.default is not dataclasses.MISSING and f.name not in _HOT_COUNTERS}
_FRESH_FACTORIES = [(f.name, f.default_factory) for f in dataclasses.fields(TransportStats)
                    if f.default_factory is not dataclasses.MISSING]
COMPILED_METHODS = _compiled_methods(ZeroCopyTransport)
_TcpHot: Any = COMPILED_METHODS.pop("TcpHot", None)
for _name, _method in COMPILED_METHODS.items():
    setattr(ZeroCopyTransport, _name, _method)
if _TcpHot is not None:
    for _name, _field in _HOT_FIELDS.items():
        setattr(ZeroCopyTransport, _name, _hot_property(_field))
    for _name in _HOT_COUNTERS:
        setattr(_HotStats, _name, _hot_property(_name))
