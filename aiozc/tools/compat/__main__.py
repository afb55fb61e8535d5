"""``python -m aiozc.tools.compat``: uvloop's and CPython's asyncio suites, stock vs aiozc.

Runs every selected suite on asyncio's and uvloop's loop, first as they are and then through
the aiozc loop, and rewrites the generated part of docs/compat.md (and docs/compat.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from . import doc, loops, runner, sources, suites


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aiozc.tools.compat", description=__doc__)
    p.add_argument("--suite", action="append", choices=sorted(suites.SUITES),
                   help="default: all of them")
    p.add_argument("--base", action="append", choices=loops.BASES, help="default: both")
    p.add_argument("--mode", action="append", choices=loops.MODES, help="default: both")
    p.add_argument("--only", action="append", default=[], help="only tests whose id contains this")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds without a result before a test counts as hung (default 20)")
    p.add_argument("--shim", action="store_true",
                   help="use the loop-subclass shim even where aiozc.new_event_loop exists")
    p.add_argument("--cache", type=Path, default=sources.DEFAULT_CACHE)
    p.add_argument("--render", action="store_true",
                   help="run nothing: rewrite the doc from docs/compat.json (after editing reasons.py)")
    p.add_argument("--doc", type=Path, default=Path("docs/compat.md"),
                   help="markdown file whose generated block is rewritten ('-': print only)")
    return p


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "aiozc"], capture_output=True, text=True).stdout
        return out.stdout.strip() + (" (uncommitted changes in aiozc/)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _header(srcs: dict[str, sources.Source], shim: bool, seconds: float, timeout: float) -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"Last run: {now}, aiozc {_commit()}, Python {sys.version.split()[0]}, "
        f"{len(srcs)} source(s): " + "; ".join(s.version for s in srcs.values()) + ".",
        f"aiozc loop: {loops.describe('aiozc', shim)}. Per-test timeout {timeout:.0f} s. "
        f"Whole run: {seconds:.0f} s.",
        f"Left out: {suites.EXCLUDED_WHY}.",
    ]


def _merged(path: Path, runs: list[runner.Run]) -> list[runner.Run]:
    """The runs of an earlier (full) run, with those rerun now replaced."""
    fresh = {(r.suite, r.base, r.mode) for r in runs}
    old = json.loads(path.read_text()) if path.exists() else []
    kept = [runner.Run(d["suite"], d["base"], d["mode"], d["results"], d["seconds"], core=d.get("core", ""))
            for d in old if (d["suite"], d["base"], d["mode"]) not in fresh and d["suite"] in suites.SUITES]
    return kept + runs


def _render(path: Path) -> None:
    runs = _merged(path.with_suffix(".json"), [])
    old = path.read_text() if path.exists() else ""
    # keep the header lines of the run that produced the json
    block = old.split(doc.BEGIN, 1)[1] if doc.BEGIN in old else ""
    header = [line for line in block.strip().splitlines()[:6] if line.startswith(("Last run", "aiozc loop", "Left out", "Partial", "aiozc path"))]
    doc.write(path, doc.generated(runs, header))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.render:
        _render(args.doc)
        return
    chosen = [suites.SUITES[n] for n in (args.suite or suites.SUITES)]
    prepare = {"uvloop": sources.uvloop_tests, "cpython": sources.cpython_tests}
    srcs = {name: prepare[name](args.cache) for name in sorted({s.source for s in chosen})}
    workdir = args.cache / "runs"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    runs: list[runner.Run] = []
    for suite in chosen:
        for base in [b for b in args.base or loops.BASES if b in suite.bases()]:
            for mode in args.mode or loops.MODES:
                run = runner.run_suite(runner.Run(suite.name, base, mode), srcs[suite.source], workdir,
                                       timeout=args.timeout, shim=args.shim, only=args.only)
                print(f"{suite.name:32} {base:8} {mode:6} {doc._cell(run.counts()):28} "
                      f"{run.seconds:6.1f} s  {run.core:10} log {run.log}", flush=True)
                runs.append(run)
    header = _header(srcs, args.shim, time.monotonic() - started, args.timeout)
    header.append("aiozc path in the workers: " + (", ".join(sorted({r.core or "unknown" for r in runs}))) + ".")
    if str(args.doc) == "-":
        print(doc.generated(runs, header))
        return
    fresh = list(runs)
    runs = _merged(args.doc.with_suffix(".json"), runs)
    if len(runs) > len(fresh):
        header.append("Partial rerun: the runs not selected this time are kept from docs/compat.json.")
    doc.write(args.doc, doc.generated(runs, header))
    data = [{"suite": r.suite, "base": r.base, "mode": r.mode, "seconds": r.seconds, "core": r.core,
             "results": r.results}
            for r in runs]
    args.doc.with_suffix(".json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.doc} and {args.doc.with_suffix('.json')}")


if __name__ == "__main__":
    main()
