"""bench recv's paired comparison (issue #10): the schedule, the ratios and the target line."""

from __future__ import annotations

from aiozc.tools import bench_recv_pairs as pairs
from aiozc.tools.benchkit_stats import median_ci

STOCK_A, AIOZC_A = pairs.stock_row("asyncio"), pairs.aiozc_row("asyncio")
STOCK_U, AIOZC_U = pairs.stock_row("uvloop"), pairs.aiozc_row("uvloop")
RECEIVERS = ["recv_into aligned", AIOZC_A, STOCK_A, STOCK_U, AIOZC_U]


def test_each_round_runs_every_row_once_with_the_arms_adjacent() -> None:
    for index in range(4):
        order = pairs.schedule(["plain", "MSG_ZEROCOPY"], RECEIVERS, index)
        assert sorted(order) == sorted((s, r) for s in ("plain", "MSG_ZEROCOPY") for r in RECEIVERS)
        for sender in ("plain", "MSG_ZEROCOPY"):
            for stock, ours in ((STOCK_A, AIOZC_A), (STOCK_U, AIOZC_U)):
                a, b = order.index((sender, stock)), order.index((sender, ours))
                assert abs(a - b) == 1, order


def test_the_order_inside_a_pair_alternates_by_round() -> None:
    first = [pairs.schedule(["plain"], RECEIVERS, i) for i in range(2)]
    assert first[0].index(("plain", STOCK_A)) < first[0].index(("plain", AIOZC_A))
    assert first[1].index(("plain", AIOZC_A)) < first[1].index(("plain", STOCK_A))


def test_a_row_without_its_partner_still_runs() -> None:
    assert pairs.schedule(["plain"], [AIOZC_U, "recv() -> bytes"], 1) == [("plain", AIOZC_U), ("plain", "recv() -> bytes")]


def test_paired_ratios_are_per_round_then_the_median() -> None:
    values = {("plain", STOCK_A): [100.0, 200.0, 300.0], ("plain", AIOZC_A): [90.0, 240.0, 300.0],
              ("plain", STOCK_U): [100.0], ("plain", "recv_into aligned"): [1.0]}
    (ratio,) = pairs.paired_ratios(values, ["plain"], "receiver")
    assert (ratio.sender, ratio.loop, ratio.metric) == ("plain", "asyncio", "receiver")
    assert ratio.ratios == [0.9, 1.2, 1.0]
    assert ratio.median == 1.0 and ratio.low == 0.9 and ratio.high == 1.2
    # The median of ratios is not the ratio of medians (which would be 240 / 200 = 1.2 here).


def test_the_target_line_names_each_miss_and_whether_the_noise_explains_it() -> None:
    ok = pairs.PairedRatio("plain", "uvloop", "receiver", [0.9], 0.9, 0.9, 0.9, 0.8, 1.0, 0.96)
    miss = pairs.PairedRatio("plain", "asyncio", "receiver", [1.1], 1.1, 1.1, 1.1, 0.97, 1.2, 0.96)
    other = pairs.PairedRatio("plain", "asyncio", "pair", [1.5], 1.5, 1.5, 1.5, 1.2, 1.7, 0.96)
    assert pairs.target_line([ok, other]).endswith("(receiver CPU, median paired ratio, 1 cases): met")
    assert pairs.target_line([ok, miss, other]).endswith("missed: plain/asyncio 1.10x (CI 0.97-1.20: within noise)")
    assert "missed: plain/asyncio 1.50x (CI 1.20-1.70: beyond noise)" in pairs.target_line([ok, miss, other], "pair")
    assert pairs.target_line([]) == "target: no paired rows ran"


def test_each_median_comes_with_its_confidence_interval() -> None:
    stock = [100.0] * 15
    ours = [90.0, 95, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 120, 130]
    (ratio,) = pairs.paired_ratios({("plain", STOCK_A): stock, ("plain", AIOZC_A): ours}, ["plain"], "receiver")
    # 15 rounds: the 4th and 12th smallest bound the median with 96.5% confidence
    assert (ratio.median, ratio.ci_low, ratio.ci_high) == (1.02, 0.98, 1.06)
    assert round(ratio.ci_level, 4) == 0.9648 and not ratio.beyond_noise
    assert "median 96% CI 0.98-1.06" in pairs.format_ratios([ratio])[0]


def test_median_ci_is_the_order_statistic_interval() -> None:
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0, 0.9375)  # 5: only the range, 94%
    low, high, level = median_ci([float(v) for v in range(1, 21)])
    assert (low, high) == (6.0, 15.0) and 0.95 <= level < 0.96
    assert median_ci([7.0]) == (7.0, 7.0, 0.0)


def test_the_extra_rounds_run_only_the_paired_rows() -> None:
    assert pairs.paired_rows(RECEIVERS) == [AIOZC_A, STOCK_A, STOCK_U, AIOZC_U]
    assert pairs.paired_rows(["recv_into aligned", AIOZC_U]) == []


def test_ksoftirqd_time_is_read_and_never_goes_back() -> None:
    first = pairs.ksoftirqd_ms()
    assert first >= 0
    assert pairs.ksoftirqd_ms() >= first
