"""Every script in examples/ runs as its docstring shows and exits 0 (its own checks passed).

examples/aiohttp_server.py + aiohttp_client.py run in tests/test_web.py
(test_examples_end_to_end) and examples/udp_pool.py in tests/test_datagram_batch.py; the
rest run here, with small sizes, on both loops where the script offers both.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
COVERED_ELSEWHERE = {"aiohttp_server.py", "aiohttp_client.py", "udp_pool.py"}

CASES = [
    ("event_loop.py", ["--size-mib", "2"]),
    ("event_loop.py", ["--size-mib", "2", "--base", "asyncio"]),
    ("stream_file.py", ["--mib", "16"]),
    ("stream_file.py", ["--mib", "16", "--uvloop"]),
    ("tensor_stream.py", ["--size-mib", "4", "--count", "4"]),
    ("tensor_stream.py", ["--size-mib", "4", "--count", "4", "--loop", "asyncio"]),
    ("dask_arrays.py", ["--side", "1024", "--workers", "2"]),
]
NEEDS = {"tensor_stream.py": "numpy", "dask_arrays.py": "distributed"}


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    root = str(EXAMPLES.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=240)


def test_every_example_is_run_somewhere() -> None:
    here = {script for script, _ in CASES}
    on_disk = {p.name for p in EXAMPLES.glob("*.py")}
    assert on_disk - here - COVERED_ELSEWHERE == set()


@pytest.mark.parametrize(("script", "args"), CASES, ids=[" ".join([s, *a]) for s, a in CASES])
def test_example_runs(script: str, args: list[str]) -> None:
    module = NEEDS.get(script)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    done = _run(script, args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_help(script: str) -> None:
    """The usage line each docstring shows matches the script's own options."""
    done = _run(script, ["--help"])
    assert done.returncode == 0, done.stderr[-2000:]
