"""Comm, Connector, Listener and Backend for dask's ``zc://`` scheme, over aiozc transports."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import weakref
from typing import Any, Callable

import dask
from dask.utils import parse_bytes, parse_timedelta
from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import BaseListener, Comm, CommClosedError, Connector
from distributed.comm.registry import Backend
from distributed.comm.utils import ensure_concrete_host
from distributed.system import MEMORY_LIMIT
from distributed.utils import ensure_ip, get_ip

from ..connect import create_connection
from ..server import create_server
from . import hop, wire
from .framing import FramesComm
from .pool import ReceivePool
from .protocol import ZCProtocol, copies

logger = logging.getLogger("aiozc.dask")

PREFIX = "zc://"


class EncryptionRefused(RuntimeError):
    """zc:// is plaintext: a TLS context or ``require_encryption`` cannot be honoured."""


def _config(key: str, default: Any) -> Any:
    return dask.config.get(f"distributed.comm.zc.{key}", default)


def _bytes_config(key: str, default: int) -> int:
    value = _config(key, default)
    return parse_bytes(value) if isinstance(value, str) else int(value)


_pool: ReceivePool | None = None


def receive_pool() -> ReceivePool:
    """The process's pool of receive buffers (dask config ``distributed.comm.zc.pool-bytes``)."""
    global _pool
    if _pool is None:
        _pool = ReceivePool(_bytes_config("pool-bytes", min(1 << 30, MEMORY_LIMIT // 8)))
    return _pool


def _limits() -> wire.Limits:
    return wire.Limits(
        max_frames=int(_config("max-frames", wire.Limits.max_frames)),
        # dask's tcp comm caps one read at half the memory limit; so do we, per message.
        max_message_bytes=_bytes_config("max-message-bytes", MEMORY_LIMIT // 2),
    )


def _protocol(on_made: Callable[[ZCProtocol], None] | None = None) -> ZCProtocol:
    return ZCProtocol(receive_pool(), _limits(), _bytes_config("readahead-bytes", 256 << 20), on_made)


def _loopback_options(host: str | None) -> dict[str, Any]:
    """aiozc transport options for a connection to or listening on ``host``.

    Over loopback the kernel copies every zero-copy send (ee_code 1, always), so re-probing is
    wasted: a copy-fallback connection tries MSG_ZEROCOPY again after every reprobe_bytes (1 GiB)
    sent, and a dask message of 1 GiB or more then sends one whole 64 MiB shard pinned, copied
    by the kernel a second time on delivery (skb_copy_ubufs, seen in perf on the receiver), and
    completed only once read (bench dask worker->worker 4 x 256 MiB: 64 MiB of every 1 GiB
    went that way). The first probe of a connection still runs, as on any route.
    """
    if host == "localhost":
        return {"reprobe_bytes": 0}
    try:
        loopback = ipaddress.ip_address(host or "").is_loopback
    except ValueError:  # a name, or "" (every interface)
        return {}
    return {"reprobe_bytes": 0} if loopback else {}


def _refuse_encryption(address: str, connection_args: dict[str, Any]) -> None:
    if connection_args.get("ssl_context") is not None or connection_args.get("require_encryption"):
        raise EncryptionRefused(
            f"zc:// does not encrypt, refusing {PREFIX}{address} with "
            + ("an ssl_context" if connection_args.get("ssl_context") is not None else "require_encryption")
            + ": use tls:// for encrypted comms, or turn TLS off (distributed.comm.require-encryption, "
            "distributed.comm.tls.*) to use zc://"
        )


def _set_keepalive(transport: Any) -> None:
    """Keepalive and TCP_USER_TIMEOUT from distributed.comm.timeouts.tcp, as dask's tcp comm."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    timeout = int(parse_timedelta(dask.config.get("distributed.comm.timeouts.tcp"), default="seconds"))
    nprobes = 10
    interval = max(1, (timeout - max(2, timeout // 4)) // nprobes)
    idle = max(1, timeout - interval * nprobes)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, nprobes)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout * 1000)
    except OSError:
        logger.exception("could not set TCP keepalive on %r", transport)


# Small frames are joined into writes of about this much; glibc serves joins this size from
# memory it reuses.
JOIN_BYTES = 256 << 10


class ZCComm(FramesComm):
    """One established zc:// connection. Frames of ``zc-threshold`` bytes or more (default
    16 KiB, aiozc's own threshold) go out through ``write_zc``, held, not copied; the smaller
    ones are joined into writes of about ``JOIN_BYTES``."""

    def __init__(self, protocol: ZCProtocol, local_addr: str, peer_addr: str, deserialize: bool = True) -> None:
        super().__init__(deserialize=deserialize)
        self._protocol = protocol
        self._transport = protocol.transport
        self._local_addr = local_addr
        self._peer_addr = peer_addr
        self._closed = False
        self._zc_threshold = _bytes_config("zc-threshold", 16 << 10)
        self._finalizer = weakref.finalize(self, _abort_dangling, self._transport, repr(self))
        self._finalizer.atexit = False
        _set_keepalive(self._transport)

    @property
    def transport(self) -> Any:
        return self._transport

    @property
    def extra_info(self) -> dict[str, Any]:
        return {}

    def closed(self) -> bool:
        return self._closed or self._protocol.lost

    async def read(self, deserializers: Any = None) -> Any:
        if self.closed() and not self._protocol._ready:
            raise CommClosedError(f"in {self}: closed")
        try:
            frames = await self._protocol.next_frames()
        except CommClosedError:
            self._closed = True
            raise
        except BaseException:
            self.abort()  # as dask's tcp comm: a cancelled read leaves the comm unusable
            raise
        return await self._from_frames(frames, deserializers)

    async def write(self, msg: Any, serializers: Any = None, on_error: str | None = "message") -> int:
        if self.closed():
            raise CommClosedError(f"in {self}: closed")
        frames = await self._to_frames(msg, serializers, on_error)
        header, layout = wire.encode_header(frames)
        try:
            await self._protocol.drain()
            # The frames are the caller's memory: return only once the kernel let go of them.
            await _released(self._send(header, frames, layout))
        except (CommClosedError, ConnectionError, OSError) as exc:
            self.abort()
            raise CommClosedError(f"in {self}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.abort()  # part of a message may be on the wire: the stream is unusable
            raise
        return len(header) + sum(layout.lengths)

    def _send(self, header: bytes, frames: list[Any], layout: wire.Layout) -> list[asyncio.Future[Any]]:
        transport = self._transport
        small: list[Any] = [header]
        small_bytes = len(header)
        pending: list[asyncio.Future[Any]] = []
        lengths = layout.lengths
        for i in layout.wire_order():
            frame, n = frames[i], lengths[i]
            if n >= self._zc_threshold:
                if small:
                    transport.write(_join(small))
                    small, small_bytes = [], 0
                pending.append(transport.write_zc(frame))
            elif n:
                small.append(frame)
                small_bytes += n
                if small_bytes >= JOIN_BYTES:
                    # Bounded joins: one 64 MiB join of 2048 small frames was a fresh mapping
                    # (256 faults per MiB) and a 64 MiB copy, measured in bench dask.
                    transport.write(_join(small))
                    small, small_bytes = [], 0
        if small:
            transport.write(_join(small))
        return pending

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        transport = self._transport
        if not transport.is_closing():
            transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._protocol.closed), 10)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            transport.abort()

    def abort(self) -> None:
        self._closed = True
        self._finalizer.detach()
        self._transport.abort()


def _join(pieces: list[Any]) -> bytes:
    if len(pieces) == 1 and type(pieces[0]) is bytes:
        return pieces[0]  # what b"".join does too: no copy
    joined = b"".join(pieces)
    copies.send_join += len(joined)
    return joined


async def _released(pending: list[asyncio.Future[Any]]) -> None:
    """Wait for every write_zc future. Most are done already (loopback sends complete inline):
    those are only checked, where asyncio.gather would schedule a callback for each."""
    try:
        for future in pending:
            if future.done():
                future.result()
            else:
                await future
    except BaseException:
        for future in pending:  # the caller aborts the comm; no "exception never retrieved"
            future.add_done_callback(_retrieve)
        raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _abort_dangling(transport: Any, description: str) -> None:
    if not transport.is_closing():
        logger.warning("closing dangling comm %s", description)
        transport.abort()


def _sockname(transport: Any, which: str) -> str:
    return PREFIX + unparse_host_port(*transport.get_extra_info(which)[:2])


def _hop_enabled(connection_args: dict[str, Any]) -> bool:
    """The in-process hop is on unless dask config ``distributed.comm.zc.hop`` or the connection
    argument ``zc_hop`` turns it off."""
    configured = _config("hop", True)
    if isinstance(configured, str):
        configured = configured.strip().lower() not in ("0", "false", "no", "off")
    return bool(configured) and connection_args.get("zc_hop", True) is not False


class ZCConnector(Connector):
    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Comm:
        _refuse_encryption(address, connection_args)
        host, port = parse_host_port(address)
        if _hop_enabled(connection_args):
            listener = hop.registry.find(host, port, asyncio.get_running_loop())
            if listener is not None:
                return listener.accept_hop(host, port, deserialize)
        try:
            transport, protocol = await create_connection(_protocol, host, port, **_loopback_options(host))
        except ConnectionError as exc:
            raise CommClosedError(f"in {PREFIX}{address}: {type(exc).__name__}: {exc}") from exc
        return ZCComm(protocol, _sockname(transport, "sockname"), PREFIX + address, deserialize)


class ZCListener(BaseListener):
    prefix = PREFIX

    def __init__(self, address: str, comm_handler: Callable[[Comm], Any], deserialize: bool = True,
                 allow_offload: bool = True, default_host: str | None = None, default_port: int = 0,
                 **connection_args: Any) -> None:
        super().__init__()
        _refuse_encryption(address, connection_args)
        self.ip, self.port = parse_host_port(address, default_port)
        self.default_host = default_host
        self.comm_handler = comm_handler
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        self.server: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._hop = _hop_enabled(connection_args)
        self.hop_loop: asyncio.AbstractEventLoop | None = None  # while accepting hops
        self._hop_port: int | None = None

    async def start(self) -> None:
        backlog = int(dask.config.get("distributed.comm.socket-backlog"))
        self.server = await create_server(lambda: _protocol(self._connection_made), self.ip or None,
                                          self.port, backlog=backlog, reuse_address=True,
                                          **_loopback_options(self.ip))
        if self._hop:
            self.hop_loop = asyncio.get_running_loop()
            self._hop_port = self.get_host_port()[1]
            hop.registry.add(self, self._hop_port)

    def stop(self) -> None:
        server, self.server = self.server, None
        if self._hop_port is not None:
            hop.registry.remove(self, self._hop_port)
            self._hop_port = self.hop_loop = None
        if server is not None:
            server.close()

    def hop_hosts(self) -> list[str]:
        """The hosts this listener's sockets are bound to."""
        server = self.server
        return [] if server is None else [s.getsockname()[0] for s in server.sockets]

    def contact_host(self) -> str:
        return ensure_concrete_host(self.get_host_port()[0], default_host=self.default_host)

    def accept_hop(self, host: str, port: int, deserialize: bool) -> hop.HopComm:
        """An in-process connection to this listener: the connector's end; ours goes through
        the handshake and the comm handler as an accepted socket's does."""
        if self.server is None:
            raise CommClosedError(f"in {PREFIX}{unparse_host_port(host, port)}: listener stopped")

        def accept(comm: hop.HopComm) -> None:
            comm.allow_offload = self.allow_offload
            self._spawn(comm)

        return hop.pair(asyncio.get_running_loop(), host, port, deserialize, accept,
                        _bytes_config("readahead-bytes", 256 << 20), self.deserialize)

    def _connection_made(self, protocol: ZCProtocol) -> None:
        if self.server is None:  # stopped after accepting: don't leave the client hanging
            protocol.transport.abort()
            return
        comm = ZCComm(protocol, _sockname(protocol.transport, "sockname"),
                      _sockname(protocol.transport, "peername"), self.deserialize)
        comm.allow_offload = self.allow_offload
        self._spawn(comm)

    def _spawn(self, comm: Comm) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(comm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, comm: Comm) -> None:
        try:
            await self.on_connection(comm)
        except CommClosedError:
            logger.info("connection from %s closed before the handshake completed", comm.peer_address)
            return
        await self.comm_handler(comm)

    def get_host_port(self) -> tuple[str, int]:
        if self.server is None:
            raise ValueError("invalid operation on a zc:// listener that is not started")
        return self.server.sockets[0].getsockname()[:2]

    @property
    def listen_address(self) -> str:
        return PREFIX + unparse_host_port(*self.get_host_port())

    @property
    def contact_address(self) -> str:
        host, port = self.get_host_port()
        return PREFIX + unparse_host_port(ensure_concrete_host(host, default_host=self.default_host), port)


class ZCBackend(Backend):
    """dask's comm backend for ``zc://`` (entry point group ``distributed.comm.backends``)."""

    def get_connector(self) -> ZCConnector:
        return ZCConnector()

    def get_listener(self, loc: str, handle_comm: Callable[[Comm], Any], deserialize: bool,
                     **connection_args: Any) -> ZCListener:
        return ZCListener(loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(loc)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return parse_host_port(loc)

    def resolve_address(self, loc: str) -> str:
        host, port = parse_host_port(loc)
        return unparse_host_port(ensure_ip(host), port)

    def get_local_address_for(self, loc: str) -> str:
        host = ensure_ip(parse_host_port(loc)[0])
        return unparse_host_port(get_ip(host), None)
