"""When to ask the kernel for zero-copy: a pure state machine, fed by the transport.

Zero-copy only pays when the kernel really sends from the caller's pages. On one host every TCP
zero-copy send is reported copied (loopback, veth, tun), and naive always-MSG_ZEROCOPY then runs
at ~0.4x of a plain send at 1 MiB writes (measured here), because the kernel pins the pages, copies
anyway, and queues a notification. So the policy watches what the kernel reports and stops asking
for zero-copy on a socket where it never happens, probing again now and then.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

DEFAULT_THRESHOLD = 16 * 1024
DEFAULT_FALLBACK_AFTER = 4
DEFAULT_REPROBE_BYTES = 1024 * 1024 * 1024
# The first re-probe after a fallback comes this soon, and each copied answer doubles the wait up
# to reprobe_bytes. One copied answer is not proof: a merged notification carries its oldest
# send's code for all of them (skb_zerocopy_notify_extend), so an early copied answer on a route
# that is otherwise zero-copy must not cost a whole transfer (with a fixed 1 GiB wait it cost the
# guest rig's 1 GiB mix all of it). Where every send is copied (TCP on one host) the re-probes
# come after 64, 128, ..., 1024 MiB of copies: 5 probe writes in the first 2 GiB of fallback
# instead of 2, then one per reprobe_bytes. Not sooner: each one is a pinned write and its answer
# (callgrind, 64 KiB writes over loopback: re-probes after 4 and 12 MiB cost +11% per write over
# a 48 MiB run), and a connection's first 64 MiB then carry none.
DEFAULT_REPROBE_FIRST_BYTES = 64 * 1024 * 1024
NEVER = 1 << 62  # copy_allowance(): no byte count makes wants_zerocopy() change its answer


class ZeroCopyState(str, enum.Enum):
    PROBING = "probing"  # one zero-copy write at a time until the kernel answers (probe_first)
    ZEROCOPY = "zerocopy"  # pass MSG_ZEROCOPY for eligible sends
    COPY_FALLBACK = "copy-fallback"  # the kernel kept copying; plain sends, re-probe now and then
    DISABLED = "disabled"  # zero-copy cannot work on this socket (see reason)


# (a module constant: a member of an Enum class is a slow attribute on CPython 3.11, ~0.4 us)
_PROBING_STATES = (ZeroCopyState.PROBING, ZeroCopyState.COPY_FALLBACK)


@dataclass
class PolicyOptions:
    """Keyword options every aiozc transport accepts (see README, "Defaults").

    threshold: writes smaller than this are sent by copy (pinning and a notification cost more
        than copying a few pages).
    fallback_after: this many consecutive send calls reported copied, with no zero-copy success,
        switch the socket to plain sends.
    reprobe_bytes: in copy-fallback, after at most this many bytes sent by copy, try one
        zero-copy send again (routes change; 0 = never re-probe). The first re-probe after a
        fallback comes after ``reprobe_first_bytes`` (or ``reprobe_bytes`` if smaller); each
        copied answer doubles the wait, up to ``reprobe_bytes``.
    probe_first: until the kernel has confirmed one zero-copy send on this socket, keep one
        zero-copy write in flight and copy the rest. TCP completions on one host only come
        once the receiver has read the data, so pinning every write while still learning
        stalls a sender behind its write-buffer limit (measured: ~4% of a 1 GiB loopback run).
    """

    threshold: int = DEFAULT_THRESHOLD
    fallback_after: int = DEFAULT_FALLBACK_AFTER
    reprobe_bytes: int = DEFAULT_REPROBE_BYTES
    probe_first: bool = False
    reprobe_first_bytes: int = DEFAULT_REPROBE_FIRST_BYTES

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("zc_threshold must be >= 1")
        if self.fallback_after < 1:
            raise ValueError("fallback_after must be >= 1")
        if self.reprobe_bytes < 0:
            raise ValueError("reprobe_bytes must be >= 0")
        if self.reprobe_first_bytes < 1:
            raise ValueError("reprobe_first_bytes must be >= 1")


@dataclass
class ZeroCopyPolicy:
    options: PolicyOptions = field(default_factory=PolicyOptions)
    state: ZeroCopyState = ZeroCopyState.ZEROCOPY
    reason: str = ""
    _copied_streak: int = 0
    _bytes_since_probe: int = 0
    _probe_in_flight: bool = False
    _reprobe_after: int = 0  # copy-fallback: copied bytes before the next re-probe (0: never)

    def __post_init__(self) -> None:
        if self.options.probe_first and self.state is ZeroCopyState.ZEROCOPY:
            self.state = ZeroCopyState.PROBING

    def disable(self, reason: str) -> None:
        self.state = ZeroCopyState.DISABLED
        self.reason = reason

    def wants_zerocopy(self, nbytes: int, *, continuing: bool = False) -> bool:
        """Should a send from a write of ``nbytes`` that may be pinned use MSG_ZEROCOPY?

        ``continuing``: earlier sends of the same write went zero-copy; finishing it the same
        way keeps a probe write whole (one answer from the kernel about all of it).
        """
        if nbytes < self.options.threshold or self.state is ZeroCopyState.DISABLED:
            return False
        if continuing:
            return True
        if self.state is ZeroCopyState.COPY_FALLBACK:
            return self._reprobe_due()
        return not self._probing() or not self._probe_in_flight

    def _reprobe_due(self) -> bool:
        reprobe = self._reprobe_after
        return reprobe > 0 and not self._probe_in_flight and self._bytes_since_probe >= reprobe

    def copy_allowance(self) -> int:
        """Bytes that may still be sent by copy before :meth:`wants_zerocopy` could answer yes
        for a new write of any size: ``NEVER`` while no answer can change without a
        notification or an ENOBUFS (disabled, a probe in flight, re-probing off), 0 when it may
        answer yes now. Lets a transport send without asking per write (TCP's direct path)."""
        state = self.state
        if state is ZeroCopyState.DISABLED:
            return NEVER
        if state is ZeroCopyState.COPY_FALLBACK:
            reprobe = self._reprobe_after
            if reprobe <= 0 or self._probe_in_flight:
                return NEVER
            return max(0, reprobe - self._bytes_since_probe)
        if state is ZeroCopyState.PROBING and self._probe_in_flight:
            return NEVER
        return 0

    @property
    def confirming(self) -> bool:
        """Zero-copy sends now are probes on a socket the kernel already answered "copied"
        for (probing after a copied answer, or a re-probe in copy-fallback): they confirm an
        answer, so they need not pin a whole write (see streamheld._PROBE_BYTES)."""
        state = self.state
        return state is ZeroCopyState.COPY_FALLBACK or (
            state is ZeroCopyState.PROBING and self._copied_streak > 0
        )

    @property
    def probe_in_flight(self) -> bool:
        """A probe (or re-probe) was sent and its answer has not come: until it does, no
        byte count changes :meth:`wants_zerocopy`'s answer, only a notification does."""
        return self._probe_in_flight and self._probing()

    def _probing(self) -> bool:
        """Zero-copy sends are probes, one at a time (see ``probe_first``)."""
        return self.state in _PROBING_STATES

    def on_sent(self, nbytes: int, *, zerocopy: bool) -> None:
        """A send call returned ``nbytes`` > 0."""
        if zerocopy and self._probing():
            if self.state is ZeroCopyState.COPY_FALLBACK and not self._reprobe_due():
                # The rest of a write that went zero-copy before the fallback (``continuing``),
                # not a re-probe: were it one, each answer to its sends would double the wait
                # (the guest's 2 MiB probe write left in 4 partial sends: next re-probe 512 MiB
                # away instead of 64 MiB).
                return
            self._probe_in_flight = True
            self._bytes_since_probe = 0
        elif self.state is ZeroCopyState.COPY_FALLBACK:
            self._bytes_since_probe += nbytes

    def on_completed(self, ids: int, *, copied: bool) -> None:
        """The kernel reported ``ids`` consecutive send calls done, copied or not.

        ``copied`` is the range's flag, and a merged range carries its oldest send's code for
        all of them (``skb_zerocopy_notify_extend`` does not compare codes). The state machine
        only needs it per route: a route's answer is stable (measured: 64/64 the same code out
        of a virtio NIC, and on loopback), and a route change reaches it one range late, at
        the next notification read after the change, which only delays a switch.
        """
        if not copied:
            self._copied_streak = 0
            self._probe_in_flight = False
            if self._probing():
                self.reason = "the kernel reported a zero-copy send as sent from our pages"
                self.state = ZeroCopyState.ZEROCOPY
            return
        answered_reprobe = self._probe_in_flight and self.state is ZeroCopyState.COPY_FALLBACK
        self._probe_in_flight = False
        self._copied_streak += ids
        if answered_reprobe:  # still copying: wait twice as long before the next re-probe
            self._reprobe_after = min(2 * self._reprobe_after, self.options.reprobe_bytes)
            return
        learning = self.state in (ZeroCopyState.ZEROCOPY, ZeroCopyState.PROBING)
        if learning and self._copied_streak >= self.options.fallback_after:
            self.state = ZeroCopyState.COPY_FALLBACK
            self.reason = (
                f"kernel reported {self._copied_streak} consecutive zero-copy sends copied "
                "(loopback, veth, tun: a receiver on this host)"
            )
            self._bytes_since_probe = 0
            options = self.options
            self._reprobe_after = min(options.reprobe_first_bytes, options.reprobe_bytes)

    def assume_copied(self, reason: str) -> None:
        """Start in copy-fallback, as if the probes had come back copied: for a socket whose
        kernel copies every zero-copy send (a peer on this host). Re-probes as after a
        fallback."""
        if self.state is ZeroCopyState.DISABLED:
            return
        self.state = ZeroCopyState.COPY_FALLBACK
        self.reason = reason
        self._bytes_since_probe = 0
        options = self.options
        self._reprobe_after = min(options.reprobe_first_bytes, options.reprobe_bytes)

    def on_enobufs(self, *, outstanding_ids: int) -> None:
        """A zero-copy send failed with ENOBUFS.

        With notifications outstanding this is the optmem / locked-memory budget filling up:
        transient, the caller resends by copy. With none outstanding no notification will ever
        free budget, so the limit itself is too small for even one send: stop trying.
        """
        if outstanding_ids == 0 and self.state is not ZeroCopyState.DISABLED:
            self.disable(
                "ENOBUFS with no zero-copy send outstanding: RLIMIT_MEMLOCK or "
                "net.core.optmem_max is too small for zero-copy sends"
            )
