"""The compiled per-call path of sendto_zc() / sendto() (aiozc/datagram/hot.py, _core_pyhot.c)
into the ifb sink: what it costs outside user-space instructions (system calls), and the
asyncio contract of the futures it makes.

The senders run in a fresh interpreter inside the sink namespace, some of them under strace.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from aiozc._sys import core as _core
from aiozc.tools.benchkit import run_on
from aiozc.tools.netns import SinkNamespace
from udp_helpers import strace_call_counts

LOOPS = ["asyncio", "uvloop"]
DATAGRAM = 64000

needs_core = pytest.mark.skipif(not _core.compiled, reason="the compiled core is not in use")

# A sender as a user writes it: a window of 256 futures, await the oldest.
_WINDOW_SENDER = """
import asyncio, collections, sys
from aiozc.tools.benchkit import run_on
from aiozc.datagram import create_datagram_endpoint

async def main(dst, count):
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(dst, 9),
                                                  engine=sys.argv[4])
    buf = bytearray(b"w" * 64000)
    window = collections.deque()
    for _ in range(count):
        window.append(transport.sendto_zc(buf))
        if len(window) >= 256:
            await window.popleft()
    for future in window:
        await future
    assert transport.stats.state == "zerocopy", transport.stats.reason
    assert transport._hot_d is not None, "not the compiled path"
    transport.close()

run_on(sys.argv[1], main(sys.argv[2], int(sys.argv[3])))
"""


def _syscalls_of(ns: SinkNamespace, loop: str, count: int, names: str,
                 engine: str = "msg_zerocopy") -> dict[str, int]:
    """Calls of the system calls ``names`` (strace's -e trace list) made by a process that
    sends ``count`` datagrams with sendto_zc() on ``engine`` (start-up and set-up included)."""
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"aiozc-strace-{os.getpid()}-{loop}.txt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    argv = ["strace", "-f", "-qq", "-c", "-e", f"trace={names}", "-o", out,
            sys.executable, "-c", _WINDOW_SENDER, loop, ns.sink_addr, str(count), engine]
    try:
        proc = ns.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with open(out) as f:
            table = f.read()
    finally:
        if os.path.exists(out):
            os.unlink(out)
    return strace_call_counts(table)


@needs_core
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize("loop", LOOPS)
def test_sendto_zc_makes_no_system_call_besides_its_send(sink_ns: SinkNamespace, loop: str) -> None:
    # CPython 3.11 makes a getpid() system call per running-loop lookup (asyncio.Future()
    # without loop=, asyncio._get_running_loop()): ~0.7 us each here, more than all the
    # per-call bookkeeping, and callgrind does not count it. The compiled path made two per
    # datagram; one send per datagram and a drain every 64 are all it needs.
    count = 4000
    calls = _syscalls_of(sink_ns, loop, count, "getpid,sendto,recvmsg")
    assert calls.get("sendto", 0) >= count
    assert calls.get("getpid", 0) < 50, calls  # interpreter and loop start-up only
    assert calls.get("recvmsg", 0) < count // 8, calls


async def _futures_of_the_loop(dst: str) -> dict[str, Any]:
    from aiozc.datagram import create_datagram_endpoint

    loop = asyncio.get_running_loop()
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(dst, 9))
    buf = bytearray(DATAGRAM)
    futures = [transport.sendto_zc(buf) for _ in range(300)]
    kinds = {type(f).__name__ for f in futures}
    loops_ok = all(f.get_loop() is loop for f in futures)
    untraced = all(f._source_traceback is None for f in futures)
    cancelled = futures[-1].cancel()  # (False if a drain resolved it during its own call)
    done = await asyncio.wait_for(asyncio.gather(*futures[:-1]), 10)
    # In debug mode a future records where it was made, as Future.__init__ does then (the
    # compiled path reads get_debug() once every 64 futures: _core_pyhot.c hot_debug).
    loop.set_debug(True)
    debugged = [transport.sendto_zc(buf) for _ in range(64 + 10)]
    loop.set_debug(False)
    traced = all(f._source_traceback for f in debugged[64:])
    await asyncio.wait_for(asyncio.gather(*debugged), 10)
    await asyncio.sleep(0.05)
    transport._drain_errqueue()
    held = int(transport._hot_d.nheld) if transport._hot_d is not None else None
    result = {
        "kinds": sorted(kinds), "loops_ok": loops_ok, "cancelled": cancelled,
        "still_cancelled": futures[-1].cancelled(), "resolved": len(done), "held": held,
        "compiled": transport._hot_d is not None, "untraced": untraced, "traced": traced,
    }
    transport.close()
    return result


def futures_of_the_loop(dst: str, loop: str) -> dict[str, Any]:
    return run_on(loop, _futures_of_the_loop(dst))


@needs_core
@pytest.mark.parametrize("loop", LOOPS)
def test_compiled_futures_are_plain_cancellable_futures_of_the_loop(
    sink_ns: SinkNamespace, loop: str
) -> None:
    res = sink_ns.call(futures_of_the_loop, sink_ns.sink_addr, loop)
    assert res["compiled"]
    assert res["kinds"] == ["Future"] and res["loops_ok"]
    assert res["resolved"] == 299
    assert res["still_cancelled"] == res["cancelled"]
    assert res["held"] == 0  # the cancelled write's export ended once the kernel was done
    assert res["untraced"] and res["traced"]


@needs_core
def test_future_loop_offset_is_found_only_for_the_plain_layout() -> None:
    from aiozc.datagram import hot

    lib: Any = _core.lib
    offset = hot._future_loop_offset()
    assert offset > 0  # CPython 3.11's FutureObj: the loop right after the object header

    class Probe:
        def get_debug(self) -> bool:
            return False

    class Marked(asyncio.Future):  # type: ignore[type-arg]
        def __init__(self, *, loop: Any = None) -> None:
            super().__init__(loop=loop)
            self.mark = 1  # a subclass's __init__ that sets more than the loop

    probe = Probe()
    assert lib.zc_future_loop_offset(id(asyncio.Future), id(probe)) == offset
    assert lib.zc_future_loop_offset(id(Marked), id(probe)) == 0


# ------------------------------------------------------------------------------------------
# On loopback (both loops): the C methods keep the Python methods' contract.


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.arrived = asyncio.Event()
        self.expect = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append(data)
        if len(self.datagrams) >= self.expect:
            self.arrived.set()


async def _pair() -> tuple[Any, asyncio.DatagramTransport, _Sink]:
    from aiozc.datagram import create_datagram_endpoint

    loop = asyncio.get_running_loop()
    rx, sink = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    tx, _ = await create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=rx.get_extra_info("sockname")
    )
    return tx, rx, sink


async def test_instance_dict_stays_small_enough_for_method_specialization() -> None:
    # CPython 3.11 keeps at most 30 attributes inline; past that the dict is materialized and
    # LOAD_METHOD on the transport never specializes (a full lookup per sendto_zc call).
    tx, rx, _ = await _pair()
    try:
        assert len(vars(tx)) <= 30, sorted(vars(tx))
    finally:
        tx.close()
        rx.close()


@needs_core
async def test_compiled_methods_take_every_form_of_call() -> None:
    from aiozc.datagram import ZeroCopyDatagramTransport

    assert type(ZeroCopyDatagramTransport.__dict__["sendto_zc"]).__name__ == "method_descriptor"
    tx, rx, sink = await _pair()
    peer = rx.get_extra_info("sockname")
    try:
        params = list(inspect.signature(tx.sendto_zc).parameters)
        assert params == ["buf", "addr"], params
        assert "without copying" in (tx.sendto_zc.__doc__ or "")
        sink.expect = 6
        futures = [
            tx.sendto_zc(b"a" * 100),  # the compiled path
            tx.sendto_zc(bytearray(b"b" * 100), None),  # addr given: the Python method
            tx.sendto_zc(buf=memoryview(b"c" * 100)),  # keywords: the Python method
            tx.sendto_zc(b"d" * 100, addr=peer),
        ]
        tx.sendto(b"e")
        tx.sendto(bytearray(b"f"), peer)
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        await asyncio.wait_for(sink.arrived.wait(), 10)
        assert sorted(d[:1] for d in sink.datagrams) == [b"a", b"b", b"c", b"d", b"e", b"f"]
        with pytest.raises(TypeError):
            tx.sendto_zc(object())  # not a buffer: the Python method says why
        with pytest.raises(TypeError):
            tx.sendto_zc()
        with pytest.raises(TypeError):
            tx.sendto("text")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            tx.sendto_zc(b"x", ("127.0.0.1", 1))  # not the connected address
    finally:
        tx.close()
        rx.close()


@needs_core
async def test_subclasses_get_c_methods_of_their_own() -> None:
    # CPython 3.11 calls a C method the fast way only on an instance of the exact class its
    # descriptor names: each subclass that inherits the C method gets one naming it.
    from aiozc.datagram import ZeroCopyDatagramTransport
    from aiozc.datagram.endpoint import SelectorLoopDatagramTransport, UVLoopDatagramTransport

    for cls in (SelectorLoopDatagramTransport, UVLoopDatagramTransport):
        for name in ("sendto_zc", "sendto"):
            method = cls.__dict__[name]
            assert type(method).__name__ == "method_descriptor"
            assert method.__objclass__ is cls
            assert method.__doc__ == ZeroCopyDatagramTransport.__dict__[name].__doc__

    class Own(SelectorLoopDatagramTransport):
        def sendto_zc(self, buf: Any, addr: Any = None) -> Any:
            return "own"

    class Below(Own):
        pass

    assert Own.__dict__["sendto_zc"].__class__.__name__ == "function"
    assert Own.__dict__["sendto"].__objclass__ is Own
    assert "sendto_zc" not in Below.__dict__  # inherits the Python override, not the C method
    assert Below.__dict__["sendto"].__objclass__ is Below
    tx, rx, sink = await _pair()
    try:
        assert type(tx).__dict__["sendto_zc"].__objclass__ is type(tx)
        sink.expect = 1
        assert (await asyncio.wait_for(tx.sendto_zc(b"a" * 100), 10)).nbytes == 100
        await asyncio.wait_for(sink.arrived.wait(), 10)
    finally:
        tx.close()
        rx.close()


# ------------------------------------------------------------------------------------------
# The drain results the compiled sendto_zc handles itself (_core_pymeth.c quick_pause /
# quick_resolved): what the Python methods would have done, and the Python methods wherever
# something else has to happen.


class _FlowRecorder(asyncio.DatagramProtocol):
    """Records pause_writing / resume_writing with the transport's buffer size at each call."""

    def __init__(self, raise_on_pause: bool = False) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.transport: Any = None
        self.raise_on_pause = raise_on_pause

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        t = self.transport
        self.calls.append(("pause", t.get_write_buffer_size(), t._protocol_paused))
        if self.raise_on_pause:
            raise RuntimeError("pause refused")

    def resume_writing(self) -> None:
        t = self.transport
        self.calls.append(("resume", t.get_write_buffer_size(), t._protocol_paused))


async def _flow_control_of_the_window(dst: str, raise_on_pause: bool, subclass: bool,
                                      streak: bool, late: bool = False) -> dict[str, Any]:
    from aiozc.datagram import create_datagram_endpoint, endpoint

    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(f"{ctx['message']}: {ctx.get('exception')!r}"))
    overridden: list[str] = []
    base = endpoint.transport_class(loop)

    def _maybe_pause_protocol(self: Any) -> None:
        overridden.append("pause")
        super(Mine, self)._maybe_pause_protocol()

    class Mine(base):  # type: ignore[misc, valid-type]
        pass

    if subclass:  # a user's subclass that overrides a method the C path stands for (late:
        if not late:  # only from the 1000th datagram on, once the C path has run with it)
            Mine._maybe_pause_protocol = _maybe_pause_protocol  # type: ignore[method-assign]
        endpoint_class = endpoint.transport_class
        endpoint.transport_class = lambda _loop: Mine  # type: ignore[assignment]
    try:
        transport, proto = await create_datagram_endpoint(
            lambda: _FlowRecorder(raise_on_pause), remote_addr=(dst, 9)
        )
    finally:
        if subclass:
            endpoint.transport_class = endpoint_class  # type: ignore[assignment]
    buf = bytearray(DATAGRAM)
    window: collections.deque[Any] = collections.deque()
    streaks_after: list[int] = []
    pauses_before = 0
    for i in range(2000):
        if late and i == 1000:
            pauses_before = sum(1 for c in proto.calls if c[0] == "pause")
            Mine._maybe_pause_protocol = _maybe_pause_protocol  # type: ignore[method-assign]
        if streak and i % 500 == 100:
            transport._policy._copied_streak = 3  # a copied range was seen: the next drain resets it
        window.append(transport.sendto_zc(buf))
        if streak and i % 500 == 0 and i:
            streaks_after.append(transport._policy._copied_streak)
        if len(window) >= 256:
            await window.popleft()
    for future in window:
        await future
    transport._drain_errqueue()
    high, low = transport._high_water, transport._low_water
    result = {
        "calls": proto.calls, "high": high, "low": low, "errors": errors, "overridden": len(overridden),
        "paused": transport._protocol_paused,
        "c_paused": bool(transport._hot_d.paused) if transport._hot_d is not None else transport._protocol_paused,
        "compiled": transport._hot_d is not None, "streaks_after": streaks_after,
        "state": transport.stats.state, "pauses_before": pauses_before,
    }
    transport.close()
    return result


def flow_control_of_the_window(dst: str, loop: str, raise_on_pause: bool = False,
                               subclass: bool = False, streak: bool = False, late: bool = False) -> dict[str, Any]:
    return run_on(loop, _flow_control_of_the_window(dst, raise_on_pause, subclass, streak, late))


@pytest.mark.parametrize("loop", LOOPS)
def test_window_pauses_and_resumes_the_protocol_as_the_python_path(sink_ns: SinkNamespace, loop: str) -> None:
    # (on both paths: the compiled one must do what the pure one does)
    res = sink_ns.call(flow_control_of_the_window, sink_ns.sink_addr, loop)
    assert res["compiled"] == _core.compiled and res["state"] == "zerocopy"
    calls = res["calls"]
    assert len(calls) > 20  # a cycle per drain at least
    kinds = [c[0] for c in calls]
    assert all(a != b for a, b in zip(kinds, kinds[1:])), kinds  # strictly alternating
    assert kinds[0] == "pause"
    for kind, size, paused in calls:
        if kind == "pause":
            assert size > res["high"] and paused  # _protocol_paused is set before the call
        else:
            assert size <= res["low"] and not paused
    assert res["paused"] == res["c_paused"] == (kinds[-1] == "pause")
    assert res["errors"] == []


@pytest.mark.parametrize("loop", LOOPS)
def test_a_failing_pause_writing_goes_to_the_exception_handler(sink_ns: SinkNamespace, loop: str) -> None:
    res = sink_ns.call(flow_control_of_the_window, sink_ns.sink_addr, loop, raise_on_pause=True)
    pauses = sum(1 for c in res["calls"] if c[0] == "pause")
    assert pauses > 10
    assert len(res["errors"]) == pauses
    assert all(e == "protocol.pause_writing() failed: RuntimeError('pause refused')" for e in res["errors"])


@needs_core
@pytest.mark.parametrize("loop", LOOPS)
def test_a_subclass_override_is_called(sink_ns: SinkNamespace, loop: str) -> None:
    res = sink_ns.call(flow_control_of_the_window, sink_ns.sink_addr, loop, subclass=True)
    pauses = sum(1 for c in res["calls"] if c[0] == "pause")
    assert pauses > 10 and res["overridden"] >= pauses


@needs_core
@pytest.mark.parametrize("loop", LOOPS)
def test_an_override_made_after_the_c_path_ran_is_called(sink_ns: SinkNamespace, loop: str) -> None:
    # the C path remembers the class it checked: a change to the class must undo that
    res = sink_ns.call(flow_control_of_the_window, sink_ns.sink_addr, loop, subclass=True, late=True)
    pauses = sum(1 for c in res["calls"] if c[0] == "pause")
    assert res["pauses_before"] > 5 and pauses - res["pauses_before"] > 5, res
    assert res["overridden"] >= pauses - res["pauses_before"], res


@needs_core
@pytest.mark.parametrize("loop", LOOPS)
def test_a_copied_streak_is_reset_by_the_next_zero_copy_drain(sink_ns: SinkNamespace, loop: str) -> None:
    # on_completed(copied=False) is skipped only when it would change nothing
    res = sink_ns.call(flow_control_of_the_window, sink_ns.sink_addr, loop, streak=True)
    assert res["streaks_after"] == [0, 0, 0], res["streaks_after"]
