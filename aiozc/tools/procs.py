"""Ending the child processes the rigs start (netns.py's popen, the guest's QEMU and peer)."""

from __future__ import annotations

import subprocess
from typing import Any

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL, and after SIGKILL


def stop_process(proc: subprocess.Popen[Any], *, grace: float | None = None) -> None:
    """End ``proc`` by its own PID if it still runs: SIGTERM, SIGKILL after ``grace`` s; reaped.

    Never its process group or anything by name: only the child this process started.
    """
    if proc.poll() is not None:
        return
    grace = STOP_GRACE if grace is None else grace
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)
