"""Leaving the loop's selector removes only what the multiplexer registered there: a socket
watched for reading only is not asked off the writers (uvloop's remove_writer of an fd with no
writer still costs ~2.8k instructions per accepted connection's close, callgrind)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiozc import readiness


async def test_unregister_removes_only_the_reader_it_added(monkeypatch: Any) -> None:
    loop = asyncio.get_running_loop()
    mux = readiness.Multiplexer.for_loop(loop)
    calls: list[str] = []
    base = mux._base
    for name in ("remove_reader", "remove_writer"):
        real = getattr(base, name)

        def counted(loop: Any, fd: int, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(loop, fd)

        monkeypatch.setattr(base, name, counted)
    a, b = socket.socketpair()
    try:
        class Handler:
            def on_readiness(self, events: int) -> None:
                pass

        mux.register(a.fileno(), Handler(), readiness.EPOLLIN, on_loop=True)
        assert mux.is_on_loop(a.fileno())
        mux.unregister(a.fileno())
        assert calls == ["remove_reader"]
    finally:
        a.close()
        b.close()
