"""A probe after the kernel answered "copied" pins only the first streamheld._PROBE_BYTES of its
write; the rest of that write is copied (the first probe still pins its whole write).

On one host the kernel copies every zero-copy TCP send, and copies a pinned probe once more on
delivery (skb_copy_ubufs): bench tcp's 1 MiB arms pinned and copied twice 6 MiB per 256 MiB
connection for answers a 64 KiB send gives as well. Counted, never timed.
"""

from __future__ import annotations

import asyncio
import random

from aiozc.policy import PolicyOptions, ZeroCopyPolicy, ZeroCopyState
from tcp_helpers import connect_pair

_PROBE_BYTES = 64 << 10  # streamheld._PROBE_BYTES


async def _send(pair, buf: bytes):  # type: ignore[no-untyped-def]
    before = pair.transport.stats.zc_bytes
    fut = pair.transport.write_zc(buf)
    await pair.read_all(len(pair.received) + len(buf))
    done = await asyncio.wait_for(fut, 10)
    return pair.transport.stats.zc_bytes - before, done


async def test_probes_after_a_copied_answer_pin_only_their_first_64_kib() -> None:
    pair = await connect_pair(fallback_after=4, reprobe_bytes=1 << 20)
    try:
        bufs = [random.randbytes(1 << 20) for _ in range(12)]
        first, done = await _send(pair, bufs[0])
        assert first == 1 << 20 and done.zc_sends >= 1  # the first probe: the whole write
        assert pair.transport.stats.state == "probing"  # answered "copied" once: 3 to go
        pinned = [await _send(pair, buf) for buf in bufs[1:]]
        zc_sends = [d.zc_sends for _, d in pinned]
        # the next probes and, after the fallback, the re-probe every MiB: one send each, cut
        assert sum(zc_sends) >= 4 and set(zc_sends) <= {0, 1}, zc_sends
        assert all(n == (_PROBE_BYTES if d.zc_sends else 0) for n, d in pinned), pinned
        assert all(not d.zerocopy and d.nbytes == 1 << 20 for _, d in pinned)
        assert bytes(pair.received) == b"".join(bufs)  # every byte once, in order
        assert pair.transport.stats.state == "copy-fallback"
    finally:
        pair.close()


def test_the_policy_confirms_after_a_copied_answer_and_in_copy_fallback() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(fallback_after=2, probe_first=True))
    assert policy.state is ZeroCopyState.PROBING and not policy.confirming
    policy.on_sent(1 << 20, zerocopy=True)
    policy.on_completed(1, copied=True)
    assert policy.state is ZeroCopyState.PROBING and policy.confirming
    policy.on_sent(1 << 16, zerocopy=True)
    policy.on_completed(1, copied=True)
    assert policy.state is ZeroCopyState.COPY_FALLBACK and policy.confirming
    success = ZeroCopyPolicy(PolicyOptions(probe_first=True))
    success.on_sent(1 << 20, zerocopy=True)
    success.on_completed(1, copied=False)  # the route sends from our pages: nothing to cut
    assert success.state is ZeroCopyState.ZEROCOPY and not success.confirming
    local = ZeroCopyPolicy(PolicyOptions(probe_first=True))
    local.assume_copied("peer on this host")  # local_peer_copy: its re-probes are cut too
    assert local.confirming
