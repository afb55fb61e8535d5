"""The compiled queued zero-copy write_zc() (aiozc/_sys/_core_tcpzc.c) against the Python path it
stands in for (streamheld.py, streamsend.py, base.py): the same random sequences of writes on
both (``path``), on both loops (conftest), with every eligible send zero-copy (loopback reports
each copied, and the policy is told never to fall back); data, futures, counters and the
tracker's state must agree exactly.

Deterministic on purpose: between two "settle" steps the loop does not run, so the peer reads
nothing and no notification comes (on one host a TCP send completes once the receiver read
it); a settle reads everything and waits until every id has been reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tcp_helpers import Pair, connect_pair
from test_transport_cmethods import COMPILED, path, use_path  # noqa: F401  (path: the fixture)

# Every eligible send zero-copy: loopback reports each copied, the policy never falls back.
EVERY_ZC: dict[str, Any] = {"fallback_after": 1 << 62, "probe_first": False}
SIZES = (1, 700, 16 * 1024 - 1, 16 * 1024, 64 * 1024, 200 * 1024)
# Stats that depend on when the kernel merged notifications or when the loop read them.
TIMING_STATS = {"core", "notifications", "errqueue_reads", "extra"}



async def zc_pair(path: str, **options: Any) -> Pair:
    pair = await connect_pair(peer_rcvbuf=8 << 20, **{**EVERY_ZC, **options})
    # Room for a whole burst: the peer reads nothing until the next settle.
    pair.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    use_path(pair, path)
    return pair


async def settle(pair: Pair, sent: int) -> None:
    """Read everything sent so far, then wait until every zero-copy send was reported."""
    await asyncio.wait_for(pair.read_all(sent), 30)
    for _ in range(3000):
        if pair.transport._tracker.outstanding_ids == 0:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("zero-copy notifications never came")


def outcome(pair: Pair, futures: list[asyncio.Future[Any]]) -> dict[str, Any]:
    t = pair.transport
    stats = {k: v for k, v in t.stats.as_dict().items() if k not in TIMING_STATS}
    results = []
    for f in futures:
        if not f.done():
            results.append("pending")
        elif f.cancelled():
            results.append("CancelledError")
        elif f.exception() is not None:
            results.append(type(f.exception()).__name__)
        else:
            c = f.result()
            results.append((c.nbytes, c.zerocopy, c.zc_sends, c.copied_sends))
    tracker = t._tracker
    return {
        "received": hashlib.sha256(pair.received).hexdigest(),
        "results": results,
        "stats": stats,
        "tracker": (tracker.outstanding_ids, tracker.pending_writes, tracker.pinned_bytes),
        "queued": t.get_write_buffer_size(),
    }


# An op: ("zc", size), ("write", size) (bytes: held), ("copy", size) (bytearray), ("settle",)
OPS = st.one_of(
    st.tuples(st.just("zc"), st.sampled_from(SIZES)),
    st.tuples(st.just("write"), st.sampled_from(SIZES)),
    st.tuples(st.just("copy"), st.sampled_from(SIZES)),
    st.tuples(st.just("settle")),
)
OPTIONS = st.fixed_dictionaries({
    "max_pinned_bytes": st.sampled_from([64 * 1024, 300 * 1024, 64 << 20]),
    "errqueue_drain_every": st.sampled_from([1, 3, 32]),
})


async def run_ops(path: str, ops: list[tuple[Any, ...]], options: dict[str, Any], seed: int) -> dict[str, Any]:
    pair = await zc_pair(path, **options)
    futures: list[asyncio.Future[Any]] = []
    sent = 0
    burst = 0
    try:
        for k, op in enumerate(ops):
            if op[0] == "settle" or burst > (1 << 20):
                await settle(pair, sent)
                burst = 0
                if op[0] == "settle":
                    continue
            size = op[1]
            data = bytes([(seed + k) % 251]) * size
            if op[0] == "zc":
                futures.append(pair.transport.write_zc(data))
            elif op[0] == "write":
                pair.transport.write(data)
            else:
                pair.transport.write(bytearray(data))
            sent += size
            burst += size
        await settle(pair, sent)
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        return outcome(pair, futures)
    finally:
        pair.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=24), options=OPTIONS, seed=st.integers(0, 250))
def test_random_writes_agree_with_the_python_path(loop_name: str, ops: list[tuple[Any, ...]],
                                                   options: dict[str, Any], seed: int) -> None:
    if not COMPILED:
        pytest.skip("the compiled core is not in use")
    results = {p: run_on(loop_name, run_ops(p, ops, options, seed)) for p in ("compiled", "pure")}
    assert results["compiled"] == results["pure"]
    assert results["compiled"]["tracker"] == (0, 0, 0)  # nothing left pinned
    assert results["compiled"]["stats"]["pinned_bytes"] == 0


def run_on(loop_name: str, coro: Any) -> Any:
    from aiozc.tools.benchkit import run_on as run

    return run(loop_name, coro)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_the_compiled_path_sends_zero_copy(path: str) -> None:
    """The sequence the tests above compare does go through the C path: no Python send."""
    pair = await zc_pair(path)
    try:
        calls: list[str] = []
        t = pair.transport
        real = t._send_zc

        def counted(write: Any, chunk: memoryview) -> int:
            calls.append("send_zc")
            return real(write, chunk)

        t._send_zc = counted  # type: ignore[method-assign]
        futures = [t.write_zc(bytes(64 * 1024)) for _ in range(8)]
        await settle(pair, 8 * 64 * 1024)
        done = await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert [c.zc_sends for c in done] == [1] * 8
        assert t.stats.zc_sends == 8 and t.stats.zc_writes + t.stats.copy_writes == 8
        # the first send moves the socket into the private epoll: Python's; then C's
        assert len(calls) == (8 if path == "pure" else 1)
    finally:
        pair.close()


@pytest.mark.parametrize("end", ["abort", "close", "peer_reset"])
async def test_sends_in_flight_at_the_end_agree(path: str, end: str) -> None:
    """abort(), close() and a peer reset with zero-copy sends outstanding: the same futures,
    protocol calls and counters on both paths, and nothing left pinned."""
    pair = await zc_pair(path)
    t = pair.transport
    futures = [t.write_zc(bytes([k]) * (64 * 1024)) for k in range(6)]
    if end == "abort":
        t.abort()
    elif end == "close":
        t.close()
        await asyncio.wait_for(pair.read_all(6 * 64 * 1024), 30)
    else:
        pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        pair.peer.close()
        late = t.write_zc(bytes(64 * 1024))  # meets the reset (or queues behind it)
        late.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        await asyncio.wait_for(pair.protocol.lost, 30)
        await asyncio.wait([asyncio.ensure_future(asyncio.sleep(0))])
        got = outcome(pair, futures)
        if end == "close":
            assert got["results"] == [(64 * 1024, False, 1, 1)] * 6
        elif end == "abort":
            assert got["results"] == ["ConnectionAbortedError"] * 6
        assert got["tracker"] == (0, 0, 0) and got["stats"]["pinned_bytes"] == 0
        assert pair.protocol.events[0] == "made" and pair.protocol.events[-1] == "lost"
    finally:
        if end != "peer_reset":
            pair.peer.close()


async def cancelled_run(path: str) -> dict[str, Any]:
    pair = await zc_pair(path)
    try:
        futures = [pair.transport.write_zc(bytes([k]) * (64 * 1024)) for k in range(6)]
        for f in futures[::2]:
            f.cancel()
        await settle(pair, 6 * 64 * 1024)
        await asyncio.sleep(0)
        return outcome(pair, futures)
    finally:
        pair.close()


async def test_cancelled_futures_resolve_alike(path: str) -> None:
    """A write whose future was cancelled still resolves (its buffer released, counted) and the
    others get their results: the compiled resolution against the Python one."""
    got = await cancelled_run(path)
    assert got["results"][::2] == ["CancelledError"] * 3
    assert all(isinstance(r, tuple) and r[0] == 64 * 1024 for r in got["results"][1::2])
    assert got["stats"]["copy_writes"] + got["stats"]["zc_writes"] == 6
    assert got["tracker"] == (0, 0, 0)
    if path == "compiled":
        assert got == await cancelled_run("pure")


async def test_partial_sends_go_on_in_python_and_resolve(path: str) -> None:
    """A small send buffer: the first zero-copy send moves part of its write (the rest waits
    behind it, continued by _zc_continue on the compiled path); every write resolves, the
    counters add up, nothing is left pinned."""
    pair = await connect_pair(**EVERY_ZC)
    t = pair.transport
    t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    use_path(pair, path)
    continued: list[int] = []
    real = t._zc_continue

    def watched(view: memoryview, future: Any, slot: int, sent: int, exc: Any) -> None:
        continued.append(sent)
        real(view, future, slot, sent, exc)

    t._zc_continue = watched  # type: ignore[method-assign]
    try:
        payloads = [bytes([k + 1]) * (512 * 1024) for k in range(4)]
        first = await t.write_zc(b"x" * (64 * 1024))  # (the first zero-copy send: Python's, see above)
        futures = [t.write_zc(p) for p in payloads]
        assert t.get_write_buffer_size() > 0  # the socket did not take it all
        await asyncio.wait_for(pair.read_all(64 * 1024 + 4 * 512 * 1024), 30)
        done = await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert pair.received[64 * 1024:] == b"".join(payloads)
        assert [c.nbytes for c in done] == [512 * 1024] * 4
        stats = t.stats
        assert stats.zc_sends == first.zc_sends + sum(c.zc_sends for c in done)
        assert stats.ids_copied + stats.ids_zerocopy == stats.zc_sends
        assert t._tracker.pending_writes == 0 and stats.pinned_bytes == 0
        assert bool(continued) == (path == "compiled")
    finally:
        pair.close()
