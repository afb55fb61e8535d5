"""coalesce_zc=True: sendto_zc() queues its datagram, one batch per loop iteration sends them."""

from __future__ import annotations

import asyncio
from typing import Any

from .._sys import mmsg as _mmsg
from ..base import TransportClosedError, byte_view
from ..completions import Completion
from ._common import PinSet, _DatagramHost, set_results
from .batching import _Batch

# sendto_zc()'s future where the loop's create_future() is a plain asyncio.Future (hot.py).
_Future = asyncio.Future
_running_loop = asyncio.events._get_running_loop

_pin = _mmsg.pin
_MAX_BATCH = _mmsg.MAX_BATCH
_EACH: dict[tuple[int, bool], Completion] = {}
def _each(size: int, zerocopy: bool) -> Completion:
    """The (shared, immutable) Completion of one datagram of a coalesced flush."""
    each = _EACH.get((size, zerocopy))
    if each is None:
        if len(_EACH) >= 4096:
            _EACH.clear()
        each = _EACH[size, zerocopy] = Completion(size, zerocopy, int(zerocopy), 0)
    return each


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

    # -- coalesce_zc: sendto_zc() datagrams sent together, once per loop iteration ------------

    def _sendto_zc_coalesced(self, buf: Any) -> asyncio.Future[Completion]:
        """sendto_zc() with ``coalesce_zc``: the datagram is pinned and checked now (TypeError,
        ValueError, TransportClosedError are raised as without it) and sent by a flush that runs
        once per event-loop iteration (``loop.call_soon``) or when 1024 are waiting: one
        sendmmsg and one tracker write for all of them, as with sendto_zc_many().

        What changes: the datagram leaves at the end of the current loop iteration, not during
        the call; the kernel's refusal no longer raises (it reaches error_received, as for a
        batch); the futures of one flush resolve together, once all its datagrams are released,
        each with ``zerocopy`` True only if the whole flush went zero-copy. Call order with
        sendto(), sendto_zc_many() and close() is kept: they flush first.
        """
        if self._closing:  # also set once the socket is gone
            raise TransportClosedError("sendto_zc() on a closing or closed transport")
        pins = self._co_pins
        try:
            if pins.__class__ is PinSet:  # the compiled core's (see _new_co_pins)
                nbytes = pins.add(buf)
            else:
                pin = _pin(buf)
                pins.append(pin)
                nbytes = len(pin)
        except (TypeError, BufferError):
            byte_view(buf).release()  # raises the error sendto_zc() would
            raise
        if nbytes > self._fast_max:
            self._co_unpin_last(pins)
            raise ValueError(
                f"datagram of {nbytes} bytes exceeds the {self._max_size}-byte UDP payload limit"
            )
        loop = self._hot_loop  # None unless the loop's futures are plain asyncio futures
        future = _Future() if loop is not None and _running_loop() is loop else self._make_future()
        self._co_objs.append(buf)
        self._co_futures.append(future)
        self._co_bytes += nbytes
        if self._co_handle is None:
            self._co_handle = self._loop.call_soon(self._flush_coalesced)
            # Room below the high-water mark now; until the flush it can only grow (nothing of
            # this transport is sent meanwhile), so comparing with it never misses a pause.
            self._co_room = self._high_water - self._queued - self._tracker.pinned_bytes
        elif len(pins) >= _MAX_BATCH:
            self._flush_coalesced()
        if self._co_bytes > self._co_room and not self._protocol_paused:
            self._maybe_pause_protocol()  # which checks the exact size
        return future

    def _flush_coalesced(self) -> None:
        """Send the sendto_zc() datagrams waiting under ``coalesce_zc`` as one batch."""
        handle, self._co_handle = self._co_handle, None
        if handle is not None:
            handle.cancel()  # harmless when it is the callback running now
        if not self._co_pins:
            return
        objs, pins, futures = self._co_objs, self._co_pins, self._co_futures
        self._co_objs, self._co_pins, self._co_futures = [], self._new_co_pins(), []
        self._co_bytes = 0
        sizes = pins.sizes() if pins.__class__ is PinSet else list(map(len, pins))
        if self._sock is None:  # pragma: no cover - _fail_pending emptied the lists first
            return
        self._send_batch(_Batch(_FanOut(futures, sizes), objs, pins, sizes), self._address)  # type: ignore[arg-type]

    def _fail_coalesced(self, error: Exception) -> None:
        if self._co_handle is not None:
            self._co_handle.cancel()
            self._co_handle = None
        pins, futures = self._co_pins, self._co_futures
        self._co_objs, self._co_pins, self._co_futures = [], self._new_co_pins(), []
        self._co_bytes = 0
        if pins.__class__ is PinSet:
            pins.release()
        else:
            for pin in pins:
                _mmsg.unpin(pin)
        for future in futures:
            if not future.done():
                future.set_exception(error)

    def _new_co_pins(self) -> Any:
        """Where coalesced datagrams are pinned: a PinSet on the compiled path (exports and
        sendmmsg in C), else a list of cffi pins (the io_uring engine takes those over)."""
        return PinSet() if PinSet is not None and self._hot_d is not None else []

    def _co_unpin_last(self, pins: Any) -> None:
        """End the pin of the datagram just added (refused: too large)."""
        if pins.__class__ is PinSet:
            # A PinSet has no pop: move the others to a new set (a refused datagram is rare).
            objs = self._co_objs
            pins.release()
            fresh = self._co_pins = self._new_co_pins()
            for obj in objs:
                fresh.add(obj)
            return
        _mmsg.unpin(pins.pop())
