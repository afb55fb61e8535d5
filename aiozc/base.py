"""What TCP and UDP zero-copy transports share: completions, policy, readiness, close.

A transport turns the sans-I/O pieces into behaviour: it hands chunks to its engine, feeds the
:class:`~aiozc.completions.CompletionTracker` with "send call N moved n bytes of write W" and
"ids lo..hi done", resolves the futures the tracker names, and keeps the caller's buffers alive
until then. The stream and datagram transports only add how data is queued and read.
"""

from __future__ import annotations

import asyncio
from asyncio import trsock
import errno
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from ._sys import core as _core, kernel as _kernel
from .completions import Completion, CompletionTracker, WriteHandle, range_length
from .ctracker import new_tracker
from .engines import Engine, get_engine
from .options import TransportOptions, byte_view  # noqa: F401  (re-exported)
from .policy import ZeroCopyPolicy
from .readiness import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Multiplexer
from .stats import TransportStats

logger = logging.getLogger("aiozc")

_ERRQUEUE_BATCH = 64
DEFAULT_HIGH_WATER = 64 * 1024  # asyncio's FlowControlMixin default


class TransportClosedError(ConnectionError):
    """write_zc()/sendto_zc() on a transport that is closing or closed."""


class _Held:
    """What a pending write keeps alive until the kernel is done with it."""

    __slots__ = ("future", "view")

    def __init__(self, future: asyncio.Future[Completion] | None, view: memoryview) -> None:
        self.future = future
        self.view = view


class ZeroCopyTransportBase:
    """Shared machinery; subclasses implement ``_read_ready`` and ``_write_ready``."""

    _sock: socket.socket | None
    # Whether this transport can drive an engine whose zero-copy sends complete later
    # (io_uring: the stream transport's _send_zc raises SendPending, _after_zc_result continues).
    _async_sends = False
    # Whether sends reach the engine in batches (datagram coalesce_zc): engine="auto" picks
    # io_uring only then (engines/__init__.py says why).
    _batches_sends = False
    # close(): whether connection_lost may come once everything is handed to the kernel, before
    # the kernel released the pinned buffers (the socket stays open for that meanwhile). TCP:
    # on one host those completions wait for the peer to read, which a stock close() does not.
    _lost_before_release = False
    # Whether the socket enters no epoll until the first _update_mask (readiness.register's
    # defer): the stream transport, whose connection_made sets its mask on the next iteration.
    _defer_registration = False
    # Whether the tracker is made at its first use rather than here (the stream transport: a
    # connection that only write()s never needs one; see LazyTracker).
    _lazy_tracker = False

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        options: TransportOptions,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._loop = loop
        self._make_future = _future_factory(loop)
        self._copy_completions: dict[int, Completion] = {}
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._options = options
        self._reading = False
        # Flow control: queued bytes plus pinned bytes against asyncio's default limits.
        self._queued = 0
        self._protocol_paused = False
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_HIGH_WATER // 4
        self._extra: dict[str, Any] = dict(extra or {})
        self._engine: Engine = get_engine(
            options.engine, sock=sock, loop=loop, async_capable=self._async_sends,
            batches_sends=self._batches_sends,
        )
        self._submit_zc_fn = getattr(self._engine, "submit_zc", None)
        self._zc_in_flight = 0  # zero-copy sends submitted whose result has not come back
        self._policy = ZeroCopyPolicy(options.policy_options())
        if not self._lazy_tracker:
            self._tracker: CompletionTracker[_Held] = self._new_tracker()
        self.stats = self._new_stats(self._engine.name)
        # MSG_ERRQUEUE on AF_UNIX returns application data: only read it where it means errors.
        self._errqueue_ok = _kernel.is_zerocopy_capable(sock) is None
        reason = self._engine.prepare(sock)
        if reason is not None:
            self._policy.disable(reason)
        self._sync_state()
        self._closing = False
        self._conn_lost = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._zc_since_drain = 0
        self._mux = Multiplexer.for_loop(loop)
        mask = self._mask()
        self._mux.register(self._fd, self, mask, on_loop=self._on_loop_for(mask), defer=self._defer_registration)
        # As asyncio: a wrapper that allows options and names but not I/O behind our back.
        self._extra.setdefault("socket", trsock.TransportSocket(sock))
        # A name given (a server passes the peer its accept() returned) costs no system call.
        for name, getter in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            if name not in self._extra:
                self._extra[name] = _safe_name(getter)

    # -- asyncio.BaseTransport -------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "aiozc_stats":
            return self.stats
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def abort(self) -> None:
        """Close at once, as asyncio: queued data is dropped, connection_lost(None), pending
        write futures fail with ConnectionAbortedError."""
        self._force_close(None, ConnectionAbortedError("transport aborted"))

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "closing" if self._closing else "open"
        return f"<{type(self).__name__} fd={self._fd} {state} {self.stats.state}>"

    def _connection_made(self, waiter: asyncio.Future[None] | None) -> None:
        # Always called, even if the transport was closed meanwhile: asyncio promises
        # connection_made() before connection_lost(), which is scheduled after this.
        try:
            self._protocol.connection_made(cast(asyncio.BaseTransport, self))
        finally:
            # Set even if connection_made() raised, or whoever awaits the new transport would hang.
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if not self._closing:
            self._reading = True
            self._update_mask()

    # -- reading control -------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        # Completions keep flowing: EPOLLERR is reported whatever the mask says.
        self._reading = False
        self._update_mask()

    def resume_reading(self) -> None:
        if self._closing:
            return
        self._reading = True
        self._update_mask()

    # -- flow control ----------------------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        """Bytes queued plus bytes sent zero-copy whose pages the kernel still holds."""
        return self._queued + self._tracker.pinned_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self._conn_lost:
            return
        if self.get_write_buffer_size() <= self._high_water:
            return
        self._protocol_paused = True
        self._call_protocol("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and not self._conn_lost and self.get_write_buffer_size() <= self._low_water:
            self._protocol_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._protocol_failed(name, exc)

    def _protocol_failed(self, name: str, exc: BaseException) -> None:
        """protocol.<name>() raised ``exc`` (also called by the compiled TCP path's pause and
        resume, _core_tcpzc.c tz_call_protocol)."""
        self._loop.call_exception_handler(
            {"message": f"protocol.{name}() failed", "exception": exc, "transport": self}
        )

    # -- readiness -------------------------------------------------------------------------

    def _on_loop_for(self, mask: int) -> bool:
        """Whether the socket, watched for ``mask``, may wait in the loop's own selector rather
        than the private epoll (see readiness); the stream transport's rule."""
        return False

    def _mask(self) -> int:
        """Which events to watch; subclasses override with their read/write interest."""
        return Multiplexer.mask(read=False, write=False)

    def _update_mask(self) -> None:
        if self._sock is not None:
            self._mux.modify(self._fd, self._mask())

    def on_readiness(self, events: int) -> None:
        if events & EPOLLERR:
            self._on_error_event()
        if self._sock is not None and events & (EPOLLIN | EPOLLHUP):
            self._read_ready(events)
        if self._sock is not None and events & EPOLLOUT:
            self._write_ready()

    def _read_ready(self, events: int) -> None:
        raise NotImplementedError

    def _write_ready(self) -> None:
        raise NotImplementedError

    def _on_error_event(self) -> None:
        if self._drain_errqueue() or self._sock is None:
            return
        # EPOLLERR with an empty error queue is a real socket error: read (and clear) it.
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._on_socket_error(_oserror(err))

    def _on_socket_error(self, exc: OSError) -> None:
        """The socket's pending error (SO_ERROR), read on EPOLLERR; stream transports first
        deliver data that arrived before it."""
        self._fatal_error(exc)

    # -- completions -----------------------------------------------------------------------

    def _drain_errqueue(self) -> int:
        """Read everything on the error queue; returns how many messages were handled."""
        if self._sock is None or not self._errqueue_ok:
            return 0
        self._zc_since_drain = 0
        try:
            messages = _kernel.read_errqueue(self._sock, _ERRQUEUE_BATCH)
        except _kernel.ErrQueueTruncated as exc:
            self._fatal_error(exc)
            return 0
        self.stats.errqueue_reads += len(messages) + (len(messages) < _ERRQUEUE_BATCH)
        for message in messages:
            if isinstance(message, _kernel.ZeroCopyRange):
                self.on_zerocopy_range(message.lo, message.hi, message.copied)
            else:
                self.stats.socket_errors += 1
                self._on_socket_error_message(message)
        return len(messages)

    def _on_socket_error_message(self, message: _kernel.SocketError) -> None:
        """An ICMP or local error from the error queue; datagram transports report it."""

    def on_zerocopy_range(self, lo: int, hi: int, copied: bool) -> None:
        """Ids ``lo..hi`` (u32, inclusive) are done; called by error-queue and io_uring engines."""
        ids = range_length(lo, hi)
        self.stats.notifications += 1
        if copied:
            self.stats.ids_copied += ids
        else:
            self.stats.ids_zerocopy += ids
        self._policy.on_completed(ids, copied=copied)
        self._sync_state()
        self._resolve_range(lo, hi, copied)
        self._after_completions()

    def _resolve_range(self, lo: int, hi: int, copied: bool) -> None:
        """The tracker's answer to ids ``lo..hi``: the writes they finished, resolved (the TCP
        transport's is compiled: aiozc/_sys/_core_tcpdone.c)."""
        self._resolve(self._tracker.on_range(lo, hi, copied))

    def _after_completions(self) -> None:
        """Pinned bytes went down: resume writers, finish a pending close."""
        if self._closing and self._idle() and self._flushed():
            self._call_connection_lost(None)

    def _resolve(self, done: list[tuple[_Held, Completion]]) -> None:
        for held, completion in done:
            if completion.zerocopy:
                self.stats.zc_writes += 1
                self.stats.zc_write_bytes += completion.nbytes
            else:
                self.stats.copy_writes += 1
            held.view.release()
            future = held.future
            if future is not None and not future.done():
                future.set_result(completion)
        self.stats.pinned_bytes = self._tracker.pinned_bytes

    def _sync_state(self) -> None:
        # (_value_: Enum's value property is a Python-level descriptor; same value)
        self.stats.state = self._policy.state._value_
        self.stats.reason = self._policy.reason

    # -- sending ---------------------------------------------------------------------------

    def _open_write(self, view: memoryview, future: asyncio.Future[Completion] | None) -> WriteHandle:
        return self._tracker.open_write(_Held(future, view), len(view))

    def _wants_zerocopy(self, nbytes: int, *, continuing: bool = False) -> bool:
        # The policy first: in copy-fallback it says no at once (every write asks).
        return (
            self._policy.wants_zerocopy(nbytes, continuing=continuing)
            and self._tracker.pinned_bytes < self._options.max_pinned_bytes
        )

    def _on_zc_released(self, lo: int, hi: int, copied: bool) -> None:
        """Notifications of asynchronous zero-copy sends: ids ``lo..hi`` (from _on_zc_result)."""
        if self._sock is not None:  # after abort the tracker has forgotten the ids
            self.on_zerocopy_range(lo, hi, copied)

    def _on_enobufs(self) -> None:
        self.stats.enobufs += 1
        # Counted *before* the drain: the two-tier rule asks whether a notification was pending
        # that would free option memory. On a fast path (loopback, the ifb sink) the notification
        # that filled optmem is already queued, so after the drain nothing is outstanding and the
        # policy would disable zero-copy for what is the transient case (measured: with optmem_max
        # 1024 in the sink netns, every ENOBUFS saw 1 outstanding before the drain, 0 after).
        outstanding = self._tracker.outstanding_ids
        # Reading the queue frees the notification skbs charged to optmem before the retry.
        self._drain_errqueue()
        self._policy.on_enobufs(outstanding_ids=outstanding)
        self._sync_state()

    def _account_send(self, write: WriteHandle | None, sent: int, zerocopy: bool) -> int | None:
        """Count a send that moved ``sent`` bytes; returns the id it consumed, if any."""
        if sent <= 0:
            return None
        ident = None
        if write is not None:
            ident = self._tracker.on_sent(write, sent, zerocopy=zerocopy)
        self._policy.on_sent(sent, zerocopy=zerocopy)
        if zerocopy:
            self._count_zc_sends(1, sent)
            self._zc_since_drain += 1
        else:
            self.stats.copy_sends += 1
            self.stats.copy_bytes += sent
        return ident

    def _count_zc_sends(self, calls: int, nbytes: int) -> int:
        """Stats for ``calls`` zero-copy send calls (already in the tracker) that moved
        ``nbytes``; returns the pinned bytes now."""
        stats = self.stats
        stats.zc_sends += calls
        stats.zc_bytes += nbytes
        pinned = stats.pinned_bytes = self._tracker.pinned_bytes
        if pinned > stats.peak_pinned_bytes:
            stats.peak_pinned_bytes = pinned
        return pinned

    def _close_write(self, write: WriteHandle) -> None:
        done = self._tracker.close_write(write)
        if done:
            self._resolve(done)
        else:  # ids outstanding: it resolves from a notification (the pinned bytes unchanged)
            self.stats.pinned_bytes = self._tracker.pinned_bytes
        if self._zc_since_drain >= self._options.errqueue_drain_every:
            self._drain_errqueue()

    # -- closing ---------------------------------------------------------------------------

    def _flushed(self) -> bool:
        """Nothing is queued for sending any more."""
        raise NotImplementedError

    def _idle(self) -> bool:
        """No completion owed: no id outstanding, no asynchronous send awaiting its result."""
        tracker = self._tracker_made()
        return (tracker is None or tracker.outstanding_ids == 0) and not self._zc_in_flight

    def _new_stats(self, engine: str) -> TransportStats:
        return TransportStats(engine=engine)

    def _new_tracker(self) -> CompletionTracker[_Held]:
        # The compiled tracker where the compiled core is in use (same results, less CPU).
        return new_tracker()  # type: ignore[return-value]

    def _tracker_made(self) -> CompletionTracker[_Held] | None:
        """The tracker if there is one yet (see _lazy_tracker); asking makes none."""
        return self._tracker

    def _tracker_bound(self, tracker: CompletionTracker[_Held]) -> None:
        """A lazy tracker was just made (LazyTracker)."""

    def _start_close(self) -> None:
        """Queue is flushed: wait for outstanding completions, bounded by close_timeout."""
        if self._idle():
            self._call_connection_lost(None)
            return
        if self._lost_before_release:
            self._lose_protocol(None)
        self._update_mask()
        if self._close_timer is None:
            self._close_timer = self._loop.call_later(
                self._options.close_timeout, self._close_deadline_passed
            )

    def _close_deadline_passed(self) -> None:
        self._close_timer = None
        if self._sock is None:
            return
        pending = self._tracker.outstanding_ids
        logger.warning(
            "%r: closing with %d zero-copy send(s) never reported complete after %.1fs; "
            "their buffers are released now",
            self,
            pending,
            self._options.close_timeout,
        )
        self._call_connection_lost(
            None, TimeoutError(f"kernel did not release the buffer within {self._options.close_timeout}s")
        )

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        """Close at once with ``exc``; as asyncio, socket errors are only logged (debug), and
        anything else (a protocol callback that raised, a lost notification) goes to the loop's
        exception handler, once."""
        if self._sock is None:
            return
        if isinstance(exc, OSError) and not isinstance(exc, _kernel.ErrQueueTruncated):
            logger.debug("%r: %s: %s", self, message, exc)
        else:
            self._loop.call_exception_handler(
                {"message": message, "exception": exc, "transport": self,
                 "protocol": self._protocol}
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None, pending_error: BaseException | None = None) -> None:
        """Drop what is queued, tell the protocol ``exc`` and fail pending writes with
        ``pending_error`` (default ``exc``); also ends a close that waits for completions."""
        if self._sock is None:
            return
        self._closing = True
        self._discard_queue()
        self._call_connection_lost(exc, pending_error or exc)

    def _discard_queue(self) -> None:
        """Drop data not yet handed to the kernel (abort, fatal error)."""

    def _call_connection_lost(
        self, exc: BaseException | None, pending_error: BaseException | None = None
    ) -> None:
        """Tell the protocol (if not told yet) and release the socket."""
        self._lose_protocol(exc)
        self._release_socket(pending_error)

    def _lose_protocol(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._conn_lost = True
        self._closing = True
        self._loop.call_soon(self._notify_connection_lost, exc)

    def _release_socket(self, pending_error: BaseException | None) -> None:
        """Close the fd; writes still owed a completion fail with ``pending_error``."""
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._sock is None:
            return
        pinned = not self._idle()
        self._fail_pending(pending_error)
        sock, self._sock = self._sock, None
        self._mux.unregister(self._fd)
        forget = getattr(self._engine, "forget", None)
        if forget is not None:
            forget(sock)  # io_uring: submit SQEs naming this fd before the number is reused
        self._before_socket_close(sock, pinned)
        # Closed on the next iteration, after connection_lost(), as asyncio's and uvloop's
        # transports do: the fd (and get_extra_info('socket')) stays valid until then.
        self._loop.call_soon(sock.close)

    def _before_socket_close(self, sock: socket.socket, pinned: bool) -> None:
        """Last look at the socket; ``pinned``: the kernel may still hold released buffers."""

    def _fail_pending(self, exc: BaseException | None) -> None:
        error = exc or ConnectionAbortedError("transport closed before the write completed")
        if not isinstance(error, Exception):
            error = ConnectionAbortedError(str(error))
        tracker = self._tracker_made()
        for held in tracker.abandon() if tracker is not None else ():
            held.view.release()
            if held.future is not None and not held.future.done():
                held.future.set_exception(error)
        self.stats.pinned_bytes = 0

    def _notify_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)
        finally:
            self._protocol = None  # type: ignore[assignment]

    # -- helpers for subclasses ------------------------------------------------------------

    def _copy_completion(self, nbytes: int) -> Completion:
        # Completions are immutable and those of copied writes differ only by size: share
        # them (building a frozen dataclass costs ~0.35 us, measured; per write that is ~2% of
        # a 64 KiB send).
        completion = self._copy_completions.get(nbytes)
        if completion is None:
            if len(self._copy_completions) >= 64:
                self._copy_completions.clear()
            completion = self._copy_completions[nbytes] = Completion(nbytes, False)
        return completion

    def _new_future(self) -> asyncio.Future[Completion]:
        return self._make_future()

    def _done_future(self, completion: Completion) -> asyncio.Future[Completion]:
        future = self._loop.create_future()
        future.set_result(completion)
        return future

    def _check_writable(self, what: str) -> None:
        if self._closing or self._sock is None:
            raise TransportClosedError(f"{what}() on a closing or closed transport")


class LazyTracker:
    """A transport's ``_tracker``, made at its first read and then kept in the instance's dict
    (which a non-data descriptor yields to): per accepted connection the compiled tracker and
    its binding cost ~10k instructions (callgrind, bench instructions --families tcpconn) that
    a connection which never sends zero-copy does not need. The owner's ``_tracker_bound``
    runs once it is made."""

    def __get__(self, transport: Any, owner: Any = None) -> Any:
        if transport is None:
            return self
        tracker = transport.__dict__["_tracker"] = transport._new_tracker()
        transport._tracker_bound(tracker)
        return tracker


def _oserror(err: int) -> OSError:
    import os

    cls = {errno.ECONNRESET: ConnectionResetError, errno.EPIPE: BrokenPipeError}.get(err, OSError)
    return cls(err, os.strerror(err))


def _safe_name(getter: Any) -> Any:
    try:
        return getter()
    except OSError:
        return None


def _future_factory(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Future[Any]]:
    """``loop.create_future``, minus its Python frame when the loop does not override it
    (asyncio's own loops: ~15% of a future's cost, which a datagram hot path pays per call)."""
    if type(loop).create_future is asyncio.BaseEventLoop.create_future:
        return functools.partial(asyncio.Future, loop=loop)
    return loop.create_future


def _plain_futures(loop: Any) -> bool:
    """Does ``loop.create_future()`` make a plain asyncio.Future of ``loop``? (Then the compiled
    core makes them: _core_pyhot.c zc_futures_new.)"""
    create = type(loop).create_future
    plain = _PLAIN_FUTURES.get(create)
    if plain is None:  # (once per method: the function-level import cost every accepted connection)
        import uvloop

        plain = _PLAIN_FUTURES[create] = create in (asyncio.BaseEventLoop.create_future, uvloop.Loop.create_future)
    return plain


_PLAIN_FUTURES: dict[Any, bool] = {}


def _debug_source(loop: Any) -> Any:
    """What the C side reads for ``loop.get_debug()`` (see _core_pyhot.c zc_futures_debug): the
    attribute asyncio's own get_debug returns, else the bound method."""
    if loop is None:
        return None
    if type(loop).get_debug is asyncio.BaseEventLoop.get_debug:
        return "_debug"
    return loop.get_debug


class _DebugOff:
    """A stand-in loop for zc_future_loop_offset: Future.__init__ asks it get_debug() only."""

    def get_debug(self) -> bool:
        return False


_loop_offset: list[int] = []


def _future_loop_offset() -> int:
    """Where asyncio.Future keeps its loop, once per process (0: unknown, Future.__init__ runs)."""
    if not _loop_offset:
        probe = _DebugOff()  # (held here: the C side borrows it)
        _loop_offset.append(int(_core.lib.zc_future_loop_offset(id(asyncio.Future), id(probe))))
    return _loop_offset[0]


async def made(transport: asyncio.BaseTransport, waiter: asyncio.Future[None]) -> None:
    """Wait until ``transport`` called connection_made (``waiter``); close it if that fails
    or the wait is cancelled."""
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
