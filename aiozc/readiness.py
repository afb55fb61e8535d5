"""Socket readiness that survives a pending error queue, on asyncio's loop and on uvloop.

A zero-copy socket reports EPOLLERR whenever its error queue holds a notification. Event loops
handle that badly (measured here): uvloop treats POLLERR as fatal for ``add_reader`` -- the callback
runs once and the handle is closed silently -- and asyncio's selector maps EPOLLERR to "readable and
writable", so a stock transport spins at 100% CPU while the queue is undrained.

So zero-copy sockets are never given to the loop. Each loop gets one private level-triggered epoll
holding them; only the epoll's own fd is registered with ``loop.add_reader`` (an epoll fd is just
readable when it has events, never in error). The multiplexer dispatches EPOLLIN / EPOLLOUT /
EPOLLERR / EPOLLHUP to the socket's handler, which must drain what it is told about, so nothing
spins and an idle socket costs nothing.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from typing import Callable, Protocol

_MAX_EVENTS = 256
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLET = select.EPOLLET


class ReadinessHandler(Protocol):
    def on_readiness(self, events: int) -> None:
        """Called with the epoll event mask of the handler's fd."""


class Multiplexer:
    """One private epoll per event loop; use :meth:`for_loop` rather than the constructor."""

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Multiplexer]" = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll: select.epoll | None = None
        self._handlers: dict[int, ReadinessHandler] = {}
        # handler.on_readiness per fd, bound once: the dispatch loop runs it per event.
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._masks: dict[int, int] = {}
        self.dispatches = 0  # loop callbacks that ran; tests use it to show idle costs nothing

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> Multiplexer:
        mux = cls._by_loop.get(loop)
        if mux is None:
            mux = cls._by_loop[loop] = cls(loop)
        return mux

    @classmethod
    def handler_for(cls, loop: asyncio.AbstractEventLoop, fd: int) -> ReadinessHandler | None:
        """What ``loop``'s multiplexer has registered for ``fd``, if anything."""
        mux = cls._by_loop.get(loop)
        return None if mux is None else mux._handlers.get(fd)

    def __len__(self) -> int:
        return len(self._handlers)

    @staticmethod
    def mask(*, read: bool, write: bool, edge: bool = False) -> int:
        # EPOLLERR and EPOLLHUP are always reported; an empty mask still delivers completions.
        return (EPOLLIN if read else 0) | (EPOLLOUT if write else 0) | (EPOLLET if edge else 0)

    def register(self, fd: int, handler: ReadinessHandler, mask: int) -> None:
        if fd in self._handlers:
            raise RuntimeError(f"fd {fd} is already registered with the aiozc multiplexer")
        epoll = self._open()
        epoll.register(fd, mask)
        self._handlers[fd] = handler
        self._callbacks[fd] = handler.on_readiness
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        if self._masks.get(fd) == mask:
            return
        assert self._epoll is not None
        self._epoll.modify(fd, mask)
        self._masks[fd] = mask

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is None:
            return
        del self._callbacks[fd]
        del self._masks[fd]
        assert self._epoll is not None
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # the fd was closed first; epoll dropped it already
        if not self._handlers:
            self._close()

    def _open(self) -> select.epoll:
        if self._epoll is None:
            self._epoll = select.epoll()
            self._loop.add_reader(self._epoll.fileno(), self._dispatch)
        return self._epoll

    def _close(self) -> None:
        # Closing when idle keeps no fd or loop reader alive after the last transport is gone.
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(epoll.fileno())
            epoll.close()

    def _dispatch(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        self.dispatches += 1
        callbacks = self._callbacks
        for fd, events in epoll.poll(0, _MAX_EVENTS):
            callback = callbacks.get(fd)
            if callback is None:
                continue
            try:
                callback(events)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler(
                    {
                        "message": "aiozc readiness handler failed",
                        "exception": exc,
                        "handler": self._handlers.get(fd),
                    }
                )
