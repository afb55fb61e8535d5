"""asyncio's transport contract at the places the compiled TCP methods (_core_tcp.c: write,
writelines, write_zc, is_closing) and the C drain/pause code stand in for Python: each scenario
runs on the base loop's own transport and on aiozc's, on both loops (conftest), on the compiled
and the pure path, and on the direct (copying) and the queued write path; what a caller can
observe (return values, exception types and the type they name, bytes on the wire, protocol
calls, warnings logged, exception-handler calls) must be the stock transport's."""

from __future__ import annotations

import asyncio
import logging
import socket
import types
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

import aiozc
import aiozc.transport as transport_module

COMPILED = bool(transport_module.COMPILED_METHODS)


class Proto(asyncio.Protocol):
    """Records the calls the transport makes."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.events: list[str] = []
        self.lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(f"lost:{type(exc).__name__}")
        if not self.lost.done():
            self.lost.set_result(exc)


class RaisingFlowProto(Proto):
    def pause_writing(self) -> None:
        super().pause_writing()
        raise ZeroDivisionError("pause")

    def resume_writing(self) -> None:
        super().resume_writing()
        raise KeyError("resume")


class Side:
    """One connection, its peer socket, and what the loop logged or handled meanwhile."""

    def __init__(self, transport: Any, protocol: Proto, peer: socket.socket) -> None:
        self.transport, self.protocol, self.peer = transport, protocol, peer
        self.handled: list[str] = []
        self.warnings: list[str] = []

    async def read_until_eof(self, limit: float = 20) -> bytes:
        loop = asyncio.get_running_loop()
        got = bytearray()

        async def pump() -> None:
            while True:
                chunk = await loop.sock_recv(self.peer, 1 << 20)
                if not chunk:
                    return
                got.extend(chunk)

        await asyncio.wait_for(pump(), limit)
        return bytes(got)

    async def read(self, nbytes: int) -> bytes:
        loop = asyncio.get_running_loop()
        got = bytearray()
        while len(got) < nbytes:
            chunk = await asyncio.wait_for(loop.sock_recv(self.peer, 1 << 20), 20)
            if not chunk:
                break
            got.extend(chunk)
        return bytes(got)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("asyncio", "aiozc")):
            self.into.append(record.name)


def _use_pure_methods(transport: Any) -> None:
    for name, method in transport_module.PURE_METHODS.items():
        setattr(transport, name, types.MethodType(method, transport))


async def _connect(impl: str, protocol_cls: type[Proto]) -> Side:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    try:
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        if impl == "stock":
            transport, protocol = await loop.create_connection(protocol_cls, *listener.getsockname())
        else:
            kind, path = impl.split("-")
            options: dict[str, Any] = {"local_peer_copy": True} if kind == "direct" else {}
            transport, protocol = await aiozc.create_connection(
                protocol_cls, *listener.getsockname(), **options
            )
            if path == "pure":
                _use_pure_methods(transport)
        peer, _ = await accept
    finally:
        listener.close()
    peer.setblocking(False)
    return Side(transport, protocol, peer)  # type: ignore[arg-type]


IMPLS = ["direct-compiled", "direct-pure", "queued-compiled", "queued-pure"]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    if request.param.endswith("compiled") and not COMPILED:
        pytest.skip("the compiled core is not in use")
    return str(request.param)


Scenario = Callable[[Side], Awaitable[dict[str, Any]]]


def on_uvloop() -> bool:
    return isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def run(impl: str, scenario: Scenario, protocol_cls: type[Proto] = Proto) -> dict[str, Any]:
    """The scenario's observations, plus the warnings and exception-handler calls it caused."""
    loop = asyncio.get_running_loop()
    side = await _connect(impl, protocol_cls)
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(
        lambda _loop, ctx: side.handled.append(
            f"{ctx.get('message')}|{type(ctx.get('exception')).__name__}"
        )
    )
    collect = _Collect(side.warnings)
    logging.getLogger().addHandler(collect)
    try:
        observed = await scenario(side)
        await asyncio.sleep(0.05)  # callbacks the scenario scheduled
    finally:
        logging.getLogger().removeHandler(collect)
        loop.set_exception_handler(old_handler)
        side.transport.abort()
        side.peer.close()
        await asyncio.sleep(0)
    return {**observed, "warnings": len(side.warnings), "handled": side.handled}


def _twin(impl: str) -> str:
    kind, path = impl.split("-")
    return f"{kind}-{'pure' if path == 'compiled' else 'compiled'}"


async def compare(
    impl: str, scenario: Scenario, protocol_cls: type[Proto] = Proto, uvloop_differs: tuple[str, ...] = ()
) -> None:
    """aiozc's observations are the stock transport's; on uvloop's base the keys in
    ``uvloop_differs`` are where uvloop's own transport does something aiozc does not follow
    (see the test). The compiled methods and the Python ones agree on every key."""
    ours = await run(impl, scenario, protocol_cls)
    if impl.endswith("compiled"):
        assert ours == await run(_twin(impl), scenario, protocol_cls)
    stock = await run("stock", scenario, protocol_cls)
    if on_uvloop():
        for key in uvloop_differs:
            stock.pop(key), ours.pop(key)
    assert ours == stock


def outcome(call: Callable[[], Any]) -> str:
    """What a call did, as its caller sees it: 'ok' or the exception's type."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the type is the observation
        return type(exc).__name__
    return "ok"


def type_error_message(call: Callable[[], Any]) -> str:
    with pytest.raises(TypeError) as info:
        call()
    return str(info.value)


# -- after close / abort: dropped silently, asyncio's warning from the 5th lost write --------
# uvloop's own transport logs nothing there and, once its handle is closed (after
# connection_lost), raises RuntimeError("unable to perform operation on ...; the handler is
# closed"); aiozc drops such writes on both bases, as asyncio's transport does.


async def test_write_after_close_then_connection_lost(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        t.close()
        await side.protocol.lost
        calls = [outcome(lambda: t.write(b"x")) for _ in range(10)]
        calls += [outcome(lambda: t.writelines([b"a", b"b"])) for _ in range(3)]
        return {"calls": calls, "closing": t.is_closing(), "data": await side.read_until_eof(),
                "events": side.protocol.events}

    await compare(impl, scenario, uvloop_differs=("calls", "warnings"))


async def test_write_right_after_close_is_dropped_silently(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        t.close()
        calls = [outcome(lambda: t.write(b"late")) for _ in range(3)]
        return {"calls": calls, "closing": t.is_closing(), "data": await side.read_until_eof(),
                "events": side.protocol.events}

    await compare(impl, scenario)


async def test_write_after_abort(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        t.abort()
        before_lost = [outcome(lambda: t.write(b"x")) for _ in range(8)]
        await side.protocol.lost
        after_lost = [outcome(lambda: t.write(b"y")) for _ in range(8)]
        return {"before_lost": before_lost, "after_lost": after_lost, "closing": t.is_closing(),
                "data": await side.read_until_eof(), "events": side.protocol.events}

    await compare(impl, scenario, uvloop_differs=("after_lost", "warnings"))


async def test_write_after_peer_reset(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        side.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        side.peer.close()
        for _ in range(200):  # until a write meets the reset: then connection_lost(exc)
            outcome(lambda: t.write(b"z" * 1000))
            if side.protocol.lost.done():
                break
            await asyncio.sleep(0.01)
        exc = await side.protocol.lost
        calls = [outcome(lambda: t.write(b"x")) for _ in range(8)]
        side.peer = socket.socket()  # (closed above; run() closes this one)
        return {"lost": type(exc).__name__, "calls": calls, "closing": t.is_closing()}

    await compare(impl, scenario, uvloop_differs=("calls", "warnings"))


async def test_is_closing_through_the_lifetime(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        states = [t.is_closing()]
        t.write(b"abc")
        states.append(t.is_closing())
        t.close()
        states.append(t.is_closing())
        await side.protocol.lost
        states.append(t.is_closing())
        return {"states": states, "data": await side.read_until_eof()}

    await compare(impl, scenario)


# -- what write() takes ---------------------------------------------------------------------


async def test_empty_writes(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        calls = [
            outcome(lambda: t.write(b"")),
            outcome(lambda: t.write(bytearray())),
            outcome(lambda: t.write(memoryview(b""))),
            outcome(lambda: t.writelines([])),
            outcome(lambda: t.writelines([b"", b""])),
        ]
        size = t.get_write_buffer_size()
        t.write(b"end")
        t.close()
        calls += [outcome(lambda: t.write(b"")) for _ in range(6)]  # empty after close: no count
        return {"calls": calls, "size": size, "data": await side.read_until_eof()}

    await compare(impl, scenario)


async def test_non_bytes_writes_raise_type_error_naming_the_type(impl: str) -> None:
    # uvloop's write() returns early on a falsy argument: write(None) passes there, and its
    # writelines() writes the items before a bad one; aiozc raises as asyncio does.
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        messages = [type_error_message(lambda: t.write("text")), type_error_message(lambda: t.write(12345))]
        return {
            "names_type": ["'str'" in messages[0], "'int'" in messages[1]],
            "none": outcome(lambda: t.write(None)),
            "bad_item": outcome(lambda: t.writelines([b"ok", "text"])),
            "not_iterable": outcome(lambda: t.writelines(12345)),
            "data": (t.write(b"end"), t.close(), await side.read_until_eof())[2],
        }

    await compare(impl, scenario, uvloop_differs=("none", "data"))


async def test_writelines_with_mixed_buffer_types(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        big = bytes(range(256)) * 1024  # 256 KiB: more than one send may take
        t.writelines([b"a", bytearray(b"bc"), memoryview(b"xdefx")[1:4], memoryview(bytearray(b"gh"))])
        t.writelines(iter([big, bytearray(b"tail1"), memoryview(big)[:1000]]))
        t.writelines((b"g" for _ in range(3)))
        t.write(memoryview(bytearray(b"ijkl")).cast("B", (2, 2)))
        t.close()
        data = await side.read_until_eof()
        return {"ok": data == b"abcdefgh" + big + b"tail1" + big[:1000] + b"ggg" + b"ijkl", "n": len(data)}

    await compare(impl, scenario)


async def test_write_eof_then_write(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        t.write(b"before")
        t.write_eof()
        calls = [
            outcome(lambda: t.write(b"after")),
            outcome(lambda: t.write(b"")),
            outcome(lambda: t.writelines([b"after"])),
            outcome(lambda: t.write_eof()),
        ]
        return {"calls": calls, "closing": t.is_closing(), "data": await side.read_until_eof()}

    await compare(impl, scenario)


# -- flow control ---------------------------------------------------------------------------


async def _await_event(protocol: Proto, event: str) -> None:
    for _ in range(200):
        if event in protocol.events:
            return
        await asyncio.sleep(0.01)


async def test_buffer_size_and_limits_after_writes(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        t.set_write_buffer_limits(high=64 << 10, low=16 << 10)
        limits = t.get_write_buffer_limits()
        t.write(b"small")
        t.writelines([b"s", b"mall"])
        after_small = t.get_write_buffer_size()
        payload = bytes(32 << 20)
        t.write(payload)
        queued = t.get_write_buffer_size() > 0
        paused = list(side.protocol.events)
        data = await side.read(len(payload) + 10)
        await _await_event(side.protocol, "resume")
        return {"limits": limits, "after_small": after_small, "queued": queued, "paused": paused,
                "n": len(data), "size": t.get_write_buffer_size(), "events": side.protocol.events}

    await compare(impl, scenario)


async def test_pause_and_resume_writing_that_raise(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        payload = bytes(32 << 20)
        calls = [outcome(lambda: t.write(payload))]
        data = await side.read(len(payload))
        await _await_event(side.protocol, "resume")
        calls.append(outcome(lambda: t.write(b"still usable")))
        data += await side.read(12)
        return {"calls": calls, "n": len(data), "tail": data[-12:], "events": side.protocol.events,
                "closing": t.is_closing()}

    await compare(impl, scenario, RaisingFlowProto)


async def test_set_protocol_while_writes_are_queued(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        first = side.protocol
        payload = bytes(32 << 20)
        t.write(payload)
        second = Proto()
        t.set_protocol(second)
        t.write(b"after")
        data = await side.read(len(payload) + 5)
        await _await_event(second, "resume")
        t.close()
        await second.lost
        return {"first": first.events, "second": second.events, "current": t.get_protocol() is second,
                "n": len(data)}

    await compare(impl, scenario)


# -- write_zc: aiozc's own contract (README), the same on both paths ----------------------------


async def test_write_zc_edges_agree_on_both_paths(impl: str) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        t = side.transport
        empty = t.write_zc(b"")
        results: dict[str, Any] = {"empty": (empty.done(), empty.result())}
        results["str"] = outcome(lambda: t.write_zc("text"))
        results["strided"] = outcome(lambda: t.write_zc(memoryview(b"abcdef")[::2]))
        results["2d"] = (await t.write_zc(memoryview(bytearray(b"wxyz")).cast("B", (2, 2)))).nbytes
        t.write_eof()
        results["after_eof"] = outcome(lambda: t.write_zc(b"late"))
        results["data"] = await side.read_until_eof()
        t.close()
        results["after_close"] = outcome(lambda: t.write_zc(b"late"))
        return results

    ours = await run(impl, scenario)
    assert ours == await run(_twin(impl), scenario)
    assert ours["str"] == "TypeError" and ours["strided"] == "ValueError"
    assert ours["data"] == b"wxyz" and ours["after_close"] == "TransportClosedError"


# -- UDP: sendto_zc beside sendto on a closed transport and with a wrong address --------------
# (the compiled sendto/sendto_zc are C methods with the core, the Python ones without it:
# this module runs on the pure path too, see the Makefile's CORE_TESTS)


async def _udp_pair(impl: str, connected: bool, engine: str = "auto") -> tuple[Any, socket.socket]:
    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    kwargs: dict[str, Any] = (
        {"remote_addr": rx.getsockname()} if connected else {"local_addr": ("127.0.0.1", 0)}
    )
    if impl == "stock":
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, **kwargs)
    else:
        transport, _ = await aiozc.create_datagram_endpoint(asyncio.DatagramProtocol, engine=engine, **kwargs)
    return transport, rx


async def _udp_lost_sends(impl: str, connected: bool) -> dict[str, Any]:
    transport, rx = await _udp_pair(impl, connected)
    addr = None if connected else rx.getsockname()
    logged: list[str] = []
    collect = _Collect(logged)
    logging.getLogger().addHandler(collect)
    try:
        transport.close()
        calls = [outcome(lambda: transport.sendto(b"x", addr)) for _ in range(7)]
        before_lost = len(logged)
        await asyncio.sleep(0.05)  # connection_lost
        if connected:  # (asyncio 3.11's sendto(data, addr) then raises AttributeError: its bug)
            calls += [outcome(lambda: transport.sendto(b"y", addr)) for _ in range(2)]
    finally:
        logging.getLogger().removeHandler(collect)
        rx.close()
    return {"calls": calls, "before_lost": before_lost, "warnings": len(logged),
            "closing": transport.is_closing()}


@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
async def test_udp_sendto_after_close_counts_lost_sends_as_stock(connected: bool) -> None:
    # Both stock loops: dropped silently, "socket.send() raised exception." from the 5th on.
    # Except asyncio 3.11's unconnected transport, which counts only when connected and sends
    # sendto(data, addr) after close() (its bug); aiozc drops it there too.
    if not connected and not on_uvloop():
        assert (await _udp_lost_sends("aiozc", connected))["before_lost"] == 3
        return
    assert await _udp_lost_sends("aiozc", connected) == await _udp_lost_sends("stock", connected)


ENGINES = ["auto", "io_uring"]  # io_uring: its per-call sendto_zc is C too (_core_udpring.c)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
async def test_udp_sendto_zc_on_a_closed_transport_raises(connected: bool, engine: str) -> None:
    transport, rx = await _udp_pair("aiozc", connected, engine)
    addr = None if connected else rx.getsockname()
    try:
        open_future = transport.sendto_zc(b"before", addr)
        transport.close()
        closing = outcome(lambda: transport.sendto_zc(b"closing", addr))
        completion = await asyncio.wait_for(open_future, 10)
        await asyncio.sleep(0.05)  # connection_lost
        closed = outcome(lambda: transport.sendto_zc(b"closed", addr))
        empty = outcome(lambda: transport.sendto_zc(b"", addr))
    finally:
        rx.close()
    assert (closing, closed, empty) == ("TransportClosedError",) * 3
    assert completion.nbytes == 6


@pytest.mark.parametrize("engine", ENGINES)
async def test_udp_wrong_address_on_a_connected_transport_as_stock(engine: str) -> None:
    bad = ["not a tuple", ("127.0.0.1",), 5, ("127.0.0.1", "x"), ("127.0.0.2", 9)]
    stock, rx = await _udp_pair("stock", True)
    try:
        expected = [outcome(lambda: stock.sendto(b"x", addr)) for addr in bad]
    finally:
        stock.close()
        rx.close()
    ours, rx = await _udp_pair("aiozc", True, engine)
    try:
        sendto = [outcome(lambda: ours.sendto(b"x", addr)) for addr in bad]
        sendto_zc = [outcome(lambda: ours.sendto_zc(b"x", addr)) for addr in bad]
        assert not ours.is_closing()
    finally:
        ours.close()
        rx.close()
    assert sendto == expected == ["ValueError"] * len(bad)
    assert sendto_zc == sendto


@pytest.mark.parametrize("engine", ENGINES)
async def test_udp_wrong_address_type_raises_in_sendto_zc_as_in_sendto(engine: str) -> None:
    # Unconnected: asyncio 3.11's transport turns the socket module's TypeError into a fatal
    # error (it closes), uvloop raises TypeError or ValueError at once; aiozc raises the socket
    # module's TypeError at once on both bases, the same from sendto_zc as from sendto.
    bad = ["not a tuple", ("127.0.0.1",), 5, ("127.0.0.1", "x"), None]
    ours, rx = await _udp_pair("aiozc", False, engine)
    try:
        sendto = [outcome(lambda: ours.sendto(b"x", addr)) for addr in bad]
        sendto_zc = [outcome(lambda: ours.sendto_zc(b"x", addr)) for addr in bad]
        assert not ours.is_closing()
        assert (await asyncio.wait_for(ours.sendto_zc(b"ok", rx.getsockname()), 10)).nbytes == 2
    finally:
        ours.close()
        rx.close()
    assert sendto_zc == sendto
    assert sendto[:4] == ["TypeError"] * 4 and sendto[4] == "ValueError"



class DatagramFlow(asyncio.DatagramProtocol):
    def __init__(self, fail: bool = False) -> None:
        self.events: list[str] = []
        self.fail = fail

    def pause_writing(self) -> None:
        self.events.append("pause")
        if self.fail:
            raise ZeroDivisionError("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")
        if self.fail:
            raise KeyError("resume")


async def _udp_flow_after_set_protocol(dst: str, fail: bool) -> dict[str, Any]:
    import collections

    from aiozc._sys import core

    loop = asyncio.get_running_loop()
    handled: list[str] = []
    loop.set_exception_handler(lambda _l, ctx: handled.append(f"{ctx['message']}|{type(ctx.get('exception')).__name__}"))
    transport, first = await aiozc.create_datagram_endpoint(lambda: DatagramFlow(fail), remote_addr=(dst, 9))
    second = DatagramFlow(fail)
    transport.set_protocol(second)
    buf = bytearray(64000)
    window: collections.deque[Any] = collections.deque()
    for _ in range(1500):
        window.append(transport.sendto_zc(buf))
        if len(window) >= 256:
            await window.popleft()
    for future in window:
        await future
    transport._drain_errqueue()
    after = await transport.sendto_zc(b"usable")
    result = {"first": first.events, "second": second.events,  # type: ignore[attr-defined]
              "handled": handled, "after": after.nbytes, "state": transport.stats.state,
              "compiled": core.compiled}
    transport.close()
    return result


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("fail", [False, True], ids=["plain", "raising"])
def test_udp_flow_control_follows_set_protocol(sink_ns: Any, loop: str, fail: bool) -> None:
    """The compiled drain (_core_pymeth.c) calls pause/resume_writing itself: on the protocol
    set last, and one that raises goes to the loop's exception handler, the transport usable."""
    res = sink_ns.call(_run_udp_flow, sink_ns.sink_addr, loop, fail)
    assert res["state"] == "zerocopy" and res["compiled"] == COMPILED
    assert res["first"] == [] and res["after"] == 6
    kinds = res["second"]
    assert len(kinds) > 10 and kinds[0] == "pause"
    assert all(a != b for a, b in zip(kinds, kinds[1:])), kinds
    names = {"pause": "protocol.pause_writing() failed|ZeroDivisionError",
             "resume": "protocol.resume_writing() failed|KeyError"}
    assert res["handled"] == ([names[k] for k in kinds] if fail else [])


def _run_udp_flow(dst: str, loop: str, fail: bool) -> dict[str, Any]:
    from aiozc.tools.benchkit import run_on

    return run_on(loop, _udp_flow_after_set_protocol(dst, fail))  # type: ignore[no-any-return]
