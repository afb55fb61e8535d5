"""One suite on one loop, in its own process: ``python -m aiozc.tools.compat.worker ...``.

Writes one JSON line per event to ``--events`` as it goes (``start`` before a test, ``end``
with its outcome after), so that the parent can tell which test hung or crashed the process,
kill it and start again after that test.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time
import traceback
import unittest
from pathlib import Path
from typing import Any, TextIO

from . import loops, suites

# Worst wins when a test reports several results (subtests, errors in tearDown).
RANK = {"pass": 0, "skip": 1, "xfail": 1, "fail": 2, "xpass": 2, "error": 3}


def _summary(err: Any) -> str:
    """The exception line and the innermost frame, enough to classify the failure."""
    exc_type, exc, tb = err
    frames = traceback.extract_tb(tb)
    where = f" [{Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else ""
    text = "".join(traceback.format_exception_only(exc_type, exc)).strip().splitlines()
    return (text[-1] if text else exc_type.__name__)[:300] + where


class EventResult(unittest.TestResult):
    def __init__(self, out: TextIO, timeout: float) -> None:
        super().__init__()
        self._out = out
        self._timeout = timeout
        self._outcome: dict[str, tuple[str, str]] = {}
        self._started: dict[str, float] = {}

    def _emit(self, **event: Any) -> None:
        self._out.write(json.dumps(event) + "\n")
        self._out.flush()

    def _record(self, test: Any, outcome: str, detail: str = "") -> None:
        test_id = test.id()
        old = self._outcome.get(test_id)
        if old is None or RANK[outcome] > RANK[old[0]]:
            self._outcome[test_id] = (outcome, detail)
        if test_id not in self._started:  # setUpClass / module fixture errors
            self._emit(event="end", id=test_id, outcome=outcome, detail=detail, seconds=0.0, reached=False)

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        loops.reached["aiozc"] = False
        self._started[test.id()] = time.monotonic()
        self._emit(event="start", id=test.id())
        # Where a hung test is stuck, in the log, shortly before the parent kills us.
        faulthandler.dump_traceback_later(max(self._timeout - 2, 1), exit=False)

    def stopTest(self, test: unittest.TestCase) -> None:
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        test_id = test.id()
        outcome, detail = self._outcome.pop(test_id, ("pass", ""))
        seconds = time.monotonic() - self._started.pop(test_id)
        self._emit(event="end", id=test_id, outcome=outcome, detail=detail,
                   seconds=round(seconds, 3), reached=loops.reached["aiozc"])

    def addSuccess(self, test: unittest.TestCase) -> None:
        self._record(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "fail", _summary(err))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "error", _summary(err))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self._record(test, "skip", reason[:300])

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "xfail", _summary(err))

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        self._record(test, "xpass")

    def addSubTest(self, test: unittest.TestCase, subtest: Any, err: Any) -> None:
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "fail" if failed else "error", f"{subtest}: {_summary(err)}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aiozc.tools.compat.worker")
    p.add_argument("--suite", required=True, choices=sorted(suites.SUITES))
    p.add_argument("--base", required=True, choices=loops.BASES)
    p.add_argument("--mode", required=True, choices=loops.MODES)
    p.add_argument("--shim", action="store_true")
    p.add_argument("--root", required=True, type=Path, help="prepared test code, first on sys.path")
    p.add_argument("--events", required=True, type=Path)
    p.add_argument("--skip", type=Path, help="file of test ids already done")
    p.add_argument("--only", action="append", default=[], help="run only tests whose id contains this")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--list", action="store_true", help="write the test ids and exit")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    sys.path.insert(0, str(args.root))
    suite = suites.SUITES[args.suite]
    factory = loops.loop_factory(args.base, args.mode, args.shim)
    suites.install(suite, args.base, args.mode, factory)
    tests = suites.load(suite, args.base)
    if args.only:
        tests = [t for t in tests if any(part in t.id() for part in args.only)]
    done = set(args.skip.read_text().split()) if args.skip and args.skip.exists() else set()
    with args.events.open("a") as out:
        # Which aiozc path the suites measure: a stale compiled core is skipped with only a
        # warning, and every TCP/UDP hot path then runs in Python.
        from aiozc._sys import core

        out.write(json.dumps({"event": "core", "path": core.path_in_use()}) + "\n")
        if args.list:
            for test in tests:
                out.write(json.dumps({"event": "listed", "id": test.id()}) + "\n")
            return
        todo = unittest.TestSuite(t for t in tests if t.id() not in done)
        todo.run(EventResult(out, args.timeout))
        out.write(json.dumps({"event": "finished"}) + "\n")


if __name__ == "__main__":
    main()
