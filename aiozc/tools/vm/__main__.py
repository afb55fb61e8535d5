"""``python -m aiozc.tools.vm test | run``: see the package docstring."""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from . import GUEST_OUT, Unavailable, python_in_guest, run_in_guest

# One boot runs every guest test; measured ~4-6 min under TCG on the shared 2 cores.
DEFAULT_TIMEOUT = 1200


def _test(args: argparse.Namespace) -> int:
    command = python_in_guest(
        ["-m", "pytest", "tests/vm", "-p", "no:cacheprovider", f"--junitxml={GUEST_OUT}/junit.xml", "-q", "-o", "timeout=600", *args.pytest_args]
    )
    try:
        run = run_in_guest(command, timeout=args.timeout, stream=True)
    except Unavailable as exc:
        print(f"SKIPPED: guest VM tests cannot run here: {exc}")
        return 0
    print(f"\naiozc-vm: guest run took {run.seconds:.0f} s; results in {run.out}")
    junit = run.out / "junit.xml"
    if args.junitxml and junit.exists():
        Path(args.junitxml).write_bytes(junit.read_bytes())
    if run.rc is None:
        print("aiozc-vm: the guest did not finish the job; its console ends with:\n" + run.console[-3000:])
        return 2
    counts = _junit_counts(junit)
    if counts:
        print("aiozc-vm: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        if counts.get("tests", 0) == 0 or counts.get("skipped", 0) == counts.get("tests", 0):
            print("aiozc-vm: no guest test ran: that is a failure of the rig")
            return 3
    return run.rc


def _junit_counts(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root.find("testsuite") if root.tag == "testsuites" else root
    assert suite is not None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _run(args: argparse.Namespace) -> int:
    try:
        run = run_in_guest(args.command, timeout=args.timeout, stream=True)
    except Unavailable as exc:
        print(f"SKIPPED: the guest cannot run here: {exc}")
        return 0
    if run.rc is None:
        print("aiozc-vm: the guest did not finish; console:\n" + run.console[-3000:])
        return 2
    return run.rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiozc.tools.vm")
    commands = parser.add_subparsers(dest="command_name", required=True)
    test = commands.add_parser("test", help="run tests/vm inside the guest")
    test.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    test.add_argument("--junitxml", help="copy the guest's junit xml here")
    test.set_defaults(func=_test)
    run = commands.add_parser("run", help="run a command inside the guest")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=_run)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command_name != "test":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.pytest_args = extra  # test: anything else goes to pytest inside the guest
    if args.command_name == "run" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
