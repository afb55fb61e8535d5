"""Notifications returned by sendmsg (SCM_ZC_NOTIFICATION; issue #14 point 4).

Mainline kernels never took the patch (they answer EINVAL), so aiozc only keeps the tracker
ready: ``on_ranges`` takes ``(lo, hi, copied)`` ranges from any source, in a batch, on the pure
and on the compiled tracker alike. Differential tests: both trackers, and one ``on_range`` per
range, must agree call for call.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiozc import ctracker
from aiozc._sys import core, kernel
from aiozc.completions import MASK32, CompletionTracker
from aiozc.tools import probe

Range = tuple[int, int, bool]


def trackers(start_id: int) -> list[Any]:
    made: list[Any] = [CompletionTracker(start_id), CompletionTracker(start_id)]
    if core.compiled:
        made.append(ctracker.CompiledTracker(start_id))
    return made


def state(tracker: Any) -> tuple[int, ...]:
    return (tracker.next_id, tracker.outstanding_ids, tracker.pending_writes, tracker.pinned_bytes,
            tracker.unexpected_ids)


def drive(tracker: Any, writes: list[list[int]], close: list[bool]) -> None:
    """Open every write, make its zero-copy sends (``sizes`` bytes each), close some."""
    for token, sizes in enumerate(writes):
        handle = tracker.open_write(token, sum(sizes))
        for size in sizes:
            tracker.on_sent(handle, size, zerocopy=True)
        if close[token]:
            assert tracker.close_write(handle) == []  # every write has ids outstanding


def ranges_over(start_id: int, total_ids: int) -> st.SearchStrategy[list[Range]]:
    """Batches as a kernel might return them: runs of issued ids in any order, merged or split,
    duplicates, never-issued ids, and ranges that wrap through 0."""
    issued = st.tuples(st.integers(0, max(total_ids - 1, 0)), st.integers(0, 8), st.booleans()).map(
        lambda t: ((start_id + t[0]) & MASK32, (start_id + t[0] + t[1]) & MASK32, t[2]))
    bogus = st.tuples(st.integers(0, MASK32), st.integers(0, MASK32), st.booleans())
    return st.lists(st.one_of(issued, issued, bogus), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    start_id=st.sampled_from([0, 7, MASK32 - 3, MASK32]),
    writes=st.lists(st.lists(st.integers(1, 5000), min_size=1, max_size=4), min_size=1, max_size=6),
    data=st.data(),
)
def test_on_ranges_is_on_range_per_range_on_both_trackers(start_id: int, writes: list[list[int]],
                                                         data: st.DataObject) -> None:
    close = data.draw(st.lists(st.booleans(), min_size=len(writes), max_size=len(writes)))
    total_ids = sum(len(w) for w in writes)
    batches = data.draw(st.lists(ranges_over(start_id, total_ids), min_size=1, max_size=4))
    one_by_one, *batched = trackers(start_id)
    for t in (one_by_one, *batched):
        drive(t, writes, close)
    for batch in batches:
        expected = [done for lo, hi, copied in batch for done in one_by_one.on_range(lo, hi, copied)]
        for t in batched:
            assert t.on_ranges(iter(batch)) == expected  # any iterable: a generator here
            assert state(t) == state(one_by_one)
    left = one_by_one.abandon()
    for t in batched:
        assert t.abandon() == left


def test_on_ranges_resolves_in_range_order_and_counts_the_unexpected() -> None:
    for t in trackers(MASK32 - 1):
        a = t.open_write("a", 2)
        t.on_sent(a, 1, zerocopy=True)  # id MASK32 - 1
        t.on_sent(a, 1, zerocopy=True)  # id MASK32
        assert t.close_write(a) == []
        b = t.open_write("b", 1)
        t.on_sent(b, 1, zerocopy=True)  # id 0: the counter wrapped
        assert t.close_write(b) == []
        done = t.on_ranges([(0, 0, True), (MASK32 - 1, MASK32, False), (5, 6, False)])
        assert [(token, c.zerocopy, c.copied_sends) for token, c in done] == [("b", False, 1), ("a", True, 0)]
        assert (t.outstanding_ids, t.pending_writes, t.unexpected_ids) == (0, 0, 2)
        assert t.on_ranges([]) == []


def test_on_ranges_refuses_what_on_range_refuses() -> None:
    for t in trackers(0):
        with pytest.raises(ValueError):
            t.on_ranges([(0, 1 << 32, False)])


def test_error_queue_ranges_feed_on_ranges() -> None:
    # The source that exists: MSG_ZEROCOPY over loopback, notifications read from the error
    # queue, handed over as one batch. Loopback copies, so every range says copied.
    for t in trackers(0):  # the kernel counts ids from 0 on each new socket
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            with socket.create_connection(listener.getsockname()) as tx:
                rx, _ = listener.accept()
                with rx:
                    assert kernel.enable_zerocopy(tx) is None
                    assert [token for token, _ in feed_from_error_queue(t, tx, rx)] == [0, 1, 2, 3]


def feed_from_error_queue(t: Any, tx: socket.socket, rx: socket.socket) -> list[Any]:
    for i in range(4):
        w = t.open_write(i, 4096)
        t.on_sent(w, tx.send(bytes(4096), kernel.MSG_ZEROCOPY), zerocopy=True)
        assert t.close_write(w) == []
    received = 0
    while received < 4 * 4096:
        received += len(rx.recv(1 << 16))
    done: list[Any] = []
    for _ in range(200):
        messages = kernel.read_errqueue(tx)
        done += t.on_ranges((m.lo, m.hi, m.copied) for m in messages if isinstance(m, kernel.ZeroCopyRange))
        if len(done) == 4:
            break
        time.sleep(0.005)
    assert all(c.copied_sends == 1 and not c.zerocopy for _, c in done)
    return done


def test_probe_says_what_it_tried_and_what_the_kernel_answered() -> None:
    rows = dict(probe.probe())
    row = rows["sendmsg SCM_ZC_NOTIFICATION"]
    assert "sendmsg(MSG_ZEROCOPY) on TCP with a SOL_SOCKET cmsg of type 78" in row
    # Never merged upstream: an unknown SOL_SOCKET cmsg is EINVAL on mainline kernels.
    assert "EINVAL" in row and "not in mainline kernels" in row
