"""The zero-copy TCP transport: asyncio.Transport plus ``write_zc(buf) -> Future[Completion]``.

Ordering: every byte given to write(), writelines() and write_zc() leaves in call order through
one queue. Each queue entry is either a *held* buffer (write_zc, or an immutable ``bytes`` from
write() at or above the threshold) that may be sent zero-copy and stays referenced until the
kernel releases it, or a *copy* buffer of our own (what asyncio's contract lets the caller mutate
after write() returns), which is only ever sent by plain copying sends.
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import socket
import stat
import struct
from typing import Any, Iterable, cast

from .base import TransportOptions, ZeroCopyTransportBase, byte_view, logger
from .completions import Completion, WriteHandle
from .policy import ZeroCopyState
from .readiness import Multiplexer
from .streamread import StreamReading, on_uvloop

# One os.sendfile call moves at most this much; the socket buffer limits it long before.
_SENDFILE_MAX = 1 << 30


def _immutable(data: bytes | bytearray | memoryview) -> bool:
    if type(data) is bytes:
        return True
    return type(data) is memoryview and type(data.obj) is bytes


# writelines() gathers at most this many items into one sendmsg (IOV_MAX is 1024).
_GATHER_MAX = 64

# A peer whose advertised receive window stayed below this for the last _PEER_WINDOW_SPAN gets
# copies, not MSG_ZEROCOPY. Measured here (kernel 6.18, loopback): a peer with SO_RCVBUF 4096
# (window 4096) made zero-copy writes crawl, 64 KiB in ~27 s against 0.03 s copied, with 47
# retransmits and 51 tail-loss probes per 256 KiB; plain sockets do the same, so it is the
# kernel's handling of zero-copy skbs against a tiny receive buffer (the receiver's prune/drop
# counters rose), not aiozc. The sender's own SO_SNDBUF did not matter (4096 with a default peer:
# no crawl). A default peer advertises ~64 KiB at connect and more once autotuned.
_MIN_PEER_WINDOW = 32 * 1024
# The peak over this span decides, not the last reading: a slow reader's window is 0 while its
# (large) buffer is full, and that must not cost zero-copy; a tiny buffer never opens wider.
_PEER_WINDOW_SPAN = 1.0
# struct tcp_info's tcpi_snd_wnd (Linux 5.4+): the peer's advertised window after scaling.
_TCPI_SND_WND = struct.Struct("=228xI")
# One reading serves this long: the getsockopt costs ~3 us here and a write can ask twice.
_PEER_WINDOW_MAX_AGE = 0.01


class _Segment:
    """One queue entry. ``write`` is None for our own copy buffers (a bytearray we may extend)."""

    __slots__ = ("data", "offset", "write")

    def __init__(self, data: memoryview | bytearray, write: WriteHandle | None) -> None:
        self.data = data
        self.offset = 0
        self.write = write

    def remaining(self) -> int:
        return len(self.data) - self.offset


class _FileSegment:
    """A queue entry sent with os.sendfile: pages go from the page cache, never through us.

    It owns a dup of the file descriptor, so the caller closing (or reusing) its file after a
    cancellation can never make us send from the wrong file.
    """

    __slots__ = ("fd", "start", "offset", "end", "future")
    write = None  # never a copy buffer of ours, never tracked by the completion tracker
    data = None

    def __init__(self, fd: int, offset: int, end: int, future: asyncio.Future[int]) -> None:
        self.fd = fd
        self.start = self.offset = offset
        self.end = end
        self.future = future

    def finish(self, exc: BaseException | None = None) -> None:
        os.close(self.fd)
        if self.future.done():
            return
        if exc is None:
            self.future.set_result(self.offset - self.start)
        else:
            self.future.set_exception(exc)


class ZeroCopyTransport(StreamReading, ZeroCopyTransportBase, asyncio.Transport):
    """TCP transport over MSG_ZEROCOPY (or another engine); see the module docstring."""

    # io_uring: at most one zero-copy send in flight (stream order); its result advances the
    # head segment like a synchronous send would (_after_zc_result).
    _async_sends = True
    _lost_before_release = True  # see base; close() never waits for the peer to read

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        options: TransportOptions | None = None,
        *,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        self._queue: collections.deque[_Segment | _FileSegment] = collections.deque()
        self._eof_received = False
        self._hup = False
        self._eof = False
        self._lost_writes = 0
        # A peer's reset read from SO_ERROR while received data was still queued: delivered
        # after that data, as the stock transports do (their recv() reports it at the end).
        self._read_error: OSError | None = None
        self._server = server
        self._peer_window_at = self._peer_window_peak_at = float("-inf")
        self._peer_window_peak = 0
        asyncio.Transport.__init__(self, extra)
        ZeroCopyTransportBase.__init__(self, loop, sock, protocol, options or TransportOptions(), extra)
        if self._options.zc_receive is not None:
            from .zcread import ZeroCopyReader  # noqa: PLC0415 - its cffi only for those who opt in

            self._zc_reader = ZeroCopyReader(self, self._options.zc_receive)
        self._read_once = self._read_path(protocol)
        if server is not None:
            server._attach(self)
        loop.call_soon(self._connection_made, waiter)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # The stock transports differ once the fd is closed: asyncio gives the closed socket,
        # uvloop None (its test_tcp_handle_abort_in_connection_made). Follow the loop's own.
        if name == "socket" and self._sock is None and on_uvloop(self._loop):
            sock = self._extra.get("socket")
            if sock is None or sock.fileno() == -1:
                return default
        return super().get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        """Bytes queued in user space, as with the stock transports. Bytes sent zero-copy and
        not yet released are in the kernel's send buffer like any sent data; they are bounded
        by ``max_pinned_bytes`` (above it data is sent by copy) and shown in stats."""
        return self._queued

    # -- readiness -------------------------------------------------------------------------

    def _mask(self) -> int:
        read = self._reading and not self._eof_received and not self._closing and not self._rx_blocked
        # While a zero-copy send is in flight its result, not EPOLLOUT, resumes flushing.
        write = bool(self._queue) and not self._zc_in_flight
        # A hung-up socket stays readable/EPOLLHUP forever; edge-triggered while we are not
        # reading keeps that from spinning the loop while completions can still arrive.
        edge = self._closing or (self._hup and not read)
        return Multiplexer.mask(read=read, write=write, edge=edge)

    def _write_ready(self) -> None:
        self._flush()

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        # Like asyncio, take writes after close() until the queue has drained and the close
        # began: resume_writing() during close() may write more (TLS's last records do).
        if self._sock is None or self._conn_lost or self._close_timer is not None:
            self._lost_writes += 1
            if self._lost_writes == 5:
                logger.warning("%r: write() on a closing or closed transport", self)
            return
        if not data:
            return
        # An exact bytes object (or a view of one) cannot change under us, so holding a
        # reference is as good as a copy: it may go zero-copy. Anything mutable must be copied
        # if it has to wait.
        if _immutable(data) and len(data) >= self._options.zc_threshold and self._zc_possible():
            self._enqueue_held(byte_view(data), None)
        else:
            self._enqueue_copy(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """write() of each item, in order.

        With nothing queued and no item due to go zero-copy, the items leave in one sendmsg:
        headers and body in one system call and one segment, as stock transports send them
        once aiohttp has joined them, minus the join's copy (two sends per response instead
        cost aiohttp under wrk up to half its requests/s, measured).
        """
        # Every item is checked before any is sent, as asyncio's b"".join() does: a bad item
        # must not leave the first ones on the wire.
        items = list(list_of_data)
        for index, data in enumerate(items):
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"writelines() item {index}: data must be a bytes-like object, "
                    f"not {type(data).__name__!r}"
                )
        index, offset = self._gather_now(items) if len(items) > 1 else (0, 0)
        if offset:
            self.write(memoryview(items[index]).cast("B")[offset:])
            index += 1
        for data in items[index:]:
            self.write(data)

    def _gather_now(self, chunks: list[Any]) -> tuple[int, int]:
        """One copying sendmsg of ``chunks`` when write() would send each at once by copy
        anyway; returns where write() takes over: (chunk index, bytes of it already sent)."""
        if self._queue or self._eof or self._closing or self._sock is None or len(chunks) > _GATHER_MAX:
            return 0, 0
        threshold = self._options.zc_threshold
        for data in chunks:
            kind = type(data)
            if kind is memoryview:
                if not data.c_contiguous:
                    return 0, 0  # write() raises for it, in order
            elif kind is not bytes and kind is not bytearray:
                return 0, 0
            if len(data) >= threshold and _immutable(data) and self._zc_possible() and (
                self._wants_zerocopy(len(data))
            ):
                return 0, 0
        try:
            sent = self._sock.sendmsg(chunks)
        except (BlockingIOError, InterruptedError):
            return 0, 0
        except OSError as exc:
            self._fatal_error(exc)
            return len(chunks), 0  # the connection is gone: write() drops the rest
        self._account_send(None, sent, False)
        for index, data in enumerate(chunks):
            nbytes = data.nbytes if type(data) is memoryview else len(data)
            if sent < nbytes:
                return index, sent
            sent -= nbytes
        return len(chunks), 0

    def write_zc(self, buf: Any) -> asyncio.Future[Completion]:
        """Send ``buf`` without copying it where the kernel allows.

        ``buf`` is any C-contiguous buffer; it stays referenced (a ``bytearray`` cannot be
        resized) until the returned future resolves, after which it may be reused or mutated.
        The future's :class:`Completion` says how many bytes and whether the kernel really sent
        them from ``buf`` (``zerocopy``) or copied them.
        """
        self._check_writable("write_zc")
        if self._eof:
            raise RuntimeError("Cannot call write_zc() after write_eof()")
        view = byte_view(buf)
        if not len(view):
            view.release()
            return self._done_future(Completion(0, False))
        future = self._new_future()
        self._enqueue_held(view, future)
        return future

    async def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (to EOF if None) with os.sendfile.

        In order: after everything written before, before anything written after. Zero-copy
        from the page cache, nothing is pinned and no buffer is held. Returns bytes sent (less
        than ``count`` only if the file is shorter). Raises NotImplementedError, before sending
        anything, for objects os.sendfile cannot send from, so callers can fall back to reads
        (what asyncio's loop.sendfile contract and aiohttp's FileResponse expect).
        """
        self._check_writable("sendfile")
        if self._eof:
            raise RuntimeError("Cannot call sendfile() after write_eof()")
        end = _file_end(file, offset, count)
        if end <= offset:
            return 0
        future: asyncio.Future[int] = self._loop.create_future()
        self._queue.append(_FileSegment(os.dup(file.fileno()), offset, end, future))
        if len(self._queue) == 1:
            self._flush()
        else:
            self._update_mask()
        return await future

    def _wants_zerocopy(self, nbytes: int, *, continuing: bool = False) -> bool:
        # The policy first (in copy-fallback it says no without a syscall), then the peer's
        # window, re-read as writes come: peers shrink SO_RCVBUF after connecting (CPython's
        # sendfile tests do), which only later ACKs show.
        if not super()._wants_zerocopy(nbytes, continuing=continuing):
            return False
        return continuing or self._peer_window() >= _MIN_PEER_WINDOW

    def _peer_window(self) -> int:
        """The peak of the peer's advertised receive window over about _PEER_WINDOW_SPAN."""
        now = self._loop.time()
        if now - self._peer_window_at >= _PEER_WINDOW_MAX_AGE:
            self._peer_window_at = now
            seen = self._read_peer_window()
            if seen >= self._peer_window_peak or now - self._peer_window_peak_at >= _PEER_WINDOW_SPAN:
                self._peer_window_peak = seen
                self._peer_window_peak_at = now
        return self._peer_window_peak

    def _read_peer_window(self) -> int:
        if self._sock is None:
            return _MIN_PEER_WINDOW
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_SND_WND.size)
        except OSError:
            return _MIN_PEER_WINDOW
        if len(info) < _TCPI_SND_WND.size:  # a kernel older than 5.4
            return _MIN_PEER_WINDOW
        return int(_TCPI_SND_WND.unpack_from(info)[0])

    def _zc_possible(self) -> bool:
        return self._policy.state is not ZeroCopyState.DISABLED

    def _enqueue_held(self, view: memoryview, future: asyncio.Future[Completion] | None) -> None:
        nbytes = len(view)
        tried_now = not self._queue and not self._wants_zerocopy(nbytes)
        sent = 0
        if tried_now:
            # Nothing queued ahead and nothing to pin: send at once, and if the socket takes it
            # all there is no completion to track (measured: ~4 us less per 64 KiB write).
            sent = self._try_send_now(view)
            if sent == nbytes:  # the common case, inline
                view.release()
                if future is not None:
                    self.stats.copy_writes += 1
                    future.set_result(self._copy_completion(sent))
                return
            if sent < 0:
                self._fail_unqueued(view, future)
                return
        write = self._open_write(view, future)
        if sent:
            self._tracker.on_sent(write, sent, zerocopy=False)
        seg = _Segment(view, write)
        seg.offset = sent
        self._queue.append(seg)
        self._queued += nbytes - sent
        if len(self._queue) == 1 and not tried_now:
            self._flush()
        else:
            self._update_mask()
        self._maybe_pause_protocol()

    def _fail_unqueued(self, view: memoryview, future: asyncio.Future[Completion] | None) -> None:
        """A write that never entered the queue failed: the connection was lost sending it."""
        view.release()
        if future is not None:
            future.set_exception(ConnectionResetError("connection lost during write_zc()"))

    def _enqueue_copy(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is bytes:
            # The common small write (aiohttp's joined headers and body) goes to send() as it
            # is, without a memoryview around it.
            sent = self._try_send_now(data) if not self._queue else 0  # type: ignore[arg-type]
            if sent < 0 or sent == len(data):
                return
            with memoryview(data) as view:
                self._append_copy(view[sent:])
        else:
            view = byte_view(data) if isinstance(data, memoryview) else memoryview(data)
            with view:
                sent = 0
                if not self._queue:
                    sent = self._try_send_now(view)
                    if sent < 0:
                        return
                if sent == len(view):
                    return
                self._append_copy(view[sent:])
        self._update_mask()
        self._maybe_pause_protocol()

    def _try_send_now(self, view: memoryview) -> int:
        """Send mutable data at once (no queue ahead of it); -1 after a fatal error."""
        try:
            return self._send_chunk(None, view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._fatal_error(exc)
            return -1

    def _append_copy(self, view: memoryview) -> None:
        tail = self._queue[-1] if self._queue else None
        if tail is not None and tail.write is None and isinstance(tail.data, bytearray):
            tail.data += view
        else:
            self._queue.append(_Segment(bytearray(view), None))
        self._queued += len(view)

    def _flush(self) -> None:
        if self._zc_in_flight:
            return  # the head segment is being sent; _after_zc_result resumes
        try:
            while self._queue and self._send_head():
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._fatal_error(exc)
            return
        self._after_flush()

    def _send_head(self) -> bool:
        """Send from the head segment; True if it was sent whole (try the next one)."""
        seg = self._queue[0]
        if isinstance(seg, _FileSegment):
            return self._send_file_head(seg)
        if seg.write is None:
            data = seg.data
            assert isinstance(data, bytearray)
            with memoryview(data) as view:
                sent = self._send_chunk(None, view)
            del data[:sent]
            self._queued -= sent
            if data:
                return False
            self._queue.popleft()
            return True
        held = cast(memoryview, seg.data)  # held segments keep the caller's buffer view
        return self._advance_held(seg, self._send_chunk(seg.write, held[seg.offset :]))

    def _advance_held(self, seg: _Segment, sent: int) -> bool:
        """``sent`` bytes of the held head segment went out; True if it is done."""
        seg.offset += sent
        self._queued -= sent
        if seg.offset < len(seg.data):
            return False
        self._queue.popleft()
        assert seg.write is not None
        self._close_write(seg.write)
        return True

    def _after_zc_result(self, write: WriteHandle | None, sent: int) -> None:
        if self._sock is None:
            return
        if not sent:
            self._update_mask()  # the socket was full (-EAGAIN): EPOLLOUT resumes flushing
            return
        seg = self._queue[0]
        assert isinstance(seg, _Segment) and seg.write is write, "result of another segment"
        self._advance_held(seg, sent)
        self._flush()

    def _send_file_head(self, seg: _FileSegment) -> bool:
        """One os.sendfile call from the head file segment; True when it is done."""
        if seg.future.done():
            # The caller was cancelled. Unsent, the segment just goes; half sent, the peer's
            # framing is broken, so the connection must go too.
            self._queue.popleft()
            seg.finish()
            if seg.offset != seg.start:
                raise ConnectionAbortedError("sendfile() cancelled after it had started")
            return True
        sent = os.sendfile(self._fd, seg.fd, seg.offset, min(seg.end - seg.offset, _SENDFILE_MAX))
        if sent == 0:
            seg.end = seg.offset  # the file shrank under us: report what was sent
        seg.offset += sent
        self.stats.extra["sendfile_bytes"] = self.stats.extra.get("sendfile_bytes", 0) + sent
        if seg.offset < seg.end:
            return False
        self._queue.popleft()
        seg.finish()
        return True

    def _after_flush(self) -> None:
        if self._sock is None:
            return
        # resume_writing() before connection_lost(), as asyncio's transports order them.
        self._maybe_resume_protocol()
        if not self._queue:
            if self._eof:
                self._shutdown_write()
            if self._closing:
                self._start_close()
                return
        self._update_mask()

    def _shutdown_write(self) -> None:
        assert self._sock is not None
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal_error(exc)

    def _flushed(self) -> bool:
        return not self._queue

    def _discard_queue(self) -> None:
        for seg in self._queue:
            if isinstance(seg, _FileSegment):
                seg.finish(ConnectionResetError("connection lost before the file was sent"))
        self._queue.clear()
        self._queued = 0

    def _after_completions(self) -> None:
        super()._after_completions()
        if not self._conn_lost:
            self._maybe_resume_protocol()

    # -- closing ---------------------------------------------------------------------------

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._queue:
            self._shutdown_write()

    def close(self) -> None:
        """Flush queued data, then call connection_lost(None), as the stock transports do once
        everything is in the kernel. Until the kernel has released every pinned buffer (at most
        ``close_timeout`` seconds) the socket stays open behind the scenes, so write_zc()
        futures still resolve and held buffers stay alive."""
        if self._closing:
            return
        self._closing = True
        if self._queue:
            self._update_mask()
        else:
            self._start_close()

    def _before_socket_close(self, sock: socket.socket, pinned: bool) -> None:
        # Closing a socket whose send queue still holds pages of buffers we are giving back
        # (their futures fail now) would let the kernel go on sending them after the caller
        # reused them: the peer would get the new contents. RST (SO_LINGER {1, 0}) makes
        # close() drop that queue. With nothing pinned a plain close (FIN), as asyncio's abort.
        if pinned and sock.type == socket.SOCK_STREAM:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass

    def _notify_connection_lost(self, exc: BaseException | None) -> None:
        if self._zc_reader is not None:
            self._zc_reader.close()  # held leases stay valid: their regions are the pool's
        try:
            super()._notify_connection_lost(exc)
        finally:
            if self._server is not None:
                self._server._detach(self)
                self._server = None


def _file_end(file: Any, offset: int, count: int | None) -> int:
    """Where a sendfile of ``file`` stops; NotImplementedError if os.sendfile can't read it."""
    if offset < 0 or (count is not None and count < 0):
        raise ValueError(f"offset and count must be >= 0 (got {offset!r}, {count!r})")
    try:
        fileno = file.fileno()
    except (AttributeError, io.UnsupportedOperation) as exc:
        raise NotImplementedError("not a regular file") from exc
    st = os.fstat(fileno)
    if not stat.S_ISREG(st.st_mode):
        raise NotImplementedError("os.sendfile needs a regular file")
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    end = st.st_size if count is None else min(offset + count, st.st_size)
    return max(end, offset)
