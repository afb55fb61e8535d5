"""The general one-datagram path of the datagram transport: checks, the queue, retries, errors.

Every datagram that the compiled per-call path (hot.py) or a batch does not send itself goes
through here: ``_submit`` sends it now if nothing is queued ahead of it, else queues it, and
``_flush`` sends the queue when the socket has room. The engine makes the send call
(``_send_datagram``); the tracker learns of it in ``_finish_send``.
"""

from __future__ import annotations

import asyncio
import errno
import collections
from collections.abc import Callable
from typing import Any

from ..base import TransportClosedError, _Held, byte_view, logger
from ..completions import Completion
from ..policy import ZeroCopyState
from ._common import _LOG_LOST_SENDS, _STALE_ERROR_RETRIES, _DatagramHost, _covers, _Datagram
from .hot import _future_of


class _SendingMixin(_DatagramHost):
    """Part of :class:`~aiozc.datagram.transport.ZeroCopyDatagramTransport`."""

    _queue: Any
    _classifying: int | None
    _enobufs_datagram: _Datagram | None

    # -- the general path --------------------------------------------------------------------

    def _sendto(self, data: Any, addr: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        addr = self._destination(addr)
        if self._closing or self._sock is None:
            self._note_lost_send()
            return
        view = byte_view(data)
        too_big = self._oversize_error(len(view))
        if too_big is not None:
            view.release()
            self._error_received(too_big)
            return
        held = type(data) is bytes and len(view) >= self._options.zc_threshold and self._zc_possible()
        self._submit(_Datagram(view, addr, None, held))

    def _sendto_zc(self, buf: Any, addr: Any) -> asyncio.Future[Completion]:
        self._check_writable("sendto_zc")
        addr = self._destination(addr)
        view = byte_view(buf)
        nbytes = len(view)
        if self._max_size is not None and nbytes > self._max_size:
            view.release()
            raise ValueError(
                f"datagram of {nbytes} bytes exceeds the {self._max_size}-byte UDP payload limit"
            )
        future = self._make_future()
        self._submit(_Datagram(view, addr, future, True))
        return future

    def _zc_possible(self) -> bool:
        return self._policy.state is not ZeroCopyState.DISABLED

    def _destination(self, addr: Any) -> Any:
        if self._address is not None:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            return self._address
        if addr is None and self._extra.get("peername") is None:
            raise ValueError("the socket is not connected: an address is required")
        return addr

    def _oversize_error(self, nbytes: int) -> OSError | None:
        if self._max_size is None or nbytes <= self._max_size:
            return None
        return OSError(
            errno.EMSGSIZE,
            f"datagram of {nbytes} bytes exceeds the {self._max_size}-byte UDP payload limit",
        )

    def _note_lost_send(self) -> None:
        self._lost_sends += 1
        if self._lost_sends >= _LOG_LOST_SENDS:  # every one from the 5th on, as asyncio
            logger.warning("%r: sendto() on a closing or closed transport", self)

    def _submit(self, dg: _Datagram) -> None:
        """Send ``dg`` now if nothing is queued ahead of it, else queue it."""
        # A protocol callback run while a send error is being classified (error_received from
        # the drain) must not send in the middle of it: queue, EPOLLOUT flushes right after.
        if not self._queue and self._classifying is None and self._enobufs_datagram is None:
            try:
                self._send_with_retry(dg)
                self._maybe_pause_protocol()  # pinned bytes count as buffered
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._send_failed_now(dg, exc)
                return
        self._enqueue(dg)

    def _send_failed_now(self, dg: _Datagram, exc: OSError) -> None:
        if dg.batch is not None:
            self._batch_refused(dg, exc)  # part of the batch may be out already: never raise
            return
        dg.view.release()
        if dg.future is not None:
            dg.future.cancel()  # never handed out: sendto_zc raises instead
            raise exc
        self._error_received(exc)

    def _enqueue(self, dg: _Datagram) -> None:
        if not dg.held:
            # The caller may reuse its buffer once sendto() returns: keep our own copy.
            copy = memoryview(dg.view.tobytes())
            dg.view.release()
            dg.view = copy
        self._queue.append(dg)
        self._queued += dg.nbytes
        if len(self._queue) == 1:
            self._update_mask()
            self._hot_sync()  # datagrams behind this one wait for it
        self._maybe_pause_protocol()

    def _send_with_retry(self, dg: _Datagram) -> None:
        """Send one datagram; raises BlockingIOError or the OSError that refused it."""
        for attempt in range(_STALE_ERROR_RETRIES + 1):
            try:
                self._send_datagram(dg)
                return
            except (BlockingIOError, InterruptedError):
                raise
            except OSError as exc:
                if attempt == _STALE_ERROR_RETRIES or not self._classify_send_error(exc):
                    raise
                if self._sock is None:
                    raise TransportClosedError("transport closed while sending") from exc

    def _classify_send_error(self, exc: OSError) -> bool:
        """True if ``exc`` was an earlier datagram's ICMP error (already reported): retry.

        Drains the error queue, which reports queued ICMP errors through error_received.
        """
        if exc.errno is None or not self._errqueue_ok or self._sock is None:
            return False
        self._classifying, self._stale_icmp, self._own_error_queued = exc.errno, False, False
        self._hot_sync()
        try:
            self._drain_errqueue()
        finally:
            self._classifying = None
            self._hot_sync()
        return self._stale_icmp and not self._own_error_queued

    def _send_datagram(self, dg: _Datagram) -> None:
        """One datagram to the kernel (one send call, two after a refused zero-copy send).

        Unlike a TCP write, a datagram is accepted whole or not at all, so its tracker write is
        opened only once the kernel took it: a refused datagram never leaves a write behind.
        """
        if self._sock is None:
            raise TransportClosedError("transport is closed")
        if dg.held and not dg.copy_only and self._wants_zerocopy(dg.nbytes) and self._send_zerocopy(dg):
            return
        self._send_copy(dg)

    def _send_zerocopy(self, dg: _Datagram) -> bool:
        """True once ``dg`` is dealt with; False if the kernel refused it for lack of option
        memory (nothing sent, no id used): the caller then sends it by copy."""
        assert self._sock is not None
        if self._submit_zc_fn is not None:
            self._submit_datagram_zc(dg)
            return True
        try:
            sent = self._engine.send(self._sock, dg.view, zerocopy=True, address=self._send_address(dg))
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            return self._zerocopy_enobufs(dg)
        self._finish_send(dg, sent, zerocopy=True)
        return True

    def _send_copy(self, dg: _Datagram) -> None:
        assert self._sock is not None
        try:
            sent = self._engine.send(self._sock, dg.view, zerocopy=False, address=self._send_address(dg))
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            # With IP_RECVERR, udp_send_skb() returns ENOBUFS for a datagram the local transmit
            # queue dropped (qdisc full) instead of hiding it: accepted, then lost like any UDP
            # datagram. Report the loss; the datagram is done.
            sent = dg.nbytes
            self._report_local_drop()
        self._finish_send(dg, sent, zerocopy=False)

    def _zerocopy_enobufs(self, dg: _Datagram) -> bool:
        """A MSG_ZEROCOPY send failed with ENOBUFS, which means one of two things (measured):

        * option memory (net.core.optmem_max / RLIMIT_MEMLOCK) could not hold the notification:
          nothing was sent and no id was used. Resend by copy; the policy decides whether
          zero-copy is worth trying again (two-tier rule, see ZeroCopyPolicy.on_enobufs).
        * the qdisc dropped the datagram after the kernel accepted it (IP_RECVERR reports that
          as ENOBUFS): the id *was* used, and its notification is already on the error queue
          when send() returns, because the drop freed the skb inside the call. If that is so,
          the tracker must count the id or every later completion would name the wrong write.
        """
        self.stats.enobufs += 1
        # Counted before the drain: on a fast path the notification that filled optmem is
        # already queued, so after the drain nothing looks outstanding and the policy would
        # disable zero-copy for the transient case (the base's _on_enobufs does the same).
        outstanding = self._tracker.outstanding_ids
        if self._drain_claiming_id(dg):
            self._report_local_drop()
            if dg.batch is not None:
                self._batch_datagram_done(dg)
            return True
        self._policy.on_enobufs(outstanding_ids=outstanding)
        self._sync_state()
        if self._sock is None:
            raise TransportClosedError("transport closed while sending")
        return False

    def _drain_claiming_id(self, dg: _Datagram) -> bool:
        """Drain the error queue with ``dg`` as the datagram whose refused send may have used
        the next id (qdisc drop, see _zerocopy_enobufs); True if its notification was there
        and the id is now accounted."""
        self._enobufs_datagram, self._enobufs_consumed = dg, False
        self._hot_sync()
        try:
            self._drain_errqueue()
        finally:
            self._enobufs_datagram = None
            self._hot_sync()
        return self._enobufs_consumed

    def on_zerocopy_range(self, lo: int, hi: int, copied: bool) -> None:
        dg = self._enobufs_datagram
        if dg is not None and _covers(lo, hi, self._tracker.next_id):
            # The id the kernel gave the send that "failed" with ENOBUFS: account it first.
            self._enobufs_datagram = None
            self._enobufs_consumed = True
            if dg.batch is not None:
                # The batch's write stays open: the caller counts the datagram done after the drain.
                self._account_send(dg.batch.write, dg.nbytes, True)
            else:
                write = self._open_write(dg.view, dg.future)
                self._account_send(write, dg.nbytes, True)
                self._resolve(self._tracker.close_write(write))  # no drain: we are inside one
        super().on_zerocopy_range(lo, hi, copied)

    def _finish_send(self, dg: _Datagram, sent: int, *, zerocopy: bool) -> None:
        if sent != dg.nbytes:
            raise OSError(errno.EMSGSIZE, f"datagram truncated: {sent} of {dg.nbytes} bytes sent")
        if not dg.held:
            self._account_send(None, sent, zerocopy)
            dg.view.release()
            return
        if dg.batch is not None:
            self._account_send(dg.batch.write, sent, zerocopy)
            self._batch_datagram_done(dg)
            return
        if not sent:  # an empty datagram: a write of 0 bytes, resolved now
            write = self._open_write(dg.view, dg.future)
            self._close_write(write)
            return
        # One datagram is one send call: the tracker's one-step write.
        done = self._tracker.sent_whole(_Held(dg.future, dg.view), sent, zerocopy=zerocopy)
        self._account_send(None, sent, zerocopy)
        if done:
            self._resolve(done)
        elif self._zc_since_drain >= self._options.errqueue_drain_every:
            self._drain_errqueue()

    def _direct_send_failed(
        self, dg: _Datagram, exc: OSError, zerocopy: bool
    ) -> asyncio.Future[Completion]:
        """A datagram sent directly (the compiled per-call path, a batch's sendmmsg) was refused:
        do what the general path does for that error."""
        if isinstance(exc, (BlockingIOError, InterruptedError)):
            self._enqueue(dg)
        elif exc.errno == errno.ENOBUFS and zerocopy:
            if not self._zerocopy_enobufs(dg):  # refused for option memory: send it by copy
                dg.copy_only = True
                self._submit(dg)
        elif exc.errno == errno.ENOBUFS:
            self._report_local_drop()  # a copy the qdisc dropped (see _send_copy)
            self._finish_send(dg, dg.nbytes, zerocopy=False)
        elif self._classify_send_error(exc):
            self._submit(dg)  # an earlier datagram's ICMP error, now reported: send this one
        elif dg.future is not None:
            self._send_failed_now(dg, exc)  # raises
        else:
            dg.view.release()
            self._error_received(exc)
        return dg.future  # type: ignore[return-value]

    def _requeue(self, dg: _Datagram, at_head: bool = True) -> None:
        if at_head:
            self._queue.appendleft(dg)
        else:
            self._queue.append(dg)
        self._queued += dg.nbytes
        self._update_mask()
        self._hot_sync()

    def _report_local_drop(self) -> None:
        self.stats.extra["local_drops"] = self.stats.extra.get("local_drops", 0) + 1
        self._error_received(
            OSError(errno.ENOBUFS, "datagram dropped by the local transmit queue (qdisc full)")
        )

    def _send_address(self, dg: _Datagram) -> Any:
        # A connected socket uses send(): what asyncio does, and no per-call address lookup.
        return None if self._extra.get("peername") else dg.addr

    def _flush(self) -> None:
        while self._queue and self._sock is not None:
            dg = self._queue[0]
            try:
                self._send_with_retry(dg)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._queue.popleft()
                self._queued -= dg.nbytes
                self._queued_send_failed(dg, exc)
                continue
            self._queue.popleft()
            self._queued -= dg.nbytes
        self._after_flush()

    def _queued_send_failed(self, dg: _Datagram, exc: OSError) -> None:
        if dg.batch is not None:
            self._batch_refused(dg, exc)
            return
        dg.view.release()
        if isinstance(exc, TransportClosedError):
            return
        if dg.future is not None:
            if not dg.future.done():
                dg.future.set_exception(exc)
        else:
            self._error_received(exc)

    def _after_flush(self) -> None:
        if self._sock is None:
            return
        self._hot_sync()
        if not self._queue and self._closing:
            self._start_close()
            return
        self._update_mask()
        self._maybe_resume_protocol()

    def _flushed(self) -> bool:
        return not self._queue

    def _discard_queue(self) -> None:
        """Queued datagrams are failed in _fail_pending, which knows the reason."""

    def _fail_pending(self, exc: BaseException | None) -> None:
        error = exc if isinstance(exc, Exception) else None
        error = error or ConnectionAbortedError("transport closed before the datagram was sent")
        self._fail_coalesced(error)
        queue, self._queue = self._queue, collections.deque()
        self._queued = 0
        for dg in queue:
            dg.view.release()
            if dg.future is not None and not dg.future.done():
                dg.future.set_exception(error)
        self._hot_sync()  # blocked from now on: the fd is about to close
        # The base's abandon, also for the compiled path's tokens (its futures, or None).
        unsent = exc or ConnectionAbortedError("transport closed before the write completed")
        if not isinstance(unsent, Exception):
            unsent = ConnectionAbortedError(str(unsent))
        tokens = self._tracker.abandon()
        self._hot_release()  # the compiled path's buffer exports, before the futures fail
        for token in tokens:
            future = _future_of(token)
            if future is not None and not future.done():
                future.set_exception(unsent)
        self.stats.pinned_bytes = 0

    def _after_completions(self) -> None:
        super()._after_completions()
        if not self._conn_lost:
            self._maybe_resume_protocol()

    # -- errors ----------------------------------------------------------------------------

    # Inside sendto(): asyncio's and uvloop's transports call error_received() synchronously
    # from sendto(), so what it raises reaches sendto()'s caller. aiozc's send paths may call it
    # in the middle of their bookkeeping: the exception is kept and raised when the path is done.
    _sendto_active = False
    _sendto_error: BaseException | None = None

    def _in_sendto(self, send: Callable[..., Any], *args: Any) -> None:
        outer, self._sendto_active = self._sendto_active, True
        try:
            send(*args)
        finally:
            self._sendto_active = outer
        error = self._sendto_error
        if error is not None and not outer:
            self._sendto_error = None
            raise error

    def _report_soft_error(self, exc: OSError) -> None:
        """A recv/send error on the socket: report it once, whichever way it came."""
        before = self.stats.socket_errors
        self._drain_errqueue()
        if self.stats.socket_errors == before:
            self._error_received(exc)

    def _error_received(self, exc: OSError) -> None:
        if self._protocol is None:
            return
        if self._batching:
            # A batch's tracker write is open: a datagram sent from the callback now would take
            # an id in the middle of the batch's run. Called once the batch is handed over.
            self._deferred_calls.append(("error_received", exc))
            return
        try:
            self._protocol.error_received(exc)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as error:
            if self._sendto_active and self._sendto_error is None:
                self._sendto_error = error  # raised by _in_sendto once the send path is done
                return
            self._loop.call_exception_handler(
                {"message": "protocol.error_received() failed", "exception": error, "transport": self}
            )
