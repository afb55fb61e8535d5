"""The send side of the TCP transport: plain sends, zero-copy sends, and when to skip asking.

Two send calls, one per kind, each made in one place:

* ``_send_copy``: a plain ``send(2)``. Every engine copies the same way (``engine.send`` with
  ``zerocopy=False`` is ``sock.send`` for msg_zerocopy, io_uring and copy alike), so the stream
  makes that call itself and skips the engine's frame; ``write()``'s direct path is the same
  call written inline (see ``ZeroCopyTransport.write``).
* ``_send_zc``: a send of a held write that the policy wants zero-copy, through the engine
  (MSG_ZEROCOPY, or an io_uring SEND_ZC whose result comes back later), tracked by id.

The direct path: while the policy could not want zero-copy for any write (copy-fallback before
a re-probe is due, disabled, a probe in flight), ``_direct_max`` is unbounded and ``write()``
sends at once with no policy, tracker or peer-window call, as a stock transport does. On one
host that is every TCP write after the probe (loopback copies every zero-copy send). Measured
with callgrind, 64 KiB writes over loopback: 26k user instructions per write() before, 7.2k
with it, against 6.6k (asyncio) / 4.6k (uvloop) for the stock transports.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from os import writev as _fd_writev
from typing import TYPE_CHECKING, Any

from .completions import WriteHandle
from .engines import SendPending
from .policy import NEVER

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
# While a probe is in flight the direct path copies without asking, and the probe's answer waits
# on the error queue, which the loop reads only when the writer yields. A writer whose socket
# never fills never yields: in the guest VM (TCG) a probe's answer stayed unread for whole
# 256 MiB-1 GiB transfers and every write was copied. So every this many bytes copied behind a
# probe, the direct path reads the error queue itself (one recvmsg).
_ANSWER_CHECK_BYTES = 1 << 20
# writelines() gathers at most this many items into one writev (IOV_MAX is 1024).
_GATHER_MAX = 64


def _immutable(data: bytes | bytearray | memoryview) -> bool:
    if type(data) is bytes:
        return True
    return type(data) is memoryview and type(data.obj) is bytes


class StreamSending:
    """Mixed into ZeroCopyTransport ahead of ZeroCopyTransportBase (which has the tracker,
    the policy, the stats and ``_account_send``)."""

    _sock: socket.socket | None
    _loop: Any
    _policy: Any
    _options: Any
    stats: Any
    _zc_in_flight: int
    _submit_zc_fn: Any
    _engine: Any
    _mux: Any
    _fd: int
    _queue: Any
    _registered_mask: int
    _errqueue_quiet: bool
    _eof: bool

    if TYPE_CHECKING:  # defined by the transport and its base (for mypy only)

        def _mask(self) -> int: ...
        def _idle(self) -> bool: ...
        def _on_loop_for(self, mask: int) -> bool: ...
        def write(self, data: Any) -> None: ...
        def _queue_rest(self, data: Any, nbytes: int, sent: int) -> None: ...
        def _zc_possible(self) -> bool: ...
        def _fatal_error(self, exc: BaseException, message: str = ...) -> None: ...
        def _drop_if_lost(self) -> bool: ...

    def _init_sending(self) -> None:
        self._peer_window_at = self._peer_window_peak_at = float("-inf")
        self._peer_window_peak = 0
        # Writes of fewer bytes may go straight to send(2) when nothing is queued (see the
        # module docstring); 0 while closing, after write_eof, or before the socket is open.
        self._direct_max = 0
        # Plain-sent bytes the policy has not been told yet, and how many it may be sent
        # before it must be asked again (its copy_allowance()).
        self._plain_sent = 0
        self._plain_budget = NEVER

    # -- the direct path's gate ------------------------------------------------------------

    def _refresh_direct(self) -> None:
        """Recompute ``_direct_max`` after anything that may change the policy's answer."""
        if self._plain_sent >= self._plain_budget and self._policy.probe_in_flight:
            self._plain_budget = NEVER  # the drain below comes back here (on_zerocopy_range)
            self._drain_errqueue()  # type: ignore[attr-defined]
        self._tell_policy_plain()
        if not self._open_for_direct():
            self._direct_max = 0
            return
        allowance = self._policy.copy_allowance()
        if allowance > 0:
            self._direct_max = NEVER
            self._plain_budget = allowance
            if allowance == NEVER and self._policy.probe_in_flight:
                self._plain_budget = _ANSWER_CHECK_BYTES
        else:
            # Only writes below the threshold are copied whatever the policy says.
            self._direct_max = self._options.zc_threshold
            self._plain_budget = NEVER

    def _open_for_direct(self) -> bool:
        raise NotImplementedError

    def _tell_policy_plain(self) -> None:
        if self._plain_sent:
            sent, self._plain_sent = self._plain_sent, 0
            self._policy.on_sent(sent, zerocopy=False)

    # -- writelines: one gathered send ----------------------------------------------------

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """write() of each item, in order.

        With nothing queued and no item due to go zero-copy, the items leave in one writev:
        headers and body in one system call and one segment, as stock transports send them
        once aiohttp has joined them, minus the join's copy (two sends per response instead
        cost aiohttp under wrk up to half its requests/s, measured).
        """
        self._writelines_items(list(list_of_data))

    def _writelines_items(self, items: list[Any]) -> None:
        # Every item is checked before any is sent, as asyncio's b"".join() does: a bad item
        # must not leave the first ones on the wire.
        for index, data in enumerate(items):
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"writelines() item {index}: data must be a bytes-like object, "
                    f"not {type(data).__name__!r}"
                )
        if not self._eof and any(items) and self._drop_if_lost():
            return  # one lost write, as asyncio's writelines() is one write() of the join
        index, offset = self._gather_now(items) if len(items) > 1 else (0, 0)
        self._writelines_from(items, index, offset)

    def _writelines_from(self, items: list[Any], index: int, offset: int) -> None:
        """write() of ``items[index:]``, ``offset`` bytes of the first of them already sent."""
        if offset:
            # The socket is full: queue the rest of that item without trying it again.
            data = items[index]
            self._queue_rest(data, data.nbytes if type(data) is memoryview else len(data), offset)
            index += 1
        for data in items[index:]:
            self.write(data)

    def _gather_now(self, chunks: list[Any]) -> tuple[int, int]:
        """One copying sendmsg of ``chunks`` when write() would send each at once by copy
        anyway; returns where write() takes over: (chunk index, bytes of it already sent)."""
        if self._queue or not self._direct_max or len(chunks) > _GATHER_MAX:
            return 0, 0
        direct_max = self._direct_max
        for data in chunks:
            kind = type(data)
            if kind is memoryview:
                if not data.c_contiguous:
                    return 0, 0  # write() raises for it, in order
            elif kind is not bytes and kind is not bytearray:
                return 0, 0
            if len(data) >= direct_max and _immutable(data) and self._zc_possible() and (
                self._wants_zerocopy(len(data))
            ):
                return 0, 0
        try:
            # writev(2), as libuv gathers: ~1.06k fewer user instructions than sendmsg.
            sent = _fd_writev(self._fd, chunks)
        except (BlockingIOError, InterruptedError):
            return 0, 0
        except OSError as exc:
            self._fatal_error(exc)
            return len(chunks), 0  # the connection is gone: write() drops the rest
        if sent:
            self.stats.copy_sends += 1
            self.stats.copy_bytes += sent
            self._plain_sent += sent
            if self._plain_sent >= self._plain_budget:
                self._refresh_direct()
        for index, data in enumerate(chunks):
            nbytes = data.nbytes if type(data) is memoryview else len(data)
            if sent < nbytes:
                return index, sent
            sent -= nbytes
        return len(chunks), 0

    # -- the two send calls ----------------------------------------------------------------

    def _send_copy(self, data: Any) -> int:
        """One plain send; raises BlockingIOError when the socket is full, OSError on failure."""
        sent: int = self._sock.send(data)  # type: ignore[union-attr]
        if sent:
            stats = self.stats
            stats.copy_sends += 1
            stats.copy_bytes += sent
            self._plain_sent += sent
            if self._plain_sent >= self._plain_budget:
                self._refresh_direct()
        return sent

    def _send_zc(self, write: WriteHandle, chunk: memoryview) -> int:
        """One zero-copy send of (part of) ``write``; returns bytes accepted.

        Raises BlockingIOError when the socket is full (SendPending when an asynchronous
        engine took it) and OSError on failure. ENOBUFS is retried at once by copy, so no
        byte waits for a notification that may never come.
        """
        assert self._sock is not None
        if self._errqueue_quiet:
            # Its notifications will raise EPOLLERR: into the private epoll first (readiness).
            self._errqueue_quiet = False
            old, mask = self._registered_mask, self._mask()
            self._registered_mask = mask
            try:
                self._mux.modify(self._fd, mask)
            except OSError:
                # It could not open (out of fds): no notification could be read, so this
                # chunk goes by copy and the socket stays where it is.
                self._errqueue_quiet = True
                self._registered_mask = old
                copied: int = self._engine.send(self._sock, chunk, zerocopy=False)
                self._account_send(write, copied, False)
                return copied
        if self._submit_zc_fn is not None:
            self._submit_zc(write, chunk)  # raises SendPending
        try:
            sent: int = self._engine.send(self._sock, chunk, zerocopy=True)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            return self._send_after_enobufs(write, chunk)
        self._account_send(write, sent, True)
        return sent

    def _send_after_enobufs(self, write: WriteHandle, chunk: memoryview) -> int:
        """A zero-copy send of ``chunk`` refused with ENOBUFS: sent again at once by copy."""
        self._on_enobufs()
        sent: int = self._engine.send(self._sock, chunk, zerocopy=False)
        self._account_send(write, sent, False)
        return sent

    def _account_send(self, write: WriteHandle | None, sent: int, zerocopy: bool) -> int | None:
        ident: int | None = super()._account_send(write, sent, zerocopy)  # type: ignore[misc]
        # A probe in flight: the writes behind it may go direct. A zero-copy send changes the
        # policy's copy_allowance() only by starting a probe (policy.on_sent), so without one
        # in flight the direct path's gate stays as it is.
        if zerocopy and self._policy.probe_in_flight:
            self._refresh_direct()
        return ident

    def on_zerocopy_range(self, lo: int, hi: int, copied: bool) -> None:
        self._tell_policy_plain()  # bytes copied before the policy's answer count before it
        super().on_zerocopy_range(lo, hi, copied)  # type: ignore[misc]
        self._refresh_direct()
        if (self._direct_max == NEVER and self._idle() and self._sock is not None
                and self._options.zc_receive is None):
            # Every notification read and none due until the policy wants zero-copy again
            # (whose send moves it back first): the loop's own selector may serve it.
            self._errqueue_quiet = True
            mask = self._registered_mask = self._mask()
            self._mux.modify(self._fd, mask, on_loop=self._on_loop_for(mask))

    def _on_enobufs(self) -> None:
        super()._on_enobufs()  # type: ignore[misc]
        self._refresh_direct()

    def _wants_zerocopy(self, nbytes: int, *, continuing: bool = False) -> bool:
        # The policy first (in copy-fallback it says no without a syscall), then the peer's
        # window, re-read as writes come: peers shrink SO_RCVBUF after connecting (CPython's
        # sendfile tests do), which only later ACKs show.
        # (The base's rule, policy then pinned bytes, written out: one Python call less per ask.)
        if self._plain_sent:
            self._tell_policy_plain()
        if not self._policy.wants_zerocopy(nbytes, continuing=continuing):
            return False
        if self._tracker.pinned_bytes >= self._options.max_pinned_bytes:  # type: ignore[attr-defined]
            return False
        return continuing or self._peer_window() >= _MIN_PEER_WINDOW

    # -- asynchronous engines (io_uring) ---------------------------------------------------

    def _submit_zc(self, write: WriteHandle, chunk: memoryview) -> None:
        """Hand a zero-copy send to an asynchronous engine; always raises SendPending.

        The engine keeps ``chunk`` referenced until the kernel's notification, even if the
        write's future is cancelled or the transport aborted meanwhile.
        """
        assert self._sock is not None and self._submit_zc_fn is not None
        self._submit_zc_fn(self._sock, chunk, None, self._on_zc_result,
                           self._on_zc_released, (write, chunk))  # type: ignore[attr-defined]
        self._zc_in_flight += 1
        raise SendPending()

    def _on_zc_result(self, res: int, ctx: tuple[WriteHandle, memoryview],
                      ident: int | None) -> int | None:
        """The result of a submitted zero-copy send: bytes sent (> 0) or -errno.

        Returns the u32 id the tracker assigned if the send consumed one, so the engine can
        name it when the notification comes.
        """
        write, chunk = ctx
        self._zc_in_flight -= 1
        if self._sock is None:
            return None  # aborted meanwhile: the tracker forgot the write; nothing to account
        if res > 0:
            ident = self._account_send(write, res, True)
            self._after_zc_result(write, res)
            return ident
        if res in (0, -errno.EAGAIN):
            extra = self.stats.extra
            extra["zc_send_eagain"] = extra.get("zc_send_eagain", 0) + 1
            self._after_zc_result(write, 0)  # socket full: wait for EPOLLOUT, then resend
        elif res in (-errno.ENOBUFS, -errno.ENOMEM):
            # Optmem / RLIMIT_MEMLOCK (io_uring says ENOMEM): same rule as MSG_ZEROCOPY ENOBUFS.
            self._on_enobufs()
            self._resend_by_copy(write, chunk)
        else:
            from .base import _oserror

            self._fatal_error(_oserror(-res))  # type: ignore[attr-defined]
        return None

    def _resend_by_copy(self, write: WriteHandle, chunk: memoryview) -> None:
        if self._sock is None:
            return
        try:
            sent = self._engine.send(self._sock, chunk, zerocopy=False)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal_error(exc)  # type: ignore[attr-defined]
            return
        self._account_send(write, sent, False)
        self._after_zc_result(write, sent)

    def _after_zc_result(self, write: WriteHandle, sent: int) -> None:
        """A submitted send came back having moved ``sent`` bytes (0: the socket was full)."""
        raise NotImplementedError

    # -- the peer's window -----------------------------------------------------------------

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
