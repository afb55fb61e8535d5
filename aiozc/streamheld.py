"""The TCP transport's held writes: the queue entries that may go zero-copy, from the write that
makes one to the send that finishes it, and where the compiled core hands one back.

A held write (write_zc(), or an immutable ``bytes`` from write() at or above the threshold)
stays referenced until sent, and until the kernel released it if it went zero-copy. With the
compiled core, the common case of a new held write that the policy wants zero-copy runs in C
(aiozc/_sys/_core_tcpzc.c): these methods are the reference it follows and the places it
returns to (``_send_held_now``, ``_zc_continue``, ``_resolve_closed``, and ``_enqueue_held``
for a write it does not send itself). So do the writes a notification finished
(``_resolve_range``, base.py's method the reference).
"""

from __future__ import annotations

import asyncio
import errno
from os import writev as _fd_writev
from typing import TYPE_CHECKING, Any

from ._sys import core as _core, kernel as _kernel
from .base import _Held
from .completions import Completion, WriteHandle
from .ctracker import CompiledTracker, _completion
from .engines.msg_zerocopy import MsgZeroCopyEngine
from .policy import NEVER, ZeroCopyPolicy, ZeroCopyState
from .streamfile import _FileSegment
from .streamsend import _GATHER_MAX

# kernel.read_errqueue as imported: the compiled drain reads the error queue itself unless a
# test replaced it (tcp_helpers.report_ranges_as shows the transport routes one host cannot give).
_READ_ERRQUEUE = _kernel.read_errqueue


# A probe after the kernel answered "copied" once (the policy's `confirming`: the next probes,
# re-probes in copy-fallback) pins at most this much of its write, and the rest of that write
# is copied. On one host the kernel answers "copied" for any size and copies the whole probe
# once more on delivery (skb_copy_ubufs): at 1 MiB writes the 6 probes of a 256 MiB connection
# (4, then re-probes at 64 and 192 MiB) were 6 MiB pinned and copied twice, 6-8 ms/GB of CPU
# (perf cpu-clock, bench tcp's 1 MiB aiozc write arm; ~2% of the sender's). A route that sends
# from our pages answers so for 64 KiB as for 1 MiB. 64 KiB: one loopback GSO packet.
_PROBE_BYTES = 64 * 1024

# Whether _Segment was given to the compiled core (_core_tcpzc.c zc_tcp_zc_segment).
_SEGMENT_TOLD: list[bool] = []

class _Segment:
    """One queue entry: the caller's buffer (``held``: a view kept alive until sent, and until
    the kernel released it if it went zero-copy), or a bytearray of our own that we may extend.

    ``write`` is the tracker's record, opened at the segment's first zero-copy send only: a
    held write sent by copy never touches the tracker.
    """

    __slots__ = ("data", "offset", "held", "future", "write")

    def __init__(
        self, data: memoryview | bytearray, held: bool, future: asyncio.Future[Completion] | None = None
    ) -> None:
        self.data = data
        self.offset = 0
        self.held = held
        self.future = future
        self.write: WriteHandle | None = None

    def remaining(self) -> int:
        return len(self.data) - self.offset


class StreamHeld:
    """Mixed into ZeroCopyTransport ahead of StreamSending."""

    _queue: Any
    _queued: int
    _tracker: Any
    _direct_max: int
    _zc_in_flight: int
    _copy_completions: dict[int, Completion]
    _policy: ZeroCopyPolicy
    stats: Any

    if TYPE_CHECKING:  # defined by the transport, its mixins and its base (for mypy only)

        def _wants_zerocopy(self, nbytes: int, *, continuing: bool = False) -> bool: ...
        def _flush(self, head_wanted: bool = False) -> None: ...
        def _after_flush(self, drained: bool = False) -> None: ...
        def _maybe_pause_protocol(self) -> None: ...
        def _update_mask(self) -> None: ...
        def _try_send_now(self, view: memoryview) -> int: ...
        def _send_copy(self, data: Any) -> int: ...
        def _send_zc(self, write: WriteHandle, chunk: memoryview) -> int: ...
        def _send_after_enobufs(self, write: WriteHandle, chunk: memoryview) -> int: ...
        def _send_file_head(self, seg: _FileSegment) -> bool: ...
        def _close_write(self, write: WriteHandle) -> None: ...
        def _copy_completion(self, nbytes: int) -> Completion: ...
        def _resolve(self, done: list[tuple[_Held, Completion]]) -> None: ...
        def _fatal_error(self, exc: BaseException, message: str = ...) -> None: ...

    # -- a new held write ------------------------------------------------------------------

    def _enqueue_held(self, view: memoryview, future: asyncio.Future[Completion] | None) -> None:
        if self._queue:
            self._hold(view, future, 0)
            return
        if self._wants_zerocopy(len(view)):
            self._queue.append(_Segment(view, True, future))
            self._queued += len(view)
            self._flush(head_wanted=True)
            self._maybe_pause_protocol()
            return
        self._send_held_now(view, future)

    def _send_held_now(self, view: memoryview, future: asyncio.Future[Completion] | None) -> None:
        """Nothing queued ahead and nothing to pin: send at once, and if the socket takes it
        all there is no completion to track."""
        nbytes = len(view)
        sent = self._try_send_now(view)
        if sent == nbytes:
            view.release()
            if future is not None:
                self.stats.copy_writes += 1
                future.set_result(self._copy_completion(sent))
            return
        if sent < 0:
            view.release()
            if future is not None:
                future.set_exception(ConnectionResetError("connection lost during write_zc()"))
            return
        self._hold(view, future, sent)

    def _hold(self, view: memoryview, future: asyncio.Future[Completion] | None, sent: int) -> None:
        """Queue the rest of a held write, ``sent`` bytes of it gone."""
        seg = _Segment(view, True, future)
        seg.offset = sent
        self._queue.append(seg)
        self._queued += len(view) - sent
        self._update_mask()
        self._maybe_pause_protocol()

    # -- sending the head ------------------------------------------------------------------

    def _send_head(self, wanted: bool = False) -> bool:
        """Send from the head segment; True if it was sent whole (try the next one).
        ``wanted``: the policy already said zero-copy for it (see _flush)."""
        seg = self._queue[0]
        if isinstance(seg, _FileSegment):
            return self._send_file_head(seg)
        data = seg.data
        if not seg.held:  # our own bytearray: only ever copied
            sent = self._send_copy(data)
            del data[:sent]
            self._queued -= sent
            if data:
                return False
            self._queue.popleft()
            return True
        write = seg.write
        # The threshold applies to the whole write, not to what is left of it: a partial
        # zero-copy send's small tail still goes zero-copy, so a large write is reported
        # zero-copy whole (Completion.zerocopy) where the kernel allows it. Not once the
        # kernel answered "copied" and probes only confirm it: a probe's send is then cut at
        # _PROBE_BYTES and the rest of its write asks the policy again (probe in flight: copy).
        continuing = write is not None and write.zc_sends > 0 and not self._policy.confirming
        # Below _direct_max the policy would copy it anyway: no need to ask.
        if (continuing or len(data) >= self._direct_max) and (wanted or self._wants_zerocopy(
            len(data), continuing=continuing
        )):
            # A view of its own even at offset 0: io_uring holds an export on it until the
            # kernel's release, and the held view itself is released when the write resolves.
            policy = self._policy
            end = seg.offset + max(_PROBE_BYTES, policy.options.threshold) if policy.confirming else len(data)
            sent = self._send_zc(write or self._track(seg), data[seg.offset : end])  # type: ignore[arg-type]
            if end < len(data) and seg.offset + sent == end:
                # A cut probe taken whole: the socket has room, the rest of its write goes
                # now (False here would wait for EPOLLOUT first).
                self._advance_held(seg, sent)
                return self._send_head()
        else:
            sent = self._send_copy(data[seg.offset :] if seg.offset else data)
            if write is not None and sent:
                self._tracker.on_sent(write, sent, zerocopy=False)
        return self._advance_held(seg, sent)

    def _send_gathered(self) -> bool | None:
        """The head segments sent by copy whatever the policy says (our own bytearrays; held
        writes with no tracker record below _direct_max, which _send_head would copy without
        asking), two or more of them: one writev of them all (up to _GATHER_MAX), then each
        advanced by what it took, as _send_head would. Queued 64 KiB writes were one write(2)
        each, 16.5 per MiB against stock uvloop's 8.3 write + 0.6 writev (strace, a paced
        receiver). True: all sent whole; False: the socket took part of them (BlockingIOError:
        none); None: fewer than two such segments (_send_head's turn)."""
        segs: list[_Segment] = []
        direct_max = self._direct_max
        for seg in self._queue:
            if type(seg) is not _Segment or not (
                (seg.held and seg.write is None and len(seg.data) < direct_max)
                or (not seg.held and type(seg.data) is bytearray)
            ):
                break
            segs.append(seg)
            if len(segs) == _GATHER_MAX:
                break
        if len(segs) < 2:
            return None
        chunks = [seg.data[seg.offset:] if seg.offset else seg.data for seg in segs]
        sent = _fd_writev(self._fd, chunks)  # type: ignore[attr-defined]
        if sent:  # (_send_copy's counters, for one send)
            stats = self.stats
            stats.copy_sends += 1
            stats.copy_bytes += sent
            self._plain_sent += sent  # type: ignore[attr-defined]
            if self._plain_sent >= self._plain_budget:  # type: ignore[attr-defined]
                self._refresh_direct()  # type: ignore[attr-defined]
        for seg in segs:
            take = min(sent, len(seg.data) - seg.offset)
            sent -= take
            if seg.held:
                if not self._advance_held(seg, take):
                    return False
                continue
            del seg.data[:take]  # type: ignore[union-attr]  # not held: the segment owns a bytearray
            self._queued -= take
            if seg.data:
                return False
            self._queue.popleft()
        return True

    def _track(self, seg: _Segment) -> WriteHandle:
        """Open the tracker's record of a held segment at its first zero-copy send."""
        # (the base's _open_write, one call less per zero-copy write)
        write = seg.write = self._tracker.open_write(_Held(seg.future, seg.data), len(seg.data))  # type: ignore[arg-type]
        if seg.offset:
            self._tracker.on_sent(write, seg.offset, zerocopy=False)
        return write

    def _advance_held(self, seg: _Segment, sent: int) -> bool:
        """``sent`` bytes of the held head segment went out; True if it is done."""
        seg.offset += sent
        self._queued -= sent
        if seg.offset < len(seg.data):
            return False
        self._queue.popleft()
        if seg.write is not None:
            self._close_write(seg.write)
            return True
        view = seg.data
        nbytes = len(view)
        view.release()  # type: ignore[union-attr]
        future = seg.future
        if future is not None:
            self.stats.copy_writes += 1
            if not future.done():
                # (the shared completion looked up here: _copy_completion's frame only for a new size)
                future.set_result(self._copy_completions.get(nbytes) or self._copy_completion(nbytes))
        return True

    def _after_zc_result(self, write: WriteHandle, sent: int) -> None:
        if self._sock is None:  # type: ignore[attr-defined]
            return
        if not sent:
            self._update_mask()  # the socket was full (-EAGAIN): EPOLLOUT resumes flushing
            return
        seg = self._queue[0]
        assert isinstance(seg, _Segment) and seg.write is write, "result of another segment"
        self._advance_held(seg, sent)
        self._flush()

    # -- where the compiled write_zc() hands a held write back ------------------------------

    def _zc_continue(self, view: memoryview, future: asyncio.Future[Completion], slot: int, sent: int,
                     exc: BaseException | None) -> None:
        """The compiled path (_core_tcpzc.c) opened the tracker's record ``slot`` of a new held
        write, filed its token and made its zero-copy send, which moved ``sent`` bytes (counted
        there) but not all of it, or raised ``exc``. From here, what _enqueue_held -> _flush do
        once _send_zc returned or raised."""
        seg = _Segment(view, True, future)
        seg.write = self._tracker._adopt(slot, len(view), sent, 1 if sent else 0)
        self._queue.append(seg)
        self._queued += len(view)
        try:
            if exc is not None:
                if not isinstance(exc, OSError) or exc.errno != errno.ENOBUFS:
                    raise exc
                sent = self._send_after_enobufs(seg.write, view[0:])
            if self._advance_held(seg, sent):
                while self._queue and self._send_head():
                    pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as error:
            self._fatal_error(error)
            self._maybe_pause_protocol()
            return
        self._after_flush()
        self._maybe_pause_protocol()

    def _resolve_closed(self, count: int) -> None:
        """The compiled path closed a write whose ids were all reported already."""
        self._resolve(self._tracker._results(count))

    def _bind_zc(self, hot: Any) -> None:
        """Let the compiled write_zc() send held writes (see the module docstring): with the
        MSG_ZEROCOPY engine and the compiled tracker only."""
        tracker = self._tracker
        if (type(tracker) is not CompiledTracker or type(self._engine) is not MsgZeroCopyEngine  # type: ignore[attr-defined]
                or self._submit_zc_fn is not None or not self._errqueue_ok):  # type: ignore[attr-defined]
            return
        loop = self._loop  # type: ignore[attr-defined]
        # asyncio's own time() is time.monotonic(), which the C side reads without a frame.
        # Asked through the bound method, never vars(loop): on CPython 3.11 that turns the
        # loop's inline attribute values into a dict for good (see web.install_sendfile).
        bound = loop.time
        asyncio_time = (getattr(bound, "__func__", None) is asyncio.BaseEventLoop.time
                        and getattr(bound, "__self__", None) is loop)
        loop_time = None if asyncio_time else loop.time
        options = self._options  # type: ignore[attr-defined]
        if not _SEGMENT_TOLD:  # (its result, -1: _hold stays Python's, never changes after)
            # once per process: the C side looks up the 5 slot offsets before it sees it knows them
            _core.lib.zc_tcp_zc_segment(id(_Segment))
            _SEGMENT_TOLD.append(True)
        _core.lib.zc_tcp_zc_bind(
            id(hot), id(tracker), id(tracker._tokens), id(tracker._handles), tracker._t, id(loop_time),
            id(_Held), id(ZeroCopyPolicy), id(ZeroCopyState.ZEROCOPY), id(_completion),
            id(asyncio.InvalidStateError), id(_kernel.SocketError), id(_kernel.ErrQueueTruncated),
            id(vars(_kernel)), id(_READ_ERRQUEUE),
            min(self._policy.options.threshold, NEVER), min(options.max_pinned_bytes, NEVER),  # type: ignore[attr-defined]
            min(options.errqueue_drain_every, NEVER),
        )
