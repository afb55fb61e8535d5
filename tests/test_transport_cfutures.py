"""write_zc()'s futures on the direct path: made in C without Future.__init__ outside debug
mode (_core_tcp.c through _core_pyhot.c's zc_futures_new), else by the transport's factory.
Every test runs on the compiled and the pure path (``path``) and, through conftest or
explicitly, on both loops: the future must be a plain asyncio.Future of the transport's loop,
carry its source traceback in debug mode, and stay the loop's own where create_future() is
overridden."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from aiozc.completions import Completion
from test_transport_cmethods import COMPILED, direct_pair, path  # noqa: F401  (path: the fixture)

DEBUG_EVERY = 64  # _core_pyhot.c: get_debug() is read once every that many futures


async def test_the_future_is_the_loops_and_resolves_with_the_sizes_sent(path: str) -> None:
    pair = await direct_pair(path)
    loop = asyncio.get_running_loop()
    try:
        t = pair.transport
        sizes = [3, 5, 3, 3, 70000, 5]
        futures = [t.write_zc(b"x" * n) for n in sizes]
        for future in futures:
            assert type(future) is asyncio.Future
            assert future.get_loop() is loop  # RuntimeError if made without its loop
        called: list[Any] = []
        futures[0].add_done_callback(called.append)  # scheduled through the future's loop
        results = [await f for f in futures]
        assert results == [Completion(n, False) for n in sizes]
        await asyncio.sleep(0)
        assert called == [futures[0]]
        assert await pair.read_all(sum(sizes)) == b"x" * sum(sizes)
    finally:
        pair.close()


async def test_the_compiled_path_makes_them_without_the_factory(path: str) -> None:
    """On asyncio's and uvloop's own loops the C methods do not call the transport's factory."""
    if path != "compiled":
        pytest.skip("the factory is the pure path's way")
    pair = await direct_pair(path)
    try:
        t = pair.transport

        def refused() -> None:
            raise AssertionError("the factory was called")

        t._hot.make_future = refused
        future = t.write_zc(b"abc")
        assert future.get_loop() is asyncio.get_running_loop()
        assert (await future).nbytes == 3
    finally:
        pair.close()


async def test_debug_mode_gives_the_source_traceback(path: str) -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        pair = await direct_pair(path)
        try:
            t = pair.transport
            future = t.write_zc(b"abc")
            assert future._source_traceback  # debug mode read at the first future
            names = [frame.name for frame in future._source_traceback]
            assert "test_debug_mode_gives_the_source_traceback" in names[-2:]  # (pure: write_zc's own last)
            loop.set_debug(False)
            last = [t.write_zc(b"d") for _ in range(DEBUG_EVERY + 1)][-1]
            assert last._source_traceback is None  # off again, at most DEBUG_EVERY futures late
            loop.set_debug(True)
            last = [t.write_zc(b"e") for _ in range(DEBUG_EVERY + 1)][-1]
            assert last._source_traceback
            await pair.read_all(3 + 2 * (DEBUG_EVERY + 1))
        finally:
            pair.close()
    finally:
        loop.set_debug(False)


class _MarkedFuture(asyncio.Future):  # type: ignore[type-arg]
    pass


class _OwnFutures:
    """A loop whose create_future() makes its own Future subclass, and whose get_debug() is
    its own method (not asyncio's attribute read)."""

    def create_future(self) -> asyncio.Future[Any]:
        return _MarkedFuture(loop=self)  # type: ignore[arg-type]

    def get_debug(self) -> bool:
        return super().get_debug()  # type: ignore[misc]


class _OwnAsyncioLoop(_OwnFutures, asyncio.SelectorEventLoop):
    pass


class _OwnUvloop(_OwnFutures, uvloop.Loop):  # type: ignore[misc]
    pass


class _DebugAlwaysAsyncio(asyncio.SelectorEventLoop):
    def get_debug(self) -> bool:
        return True


class _DebugAlwaysUvloop(uvloop.Loop):  # type: ignore[misc]
    def get_debug(self) -> bool:
        return True


def _run(loop_cls: type, main: Any) -> Any:
    loop = loop_cls()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize("loop_cls", [_OwnAsyncioLoop, _OwnUvloop], ids=["asyncio", "uvloop"])
def test_a_loop_with_its_own_futures_gets_them(loop_cls: type, path: str) -> None:
    async def main() -> None:
        pair = await direct_pair(path)
        try:
            futures = [pair.transport.write_zc(b"ab") for _ in range(3)]
            assert all(type(f) is _MarkedFuture for f in futures)
            assert [(await f).nbytes for f in futures] == [2, 2, 2]
            assert await pair.read_all(6) == b"ab" * 3
        finally:
            pair.close()

    _run(loop_cls, main)


@pytest.mark.parametrize("loop_cls", [_DebugAlwaysAsyncio, _DebugAlwaysUvloop], ids=["asyncio", "uvloop"])
def test_a_loop_with_its_own_get_debug_is_asked(loop_cls: type, path: str) -> None:
    """get_debug() overridden (asyncio's `_debug` stays False): the futures follow the method."""

    async def main() -> None:
        pair = await direct_pair(path)
        try:
            future = pair.transport.write_zc(b"abc")
            assert type(future) is asyncio.Future
            assert future._source_traceback
            await future
            await pair.read_all(3)
        finally:
            pair.close()

    _run(loop_cls, main)


def test_the_compiled_core_is_checked_here() -> None:
    """(the compiled cases above skip without the core; say so where it should be there)"""
    from aiozc._sys import core

    if core.NO_EXTENSIONS:
        pytest.skip("AIOZC_NO_EXTENSIONS=1: the pure path only")
    assert COMPILED, core.why_pure
