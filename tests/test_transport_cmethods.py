"""The compiled core's TCP write(), write_zc(), writelines(), is_closing() (_core_tcp.c) against
the Python methods they stand in for (transport.PURE_METHODS): every scenario runs on both
(``path``), on both loops (conftest), and where the outcome is data, counters and protocol
calls, the two must agree exactly."""

from __future__ import annotations

import asyncio
import errno
import socket
import types
from typing import Any

import pytest

import aiozc.transport as transport_module
from aiozc.completions import Completion
from tcp_helpers import Pair, connect_pair

COMPILED = bool(transport_module.COMPILED_METHODS)


@pytest.fixture(params=["compiled", "pure"])
def path(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled" and not COMPILED:
        pytest.skip("the compiled core is not in use")
    return str(request.param)


def use_path(pair: Pair, path: str) -> None:
    """The pure path: the Python methods bound on the instance (found before the class's)."""
    if path == "pure":
        for name, method in transport_module.PURE_METHODS.items():
            setattr(pair.transport, name, types.MethodType(method, pair.transport))
    else:
        assert type(type(pair.transport).__dict__["write"]).__name__ == "method_descriptor"


async def direct_pair(path: str, **options: Any) -> Pair:
    pair = await connect_pair(local_peer_copy=True, **options)
    use_path(pair, path)
    assert pair.transport._direct_max > 0  # the direct path is open
    return pair


COUNTERS = ("copy_sends", "copy_bytes", "copy_writes", "zc_sends")


def counters(pair: Pair) -> dict[str, int]:
    stats = pair.transport.stats
    return {name: getattr(stats, name) for name in COUNTERS}


async def mixed_writes(pair: Pair) -> tuple[bytes, dict[str, int], list[Any]]:
    """Every buffer kind through write(), write_zc() and writelines(), sent whole."""
    t = pair.transport
    before = counters(pair)
    t.write(b"a")
    t.write(bytearray(b"bc"))
    t.write(memoryview(b"xdefx")[1:4])
    t.write(memoryview(bytearray(b"ghij")).cast("B", (2, 2)))  # 2-D, C-contiguous
    t.write(b"")
    futures = [t.write_zc(b"kl"), t.write_zc(bytearray(b"mno")), t.write_zc(memoryview(b"pq"))]
    t.writelines([b"r", bytearray(b"s"), memoryview(b"tu")])
    t.writelines((b"v" for _ in range(2)))
    t.writelines([b"w"])
    expected = b"abcdefghijklmnopqrstuvvw"
    data = await pair.read_all(len(expected))
    results = [(f.done(), f.result()) for f in futures]
    after = counters(pair)
    return data, {k: after[k] - before[k] for k in COUNTERS}, results


async def test_every_buffer_kind_arrives_in_order_with_the_same_counters(path: str) -> None:
    pair = await direct_pair(path)
    try:
        data, delta, results = await mixed_writes(pair)
        assert data == b"abcdefghijklmnopqrstuvvw"
        # 4 writes, 3 write_zc, 2 gathered writelines, 1 single-item writelines
        assert delta == {"copy_sends": 10, "copy_bytes": 24, "copy_writes": 3, "zc_sends": 0}
        assert results == [(True, Completion(2, False)), (True, Completion(3, False)), (True, Completion(2, False))]
        assert pair.transport.get_write_buffer_size() == 0
    finally:
        pair.close()


async def test_plain_bytes_reach_the_policy_as_in_python(path: str) -> None:
    """_plain_sent accumulates what the direct path sent until the policy is told."""
    pair = await direct_pair(path)
    try:
        t = pair.transport
        t._tell_policy_plain()
        assert t._plain_sent == 0
        t.write(b"x" * 100)
        t.write_zc(b"y" * 50)
        t.writelines([b"z" * 10, b"w" * 5])
        assert t._plain_sent == 165
        await pair.read_all(165)
    finally:
        pair.close()


async def test_a_spent_budget_asks_the_policy_again(path: str) -> None:
    pair = await direct_pair(path)
    try:
        t = pair.transport
        asked: list[int] = []
        refresh = t._refresh_direct

        def counting_refresh() -> None:
            asked.append(t._plain_sent)
            refresh()

        t._refresh_direct = counting_refresh  # type: ignore[method-assign]
        t._plain_budget = 150
        t.write(b"x" * 100)
        assert asked == []
        t.write(b"x" * 100)
        assert asked == [200]
        await pair.read_all(200)
    finally:
        pair.close()


async def test_type_and_state_errors_are_pythons(path: str) -> None:
    pair = await direct_pair(path)
    try:
        t = pair.transport
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'int'"):
            t.write(1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="writelines\\(\\) item 1: data must be a bytes-like object, not 'str'"):
            t.writelines([b"never sent", "x"])  # type: ignore[list-item]
        released = memoryview(b"abc")
        released.release()
        with pytest.raises(ValueError):
            t.write(released)
        with pytest.raises(ValueError):
            t.write_zc(released)
        with pytest.raises(TypeError):
            t.write()  # type: ignore[call-arg]
        t.write(data=b"kw")  # type: ignore[call-arg]
        assert t.is_closing() is False
        t.write_eof()
        with pytest.raises(RuntimeError, match="Cannot call write\\(\\) after write_eof\\(\\)"):
            t.write(b"late")
        assert await pair.read_until_eof() == b"kw"
    finally:
        pair.close()


async def test_writes_after_close_are_dropped_and_is_closing_says_so(path: str) -> None:
    pair = await direct_pair(path)
    try:
        t = pair.transport
        t.write(b"before")
        t.close()
        assert t.is_closing() is True
        t.write(b"after")
        t.writelines([b"af", b"ter"])
        with pytest.raises(ConnectionError):
            t.write_zc(b"after")
        assert await pair.read_until_eof() == b"before"
        assert await pair.protocol.lost is None
    finally:
        pair.peer.close()


async def test_a_full_socket_queues_the_rest_pauses_and_delivers_everything(path: str) -> None:
    pair = await direct_pair(path, peer_rcvbuf=4096)
    try:
        t = pair.transport
        t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        chunk = bytearray(b"%07d\n" % 0) * 4096  # 32 KiB, mutable: what waits is copied
        sent = bytearray()
        for i in range(16):
            chunk[:8] = b"%07d\n" % i
            t.write(chunk)
            sent += chunk
        t.writelines([b"tail-", bytearray(b"of-"), memoryview(b"writes")])
        sent += b"tail-of-writes"
        t.write_zc(b"zc")
        sent += b"zc"
        assert "pause" in pair.protocol.events
        assert t.get_write_buffer_size() > 0
        data = await pair.read_all(len(sent))
        assert data == sent
        for _ in range(100):
            if "resume" in pair.protocol.events:
                break
            await asyncio.sleep(0.01)
        assert pair.protocol.events[-2:] == ["pause", "resume"]
        assert t.stats.copy_bytes == len(sent)
    finally:
        pair.close()


async def test_a_send_error_loses_the_connection_once(path: str) -> None:
    pair = await direct_pair(path)
    try:
        t = pair.transport
        pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        pair.peer.close()  # RST
        await asyncio.sleep(0.05)
        t.pause_reading()  # the error should come from a write, not from a read
        futures = []
        for _ in range(3):
            if t.is_closing():
                break
            futures.append(t.write_zc(b"x"))
            t.write(b"y")
            t.writelines([b"a", b"b"])
        exc = await asyncio.wait_for(pair.protocol.lost, 5)
        assert isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)
        assert pair.protocol.events.count("lost") == 1
        t.write(b"after")  # dropped, no error
        for future in futures:
            assert future.done()
            if future.exception() is not None:
                assert isinstance(future.exception(), ConnectionError)
    finally:
        pair.transport.abort()


async def test_write_zc_of_a_full_socket_resolves_when_sent(path: str) -> None:
    pair = await direct_pair(path, peer_rcvbuf=4096)
    try:
        t = pair.transport
        t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 16384  # 4 MiB
        futures = [t.write_zc(big) for _ in range(2)]
        assert not all(f.done() for f in futures)
        data = await pair.read_all(2 * len(big))
        assert data == big * 2
        results = [await asyncio.wait_for(f, 5) for f in futures]
        assert [r.nbytes for r in results] == [len(big)] * 2
    finally:
        pair.close()


def test_the_hot_state_is_the_transports() -> None:
    """With the compiled core the counters and bounds live in the TcpHot, read the same
    through the transport and its stats."""
    if not COMPILED:
        pytest.skip("the compiled core is not in use")

    async def main() -> None:
        pair = await direct_pair("compiled")
        try:
            t = pair.transport
            t.write(b"12345")
            hot = t._hot
            assert (hot.copy_sends, hot.copy_bytes) == (t.stats.copy_sends, t.stats.copy_bytes)
            assert hot.direct_max == t._direct_max and hot.plain_budget == t._plain_budget
            assert t.stats.as_dict()["copy_bytes"] == t.stats.copy_bytes >= 5
            t.stats.copy_sends += 1
            assert hot.copy_sends == t.stats.copy_sends
        finally:
            pair.close()

    asyncio.run(main())


def test_a_subclass_that_redefines_the_state_keeps_the_python_methods() -> None:
    class Odd(transport_module.ZeroCopyTransport):
        @property
        def _direct_max(self) -> int:  # type: ignore[override]
            return 0

    assert Odd.write is transport_module.PURE_METHODS["write"]
    assert Odd.writelines is transport_module.PURE_METHODS["writelines"]
