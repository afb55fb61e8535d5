"""writelines() sends its items in one sendmsg when none of them goes zero-copy (aiohttp's
headers + body: one system call and one segment, as the stock transports do after a join)."""

from __future__ import annotations

import os

from tcp_helpers import connect_pair


async def test_headers_and_body_leave_in_one_send_call() -> None:
    pair = await connect_pair(engine="copy")
    try:
        head, body = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", os.urandom(100_000)
        sends = pair.transport.stats.copy_sends
        pair.transport.writelines([head, body])
        assert pair.transport.stats.copy_sends == sends + 1
        assert await pair.read_all(len(head) + len(body)) == head + body
    finally:
        pair.close()


async def test_what_the_socket_did_not_take_follows_in_order_and_mutable_items_are_copied() -> None:
    # A small receive buffer: the one sendmsg is partial; the rest is queued by write()'s rules.
    pair = await connect_pair(peer_rcvbuf=4096, engine="copy")
    try:
        head = bytearray(b"head" * 100)
        big = os.urandom(8 << 20)
        tail = bytearray(b"tail" * 1000)
        expected = bytes(head) + big + bytes(tail)
        pair.transport.writelines([head, memoryview(big), tail])
        assert pair.transport.get_write_buffer_size() > 0  # it did not all fit
        tail[:] = b"x" * len(tail)  # asyncio's contract: the caller may reuse it at once
        assert await pair.read_all(len(expected)) == expected
    finally:
        pair.close()


async def test_a_zero_copy_item_keeps_its_own_send() -> None:
    # Probing: the first large immutable write is a zero-copy probe, so no gather.
    pair = await connect_pair(zc_threshold=4096)
    try:
        head, body = b"h" * 100, os.urandom(1 << 20)
        pair.transport.writelines([head, body])
        assert pair.transport.stats.zc_sends >= 1
        assert await pair.read_all(len(head) + len(body)) == head + body
    finally:
        pair.close()


async def test_small_bytes_writes_sent_partly_arrive_whole_and_in_order() -> None:
    # Below the zero-copy threshold, bytes go to send() as they are; a partial send queues
    # the rest (a copy), and later writes queue behind it.
    pair = await connect_pair(peer_rcvbuf=4096, engine="copy")
    try:
        pieces = [os.urandom(8000) for _ in range(1000)]
        for piece in pieces:
            pair.transport.write(piece)
        expected = b"".join(pieces)
        assert await pair.read_all(len(expected)) == expected
    finally:
        pair.close()
