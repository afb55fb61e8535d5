"""Time spent in Python's garbage collections, per process (for ``bench dask``).

A full (generation 2) collection of the client process, which hosts the LocalCluster's
scheduler with its task and log state, took 0.2-0.4 s under load, against ~1 s of CPU for a
whole 2048 x 32 KiB gather: whichever comm is running when one falls due pays it, so the
bench reports them beside the CPU they are part of. Installed in every process of a cluster
(``install()`` here and through ``client.run``), as ``bench_dask_copies``.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

_totals = {"gc_s": 0.0, "full": 0}
_started = threading.local()  # a collection starts and stops in the thread that runs it


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.at = time.thread_time()
        return
    at = getattr(_started, "at", None)
    if at is None:  # installed during a collection
        return
    _started.at = None
    _totals["gc_s"] += time.thread_time() - at
    if info.get("generation") == 2:
        _totals["full"] += 1


def install() -> None:
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)


def uninstall() -> None:
    if _callback in gc.callbacks:
        gc.callbacks.remove(_callback)


def take() -> dict[str, float]:
    """CPU seconds spent collecting and full collections since the last take, then zero them."""
    out = {"gc_s": _totals["gc_s"], "full": float(_totals["full"])}
    _totals["gc_s"] = 0.0
    _totals["full"] = 0
    return out
