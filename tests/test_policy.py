"""The zero-copy policy state machine (pure: fed what the kernel reported)."""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st

from aiozc.policy import NEVER, PolicyOptions, ZeroCopyPolicy, ZeroCopyState

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


_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("sent"), st.integers(1, 3 * BIG), st.booleans()),
        st.tuples(st.just("completed"), st.integers(1, 4), st.booleans()),
        st.tuples(st.just("enobufs"), st.integers(0, 2), st.just(False)),
    ),
    max_size=40,
)


@given(events=_EVENTS, probe_first=st.booleans(), reprobe=st.sampled_from([0, BIG, 5 * BIG]))
def test_copy_allowance_is_what_wants_zerocopy_answers(
    events: list[tuple[str, int, bool]], probe_first: bool, reprobe: int
) -> None:
    """TCP's direct path sends without asking while the allowance lasts: within it no write
    may be wanted zero-copy, and at 0 a write at the threshold must be."""
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=probe_first, fallback_after=2, reprobe_bytes=reprobe))
    for kind, n, flag in events:
        if kind == "sent":
            policy.on_sent(n, zerocopy=flag)
        elif kind == "completed":
            policy.on_completed(n, copied=flag)
        else:
            policy.on_enobufs(outstanding_ids=n)
        allowance = policy.copy_allowance()
        threshold = policy.options.threshold
        if allowance == 0:
            assert policy.wants_zerocopy(threshold)
            continue
        shadow = copy.copy(policy)
        copied = 0
        for size in (threshold, BIG, 7 * BIG):  # copies inside the allowance: still no
            if allowance != NEVER and copied + size >= allowance:
                break
            assert not shadow.wants_zerocopy(size) and not shadow.wants_zerocopy(64 * BIG)
            shadow.on_sent(size, zerocopy=False)
            copied += size
        if allowance != NEVER:
            shadow.on_sent(allowance - copied, zerocopy=False)
            assert shadow.wants_zerocopy(threshold)  # spent: the re-probe is due
