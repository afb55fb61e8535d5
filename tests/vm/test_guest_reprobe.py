"""Copied first probes, then a zero-copy route: the sequence that once cost the guest's 1 GiB
mix all of its zero-copy (CI, 2026-12-01 13:50: no write_zc completion zero-copy, sha256 fine).

TCP starts in `probing`: one zero-copy write in flight, the writes behind it copied. Answers
of >= fallback_after send calls reported copied switch it to copy-fallback, and the way back
is a re-probe, which came only after reprobe_bytes (1 GiB) of copies. Here the first answer is
reported copied on purpose (as a route warming up or a merged range carrying an older send's
code would; fallback_after=1 stands for a merged range of 4 sends: one answer, one fallback),
the rest as the guest's kernel reports them: zero-copy.
"""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from aiozc._sys import kernel as _kernel
from guest_helpers import POOL, guest_only, open_peer, send_random_mix

pytestmark = guest_only

MiB = 1 << 20
MIX_BYTES = 256 * MiB


def _report_copied_until_fallback(monkeypatch: pytest.MonkeyPatch, transport: object) -> list[bool]:
    """Sends made before the fallback are reported copied, whenever their ranges come; later
    ones as the guest's kernel reports them. Returns the copied flags delivered."""
    delivered: list[bool] = []
    real = _kernel.read_errqueue
    copied_below: int | None = None  # ids sent before the fallback (known once it came)

    def read_errqueue(sock: socket.socket, limit: int = 64) -> list[_kernel.ErrQueueMessage]:
        nonlocal copied_below
        stats = transport.stats  # type: ignore[attr-defined]
        out: list[_kernel.ErrQueueMessage] = []
        for m in real(sock, limit):
            if isinstance(m, _kernel.ZeroCopyRange):
                if copied_below is None and stats.state == "copy-fallback":
                    copied_below = stats.zc_sends
                if copied_below is None or m.lo < copied_below:
                    m = _kernel.ZeroCopyRange(m.lo, m.hi, copied=True)
                delivered.append(m.copied)
            out.append(m)
        return out

    monkeypatch.setattr(_kernel, "read_errqueue", read_errqueue)
    return delivered


async def test_copied_first_probes_cost_a_mix_little_of_its_zero_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    seed = random.randrange(1 << 30)
    transport, proto = await open_peer(
        {"op": "sink", "expect": {"seed": seed, "pool": POOL, "total": MIX_BYTES}}, fallback_after=1
    )
    delivered = _report_copied_until_fallback(monkeypatch, transport)
    transport.set_write_buffer_limits(high=8 * MiB)
    completions, _ = await send_random_mix(transport, proto, seed, MIX_BYTES)
    transport.write_eof()
    reply = await asyncio.wait_for(proto.reply, 300)
    assert reply["sha256"] == reply["expected"], f"stream corrupted (seed {seed})"
    stats = transport.stats
    info = (seed, stats, transport._policy)
    assert delivered[:1] == [True] and False in delivered, info  # fell back, then zero-copy
    assert stats.state == "zerocopy", info
    # Unforced, about 3/4 of the mix's bytes go zero-copy here (the rest: writes under the
    # threshold, mutable buffers, and the writes behind the first probe); the fallback may
    # cost 4 MiB of copies before its re-probe. With the old 1 GiB re-probe: only the probes.
    assert stats.zc_bytes >= MIX_BYTES // 2, info
    assert sum(c.zerocopy for c in completions) > len(completions) // 3, info
    transport.close()
