"""The compiled queued copy write (aiozc/_sys/_core_tcpq.c: write() behind a queue, and _flush)
against the Python path it stands in for (transport.py, streamheld.py): the same random
sequences of writes and peer reads on both (``path``), on both loops; the bytes received, the
protocol's pause/resume calls, get_write_buffer_size() after every step and the counters must
agree exactly.

Deterministic on purpose: the loop does not run between steps (so no EPOLLOUT flush comes at
an unknown point); a "read" step has the peer read a fixed amount, then calls _write_ready()
as the loop would on EPOLLOUT. The send and receive buffers are small, so writes queue and
flushes move part of a segment.
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

SIZES = (1, 700, 16 * 1024 - 1, 16 * 1024, 64 * 1024, 200 * 1024)
TIMING_STATS = {"core", "notifications", "errqueue_reads", "extra"}

# An op: ("write", size) (bytes: held), ("view", size) (a memoryview of bytes: held),
# ("copy", size) (bytearray: copied into the queue), ("zc", size) (write_zc), ("read", size)
OPS = st.one_of(
    st.tuples(st.sampled_from(["write", "view", "copy", "zc"]), st.sampled_from(SIZES)),
    st.tuples(st.just("read"), st.sampled_from([1, 4096, 64 * 1024, 1 << 20])),
)


async def paced_pair(path: str) -> Pair:
    # local_peer_copy: the policy copies every write (copy-fallback), the direct path is open
    pair = await connect_pair(peer_rcvbuf=64 * 1024, local_peer_copy=True)
    pair.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    pair.transport.set_write_buffer_limits(high=128 * 1024, low=32 * 1024)
    pair.peer.setblocking(False)
    use_path(pair, path)
    return pair


def peer_read(pair: Pair, nbytes: int) -> None:
    while nbytes > 0:
        try:
            chunk = pair.peer.recv(min(nbytes, 1 << 20))
        except BlockingIOError:
            return
        if not chunk:
            return
        pair.received += chunk
        nbytes -= len(chunk)


async def run_ops(path: str, ops: list[tuple[str, int]], seed: int) -> dict[str, Any]:
    pair = await paced_pair(path)
    t = pair.transport
    futures: list[asyncio.Future[Any]] = []
    steps: list[int] = []
    sent = 0
    try:
        for k, (kind, size) in enumerate(ops):
            if kind == "read":
                peer_read(pair, size)
                t._write_ready()  # what the loop calls on EPOLLOUT
            else:
                data = bytes([(seed + k) % 251]) * size
                if kind == "write":
                    t.write(data)
                elif kind == "view":
                    t.write(memoryview(data)[size // 3:])
                    size -= size // 3
                elif kind == "copy":
                    t.write(bytearray(data))
                else:
                    futures.append(t.write_zc(data))
                sent += size
            steps.append(t.get_write_buffer_size())
        events = list(pair.protocol.events)
        await asyncio.wait_for(pair.read_all(sent), 30)
        done = await asyncio.wait_for(asyncio.gather(*futures), 30)
        stats = {k: v for k, v in t.stats.as_dict().items() if k not in TIMING_STATS}
        return {
            "received": hashlib.sha256(pair.received).hexdigest(),
            "nbytes": len(pair.received),
            "steps": steps,
            "events": events,
            "final_events": list(pair.protocol.events),
            "results": [(c.nbytes, c.zerocopy) for c in done],
            "stats": stats,
            "queued": t.get_write_buffer_size(),
        }
    finally:
        pair.close()


def run_on(loop_name: str, coro: Any) -> Any:
    from aiozc.tools.benchkit import run_on as run

    return run(loop_name, coro)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=30), seed=st.integers(0, 250))
def test_random_queued_writes_agree_with_the_python_path(loop_name: str, ops: list[tuple[str, int]],
                                                         seed: int) -> None:
    if not COMPILED:
        pytest.skip("the compiled core is not in use")
    results = {p: run_on(loop_name, run_ops(p, ops, seed)) for p in ("compiled", "pure")}
    assert results["compiled"] == results["pure"]
    assert results["compiled"]["queued"] == 0


async def test_the_compiled_path_queues_and_flushes_in_c(path: str) -> None:
    """A paced sequence does go through the C path: no Python _queue_rest, _write_queued,
    _hold, _send_head or _send_gathered for plain held writes; pause_writing and resume_writing still come."""
    pair = await paced_pair(path)
    t = pair.transport
    calls: list[str] = []
    for name in ("_queue_rest", "_write_queued", "_hold", "_send_head", "_send_gathered"):
        real = getattr(t, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        setattr(t, name, counted)
    try:
        payload = bytes(range(256)) * 256  # 64 KiB
        for _ in range(16):
            t.write(payload)
        assert t.get_write_buffer_size() > 128 * 1024 and pair.protocol.events[-1] == "pause"
        while t.get_write_buffer_size():
            peer_read(pair, 1 << 20)
            t._write_ready()
        assert pair.protocol.events[-1] == "resume"
        await asyncio.wait_for(pair.read_all(16 * len(payload)), 30)
        assert bytes(pair.received) == payload * 16
        if path == "pure":
            # (the flush sends the queued segments gathered, the last one alone)
            assert {"_queue_rest", "_write_queued", "_hold", "_send_gathered"} <= set(calls)
        else:
            assert calls == []
    finally:
        pair.close()
