"""The io_uring engine's completion side: a reap's events (aiozc._sys.uring_io) to the
transports' callbacks. Part of :class:`aiozc.engines.io_uring.LoopRing`, which owns the
request and group tables named here."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from typing import Any

from .._sys import uring as _uring
from .._sys.uring_io import (
    EV_D_PENDING, EV_G_END, EV_G_RELEASE, EV_G_RELEASE_COPIED, EV_G_RESULT, EV_G_RESULTS_IN,
    EV_S_DONE, EV_S_RESULT,
)

# on_result(res, ctx, ident) -> the id the send consumed, or None (see LoopRing.send_zc).
OnResult = Callable[[int, Any, "int | None"], "int | None"]
# on_released(lo, hi, copied): ids lo..hi (u32, inclusive) are no longer referenced.
OnReleased = Callable[[int, int, bool], None]

_U32 = 0xFFFFFFFF
_unpin = _uring.ffi._backend.release  # ends a from_buffer export (aiozc._sys.mmsg.pin's too: one backend)
_consume: Callable[[Iterable[Any]], None] = collections.deque(maxlen=0).extend  # runs an iterator to its end

# One SEND_ZC in flight is a list, not an object (cheaper to build, measured).
_KEEP = 0  # (chunk memoryview, cffi from_buffer handle[, sockaddr holder]) until released
_ON_RESULT = 1  # on_result(res, ctx, ident) -> ident
_CTX = 2
_ON_RELEASED = 3  # on_released(lo, hi, copied)
_IDENT = 4  # the u32 id the send consumed, None if none (yet)
_Request = list  # [keep, on_result, ctx, on_released, ident]

# A send_zc_many group (its SQEs and CQEs are the RingIO's): [pins, on_result, ctx,
# on_released, first id, indexes whose id on_result voided (None: none), on_done].
_G_PINS, _G_ON_RESULT, _G_CTX, _G_ON_RELEASED, _G_FIRST, _G_VOIDED, _G_ON_DONE = range(7)
_FAILED = object()  # what LoopRing._guarded returns when the callback raised




class RingEvents:
    """LoopRing's dispatch of reaped events (see :meth:`_dispatch`)."""

    _loop: asyncio.AbstractEventLoop
    _groups: dict[int, list[Any]]
    _requests: dict[int, list[Any]]
    _dgrams: dict[int, Callable[[], None]]

    def _dispatch(self, events: list[int]) -> None:
        """Hand a reap's events (aiozc._sys.uring_io) to the transports' callbacks.

        on_result runs in CQE order; releases are delivered after the whole batch, merged
        into runs of consecutive ids per transport: like MSG_ZEROCOPY's coalesced ranges, one
        tracker/policy update covers many sends instead of one each. on_done comes before them.
        """
        releases: list[list[Any]] = []  # [callback, lo, hi, copied]
        finished: list[list[Any]] = []  # groups whose results are all in (see on_done)
        groups, requests = self._groups, self._requests
        it = iter(events)
        for kind, key, a, b in zip(it, it, it, it):
            if kind == EV_G_RELEASE or kind == EV_G_RELEASE_COPIED:
                entry = groups[key]
                self._group_released(entry, a, b, kind == EV_G_RELEASE_COPIED, releases)
            elif kind == EV_G_END:
                _unpin_group(groups.pop(key)[_G_PINS])  # the kernel references none of them
            elif kind == EV_S_DONE:
                req = requests.pop(key, None)
                if req is not None and req[_IDENT] is not None:
                    ident = req[_IDENT]
                    _add_release(releases, req[_ON_RELEASED], ident, ident, bool(a))
            elif kind == EV_S_RESULT:
                req = requests.get(key)
                if req is not None:
                    self._call_on_result(req, a)
            elif kind == EV_G_RESULT:
                self._group_result(groups[key], a, b)
            elif kind == EV_G_RESULTS_IN:
                entry = groups[key]
                if entry[_G_ON_DONE] is not None:
                    finished.append(entry)
            elif kind == EV_D_PENDING:
                on_pending = self._dgrams.get(key)
                if on_pending is not None:
                    self._guarded(on_pending)
        # on_done before the releases: a closing transport that sees no id outstanding after
        # them closes at once, and a group still waiting for its on_done then failed its batch
        # (close() right after sendto_zc_many raised ConnectionAbortedError on io_uring).
        for entry in finished:
            self._guarded(entry[_G_ON_DONE], entry[_G_CTX])
        for cb, lo, hi, copied in releases:
            self._release_run(cb, lo, hi, copied)

    @staticmethod
    def _group_released(entry: list[Any], index: int, count: int, copied: bool,
                        releases: list[list[Any]]) -> None:
        """Datagrams ``index .. index + count - 1`` of a group released: their ids, but those
        that on_result voided."""
        first, cb, voided = entry[_G_FIRST], entry[_G_ON_RELEASED], entry[_G_VOIDED]
        if voided is None:
            lo = (first + index) & _U32
            _add_release(releases, cb, lo, (lo + count - 1) & _U32, copied)
            return
        for i in range(index, index + count):
            if i not in voided:
                ident = (first + i) & _U32
                _add_release(releases, cb, ident, ident, copied)

    def _group_result(self, entry: list[Any], i: int, res: int) -> None:
        """An unexpected result in a group: the transport hears of it (on_result) and, if it
        says the send consumed no id (None), the id is not released again later."""
        ident = (entry[_G_FIRST] + i) & _U32
        if self._guarded(entry[_G_ON_RESULT], res, entry[_G_CTX], ident) is None:
            if entry[_G_VOIDED] is None:
                entry[_G_VOIDED] = set()
            entry[_G_VOIDED].add(i)

    def _call_on_result(self, req: list[Any], res: int) -> None:
        ident = self._guarded(req[_ON_RESULT], res, req[_CTX], req[_IDENT])
        if ident is not _FAILED:
            req[_IDENT] = ident

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or ``_FAILED`` after reporting what it raised to the loop: a transport's
        callback must not stop the reaping of every other transport's completions."""
        try:
            return fn(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report(exc)
            return _FAILED

    def _report(self, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {"message": "aiozc io_uring completion handler failed", "exception": exc}
        )

    def _release_run(self, cb: OnReleased, lo: int, hi: int, copied: bool) -> None:
        self._guarded(cb, lo, hi, copied)

def _unpin_group(pins: Any) -> None:
    """End a group's buffer exports: a PinSet's in one call, cffi pins consumed in C."""
    if pins.__class__ is list:
        _consume(map(_unpin, pins))
    else:
        pins.release()


def _add_release(releases: list[list[Any]], cb: OnReleased, lo: int, hi: int,
                 copied: bool) -> None:
    """Extend the last run of ``releases`` with ids ``lo..hi`` if they continue it, else
    start a new one."""
    if releases:
        last = releases[-1]
        # == not is: a transport passes a bound method, a new object at every attribute lookup
        if (last[2] + 1) & _U32 == lo and last[3] == copied and last[0] == cb:
            last[2] = hi
            return
    releases.append([cb, lo, hi, copied])
