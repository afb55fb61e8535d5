"""The private epoll's lifetime and deferred registration (readiness, issue #10's connection churn).

The epoll opens with the first socket that needs it and closes with the loop, not with its last
socket (opened and closed per connection it cost 9 system calls on uvloop); a socket registered
with ``defer=True`` is in no epoll until its first ``modify``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from aiozc.readiness import EPOLLIN, Multiplexer
from aiozc.tools.benchkit import new_loop

LOOPS = ["asyncio", "uvloop"]


class _Handler:
    def __init__(self) -> None:
        self.events: list[int] = []

    def on_readiness(self, events: int) -> None:
        self.events.append(events)


def eventpoll_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]":
                found.add(int(name))
        except OSError:
            pass  # the listdir fd itself
    return found


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_private_epoll_outlives_its_last_socket_and_closes_with_the_loop(loop_name: str) -> None:
    before = eventpoll_fds()
    loop = new_loop(loop_name)
    base = eventpoll_fds()  # and the loop's own
    a, b = socket.socketpair()
    try:
        mux = Multiplexer.for_loop(loop)
        mux.register(a.fileno(), _Handler(), 0)  # in the private epoll (not on_loop)
        opened = eventpoll_fds() - base
        assert opened, "no epoll opened"
        mux.unregister(a.fileno())
        assert len(mux) == 0
        assert eventpoll_fds() - base == opened, "the epoll closed with its last socket"
        mux.register(b.fileno(), _Handler(), 0)  # the same epoll again: nothing opened
        assert eventpoll_fds() - base == opened
        mux.unregister(b.fileno())
    finally:
        loop.close()
        a.close()
        b.close()
    assert eventpoll_fds() - before == set(), "the private epoll outlived its loop"
    assert Multiplexer.for_loop(loop).epoll_fd is None


@pytest.mark.parametrize("loop_name", LOOPS)
def test_loop_close_with_sockets_still_registered_closes_the_epoll(loop_name: str) -> None:
    before = eventpoll_fds()
    loop = new_loop(loop_name)
    a, b = socket.socketpair()
    mux = Multiplexer.for_loop(loop)
    mux.register(a.fileno(), _Handler(), EPOLLIN)
    loop.close()
    assert eventpoll_fds() - before == set()
    mux.unregister(a.fileno())  # a transport closing late: no error, nothing reopened
    assert eventpoll_fds() - before == set() and len(mux) == 0
    a.close()
    b.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_deferred_socket_is_in_no_epoll_until_its_first_modify(loop_name: str) -> None:
    loop = new_loop(loop_name)
    before = eventpoll_fds()  # the loop's own included
    a, b = socket.socketpair()
    try:
        mux = Multiplexer.for_loop(loop)
        handler = _Handler()
        mux.register(a.fileno(), handler, 0, defer=True)
        assert Multiplexer.handler_for(loop, a.fileno()) is handler and len(mux) == 1
        assert mux.epoll_fd is None and eventpoll_fds() - before == set(), "an epoll opened"
        b.send(b"x")
        mux.modify(a.fileno(), EPOLLIN)  # placed now: the private epoll (not on_loop)
        assert mux.epoll_fd is not None and not mux.is_on_loop(a.fileno())
        loop.run_until_complete(_until(lambda: handler.events))
        assert handler.events[0] & EPOLLIN
        mux.unregister(a.fileno())
        mux.register(b.fileno(), _Handler(), 0, defer=True)
        mux.unregister(b.fileno())  # never placed: nothing to remove
        assert len(mux) == 0
    finally:
        loop.close()
        a.close()
        b.close()


async def _until(condition: object) -> None:
    import time

    deadline = time.monotonic() + 5
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)


class _FdOnlyLoop(asyncio.SelectorEventLoop):
    """A loop whose add_reader keeps the fd number only, not the object it was given."""

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        super().add_reader(fd if isinstance(fd, int) else fd.fileno(), callback, *args)


def test_a_loop_that_keeps_only_fd_numbers_gets_the_epoll_closed_with_its_last_socket() -> None:
    loop = _FdOnlyLoop()
    before = eventpoll_fds()
    a, b = socket.socketpair()
    try:
        mux = Multiplexer.for_loop(loop)
        mux.register(a.fileno(), _Handler(), 0)
        assert mux.epoll_fd is not None and eventpoll_fds() - before
        mux.unregister(a.fileno())
        assert mux.epoll_fd is None and eventpoll_fds() - before == set()
    finally:
        loop.close()
        a.close()
        b.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_loop_object_is_not_patched(loop_name: str) -> None:
    loop = new_loop(loop_name)
    a, b = socket.socketpair()
    try:
        Multiplexer.for_loop(loop).register(a.fileno(), _Handler(), 0)
        # (CPython 3.11: an instance attribute more can cost the loop its inline attributes,
        # tests/test_web_hotpath.py)
        assert loop.close == getattr(type(loop), "close").__get__(loop)
        Multiplexer.for_loop(loop).unregister(a.fileno())
    finally:
        loop.close()
        a.close()
        b.close()
