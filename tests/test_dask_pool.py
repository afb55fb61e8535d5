"""aiozc.dask's receive pool: which idle buffers it keeps when its cap is reached."""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")

from aiozc.dask.pool import MAPPED_MIN, ReceivePool, size_class  # noqa: E402

MiB = 1 << 20


def _faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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
    # nothing of that class was left: the idle 2 MiB region is cut in two
    assert pool.mapped == mapped and pool.carved == 1 and again.nbytes == MiB


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


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def _address(buf: memoryview) -> int:
    return np.frombuffer(buf, np.uint8).ctypes.data


def test_an_idle_big_buffer_is_carved_into_smaller_ones_and_whole_again_after() -> None:
    """bench dask's cycle: the client's pool full of 256 MiB buffers after gathers of 4 x 256
    MiB, then each gather of 64 x 4 MiB mapped 128 fresh buffers (the kernel zeroing 512 MiB
    a gather) and reused none. Idle big buffers now serve the smaller ones."""
    pool = ReceivePool(max_idle_bytes=64 * MiB)
    big = pool.acquire(32 * MiB)
    start = _address(big)
    np.frombuffer(big, np.uint8)[:] = 1
    del big
    faults = _faults()
    slices = [pool.acquire(4 * MiB) for _ in range(8)]
    for buf in slices:
        assert start <= _address(buf) < start + 32 * MiB
        np.frombuffer(buf, np.uint8)[:] = 2
    assert _faults() - faults < 64  # its pages were resident: 1024 faults if made again
    assert pool.mapped == 1 and pool.carved == 1 and pool.reused == 8
    del slices, buf
    assert pool.outstanding == 0 and pool.idle_bytes == 32 * MiB
    again = pool.acquire(32 * MiB)  # whole again once every slice is back
    assert _address(again) == start and pool.mapped == 1


def test_a_slice_in_use_keeps_its_big_buffer_carved_and_the_rest_serve_smaller_ones() -> None:
    pool = ReceivePool(max_idle_bytes=64 * MiB)
    _message(pool, 1, 32 * MiB)
    slices = [pool.acquire(4 * MiB) for _ in range(8)]
    kept = slices[3]
    del slices
    more = [pool.acquire(4 * MiB) for _ in range(7)]
    assert pool.mapped == 1 and pool.carved == 1  # the seven idle slices served these
    del more
    whole = pool.acquire(32 * MiB)
    assert pool.mapped == 2  # the big one is still carved: one slice is in use
    del whole, kept
    assert pool.outstanding == 0


def test_an_evicted_slice_is_given_back_to_the_kernel_and_its_big_buffer_dropped_once_free() -> None:
    pool = ReceivePool(max_idle_bytes=32 * MiB)
    _message(pool, 1, 32 * MiB)
    slices = [pool.acquire(4 * MiB) for _ in range(8)]
    kept = slices.pop()
    del slices  # 28 MiB of idle slices
    rss = _rss_anon()
    _message(pool, 1, 8 * MiB)  # made fresh; 4 MiB more room needed: the oldest idle slice goes
    assert _rss_anon() - rss <= 6 * MiB  # 8 MiB faulted in, the slice's 4 MiB given back
    assert pool.evicted == 1 and pool.idle_bytes == 24 * MiB + size_class(8 * MiB)
    del kept  # the big buffer has holes now: dropped, not kept whole
    assert pool.outstanding == 0 and pool.idle_bytes == size_class(8 * MiB)
    mapped = pool.mapped
    _message(pool, 1, 32 * MiB)
    assert pool.mapped == mapped + 1


def test_a_slightly_bigger_idle_buffer_serves_a_request_of_a_smaller_class() -> None:
    pool = ReceivePool(max_idle_bytes=64 * MiB)
    bigger = pool.acquire(4 * MiB + 1)  # the next class up
    address = _address(bigger)
    del bigger
    buf = pool.acquire(4 * MiB)
    assert _address(buf) == address and buf.nbytes == 4 * MiB
    assert pool.mapped == 1 and pool.carved == 0
    del buf
    assert pool.idle_bytes == size_class(4 * MiB + 1)


def test_big_buffers_are_carved_only_into_a_bounded_number_of_slices() -> None:
    pool = ReceivePool(max_idle_bytes=256 * MiB)
    _message(pool, 1, 128 * MiB)
    buf = pool.acquire(MAPPED_MIN)  # 512 slices of 256 KiB: made fresh instead
    assert pool.carved == 0 and pool.mapped == 2
    del buf


def test_a_buffer_let_go_while_the_pool_is_locked_is_taken_back_after_without_waiting() -> None:
    """A weakref callback that waited for the pool's lock deadlocked when a garbage collection
    started inside a locked section of the same thread (carving allocates 64 regions there);
    from another thread it stalled a dask worker thread behind the event loop."""
    import threading

    pool = ReceivePool(max_idle_bytes=64 * MiB)
    held = [pool.acquire(MiB)]
    with pool._lock:  # what a collection inside acquire() looks like to the callback
        thread = threading.Thread(target=held.clear)
        thread.start()
        thread.join(5)
        waited = thread.is_alive()
        assert pool._handed  # not taken back yet: the lock is held
    thread.join()
    assert not waited
    assert pool.outstanding == 0 and pool.idle_bytes == MiB  # taken back by the next holder
    again = pool.acquire(MiB)
    assert pool.reused == 1 and again.nbytes == MiB


def test_buffers_let_go_from_many_threads_all_come_back() -> None:
    import threading

    pool = ReceivePool(max_idle_bytes=256 * MiB)
    _message(pool, 1, 64 * MiB)
    for _ in range(20):
        buffers = [[pool.acquire(2 * MiB)] for _ in range(16)]
        threads = [threading.Thread(target=b.clear) for b in buffers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert pool.outstanding == 0
    assert pool.idle_bytes == 64 * MiB and pool.mapped == 1
