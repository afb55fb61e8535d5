"""Dask arrays over aiozc's zc:// comms: the only change from tcp:// is the protocol string.

    python examples/dask_arrays.py                    # 2 worker processes, zc://
    python examples/dask_arrays.py --protocol tcp     # the same on dask's own tcp comm
    python examples/dask_arrays.py --side 4096 --workers 2

Needs the extra: ``pip install 'aiozc[dask]'``. Worker processes find ``zc://`` through the
``distributed.comm.backends`` entry point that installing aiozc declares; nothing imports
aiozc.dask here. What it does: builds a random array on the workers, rechunks it from column
strips to row strips (every chunk crosses between workers), gathers a 256 MiB block to the
client, scatters it back, and prints each step's time and the data checks.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

MiB = 1 << 20


def timed(label: str, nbytes: int, step: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    print(f"{label:<40} {seconds:7.3f} s  {nbytes / seconds / 1e9:6.2f} GB/s")
    return result


def persisted(client: Client, collection: Any) -> Any:
    """``collection`` computed on the workers, returned once it is there."""
    result = client.persist(collection)
    wait(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="zc", choices=["zc", "tcp"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--side", type=int, default=8192, help="the array is side x side float64")
    args = parser.parse_args()

    with LocalCluster(protocol=f"{args.protocol}://", n_workers=args.workers, threads_per_worker=1,
                      processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        print(f"scheduler {cluster.scheduler_address}, workers {sorted(client.scheduler_info()['workers'])}")
        side = args.side
        x = persisted(client, da.random.default_rng(0).random((side, side), chunks=(side, side // 16)))
        expected = float(x.sum().compute())
        nbytes = side * side * 8

        rows = timed(f"rechunk {side}x{side} f8 (cols -> rows)", nbytes,
                     lambda: persisted(client, x.rechunk((side // 16, side))))
        total = float(rows.sum().compute())
        assert np.isclose(total, expected), (total, expected)

        block = side * side // 16 * 8
        local = timed("gather one row strip to the client", block, lambda: rows.blocks[3].compute())
        assert np.array_equal(local, x[3 * (side // 16) : 4 * (side // 16)].compute())
        [back] = timed("scatter it back to a worker", block, lambda: client.scatter([local]))
        assert np.array_equal(client.submit(np.copy, back).result(), local)
        print("all checks passed")


if __name__ == "__main__":
    main()
