"""aiozc.dask's receive pool: which idle buffers it keeps when its cap is reached."""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")

from aiozc.dask.pool import ReceivePool, size_class  # noqa: E402

MiB = 1 << 20


def _message(pool: ReceivePool, count: int, nbytes: int) -> None:
    """What one received message does to the pool: buffers taken, written, then let go."""
    buffers = [pool.acquire(nbytes) for _ in range(count)]
    for buf in buffers:
        np.frombuffer(buf, np.uint8)[:] = 1
    del buffers


def test_a_full_pool_makes_room_for_the_current_workload_by_dropping_the_oldest() -> None:
    """A pool full of an earlier workload's big buffers still reuses the next workload's small
    ones (bench dask: the client's pool full of 256 MiB buffers after a gather of 4 x 256 MiB
    kept no 32 KiB buffer after it, and every later message faulted them in again)."""
    pool = ReceivePool(max_idle_bytes=4 * MiB)
    _message(pool, 4, MiB)  # the earlier workload fills the cap
    assert pool.idle_bytes == 4 * MiB
    for _ in range(3):
        _message(pool, 32, 32 << 10)
    assert pool.mapped == 4 + 32  # the small buffers were made once, then reused
    assert pool.reused == 2 * 32
    assert pool.evicted == 1 and pool.idle_bytes == 3 * MiB + 32 * size_class(32 << 10)


def test_eviction_takes_the_longest_idle_first_and_reuse_the_latest() -> None:
    pool = ReceivePool(max_idle_bytes=2 * MiB)
    first, second = pool.acquire(MiB), pool.acquire(MiB)
    second_address = np.frombuffer(second, np.uint8).ctypes.data
    del first
    del second  # idle: first, then second
    third = pool.acquire(MiB)
    assert np.frombuffer(third, np.uint8).ctypes.data == second_address  # the warmest
    del third  # idle: first, then the second's region again
    other = pool.acquire(2 * MiB - 4096)
    del other  # needs the whole cap: both 1 MiB regions go, oldest first
    assert pool.evicted == 2 and pool.idle_bytes == size_class(2 * MiB - 4096)
    mapped = pool.mapped
    again = pool.acquire(MiB)
    assert pool.mapped == mapped + 1 and again.nbytes == MiB  # nothing of that class was left


def test_a_buffer_larger_than_the_cap_is_dropped_and_evicts_nothing() -> None:
    pool = ReceivePool(max_idle_bytes=2 * MiB)
    _message(pool, 2, MiB)
    _message(pool, 1, 4 * MiB)
    assert pool.idle_bytes == 2 * MiB and pool.evicted == 0


def test_huge_page_buffers_are_evicted_before_small_ones() -> None:
    """Made again, a small buffer faults per 4 KiB page, a huge-page one per 2 MiB: at the cap
    the big ones go first, even when the small ones are older (bench dask's cycle of 4 x 256
    MiB, 64 x 4 MiB and 2048 x 32 KiB messages evicted every 32 KiB buffer under plain LRU)."""
    pool = ReceivePool(max_idle_bytes=5 * MiB)
    _message(pool, 32, 32 << 10)  # 1 MiB of small buffers, idle first
    _message(pool, 2, 4 * MiB)  # the second 4 MiB buffer needs room: the first goes
    assert pool.evicted == 1 and pool.idle_bytes == 5 * MiB
    mapped = pool.mapped
    _message(pool, 32, 32 << 10)
    assert pool.mapped == mapped  # every small buffer reused
