"""The compiled completion tracker: :class:`~aiozc.completions.CompletionTracker`'s API over the
C port in ``aiozc/_sys/_core_tracker.c``.

The C side keeps every id, range and write record; this side keeps only the tokens (the C
code cannot hold Python objects), in a dict by the write's slot number. Results are the same
as the pure tracker's, call for call (tests/test_completions_diff.py).

:func:`new_tracker` picks this one when the compiled core is in use, else the pure one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, cast

from ._sys import core as _core
from .completions import MASK32, Completion, CompletionTracker, _check_u32, range_length

__all__ = ["CompiledTracker", "CompiledWriteHandle", "new_tracker"]

T = TypeVar("T")

_ffi: Any = _core.ffi
_lib: Any = _core.lib

# Completions are immutable and most are alike: share them (as completions.py does).
_COMPLETIONS: dict[tuple[int, bool, int, int], Completion] = {}


def _completion(nbytes: int, zerocopy: bool, ids: int, copied: int) -> Completion:
    key = (nbytes, zerocopy, ids, copied)
    completion = _COMPLETIONS.get(key)
    if completion is None:
        if len(_COMPLETIONS) >= 4096:
            _COMPLETIONS.clear()
        completion = _COMPLETIONS[key] = Completion(*key)
    return completion


class CompiledWriteHandle:
    """What :meth:`CompiledTracker.open_write` returns (the pure tracker's WriteHandle alike)."""

    __slots__ = ("nbytes", "_slot", "_owner", "_ids", "_sent", "_open")
    _owner: CompiledTracker[Any] | None  # None once its write is resolved or forgotten

    def __init__(self, owner: CompiledTracker[Any], slot: int, nbytes: int) -> None:
        self.nbytes = nbytes
        self._slot = slot
        self._owner = owner
        self._ids = 0
        self._sent = 0
        self._open = True

    @property
    def zc_sends(self) -> int:
        """Zero-copy send calls made for this write so far (ids it consumed)."""
        return self._ids

    def __repr__(self) -> str:
        state = "open" if self._open else "closed/done"
        return f"<CompiledWriteHandle slot {self._slot} {state} {self._sent}/{self.nbytes}B ids={self._ids}>"


def _raise(code: int, write: Any, nbytes: int = 0, calls: int = 0) -> None:
    if code == _lib.ZC_ERR_NOT_LIVE:
        raise ValueError(f"{write!r} is not a live write of this tracker")
    if code == _lib.ZC_ERR_CLOSED:
        raise ValueError(f"{write!r} is already closed")
    if code == _lib.ZC_ERR_NBYTES:
        raise ValueError(f"nbytes={nbytes} in {calls} send call(s): each must move > 0 bytes")
    if code == _lib.ZC_ERR_EXCEEDS:
        raise ValueError(f"send of {nbytes} bytes exceeds the write {write!r}")
    if code == _lib.ZC_ERR_INTERLEAVE:
        raise ValueError("zero-copy sends of one write must not interleave with another write's")
    if code == _lib.ZC_ERR_UNSENT:
        raise ValueError(f"write {write!r} closed before all its bytes were sent")
    if code == _lib.ZC_ERR_NOMEM:
        raise MemoryError("aiozc compiled tracker: out of memory")
    raise AssertionError(f"unexpected tracker result {code}")  # pragma: no cover


class CompiledTracker(Generic[T]):
    """:class:`~aiozc.completions.CompletionTracker` in C; same methods, same results."""

    compiled = True

    def __init__(self, start_id: int = 0) -> None:
        _check_u32("start_id", start_id)
        raw = _lib.zc_tracker_new(start_id)
        if raw == _ffi.NULL:
            raise MemoryError("aiozc compiled tracker: out of memory")
        self._t = _ffi.gc(raw, _lib.zc_tracker_free)
        self._tokens: dict[int, Any] = {}  # slot -> token of every unresolved write
        self._handles: dict[int, CompiledWriteHandle] = {}  # slot -> handle (open_write only)
        # tokens.pop(slot, default); the datagram hot path puts its own in (its futures are
        # held in C, see _core_pyhot.c: it falls back to this dict)
        self._pop_token: Callable[[int, Any], Any] = self._tokens.pop

    # -- read-only state ---------------------------------------------------------------------

    @property
    def next_id(self) -> int:
        return int(self._t.next) & MASK32

    @property
    def outstanding_ids(self) -> int:
        return int(self._t.outstanding)

    @property
    def pending_writes(self) -> int:
        return int(self._t.npending)

    @property
    def pinned_bytes(self) -> int:
        return int(self._t.pinned)

    @property
    def unexpected_ids(self) -> int:
        return int(self._t.unexpected)

    # -- the transport's side ----------------------------------------------------------------

    def open_write(self, token: T, nbytes: int) -> CompiledWriteHandle:
        if nbytes < 0:
            raise ValueError(f"nbytes={nbytes} is negative")
        slot = _lib.zc_open(self._t, nbytes)
        if slot < 0:
            _raise(slot, None)
        handle = CompiledWriteHandle(self, slot, nbytes)
        self._tokens[slot] = token
        self._handles[slot] = handle
        return handle

    def _adopt(self, slot: int, nbytes: int, sent: int, ids: int) -> CompiledWriteHandle:
        """The handle of a write the compiled TCP path opened (its token filed) and sent
        ``sent`` bytes of in ``ids`` zero-copy send calls (aiozc/_sys/_core_tcpzc.c)."""
        handle = CompiledWriteHandle(self, slot, nbytes)
        handle._sent = sent
        handle._ids = ids
        self._handles[slot] = handle
        return handle

    def _slot_of(self, write: CompiledWriteHandle) -> int:
        if getattr(write, "_owner", None) is not self:
            raise ValueError(f"{write!r} is not a live write of this tracker")
        return write._slot

    def on_sent(self, write: CompiledWriteHandle, nbytes: int, *, zerocopy: bool) -> int | None:
        if zerocopy:
            return self.on_sent_many(write, nbytes, 1)
        err = _lib.zc_on_sent_copy(self._t, self._slot_of(write), nbytes)
        if err:
            _raise(err, write, nbytes, 1)
        write._sent += nbytes
        return None

    def on_sent_many(self, write: CompiledWriteHandle, nbytes: int, ids: int) -> int:
        ident = _lib.zc_on_sent_many(self._t, self._slot_of(write), nbytes, ids)
        if ident < 0:
            _raise(ident, write, nbytes, ids)
        write._sent += nbytes
        write._ids += ids
        return int(ident)

    def sent_whole(self, token: T, nbytes: int, *, zerocopy: bool) -> list[tuple[T, Completion]]:
        if nbytes <= 0:
            raise ValueError(f"nbytes={nbytes}: only sends that returned > 0 bytes count")
        slot = _lib.zc_sent_whole(self._t, nbytes, zerocopy)
        if slot >= 0:
            self._tokens[slot] = token
            return []
        if slot != _lib.ZC_RESOLVED_NOW:
            _raise(slot, None, nbytes, 1)
        return [(token, _completion(nbytes, False, 0, 0))]

    def close_write(self, write: CompiledWriteHandle) -> list[tuple[T, Completion]]:
        res = _lib.zc_close(self._t, self._slot_of(write))
        if res < 0:
            _raise(res, write)
        write._open = False
        if res == 0:
            return []
        return self._results(1)

    # -- the kernel's side -------------------------------------------------------------------

    def on_range(self, lo: int, hi: int, copied: bool) -> list[tuple[T, Completion]]:
        range_length(lo, hi)  # checks both are u32, as the pure tracker does
        n = _lib.zc_on_range(self._t, lo, hi, copied)
        if n <= 0:
            if n < 0:
                _raise(n, None)
            return []
        return self._results(n)

    def on_ranges(self, ranges: Iterable[tuple[int, int, bool]]) -> list[tuple[T, Completion]]:
        """:meth:`CompletionTracker.on_ranges`: :meth:`on_range` for each, results concatenated."""
        result: list[tuple[T, Completion]] = []
        for lo, hi, copied in ranges:
            result += self.on_range(lo, hi, copied)
        return result

    def abandon(self) -> list[T]:
        n = _lib.zc_abandon(self._t)
        if n < 0:
            _raise(n, None)
        slots = _ffi.unpack(self._t.out_slot, n) if n else []
        pop = self._pop_token
        # A slot may have no token: the datagram path's sendto() keeps none (its buffer's
        # export is held on the C side).
        tokens = [cast(T, pop(slot, None)) for slot in slots]
        for handle in self._handles.values():
            handle._open = False
            handle._owner = None
        self._handles.clear()
        self._tokens.clear()
        return tokens

    # -- internals ---------------------------------------------------------------------------

    def _results(self, n: int) -> list[tuple[T, Completion]]:
        """The ``n`` writes the last C call resolved, with their tokens, in write order."""
        t = self._t
        slots = _ffi.unpack(t.out_slot, n)
        pop = self._pop_token
        handles = self._handles
        if handles:
            for slot in slots:
                handle = handles.pop(slot, None)
                if handle is not None:
                    handle._owner = None  # dead: later calls with it raise "not live"
        if t.out_uniform:
            completion = _completion(
                int(t.out_nbytes[0]), bool(t.out_zc[0]), int(t.out_ids[0]), int(t.out_copied[0])
            )
            return [(pop(slot, None), completion) for slot in slots]
        nbytes = _ffi.unpack(t.out_nbytes, n)
        zc = _ffi.unpack(t.out_zc, n)
        ids = _ffi.unpack(t.out_ids, n)
        copied = _ffi.unpack(t.out_copied, n)
        return [
            (pop(slot, None), _completion(nbytes[k], bool(zc[k]), ids[k], copied[k]))
            for k, slot in enumerate(slots)
        ]


def new_tracker(start_id: int = 0) -> CompletionTracker[Any] | CompiledTracker[Any]:
    """The compiled tracker when the compiled core is in use, else the pure-Python one."""
    if _core.compiled:
        return CompiledTracker(start_id)
    return CompletionTracker(start_id)
