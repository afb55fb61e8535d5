"""Tests for aiozc.completions: the MSG_ZEROCOPY id-range -> write-completion state machine.

The property tests drive the tracker and a deliberately naive per-id reference model side by
side: the model keeps a dict of every outstanding u32 id, the tracker must agree with it
after every step.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from aiozc import completions
from aiozc.completions import (
    MASK32,
    Completion,
    CompletionTracker,
    WriteHandle,
    range_length,
)

R = TypeVar("R")

# Start ids right below the wrap point make the u32 counter wrap within a few sends.
START_IDS = st.one_of(st.integers(MASK32 - 40, MASK32), st.integers(0, MASK32))


# --------------------------------------------------------------------------------------------
# Reference model
# --------------------------------------------------------------------------------------------


@dataclass
class ModelWrite:
    token: int
    nbytes: int
    handle: WriteHandle
    sent: int = 0
    zc_bytes: int = 0
    ids: list[int] = field(default_factory=list)  # u32 ids consumed
    copied: int = 0
    closed: bool = False
    resolved: bool = False
    abandoned: bool = False

    def expected(self) -> Completion:
        zerocopy = self.nbytes > 0 and self.zc_bytes == self.nbytes and self.copied == 0
        return Completion(self.nbytes, zerocopy, len(self.ids), self.copied)


class Model:
    """Per-id model: every outstanding u32 id is a dict key. Slow, obviously right."""

    def __init__(self, start_id: int) -> None:
        self.next_u = start_id  # unwrapped
        self.writes: list[ModelWrite] = []
        self.outstanding: dict[int, ModelWrite] = {}  # u32 id -> owner
        self.unexpected = 0

    def live(self) -> list[ModelWrite]:
        return [w for w in self.writes if not w.resolved and not w.abandoned]

    def pinned(self) -> int:
        return sum(w.zc_bytes for w in self.live())

    def sent(self, w: ModelWrite, nbytes: int, zerocopy: bool) -> int | None:
        w.sent += nbytes
        if not zerocopy:
            return None
        ident = self.next_u & MASK32
        self.next_u += 1
        w.ids.append(ident)
        w.zc_bytes += nbytes
        self.outstanding[ident] = w
        return ident

    def on_range(self, lo: int, hi: int, copied: bool) -> None:
        length = range_length(lo, hi)
        # Iterate over outstanding ids, not over the range, so huge ranges stay cheap here too.
        hit = [i for i in self.outstanding if (i - lo) & MASK32 < length]
        for i in hit:
            w = self.outstanding.pop(i)
            if copied:
                w.copied += 1
        self.unexpected += length - len(hit)

    def resolvable(self) -> list[ModelWrite]:
        """Writes that must be resolved now: closed, every id reported, not yet resolved."""
        return [
            w
            for w in self.live()
            if w.closed and not any(self.outstanding.get(i) is w for i in w.ids)
        ]

    def check_result(self, result: list[tuple[int, Completion]]) -> None:
        """``result`` must be exactly the newly resolvable writes, in write order."""
        due = self.resolvable()
        assert [tok for tok, _ in result] == [w.token for w in due]
        for (_, comp), w in zip(result, due):
            assert comp == w.expected()
            w.resolved = True


def assert_matches(tracker: CompletionTracker[int], model: Model) -> None:
    assert tracker.next_id == model.next_u & MASK32
    assert tracker.outstanding_ids == len(model.outstanding)
    assert tracker.pending_writes == len(model.live())
    assert tracker.pinned_bytes == model.pinned()
    assert tracker.unexpected_ids == model.unexpected


def snapshot(tracker: CompletionTracker[Any]) -> tuple[int, int, int, int]:
    return (tracker.next_id, tracker.outstanding_ids, tracker.pending_writes, tracker.pinned_bytes)


# --------------------------------------------------------------------------------------------
# Stateful property test
# --------------------------------------------------------------------------------------------


class TrackerMachine(RuleBasedStateMachine):
    """Writes are opened one at a time (as the transport does), split into random zero-copy
    and copying send calls, closed; the "kernel" reports any run of consecutive outstanding
    ids at any time (merging, reordering, leaving gaps), plus duplicate, never-issued and
    arbitrary ranges."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker: CompletionTracker[int] = CompletionTracker()
        self.model = Model(0)
        self.current: ModelWrite | None = None

    @initialize(start_id=START_IDS)
    def start(self, start_id: int) -> None:
        self.tracker = CompletionTracker(start_id)
        self.model = Model(start_id)

    # -- transport side --------------------------------------------------------------------

    @precondition(lambda self: self.current is None)
    @rule(nbytes=st.one_of(st.integers(0, 64), st.integers(0, 100_000)))
    def open_write(self, nbytes: int) -> None:
        token = len(self.model.writes)
        handle = self.tracker.open_write(token, nbytes)
        self.current = ModelWrite(token, nbytes, handle)
        self.model.writes.append(self.current)

    @precondition(lambda self: self.current is not None and self.current.sent < self.current.nbytes)
    @rule(data=st.data(), zerocopy=st.booleans())
    def send(self, data: st.DataObject, zerocopy: bool) -> None:
        w = self.current
        assert w is not None
        left = w.nbytes - w.sent
        # Either the rest of the write (a full send) or a partial send of any size.
        nbytes = data.draw(st.one_of(st.just(left), st.integers(1, left)), label="nbytes")
        got = self.tracker.on_sent(w.handle, nbytes, zerocopy=zerocopy)
        assert got == self.model.sent(w, nbytes, zerocopy)

    @precondition(lambda self: self.current is not None and self.current.sent == self.current.nbytes)
    @rule()
    def close_write(self) -> None:
        w = self.current
        assert w is not None
        result = self.tracker.close_write(w.handle)
        w.closed = True
        self.current = None
        self.model.check_result(result)

    # -- kernel side -----------------------------------------------------------------------

    @precondition(lambda self: bool(self.model.outstanding))
    @rule(data=st.data(), copied=st.booleans())
    def report_run(self, data: st.DataObject, copied: bool) -> None:
        """A genuine notification: a run of consecutive outstanding ids, picked anywhere."""
        ids = sorted(self.model.outstanding, key=lambda i: (i - self.model.next_u) & MASK32)
        start = data.draw(st.integers(0, len(ids) - 1), label="start")
        run = 1
        while start + run < len(ids) and ids[start + run] == (ids[start + run - 1] + 1) & MASK32:
            run += 1
        n = data.draw(st.one_of(st.just(run), st.integers(1, run)), label="n")
        lo, hi = ids[start], ids[start + n - 1]
        unexpected = self.tracker.unexpected_ids
        result = self.tracker.on_range(lo, hi, copied)
        self.model.on_range(lo, hi, copied)
        assert self.tracker.unexpected_ids == unexpected
        self.model.check_result(result)

    @rule(data=st.data(), copied=st.booleans())
    def report_bogus(self, data: st.DataObject, copied: bool) -> None:
        """Duplicate or never-issued ids only: counted as unexpected, nothing else changes."""
        issued = [i for w in self.model.writes for i in w.ids]
        starts = st.integers(0, 1000).map(lambda k: (self.model.next_u + k) & MASK32)
        if issued:
            starts = st.one_of(starts, st.sampled_from(issued))
        lo = data.draw(starts, label="lo")
        want = data.draw(st.integers(1, 40), label="length")
        length = 0
        while length < want and (lo + length) & MASK32 not in self.model.outstanding:
            length += 1
        if length == 0:
            return
        before = snapshot(self.tracker)
        unexpected = self.tracker.unexpected_ids
        result = self.tracker.on_range(lo, (lo + length - 1) & MASK32, copied)
        assert result == []
        assert snapshot(self.tracker) == before
        assert self.tracker.unexpected_ids == unexpected + length
        self.model.unexpected += length

    @rule(data=st.data(), copied=st.booleans())
    def report_arbitrary(self, data: st.DataObject, copied: bool) -> None:
        """Any range at all, possibly mixing outstanding, reported and unknown ids, possibly
        covering nearly the whole id space."""
        near = st.integers(-80, 80).map(lambda k: (self.model.next_u + k) & MASK32)
        lo = data.draw(st.one_of(near, st.integers(0, MASK32)), label="lo")
        hi = data.draw(
            st.one_of(
                st.integers(0, 80).map(lambda k: (lo + k) & MASK32),
                # lo - k: wraps round nearly the whole id space back to just before lo
                st.integers(1, 80).map(lambda k: (lo - k) & MASK32),
                near,
                st.integers(0, MASK32),
            ),
            label="hi",
        )
        result = self.tracker.on_range(lo, hi, copied)
        self.model.on_range(lo, hi, copied)
        self.model.check_result(result)

    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 9), label="rarely") != 0:
            return
        tokens = self.tracker.abandon()
        live = self.model.live()
        assert tokens == [w.token for w in live]
        for w in live:
            w.abandoned = True
        self.model.outstanding.clear()
        self.current = None
        for w in live:
            with pytest.raises(ValueError):
                self.tracker.close_write(w.handle)

    @invariant()
    def matches_model(self) -> None:
        assert_matches(self.tracker, self.model)


TestTrackerMachine = TrackerMachine.TestCase
TestTrackerMachine.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------------------------
# Sequence-based property test: everything sent, then everything reported
# --------------------------------------------------------------------------------------------


@st.composite
def workloads(draw: st.DrawFn) -> tuple[int, list[list[tuple[int, bool]]], int]:
    """(start_id, writes as lists of (nbytes, zerocopy) send calls, shuffle seed)."""
    start_id = draw(START_IDS)
    writes = draw(
        st.lists(
            st.lists(st.tuples(st.integers(1, 9000), st.booleans()), min_size=0, max_size=12),
            min_size=1,
            max_size=25,
        )
    )
    return start_id, writes, draw(st.integers(0, 2**32))


@settings(max_examples=150, deadline=None)
@given(workloads(), st.data())
def test_every_write_resolves_exactly_once(
    workload: tuple[int, list[list[tuple[int, bool]]], int], data: st.DataObject
) -> None:
    start_id, writes, seed = workload
    rng = random.Random(seed)
    tracker: CompletionTracker[int] = CompletionTracker(start_id)
    resolved: dict[int, Completion] = {}
    expected: dict[int, Completion] = {}
    all_ids: list[int] = []
    copied_ids: set[int] = set()
    owner: dict[int, int] = {}

    def collect(result: list[tuple[int, Completion]]) -> None:
        tokens = [tok for tok, _ in result]
        assert tokens == sorted(tokens)
        for tok, comp in result:
            assert tok not in resolved, "resolved twice"
            resolved[tok] = comp

    sends_per_write: list[list[int]] = []
    for token, sends in enumerate(writes):
        w = tracker.open_write(token, sum(n for n, _ in sends))
        ids = []
        for nbytes, zc in sends:
            ident = tracker.on_sent(w, nbytes, zerocopy=zc)
            assert (ident is not None) == zc
            if ident is not None:
                ids.append(ident)
                owner[ident] = token
        sends_per_write.append(ids)
        all_ids.extend(ids)
        collect(tracker.close_write(w))
        if not ids:
            assert token in resolved  # nothing outstanding: resolves at close
    assert all_ids == [(start_id + k) & MASK32 for k in range(len(all_ids))]

    # The kernel merges consecutive ids into ranges and delivers them in any order, with
    # duplicates of already delivered ranges thrown in.
    cuts = sorted(rng.sample(range(1, len(all_ids)), rng.randint(0, max(0, len(all_ids) - 1))))
    bounds = list(zip([0, *cuts], [*cuts, len(all_ids)]))
    ranges = [(all_ids[a], all_ids[b - 1], rng.random() < 0.3) for a, b in bounds if a < b]
    rng.shuffle(ranges)
    delivered: list[tuple[int, int, bool]] = []
    reported: set[int] = set()
    for lo, hi, copied in ranges:
        if delivered and rng.random() < 0.25:
            dup = rng.choice(delivered)
            before = snapshot(tracker), tracker.unexpected_ids
            assert tracker.on_range(*dup) == []
            assert snapshot(tracker) == before[0]
            assert tracker.unexpected_ids == before[1] + range_length(dup[0], dup[1])
        collect(tracker.on_range(lo, hi, copied))
        delivered.append((lo, hi, copied))
        span = [(lo + k) & MASK32 for k in range(range_length(lo, hi))]
        reported.update(span)
        if copied:
            copied_ids.update(span)
        # Nothing resolves before all its ids are in, everything resolves once they are.
        for token, ids in enumerate(sends_per_write):
            assert (token in resolved) == all(i in reported for i in ids)

    for token, sends in enumerate(writes):
        nbytes = sum(n for n, _ in sends)
        ids = sends_per_write[token]
        n_copied = sum(1 for i in ids if i in copied_ids)
        zerocopy = nbytes > 0 and all(zc for _, zc in sends) and n_copied == 0
        expected[token] = Completion(nbytes, zerocopy, len(ids), n_copied)
    assert resolved == expected
    assert snapshot(tracker)[1:] == (0, 0, 0)


# --------------------------------------------------------------------------------------------
# Unit tests
# --------------------------------------------------------------------------------------------


def zc_write(
    tracker: CompletionTracker[str], token: str, sends: int, *, close: bool = True
) -> tuple[WriteHandle, list[int]]:
    """A write of ``sends`` one-byte zero-copy sends; returns the handle and its ids."""
    w = tracker.open_write(token, sends)
    ids = [tracker.on_sent(w, 1, zerocopy=True) for _ in range(sends)]
    if close:
        assert tracker.close_write(w) == []
    return w, [i for i in ids if i is not None]


@pytest.mark.parametrize(
    ("lo", "hi", "n"),
    [
        (0, 0, 1),
        (5, 9, 5),
        (MASK32, MASK32, 1),
        (MASK32 - 1, MASK32, 2),
        (MASK32 - 1, 1, 4),  # wraps through 0
        (MASK32, 0, 2),
        (0, MASK32, 2**32),
        (1, 0, 2**32),  # lo > hi by one: the whole id space
    ],
)
def test_range_length(lo: int, hi: int, n: int) -> None:
    assert range_length(lo, hi) == n


@pytest.mark.parametrize(("lo", "hi"), [(-1, 0), (0, 2**32), (2**32, 2**32)])
def test_range_length_rejects_non_u32(lo: int, hi: int) -> None:
    with pytest.raises(ValueError):
        range_length(lo, hi)


def test_ids_wrap_and_wrapped_range_resolves() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32 - 1)
    _, ids = zc_write(t, "a", 4)
    assert ids == [MASK32 - 1, MASK32, 0, 1]
    assert t.next_id == 2
    assert t.on_range(MASK32 - 1, 1, False) == [("a", Completion(4, True, 4, 0))]
    assert (t.outstanding_ids, t.pending_writes, t.pinned_bytes, t.unexpected_ids) == (0, 0, 0, 0)


def test_range_ending_at_max_u32() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32 - 2)
    zc_write(t, "a", 3)  # ids MASK32-2 .. MASK32
    _, ids_b = zc_write(t, "b", 1)
    assert ids_b == [0]
    assert t.on_range(MASK32 - 2, MASK32, False) == [("a", Completion(3, True, 3, 0))]
    assert t.outstanding_ids == 1
    assert t.on_range(0, 0, True) == [("b", Completion(1, False, 1, 1))]
    assert t.unexpected_ids == 0


def test_next_id_wraps_from_max() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32)
    w = t.open_write("a", 2)
    assert t.on_sent(w, 1, zerocopy=True) == MASK32
    assert t.next_id == 0
    assert t.on_sent(w, 1, zerocopy=True) == 0
    assert t.next_id == 1


def test_out_of_order_ranges_with_gaps() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32 - 3)
    zc_write(t, "a", 2)  # MASK32-3, MASK32-2
    zc_write(t, "b", 2)  # MASK32-1, MASK32
    zc_write(t, "c", 2)  # 0, 1
    # Covers all of b and leaves gaps at both ends: only b resolves.
    assert t.on_range(MASK32 - 2, 0, False) == [("b", Completion(2, True, 2, 0))]
    assert t.on_range(1, 1, False) == [("c", Completion(2, True, 2, 0))]
    assert t.pending_writes == 1
    assert t.on_range(MASK32 - 3, MASK32 - 3, False) == [("a", Completion(2, True, 2, 0))]
    assert (t.pending_writes, t.outstanding_ids, t.unexpected_ids) == (0, 0, 0)


def test_one_range_resolving_several_writes_returns_them_in_write_order() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32 - 1)
    for name in "abc":
        zc_write(t, name, 2)
    result = t.on_range(MASK32 - 1, 3, True)
    assert [tok for tok, _ in result] == ["a", "b", "c"]
    assert all(c == Completion(2, False, 2, 2) for _, c in result)


def test_wrapping_range_resolving_older_and_newer_writes_returns_write_order() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32 - 1)
    zc_write(t, "a", 2)  # MASK32-1, MASK32
    zc_write(t, "b", 2)  # 0, 1
    # Starts at b's first id and goes the long way round (2**32 ids) to a's last.
    result = t.on_range(0, MASK32, False)
    assert [tok for tok, _ in result] == ["a", "b"]
    assert t.unexpected_ids == 2**32 - 4


def test_writes_opened_together_resolve_in_open_order() -> None:
    t: CompletionTracker[str] = CompletionTracker()
    a = t.open_write("a", 1)
    b = t.open_write("b", 1)
    assert t.on_sent(b, 1, zerocopy=True) == 0  # b's ids come first ...
    assert t.on_sent(a, 1, zerocopy=True) == 1
    t.close_write(a)
    t.close_write(b)
    assert [tok for tok, _ in t.on_range(0, 1, False)] == ["a", "b"]  # ... still a first


def test_write_resolves_only_after_close() -> None:
    t: CompletionTracker[str] = CompletionTracker()
    w, ids = zc_write(t, "a", 3, close=False)
    assert t.on_range(ids[0], ids[-1], False) == []
    assert t.pending_writes == 1
    assert t.pinned_bytes == 3  # pages stay pinned until the write resolves
    assert t.close_write(w) == [("a", Completion(3, True, 3, 0))]
    assert t.pinned_bytes == 0


def test_ids_reported_while_write_still_sending() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32)
    w = t.open_write("a", 4)
    i0 = t.on_sent(w, 1, zerocopy=True)
    assert i0 is not None
    assert t.on_range(i0, i0, False) == []
    i1 = t.on_sent(w, 3, zerocopy=True)
    assert i1 is not None
    assert t.on_range(i0, i1, False) == []  # i0 is a duplicate by now
    assert t.unexpected_ids == 1
    assert t.close_write(w) == [("a", Completion(4, True, 2, 0))]


def test_copy_only_and_empty_writes_resolve_at_close() -> None:
    t: CompletionTracker[str] = CompletionTracker()
    zc_write(t, "zc", 1)
    w = t.open_write("copy", 10)
    assert t.on_sent(w, 4, zerocopy=False) is None
    assert t.on_sent(w, 6, zerocopy=False) is None
    assert t.close_write(w) == [("copy", Completion(10, False, 0, 0))]
    e = t.open_write("empty", 0)
    assert t.close_write(e) == [("empty", Completion(0, False))]
    assert t.pending_writes == 1
    assert t.next_id == 1


def test_mixed_write_is_not_zerocopy() -> None:
    t: CompletionTracker[str] = CompletionTracker()
    w = t.open_write("a", 10)
    t.on_sent(w, 8, zerocopy=True)
    t.on_sent(w, 2, zerocopy=False)  # e.g. a small tail sent by copy
    assert t.pinned_bytes == 8
    t.close_write(w)
    assert t.on_range(0, 0, False) == [("a", Completion(10, False, 1, 0))]


def test_copied_flag_counts_only_ids_of_copied_ranges() -> None:
    t: CompletionTracker[str] = CompletionTracker()
    zc_write(t, "a", 5)
    assert t.on_range(1, 2, True) == []
    assert t.on_range(0, 0, False) == []
    assert t.on_range(1, 4, True) == [("a", Completion(5, False, 5, 4))]  # 1, 2 are duplicates
    assert t.unexpected_ids == 2


def test_duplicate_and_unknown_ranges_change_nothing() -> None:
    t: CompletionTracker[str] = CompletionTracker(100)
    zc_write(t, "a", 3)  # 100..102
    zc_write(t, "b", 3)  # 103..105
    assert t.on_range(100, 101, False) == []
    before = snapshot(t)
    assert t.on_range(100, 101, True) == []  # duplicate
    assert t.on_range(106, 200, True) == []  # never issued
    assert t.on_range(0, 99, True) == []  # never issued (before start)
    assert snapshot(t) == before
    assert t.unexpected_ids == 2 + 95 + 100
    # Partly duplicate, partly fresh: only the fresh id counts, copied stays per-id.
    assert t.on_range(99, 102, True) == [("a", Completion(3, False, 3, 1))]
    assert t.unexpected_ids == 2 + 95 + 100 + 3
    assert t.on_range(103, 105, False) == [("b", Completion(3, True, 3, 0))]


def test_range_covering_whole_id_space() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32 - 1)
    assert t.on_range(1, 0, False) == []  # nothing outstanding: all 2**32 ids unexpected
    assert t.unexpected_ids == 2**32
    zc_write(t, "a", 3)  # MASK32-1, MASK32, 0
    # Starts on the newest id and wraps all the way round to just before it.
    assert t.on_range(0, MASK32, False) == [("a", Completion(3, True, 3, 0))]
    assert t.unexpected_ids == 2**32 + 2**32 - 3


def test_huge_bogus_range_has_no_per_id_loop() -> None:
    """2**31 - 1 ids: a per-id loop (in Python or C) would not finish within pytest's timeout."""
    t: CompletionTracker[str] = CompletionTracker(7)
    zc_write(t, "a", 2)
    assert t.on_range(9, (9 + 2**31 - 2) & MASK32, False) == []
    assert t.unexpected_ids == 2**31 - 1
    assert t.on_range(7, 8, False) == [("a", Completion(2, True, 2, 0))]


def test_million_id_merged_range_over_ten_writes() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32 - 500_000)
    for k in range(10):
        w = t.open_write(f"w{k}", 100_000)
        for _ in range(100_000):
            t.on_sent(w, 1, zerocopy=True)
        t.close_write(w)
    assert t.outstanding_ids == 1_000_000
    result = t.on_range(MASK32 - 500_000, (MASK32 - 500_000 + 999_999) & MASK32, False)
    assert [tok for tok, _ in result] == [f"w{k}" for k in range(10)]
    assert all(c == Completion(100_000, True, 100_000, 0) for _, c in result)
    assert (t.outstanding_ids, t.pending_writes, t.pinned_bytes, t.unexpected_ids) == (0, 0, 0, 0)


def count_lines(fn: Callable[[], R]) -> tuple[int, R]:
    """Run ``fn`` counting Python line events executed inside aiozc/completions.py."""
    lines = 0
    target = completions.__file__

    def tracer(frame: Any, event: str, arg: object) -> Any:
        nonlocal lines
        if frame.f_code.co_filename != target:
            return None
        if event == "line":
            lines += 1
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = fn()
    finally:
        sys.settrace(old)
    return lines, result


@pytest.mark.parametrize("mode", ["merged", "halves", "duplicate"])
def test_on_range_work_does_not_grow_with_ids(mode: str) -> None:
    """Deterministic stand-in for a timing test: the Python lines on_range executes must be
    the same whether each of 10 writes has 10 ids or 10,000."""

    def measure(ids_per_write: int) -> int:
        t: CompletionTracker[str] = CompletionTracker(MASK32 - 3 * ids_per_write)
        for k in range(10):
            zc_write(t, f"w{k}", ids_per_write)
        first, total = MASK32 - 3 * ids_per_write, 10 * ids_per_write
        last = (first + total - 1) & MASK32
        mid = (first + total // 2 - 1) & MASK32
        if mode == "merged":
            lines, result = count_lines(lambda: t.on_range(first, last, False))
        elif mode == "halves":
            t.on_range((mid + 1) & MASK32, last, False)
            lines, result = count_lines(lambda: t.on_range(first, mid, False))
        else:
            t.on_range(first, last, False)
            lines, result = count_lines(lambda: t.on_range(first, last, True))
            assert t.unexpected_ids == total
        assert t.outstanding_ids == 0
        return lines

    small, large = measure(10), measure(10_000)
    assert small > 0
    assert large == small


def test_single_ids_out_of_order_within_one_large_write() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32 - 500)
    _, ids = zc_write(t, "a", 2000)
    order = ids[:]
    random.Random(1).shuffle(order)
    for i in order[:-1]:
        assert t.on_range(i, i, False) == []
    # Re-reporting any of them is a duplicate.
    assert t.on_range(order[0], order[0], False) == []
    assert t.unexpected_ids == 1
    assert t.outstanding_ids == 1
    assert t.on_range(order[-1], order[-1], False) == [("a", Completion(2000, True, 2000, 0))]


def test_abandon_returns_unresolved_tokens_in_order() -> None:
    t: CompletionTracker[str] = CompletionTracker(MASK32)
    zc_write(t, "a", 2)  # MASK32, 0
    zc_write(t, "b", 1)  # 1
    zc_write(t, "c", 1)  # 2
    open_w = t.open_write("d", 5)
    t.on_sent(open_w, 2, zerocopy=False)
    assert t.on_range(1, 1, False) == [("b", Completion(1, True, 1, 0))]
    assert t.abandon() == ["a", "c", "d"]
    assert (t.outstanding_ids, t.pending_writes, t.pinned_bytes) == (0, 0, 0)
    assert t.next_id == 3
    # Late notifications for abandoned ids are unexpected; the handles are dead.
    assert t.on_range(MASK32, 2, False) == []
    assert t.unexpected_ids == 4
    with pytest.raises(ValueError):
        t.on_sent(open_w, 1, zerocopy=True)
    # The tracker keeps working after abandon.
    _, ids = zc_write(t, "e", 1)
    assert ids == [3]
    assert t.on_range(3, 3, False) == [("e", Completion(1, True, 1, 0))]
    assert t.abandon() == []


def test_on_sent_errors_leave_state_unchanged() -> None:
    t: CompletionTracker[str] = CompletionTracker()
    w = t.open_write("a", 10)
    t.on_sent(w, 4, zerocopy=True)
    before = snapshot(t)
    for nbytes in (0, -1, 7):
        with pytest.raises(ValueError):
            t.on_sent(w, nbytes, zerocopy=True)
    assert snapshot(t) == before
    assert t.on_sent(w, 6, zerocopy=True) == 1


def test_close_errors() -> None:
    t: CompletionTracker[str] = CompletionTracker()
    w = t.open_write("a", 10)
    t.on_sent(w, 4, zerocopy=True)
    with pytest.raises(ValueError):
        t.close_write(w)  # 6 bytes missing
    t.on_sent(w, 6, zerocopy=False)
    assert t.close_write(w) == []
    with pytest.raises(ValueError):
        t.close_write(w)  # closed twice
    with pytest.raises(ValueError):
        t.on_sent(w, 1, zerocopy=False)  # closed write
    t.on_range(0, 0, False)
    with pytest.raises(ValueError):
        t.close_write(w)  # resolved


def test_other_errors() -> None:
    with pytest.raises(ValueError):
        CompletionTracker(2**32)
    with pytest.raises(ValueError):
        CompletionTracker(-1)
    t: CompletionTracker[str] = CompletionTracker()
    with pytest.raises(ValueError):
        t.open_write("neg", -1)
    other: CompletionTracker[str] = CompletionTracker()
    foreign = other.open_write("x", 1)
    with pytest.raises(ValueError):
        t.on_sent(foreign, 1, zerocopy=True)
    # Interleaved zero-copy sends would split one write's ids into two runs.
    a = t.open_write("a", 2)
    b = t.open_write("b", 2)
    t.on_sent(a, 1, zerocopy=True)
    t.on_sent(b, 1, zerocopy=True)
    with pytest.raises(ValueError):
        t.on_sent(a, 1, zerocopy=True)
    with pytest.raises(ValueError):
        t.on_range(0, 2**32, False)
    assert t.outstanding_ids == 2


def test_resolved_and_abandoned_handles_release_their_token() -> None:
    """The transport may keep handles around; they must not keep user buffers alive."""
    import gc
    import weakref

    class Token:
        pass

    t: CompletionTracker[Token] = CompletionTracker()
    tokens = [Token(), Token()]
    refs = [weakref.ref(tok) for tok in tokens]
    handles = [t.open_write(tok, 1) for tok in tokens]
    del tokens
    t.on_sent(handles[0], 1, zerocopy=True)
    t.on_sent(handles[1], 1, zerocopy=True)
    t.close_write(handles[0])
    [(tok, _)] = t.on_range(0, 0, False)
    del tok
    assert len(t.abandon()) == 1
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert len(handles) == 2


# (no deadline: hypothesis times each example, and on this loaded 2-core machine one took 325 ms)
@settings(deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["whole-zc", "whole-copy", "multi"]), st.integers(1, 3)),
        min_size=1,
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_sent_whole_matches_open_send_close(ops: list[tuple[str, int]], rnd: Any) -> None:
    """``sent_whole`` is open_write + one on_sent + close_write, resolution for resolution."""
    fast: CompletionTracker[int] = CompletionTracker(start_id=MASK32 - 5)
    slow: CompletionTracker[int] = CompletionTracker(start_id=MASK32 - 5)
    got_fast: list[tuple[int, Completion]] = []
    got_slow: list[tuple[int, Completion]] = []
    for token, (kind, sends) in enumerate(ops):
        if kind == "multi":
            for tracker, out in ((fast, got_fast), (slow, got_slow)):
                w = tracker.open_write(token, 10 * sends)
                for _ in range(sends):
                    tracker.on_sent(w, 10, zerocopy=True)
                out += tracker.close_write(w)
            continue
        zerocopy = kind == "whole-zc"
        got_fast += fast.sent_whole(token, 10, zerocopy=zerocopy)
        w = slow.open_write(token, 10)
        slow.on_sent(w, 10, zerocopy=zerocopy)
        got_slow += slow.close_write(w)
    ids = list(range(MASK32 - 5, slow._next))  # every id issued (unwrapped), reported one by one
    rnd.shuffle(ids)
    for ident in ids:
        lo = ident & MASK32
        copied = rnd.random() < 0.3
        got_fast += fast.on_range(lo, lo, copied)
        got_slow += slow.on_range(lo, lo, copied)
        assert fast.outstanding_ids == slow.outstanding_ids
        assert fast.pinned_bytes == slow.pinned_bytes
    assert got_fast == got_slow
    assert fast.pending_writes == slow.pending_writes == 0
    assert fast.unexpected_ids == slow.unexpected_ids == 0


@settings(deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_on_sent_many_is_ids_calls_of_on_sent(runs: list[int], rnd: random.Random) -> None:
    """``on_sent_many(w, nbytes, ids)`` (sendmmsg) is ``ids`` zero-copy on_sent calls."""
    fast: CompletionTracker[int] = CompletionTracker(start_id=MASK32 - 3)
    slow: CompletionTracker[int] = CompletionTracker(start_id=MASK32 - 3)
    wf = fast.open_write(0, 10 * sum(runs))
    ws = slow.open_write(0, 10 * sum(runs))
    for ids in runs:
        first = fast.on_sent_many(wf, 10 * ids, ids)
        assert first == slow.next_id
        for _ in range(ids):
            slow.on_sent(ws, 10, zerocopy=True)
        assert fast.next_id == slow.next_id and fast.pinned_bytes == slow.pinned_bytes
    assert fast.close_write(wf) == slow.close_write(ws) == []
    ids = list(range(MASK32 - 3, slow._next))
    rnd.shuffle(ids)
    for ident in ids:
        lo = ident & MASK32
        assert fast.on_range(lo, lo, False) == slow.on_range(lo, lo, False)
    assert fast.pending_writes == slow.pending_writes == 0 and fast.unexpected_ids == 0
    w = fast.open_write(1, 10)
    with pytest.raises(ValueError):
        fast.on_sent_many(w, 1, 2)  # two send calls moved at least 2 bytes
    with pytest.raises(ValueError):
        fast.on_sent_many(w, 20, 2)  # more than the write
