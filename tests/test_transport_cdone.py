"""write_zc()'s done futures on the direct path: a write the socket took whole returns a future
that is already done, and the compiled core gives a dropped one out again rather than making
and freeing one per write (_core_pyhot.c zc_futures_done), only where nobody can tell: every
test here must hold on both paths (``path``) except the first, which shows the reuse itself."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from aiozc.completions import Completion
from test_transport_cmethods import direct_pair, path  # noqa: F401  (path: the fixture)

_FILLERS = 8  # plain futures made between two writes: one takes a freed future's memory


async def test_a_dropped_done_future_is_given_out_again(path: str) -> None:
    """The compiled path keeps the last futures it gave out: one the caller dropped comes back
    (its memory never freed, so the futures made meanwhile lie elsewhere). The pure path makes
    a new one each time, which may land anywhere."""
    if path != "compiled":
        pytest.skip("the reuse is the compiled path's")
    pair = await direct_pair(path)
    loop = asyncio.get_running_loop()
    try:
        t = pair.transport
        first = t.write_zc(b"abc")
        first_id = id(first)
        del first
        fillers = [loop.create_future() for _ in range(_FILLERS)]
        again = t.write_zc(b"abc")
        assert all(id(f) != first_id for f in fillers)
        assert id(again) == first_id
        assert again.result() == Completion(3, False)
        # `last = write_zc(buf)`: the one before the last is free again when the next comes
        ids = set()
        last = None
        for _ in range(10):
            last = t.write_zc(b"abc")
            ids.add(id(last))
        assert len(ids) <= 2
        await pair.read_all(3 * 12)
    finally:
        pair.close()


async def test_futures_held_are_distinct(path: str) -> None:
    pair = await direct_pair(path)
    try:
        t = pair.transport
        futures = [t.write_zc(b"ab") for _ in range(10)]
        assert len({id(f) for f in futures}) == 10
        done, pending = await asyncio.wait(futures)
        assert len(done) == 10 and not pending
        assert await pair.read_all(20) == b"ab" * 10
    finally:
        pair.close()


def _touch_dict(future: Any) -> None:
    future.mark = 1


def _touch_blocking(future: Any) -> None:
    future._asyncio_future_blocking = True


def _touch_cancel_message(future: Any) -> None:
    future._cancel_message = "set by the first holder"


def _unmarked(future: Any) -> bool:
    return (not hasattr(future, "mark") and future._asyncio_future_blocking is False
            and future._cancel_message is None and weakref.getweakrefcount(future) == 0)


@pytest.mark.parametrize("touch", [_touch_dict, _touch_blocking, _touch_cancel_message],
                         ids=["attribute", "blocking", "cancel_message"])
async def test_what_a_holder_set_is_not_seen_by_the_next(path: str, touch: Any) -> None:
    pair = await direct_pair(path)
    try:
        t = pair.transport
        for _ in range(6):  # past every slot the compiled path keeps
            future = t.write_zc(b"abc")
            touch(future)
            del future
        future = t.write_zc(b"abc")
        assert _unmarked(future)
        assert future.result() == Completion(3, False)
        await pair.read_all(3 * 7)
    finally:
        pair.close()


async def test_a_weak_reference_keeps_it_its_own(path: str) -> None:
    pair = await direct_pair(path)
    try:
        t = pair.transport
        refs = []
        for _ in range(6):
            future = t.write_zc(b"abc")
            refs.append(weakref.ref(future))
            del future
        future = t.write_zc(b"abc")
        assert all(ref() is not future for ref in refs)
        assert _unmarked(future)
        await pair.read_all(3 * 7)
    finally:
        pair.close()


async def test_a_done_callback_runs_with_its_own_future(path: str) -> None:
    """A callback added to a done future is scheduled holding it: until it ran, the next write
    gets another future, and the callback sees the one it was added to."""
    pair = await direct_pair(path)
    try:
        t = pair.transport
        seen: list[tuple[int, int]] = []
        first = t.write_zc(b"abc")
        first.add_done_callback(lambda f: seen.append((id(f), f.result().nbytes)))
        first_id = id(first)
        del first
        second = t.write_zc(b"abcd")
        assert id(second) != first_id
        await asyncio.sleep(0)
        assert seen == [(first_id, 3)]
        assert second.result() == Completion(4, False)
        await pair.read_all(7)
    finally:
        pair.close()


async def test_each_size_gets_its_own_result(path: str) -> None:
    pair = await direct_pair(path)
    try:
        t = pair.transport
        sizes = [3, 3, 5, 3, 5, 5, 70000, 3]
        results = []
        for n in sizes:
            results.append(t.write_zc(b"x" * n).result())  # the future dropped at once
        assert results == [Completion(n, False) for n in sizes]
        assert t.stats.copy_writes >= len(sizes)
        assert await pair.read_all(sum(sizes)) == b"x" * sum(sizes)
    finally:
        pair.close()


def _line_here(future: Any) -> int:
    """The line of this module where ``future`` was made, from its source traceback."""
    return [frame.lineno for frame in future._source_traceback if frame.filename == __file__][-1]


async def test_debug_mode_gives_each_its_own_source_traceback(path: str) -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        pair = await direct_pair(path)
        try:
            t = pair.transport
            first = t.write_zc(b"abc")
            assert first._source_traceback
            first_lines = _line_here(first)
            del first
            second = t.write_zc(b"abc")
            assert second._source_traceback  # its own: made where it was called
            assert _line_here(second) != first_lines
            await pair.read_all(6)
        finally:
            pair.close()
    finally:
        loop.set_debug(False)


async def test_the_kept_futures_do_not_keep_the_transport(path: str) -> None:
    pair = await direct_pair(path)
    t = pair.transport
    for _ in range(6):
        t.write_zc(b"abc")
    await pair.read_all(18)
    pair.close()
    await asyncio.sleep(0.01)  # connection_lost
    ref = weakref.ref(t)
    del t, pair
    gc.collect()
    assert ref() is None
