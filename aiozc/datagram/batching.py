"""sendto_zc_many(): a batch of datagrams under one future and one tracker write, sent with
sendmmsg(2) (aiozc._sys.mmsg) on a connected socket, one by one through the general path
otherwise. io_uring batches are in uring.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._sys import kernel as _kernel, mmsg as _mmsg
from ..base import TransportClosedError, byte_view
from ..completions import Completion
from ..engines.copy import CopyEngine
from ..engines.io_uring import IoUringEngine
from ..engines.msg_zerocopy import MsgZeroCopyEngine
from ._common import _COPY_FALLBACK, _ZEROCOPY, PinSet, _DatagramHost, _Datagram

if TYPE_CHECKING:
    from .transport import ZeroCopyDatagramTransport

# Engines whose batches may go through sendmmsg (io_uring's by copy only).
_MMSG_ENGINES = (MsgZeroCopyEngine, CopyEngine, IoUringEngine)


class _Batch:
    """One ``sendto_zc_many()`` call: one tracker write (one future) for all its datagrams.

    Each buffer is held by a pin (:func:`aiozc._sys.mmsg.pin`: a buffer export, as a memoryview
    would hold, and the address sendmmsg needs) until the batch resolves. It is the write's
    token (what ``_resolve`` gets back): ``future`` and ``view`` like :class:`~aiozc.base._Held`,
    ``view.release()`` ending every pin.
    """

    __slots__ = ("future", "bufs", "pins", "sizes", "write", "left")

    def __init__(
        self, future: asyncio.Future[Completion], bufs: list[Any], pins: list[Any], sizes: list[int]
    ) -> None:
        self.future = future
        self.bufs = bufs  # the caller's objects: what a datagram sent one by one views
        self.pins: Any = pins  # a PinSet once the sender took them, or cffi pins
        self.sizes = sizes
        self.write: Any = None  # the tracker's WriteHandle, set once opened
        self.left = len(pins)  # datagrams not yet sent, dropped or refused

    @property
    def view(self) -> _Batch:
        return self

    def release(self) -> None:
        pins = self.pins
        self.pins = self.bufs = []
        _unpin_all(pins)


class _BatchRetry:
    """The future of a batch's datagram that io_uring refused and that is sent again on its
    own: the batch (held open meanwhile, ``left``) counts it done once it is, and a refusal
    is reported like any datagram of a batch. Duck-types what the send path asks of a future."""

    __slots__ = ("transport", "batch", "_done")

    def __init__(self, transport: ZeroCopyDatagramTransport, batch: _Batch) -> None:
        self.transport = transport
        self.batch = batch
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, completion: Completion) -> None:
        self._done = True
        self.transport._batch_step(self.batch)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        transport = self.transport
        if transport._conn_lost or isinstance(exc, TransportClosedError):
            return  # the batch's future failed with the transport
        if isinstance(exc, OSError):
            transport._error_received(exc)
        transport._batch_step(self.batch)


class _BatchingMixin(_DatagramHost):
    """Part of :class:`~aiozc.datagram.transport.ZeroCopyDatagramTransport`."""

    def sendto_zc_many(self, bufs: Iterable[Any], addr: Any = None) -> asyncio.Future[Completion]:
        """Send every buffer of ``bufs`` as one datagram, in order, without copying where the
        kernel allows: :meth:`sendto_zc` for a batch, with one future for all of it.

        The future resolves once the kernel released every buffer of the batch (then all of
        them may be reused) with one :class:`Completion`: ``nbytes`` the batch's bytes,
        ``zerocopy`` True only if every datagram went zero-copy, ``zc_sends`` the ids used.

        On a connected socket the datagrams leave through sendmmsg(2), up to 1024 per system
        call, and the batch is one tracker write, so the Python work sendto_zc() does per
        datagram (future, write, resolution) is done once per batch. Otherwise, or once the
        socket is full, they take sendto_zc()'s path one by one (queued in call order). Datagrams
        below ``zc_threshold`` are sent by copy (still held until the batch resolves).

        Raises like sendto_zc() for a bad buffer, an oversized datagram (nothing is sent: all
        are checked first) or a closing transport. Once sending started, a datagram the kernel
        refuses for now (socket full, option memory, an earlier datagram's ICMP error) is sent
        again, as sendto() would, and the future waits for it; one it refuses for good is
        reported to ``protocol.error_received`` as with sendto() and counts as not zero-copy
        in the Completion. Protocol callbacks (error_received, pause_writing) raised while the
        batch is handed to the kernel run when this call has handed over all of it. With the
        io_uring engine a datagram sent again leaves after the rest of its batch.
        """
        self._check_writable("sendto_zc_many")
        if _is_buffer(bufs):
            # Iterating a bytes-like gives ints: say what was passed instead of "got int".
            raise TypeError(
                f"sendto_zc_many() takes an iterable of buffers, got one buffer "
                f"({type(bufs).__name__}); use sendto_zc() for a single datagram"
            )
        addr = self._destination(addr)
        if self._co:
            self._flush_coalesced()
        objs = list(bufs)
        pins = _pin_all(objs)
        sizes = pin_sizes(pins)
        biggest = pins.maxlen if pins.__class__ is PinSet else max(sizes, default=0)
        if self._max_size is not None and biggest > self._max_size:
            _unpin_all(pins)
            raise ValueError(
                f"datagram of {biggest} bytes exceeds the {self._max_size}-byte UDP payload limit"
            )
        future = self._new_future()
        self._send_batch(_Batch(future, objs, pins, sizes), addr)
        return future

    def _send_batch(self, batch: _Batch, addr: Any) -> None:
        """Open the batch's tracker write and hand its datagrams to the kernel (or queue)."""
        pins = batch.pins
        nbytes = pins.nbytes if pins.__class__ is PinSet else sum(batch.sizes)
        batch.write = self._tracker.open_write(batch, nbytes)  # type: ignore[arg-type]  # a _Held alike
        if not pins:
            self._resolve(self._tracker.close_write(batch.write))
            return
        count = len(pins)  # (the io_uring path splits its part off a PinSet: counted first)
        self._batching = True
        try:
            done = self._send_batch_uring(batch) if self._submit_zc_fn is not None else 0
            if not done and self._batch_fast_ok():
                # MSG_ZEROCOPY, or io_uring with nothing to send zero-copy at the head of the
                # batch (small datagrams, copy-fallback, pinned cap): sendmmsg, by copy for
                # io_uring (its runs in _send_batch_fast never pass MSG_ZEROCOPY).
                done = self._send_batch_fast(batch)
            for i in range(done, count):  # the general path: sent one by one, or queued
                self._submit(self._batch_datagram(batch, i, addr))
            self._maybe_pause_protocol()
        finally:
            self._batching = False
            self._run_deferred()

    # -- sendmmsg ---------------------------------------------------------------------------

    def _batch_fast_ok(self) -> bool:
        return (
            self._connected
            and self._fast_max > 0
            and not self._queue
            and not self._closing
            and self._enobufs_datagram is None
            and self._classifying is None
            and self._engine.__class__ in _MMSG_ENGINES
        )

    def _send_batch_fast(self, batch: _Batch) -> int:
        """sendmmsg the batch's datagrams, runs of zero-copy ones (MSG_ZEROCOPY: one id per
        datagram, in order, measured) and of copied ones, while the fast path may. Returns how
        many datagrams were dealt with (sent, dropped, or handed to the single-datagram error
        handling, which may have queued one); the rest take the general path."""
        sender = self._mmsg
        if sender is None:
            sender = self._mmsg = _mmsg.MmsgSender()
        if self._submit_zc_fn is not None:
            self._engine.submit_queued()  # type: ignore[attr-defined]  # io_uring: call order
        cap = sender.capacity
        pins, sizes = batch.pins, batch.sizes
        n = len(pins)
        fd = self._fd
        tracker = self._tracker
        on_sent = tracker.on_sent
        on_sent_many = tracker.on_sent_many  # k zero-copy sends of one write in one call
        write = batch.write
        stats = self.stats
        policy = self._policy
        options = self._options
        threshold = options.zc_threshold
        msg_zerocopy = _kernel.MSG_ZEROCOPY
        # Every datagram's size if they are all alike (the usual batch), else -1: the runs'
        # lengths are then reckoned, not counted datagram by datagram.
        uniform = pins.uniform if pins.__class__ is PinSet else -1
        i = 0
        while i < n and self._batch_fast_ok():
            # The next run: datagrams that all go zero-copy, or all by copy.
            first = sizes[i]
            zerocopy = self._wants_zerocopy(first) and self._engine.__class__ is MsgZeroCopyEngine
            end = min(n, i + cap)
            j = i + 1
            if zerocopy:
                if policy.state is not _ZEROCOPY:
                    end = j  # a copy-fallback re-probe: one datagram
                # As for single datagrams: zero-copy while pinned bytes are below the cap.
                budget = options.max_pinned_bytes - tracker.pinned_bytes - first
                if uniform >= threshold and uniform > 0:  # one size: what the budget covers
                    run = min(end - j, -(-budget // uniform) if budget > 0 else 0)
                    j += run
                    budget -= run * uniform
                while j < end:
                    size = sizes[j]
                    if size < threshold or budget <= 0:
                        break
                    budget -= size
                    j += 1
            elif policy.state is _ZEROCOPY and tracker.pinned_bytes < options.max_pinned_bytes:
                if 0 <= uniform < threshold:
                    j = end
                while j < end and sizes[j] < threshold:
                    j += 1
            else:
                j = end  # no datagram wants zero-copy now (re-checked every run)
            sent = sender.send(fd, pins, sizes, i, j, msg_zerocopy if zerocopy else 0)
            if sent < 0:
                # The first datagram of the run failed: what sendto_zc() does for that error.
                dg = self._batch_datagram(batch, i, self._address)
                dg.copy_only = not zerocopy
                i += 1
                self._direct_send_failed(dg, OSError(-sent, os.strerror(-sent)), zerocopy)
                continue
            nbytes = sent * uniform if uniform >= 0 else sum(sizes[i : i + sent])
            if zerocopy:
                # Every datagram of a zero-copy run is >= zc_threshold >= 1 byte: one id each.
                on_sent_many(write, nbytes, sent)
                self._count_zc_sends(sent, nbytes)
                self._zc_since_drain += sent
            else:
                if nbytes:
                    on_sent(write, nbytes, zerocopy=False)  # no ids: one call for the run
                stats.copy_sends += sent
                stats.copy_bytes += nbytes
            if policy.state is _COPY_FALLBACK:
                policy.on_sent(nbytes, zerocopy=zerocopy)
            partial = i + sent < j
            i += sent
            self._batch_step(batch, sent)
            if partial:
                stats.extra["sendmmsg_partial"] = stats.extra.get("sendmmsg_partial", 0) + 1
            if partial and zerocopy:
                # sendmmsg stops at the first datagram that fails and drops its errno. If the
                # qdisc dropped it (ENOBUFS with IP_RECVERR), its id is used: account it now,
                # or the resend would take the next id. Else the resend reports the error.
                if self._zerocopy_dropped(self._batch_datagram(batch, i, self._address)):
                    i += 1
            if self._zc_since_drain >= options.errqueue_drain_every:
                self._drain_errqueue()
        return i

    def _batch_datagram(self, batch: _Batch, i: int, addr: Any) -> _Datagram:
        """Datagram ``i`` of ``batch`` for the one-by-one path. Its view is released once the
        datagram is done with; the batch's pin holds the buffer until the batch resolves."""
        return _Datagram(byte_view(batch.bufs[i]), addr, batch.future, True, batch)

    def _zerocopy_dropped(self, dg: _Datagram) -> bool:
        """Was ``dg``, which sendmmsg did not count as sent, dropped by the qdisc after the
        kernel gave it an id? Its notification is then queued already (see _zerocopy_enobufs):
        the id is accounted, the drop reported, and ``dg`` is done."""
        if not self._drain_claiming_id(dg):
            dg.view.release()
            return False
        self.stats.enobufs += 1
        self._report_local_drop()
        self._batch_datagram_done(dg)
        return True

    def _batch_datagram_done(self, dg: _Datagram) -> None:
        dg.view.release()
        self._batch_step(dg.batch)  # type: ignore[arg-type]  # a batch's datagram

    def _batch_step(self, batch: _Batch, count: int = 1) -> None:
        """``count`` datagrams of ``batch`` are done with (sent, dropped or refused)."""
        batch.left -= count
        if batch.left == 0 and not self._conn_lost:
            self._close_write(batch.write)

    def _batch_refused(self, dg: _Datagram, exc: OSError) -> None:
        """The kernel refused a datagram of a batch: reported like a sendto() error; its bytes
        count as not zero-copy so the batch still resolves when the others are released."""
        dg.view.release()
        batch = dg.batch
        assert batch is not None
        if self._conn_lost or isinstance(exc, TransportClosedError):
            return  # the batch's future failed with the transport
        self._error_received(exc)
        if dg.nbytes:
            self._tracker.on_sent(batch.write, dg.nbytes, zerocopy=False)
        self._batch_step(batch)

    def _run_deferred(self) -> None:
        calls, self._deferred_calls = self._deferred_calls, []
        for name, arg in calls:
            if name == "error_received":
                self._error_received(arg)
            else:
                self._call_protocol(name)


def _pin_all(objs: list[Any]) -> Any:
    """Every buffer of ``objs`` pinned: a PinSet with the compiled core (one call), else a
    list of cffi pins. Raises the error sendto_zc() would for a bad buffer (none is pinned)."""
    pins: Any = None
    try:
        if PinSet is not None:
            pins = PinSet()
            pins.extend(objs)
        else:
            pins = []
            pins.extend(map(_mmsg.pin, objs))
    except (TypeError, BufferError):
        if pins is not None:
            _unpin_all(pins)
        for buf in objs:  # find the bad buffer: byte_view raises sendto_zc()'s error
            byte_view(buf).release()
        raise
    return pins


def _unpin_all(pins: Any) -> None:
    if pins.__class__ is PinSet:
        pins.release()
        return
    for pin in pins:
        _mmsg.unpin(pin)


def pin_sizes(pins: Any) -> list[int]:
    """Each pinned datagram's size, in order (one size: a list made in C, no Python loop)."""
    if pins.__class__ is PinSet:
        uniform = pins.uniform
        return [uniform] * len(pins) if uniform >= 0 else pins.sizes()  # type: ignore[no-any-return]
    return list(map(len, pins))


def _is_buffer(obj: Any) -> bool:
    """True for objects exporting the buffer protocol (numpy arrays, mmap, array.array...)."""
    try:
        memoryview(obj).release()
    except TypeError:
        return False
    return True
