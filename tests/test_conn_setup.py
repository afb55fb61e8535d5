"""What a short connection's set-up makes (connection churn, HTTP without keep-alive): a
transport that only write()s below the zero-copy threshold never needs a completion tracker,
so none is made; the first zero-copy write makes one, and from then on the compiled write_zc
sends through it as it did when the tracker came with the transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiozc
from aiozc._sys import core

from tcp_helpers import RecordingProtocol, connect_pair

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"


def made_tracker(transport: Any) -> bool:
    return "_tracker" in vars(transport)


async def test_an_accepted_connection_that_only_writes_makes_no_tracker() -> None:
    seen: list[Any] = []
    closed = asyncio.get_running_loop().create_future()

    class Respond(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            seen.append(made_tracker(transport))

        def data_received(self, data: bytes) -> None:
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]
            seen.append(made_tracker(self.transport))
            self.transport.close()

        def connection_lost(self, exc: BaseException | None) -> None:
            seen.append(made_tracker(self.transport))
            closed.set_result(self.transport)

    server = await aiozc.create_server(Respond, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        assert await reader.read() == RESPONSE
        writer.close()
        transport = await asyncio.wait_for(closed, 10)
    finally:
        server.close()
        await server.wait_closed()
    # Made, wrote, closed (close asks whether completions are owed: none, without a tracker).
    assert seen == [False, False, False]
    stats = transport.stats
    assert (stats.zc_sends, stats.pinned_bytes, stats.reason) == (0, 0, "")
    assert transport.get_write_buffer_size() == 0


async def test_a_client_that_only_writes_makes_no_tracker() -> None:
    pair = await connect_pair()
    try:
        pair.transport.write(b"x" * 100)
        assert await pair.read_all(100) == b"x" * 100
        assert not made_tracker(pair.transport)
        pair.transport.close()
        await asyncio.wait_for(pair.protocol.lost, 10)
        assert not made_tracker(pair.transport)
    finally:
        pair.peer.close()


@pytest.mark.parametrize("size", [256, 256 * 1024])
async def test_the_first_write_zc_makes_the_tracker_and_resolves(size: int) -> None:
    pair = await connect_pair()
    try:
        payload = bytes(range(256)) * (size // 256)
        futures = [pair.transport.write_zc(payload) for _ in range(3)]
        assert await pair.read_all(3 * size) == payload * 3
        completions = await asyncio.wait_for(asyncio.gather(*futures), 10)
        assert [c.nbytes for c in completions] == [size] * 3
        if size > pair.transport._options.zc_threshold:
            assert made_tracker(pair.transport)
            assert pair.transport.stats.zc_sends > 0
            if core.compiled and pair.transport._hot is not None:
                # bound to the compiled write_zc once made (as when made with the transport)
                assert pair.transport._tracker._tokens is not None
    finally:
        pair.close()


async def test_a_large_write_makes_the_tracker_and_sends_it_zero_copy() -> None:
    pair = await connect_pair()
    try:
        payload = bytes(range(256)) * 1024  # 256 KiB: at or above the threshold, held
        pair.transport.write(payload)
        assert await pair.read_all(len(payload)) == payload
        assert made_tracker(pair.transport)
        assert pair.transport.stats.zc_sends > 0
    finally:
        pair.close()


async def test_abort_with_no_tracker_reports_connection_lost() -> None:
    pair = await connect_pair(RecordingProtocol)
    try:
        pair.transport.abort()
        assert await asyncio.wait_for(pair.protocol.lost, 10) is None
        assert not made_tracker(pair.transport)
    finally:
        pair.peer.close()


async def test_a_new_transports_stats_are_transport_stats_defaults() -> None:
    # _HotStats.fresh fills a new transport's stats without the dataclass __init__: every
    # field must hold TransportStats' default (factories called per instance), but for what
    # the transport itself sets at construction (engine, and the policy's state and reason).
    import dataclasses

    from aiozc.stats import TransportStats

    pair = await connect_pair()
    try:
        stats = pair.transport.stats
        expected = TransportStats(engine=stats.engine, state=stats.state, reason=stats.reason)
        assert dataclasses.asdict(stats) == dataclasses.asdict(expected)
        other = await connect_pair()
        try:
            assert other.transport.stats.extra is not stats.extra  # a dict of its own each
        finally:
            other.transport.close()
            other.peer.close()
    finally:
        pair.transport.close()
        pair.peer.close()
