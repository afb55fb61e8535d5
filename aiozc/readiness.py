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

A socket whose error queue cannot fill yet (no zero-copy send made, or every notification read)
may instead sit in the loop's own selector while it is read: the hop through the private epoll
costs a nested epoll_wait per wake-up (measured, one sequential HTTP client on uvloop: 7 system
calls per request against stock's 6). ``register``/``modify`` with ``on_loop=True`` do that; the
owner passes ``on_loop=False`` before its first zero-copy send and while it does not read (a
selector cannot watch for errors alone, and an error must still be seen then).
- asyncio's selector loop: registered as asyncio's own transports register theirs
  (``loop._add_reader``); EPOLLERR there is harmless (it reads as readable and writable).
- uvloop: ``loop.add_reader``/``add_writer``, and the fd stays in the private epoll with an
  empty mask, a sentinel that reports only EPOLLERR and EPOLLHUP. uvloop's poll handle, on
  POLLERR (a reset, or a notification no one expected), runs its callbacks once and closes
  itself, silently (measured); the sentinel's event then moves the fd back into the private
  epoll with its mask and hands the event to the handler, which reads what is left and the
  error, as it would have there. A socket whose sentinel fired stays private, and so does one
  that left uvloop's selector 8 times (each return costs ~6 system calls: a new poll handle).

Per connection, nothing is paid twice (issue #10, connection churn: strace of an accepted
connection that reads a request, writes a response and closes). The private epoll is opened with
the first socket that needs it and closed with the loop (when ``loop.close`` drops its
selector's readers), not with the last socket: on uvloop an epoll opened and closed per connection cost epoll_create1, close, its
``add_reader``/``remove_reader`` (6 epoll_ctl and an ioctl, libuv's poll handle). A socket given
with ``defer=True`` enters no epoll until its owner first says what to watch (:meth:`modify`):
a transport before ``connection_made`` watches nothing, and the loop's selector takes it then.

Where the compiled core is in use, the loop's reader for the private epoll is its
``Dispatcher`` (``_sys/_core_recv.c``): the same poll and per-fd dispatch as ``_dispatch``, in C,
calling a TCP transport's compiled ``Reader`` directly.
"""

from __future__ import annotations

import asyncio
import functools
import select
import sys
from asyncio import selector_events
import weakref
from typing import Any, Callable, Protocol

from ._sys.recv import Dispatcher as _CompiledDispatcher
from ._sys.recv import Reader as _CompiledReader

try:
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency
    _uvloop = None  # type: ignore[assignment]

_MAX_EVENTS = 256
# uvloop: a socket that left its selector this often (paused, zero-copy sends) stays private.
_MAX_UVLOOP_RETURNS = 8
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
        # Weakly: _by_loop's value must not keep its key alive (a strong reference here kept
        # every loop that ever used aiozc, and with it a uvloop Loop's 256 KiB read buffer).
        self._loop_ref = weakref.ref(loop)
        self._epoll: select.epoll | None = None
        self._handlers: dict[int, ReadinessHandler] = {}
        # handler.on_readiness per fd, bound once: the dispatch loop runs it per event.
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._masks: dict[int, int] = {}
        # fds registered with the loop's own selector instead (on_loop), and their mask.
        self._on_loop: dict[int, int] = {}
        self._loop_native = isinstance(loop, selector_events.BaseSelectorEventLoop)
        # uvloop: on_loop fds keep a sentinel in the private epoll (empty mask); once it
        # fired, the fd stays private until unregistered.
        self._uvloop = _is_uvloop(loop)
        # How the loop's own transports register a socket, past any subclass's check (aiozc's
        # loop refuses a transport's fd to its users): asyncio's _add_reader & co., uvloop's
        # base class methods.
        self._base: Any = _UvloopRegistrar if self._uvloop else _SelectorRegistrar
        self._sentinels: set[int] = set()
        self._stay_private: set[int] = set()
        self._leaves: dict[int, int] = {}  # times each fd left uvloop's selector
        # The compiled core's Dispatcher (the same poll and dispatch in C), the loop's reader
        # for the private epoll while it is open; without the core, _dispatch is.
        self._dispatcher: Any = None
        self._dispatches = 0  # by _dispatch, and by Dispatchers of epolls closed since
        # Registered with defer=True and not yet placed anywhere (see register).
        self._deferred: set[int] = set()
        # Whether the loop's close closes the private epoll (see _open); where the loop cannot
        # be followed, the epoll closes when its last socket leaves, as it did before.
        self._closes_with_loop = False
        self._owner_ref: "weakref.ref[_EpollOwner] | None" = None
        self._owner: _EpollOwner | None = None

    @property
    def dispatches(self) -> int:
        """Loop callbacks that polled the private epoll; tests use it to show idle costs nothing."""
        current = self._dispatcher
        return self._dispatches + (current.dispatches if current is not None else 0)

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> Multiplexer:
        mux = cls._by_loop.get(loop)
        if mux is None:
            cls._forget_closed()
            mux = cls._by_loop[loop] = cls(loop)
        return mux

    @classmethod
    def _forget_closed(cls) -> None:
        # A transport its program left open on a closed loop is held through its handler here,
        # and holds the loop: let them go (stock asyncio frees both with the loop, the socket
        # with a ResourceWarning). At a new loop's first use, so a close needs no hook.
        for loop in [loop for loop in cls._by_loop.keys() if loop.is_closed()]:
            cls._by_loop.pop(loop, None)

    @classmethod
    def handler_for(cls, loop: asyncio.AbstractEventLoop, fd: int) -> ReadinessHandler | None:
        """What ``loop``'s multiplexer has registered for ``fd``, if anything."""
        mux = cls._by_loop.get(loop)
        return None if mux is None else mux._handlers.get(fd)

    def __len__(self) -> int:
        return len(self._handlers)  # on the loop's selector or in the private epoll

    @staticmethod
    def mask(*, read: bool, write: bool, edge: bool = False) -> int:
        # EPOLLERR and EPOLLHUP are always reported; an empty mask still delivers completions.
        return (EPOLLIN if read else 0) | (EPOLLOUT if write else 0) | (EPOLLET if edge else 0)

    def register(
        self, fd: int, handler: ReadinessHandler, mask: int, *, on_loop: bool = False, defer: bool = False
    ) -> None:
        """Watch ``fd`` for ``mask``; ``on_loop``: in the loop's own selector where the loop
        allows it (see the module docstring), until :meth:`modify` says otherwise.

        ``defer``: watch nothing until the first :meth:`modify`, which places the fd (an owner
        that sets its real mask within the loop iteration, and has no notification pending:
        a socket registered, then moved at once, costs an epoll ADD and DEL for nothing)."""
        if fd in self._handlers:
            raise RuntimeError(f"fd {fd} is already registered with the aiozc multiplexer")
        self._handlers[fd] = handler
        self._callbacks[fd] = handler.on_readiness
        if defer:
            self._deferred.add(fd)
            return
        try:
            self._place(fd, handler, mask, on_loop)
        except BaseException:  # (the private epoll could not open: out of fds) as if never made
            del self._handlers[fd], self._callbacks[fd]
            raise

    def _place(self, fd: int, handler: ReadinessHandler, mask: int, on_loop: bool) -> None:
        if on_loop and self._loop_allows(fd):
            self._enter_loop(fd, handler, mask, registered=False)
            return
        self._epoll_register(fd, mask)

    def _loop_allows(self, fd: int) -> bool:
        return self._loop_native or (self._uvloop and fd not in self._stay_private)

    def is_on_loop(self, fd: int) -> bool:
        return fd in self._on_loop

    def writer_may_linger(self, fd: int) -> bool:
        """Whether ``fd``'s owner may leave EPOLLOUT asked for with nothing to write until the
        next writable event (see transport._writer_lingers): on uvloop, in its selector or in
        the private epoll (whose fd uvloop polls after it ran the ready callbacks; a nested
        level-triggered epoll is readable only while an fd in it still is)."""
        return self._uvloop

    def modify(self, fd: int, mask: int, *, on_loop: bool = False) -> None:
        """Watch ``fd`` for ``mask`` from now on; ``on_loop`` as for :meth:`register` (a socket
        moves between the loop's selector and the private epoll as its owner says)."""
        if fd in self._deferred:
            self._place(fd, self._handlers[fd], mask, on_loop)  # (may raise: still deferred then)
            self._deferred.discard(fd)
            return
        if fd in self._on_loop:
            if on_loop:
                self._set_loop_mask(fd, self._handlers[fd], mask)
                return
            self._leave_loop(fd, mask)
            if self._uvloop:
                self._count_leave(fd)
            return
        if on_loop and fd in self._handlers and self._loop_allows(fd):
            self._enter_loop(fd, self._handlers[fd], mask, registered=True)
            return
        if self._masks.get(fd) == mask:
            return
        assert self._epoll is not None
        self._epoll.modify(fd, mask)
        self._masks[fd] = mask

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is None:
            return
        del self._callbacks[fd]
        self._stay_private.discard(fd)
        self._leaves.pop(fd, None)
        if fd in self._deferred:
            self._deferred.discard(fd)
        elif (loop_mask := self._on_loop.pop(fd, None)) is not None:
            self._drop_from_loop(fd, loop_mask)
            if fd in self._sentinels:
                self._sentinels.discard(fd)
                self._epoll_unregister(fd)
        else:
            self._epoll_unregister(fd)
        if not self._handlers and not self._closes_with_loop:
            self._close()

    def _epoll_register(self, fd: int, mask: int) -> None:
        self._open().register(fd, mask)
        self._masks[fd] = mask

    def _epoll_unregister(self, fd: int) -> None:
        del self._masks[fd]
        if self._epoll is None:
            return  # closed with the loop already
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # the fd was closed first; epoll dropped it already

    # -- sockets in the loop's own selector ----------------------------------------------

    def _enter_loop(self, fd: int, handler: ReadinessHandler, mask: int, *, registered: bool) -> None:
        """From the private epoll (``registered``) or from nowhere into the loop's selector."""
        if self._uvloop:
            # The sentinel: an empty mask still reports EPOLLERR and EPOLLHUP.
            if registered:
                if self._masks[fd] != 0:
                    assert self._epoll is not None
                    self._epoll.modify(fd, 0)
                    self._masks[fd] = 0
            else:
                self._epoll_register(fd, 0)
            self._sentinels.add(fd)
            self._callbacks[fd] = functools.partial(self._sentinel_fired, fd)
        elif registered:
            self._epoll_unregister(fd)
        self._on_loop[fd] = 0
        self._set_loop_mask(fd, handler, mask)

    def _leave_loop(self, fd: int, mask: int) -> None:
        """From the loop's selector into the private epoll, watching ``mask``."""
        if fd not in self._sentinels:
            self._open()  # first: if it cannot open (out of fds), the fd stays where it is
        self._drop_from_loop(fd, self._on_loop.pop(fd))
        if fd in self._sentinels:
            self._sentinels.discard(fd)
            self._callbacks[fd] = self._handlers[fd].on_readiness
            if self._masks[fd] != mask:  # a closing socket often leaves at the empty mask
                assert self._epoll is not None
                self._epoll.modify(fd, mask)
                self._masks[fd] = mask
        else:
            self._epoll_register(fd, mask)

    def _count_leave(self, fd: int) -> None:
        # Each return to uvloop's selector makes a new poll handle: libuv's pollability check
        # (epoll_ctl ADD+DEL, FIONBIO) and three DELs at removal, ~6 system calls per
        # pause/resume cycle against 2 MODs in the private epoll (strace, 200 cycles). A
        # socket that keeps leaving (flow control pausing it) stays private.
        leaves = self._leaves[fd] = self._leaves.get(fd, 0) + 1
        if leaves >= _MAX_UVLOOP_RETURNS:
            self._stay_private.add(fd)

    def _sentinel_fired(self, fd: int, events: int) -> None:
        # uvloop closed (or is about to close) its poll handle for the fd: serve it here.
        mask = self._on_loop.get(fd)
        if mask is None or fd not in self._sentinels:
            return
        self._stay_private.add(fd)
        self._leave_loop(fd, mask)
        self._callbacks[fd](events)

    def _set_loop_mask(self, fd: int, handler: ReadinessHandler, mask: int) -> None:
        # EPOLLET is for the private epoll's hang-up case; a socket here is simply not
        # registered for reading while its transport does not read, as asyncio's own.
        old = self._on_loop[fd]
        mask &= EPOLLIN | EPOLLOUT
        if mask == old:
            return
        self._on_loop[fd] = mask
        loop, base = self._loop_ref(), self._base
        # The callback gets the event it stands for, as from the private epoll.
        if (mask ^ old) & EPOLLIN:
            if mask & EPOLLIN:
                callback = handler.on_readiness
                if type(callback) is _CompiledReader:  # called without one, it means EPOLLIN
                    base.add_reader(loop, fd, callback)
                else:
                    base.add_reader(loop, fd, callback, EPOLLIN)
            else:
                base.remove_reader(loop, fd)
        if (mask ^ old) & EPOLLOUT:
            if mask & EPOLLOUT:
                base.add_writer(loop, fd, handler.on_readiness, EPOLLOUT)
            else:
                base.remove_writer(loop, fd)

    def _drop_from_loop(self, fd: int, mask: int) -> None:
        # Only what _set_loop_mask registered: uvloop's remove_writer of an fd with no writer
        # still costs ~2.8k instructions (callgrind, an accepted connection's close).
        loop, base = self._loop_ref(), self._base
        if loop is not None and not loop.is_closed():
            if mask & EPOLLIN:
                base.remove_reader(loop, fd)
            if mask & EPOLLOUT:
                base.remove_writer(loop, fd)

    def _open(self) -> select.epoll:
        if self._epoll is None:
            epoll = self._epoll = select.epoll()
            reader: Callable[[], None] = self._dispatch
            if _CompiledDispatcher is not None:
                reader = self._dispatcher = _CompiledDispatcher(
                    epoll.fileno(), self._callbacks, self._handler_failed
                )
            # The loop's selector holds the only reference to the owner: when the loop closes
            # (asyncio's selector drops its keys, uvloop its readers' file objects) the owner
            # goes, and with it the epoll (_owner_gone). No hook on close needed.
            owner = _EpollOwner(epoll)
            self._loop_ref().add_reader(owner, reader)  # type: ignore[union-attr]
            # A loop that keeps only the fd number (not asyncio's or uvloop's): held here, and
            # the epoll closes with its last socket, as before. (2: this name, the argument.)
            self._closes_with_loop = sys.getrefcount(owner) > 2
            if self._closes_with_loop:
                self._owner_ref = weakref.ref(owner, self._owner_gone)
            else:
                self._owner = owner
        return self._epoll

    @property
    def epoll_fd(self) -> int | None:
        """The private epoll's fd while it is open (it stays open until the loop closes)."""
        return None if self._epoll is None else self._epoll.fileno()

    def _owner_gone(self, ref: "weakref.ref[_EpollOwner]") -> None:
        if ref is self._owner_ref:
            self._close()

    def _close(self) -> None:
        epoll, self._epoll = self._epoll, None
        self._owner_ref = self._owner = None
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            self._dispatches += dispatcher.dispatches
            dispatcher.close()  # the epoll's fd number may be reused
        if epoll is not None:
            loop = self._loop_ref()
            if loop is not None and not loop.is_closed():
                loop.remove_reader(epoll.fileno())
            epoll.close()

    def _dispatch(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        self._dispatches += 1
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
                self._handler_failed(fd, exc)

    def _handler_failed(self, fd: int, exc: BaseException) -> None:
        self._loop_ref().call_exception_handler(  # type: ignore[union-attr]
            {"message": "aiozc readiness handler failed", "exception": exc, "handler": self._handlers.get(fd)}
        )


class _EpollOwner:
    """The private epoll as the loop's selector holds it (see Multiplexer._open)."""

    __slots__ = ("epoll", "__weakref__")

    def __init__(self, epoll: select.epoll) -> None:
        self.epoll = epoll

    def fileno(self) -> int:
        return self.epoll.fileno()


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return _uvloop is not None and isinstance(loop, _uvloop.Loop)


class _SelectorRegistrar:
    """asyncio's selector loop registers its own transports' sockets with these."""

    @staticmethod
    def add_reader(loop: Any, fd: int, callback: Callable[..., None], *args: Any) -> None:
        loop._add_reader(fd, callback, *args)

    @staticmethod
    def remove_reader(loop: Any, fd: int) -> None:
        loop._remove_reader(fd)

    @staticmethod
    def add_writer(loop: Any, fd: int, callback: Callable[..., None], *args: Any) -> None:
        loop._add_writer(fd, callback, *args)

    @staticmethod
    def remove_writer(loop: Any, fd: int) -> None:
        loop._remove_writer(fd)


class _UvloopRegistrar:
    """uvloop.Loop's own methods, called on the class (a subclass may refuse the fd)."""

    @staticmethod
    def add_reader(loop: Any, fd: int, callback: Callable[..., None], *args: Any) -> None:
        _uvloop.Loop.add_reader(loop, fd, callback, *args)

    @staticmethod
    def remove_reader(loop: Any, fd: int) -> None:
        _uvloop.Loop.remove_reader(loop, fd)

    @staticmethod
    def add_writer(loop: Any, fd: int, callback: Callable[..., None], *args: Any) -> None:
        _uvloop.Loop.add_writer(loop, fd, callback, *args)

    @staticmethod
    def remove_writer(loop: Any, fd: int) -> None:
        _uvloop.Loop.remove_writer(loop, fd)
