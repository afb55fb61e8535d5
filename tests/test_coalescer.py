"""coalesce_zc's Coalescer: the compiled one (aiozc/_sys/_core_coalesce.c) against its pure
reference (coalescing.PyCoalescer), and what the transport does with it."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from aiozc import create_datagram_endpoint
from aiozc._sys import core as _core, mmsg as _mmsg
from aiozc.base import TransportClosedError, byte_view
from aiozc.datagram import coalescing
from aiozc.datagram._common import Coalescer, PinSet
from udp_helpers import strace_call_counts

compiled_only = pytest.mark.skipif(Coalescer is None, reason=f"compiled core not in use: {_core.why_pure}")

MAX_SIZE = 200
MAX_BATCH = 5
LOOP = object()  # the "transport's loop" of the model


class Model:
    """One Coalescer with recording callbacks; the same ops give the same records."""

    def __init__(self, kind: Any, rooms: list[int], plain: bool) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.rooms = list(rooms)
        self.co = kind(PinSet, LOOP if plain else None, dict, self._make_future, self._schedule,
                       self._flush, self._pause, self._fallback, byte_view, MAX_SIZE, MAX_BATCH)

    def _make_future(self) -> Any:
        return ["made"]

    def _room(self) -> int:
        return self.rooms.pop(0)

    def _schedule(self) -> int:
        self.records.append(("schedule", len(self.co), self.co.nbytes))
        return self._room()

    def _pause(self) -> int:
        self.records.append(("pause", len(self.co), self.co.nbytes, self.co.room))
        return self._room()

    def _flush(self) -> None:
        self.records.append(("flush", *self.take()))

    def _fallback(self, *args: Any, **kwargs: Any) -> str:
        self.records.append(("fallback", len(args), sorted(kwargs)))
        return "fallback"

    def take(self) -> tuple[list[int], list[Any], int]:
        objs, pins, futures = self.co.take()
        if pins.__class__ is PinSet:
            sizes = pins.sizes()
            pins.release()
        else:
            sizes = [len(p) for p in pins]
            for p in pins:
                _mmsg.unpin(p)
        return sizes, [type(f).__name__ for f in futures], len(objs)

    def apply(self, op: tuple[Any, ...]) -> Any:
        name = op[0]
        try:
            if name == "send":
                return _kind_of(self.co.sendto_zc(*_args(op[1]), **_kwargs(op[1])))
            if name == "take":
                return self.take()
            if name == "block":
                self.co.blocked = op[1]
                return self.co.blocked
            self.co.room = op[1]
            return self.co.room
        except (TypeError, BufferError, ValueError) as exc:
            return type(exc).__name__, str(exc)

    def state(self) -> tuple[Any, ...]:
        return len(self.co), self.co.nbytes, self.co.blocked


def _buffer(what: str) -> Any:
    return {
        "small": lambda: b"s" * 10,
        "big": lambda: bytearray(100),
        "limit": lambda: memoryview(bytearray(MAX_SIZE)),
        "oversize": lambda: b"o" * (MAX_SIZE + 1),
        "int": lambda: 42,
        "strided": lambda: memoryview(bytearray(64))[::2],
    }[what]()


def _args(what: str) -> tuple[Any, ...]:
    if what == "addr":
        return (b"a", ("10.0.0.1", 9))
    if what == "addr-none":
        return (b"n" * 7, None)
    if what == "kw":
        return (b"k",)
    return (_buffer(what),)


def _kwargs(what: str) -> dict[str, Any]:
    return {"addr": None} if what == "kw" else {}


def _kind_of(result: Any) -> Any:
    return result if isinstance(result, str) else type(result).__name__


_SENDS = st.sampled_from(["small", "small", "big", "big", "limit", "oversize", "int", "strided",
                          "addr", "addr-none", "kw"])
_OPS = st.one_of(
    st.tuples(st.just("send"), _SENDS),
    st.tuples(st.just("send"), _SENDS),
    st.tuples(st.just("send"), _SENDS),
    st.tuples(st.just("take")),
    st.tuples(st.just("block"), st.booleans()),
    st.tuples(st.just("room"), st.integers(-1, 400)),
)


@compiled_only
@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_OPS, max_size=40), rooms=st.lists(st.integers(-1, 600), min_size=80, max_size=80),
       plain=st.booleans())
def test_compiled_and_pure_coalescers_agree(ops: list[tuple[Any, ...]], rooms: list[int], plain: bool) -> None:
    models = [Model(coalescing.PyCoalescer, rooms, plain), Model(Coalescer, rooms, plain)]
    for op in ops:
        results = [m.apply(op) for m in models]
        assert results[0] == results[1], op
        assert models[0].state() == models[1].state(), op
        assert models[0].records == models[1].records, op
    assert models[0].take() == models[1].take()


@compiled_only
def test_closed_coalescer_lets_go_of_its_callbacks() -> None:
    model = Model(Coalescer, [0] * 4, False)
    model.co.sendto_zc(b"x")

    def refers_to_model() -> bool:
        return any(getattr(r, "__self__", None) is model for r in gc.get_referents(model.co))

    assert refers_to_model()
    model.co.close()
    model.co.blocked = False  # a closed one stays blocked
    assert model.co.blocked and len(model.co) == 1
    with pytest.raises(RuntimeError):
        model.co.sendto_zc(b"y")
    assert model.take() == ([1], ["list"], 1)  # make_future's
    assert not refers_to_model()


# -- the transport ---------------------------------------------------------------------------


async def _pair(**options: Any) -> tuple[Any, socket.socket]:
    # MSG_ZEROCOPY unless told: on io_uring with the compiled core coalesce_zc takes the
    # per-call ring path, without a Coalescer (coalescing._co_setup)
    options.setdefault("engine", "msg_zerocopy")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    t, _ = await create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=rx.getsockname(), coalesce_zc=True, **options
    )
    return t, rx


async def test_sendto_zc_is_the_coalescers_until_close() -> None:
    t, rx = await _pair()
    with rx:
        kind = Coalescer if Coalescer is not None else coalescing.PyCoalescer
        assert isinstance(t._co, kind) and t.sendto_zc == t._co.sendto_zc
        buf = bytearray(b"payload")
        future = t.sendto_zc(buf)
        assert not future.done() and len(t._co) == 1
        with pytest.raises(BufferError):
            buf.append(0)  # pinned from the call on
        t.close()
        assert (await future).nbytes == 7 and rx.recv(64) == b"payload"
        await asyncio.sleep(0.01)
        assert t._co is None and "sendto_zc" not in vars(t)
        with pytest.raises(TransportClosedError):
            t.sendto_zc(b"late")
        buf.append(0)  # released


async def test_closing_transport_refuses_coalesced_datagrams() -> None:
    t, rx = await _pair()
    with rx:
        t.sendto_zc(b"first")
        t.close()  # flushes, then closing: the Coalescer sends everything to Python
        with pytest.raises(TransportClosedError):
            t.sendto_zc(b"after close")
        await asyncio.sleep(0.01)
        assert rx.recv(64) == b"first"


async def test_coalesced_transport_is_collected_after_close() -> None:
    t, rx = await _pair()
    with rx:
        future = t.sendto_zc(b"x" * 10)
        await future
        ref = weakref.ref(t)
        t.close()
        await asyncio.sleep(0.01)
        del t, future
        gc.collect()
        assert ref() is None


@compiled_only
def test_a_cycle_through_the_coalescer_is_collected() -> None:
    """The Coalescer refers to its owner (the transport's bound methods), which refers to it:
    a GC type, so such a cycle is freed even when nothing closed it."""
    model = Model(Coalescer, [0] * 4, True)
    model.co.sendto_zc(bytearray(3))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


async def test_keyword_and_address_calls_keep_call_order() -> None:
    t, rx = await _pair()
    with rx:
        first = t.sendto_zc(b"1")
        second = t.sendto_zc(b"2", addr=None)  # keywords: Python's path, after a flush
        third = t.sendto_zc(b"3", rx.getsockname())
        await asyncio.gather(first, second, third)
        assert [rx.recv(8) for _ in range(3)] == [b"1", b"2", b"3"]
        t.close()


# -- system calls (invisible to callgrind) -----------------------------------------------------

# A user's window of 256 futures, await the oldest, coalesced; argv: loop, dst, count, engine.
_COALESCED_SENDER = """
import asyncio, collections, sys
from aiozc.tools.benchkit import run_on
from aiozc.buffers import BufferPool
from aiozc.datagram import create_datagram_endpoint

async def main(dst, count, engine):
    if engine == "io_uring":
        pool = BufferPool(64000, 512, register=False)
        pool.register(asyncio.get_running_loop())
        bufs = list(pool)
    else:
        bufs = [bytearray(b"w" * 64000) for _ in range(512)]
    transport, _ = await create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(dst, 9), coalesce_zc=True, engine=engine)
    window = collections.deque()
    for i in range(count):
        window.append(transport.sendto_zc(bufs[i % len(bufs)]))
        if len(window) >= 256:
            await window.popleft()
    for future in window:
        await future
    assert transport.stats.state == "zerocopy", transport.stats.reason
    transport.close()

run_on(sys.argv[1], main(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""


def _syscalls(ns: Any, argv: list[str]) -> dict[str, int]:
    """System calls (strace -c) of the sender ``argv`` run in ``ns``, set-up included."""
    import os
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="aiozc-strace-", suffix=".txt") as out:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = ns.run(["strace", "-f", "-qq", "-c", "-e", "trace=getpid,sendmmsg,io_uring_enter",
                       "-o", out.name, sys.executable, "-c", *argv],
                      capture_output=True, text=True, env=env, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        table = open(out.name).read()
    return strace_call_counts(table)


@compiled_only
@pytest.mark.skipif(__import__("shutil").which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize("engine", ["msg_zerocopy", "io_uring"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_coalesced_sendto_zc_makes_no_getpid_per_datagram(sink_ns: Any, loop: str, engine: str) -> None:
    """CPython 3.11 makes a getpid() system call per running-loop lookup (~0.7 us here): the
    coalescer made two per datagram (a running-loop check, then Future() without loop=)."""
    from aiozc.engines.io_uring import uring_unavailable_reason

    if engine == "io_uring" and uring_unavailable_reason() is not None:
        pytest.skip(uring_unavailable_reason())
    count = 4000
    calls = _syscalls(sink_ns, [_COALESCED_SENDER, loop, sink_ns.sink_addr, str(count), engine])
    assert calls.get("getpid", 0) < 50, calls  # interpreter and loop start-up only
    sends = calls.get("sendmmsg" if engine == "msg_zerocopy" else "io_uring_enter", 0)
    assert 0 < sends < count // 8, calls  # one per batch


async def test_cancelled_coalesced_future_releases_nothing_early() -> None:
    t, rx = await _pair()
    with rx:
        kept, cancelled_buf = bytearray(b"k" * 100), bytearray(b"c" * 100)
        first = t.sendto_zc(kept)
        cancelled = t.sendto_zc(cancelled_buf)
        assert cancelled.cancel()
        with pytest.raises(BufferError):
            cancelled_buf.append(0)  # still pinned: the datagram is sent all the same
        await asyncio.wait_for(first, 5)
        for _ in range(100):  # the batch resolved: every export of it ends
            await asyncio.sleep(0.01)
            try:
                cancelled_buf.append(0)
                break
            except BufferError:
                continue
        else:
            pytest.fail("the cancelled datagram's buffer stayed pinned")
        assert [rx.recv(200), rx.recv(200)] == [b"k" * 100, b"c" * 100]
        kept.append(0)
        t.close()
        assert t.get_write_buffer_size() == 0


async def test_coalesced_futures_are_the_loops_and_keep_debug_tracebacks() -> None:
    # The compiled Coalescer makes its futures without Future.__init__ outside debug mode
    # (_core_coalesce.c co_future): each must still be a plain future of this loop, and once
    # debug mode is on (read every 64 futures) they record their source traceback again.
    loop = asyncio.get_running_loop()
    t, rx = await _pair()
    try:
        futures = [t.sendto_zc(b"d" * 100) for _ in range(8)]
        assert all(type(f) is asyncio.Future and f.get_loop() is loop and not f.done() for f in futures)
        assert all(f._source_traceback is None for f in futures)  # type: ignore[attr-defined]
        done = await asyncio.wait_for(asyncio.gather(*futures), 5)
        assert [c.nbytes for c in done] == [100] * 8
        loop.set_debug(True)
        try:
            late = [t.sendto_zc(b"e" * 10) for _ in range(65)]
            assert late[-1]._source_traceback  # type: ignore[attr-defined]
            await asyncio.wait_for(asyncio.gather(*late), 5)
        finally:
            loop.set_debug(False)
        cancelled = t.sendto_zc(b"c")
        cancelled.cancel()
        await asyncio.sleep(0.05)
        assert cancelled.cancelled()
    finally:
        t.close()
        rx.close()
