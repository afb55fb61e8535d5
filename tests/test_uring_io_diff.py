"""The io_uring batch core: the compiled one (aiozc/_sys/_core_uring.c) against the pure-Python
reference (aiozc/_sys/uring_io.py PyRingIO), on fake rings in ordinary memory.

No kernel here: a test fills SQEs through each implementation, compares the bytes, plays the
kernel (consumes the SQ, writes CQEs into both CQ rings) and requires the same events.
The example tests pin what the events mean and run on each implementation; the hypothesis
test drives both with the same random sends and CQE orders (partial and failed results,
F_MORE or not, copied or zero-copy notifications, notifications of single sends seen before
their results, unknown user_data, CQ wrap-around). Real rings, SQ-full submits and the kernel's
own CQEs are covered by test_engine_uring.py / test_uring_groups.py, which `make test` runs
on both paths.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from aiozc._sys import core, uring_io
from aiozc.datagram._common import PinSet
from aiozc._sys.uring import IORING_CQE_F_MORE as MORE, IORING_CQE_F_NOTIF as NOTIF
from aiozc._sys.uring_io import (
    EV_G_END, EV_G_RELEASE, EV_G_RELEASE_COPIED, EV_G_RESULT, EV_G_RESULTS_IN, EV_S_DONE,
    EV_S_RESULT,
)

ffi = uring_io._ffi
COPIED = -(1 << 31)  # IORING_NOTIF_USAGE_ZC_COPIED as the kernel's signed res
GROUP_UD = 1 << 63
_SQE = struct.Struct("<BBHiQQIIQHHHHQQ")
_CQE = struct.Struct("<QiI")

IMPLS = ["pure"] + (["compiled"] if core.compiled else [])
needs_core = pytest.mark.skipif(not core.compiled, reason=f"compiled core not in use: {core.why_pure}")


class FakeRing:
    """What a RingIO reads of a mapped Ring, in ordinary memory: the test is the kernel."""

    fd = -1
    setup_flags = 0

    def __init__(self, sq_entries: int = 64, cq_entries: int = 64) -> None:
        self.sq_entries, self.cq_entries = sq_entries, cq_entries
        self._sq_mask, self._cq_mask = sq_entries - 1, cq_entries - 1
        self._words = ffi.new("uint32_t[8]")
        self._sq_khead, self._sq_ktail, self._sq_kflags = (self._words + i for i in range(3))
        self._cq_khead, self._cq_ktail = self._words + 3, self._words + 4
        self._sqes = ffi.new("char[]", sq_entries * 64)
        self._cqes = ffi.new("char[]", cq_entries * 16)
        self._sq_tail = 0  # PyRingIO's local tail (Ring's)

    # Ring's methods that PyRingIO uses
    def pending(self) -> int:
        return (self._sq_tail - self._sq_khead[0]) & 0xFFFFFFFF

    def _needs_enter(self) -> bool:
        return False

    def submit(self) -> int:
        raise AssertionError("no kernel here: the tests keep the SQ below full")

    # the kernel's side
    def sqes(self, start: int, stop: int) -> list[tuple[int, ...]]:
        buf = ffi.buffer(self._sqes)
        return [_SQE.unpack_from(buf, (i & self._sq_mask) * 64) for i in range(start, stop)]

    def consume(self, tail: int) -> None:
        self._sq_khead[0] = tail

    def post(self, cqes: list[tuple[int, int, int]]) -> None:
        buf = ffi.buffer(self._cqes)
        tail = self._cq_ktail[0]
        assert len(cqes) + ((tail - self._cq_khead[0]) & 0xFFFFFFFF) <= self.cq_entries
        for ud, res, flags in cqes:
            _CQE.pack_into(buf, (tail & self._cq_mask) * 16, ud, res, flags)
            tail = (tail + 1) & 0xFFFFFFFF
        self._cq_ktail[0] = tail


def make_io(impl: str, ring: FakeRing) -> Any:
    return uring_io.CRingIO(ring) if impl == "compiled" else uring_io.PyRingIO(ring)


def local_tail(io: Any, ring: FakeRing) -> int:
    return int(io._r.sq_tail) if isinstance(io, uring_io.CRingIO) else ring._sq_tail


def events(flat: list[int]) -> list[tuple[int, int, int, int]]:
    return [tuple(flat[i : i + 4]) for i in range(0, len(flat), 4)]  # type: ignore[misc]


def pins(n: int, size: int = 100) -> tuple[list[Any], list[Any]]:
    bufs = [bytearray(size) for _ in range(n)]
    return bufs, [ffi.from_buffer(b) for b in bufs]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- what the events mean (each implementation) ----------------------------------------------


def test_group_released_in_order_is_one_run_then_end(impl: str) -> None:
    ring = FakeRing()
    io = make_io(impl, ring)
    _, ps = pins(4)
    key, error = io.send_group(7, 64, ps, [100] * 4)
    assert (key, error) == (0, None)
    sqes = ring.sqes(0, 4)
    assert [s[8] for s in sqes] == [GROUP_UD | i for i in range(4)]
    assert {(s[0], s[2], s[3], s[6], s[7]) for s in sqes} == {(47, 8, 7, 100, 64)}
    ring.consume(4)
    ring.post([(GROUP_UD | i, 100, MORE) for i in range(4)])
    assert events(io.reap()) == [(EV_G_RESULTS_IN, 0, 0, 0)]
    ring.post([(GROUP_UD | i, 0, NOTIF) for i in range(4)])
    assert events(io.reap()) == [(EV_G_RELEASE, 0, 0, 4), (EV_G_END, 0, 0, 0)]
    assert io.reap() == []


def test_group_failed_and_copied_datagrams(impl: str) -> None:
    ring = FakeRing()
    io = make_io(impl, ring)
    _, ps = pins(4)
    io.send_group(3, 0, ps, [100] * 4)
    ring.consume(4)
    ring.post([(GROUP_UD | 0, 100, MORE), (GROUP_UD | 1, -11, 0), (GROUP_UD | 2, 100, MORE),
               (GROUP_UD | 3, 40, MORE), (GROUP_UD | 0, 0, NOTIF), (GROUP_UD | 2, COPIED, NOTIF),
               (GROUP_UD | 3, COPIED, NOTIF)])
    assert events(io.reap()) == [
        (EV_G_RESULT, 0, 1, -11), (EV_G_RELEASE_COPIED, 0, 1, 1),  # no F_MORE: done, not zc
        (EV_G_RESULTS_IN, 0, 0, 0), (EV_G_RESULT, 0, 3, 40),
        (EV_G_RELEASE, 0, 0, 1), (EV_G_RELEASE_COPIED, 0, 2, 2), (EV_G_END, 0, 0, 0),
    ]


def test_single_sends_expect_and_notification_first(impl: str) -> None:
    ring = FakeRing()
    io = make_io(impl, ring)
    bufs, ps = pins(3)
    dest = ffi.new("char[]", 16)
    assert io.send(5, 0, ps[0], None, 0, 100) == 1
    assert io.send(5, 0, ps[1], dest, 16, None) == 2
    assert io.send(5, 0, ps[2], None, 0, 100) == 3
    s = ring.sqes(0, 3)
    assert s[1][4] == int(ffi.cast("uintptr_t", dest)) and s[1][11] == 16 and s[0][4] == 0
    ring.consume(3)
    ring.post([(1, 100, MORE), (2, 100, MORE), (3, COPIED, NOTIF), (99, 5, 0)])
    assert events(io.reap()) == [(EV_S_RESULT, 2, 100, 0)]  # 1 as expected; 3's result first
    ring.post([(3, -104, 0), (1, 0, NOTIF), (2, COPIED, NOTIF)])
    assert events(io.reap()) == [(EV_S_RESULT, 3, -104, 0), (EV_S_DONE, 3, 1, 0),
                                 (EV_S_DONE, 1, 0, 0), (EV_S_DONE, 2, 1, 0)]
    assert bufs  # alive until here


def test_fixed_buffers_by_address(impl: str) -> None:
    ring = FakeRing()
    io = make_io(impl, ring)
    region_a, region_b = bytearray(4096), bytearray(4096)
    ha, hb = ffi.from_buffer(region_a), ffi.from_buffer(region_b)
    lo_a, lo_b = int(ffi.cast("uintptr_t", ha)), int(ffi.cast("uintptr_t", hb))
    io.set_fixed([(lo_a, lo_a + 4096), (lo_b, lo_b + 4096)])
    inside_b = ffi.from_buffer(memoryview(region_b)[100:200])
    across = ffi.from_buffer(memoryview(region_a)[4000:])  # inside a
    _, outside = pins(1)
    io.send_group(1, 0, [inside_b, across, outside[0]], [100, 96, 100])
    io.send(1, 0, inside_b, None, 0, 100)
    got = [(s[2], s[9]) for s in ring.sqes(0, 4)]
    assert got == [(8 | 4, 1), (8 | 4, 0), (8, 0), (8 | 4, 1)]
    assert io.fixed_sends == 3


# --- both implementations, the same random story ----------------------------------------------


class Pair:
    """A pure and a compiled RingIO, each on its own fake ring, driven alike."""

    def __init__(self) -> None:
        self.rings = [FakeRing(64, 256), FakeRing(64, 256)]
        self.ios = [uring_io.PyRingIO(self.rings[0]), uring_io.CRingIO(self.rings[1])]
        self.keep: list[Any] = []
        self.tail = 0

    def both(self, name: str, *args: Any) -> Any:
        results = [getattr(io, name)(*args) for io in self.ios]
        assert results[0] == results[1], name
        return results[0]

    def send_group(self, sizes: list[int], pinset: bool = False) -> int:
        if pinset:  # the compiled core's PinSet: each datagram is its buffer's whole length
            bufs = [bytearray(size) for size in sizes]
            ps: Any = PinSet()
            ps.extend(bufs)
        else:
            bufs, ps = pins(len(sizes), 4096)
        self.keep.append((bufs, ps))
        key, error = self.both("send_group", 9, 0, ps, sizes)
        assert error is None
        return int(key)

    def send(self, size: int, expect: int | None) -> int:
        bufs, ps = pins(1, 4096)
        self.keep.append(bufs)
        return int(self.both("send", 9, 0, ps[0], None, 0, expect))

    def settle_sq(self) -> None:
        tails = [local_tail(io, ring) for io, ring in zip(self.ios, self.rings)]
        assert tails[0] == tails[1]
        filled = [ring.sqes(self.tail, tails[0]) for ring in self.rings]
        assert filled[0] == filled[1]  # the same buffers: the very same bytes
        for ring in self.rings:
            ring.consume(tails[0])
        self.tail = tails[0]

    def post_and_reap(self, cqes: list[tuple[int, int, int]]) -> list[int]:
        for ring in self.rings:
            ring.post(cqes)
        got = [io.reap() for io in self.ios]
        assert got[0] == got[1]
        assert self.ios[0].next_ud == self.ios[1].next_ud
        assert self.ios[0].next_group == self.ios[1].next_group
        return list(got[0])


def _story(data: st.DataObject, pair: Pair) -> None:
    """A few rounds of sends, then their CQEs in a drawn order, partly reaped each round."""
    pending: list[list[tuple[int, int, int]]] = []  # per request: its CQEs still to come, in order
    res_st = st.sampled_from(["whole", "whole", "whole", "short", "errno", "errno-more"])
    for _ in range(data.draw(st.integers(1, 4), label="rounds")):
        for _ in range(data.draw(st.integers(0, 3), label="sends")):
            if data.draw(st.booleans(), label="group"):
                sizes = data.draw(st.lists(st.sampled_from([100, 100, 4096, 7]), min_size=1, max_size=12))
                key = pair.send_group(sizes, PinSet is not None and data.draw(st.booleans(), label="pinset"))
                for i, size in enumerate(sizes):
                    pending.append(_request_cqes(data, GROUP_UD | key << 20 | i, size, res_st, False))
            else:
                size = data.draw(st.sampled_from([100, 4096]))
                expect = data.draw(st.sampled_from([size, None, 1]))
                ud = pair.send(size, expect)
                pending.append(_request_cqes(data, ud, size, res_st, True))
        pair.settle_sq()
        batch: list[tuple[int, int, int]] = []
        for _ in range(data.draw(st.integers(0, 40), label="cqes")):
            live = [p for p in pending if p]
            if not live:
                break
            req = data.draw(st.sampled_from(live))
            batch.append(req.pop(0))
        if data.draw(st.booleans(), label="stray"):
            batch.insert(data.draw(st.integers(0, len(batch))), (data.draw(st.sampled_from(
                [123456, GROUP_UD | 999 << 20, GROUP_UD | 0 << 20 | 4000])), 0, NOTIF))
        pair.post_and_reap(batch)
    rest = [c for p in pending for c in p]
    while rest:  # the CQ holds 256: the rest in slices
        pair.post_and_reap(rest[:200])
        rest = rest[200:]


def _request_cqes(data: st.DataObject, ud: int, size: int, res_st: Any,
                  single: bool) -> list[tuple[int, int, int]]:
    kind = data.draw(res_st, label="result")
    res = {"whole": size, "short": size // 2, "errno": -11, "errno-more": -104}[kind]
    more = kind != "errno"
    cqes = [(ud, res, MORE if more else 0)]
    if more:
        cqes.append((ud, data.draw(st.sampled_from([0, COPIED])), NOTIF))
        if single and data.draw(st.integers(0, 5)) == 0:
            cqes.reverse()  # a notification before its result: kept until the result
    return cqes


@needs_core
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_compiled_and_pure_make_the_same_sqes_and_events(data: st.DataObject) -> None:
    pair = Pair()
    _story(data, pair)
    for io in pair.ios:
        assert io.reap() == []
    # Everything released: neither keeps state behind.
    assert pair.ios[0]._groups == {} and pair.ios[0]._singles == {}
    for io in pair.ios:
        io.release()


@needs_core
def test_cq_wraps_around_the_ring_end() -> None:
    pair = Pair()
    for _round in range(3):
        key = pair.send_group([100] * 60)  # 120 CQEs a round, 256 slots: the second wraps
        pair.settle_sq()
        cqes = [(GROUP_UD | key << 20 | i, 100, MORE) for i in range(60)]
        cqes += [(GROUP_UD | key << 20 | i, 0, NOTIF) for i in range(60)]
        assert events(pair.post_and_reap(cqes)) == [
            (EV_G_RESULTS_IN, key, 0, 0), (EV_G_RELEASE, key, 0, 60), (EV_G_END, key, 0, 0)]


@needs_core
def test_many_live_requests_grow_the_tables() -> None:
    pair = Pair()
    uds = []
    for round_ in range(20):
        for _ in range(3):
            uds.append(pair.send(100, 100))
        pair.send_group([100, 100])
        pair.settle_sq()
    assert pair.ios[1].pending() == 0
    cqes = [(ud, 100, MORE) for ud in uds]
    pair.post_and_reap(cqes[:200])
    pair.post_and_reap([(ud, 0, NOTIF) for ud in reversed(uds)][:200])
    flat = pair.post_and_reap([(GROUP_UD | k << 20 | i, 100, 0) for k in range(20) for i in range(2)][:200])
    assert events(flat).count((EV_G_END, 19, 0, 0)) == 1


@needs_core
def test_a_pinset_group_reads_each_export() -> None:
    """A PinSet group (sendto_zc_many's): addresses and sizes from the exports, one size
    passed once, mixed sizes each their own; both implementations fill the same SQEs."""
    pair = Pair()
    uniform = pair.send_group([100] * 3, pinset=True)
    mixed = pair.send_group([100, 7, 4096], pinset=True)
    pair.settle_sq()
    sqes = pair.rings[1].sqes(0, 6)
    _, (bufs, _ps) = pair.keep[0], pair.keep[1]
    assert [s[6] for s in sqes] == [100, 100, 100, 100, 7, 4096]
    want = [int(core.ffi.cast("uintptr_t", core.ffi.from_buffer(b))) for b in bufs]
    assert [s[5] for s in sqes[3:]] == want
    cqes = [(GROUP_UD | key << 20 | i, size, 0) for key, sizes in ((uniform, [100] * 3), (mixed, [100, 7, 4096]))
            for i, size in enumerate(sizes)]
    assert events(pair.post_and_reap(cqes))[-1] == (EV_G_END, mixed, 0, 0)
