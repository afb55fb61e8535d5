"""A peer with a tiny receive buffer gets copies: zero-copy skbs crawl against it (see
transport._MIN_PEER_WINDOW for the measurement)."""

from __future__ import annotations

import asyncio
import socket
import struct

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


async def test_full_window_of_a_slow_reader_keeps_zerocopy() -> None:
    """A peer with a roomy buffer that reads nothing advertises a window of ~0 once full; that
    is back-pressure, not a tiny buffer, and later writes still go zero-copy."""
    pair = await connect_pair(peer_rcvbuf=64 * 1024, fallback_after=1000, probe_first=False)
    try:
        first = pair.transport.write_zc(bytes(1 << 20))
        sock = pair.transport.get_extra_info("socket")
        for _ in range(500):  # the peer's buffer fills; its window closes (tcpi_snd_wnd)
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
            if struct.unpack_from("=I", info, 228)[0] < 32 * 1024:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the stalled peer's window never closed")
        second = pair.transport.write_zc(bytes(256 * 1024))
        received = await asyncio.wait_for(pair.read_all((1 << 20) + 256 * 1024), 120)
        await asyncio.wait_for(asyncio.gather(first, second), 120)
        assert len(received) == (1 << 20) + 256 * 1024
        assert pair.transport.stats.zc_sends >= 2  # the second write went MSG_ZEROCOPY too
    finally:
        pair.close()
