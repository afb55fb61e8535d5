"""Command line: ``python -m aiozc probe | demo | bench NAME``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

# bench name -> module with add_arguments(parser) and run(args) -> dict (prints its own table)
BENCHES = {
    "tcp": "aiozc.tools.bench_tcp",
    "udp-sink": "aiozc.tools.bench_udp",
    "aiohttp": "aiozc.tools.bench_web",
    "tensors": "aiozc.tools.bench_tensors",
    "recv": "aiozc.tools.bench_recv",
    "instructions": "aiozc.tools.bench_instructions",
    "dask": "aiozc.tools.bench_dask",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aiozc", description="aiozc: zero-copy asyncio transports")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("probe", help="what this machine offers for zero-copy sends")
    demo = commands.add_parser("demo", help="write_zc beside stock TCP on both loops, then UDP zero-copy into a sink")
    importlib.import_module("aiozc.tools.demo").add_arguments(demo)
    bench = commands.add_parser("bench", help="side-by-side benchmarks")
    benches = bench.add_subparsers(dest="bench", required=True)
    for name, module_name in BENCHES.items():
        sub = benches.add_parser(name)
        sub.add_argument("--out", type=Path, help="write NAME.json and NAME.png into this directory")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            sub.set_defaults(unavailable=f"{name}: {exc}")
            continue
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def _bench(args: argparse.Namespace) -> None:
    if getattr(args, "unavailable", None):
        raise SystemExit(f"benchmark unavailable: {args.unavailable}")
    result: dict[str, Any] = args.module.run(args)
    if args.out is not None:
        from .tools.report import write_report

        # a bench may name its report itself (bench tcp --vm: "tcp-vm", beside "tcp")
        written = write_report(args.out, result.get("report_name", args.bench), result)
        print("wrote " + ", ".join(str(p) for p in written))


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "probe":
        importlib.import_module("aiozc.tools.probe").main()
    elif args.command == "demo":
        importlib.import_module("aiozc.tools.demo").run(args)
    else:
        _bench(args)


if __name__ == "__main__":
    main(sys.argv[1:])
