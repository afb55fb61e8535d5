"""The datagram transport on the io_uring engine: SEND_ZC per datagram, results and
notifications from the loop's ring (aiozc.engines.io_uring)."""

from __future__ import annotations

import errno
import os
from typing import Any

from ..base import _Held, byte_view
from ..completions import MASK32
from .._sys import core as _core
from ._common import _ZEROCOPY, PinSet, _Datagram, _DatagramHost, _result_error
from .batching import _Batch, _BatchRetry


class _UringMixin(_DatagramHost):
    """Part of :class:`~aiozc.datagram.transport.ZeroCopyDatagramTransport`."""

    # -- engines whose zero-copy sends complete later (io_uring) ---------------------------
    #
    # A datagram goes whole or not at all, so it is accounted when submitted (its id, its
    # pinned bytes) and the ring calls back only for a result other than "all bytes sent".
    # Many datagrams are in flight at once; one io_uring_enter per loop iteration submits them.

    def _send_batch_uring(self, batch: _Batch) -> int:
        """sendto_zc_many through io_uring: one SEND_ZC per datagram, submitted with this loop
        iteration's batch and accounted at once, with consecutive ids (see
        _submit_zerocopy_fast). Returns how many datagrams went; the rest (below the
        threshold, over the pinned budget, or while the policy says copy) take the general
        path."""
        if not self._batch_fast_ok() or self._policy.state is not _ZEROCOPY:
            return 0
        tracker = self._tracker
        threshold = self._options.zc_threshold
        budget = self._options.max_pinned_bytes - tracker.pinned_bytes
        sizes = batch.sizes
        pins = batch.pins
        uniform = pins.uniform if pins.__class__ is PinSet else -1
        total = pins.nbytes if uniform >= 0 else sum(sizes)
        smallest = uniform if uniform >= 0 else min(sizes, default=0)
        if sizes and smallest >= threshold and total - sizes[-1] < budget:
            count, nbytes = len(sizes), total  # all of them (the loop below, in C)
        else:
            count = nbytes = 0
            for size in sizes:  # as for single datagrams: zero-copy while below the pinned cap
                if size < threshold or budget <= 0:
                    break
                budget -= size
                nbytes += size
                count += 1
            if not count:
                return 0
        first = tracker.next_id
        write = batch.write
        tracker.on_sent_many(write, nbytes, count)
        # The engine takes these pins over and ends them at the notifications: the batch may
        # resolve or fail earlier (abort), the kernel's references must not end with it.
        if pins.__class__ is PinSet:
            pins = pins.split(count)  # the batch keeps the rest
        else:
            pins, batch.pins = pins[:count], pins[count:]
        self._engine.submit_zc_many(pins, sizes if count == len(sizes) else sizes[:count],  # type: ignore[attr-defined]
                                    self._datagram_zc_result, self._on_zc_released,
                                    (batch, first), first, self._batch_results_in)
        self._count_zc_sends(count, nbytes)
        # All but one count as done now; the last one holds the batch open until every result
        # is in, since a datagram the kernel refused for now is sent again (see
        # _datagram_zc_result) and the batch must not resolve before it went.
        self._batch_step(batch, count - 1)
        return count

    def _batch_results_in(self, ctx: tuple[_Batch, int]) -> None:
        self._batch_step(ctx[0])  # the hold taken in _send_batch_uring

    def _submit_datagram_zc(self, dg: _Datagram) -> None:
        """The general path's io_uring send of ``dg``: submit, then account it as sent whole."""
        assert self._sock is not None and self._submit_zc_fn is not None
        tracker = self._tracker
        ident = tracker.next_id
        batch = dg.batch
        token: _Held | _Batch = batch if batch is not None else _Held(dg.future, dg.view)
        self._submit_zc_fn(self._sock, dg.view[:], self._send_address(dg), self._datagram_zc_result,
                           self._on_zc_released, (token, dg), ident, dg.nbytes)
        if batch is not None:
            self._account_send(batch.write, dg.nbytes, True)
            self._batch_step(batch)
            return
        assert isinstance(token, _Held)
        write = tracker.open_write(token, dg.nbytes)
        self._account_send(write, dg.nbytes, True)
        self._close_write(write)
        self._maybe_pause_protocol()

    def _datagram_zc_result(self, res: int, ctx: Any, ident: int) -> None:
        """A result CQE other than "all bytes sent": the send failed (or was truncated).

        The attempt was accounted when submitted and consumed ``ident``. That id is completed
        now, as copied (nothing went out zero-copy), without the policy hearing of it: a burst
        of -EAGAIN results must not look like a kernel that copies. Returning None makes the
        engine ignore the notification still owed (it keeps the buffer until then). The
        datagram itself moves on to a retry or to its error, as with send(2)."""
        self.stats.zc_sends -= 1
        if self._sock is None:
            # Aborted or closed meanwhile: the tracker abandoned the write and failed its future.
            return None
        if isinstance(ctx, tuple) and isinstance(ctx[1], int):
            # sendto_zc_many's io_uring path: (batch, first id). The attempt counts as not
            # zero-copy in the batch's Completion; the datagram goes again on its own, as a
            # datagram the kernel refused at once would (EAGAIN: when there is room), and the
            # batch waits for it (_BatchRetry).
            batch, first = ctx
            i = (ident - first) & MASK32
            self.stats.zc_bytes -= batch.sizes[i]
            self._resolve(self._tracker.on_range(ident, ident, True))
            batch.left += 1
            retry = _Datagram(byte_view(batch.bufs[i]), self._address, _BatchRetry(self, batch), True)  # type: ignore[arg-type]
            if res < 0:
                self._datagram_zc_failed(retry, -res, at_head=False)
            else:
                self._queued_send_failed(retry, _result_error(res, retry.nbytes))
            return None
        if isinstance(ctx, tuple):  # the general path's (token, datagram)
            held, dg = ctx
        else:  # sendto_zc's io_uring path: its _Held
            held, dg = ctx, _Datagram(ctx.view, self._address, ctx.future, True)
        self.stats.zc_bytes -= dg.nbytes
        done = self._tracker.on_range(ident, ident, True)
        if dg.batch is None:
            # The failed attempt's write resolves now with nobody waiting; the caller's future
            # and view go on with the datagram.
            done = [entry for entry in done if entry[0] is not held]
        self._resolve(done)
        if dg.batch is not None:
            self._error_received(_result_error(res, dg.nbytes))  # no retry: its write is closed
        elif res >= 0:  # a datagram goes whole or not at all
            self._queued_send_failed(dg, _result_error(res, dg.nbytes))
        else:
            self._datagram_zc_failed(dg, -res)
        return None

    # -- the compiled per-call path on this engine (hot.py, _core_udpring.c) --------------

    def _hot_ring_pending(self) -> None:
        """The ring's reap found completions of the compiled path's SEND_ZCs (EV_D_PENDING):
        apply them as a drain of the error queue would (_hot_drained)."""
        d = self._hot_d  # type: ignore[attr-defined]
        if d is None or self._sock is None:
            return
        self._hot_drained(_core.lib.zc_dgram_drain(d, 64))  # type: ignore[attr-defined]

    def _hot_ring_failed(self) -> None:
        """SEND_ZCs of the compiled path whose result was not the datagram's size: what
        _datagram_zc_result does for the general path's (accounted when filled: the id is
        completed as copied without the policy hearing, the datagram goes again or fails)."""
        for token, obj, ident, res in self._hot_fns["ring_failed"]():  # type: ignore[attr-defined]
            stats = self.stats
            stats.zc_sends -= 1
            view = byte_view(obj) if obj is not None else None
            nbytes = len(view) if view is not None else 0
            stats.zc_bytes -= nbytes
            self._tracker.on_range(ident, ident, True)  # its token was taken: nothing to resolve
            self._hot_release()  # type: ignore[attr-defined]  # the slot's export (ours is view)
            if view is None or self._sock is None:
                if view is not None:
                    view.release()
                if token is not None and not token.done():
                    token.set_exception(ConnectionAbortedError("transport closed before the datagram was sent"))
                continue
            dg = _Datagram(view, self._address, token, True)
            if res >= 0:
                self._queued_send_failed(dg, _result_error(res, nbytes))
            else:
                self._datagram_zc_failed(dg, -res)

    def _datagram_zc_failed(self, dg: _Datagram, err: int, *, at_head: bool = True) -> None:
        """What the synchronous paths do for the same errno, from a result CQE. A datagram to
        send again goes to the head of the queue (it was the head), or with ``at_head=False``
        to its tail (a batch's datagrams, refused in order)."""
        if err == errno.EAGAIN:
            extra = self.stats.extra
            extra["zc_send_eagain"] = extra.get("zc_send_eagain", 0) + 1
            self._requeue(dg, at_head)  # socket buffer full: EPOLLOUT resumes the queue
            return
        if err == errno.ENOBUFS:
            # Not option memory: io_uring's notification is a ring request, not an optmem skb, and
            # a RLIMIT_MEMLOCK refusal is ENOMEM. This is IP_RECVERR reporting a datagram the
            # local queue dropped (qdisc full): accepted, then lost like any UDP datagram, as
            # _send_copy treats it. Handled like MSG_ZEROCOPY's memory case, it disabled zero-copy
            # for good (state "disabled" after a qdisc with limit 0, test_udp_sink).
            self.stats.enobufs += 1
            self._report_local_drop()
            self._finish_send(dg, dg.nbytes, zerocopy=False)
            return
        if err == errno.ENOMEM:  # RLIMIT_MEMLOCK: resend by copy
            self._on_enobufs()
            dg.copy_only = True
            self._requeue(dg, at_head)
            self._flush()
            return
        exc = OSError(err, os.strerror(err))
        if self._classify_send_error(exc):  # an earlier datagram's ICMP error: resend this one
            self._requeue(dg, at_head)
            self._flush()
        else:
            self._queued_send_failed(dg, exc)
