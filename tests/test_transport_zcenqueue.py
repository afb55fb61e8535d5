"""write_zc() behind a queue, or while the policy copies: the compiled path (_core_tcpzc.c
tz_enqueue) makes the view and the future in C and calls _enqueue_held directly, where the pure
path goes through _write_zc_queued; behind a queue it does _hold's work itself (tz_hold). Both paths (``path``), both loops (conftest): the same
futures, data and counters.

Deterministic: the peer reads nothing until ``drain``, so with a small send buffer the writes
after the first few wait in the queue (on one host nothing completes until the peer reads).
"""

from __future__ import annotations

import array
import asyncio
import socket
from typing import Any

import pytest

from tcp_helpers import Pair, connect_pair
from test_transport_cmethods import COMPILED, path, use_path  # noqa: F401  (path: the fixture)
from test_transport_zcqueue import loop_name, outcome, run_on, settle  # noqa: F401  (loop_name: the fixture)

SIZES = (1, 700, 16 * 1024, 64 * 1024, 200 * 1024)
STABLE_STATS = ("copy_writes", "copy_bytes", "zc_sends", "zc_bytes", "zc_writes", "pinned_bytes", "state")


async def full_pair(path: str, **options: Any) -> Pair:
    """A pair in copy-fallback (local_peer_copy) whose send buffer is full: write_zc() queues."""
    pair = await connect_pair(peer_rcvbuf=64 * 1024, local_peer_copy=True, **options)
    t = pair.transport
    t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    use_path(pair, path)
    t.set_write_buffer_limits(high=1 << 30)
    t.write(bytes(4 << 20))  # more than the socket takes: the rest waits in the queue
    assert t.get_write_buffer_size() > 0
    return pair


def spy(t: Any, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(t, name)

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    setattr(t, name, counted)
    return calls


async def test_a_queued_write_zc_skips_the_python_entry(path: str) -> None:
    pair = await full_pair(path)
    t = pair.transport
    try:
        entered, held = spy(t, "_write_zc_queued"), spy(t, "_hold")
        futures = [t.write_zc(bytes([k]) * n) for k, n in enumerate(SIZES)]
        loop = asyncio.get_running_loop()
        assert all(type(f) is asyncio.Future and f.get_loop() is loop and not f.done() for f in futures)
        assert len(entered) == len(held) == (len(SIZES) if path == "pure" else 0)
        total = (4 << 20) + sum(SIZES)
        await settle(pair, total)
        done = await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert [(c.nbytes, c.zerocopy) for c in done] == [(n, False) for n in SIZES]
        assert pair.received[4 << 20:] == b"".join(bytes([k]) * n for k, n in enumerate(SIZES))
    finally:
        pair.close()


async def test_the_pause_comes_at_the_same_write(path: str) -> None:
    """_maybe_pause_protocol's rule: the first write that takes the queue above the high-water
    mark pauses the protocol, once."""
    pair = await full_pair(path)
    t = pair.transport
    try:
        t._high_water = t.get_write_buffer_size() + 100_000
        seen = []
        for _ in range(4):
            t.write_zc(bytes(64 * 1024))
            seen.append(pair.protocol.events.count("pause"))
        assert seen == [0, 1, 1, 1]
    finally:
        pair.close()


async def test_an_error_on_the_way_reaches_the_caller(path: str) -> None:
    pair = await full_pair(path)
    t = pair.transport
    try:
        def refused() -> None:
            raise RuntimeError("refused")

        t._high_water = 0  # a pause due: _maybe_pause_protocol runs
        t._maybe_pause_protocol = refused  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="refused"):
            t.write_zc(bytes(64 * 1024))
    finally:
        pair.close()


async def test_a_typed_buffer_is_cast_as_python_casts_it(path: str) -> None:
    """Another format than "B" goes to Python's byte_view (the C side does not cast)."""
    pair = await full_pair(path)
    t = pair.transport
    try:
        data = array.array("i", range(1000))
        future = t.write_zc(data)
        await settle(pair, (4 << 20) + len(data) * data.itemsize)
        assert (await asyncio.wait_for(future, 30)).nbytes == len(data) * data.itemsize
        assert pair.received[4 << 20:] == data.tobytes()
    finally:
        pair.close()


async def queued_run(path: str, seed: int) -> dict[str, Any]:
    pair = await full_pair(path)
    t = pair.transport
    futures: list[asyncio.Future[Any]] = []
    sent = 4 << 20
    try:
        for k in range(24):
            size = SIZES[(seed + 3 * k) % len(SIZES)]
            data = bytes([(seed + k) % 251]) * size
            if k % 4 == 3:
                t.write(data)
            else:
                futures.append(t.write_zc(data))
            sent += size
        await settle(pair, sent)
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        got = outcome(pair, futures)
        # How many send calls the copies took depends on when the peer read: not compared.
        got["stats"] = {k: got["stats"][k] for k in STABLE_STATS}
        return got
    finally:
        pair.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_queued_writes_agree_with_the_python_path(loop_name: str, seed: int) -> None:  # noqa: F811
    if not COMPILED:
        pytest.skip("the compiled core is not in use")
    results = {p: run_on(loop_name, queued_run(p, seed)) for p in ("compiled", "pure")}
    assert results["compiled"] == results["pure"]
    assert results["compiled"]["tracker"] == (0, 0, 0)
