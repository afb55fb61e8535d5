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


def test_cases_cover_the_issue_list() -> None:
    kinds = [name for name, _ in bench_dask.cases(1)]
    assert kinds.count("gather") == 4 and kinds.count("scatter") == 4
    assert "w2w" in kinds and "rechunk" in kinds
