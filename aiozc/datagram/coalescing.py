"""coalesce_zc=True: sendto_zc() queues its datagram, one batch per loop iteration sends them.

The per-datagram part is a Coalescer: the compiled core's (aiozc/_sys/_core_coalesce.c), or
:class:`PyCoalescer`, its pure-Python reference (same arguments, same behaviour, cffi pins in
a list instead of a PinSet). The transport binds its ``sendto_zc`` as its own attribute, so a
call runs no Python frame on the compiled path; Python runs once per batch (the flush).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .._sys import mmsg as _mmsg
from ..base import TransportClosedError, byte_view
from ..completions import Completion
from ._common import Coalescer, PinSet, _DatagramHost, set_results
from .batching import _Batch, pin_sizes
from .hot import _debug_source, _future_loop_offset, _plain_futures

_Future = asyncio.Future

_MAX_BATCH = _mmsg.MAX_BATCH
# What pause() returns while the protocol is paused: no check until resume_writing (which
# sets room to -1, see _maybe_resume_protocol) or the next batch.
_NO_CHECK = 1 << 62
_EACH: dict[tuple[int, bool], Completion] = {}


def _each(size: int, zerocopy: bool) -> Completion:
    """The (shared, immutable) Completion of one datagram of a coalesced flush."""
    each = _EACH.get((size, zerocopy))
    if each is None:
        if len(_EACH) >= 4096:
            _EACH.clear()
        each = _EACH[size, zerocopy] = Completion(size, zerocopy, int(zerocopy), 0)
    return each


class PyCoalescer:
    """The pure-Python reference of the compiled Coalescer (``_core_coalesce.c``).

    ``sendto_zc(buf)`` pins ``buf`` (TypeError / BufferError as ``byte_view`` raises them,
    ValueError above ``max_size``), makes its future (``future_type(loop=loop)``, or
    ``make_future()`` where ``loop`` is None) and adds both to the waiting batch. Once per batch:
    ``schedule()`` on its first datagram returns the room below the high-water mark,
    ``flush()`` runs when it holds ``max_batch``, ``pause()`` returns the new room when its
    bytes exceed the room. An address, keywords, or ``blocked`` go to ``fallback`` instead.
    ``pinset_type`` is unused (the compiled one pins into it).
    """

    def __init__(self, pinset_type: Any, loop: Any, future_type: Any, make_future: Callable[[], Any],
                 schedule: Callable[[], int], flush: Callable[[], None], pause: Callable[[], int],
                 fallback: Callable[..., Any], view_error: Callable[[Any], Any],
                 max_size: int, max_batch: int) -> None:
        self._loop, self._future_type = loop, future_type
        self._make_future, self._schedule, self._flush, self._pause = make_future, schedule, flush, pause
        self._fallback: Callable[..., Any] | None = fallback
        self._view_error = view_error
        self._max_size, self._max_batch = max_size, max_batch
        self._objs: list[Any] = []
        self._pins: list[Any] = []
        self._futures: list[Any] = []
        self.nbytes = 0
        self.room = 0
        self._blocked = False

    @property
    def blocked(self) -> bool:
        return self._blocked

    @blocked.setter
    def blocked(self, value: bool) -> None:
        self._blocked = bool(value) or self._fallback is None  # a closed one stays blocked

    def __len__(self) -> int:
        return len(self._pins)

    def sendto_zc(self, *args: Any, **kwargs: Any) -> Any:
        if self._blocked or kwargs or not 1 <= len(args) <= 2 or (len(args) == 2 and args[1] is not None):
            if self._fallback is None:
                raise RuntimeError("sendto_zc() of a closed coalescer")
            return self._fallback(*args, **kwargs)
        buf = args[0]
        try:
            pin = _mmsg.pin(buf)
        except (TypeError, BufferError):
            self._view_error(buf)  # raises the error sendto_zc() gives for this buffer
            raise
        nbytes = len(pin)
        if nbytes > self._max_size:
            _mmsg.unpin(pin)
            raise ValueError(f"datagram of {nbytes} bytes exceeds the {self._max_size}-byte UDP payload limit")
        loop = self._loop
        future = self._future_type(loop=loop) if loop is not None else self._make_future()
        self._pins.append(pin)
        self._objs.append(buf)
        self._futures.append(future)
        self.nbytes += nbytes
        if len(self._pins) == 1:
            self.room = self._schedule()
        elif len(self._pins) >= self._max_batch:
            self._flush()
        if self.nbytes > self.room:
            self.room = self._pause()
        return future

    def take(self) -> tuple[list[Any], list[Any], list[Any]]:
        batch = self._objs, self._pins, self._futures
        self._objs, self._pins, self._futures = [], [], []
        self.nbytes = 0
        return batch

    def close(self) -> None:
        self._blocked = True
        self._fallback = self._make_future = self._schedule = self._flush = self._pause = None  # type: ignore[assignment]
        self._loop = self._future_type = None


class _FanOut:
    """The future of a ``coalesce_zc`` flush's batch: settles each sendto_zc() future of it."""

    __slots__ = ("futures", "sizes", "_done")

    def __init__(self, futures: list[asyncio.Future[Completion]], sizes: list[int]) -> None:
        self.futures = futures
        self.sizes = sizes
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, completion: Completion) -> None:
        self._done = True
        zerocopy = completion.zerocopy
        sizes = self.sizes
        if sizes and sizes.count(sizes[0]) == len(sizes):  # the usual case: one size
            each = _each(sizes[0], zerocopy)
            if set_results is not None:
                set_results(self.futures, each)  # the same loop in C
                return
            for future in self.futures:
                try:
                    future.set_result(each)
                except asyncio.InvalidStateError:  # cancelled (cheaper than done() each time)
                    pass
            return
        for future, size in zip(self.futures, sizes):
            if not future.done():
                future.set_result(_each(size, zerocopy))

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        for future in self.futures:
            if not future.done():
                future.set_exception(exc)


class _CoalescingMixin(_DatagramHost):
    """Part of :class:`~aiozc.datagram.transport.ZeroCopyDatagramTransport`."""

    _co: Any = None  # (set in __init__; the class default covers calls made before it)

    # -- coalesce_zc: sendto_zc() datagrams sent together, once per loop iteration ------------

    def _co_setup(self) -> None:
        """With ``coalesce_zc`` on a connected UDP socket, sendto_zc() is the Coalescer's: the
        datagram is pinned and checked now (TypeError, ValueError, TransportClosedError are
        raised as without it) and sent by a flush that runs once per event-loop iteration
        (``loop.call_soon``) or when 1024 are waiting: one sendmmsg (or one io_uring group)
        and one tracker write for all of them, as with sendto_zc_many().

        What changes: the datagram leaves at the end of the current loop iteration, not during
        the call; the kernel's refusal no longer raises (it reaches error_received, as for a
        batch); the futures of one flush resolve together, once all its datagrams are released,
        each with ``zerocopy`` True only if the whole flush went zero-copy. Call order with
        sendto(), sendto_zc_many() and close() is kept: they flush first.

        On the io_uring engine with the compiled core there is no Coalescer: the compiled
        per-call path (hot.py, _core_udpring.c) already sends what coalescing is for, one
        io_uring_enter for many datagrams (their SEND_ZCs are filled during the calls and
        submitted every 64th call and at the end of the loop iteration), so ``_hot_setup``
        turns ``_coalesce`` off for it. There each future resolves once its own datagram is
        released, and a datagram the kernel refuses later fails its future (as without
        ``coalesce_zc``). Why: through this Coalescer the window of 256 futures a user keeps
        became one flush, 256 SEND_ZCs in one io_uring_enter whose futures resolved together
        two loop iterations later, and ran slower than the per-call path it should undercut
        (quiet runs of 2026-12-02 00:39-01:04 UTC: 5.89 against 5.01 us CPU per 64000 B
        datagram on asyncio, 1.95/1.73x of stock sendto against 2.29/2.07x; callgrind 3.9k
        against 3.6k instructions, perf tracepoints 3 epoll_waits per flush); flushing every
        64 datagrams cost 5.8k instructions (the flush's Python work per batch).
        """
        if not (self._coalesce and self._connected and self._fast_max):
            return
        kind: Any = Coalescer if Coalescer is not None else PyCoalescer
        loop = _plain_loop(self._loop)
        # (the compiled one makes its futures as the compiled sendto_zc does: _core_pyhot.c)
        fast_future = () if Coalescer is None else (_debug_source(loop), _future_loop_offset())
        co = kind(PinSet, loop, _Future, self._make_future,
                  self._co_schedule, self._flush_coalesced, self._co_pause,
                  self._sendto_zc_uncoalesced, byte_view, self._fast_max, _MAX_BATCH, *fast_future)
        self._co = co
        # An instance attribute before the class's method: transport.sendto_zc(buf) calls the
        # Coalescer directly (the class's sendto_zc is its fallback's caller, see below).
        self.__dict__["sendto_zc"] = co.sendto_zc

    def _sendto_zc_coalesced(self, buf: Any) -> asyncio.Future[Completion]:
        """The class's sendto_zc() with ``coalesce_zc`` (the bound Coalescer shadows it)."""
        return self._co.sendto_zc(buf)  # type: ignore[no-any-return]

    def _sendto_zc_uncoalesced(self, buf: Any, addr: Any = None) -> asyncio.Future[Completion]:
        """What the Coalescer leaves to Python (an address, a closing transport): what came
        before goes first, then this datagram on its own."""
        self._flush_coalesced()
        return self._sendto_zc(buf, addr)

    def _co_schedule(self) -> int:
        """The first datagram of a batch: its flush is scheduled. Returns the room below the
        high-water mark; until the flush it can only grow (nothing of this transport is sent
        meanwhile), so comparing with it never misses a pause."""
        self._co_handle = self._loop.call_soon(self._flush_coalesced)
        return self._high_water - self._queued - self._tracker.pinned_bytes

    def _co_pause(self) -> int:
        """The batch's bytes went past the room: pause_writing if the exact size says so."""
        self._maybe_pause_protocol()
        return _NO_CHECK if self._protocol_paused else -1

    def _maybe_resume_protocol(self) -> None:
        paused = self._protocol_paused
        super()._maybe_resume_protocol()  # type: ignore[misc]
        if paused and not self._protocol_paused and self._co is not None:
            self._co.room = -1  # compare exactly until the next batch

    def _flush_coalesced(self) -> None:
        """Send the sendto_zc() datagrams waiting under ``coalesce_zc`` as one batch."""
        handle, self._co_handle = self._co_handle, None
        if handle is not None:
            handle.cancel()  # harmless when it is the callback running now
        co = self._co
        if not co:
            return
        objs, pins, futures = co.take()
        if self._sock is None:  # pragma: no cover - _fail_pending took them first
            _release_failing(pins, futures, TransportClosedError("transport closed"))
            return
        sizes = pin_sizes(pins)
        self._send_batch(_Batch(_FanOut(futures, sizes), objs, pins, sizes), self._address)  # type: ignore[arg-type]

    def _fail_coalesced(self, error: Exception) -> None:
        """The transport is closing for good: the waiting datagrams fail, sendto_zc() is the
        class's again (it raises), and the Coalescer lets go of the transport."""
        if self._co_handle is not None:
            self._co_handle.cancel()
            self._co_handle = None
        co, self._co = self._co, None
        if co is None:
            return
        _objs, pins, futures = co.take()
        co.close()
        self.__dict__.pop("sendto_zc", None)
        _release_failing(pins, futures, error)


def _plain_loop(loop: Any) -> Any:
    """``loop`` if its create_future() makes plain asyncio futures, else None."""
    return loop if _plain_futures(loop) else None


def _release_failing(pins: Any, futures: list[Any], error: BaseException) -> None:
    if pins.__class__ is PinSet:
        pins.release()
    else:
        for pin in pins:
            _mmsg.unpin(pin)
    for future in futures:
        if not future.done():
            future.set_exception(error)
