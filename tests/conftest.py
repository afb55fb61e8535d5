"""Every async test runs twice: on asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

# The network-namespace rig's fixtures (sink_ns, enobufs_sink, veth_pair) for every module.
pytest_plugins = ["rig"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.SelectorEventLoop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True, scope="module")
def _environment_restored_after_each_module() -> object:
    """What a module leaves in os.environ and sys.path goes with it. distributed's Nanny puts
    its pre-spawn environment (MALLOC_TRIM_THRESHOLD_=65536) into os.environ and its workers'
    scratch directories onto sys.path; every later test that starts an interpreter with
    ``dict(os.environ)`` then ran with glibc's dynamic mmap threshold switched off (an
    explicitly set trim threshold disables it), which test_streamread_syscalls measures."""
    import os
    import sys

    environ, path = dict(os.environ), list(sys.path)
    yield
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:] = path
