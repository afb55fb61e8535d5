"""A peer with a tiny receive buffer gets copies: zero-copy skbs crawl against it (see
transport._MIN_PEER_WINDOW for the measurement)."""

from __future__ import annotations

import asyncio

from tcp_helpers import connect_pair, sha

WRITE = 64 * 1024
WRITES = 4


async def _send_held_writes(peer_rcvbuf: int | None) -> tuple[object, list[object]]:
    pair = await connect_pair(peer_rcvbuf=peer_rcvbuf)
    try:
        payloads = [bytes([i + 1]) * WRITE for i in range(WRITES)]
        futures = [pair.transport.write_zc(p) for p in payloads]
        # Generous bound, no timing claim: the crawl took ~27 s per 64 KiB and sometimes hung.
        received, *completions = await asyncio.wait_for(
            asyncio.gather(pair.read_all(WRITE * WRITES), *futures), 120
        )
        assert sha(received) == sha(b"".join(payloads))
        return pair.transport.stats, completions
    finally:
        pair.close()


async def test_tiny_peer_receive_buffer_gets_copies_not_zerocopy() -> None:
    stats, completions = await _send_held_writes(peer_rcvbuf=4096)
    assert stats.zc_sends == 0, stats  # before the fix: every write went MSG_ZEROCOPY
    assert stats.copy_bytes == WRITE * WRITES
    assert not any(c.zerocopy for c in completions)  # type: ignore[attr-defined]


async def test_default_peer_still_gets_zerocopy_sends() -> None:
    stats, _ = await _send_held_writes(peer_rcvbuf=None)
    assert stats.zc_sends > 0, stats
