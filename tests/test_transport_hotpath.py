"""The TCP direct path (write(2) / writev(2) on the transport's fd): what it must keep."""

from __future__ import annotations

import asyncio
import gc
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



def _attribute_dict_made(obj: object, attribute: str) -> bool:
    """True once ``obj``'s attributes live in a dict of their own (as in test_web_hotpath)."""
    return any(type(ref) is dict and attribute in ref for ref in gc.get_referents(obj))


async def _write_zc_and_look(loop: asyncio.AbstractEventLoop) -> None:
    assert not _attribute_dict_made(loop, "_ready")
    pair = await connect_pair(local_peer_copy=False)
    try:
        await pair.transport.write_zc(b"z" * 65536)  # type: ignore[attr-defined]
        assert not _attribute_dict_made(loop, "_ready")
    finally:
        pair.close()


def test_a_zero_copy_connection_leaves_the_loops_attributes_inline() -> None:
    """Binding the compiled write_zc asks whether the loop's time() is asyncio's own. Asked
    with ``vars(loop)`` it turned an asyncio loop's inline attribute values into a dict for
    good on the first MSG_ZEROCOPY connection (CPython 3.11), and every method lookup on the
    loop lost its specialisation from then on. (uvloop's loop sets no attributes of its own.)
    A loop class of its own, as in test_web_hotpath: the session's other loops cannot have
    used up its inline attribute names."""
    loop = type("FreshSelectorEventLoop", (asyncio.SelectorEventLoop,), {})()
    try:
        if _attribute_dict_made(loop, "_ready"):
            pytest.skip("this interpreter keeps no inline attribute values to lose here")
        loop.run_until_complete(_write_zc_and_look(loop))
    finally:
        loop.close()
