"""The zero-copy policy state machine (pure: fed what the kernel reported)."""

from __future__ import annotations

from aiozc.policy import PolicyOptions, ZeroCopyPolicy, ZeroCopyState

BIG = 1 << 20


def test_probe_first_keeps_one_zero_copy_write_in_flight() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True, fallback_after=3))
    assert policy.state is ZeroCopyState.PROBING
    assert policy.wants_zerocopy(BIG)
    policy.on_sent(BIG, zerocopy=True)
    assert not policy.wants_zerocopy(BIG)  # a probe is in flight: copy the writes behind it
    assert policy.wants_zerocopy(BIG, continuing=True)  # but finish the probe write itself
    policy.on_completed(1, copied=False)
    assert policy.state is ZeroCopyState.ZEROCOPY
    policy.on_sent(BIG, zerocopy=True)
    assert policy.wants_zerocopy(BIG)  # confirmed: every eligible write goes zero-copy


def test_copied_probes_fall_back_then_reprobe() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True, fallback_after=3, reprobe_bytes=4 * BIG))
    for _ in range(3):
        assert policy.wants_zerocopy(BIG)
        policy.on_sent(BIG, zerocopy=True)
        policy.on_completed(1, copied=True)
    assert policy.state is ZeroCopyState.COPY_FALLBACK and "3 consecutive" in policy.reason
    for _ in range(4):
        assert not policy.wants_zerocopy(BIG)
        policy.on_sent(BIG, zerocopy=False)
    assert policy.wants_zerocopy(BIG)  # 4 MiB copied: one re-probe
    policy.on_sent(BIG, zerocopy=True)
    assert not policy.wants_zerocopy(BIG)
    policy.on_completed(1, copied=False)
    assert policy.state is ZeroCopyState.ZEROCOPY


def test_without_probe_first_every_eligible_write_goes_zero_copy() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(fallback_after=2, threshold=1000))
    assert policy.state is ZeroCopyState.ZEROCOPY
    assert not policy.wants_zerocopy(999)
    for _ in range(5):
        assert policy.wants_zerocopy(BIG)
        policy.on_sent(BIG, zerocopy=True)
    policy.on_completed(5, copied=True)  # one merged range of five copied sends
    assert policy.state is ZeroCopyState.COPY_FALLBACK


def test_enobufs_two_tier_rule() -> None:
    policy = ZeroCopyPolicy()
    policy.on_enobufs(outstanding_ids=3)  # budget full of pending notifications: transient
    assert policy.state is ZeroCopyState.ZEROCOPY
    policy.on_enobufs(outstanding_ids=0)  # nothing will ever free budget: the limit is too small
    assert policy.state is ZeroCopyState.DISABLED and "RLIMIT_MEMLOCK" in policy.reason
    assert not policy.wants_zerocopy(BIG, continuing=True)
