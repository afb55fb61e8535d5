"""Differential tests: the compiled tracker (aiozc/_sys/_core_tracker.c) against the pure one.

Every test of tests/test_completions.py runs again here with ``CompletionTracker`` replaced by
:class:`DiffTracker`, which makes each call on a pure and a compiled tracker and requires the
same result (same tokens in the same order, equal Completions, the same exception type, the
same counters after every step). That includes the hypothesis state machine (random sends,
partial sends, merged, reordered, duplicate and bogus ranges, u32 wrap, abandon) and the
sequence property test, on top of their own checks against the per-id model.
"""

from __future__ import annotations

from typing import Any

import pytest

import test_completions as ref
from aiozc import ctracker
from aiozc._sys import core
from aiozc.completions import CompletionTracker

if not core.compiled:
    pytest.skip(f"compiled core not in use: {core.why_pure}", allow_module_level=True)


class DiffHandle:
    """A pure and a compiled write handle of the same write."""

    def __init__(self, pure: Any, compiled: Any) -> None:
        self.pure = pure
        self.compiled = compiled

    @property
    def nbytes(self) -> int:
        assert self.pure.nbytes == self.compiled.nbytes
        return int(self.pure.nbytes)

    @property
    def zc_sends(self) -> int:
        assert self.pure.zc_sends == self.compiled.zc_sends
        return int(self.pure.zc_sends)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pure, name)


def _both(pure_call: Any, compiled_call: Any) -> Any:
    """Run both calls; they must return equal results or raise the same exception type."""
    try:
        expected = pure_call()
    except Exception as exc:
        with pytest.raises(type(exc)):
            compiled_call()
        raise
    got = compiled_call()
    assert got == expected
    return expected


class DiffTracker:
    """CompletionTracker's API; every call goes to both trackers and must agree."""

    def __init__(self, start_id: int = 0) -> None:
        try:
            self.pure: CompletionTracker[Any] = CompletionTracker(start_id)
        except Exception as exc:
            with pytest.raises(type(exc)):
                ctracker.CompiledTracker(start_id)
            raise
        self.compiled = ctracker.CompiledTracker(start_id)

    def _check(self) -> None:
        p, c = self.pure, self.compiled
        assert (c.next_id, c.outstanding_ids, c.pending_writes, c.pinned_bytes, c.unexpected_ids) == (
            p.next_id, p.outstanding_ids, p.pending_writes, p.pinned_bytes, p.unexpected_ids
        )

    def _run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return _both(
                lambda: getattr(self.pure, name)(*args, **kwargs),
                lambda: getattr(self.compiled, name)(*_compiled_args(args), **kwargs),
            )
        finally:
            self._check()

    # read-only state: the pure tracker's, checked equal after every call
    next_id = property(lambda self: self.pure.next_id)
    outstanding_ids = property(lambda self: self.pure.outstanding_ids)
    pending_writes = property(lambda self: self.pure.pending_writes)
    pinned_bytes = property(lambda self: self.pure.pinned_bytes)
    unexpected_ids = property(lambda self: self.pure.unexpected_ids)
    _next = property(lambda self: self.pure._next)

    def open_write(self, token: Any, nbytes: int) -> DiffHandle:
        try:
            pure = self.pure.open_write(token, nbytes)
        except Exception as exc:
            with pytest.raises(type(exc)):
                self.compiled.open_write(token, nbytes)
            raise
        handle = DiffHandle(pure, self.compiled.open_write(token, nbytes))
        self._check()
        return handle

    def on_sent(self, write: Any, nbytes: int, *, zerocopy: bool) -> Any:
        return self._pair("on_sent", write, nbytes, zerocopy=zerocopy)

    def on_sent_many(self, write: Any, nbytes: int, ids: int) -> Any:
        return self._pair("on_sent_many", write, nbytes, ids)

    def close_write(self, write: Any) -> Any:
        return self._pair("close_write", write)

    def sent_whole(self, token: Any, nbytes: int, *, zerocopy: bool) -> Any:
        return self._run("sent_whole", token, nbytes, zerocopy=zerocopy)

    def on_range(self, lo: int, hi: int, copied: bool) -> Any:
        return self._run("on_range", lo, hi, copied)

    def abandon(self) -> Any:
        return self._run("abandon")

    def _pair(self, name: str, write: Any, *args: Any, **kwargs: Any) -> Any:
        pure_w, compiled_w = (write.pure, write.compiled) if isinstance(write, DiffHandle) else (write, write)
        try:
            return _both(
                lambda: getattr(self.pure, name)(pure_w, *args, **kwargs),
                lambda: getattr(self.compiled, name)(compiled_w, *args, **kwargs),
            )
        finally:
            self._check()


def _compiled_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.compiled if isinstance(a, DiffHandle) else a for a in args)


@pytest.fixture(autouse=True)
def _diff_trackers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ref, "CompletionTracker", DiffTracker)


# Every test of the reference module, now run on both trackers side by side.
for _name in dir(ref):
    if _name.startswith("test_") and callable(getattr(ref, _name)):
        globals()[_name] = getattr(ref, _name)


class DiffTrackerMachine(ref.TrackerMachine):
    """The reference state machine; its tracker is a DiffTracker (see the fixture)."""


TestDiffTrackerMachine = DiffTrackerMachine.TestCase
TestDiffTrackerMachine.settings = ref.TestTrackerMachine.settings


def test_the_diff_tracker_can_fail() -> None:
    """A compiled tracker that disagrees is caught: feed only the pure one an extra range."""
    t = DiffTracker(5)
    t.open_write("a", 1)
    w = t.pure.open_write("b", 1)
    t.pure.on_sent(w, 1, zerocopy=True)
    with pytest.raises(AssertionError):
        t.on_range(5, 5, False)


def test_new_tracker_is_the_compiled_one() -> None:
    assert isinstance(ctracker.new_tracker(), ctracker.CompiledTracker)
