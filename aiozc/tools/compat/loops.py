"""The loops the suites run on: stock asyncio / uvloop, and the same with aiozc transports.

``aiozc`` mode uses ``aiozc.new_event_loop(base=...)`` once it exists. Until then (or with
``shim=True``) a subclass of the base loop whose ``create_connection``, ``create_server``,
``connect_accepted_socket`` and ``create_datagram_endpoint`` call aiozc's functions with the
arguments exactly as the caller gave them; ``sendfile`` and ``start_tls`` stay the base loop's.

Every routed method is wrapped so that the worker can tell whether a test reached aiozc.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from typing import Any

import uvloop

import aiozc

BASES = ("asyncio", "uvloop")
MODES = ("stock", "aiozc")
ROUTED = (
    "create_connection",
    "create_server",
    "connect_accepted_socket",
    "create_datagram_endpoint",
    "sendfile",
    "start_tls",
)

# Set by every routed method of an aiozc loop; the worker clears it before each test.
reached = {"aiozc": False}


class _AiozcShimMethods:
    """What aiozc.new_event_loop() will provide, built from aiozc's module-level functions."""

    async def create_connection(self, protocol_factory: Any, host: Any = None, port: Any = None, **kw: Any) -> Any:
        return await aiozc.create_connection(protocol_factory, host, port, **kw)

    async def create_server(self, protocol_factory: Any, host: Any = None, port: Any = None, **kw: Any) -> Any:
        return await aiozc.create_server(protocol_factory, host, port, **kw)

    async def connect_accepted_socket(self, protocol_factory: Any, sock: socket.socket, **kw: Any) -> Any:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        return await aiozc.create_connection(protocol_factory, sock=sock, **kw)

    async def create_datagram_endpoint(self, protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None, **kw: Any) -> Any:
        return await aiozc.create_datagram_endpoint(protocol_factory, local_addr, remote_addr, **kw)


class ShimAsyncioLoop(_AiozcShimMethods, asyncio.SelectorEventLoop):  # type: ignore[misc]
    pass


class ShimUvloopLoop(_AiozcShimMethods, uvloop.Loop):  # type: ignore[misc]
    pass


def real_loop_available() -> bool:
    return hasattr(aiozc, "new_event_loop")


def _mark_routed(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    """Wrap the loop's routed methods (only those aiozc defines) so calls are recorded."""
    for name in ROUTED:
        method = getattr(loop, name, None)
        func = getattr(method, "__func__", None)
        if method is None or func is None or not getattr(func, "__module__", "").startswith("aiozc"):
            continue

        def wrapper(method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def call(*args: Any, **kwargs: Any) -> Any:
                reached["aiozc"] = True
                return method(*args, **kwargs)

            return call

        setattr(loop, name, wrapper(method))
    return loop


def loop_factory(base: str, mode: str, shim: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument factory of the loop for (base, mode)."""
    if base not in BASES or mode not in MODES:
        raise ValueError(f"unknown base/mode {base!r}/{mode!r}")
    if mode == "stock":
        return asyncio.SelectorEventLoop if base == "asyncio" else uvloop.new_event_loop
    if shim or not real_loop_available():
        cls = ShimAsyncioLoop if base == "asyncio" else ShimUvloopLoop
        return lambda: _mark_routed(cls())
    return lambda: _mark_routed(aiozc.new_event_loop(base=base))  # type: ignore[attr-defined]


def describe(mode: str, shim: bool) -> str:
    if mode == "stock":
        return "stock"
    if shim or not real_loop_available():
        return "aiozc (shim: base loop subclass calling aiozc.create_connection etc.)"
    return "aiozc (aiozc.new_event_loop)"
