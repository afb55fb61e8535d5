"""Counters every aiozc transport keeps: ``transport.stats`` / ``get_extra_info('aiozc_stats')``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._sys.core import path_in_use


@dataclass
class TransportStats:
    engine: str = "msg_zerocopy"
    # "compiled" or "pure-python (<why>)": which implementation of the hot path runs
    core: str = field(default_factory=path_in_use)
    state: str = "zerocopy"  # zerocopy | copy-fallback | disabled
    reason: str = ""  # why the state is what it is (fallback trigger, disable cause)
    zc_sends: int = 0  # send calls that passed MSG_ZEROCOPY and moved > 0 bytes (= ids used)
    zc_bytes: int = 0
    copy_sends: int = 0  # send calls without MSG_ZEROCOPY
    copy_bytes: int = 0
    zc_writes: int = 0  # writes resolved with Completion.zerocopy True
    zc_write_bytes: int = 0  # bytes of those writes: sent from the caller's pages, never copied
    copy_writes: int = 0  # writes resolved with zerocopy False (copied by us or by the kernel)
    notifications: int = 0  # completion ranges received from the kernel
    ids_zerocopy: int = 0  # send calls the kernel reported as sent from our pages
    ids_copied: int = 0  # send calls the kernel reported as copied after all
    errqueue_reads: int = 0  # recvmsg(MSG_ERRQUEUE) calls, including the one that found it empty
    enobufs: int = 0  # zero-copy sends refused with ENOBUFS (resent by copy)
    pinned_bytes: int = 0  # bytes sent zero-copy whose write has not completed yet
    peak_pinned_bytes: int = 0
    socket_errors: int = 0  # non-zero-copy messages on the error queue (ICMP with IP_RECVERR)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
