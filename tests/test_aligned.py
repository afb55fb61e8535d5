"""Aligned receive memory: aiozc.buffers.aligned_buffer / alignment_of and the tensor
channel's destination arrays (issue #14 point 3). Async tests run on both loops."""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import AsyncIterator

import numpy as np
import pytest

from aiozc import buffers, tensors
from aiozc.tensors import receive as tensor_receive
from tensor_helpers import Pair, open_pair

PAGE = mmap.PAGESIZE


def address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


# ---------------------------------------------------------------------------------------------
# aiozc.buffers


@pytest.mark.parametrize("nbytes", [1, 100, PAGE, 256 * 1024 + 3])
def test_aligned_buffer_is_page_aligned_writable_and_zeroed(nbytes: int) -> None:
    buf = buffers.aligned_buffer(nbytes)
    assert len(buf) == nbytes and not buf.readonly
    assert buffers.alignment_of(buf) == PAGE
    assert bytes(buf) == bytes(nbytes)
    buf[-1:] = b"x"
    assert buf[-1] == ord("x")


def test_aligned_buffer_refuses_empty() -> None:
    with pytest.raises(ValueError):
        buffers.aligned_buffer(0)


def test_alignment_of_measures_the_start_address() -> None:
    buf = buffers.aligned_buffer(2 * PAGE)
    assert buffers.alignment_of(buf[64:]) == 64
    assert buffers.alignment_of(buf[16:]) == 16
    assert buffers.alignment_of(buf[PAGE:]) == PAGE
    assert buffers.alignment_of(buf[1:]) == 1


# ---------------------------------------------------------------------------------------------
# tensors.aligned_empty


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((1 << 18,), "<f4"), ((3, 5), ">f8"), ((), "<i8"), ((0,), "<f4"), ((7, 3), "?"),
     ((1000,), np.dtype([("x", "<f4"), ("y", ">i8")])), ((64, 64), "<c16"), (4097, "u1")],
)  # fmt: skip
def test_aligned_empty_is_an_ordinary_aligned_array(shape: object, dtype: object) -> None:
    array = tensors.aligned_empty(shape, dtype)
    expected = np.empty(shape, dtype)
    assert array.shape == expected.shape and array.dtype == expected.dtype
    assert array.flags.c_contiguous and array.flags.writeable
    want = PAGE if array.nbytes >= PAGE else 64
    if array.nbytes:
        assert address(array) % want == 0
    array.reshape(-1).view(np.uint8)[...] = 7  # the whole array is writable memory of its own
    assert array.tobytes() == bytes([7]) * array.nbytes


# ---------------------------------------------------------------------------------------------
# the channel's destinations


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = await open_pair()
    yield p
    await p.aclose()


@pytest.mark.parametrize("count", [1, 4096, 1 << 20])
async def test_received_arrays_are_aligned(pair: Pair, count: int) -> None:
    # np.empty put 1 MiB bodies 16 bytes past a page (glibc's mmap chunk header): fails before.
    sent = np.arange(count, dtype=np.float32)
    # Send and receive at once: a large send completes only once the peer took it in.
    _, got = await asyncio.wait_for(asyncio.gather(pair.client.send(sent), pair.peer.recv()), 10)
    assert np.array_equal(got, sent)
    want = PAGE if got.nbytes >= PAGE else 64
    assert address(got) % want == 0, address(got) % PAGE


async def test_read_ahead_arrays_are_aligned(pair: Pair) -> None:
    # Frames that arrive while no recv() waits are received into arrays the channel makes.
    arrays = [np.full(1 << 14, i, np.float32) for i in range(3)]  # 64 KiB: under read-ahead limits
    sends = [pair.client.send_nowait(a) for a in arrays]
    await asyncio.wait_for(asyncio.gather(*sends), 10)  # complete: the peer read them ahead
    for a in arrays:
        got = await asyncio.wait_for(pair.peer.recv(), 10)
        assert np.array_equal(got, a) and address(got) % PAGE == 0


async def test_out_array_is_filled_in_place_whatever_its_alignment(pair: Pair) -> None:
    # recv(out=) keeps its contract: the caller's array, even an unaligned one.
    out = np.empty(1 << 18, np.float32)
    sent = np.arange(1 << 18, dtype=np.float32)
    _, got = await asyncio.wait_for(asyncio.gather(pair.client.send(sent), pair.peer.recv(out=out)), 10)
    assert got is out and np.array_equal(out, sent)


def test_scratch_buffers_are_aligned() -> None:
    scratch = tensor_receive._take_scratch()
    try:
        assert buffers.alignment_of(scratch) == PAGE
    finally:
        tensor_receive._give_back_scratch(scratch)
