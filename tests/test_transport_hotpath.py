"""The TCP direct path (write(2) / writev(2) on the transport's fd): what it must keep."""

from __future__ import annotations

import asyncio
import os

import pytest

from aiozc.base import TransportClosedError
from tcp_helpers import connect_pair


async def test_write_after_abort_never_reaches_a_reused_fd() -> None:
    """The direct path writes to the fd number, so it must be shut before the socket closes:
    a later write may not land in whatever file got that number next."""
    pair = await connect_pair()
    fd = pair.transport._fd
    pair.transport.write(b"before")
    pair.transport.abort()
    await asyncio.sleep(0.01)  # the socket closes on a later loop iteration
    read_end, write_end = os.pipe()
    try:
        if write_end != fd:  # the pipe took another number: put one end on the old one
            os.dup2(write_end, fd)
            os.close(write_end)
            write_end = fd
        os.set_blocking(read_end, False)
        pair.transport.write(b"after abort")
        pair.transport.writelines([b"after", b" abort"])
        with pytest.raises(TransportClosedError):
            pair.transport.write_zc(b"after abort")
        try:
            leaked = os.read(read_end, 100)
        except BlockingIOError:
            leaked = b""
        assert leaked == b""
    finally:
        os.close(read_end)
        os.close(write_end)
        pair.peer.close()


async def test_write_zc_future_belongs_to_the_loop_in_every_state() -> None:
    """The direct path's futures are the transport's loop's, resolved at once when sent whole,
    as the queued path's are when the kernel is done."""
    pair = await connect_pair()
    loop = asyncio.get_running_loop()
    try:
        futures = [pair.transport.write_zc(bytes([i]) * 100) for i in range(4)]
        big = pair.transport.write_zc(b"z" * (8 << 20))  # fills the socket: queued, pinned
        for future in futures + [big]:
            assert isinstance(future, asyncio.Future)
            assert future.get_loop() is loop
        for future in futures:
            assert future.done() and future.result().nbytes == 100
        data = await pair.read_all(4 * 100 + (8 << 20))
        assert (await asyncio.wait_for(big, 10)).nbytes == 8 << 20
        assert data[:400] == b"".join(bytes([i]) * 100 for i in range(4))
    finally:
        pair.close()
