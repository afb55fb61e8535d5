"""The compiled core's PinSet (aiozc/_sys/_core_pins.c): a batch's buffer exports and its sendmmsg."""

from __future__ import annotations

import asyncio
import socket

import pytest

from aiozc._sys import core as _core
from aiozc._sys import mmsg as _mmsg
from aiozc.datagram._common import PinSet, set_results

pytestmark = pytest.mark.skipif(not _core.compiled, reason=f"compiled core not in use: {_core.why_pure}")


def test_exports_are_held_until_release() -> None:
    pins = PinSet()
    a, b = bytearray(b"a" * 10), bytearray(b"b" * 20)
    assert pins.add(a) == 10 and pins.add(b) == 20 and pins.add(b"cc") == 2
    assert len(pins) == 3 and pins.sizes() == [10, 20, 2] and pins.nbytes == 32
    with pytest.raises(BufferError):
        a.extend(b"x")  # exported: may not be resized
    pins.release()
    assert len(pins) == 0 and pins.nbytes == 0 and pins.sizes() == []
    a.extend(b"x")
    b.clear()


def test_refuses_what_memoryview_refuses() -> None:
    pins = PinSet()
    with pytest.raises(TypeError):
        pins.add(42)
    with pytest.raises(BufferError):
        pins.add(memoryview(bytearray(8))[::2])  # not C-contiguous
    assert len(pins) == 0


def test_take_moves_the_exports() -> None:
    pins = PinSet()
    buf = bytearray(4)
    pins.add(buf)
    moved = pins.take()
    assert len(pins) == 0 and len(moved) == 1 and moved.sizes() == [4]
    del pins
    with pytest.raises(BufferError):
        buf.append(0)  # still held by the set it moved to
    del moved
    buf.append(0)


def test_sendmmsg_sends_the_range_in_order() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        left.setblocking(False)
        pins = PinSet()
        for k in range(5):
            pins.add(bytes([k]) * (k + 1))
        assert pins.sendmmsg(left.fileno(), 1, 4, 0) == 3
        assert [right.recv(64) for _ in range(3)] == [b"\x01" * 2, b"\x02" * 3, b"\x03" * 4]
        # The same call through MmsgSender, which hands a PinSet to it.
        assert _mmsg.MmsgSender(2).send(left.fileno(), pins, pins.sizes(), 3, 5, 0) == 2
        assert [right.recv(64) for _ in range(2)] == [b"\x03" * 4, b"\x04" * 5]
        with pytest.raises(IndexError):
            pins.sendmmsg(left.fileno(), 2, 2, 0)
        with pytest.raises(IndexError):
            pins.sendmmsg(left.fileno(), 0, 6, 0)
        pins.release()


def test_sendmmsg_reports_the_first_datagrams_errno() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    right.close()
    with left:
        pins = PinSet()
        pins.add(b"x")
        assert pins.sendmmsg(left.fileno(), 0, 1, 0) < 0
        pins.release()


def test_set_results_skips_cancelled_futures() -> None:
    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(4)]
        futures[1].cancel()
        set_results(futures, "done")
        return [f.cancelled() or f.result() for f in futures]

    assert asyncio.run(main()) == ["done", True, "done", "done"]


def test_uniform_and_longest_follow_the_exports() -> None:
    pins = PinSet()
    assert (pins.uniform, pins.maxlen) == (0, 0)
    pins.extend([bytearray(8), b"12345678", memoryview(bytearray(8))])
    assert (len(pins), pins.uniform, pins.maxlen, pins.nbytes) == (3, 8, 8, 24)
    pins.add(b"x" * 20)
    assert (pins.uniform, pins.maxlen) == (-1, 20)
    pins.release()
    assert (pins.uniform, pins.maxlen, pins.nbytes) == (0, 0, 0)


def test_extend_keeps_what_it_pinned_before_a_bad_buffer() -> None:
    pins = PinSet()
    good = bytearray(4)
    with pytest.raises(TypeError):
        pins.extend([good, 42, bytearray(4)])
    assert len(pins) == 1 and pins.sizes() == [4]
    with pytest.raises(BufferError):
        good.append(0)  # still exported: the caller releases
    pins.release()
    good.append(0)


def test_split_hands_over_the_first_exports() -> None:
    bufs = [bytearray(n) for n in (3, 5, 5, 5)]
    pins = PinSet()
    pins.extend(bufs)
    head = pins.split(1)
    assert head.sizes() == [3] and (head.uniform, head.maxlen, head.nbytes) == (3, 3, 3)
    assert pins.sizes() == [5, 5, 5] and (pins.uniform, pins.maxlen, pins.nbytes) == (5, 5, 15)
    head.release()
    bufs[0].append(0)  # its export ended with the set it went to
    with pytest.raises(BufferError):
        bufs[1].append(0)
    assert len(pins.split(0)) == 0 and len(pins) == 3
    whole = pins.split(3)
    assert len(pins) == 0 and len(whole) == 3
    with pytest.raises(IndexError):
        whole.split(4)
    whole.release()


def test_addresses_are_the_buffers_own() -> None:
    bufs = [bytearray(16), bytearray(16)]
    pins = PinSet()
    pins.extend(bufs)
    want = [int(_core.ffi.cast("uintptr_t", _core.ffi.from_buffer(b))) for b in bufs]
    assert pins.addresses() == want
    pins.release()
