"""Behaviours the anchors' suites (docs/compat.md) found different from the stock transports,
pinned down here on both loops with our own tests."""

from __future__ import annotations

import asyncio

from tcp_helpers import RecordingProtocol, connect_pair


async def test_write_after_close_is_sent_while_the_queue_still_drains() -> None:
    # asyncio's and uvloop's transports accept write() after close() until their buffer has
    # drained (asyncio's SSLProtocol relies on it: its resume_writing() at close flushes the
    # ciphertext it held back; uvloop's test_remote_shutdown_receives_trailing_data).
    pair = await connect_pair()
    payload = b"a" * (32 << 20)  # more than both socket buffers hold: the rest stays queued
    pair.transport.write(payload)
    assert pair.transport.get_write_buffer_size() > 0
    pair.transport.close()
    pair.transport.write(b"tail")
    received = await asyncio.wait_for(pair.read_until_eof(), 30)
    assert len(received) == len(payload) + 4 and received.endswith(b"tail")
    assert await asyncio.wait_for(pair.protocol.lost, 30) is None
    pair.peer.close()


async def test_write_after_close_with_nothing_queued_is_dropped() -> None:
    # ... and drop it, as both stock loops do, once close() found nothing left to send.
    pair = await connect_pair()
    pair.transport.close()
    pair.transport.write(b"late")
    assert await asyncio.wait_for(pair.read_until_eof(), 30) == b""
    await asyncio.wait_for(pair.protocol.lost, 30)
    pair.peer.close()


class TailOnResume(RecordingProtocol):
    """Writes a tail from resume_writing() during close, as asyncio's SSLProtocol does."""

    def resume_writing(self) -> None:
        super().resume_writing()
        assert self.transport is not None
        if self.transport.is_closing():
            self.transport.write(b"tail")


async def test_write_from_resume_writing_during_close_is_sent() -> None:
    pair = await connect_pair(TailOnResume)
    payload = bytes(32 << 20)  # bytes: may be held zero-copy, pinned until the peer reads
    pair.transport.write(payload)
    assert pair.protocol.events[-1] == "pause"
    pair.transport.close()
    received = await asyncio.wait_for(pair.read_until_eof(), 30)
    assert "resume" in pair.protocol.events
    assert len(received) == len(payload) + 4 and received.endswith(b"tail")
    await asyncio.wait_for(pair.protocol.lost, 30)
    pair.peer.close()
