"""aiozc.dask end to end: a LocalCluster on zc:// (threads, and worker processes that find the
backend only through the entry point)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
tomllib = pytest.importorskip("tomllib")  # Python 3.11+

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import aiozc.dask  # noqa: E402,F401  (registers zc for the in-process cluster)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def _declared_entry_point() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return project["project"]["entry-points"]["distributed.comm.backends"]["zc"]


@pytest.fixture
def entry_point_path(tmp_path: Path) -> Iterator[str]:
    """A dist-info holding pyproject's entry point, for interpreters started from here: the
    venv's installed metadata may predate it (a worktree imports aiozc through PYTHONPATH)."""
    dist = tmp_path / "aiozc_dask_entry-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aiozc-dask-entry\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[distributed.comm.backends]\nzc = {_declared_entry_point()}\n")
    paths = [str(tmp_path), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    yield os.pathsep.join(paths)


def _pattern(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8)


def _checksum(a: np.ndarray) -> int:
    return int(a.astype(np.uint64).sum())


def _double(a: np.ndarray) -> np.ndarray:
    return a * 2


def _where_and_checksum(a: np.ndarray) -> tuple[str, int]:
    from distributed import get_worker

    return get_worker().address, _checksum(a)


@pytest.mark.parametrize("hop", [True, False], ids=["hop", "socket"])
async def test_local_cluster_submit_gather_scatter_broadcast_rechunk(hop: bool) -> None:
    """Workers in threads on the scheduler's loop: every comm is an in-process hop, or with the
    hop turned off a socket."""
    with dask.config.set({"distributed.comm.zc.hop": hop}):
        await _submit_gather_scatter_broadcast_rechunk(hop)


async def _submit_gather_scatter_broadcast_rechunk(hop: bool) -> None:
    async with LocalCluster(protocol="zc://", processes=False, n_workers=2, threads_per_worker=1,
                            dashboard_address=None, asynchronous=True) as cluster:
        assert cluster.scheduler_address.startswith("zc://")
        async with Client(cluster, asynchronous=True) as client:
            kind = aiozc.dask.HopComm if hop else aiozc.dask.ZCComm
            assert all(type(s.comm) is kind for s in cluster.scheduler.stream_comms.values())
            a, b = sorted(cluster.scheduler.workers)
            assert a.startswith("zc://") and b.startswith("zc://")
            data = _pattern(6 * MiB + 5, 1)
            [remote] = await client.scatter([data], workers=[a])
            # Runs on b: the array goes worker a -> worker b over zc://, and the result back.
            doubled = client.submit(_double, remote, workers=[b], allow_other_workers=False)
            assert await client.submit(_where_and_checksum, doubled, workers=[a]) == (a, _checksum(data * 2))
            assert await client.submit(_where_and_checksum, remote, workers=[b]) == (b, _checksum(data))
            assert np.array_equal(await client.gather(doubled), data * 2)
            [everywhere] = await client.scatter([_pattern(MiB, 2)], broadcast=True)
            assert set((await client.who_has([everywhere]))[everywhere.key]) == {a, b}
            # One cluster start per loop: the rechunks run on the same one.
            x = da.random.default_rng(3).random((1024, 1024), chunks=(1024, 64))
            expected = x.compute(scheduler="sync")
            for method in ["tasks", "p2p"]:
                with dask.config.set({"array.rechunk.method": method}):
                    y = x.rechunk((64, 1024))
                assert np.array_equal(await client.compute(y), expected), method


def test_worker_processes_find_zc_through_the_entry_point(entry_point_path: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Nanny-started workers are fresh interpreters that never import aiozc.dask themselves."""
    monkeypatch.setenv("PYTHONPATH", entry_point_path)
    # multiprocessing's spawn hands the parent's sys.path to the child, over PYTHONPATH.
    monkeypatch.syspath_prepend(entry_point_path.split(os.pathsep)[0])
    with LocalCluster(protocol="zc://", processes=True, n_workers=2, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        assert a.startswith("zc://") and b.startswith("zc://")
        data = _pattern(3 * MiB, 7)
        [remote] = client.scatter([data], workers=[a])
        doubled = client.submit(_double, remote, workers=[b], allow_other_workers=False)
        assert np.array_equal(client.gather(doubled), data * 2)
        _gather_through_the_scheduler_hop(client, a)
        modules = client.run(lambda: sorted(m for m in sys.modules if m.startswith("aiozc.dask")))
        assert all("aiozc.dask.comm" in mods for mods in modules.values())


def _gather_through_the_scheduler_hop(client: Client, worker: str) -> None:
    """The scheduler runs in this process and loop: a gather through it reaches the client over
    the in-process hop, aliasing the scheduler's pooled receive buffers. A second gather, which
    may reuse pooled buffers, must leave the first one's arrays intact."""
    from aiozc.dask import hop

    hop.counts.take()
    first_data = [_pattern(2 * MiB, 20 + i) for i in range(4)]
    first = client.gather(client.scatter(first_data, workers=[worker], direct=False), direct=False)
    assert hop.counts.take()["nbytes"] >= 2 * sum(x.nbytes for x in first_data)
    second = client.gather(client.scatter([_pattern(2 * MiB, 40 + i) for i in range(4)], workers=[worker],
                                          direct=False), direct=False)
    assert all(np.array_equal(x, y) for x, y in zip(first, first_data))
    assert not any(np.array_equal(x, y) for x, y in zip(first, second))


def _start(args: list[str], path: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": path, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=log.parent)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_dask_scheduler_and_worker_cli_on_zc(entry_point_path: str, tmp_path: Path) -> None:
    """`dask scheduler --protocol zc` and `dask worker zc://...`: separate interpreters that find
    zc only through the entry point; two nanny-started worker processes, a transfer between them."""
    import json
    import time

    scheduler_file = tmp_path / "scheduler.json"
    scheduler = _start(["scheduler", "--protocol", "zc", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                       entry_point_path, tmp_path / "scheduler.log")
    workers: list[subprocess.Popen[bytes]] = []  # the `dask worker` process, once started
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no scheduler file after 60 s"
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("zc://127.0.0.1:")
        workers.append(_start(["worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                               "--host", "127.0.0.1"], entry_point_path, tmp_path / "worker.log"))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            a, b = sorted(client.scheduler_info()["workers"])
            assert a.startswith("zc://") and b.startswith("zc://")
            data = _pattern(5 * MiB + 1, 11)
            [remote] = client.scatter([data], workers=[a])
            # Functions the scheduler can unpickle: it cannot import this test module.
            doubled = client.submit(np.add, remote, remote, workers=[b], allow_other_workers=False)
            assert np.array_equal(client.gather(doubled), data + data)
            assert b in client.who_has([doubled])[doubled.key]  # computed on b: a -> b over zc://
    finally:
        for proc in [*workers, scheduler]:
            _stop(proc)
