"""Re-probing after a copy fallback: one copied early answer must not cost a whole transfer.

The guest VM rig's 1 GiB mix test failed once with no write_zc completion zero-copy: TCP starts
in `probing` (one zero-copy write in flight, the rest copied), a copied answer of >= fallback_after
send calls switches to copy-fallback, and the only way back is a re-probe, which came after
reprobe_bytes (1 GiB) of copies: the whole transfer. These tests drive that sequence.
"""

from __future__ import annotations

import asyncio
import random
import select
import socket
from collections.abc import Callable

import pytest

from aiozc._sys import kernel as _kernel
from aiozc.policy import DEFAULT_REPROBE_BYTES, PolicyOptions, ZeroCopyPolicy, ZeroCopyState
from tcp_helpers import connect_pair, report_ranges_as, sha

MiB = 1 << 20
GiB = 1 << 30


def _transfer(policy: ZeroCopyPolicy, total: int, write: int, route_copies: Callable[[int], bool]) -> int:
    """Send ``total`` bytes in writes of ``write`` as the TCP transport drives its policy: a
    write the policy wants zero-copy goes out in 4 send calls (a partial-send probe), answered
    by the kernel in one merged range before the next write; ``route_copies(n)`` says whether
    the n-th zero-copy write is reported copied. Returns the bytes sent zero-copy."""
    zerocopy_bytes = probes = 0
    for _ in range(total // write):
        if not policy.wants_zerocopy(write):
            policy.on_sent(write, zerocopy=False)
            continue
        for _ in range(4):
            assert policy.wants_zerocopy(write // 4, continuing=True)
            policy.on_sent(write // 4, zerocopy=True)
        policy.on_completed(4, copied=route_copies(probes))
        probes += 1
        zerocopy_bytes += write
    return zerocopy_bytes


def test_one_copied_first_probe_does_not_cost_the_whole_transfer() -> None:
    """The CI failure's sequence with the default options: the first probe is reported copied
    (4 send calls in one merged range: fallback at once), every later send is zero-copy."""
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True))
    assert policy.options.reprobe_bytes == DEFAULT_REPROBE_BYTES == GiB
    sent_zc = _transfer(policy, GiB, MiB, lambda n: n == 0)
    assert policy.state is ZeroCopyState.ZEROCOPY, policy.reason
    assert sent_zc >= GiB - 80 * MiB, sent_zc // MiB  # before the fix: 1 MiB of 1024


def test_a_few_copied_reprobes_still_leave_most_of_the_transfer_zero_copy() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True))
    sent_zc = _transfer(policy, 2 * GiB, MiB, lambda n: n < 3)  # the warm-up probe and 2 re-probes
    assert policy.state is ZeroCopyState.ZEROCOPY
    assert sent_zc >= 2 * GiB - 512 * MiB, sent_zc // MiB  # 64 + 128 + 256 MiB copied


def _reprobe_offsets(policy: ZeroCopyPolicy, total: int, write: int) -> list[int]:
    """Where (in bytes sent) each zero-copy write went out on a route that copies every one."""
    offsets, sent = [], 0
    while sent < total:
        if policy.wants_zerocopy(write):
            offsets.append(sent)
            policy.on_sent(write, zerocopy=True)
            policy.on_completed(1, copied=True)
        else:
            policy.on_sent(write, zerocopy=False)
        sent += write
    return offsets


def test_on_a_route_that_always_copies_the_wait_doubles_up_to_reprobe_bytes() -> None:
    """On one host every TCP zero-copy send is copied: after the fallback the re-probes come
    after 64, 128, ... MiB of copies, then every reprobe_bytes, as before the backoff."""
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True))
    offsets = _reprobe_offsets(policy, 6 * GiB, MiB)
    assert offsets[:4] == [0, MiB, 2 * MiB, 3 * MiB]  # probing: fallback_after=4 copied probes
    gaps = [b - a - MiB for a, b in zip(offsets[3:], offsets[4:])]  # copied bytes between
    assert gaps[:5] == [64 * MiB << k for k in range(5)]  # 64 MiB .. 1 GiB
    assert set(gaps[5:]) == {GiB} and len(gaps) == 9  # then the old schedule
    assert policy.state is ZeroCopyState.COPY_FALLBACK


def test_a_successful_reprobe_resets_the_backoff() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True, fallback_after=1))
    _reprobe_offsets(policy, 512 * MiB, MiB)  # fallback, then re-probes after 64, 128, 256 MiB
    while not policy.wants_zerocopy(MiB):
        policy.on_sent(MiB, zerocopy=False)
    policy.on_sent(MiB, zerocopy=True)
    policy.on_completed(1, copied=False)  # the route changed: zero-copy now
    assert policy.state is ZeroCopyState.ZEROCOPY
    policy.on_sent(MiB, zerocopy=True)
    policy.on_completed(1, copied=True)  # and back: fallback_after=1
    assert policy.state is ZeroCopyState.COPY_FALLBACK
    assert policy.copy_allowance() == 64 * MiB  # the first wait again, not the backed-off one


def test_the_rest_of_the_fallen_back_probe_write_is_not_a_reprobe() -> None:
    """The guest's failure (seed 634688016): the probe write of ~2 MiB left in 4 partial sends,
    each answered (copied) before the next. Only the first answer is the probe's; the other
    three answered sends that went on zero-copy to finish the write (``continuing``). Counted as
    re-probes, each doubled the wait: the next re-probe came 512 MiB later, after the mix."""
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True, fallback_after=1))
    assert policy.wants_zerocopy(2 * MiB)
    for _ in range(4):
        assert policy.wants_zerocopy(MiB // 2, continuing=True)
        policy.on_sent(MiB // 2, zerocopy=True)
        policy.on_completed(1, copied=True)
    assert policy.state is ZeroCopyState.COPY_FALLBACK
    assert policy.copy_allowance() == 64 * MiB  # the first wait, not 512 MiB
    offsets = _reprobe_offsets(policy, 256 * MiB, MiB)
    assert offsets[:2] == [64 * MiB, (64 + 1 + 128) * MiB], [o // MiB for o in offsets]


def test_a_reprobe_write_of_several_sends_doubles_the_wait_once() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True, fallback_after=1))
    policy.on_sent(MiB, zerocopy=True)
    policy.on_completed(1, copied=True)
    policy.on_sent(64 * MiB, zerocopy=False)
    assert policy.wants_zerocopy(MiB)  # the re-probe, in 3 partial sends
    for _ in range(3):
        policy.on_sent(MiB // 3, zerocopy=True)
        assert not policy.wants_zerocopy(MiB)  # answer pending: the writes behind it copy
    for _ in range(3):
        policy.on_completed(1, copied=True)
    assert policy.copy_allowance() == 128 * MiB


def test_a_small_reprobe_bytes_is_the_whole_schedule() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True, fallback_after=1, reprobe_bytes=MiB))
    offsets = _reprobe_offsets(policy, 16 * MiB, MiB // 4)
    assert [b - a for a, b in zip(offsets, offsets[1:])] == [MiB + MiB // 4] * (len(offsets) - 1)
    assert len(offsets) == 13


def test_reprobe_first_bytes_is_checked() -> None:
    with pytest.raises(ValueError, match="reprobe_first_bytes"):
        PolicyOptions(reprobe_first_bytes=0)


# -- the same sequence through the TCP transport (direct path included), on loopback --------


def _copied_until_fallback(monkeypatch: pytest.MonkeyPatch, transport: object) -> list[bool]:
    """Loopback reports every send copied; pass that on while the transport is still learning
    (the route's warm-up), then report what a zero-copy NIC would: not copied. Returns the
    copied flag of every range delivered."""
    delivered: list[bool] = []
    state = {"fell_back": False}

    def copied_while_learning(m: _kernel.ZeroCopyRange) -> bool:
        if transport.stats.state == "copy-fallback":  # type: ignore[attr-defined]
            state["fell_back"] = True
        copied = not state["fell_back"]
        delivered.append(copied)
        return copied

    report_ranges_as(monkeypatch, copied_while_learning)
    return delivered


async def test_transport_leaves_copy_fallback_soon_after_copied_first_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """write_zc of 1 MiB buffers with the default options: the first probes are reported
    copied (into copy-fallback), the route is zero-copy after that. Before the backoff the
    re-probe was due after 1 GiB of copies and all 128 MiB here stayed copied."""
    pair = await connect_pair()
    delivered = _copied_until_fallback(monkeypatch, pair.transport)
    try:
        bufs = [random.randbytes(MiB) for _ in range(128)]
        futs = []
        for buf in bufs:
            futs.append(pair.transport.write_zc(buf))
            await pair.read_all(len(pair.received) + len(buf))
            await asyncio.sleep(0)  # let the error queue's readiness be dispatched
        completions = await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert sha(bytes(pair.received)) == sha(b"".join(bufs))
        stats = pair.transport.stats
        assert True in delivered and False in delivered, delivered  # fell back, then zero-copy
        assert stats.state == "zerocopy", stats
        zerocopy = sum(c.zerocopy for c in completions)
        assert zerocopy >= 48, (zerocopy, stats)
    finally:
        pair.close()


def _peer_read(peer: socket.socket, nbytes: int) -> None:
    """Read exactly ``nbytes`` on the (non-blocking) peer socket without the event loop."""
    poller = select.poll()
    poller.register(peer, select.POLLIN)
    while nbytes:
        assert poller.poll(5000), "the peer got nothing for 5 s"
        nbytes -= len(peer.recv(nbytes))


async def test_direct_writes_read_the_probe_answer_though_the_writer_never_yields() -> None:
    """A writer whose socket never fills never yields to the loop, which is where the error
    queue is read. In the guest VM the probe's answer then stayed unread for a whole transfer
    and every write behind it was copied. Here nothing awaits between the probe and the end:
    the direct path must read the answer itself."""
    pair = await connect_pair()
    try:
        transport, fd = pair.transport, pair.transport.get_extra_info("socket").fileno()
        probe = random.randbytes(64 << 10)
        transport.write_zc(probe)  # probing: this one goes zero-copy, the probe
        assert transport._policy.probe_in_flight
        _peer_read(pair.peer, len(probe))
        poller = select.poll()
        poller.register(fd, 0)
        assert poller.poll(5000), "no notification for the probe"  # its answer is queued now
        chunk = random.randbytes(64 << 10)
        for _ in range(40):  # 2.5 MiB of direct writes, each read at once: the socket never fills
            transport.write(chunk)
            assert not transport._queue
            _peer_read(pair.peer, len(chunk))
        stats = transport.stats
        # Loopback copies: the answer said copied, one of fallback_after, so the next write was
        # the next probe. Unread, the first probe would stay in flight and everything copied.
        assert stats.notifications >= 1 and stats.ids_copied >= 1, stats
        assert stats.zc_sends >= 2 and stats.state == "probing", stats
    finally:
        pair.close()
