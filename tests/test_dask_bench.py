"""The pure parts of ``python -m aiozc bench dask`` (the clusters themselves are not run here)."""

from __future__ import annotations

import mmap
import os

import pytest

pytest.importorskip("distributed")

from aiozc.tools import bench_dask  # noqa: E402


def test_proc_counters_see_this_process_work_and_fault() -> None:
    cpu0, faults0 = bench_dask._proc_counters([os.getpid()])
    # A fresh anonymous mapping: a bytearray can reuse heap pages an earlier test already
    # faulted in (the test failed after tests/test_compat_tool.py in the full suite).
    block = mmap.mmap(-1, 16 << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    sum(range(2_000_000))
    cpu1, faults1 = bench_dask._proc_counters([os.getpid()])
    assert faults1 - faults0 >= (16 << 20) // 4096 // 2
    assert cpu1 > cpu0


def test_table_takes_medians_and_ratios_per_case() -> None:
    mib = bench_dask.MiB
    samples = [
        bench_dask.Sample("c", "tcp", 1000 * mib, 2.0, 1.0, 100),
        bench_dask.Sample("c", "tcp", 1000 * mib, 4.0, 3.0, 300),
        bench_dask.Sample("c", "tcp", 1000 * mib, 3.0, 2.0, 200),
        bench_dask.Sample("c", "zc", 1000 * mib, 1.0, 1.0, 0),
    ]
    [row] = bench_dask._table(samples)
    gb = 1000 * mib / 1e9
    assert row["tcp_gbps"] == pytest.approx(gb / 3.0)
    assert row["speed_ratio"] == pytest.approx(3.0)
    assert row["cpu_ratio"] == pytest.approx(0.5)
    assert row["tcp_faults_per_mib"] == pytest.approx(0.2)
    assert row["zc_faults_per_mib"] == 0


def test_table_and_print_show_the_hop_and_the_socket_only_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    mib = bench_dask.MiB
    samples = [
        bench_dask.Sample("c", "tcp", 1000 * mib, 2.0, 1.0, 100),
        bench_dask.Sample("c", "zc", 1000 * mib, 1.0, 1.0, 0, hop_bytes=1000 * mib),
        bench_dask.Sample("c", "zc-socket", 1000 * mib, 4.0, 2.0, 0),
    ]
    [row] = bench_dask._table(samples)
    assert row["speed_ratio"] == pytest.approx(2.0)
    assert row["socket_speed_ratio"] == pytest.approx(0.5)
    assert row["zc_hop_ratio"] == 1.0 and row["zc_socket_hop_ratio"] == 0.0
    bench_dask._print([row], 1)
    table = capsys.readouterr().out.splitlines()
    head = next(line for line in table if line.startswith("case"))
    assert "zc-sock GB/s" in head and "sock/tcp" in head and "hop" in head.split()
    [line] = [line for line in table if line.startswith("c ")]
    assert "2.00x" in line and "0.50x" in line


def test_cases_cover_the_issue_list() -> None:
    kinds = [kind for kind, _, _ in bench_dask.cases(1)]
    assert kinds.count("gather") == 4 and kinds.count("scatter") == 4
    assert "w2w" in kinds and "rechunk" in kinds


def test_cases_are_chosen_by_kind_and_by_part_of_their_name() -> None:
    names = [name for _, name, _ in bench_dask.chosen_cases(1, names=["64x4"])]
    assert names == ["gather 64x4 MiB", "scatter 64x4 MiB"]
    names = [name for _, name, _ in bench_dask.chosen_cases(1, ["gather"], ["64x4", "1x256"])]
    assert names == ["gather 1x256 MiB", "gather 64x4 MiB"]
    assert len(bench_dask.chosen_cases(1)) == len(bench_dask.cases(1)) == 10


def test_the_names_cases_are_chosen_by_are_those_they_report(monkeypatch: pytest.MonkeyPatch) -> None:
    reported = []

    def fake(case: str, nbytes: int, prepare: object, timed: object) -> str:
        reported.append(case)
        return case

    class Fake:
        workers = ["a", "b"]
        measure = staticmethod(fake)

    for _, name, fn in bench_dask.cases(4):
        fn(Fake(), 0)  # type: ignore[arg-type]
        assert reported[-1] == name


async def _send_and_count(protocol: str, arrays: list[object]) -> dict[str, int]:
    import asyncio

    from distributed.comm import connect, listen
    from distributed.protocol import to_serialize

    from aiozc.tools import bench_dask_copies

    got: asyncio.Queue[object] = asyncio.Queue()

    async def handle(comm: object) -> None:
        await got.put(await comm.read())  # type: ignore[attr-defined]

    bench_dask_copies.install()
    try:
        async with listen(f"{protocol}://127.0.0.1:0", handle) as listener:
            comm = await connect(listener.contact_address, **({"zc_hop": False} if protocol == "zc" else {}))
            bench_dask_copies.take()
            await comm.write({"data": [to_serialize(a) for a in arrays]})
            message = await asyncio.wait_for(got.get(), 30)
            counts = bench_dask_copies.take()
            comm.abort()
    finally:
        bench_dask_copies.uninstall()
    import numpy as np

    assert all(np.array_equal(a, b) for a, b in zip(arrays, message["data"]))  # type: ignore[index]
    return counts


@pytest.fixture
def one_mib_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed.comm.tcp import TCP

    import aiozc.dask

    monkeypatch.setattr(aiozc.dask.ZCComm, "max_shard_size", 1 << 20)
    monkeypatch.setattr(TCP, "max_shard_size", 1 << 20)


async def test_copies_counted_tcp_rejoins_sharded_arrays_zc_copies_almost_nothing(one_mib_shards: None) -> None:
    np = pytest.importorskip("numpy")
    arrays = [np.full(3 << 20, i, np.uint8) for i in range(3)]  # 3 shards each
    tcp = await _send_and_count("tcp", arrays)
    zc = await _send_and_count("zc", arrays)
    # dask's tcp comm reads every shard into its own buffer; arrays 2 and 3 are rejoined.
    assert tcp["dask host_array_from_buffers"] == 2 * (3 << 20)
    assert "dask host_array_from_buffers" not in zc
    assert 0 < sum(zc.values()) < (9 << 20) // 100


async def test_copies_counted_tcp_joins_a_message_of_small_arrays() -> None:
    np = pytest.importorskip("numpy")
    arrays = [np.full(32 << 10, i, np.uint8) for i in range(64)]
    tcp = await _send_and_count("tcp", arrays)
    zc = await _send_and_count("zc", arrays)
    assert tcp["tcp message join"] > 64 * (32 << 10)  # the whole message, headers included
    assert sum(zc.values()) < 64 * (32 << 10) // 20


def test_counters_per_process_keep_each_process_apart() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"  # started: idle now
        block = mmap.mmap(-1, 8 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        mine2, theirs2 = bench_dask._per_process([os.getpid(), child.pid])
        for i in range(0, len(block), 4096):
            block[i] = 2  # already faulted: no new fault
        block2 = mmap.mmap(-1, 8 << 20)
        for i in range(0, len(block2), 4096):
            block2[i] = 1
        mine3, theirs3 = bench_dask._per_process([os.getpid(), child.pid])
        assert mine3[1] - mine2[1] >= (8 << 20) // 4096 // 2
        assert theirs3[1] - theirs2[1] < 100  # the idle child did not fault ours
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait()


def test_pool_counts_are_those_of_this_process_pool() -> None:
    import aiozc.dask

    pool = aiozc.dask.receive_pool()
    before = bench_dask._pool_counts()
    buf = pool.acquire(1 << 20)
    del buf
    after = bench_dask._pool_counts()
    assert after["mapped"] + after["reused"] == before["mapped"] + before["reused"] + 1


def test_gc_time_counts_collections_and_full_ones_then_starts_again() -> None:
    import gc

    from aiozc.tools import bench_dask_gc

    garbage = [[i] for i in range(200_000)]  # something for a full collection to walk
    bench_dask_gc.install()
    gc.disable()  # only the collections asked for here
    try:
        bench_dask_gc.take()
        gc.collect()
        gc.collect(0)
        first = bench_dask_gc.take()
        assert first["full"] == 1 and first["gc_s"] > 0, first
        assert bench_dask_gc.take() == {"gc_s": 0.0, "full": 0.0}
    finally:
        gc.enable()
        bench_dask_gc.uninstall()
    del garbage
    gc.collect()
    assert bench_dask_gc.take()["full"] == 0  # uninstalled: not counted


def test_a_sample_reports_gc_time_per_process() -> None:
    sample = bench_dask.Sample("c", "zc", bench_dask.MiB, 1.0, 1.0, 0, {}, [1.0, 1.0], [0, 0], {},
                               [0.25, 0.0], 1)
    assert "gc s 0.250/0.000 full 1" in bench_dask._by_process(sample)
