"""The in-process hop: a zc:// connection between a Connector and a Listener of one process and
one event loop, carried by reference instead of through a socket.

Why: in a LocalCluster the scheduler runs in the client's process and on its loop, and
``client.gather`` / ``client.scatter`` go through it (unless direct). Over a socket the client
process then moves every byte three times through the kernel (worker -> scheduler in, scheduler
-> client out and in again over loopback). At 4 MiB frames tcp copies nothing in user space
either, so avoiding copies cannot win there (bench dask 64 x 4 MiB gather: 0.93x tcp); skipping
the loopback round trip inside the process can.

What stays the same as the socket path: a message is ``to_frames``'d on write and
``from_frames``'d on read (honouring the comm's ``deserialize`` and the reader's
``deserializers``), so serialization, offloading and dask's handshake (``on_connection``) run as
over a socket; only the bytes do not go through the kernel. dask's own ``inproc://`` comm is the
precedent for handing objects over within a process; it skips serialization altogether.

Semantics (see ``HopComm``):

- Ordering: messages arrive in write order (one FIFO per direction).
- Flow control: bounded, unlike inproc's unbounded queue. A write waits while the peer holds
  ``readahead-bytes`` (the socket path's read-ahead cap, default 256 MiB) or more of unread
  frames; one message is always let in when under the cap, whatever its size.
- Ownership: the receiver gets the sender's frames themselves, not copies: arrays it
  deserializes alias the sender's buffers (as with inproc://). ``write()`` returns once the peer
  owns the frames (they are in its queue), where the socket path's returns once the kernel let go
  of them: a sender must not mutate an array after writing it (dask never does).
- Close and abort, from either side, at any time: the other side reads what was already queued,
  then gets ``CommClosedError``; a write waiting for room fails with ``CommClosedError``; the
  closing side's own pending read or write does too. Nothing hangs. A comm dropped without close
  closes its pipes from its finalizer.
- Addresses: both sides look like ``zc://host:port``: the connector's peer address is the address
  it dialled, the listener's local address its own; the connector's local address is
  ``zc://<dialled host>:<hop id>``, a number unique in the process and never a bound port.
- Only on the same loop (hence the same thread); any other case goes through the socket.
- Opt out: dask config ``distributed.comm.zc.hop: false`` (env
  ``DASK_DISTRIBUTED__COMM__ZC__HOP=False``), or the connection argument ``zc_hop=False`` on the
  connector or the listener.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import weakref
from typing import Any, Callable

from distributed.comm.addressing import unparse_host_port
from distributed.comm.core import CommClosedError

from .framing import FramesComm

PREFIX = "zc://"
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class HopCounts:
    """Messages and frame bytes carried by hops in this process (bench dask reports them)."""

    __slots__ = ("messages", "nbytes", "connections")

    def __init__(self) -> None:
        self.messages = self.nbytes = self.connections = 0

    def take(self) -> dict[str, int]:
        out = {"messages": self.messages, "nbytes": self.nbytes, "connections": self.connections}
        self.messages = self.nbytes = self.connections = 0
        return out


counts = HopCounts()
_hop_ids = itertools.count(1)


def _frame_bytes(frame: Any) -> int:
    return len(frame) if type(frame) is bytes else memoryview(frame).nbytes


class _Pipe:
    """One direction of a hop: a FIFO of frame lists, single reader, single writer, one loop."""

    __slots__ = ("loop", "limit", "messages", "nbytes", "closed", "_reader", "_space", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.limit = limit
        self.messages: collections.deque[tuple[list[Any], int]] = collections.deque()
        self.nbytes = 0  # unread frame bytes
        self.closed = False
        self._reader: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None

    def put(self, frames: list[Any], nbytes: int) -> None:
        self.messages.append((frames, nbytes))
        self.nbytes += nbytes
        _wake(self._reader)

    async def get(self) -> list[Any]:
        while not self.messages:
            if self.closed:
                raise CommClosedError("zc:// hop: the peer closed")
            self._reader = self.loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        frames, nbytes = self.messages.popleft()
        self.nbytes -= nbytes
        if self.nbytes < self.limit:
            _wake(self._space)
        return frames

    async def wait_room(self) -> None:
        while self.nbytes >= self.limit and not self.closed:
            self._space = self.loop.create_future()
            try:
                await self._space
            finally:
                self._space = None
        if self.closed:
            raise CommClosedError("zc:// hop: closed")

    def close(self, discard: bool = False) -> None:
        """No more messages; ``discard`` drops the unread ones too (their reader is gone)."""
        self.closed = True
        if discard:
            self.messages.clear()
            self.nbytes = 0
        _wake(self._reader)
        _wake(self._space)


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _close_pipes(inbox: _Pipe, outbox: _Pipe) -> None:
    """A hop comm's finalizer: GC may run it in any thread, pipes live on their loop."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is inbox.loop:
        _shut(inbox, outbox)
    elif not inbox.loop.is_closed():
        inbox.loop.call_soon_threadsafe(_shut, inbox, outbox)


def _shut(inbox: _Pipe, outbox: _Pipe) -> None:
    inbox.close(discard=True)
    outbox.close()


class HopComm(FramesComm):
    """One end of an in-process zc:// connection (module docstring: semantics)."""

    def __init__(self, inbox: _Pipe, outbox: _Pipe, local_addr: str, peer_addr: str,
                 deserialize: bool) -> None:
        super().__init__(deserialize=deserialize)
        self._inbox = inbox
        self._outbox = outbox
        self._local_addr = local_addr
        self._peer_addr = peer_addr
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_pipes, inbox, outbox)
        self._finalizer.atexit = False

    @property
    def extra_info(self) -> dict[str, Any]:
        return {"hop": True}

    def closed(self) -> bool:
        return self._closed or (self._inbox.closed and not self._inbox.messages)

    async def read(self, deserializers: Any = None) -> Any:
        if self._closed:
            raise CommClosedError(f"in {self}: closed")
        try:
            frames = await self._inbox.get()
        except CommClosedError:
            self.abort()
            raise
        except BaseException:
            self.abort()  # as the socket path: a cancelled read leaves the comm unusable
            raise
        return await self._from_frames(frames, deserializers)

    async def write(self, msg: Any, serializers: Any = None, on_error: str | None = "message") -> int:
        if self.closed():
            raise CommClosedError(f"in {self}: closed")
        frames = await self._to_frames(msg, serializers, on_error)
        outbox = self._outbox
        try:
            await outbox.wait_room()
        except BaseException:
            self.abort()
            raise
        if self._closed:
            raise CommClosedError(f"in {self}: closed")
        nbytes = sum(map(_frame_bytes, frames))
        outbox.put(frames, nbytes)
        counts.messages += 1
        counts.nbytes += nbytes
        return nbytes

    async def close(self) -> None:
        self.abort()  # nothing is in flight: what was written is in the peer's queue already

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        _shut(self._inbox, self._outbox)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Registry:
    """The zc:// listeners of this process that accept hops, by port."""

    def __init__(self) -> None:
        self._by_port: dict[int, list[weakref.ref[Any]]] = {}

    def add(self, listener: Any, port: int) -> None:
        self._by_port.setdefault(port, []).append(weakref.ref(listener))

    def remove(self, listener: Any, port: int) -> None:
        refs = [r for r in self._by_port.get(port, []) if r() not in (None, listener)]
        if refs:
            self._by_port[port] = refs
        else:
            self._by_port.pop(port, None)

    def find(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> Any:
        """The listener on this loop that a connection to ``host:port`` would reach, else None.
        A wildcard listener matches loopback hosts and its own contact host only: any other
        address might be another machine's."""
        for ref in self._by_port.get(port, []):
            listener = ref()
            if listener is None or listener.hop_loop is not loop:
                continue
            for bound in listener.hop_hosts():
                if bound == host or (host == "localhost" and _is_loopback(bound)):
                    return listener
                if bound in WILDCARD_HOSTS and (_is_loopback(host) or host == listener.contact_host()):
                    return listener
        return None


registry = Registry()


def pair(loop: asyncio.AbstractEventLoop, host: str, port: int, deserialize: bool,
         accept: Callable[[HopComm], None], readahead_bytes: int, listener_deserialize: bool) -> HopComm:
    """Two connected hop comms; ``accept`` gets the listener's (and runs its handshake), the
    connector's is returned."""
    to_listener, to_connector = _Pipe(loop, readahead_bytes), _Pipe(loop, readahead_bytes)
    dialled = PREFIX + unparse_host_port(host, port)
    connector_local = PREFIX + unparse_host_port(host, next(_hop_ids))
    mine = HopComm(to_connector, to_listener, connector_local, dialled, deserialize)
    theirs = HopComm(to_listener, to_connector, dialled, connector_local, listener_deserialize)
    accept(theirs)
    counts.connections += 1
    return mine
