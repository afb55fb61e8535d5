"""The read side of the TCP transport: Protocol and BufferedProtocol reads, EOF, and a peer's
reset delivered after the data that came before it; asyncio's rules for callbacks that raise."""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import struct
import termios
import types
from typing import TYPE_CHECKING, Any, Callable

from ._sys.recv import Reader as _CompiledReader
from .buffers import thread_read_buffer
from .readiness import EPOLLHUP, EPOLLIN

if TYPE_CHECKING:  # the transport this is mixed into (see StreamReading)
    from .base import ZeroCopyTransportBase as _Host
else:
    _Host = object

_READS_PER_EVENT = 16


class StreamReading(_Host):
    """Mixed into ZeroCopyTransport ahead of ZeroCopyTransportBase, which provides the socket,
    the protocol, ``_update_mask``, ``close`` and ``_fatal_error`` (reached through super())."""

    _sock: Any
    _fd: int
    _loop: asyncio.AbstractEventLoop
    _protocol: Any
    _options: Any
    _reading: bool
    _closing: bool
    _eof_received: bool
    _hup: bool
    _read_error: OSError | None
    _read_once: Callable[[], bool]
    # Zero-copy receive (aiozc.zcread), when the zc_receive option is on; _rx_blocked while
    # every region of its pool is held (reading paused until one is freed).
    _zc_reader: Any = None
    _rx_blocked = False
    # A Protocol's data_received path, which on_readiness runs inline (set by _read_path).
    _plain_reads = False
    # A Protocol's reads land in this thread's page-aligned buffer of read_size bytes
    # (buffers.thread_read_buffer) and data_received gets a bytes copy. Measured (bench recv,
    # quiet machine, 256 KiB reads): 0.86x (plain sender) / 0.65x (MSG_ZEROCOPY sender) the
    # receiver CPU of recv() -> bytes. For small reads recv(read_size) is worse still: glibc
    # mmaps the 256 KiB bytes and mremaps it down (3 syscalls and a page fault per read in a
    # process whose mmap threshold never rose), which this path never does.
    _read_buffer: mmap.mmap | None = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._read_once = self._read_path(protocol)
        super().set_protocol(protocol)

    def resume_reading(self) -> None:
        super().resume_reading()  # type: ignore[misc]
        if self._zc_reader is not None:
            self._zc_reader.on_resume_reading()

    def _read_path(self, protocol: asyncio.BaseProtocol) -> Callable[[], bool]:
        """The read step for ``protocol``; also sets ``_plain_reads`` (a Protocol's
        data_received path, which on_readiness runs inline)."""
        # uvloop's rule, which covers asyncio's isinstance(BufferedProtocol): uvloop's own
        # tests use a get_buffer() protocol that subclasses neither.
        if self._zc_reader is not None:
            step = self._zc_reader.read_path(protocol)
            if step is not None:
                self._plain_reads = False
                return step
        if hasattr(protocol, "get_buffer") and not isinstance(protocol, asyncio.Protocol):
            self._plain_reads = False
            return self._read_into_buffer
        self._plain_reads = True
        return self._read_data_step

    def _on_readiness(self, events: int) -> None:
        # The common event, readable and nothing else, read here: one frame less per request
        # of an HTTP server than through the base's general order (errors, reads, writes).
        if events == EPOLLIN and self._plain_reads:
            self._read_data_ready()
        else:
            super().on_readiness(events)  # type: ignore[misc]

    def _read_ready(self, events: int) -> None:
        if not self._reading or self._eof_received or self._closing or self._rx_blocked:
            if events & EPOLLHUP and not self._hup:
                self._hup = True
                self._update_mask()
            return
        if self._plain_reads:
            self._read_data_ready()
            return
        # Like libuv, keep reading while reads fill the buffer: one readiness dispatch per
        # socket-buffer's worth instead of one per recv.
        for _ in range(_READS_PER_EVENT):
            if not self._read_once() or not self._reading or self._closing:
                return

    def _read_data_ready(self) -> None:
        """Reads for a Protocol: _read_data's steps in one frame, up to _READS_PER_EVENT
        while each read fills the read size."""
        if not self._reading or self._eof_received or self._closing or self._rx_blocked:
            return
        buf = self._read_buffer
        if buf is None:
            buf = self._take_read_buffer()
        size = len(buf)
        for _ in range(_READS_PER_EVENT):
            try:
                nbytes = self._sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fatal_error(exc, "Fatal read error on socket transport")
                return
            if not nbytes:
                self._on_end_of_data()
                return
            try:
                self._protocol.data_received(buf[:nbytes])  # a bytes copy: the buffer is shared
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
            if nbytes < size or not self._reading or self._closing or self._sock is None:
                return
            if not self._plain_reads:  # set_protocol() to a BufferedProtocol
                self._read_ready(0)
                return

    def _take_read_buffer(self) -> mmap.mmap:
        # On the first read, in the loop's thread (the buffer is per thread), not at creation.
        buf = self._read_buffer = thread_read_buffer(self._options.read_size)
        return buf

    def _read_data(self, nbytes: int = 0) -> int:
        """One read of up to ``nbytes`` (0: the read size) for a Protocol: the bytes
        delivered to data_received, 0 when nothing came (EAGAIN, EOF, an error, a callback
        that raised: each handled here). The zero-copy reader's copies go through here too."""
        assert self._sock is not None
        buf = self._read_buffer
        if buf is None:
            buf = self._take_read_buffer()
        try:
            got = self._sock.recv_into(buf, nbytes)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return 0
        if not got:
            self._on_end_of_data()
            return 0
        try:
            self._protocol.data_received(buf[:got])  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return 0
        return got if self._sock is not None else 0

    def _read_data_step(self) -> bool:
        """``_read_once`` for a Protocol: True if the read filled the read size."""
        return self._read_data() == self._options.read_size

    def _read_into_buffer(self) -> bool:
        """One recv_into a BufferedProtocol's buffer; True if it filled it."""
        assert self._sock is not None
        try:
            buf = self._protocol.get_buffer(-1)  # type: ignore[attr-defined]
            size = len(buf)
            if not size:
                raise RuntimeError("get_buffer() returned an empty buffer")
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(self._get_buffer_error(exc), "Fatal error: protocol.get_buffer() call failed.")
            return False
        try:
            nbytes = self._sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return False
        if not nbytes:
            self._on_end_of_data()
            return False
        try:
            self._protocol.buffer_updated(nbytes)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
            return False
        return nbytes == size and self._sock is not None

    def _get_buffer_error(self, exc: BaseException) -> BaseException:
        """What connection_lost gets when get_buffer() failed: the exception itself, as
        asyncio; on uvloop, uvloop's own RuntimeError, which its tests look for."""
        if not on_uvloop(self._loop):
            return exc
        error = RuntimeError("unhandled error (or an empty buffer) in get_buffer()")
        error.__cause__ = exc
        return error

    def _release_socket(self, pending_error: BaseException | None) -> None:
        super()._release_socket(pending_error)  # type: ignore[misc]
        # The compiled Reader (see _OnReadiness) and the transport refer to each other, as
        # does the bound _read_once: with the socket gone nothing calls either, and dropping
        # them here lets reference counting free
        # a closed connection, as the loops' own transports are freed (no cycle for the
        # collector: aiohttp's 11-byte requests ran ~1.2k instructions of gen-0 collections
        # per request under callgrind with 8 connections per phase).
        self.__dict__.pop("on_readiness", None)
        self._read_once = _read_nothing  # was a bound method of self

    def _on_end_of_data(self) -> None:
        if self._read_error is not None:
            self._fatal_error(self._read_error)
        else:
            self._on_eof()

    def _on_socket_error(self, exc: OSError) -> None:
        # A reset does not discard what had arrived before it; reading SO_ERROR cleared the
        # error, so the data is readable and recv() then reports EOF, where the stashed error
        # is delivered instead. With nothing queued there is nothing to wait for.
        if self._read_error is None and _unread_bytes(self._fd) > 0:
            self._read_error = exc
            return
        self._fatal_error(exc)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        # After a stashed reset, a send fails with EPIPE: report what the peer did instead.
        if self._read_error is not None and isinstance(exc, OSError):
            exc = self._read_error
        super()._fatal_error(exc, message)

    def _on_eof(self) -> None:
        self._eof_received = True
        self._update_mask()
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()  # type: ignore[attr-defined]  # the transport class's (transport.py)


class _OnReadiness:
    """``StreamReading.on_readiness``: where the compiled core is in use, each transport's is
    a ``Reader`` of its own (``_core_recv.c``), made when the multiplexer first binds it (at
    registration) and kept in the instance; it reads a ``Protocol``'s readable-only events in C
    with the checks and steps of ``_read_data_ready``, hands a writable-only event to
    ``_write_ready`` (what the base's ``on_readiness`` does with it) and every other event to
    ``_on_readiness``. Otherwise ``_on_readiness`` itself: without the core, with
    ``_reader_type`` set to None (as tests do), for zero-copy receive (its own read path),
    and for a class that makes one of the state attributes the Reader reads from the
    instance dict a data descriptor."""

    def __get__(self, transport: Any, owner: type | None = None) -> Any:
        python_path = StreamReading._on_readiness
        if transport is None:
            return python_path
        if _reader_type is None or transport._options.zc_receive is not None or not _plain_state(type(transport)):
            return types.MethodType(python_path, transport)
        reader = _reader_type(transport, python_path, transport._fd)
        transport.__dict__["on_readiness"] = reader  # a non-data descriptor: found first now
        return reader


StreamReading.on_readiness = _OnReadiness()  # type: ignore[assignment,method-assign]
_reader_type: Any = _CompiledReader
# What the Reader reads from the transport's instance dict (falling back to getattr).
_READER_STATE = ("_plain_reads", "_reading", "_eof_received", "_closing", "_sock", "_protocol")


_plain_state_of: dict[type, bool] = {}


def _plain_state(cls: type) -> bool:
    """No attribute the Reader reads is a data descriptor (a property) on ``cls``."""
    plain = _plain_state_of.get(cls)
    if plain is None:
        plain = _plain_state_of[cls] = not any(
            hasattr(type(getattr(cls, name, None)), "__set__") for name in _READER_STATE
        )
    return plain


def _read_nothing() -> bool:
    """``_read_once`` once the socket was released."""
    return False


def on_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return False
    return isinstance(loop, uvloop.Loop)


def _unread_bytes(fd: int) -> int:
    """Bytes received and not yet read (SIOCINQ; a FIN is not counted)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0
