"""Runs a worker per (suite, base, mode) and survives tests that hang or kill the process.

A test with no result after ``timeout`` seconds is recorded as ``hang``; a worker that dies
mid-test records ``crash``. Either way a new worker continues after that test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sources import Source

MAX_RESTARTS = 40


@dataclass
class Run:
    suite: str
    base: str
    mode: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    log: str = ""
    core: str = ""
    """aiozc._sys.core.path_in_use() in the worker: "compiled" or "pure-python (why)"."""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for result in self.results.values():
            out[result["outcome"]] = out.get(result["outcome"], 0) + 1
        return out


def _read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    with path.open() as f:
        f.seek(offset)
        data = f.read()
    complete = data[: data.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line], offset + len(complete)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _spawn(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    # In the cache: CPython's tests leave @test_PID_tmp files in their working directory.
    # The aiozc being measured stays first on the path.
    package_root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
    with log.open("ab") as out:
        # Own process group: a hung test's helper threads and children go with it.
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=cwd, env=env)


def _worker_cmd(run: Run, source: Source, events: Path, skip: Path, timeout: float,
                shim: bool, only: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "aiozc.tools.compat.worker", "--suite", run.suite,
           "--base", run.base, "--mode", run.mode, "--root", str(source.root),
           "--events", str(events), "--skip", str(skip), "--timeout", str(timeout)]
    cmd += ["--shim"] if shim else []
    for part in only:
        cmd += ["--only", part]
    return cmd


def run_suite(run: Run, source: Source, workdir: Path, *, timeout: float = 30.0,
              shim: bool = False, only: list[str] | None = None) -> Run:
    tag = f"{run.suite.replace('/', '_').replace(':', '_')}-{run.base}-{run.mode}"
    events, skip, log = (workdir / f"{tag}.{ext}" for ext in ("events", "skip", "log"))
    for path in (events, skip, log):
        path.unlink(missing_ok=True)
    events.touch()
    started_at = time.monotonic()
    offset = 0
    for _ in range(MAX_RESTARTS):
        proc = _spawn(_worker_cmd(run, source, events, skip, timeout, shim, only or []), log, workdir)
        current: str | None = None
        last_progress = time.monotonic()
        finished = False
        progressed = False
        while True:
            new, offset = _read_events(events, offset)
            progressed = progressed or bool(new)
            for event in new:
                last_progress = time.monotonic()
                if event["event"] == "start":
                    current = event["id"]
                elif event["event"] == "end":
                    run.results[event["id"]] = {k: event[k] for k in ("outcome", "detail", "seconds", "reached")}
                    current = None
                elif event["event"] == "core":
                    run.core = event["path"]
                elif event["event"] == "finished":
                    finished = True
            if finished or proc.poll() is not None:
                break
            if current is not None and time.monotonic() - last_progress > timeout:
                _kill(proc)
                run.results[current] = {"outcome": "hang", "detail": f"no result after {timeout:.0f} s",
                                        "seconds": timeout, "reached": True}
                current = None
                break
            time.sleep(0.1)
        proc.wait()
        if finished:
            break
        if current is not None:  # the process died during this test
            run.results[current] = {"outcome": "crash", "detail": f"worker exited {proc.returncode}",
                                    "seconds": 0.0, "reached": True}
        elif not progressed:
            break  # died before any test: import error etc., see the log
        skip.write_text("\n".join(run.results) + "\n")
    if not run.results:
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        run.results["(the suite did not load)"] = {"outcome": "crash", "detail": "".join(last)[:300],
                                                  "seconds": 0.0, "reached": False}
    run.seconds = round(time.monotonic() - started_at, 1)
    run.log = str(log)
    return run
