"""The per-call path of the datagram transport through the compiled core (aiozc/_sys/_core_dgram.c).

On a connected UDP socket with the MSG_ZEROCOPY or copy engine, while nothing is queued and no
send error is being classified, ``sendto_zc()`` and ``sendto()`` hand the datagram to one C
call: the buffer export (the C side takes and holds it, by the write's slot, until the write
resolves: no Python pin object), the send, the tracker entry, the counters and every 64th
send the error-queue drain. Python keeps the future (dict ``_hot_tokens``, by the write's
slot; ``sendto()`` keeps nothing) and whatever the call could not decide (errors, a message
on the error queue other than a zero-copy range, the policy outside its zerocopy state, a
buffer type other than bytes / bytearray / memoryview): for those it returns a code and the
general path (sending.py) does what it always does. The C side learns when it may run from
``_hot_sync()``, called wherever that changes.

Without the compiled core (no compiler, ``AIOZC_NO_EXTENSIONS=1``) ``_hot_send`` is None and
every datagram takes the general path.

Measured with callgrind (user instructions per datagram, 64000 B into the ifb sink, window of
256 futures): see the README's Benchmarks.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

from .._sys import core as _core, kernel as _kernel
from ..base import _debug_source, _future_loop_offset, _Held, _plain_futures, byte_view  # noqa: F401  (coalescing.py's)
from ..completions import Completion
from ..ctracker import _completion
from ..engines.copy import CopyEngine
from ..engines.io_uring import IoUringEngine
from ..engines.msg_zerocopy import MsgZeroCopyEngine
from ..policy import ZeroCopyPolicy, ZeroCopyState
from ..stats import TransportStats
from ._common import _DatagramHost, _Datagram
from .batching import _Batch

_lib: Any = _core.lib
_ffi: Any = _core.ffi

if _core.compiled:
    DECLINED = _lib.DG_DECLINED
    KIND = _lib.DG_KIND
    TRUNCATED = _lib.DG_TRUNCATED
    F_RESOLVED = _lib.DG_F_RESOLVED
    F_MESSAGE = _lib.DG_F_MESSAGE
    F_COPY = _lib.DG_F_COPY
    F_PAUSE = _lib.DG_F_PAUSE
    F_FAILED = _lib.DG_F_FAILED
    F_SUBMIT = _lib.DG_F_SUBMIT
    F_RING = _lib.DG_F_RING
    F_UFAIL = _lib.DG_F_UFAIL
    SLOT_SHIFT = _lib.DG_SLOT_SHIFT
    COPY_ERRNO = _lib.DG_COPY_ERRNO
    PAYLOAD = (1 << SLOT_SHIFT) - 1
    # A result in 0 <= r < NO_FLAGS is a zero-copy datagram's slot with nothing else to do
    # (transport.sendto_zc spells the constant out: a literal costs no lookup per call).
    NO_FLAGS = 1 << SLOT_SHIFT
    assert NO_FLAGS == 0x10000000000
    send_obj = _lib.zc_dgram_send_obj
    sendto_obj = _lib.zc_dgram_sendto_obj
    release = _lib.zc_dgram_release
else:  # pragma: no cover - exercised by the AIOZC_NO_EXTENSIONS=1 run
    send_obj = sendto_obj = release = None

_DRAIN_LIMIT = 64
# sendto_zc()'s future, made in C as Future(loop=loop): what create_future() gives on asyncio's
# and uvloop's loops (see _core_pyhot.c hot_future).
Future = asyncio.Future
# Tokens of the general path (a buffer view to end, a future): the compiled path's are futures.
_HOLDERS = (_Held, _Batch)
# (IoUringEngine: SEND_ZCs filled in C, _core_udpring.c, once the engine's ring took the path)
_HOT_ENGINES = (MsgZeroCopyEngine, CopyEngine, IoUringEngine)
# (a module constant: ZeroCopyState.ZEROCOPY is a slow class attribute of an Enum on 3.11)
_ZEROCOPY = ZeroCopyState.ZEROCOPY
# Policy states in which the policy must see every send (probe bookkeeping, re-probe bytes).
_POLICY_WATCHES = (ZeroCopyState.PROBING, ZeroCopyState.COPY_FALLBACK)
# TransportStats counters the C side keeps (same names in struct zc_dgram).
_C_COUNTERS = ("zc_sends", "zc_bytes", "copy_sends", "copy_bytes", "peak_pinned_bytes",
               "errqueue_reads", "notifications", "ids_zerocopy", "zc_writes", "zc_write_bytes",
               "copy_writes")


def _counter(name: str) -> property:
    def get(self: CoreStats) -> int:
        return int(getattr(self._d, name))

    def set_(self: CoreStats, value: int) -> None:
        setattr(self._d, name, value)

    return property(get, set_)


class CoreStats(TransportStats):
    """TransportStats whose per-datagram counters live in the C struct (read on access)."""

    def __init__(self, d: Any, tracker: Any, **fields: Any) -> None:
        self._d = d
        self._t = tracker  # keeps the C tracker alive as long as the counters
        super().__init__(**fields)

    @property
    def pinned_bytes(self) -> int:
        return int(self._t.pinned)

    @pinned_bytes.setter
    def pinned_bytes(self, value: int) -> None:
        pass  # always the tracker's figure


for _name in _C_COUNTERS:
    setattr(CoreStats, _name, _counter(_name))


class _HotPathMixin(_DatagramHost):
    """Part of :class:`~aiozc.datagram.transport.ZeroCopyDatagramTransport`."""

    # (slots of the transport, None until _hot_setup:) the C sendto(buf) while this transport
    # may use the compiled path, and the same for sendto_zc() (None with coalesce_zc)
    _hot_send: Any
    _hot_zc: Any
    _hot_fns: dict[str, Any]  # the C builtins bound to this transport (_core_pyhot.c)
    _hot_d: Any = None
    _hot_loop: Any = None  # the loop, if its create_future() is asyncio.Future(loop=loop)
    # Without the compiled core: may sendto() hand a mutable buffer straight to socket.send?
    # (the general path's rules: see _hot_sync; _direct_ok: connected UDP, a built-in engine)
    _direct_ok = False
    _direct_copy = False
    _engine_now: Any  # (a slot of the transport: set by the base's __init__ through _engine)

    @property
    def _engine(self) -> Any:
        return self._engine_now

    @_engine.setter
    def _engine(self, engine: Any) -> None:
        # Replaced engines (tests wrap one to simulate a full socket) leave the compiled path:
        # it makes its own send calls, which only the built-in engines' agree with.
        self._engine_now = engine
        if self._hot_d is not None:
            self._hot_send = self._hot_fns["sendto"] if engine.__class__ in _HOT_ENGINES else None
            self._hot_zc = None if self._coalesce or self._hot_send is None else self._hot_fns["sendto_zc"]
            self._hot_sync()
        elif self._direct_ok:
            self._direct_ok = engine.__class__ in _HOT_ENGINES
            self._hot_sync()

    def _hot_setup(self) -> None:
        """Use the compiled per-call path if this transport can (see the module docstring)."""
        tracker: Any = self._tracker  # a CompiledTracker where the core is in use
        if not self._connected or not self._fast_max or self._engine.__class__ not in _HOT_ENGINES:
            return
        if not _core.compiled or not getattr(tracker, "compiled", False):
            if self._engine.__class__ is IoUringEngine:
                return  # (its copies go after the queued SEND_ZCs: engine.send, not sock.send)
            self._direct_ok = True
            self._hot_sync()
            return
        d = _ffi.gc(_lib.zc_dgram_new(self._fd, tracker._t), _lib.zc_dgram_free)
        if d == _ffi.NULL:
            return
        options = self._options
        d.threshold = options.zc_threshold
        d.max_size = self._fast_max
        d.max_pinned = options.max_pinned_bytes
        d.drain_every = options.errqueue_drain_every
        d.high_water = self._high_water
        if self._engine.__class__ is IoUringEngine and not self._engine.bind_hot(d, self._hot_ring_pending):  # type: ignore[attr-defined]
            return  # the pure ring: the general path (uring.py)
        self._hot_d = d
        self._hot_tokens = tracker._tokens
        if _plain_futures(self._loop):
            self._hot_loop = self._loop
        self._hot_bind(d)
        tracker._pop_token = self._hot_fns["pop"]  # the futures sendto_zc() made are held in C
        self._hot_send = self._hot_fns["sendto"]
        if self._engine.__class__ is IoUringEngine:
            # coalesce_zc on io_uring: this path, whose SQEs already go together (see
            # coalescing._co_setup); the Coalescer is MSG_ZEROCOPY's.
            self._coalesce = False
        self._hot_zc = None if self._coalesce else self._hot_fns["sendto_zc"]
        old = self.stats
        self.stats = CoreStats(d, tracker._t, engine=old.engine, state=old.state, reason=old.reason)
        self._hot_sync()

    def _hot_bind(self, d: Any) -> None:
        """The C builtins of this transport's compiled path (see _core_pyhot.c)."""
        fns: dict[str, Any] = {}
        loop = self._hot_loop  # None: the loop's futures are not plain, Python makes them
        debug = _debug_source(loop)
        if _lib.zc_dgram_bind(d, id(d), id(self._hot_tokens), id(loop), id(Future),
                              id(asyncio.InvalidStateError), id(_completion), id(debug),
                              _future_loop_offset(), id(fns)) < 0:
            raise MemoryError("aiozc: the compiled datagram path could not be set up")
        self._hot_fns = fns

    def _hot_sync(self) -> None:
        """Tell the C side whether it may send now, and whether zero-copy."""
        if self._co is not None:  # coalesce_zc's Coalescer: closing sends through Python
            self._co.blocked = self._closing or self._sock is None
        d = self._hot_d
        if d is None and not self._direct_ok:
            self._direct_copy = False  # (an engine a test put in place: the general path)
            return
        state = self._policy.state
        blocked = bool(
            (d is not None and self._hot_send is None)
            or self._sock is None
            or self._closing
            or self._queue
            or self._classifying is not None
            or self._enobufs_datagram is not None
            or state in _POLICY_WATCHES
        )
        if d is None:
            self._direct_copy = not blocked
            return
        d.blocked = blocked
        engine = self._engine
        d.zerocopy = state is ZeroCopyState.ZEROCOPY and (
            engine.__class__ is MsgZeroCopyEngine or (engine.__class__ is IoUringEngine and engine.hot_bound))
        d.paused = self._protocol_paused
        d.high_water = self._high_water

    # -- what a send call returned --------------------------------------------------------

    def _hot_flags(self, r: int, future: asyncio.Future[Completion]) -> None:
        """A sendto_zc() datagram's result carried flags (see _core_dgram.c)."""
        flags = r >> SLOT_SHIFT
        if flags & F_COPY:
            self.stats.copy_writes += 1
            future.set_result(self._copy_completion(r & PAYLOAD))
        else:
            self._hot_tokens[r & PAYLOAD] = future
        self._hot_more(flags)

    def _hot_more(self, flags: int) -> None:
        """What a send's result flags ask for besides its own datagram: the drain's findings,
        pause_writing."""
        if flags & F_SUBMIT:  # the io_uring engine (_core_udpring.c); first: asked only once
            self._engine.schedule_submit()  # until it ran, whatever the calls below raise
        if flags & (F_RESOLVED | F_MESSAGE | F_FAILED | F_UFAIL):
            self._hot_drained(flags)
        if flags & F_RING:
            self._engine.reap_waiting()
        if flags & F_PAUSE:
            self._maybe_pause_protocol()

    def _hot_protocol_failed(self, name: str, exc: BaseException) -> None:
        """protocol.<name>(), called by the compiled sendto_zc (_core_pymeth.c quick_pause /
        quick_resolved), raised: what the base's _call_protocol does then."""
        self._loop.call_exception_handler(
            {"message": f"protocol.{name}() failed", "exception": exc, "transport": self}
        )

    def _hot_resolve_others(self, completion: Completion, others: list[Any]) -> None:
        """The general path's writes among those the compiled drain resolved."""
        for token in others:
            future = _future_of(token)
            if future is not None and not future.done():
                future.set_result(completion)

    def _hot_sendto_result(self, r: int, data: Any) -> None:
        """sendto()'s C call returned flags (r > 0) or sent nothing (r < 0)."""
        if r > 0:
            self._hot_more(r)
        elif r == KIND or r == DECLINED:
            self._in_sendto(self._sendto, data, None)  # type: ignore[attr-defined]
        else:
            held = data.__class__ is bytes and len(data) >= self._options.zc_threshold
            self._in_sendto(self._hot_refused, r, data, None, held)  # type: ignore[attr-defined]

    def _hot_zc_returned(self, r: int, buf: Any) -> asyncio.Future[Completion]:
        """sendto_zc()'s C call returned an integer code (see transport.sendto_zc)."""
        return self._hot_sendto_zc_result(r, buf, self._make_future())

    def _hot_sendto_zc_result(self, r: int, buf: Any,
                              future: asyncio.Future[Completion]) -> asyncio.Future[Completion]:
        """sendto_zc()'s C call returned flags or sent nothing (r < 0)."""
        if r >= 0:
            self._hot_flags(r, future)
            return future
        if r == KIND:
            future.cancel()
            view = byte_view(buf)  # raises the TypeError / ValueError sendto_zc() documents
            if self._hot_d is None or self._hot_send is None:
                return self._sendto_zc(view, None)  # type: ignore[attr-defined, no-any-return]
            r = send_obj(self._hot_d, id(view))
            if r == KIND:  # not a simple buffer after all: the general path says why
                return self._sendto_zc(view, None)  # type: ignore[attr-defined, no-any-return]
            return self._hot_sendto_zc_result(r, view, self._make_future())  # type: ignore[attr-defined]
        return self._hot_refused(r, buf, future, True)  # type: ignore[return-value]

    def _hot_refused(self, r: int, buf: Any, future: asyncio.Future[Completion] | None,
                     held: bool) -> asyncio.Future[Completion] | None:
        """The C call sent nothing: the general path decides (and may raise)."""
        if r == DECLINED or r == KIND:
            if future is None:
                self._sendto(buf, None)  # type: ignore[attr-defined]
                return None
            future.cancel()
            return self._sendto_zc(buf, None)  # type: ignore[attr-defined, no-any-return]
        dg = _Datagram(byte_view(buf), self._address, future, held)  # type: ignore[attr-defined]
        if r == TRUNCATED:
            exc = OSError(errno.EMSGSIZE, f"datagram truncated: fewer than {dg.nbytes} bytes sent")
            if future is None:
                dg.view.release()
                self._error_received(exc)  # type: ignore[attr-defined]
                return None
            self._send_failed_now(dg, exc)  # type: ignore[attr-defined]  # raises
        err, zerocopy = -r, True
        if err > COPY_ERRNO:
            err, zerocopy = err - COPY_ERRNO, False
        dg.copy_only = not zerocopy
        return self._direct_send_failed(dg, OSError(err, os.strerror(err)), zerocopy)  # type: ignore[attr-defined, no-any-return]

    def _direct_sendto(self, data: bytearray | memoryview) -> None:
        """sendto() of a mutable buffer without the compiled core: CPython's socket.send (what
        asyncio's own transport does); anything it refuses goes to the general path, which
        sends again and handles the error as always (nothing was sent)."""
        sock = self._sock
        assert sock is not None  # _direct_copy is False once the socket is gone
        try:
            sent = sock.send(data)
        except (OSError, TypeError, ValueError, BufferError):
            self._in_sendto(self._sendto, data, None)
            return
        stats = self.stats
        stats.copy_sends += 1
        stats.copy_bytes += sent

    def _hot_release(self) -> None:
        """End the buffer exports of the compiled path's writes the tracker resolved or
        abandoned (see _core_dgram.c: never from inside a C call)."""
        if self._hot_d is not None:
            release(self._hot_d)

    # -- the error queue ------------------------------------------------------------------

    def _drain_errqueue(self) -> int:
        d = self._hot_d
        if d is None or self._classifying is not None or self._enobufs_datagram is not None:
            return super()._drain_errqueue()  # type: ignore[misc]
        if self._sock is None:
            return 0
        self._zc_since_drain = 0
        before = d.notifications + d.messages
        self._hot_drained(_lib.zc_dgram_drain(d, _DRAIN_LIMIT))
        return int(d.notifications + d.messages - before)

    def _hot_drained(self, flags: int) -> None:
        """Act on what a C drain found, then read on until it finds nothing for Python."""
        d = self._hot_d
        while True:
            if flags & F_RESOLVED:
                self._hot_resolve(int(d.drained_ids))
            if flags & F_UFAIL and self._hot_d is not None:
                self._hot_ring_failed()  # type: ignore[attr-defined]
            if flags & F_FAILED:
                err = int(d.msg_errno)
                if err == errno.EMSGSIZE:
                    self._fatal_error(_kernel.ErrQueueTruncated(err, "error-queue control message truncated"))
                    return
                raise OSError(err, os.strerror(err))
            if not flags & F_MESSAGE or self._sock is None:
                return
            self._hot_message()
            if self._sock is None or self._hot_d is None:
                return
            if self._classifying is not None or self._enobufs_datagram is not None:
                super()._drain_errqueue()  # type: ignore[misc]  # per message, as they need
                return
            flags = _lib.zc_dgram_drain(d, _DRAIN_LIMIT)

    def _hot_resolve(self, ids: int) -> None:
        """Zero-copy ranges the C drain applied (``ids`` ids, none copied): what
        on_zerocopy_range does for each, once for all of them."""
        policy = self._policy
        policy.on_completed(ids, copied=False)
        if policy.state is not _ZEROCOPY or self.stats.state != "zerocopy":
            self._sync_state()
        tracker: Any = self._tracker  # a CompiledTracker: this path runs only with one
        # The common case in C (_core_pyhot.c resolve_alike): the writes share one Completion
        # (same-sized datagrams, all zero-copy) and none is the general path's open_write:
        # the buffers' exports end first (an awaiting caller may reuse them at once), then the
        # compiled path's futures resolve; back come the completion and the other tokens:
        # None (sendto) or a general-path datagram's holder (sent after EAGAIN...).
        done = self._hot_fns["resolve_alike"](tracker._handles)
        if done is not None:
            self._hot_resolve_others(*done)
        else:
            n = int(tracker._t.nout)
            if n:
                self._resolve(tracker._results(n))
        if self._closing:
            self._after_completions()
        elif self._protocol_paused and not self._conn_lost:
            self._maybe_resume_protocol()  # (what _after_completions does then, without super())

    def _hot_message(self) -> None:
        """The message the C drain stopped at, handled as the reference drain would."""
        d = self._hot_d
        origin = int(d.msg_origin)
        if origin == _kernel.SO_EE_ORIGIN_ZEROCOPY and d.msg_errno == 0:
            self.on_zerocopy_range(  # type: ignore[attr-defined]
                int(d.msg_info), int(d.msg_data),
                int(d.msg_code) & _kernel.SO_EE_CODE_ZEROCOPY_COPIED != 0,
            )
            return
        address = _sockaddr(bytes(_ffi.buffer(d.msg_addr, d.msg_addrlen)))
        message = _kernel.SocketError(
            int(d.msg_errno), origin, int(d.msg_type), int(d.msg_code), int(d.msg_info), address
        )
        self.stats.socket_errors += 1
        self._on_socket_error_message(message)

    def _resolve(self, done: list[tuple[Any, Completion]]) -> None:
        """The base's _resolve, also for the compiled path's tokens (its futures, or None),
        whose buffer exports the C side ends first."""
        self._hot_release()
        stats = self.stats
        for token, completion in done:
            if completion.zerocopy:
                stats.zc_writes += 1
                stats.zc_write_bytes += completion.nbytes
            else:
                stats.copy_writes += 1
            future = _future_of(token)
            if future is not None and not future.done():
                future.set_result(completion)
        stats.pinned_bytes = self._tracker.pinned_bytes


def compiled_methods(cls: type) -> dict[str, Any]:
    """The compiled core's ``sendto_zc`` and ``sendto`` for the transport class ``cls`` (C
    methods that call the compiled builtins of an instance at once, and ``cls``'s own Python
    methods for everything else: see _core_pymeth.c), or {} without the core."""
    found: dict[str, Any] = {}
    if _core.compiled:
        pure_zc, pure_sendto = cls.__dict__["sendto_zc"], cls.__dict__["sendto"]
        if _lib.zc_dgram_methods(id(cls), id(pure_zc), id(pure_sendto), id(ZeroCopyPolicy),
                                 id(_ZEROCOPY), id(found)) < 0:
            return {}
        _C_METHODS.update(found.values())
    return found


_C_METHODS: set[Any] = set()  # the C methods made so far (compiled_methods, subclass_methods)


def subclass_methods(cls: type) -> dict[str, Any]:
    """The same C methods again for ``cls``, a subclass of the class compiled_methods made
    them for, for each of ``sendto_zc`` / ``sendto`` that ``cls`` inherits as a C method: the
    same function, but CPython 3.11 calls a C method without its generic call path only on an
    instance of the exact class the method names (~0.11k instructions per call, callgrind)."""
    if not _C_METHODS:
        return {}
    made: dict[str, Any] = {}
    if _lib.zc_dgram_methods_on(id(cls), id(made)) < 0:
        return {}
    found = {name: method for name, method in made.items()
             if name not in cls.__dict__ and getattr(cls, name, None) in _C_METHODS}
    _C_METHODS.update(found.values())
    return found


def _future_of(token: Any) -> Any:
    """The future of a tracker token: the compiled path's future itself (or None), or the
    ``future`` of what the general path holds (_Held, a batch), whose view ends here."""
    if token is None or token.__class__ not in _HOLDERS:
        return token
    token.view.release()
    return token.future


def _sockaddr(raw: bytes) -> Any:
    """The address tuple Python's recvmsg gives for a raw sockaddr_in / sockaddr_in6."""
    if len(raw) < 2:
        return None
    family = int.from_bytes(raw[:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET and len(raw) >= 8:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6 and len(raw) >= 28:
        flowinfo = int.from_bytes(raw[4:8], "big")
        scope = int.from_bytes(raw[24:28], "little")
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope)
    return None
