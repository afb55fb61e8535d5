"""``python -m aiozc demo``: its UDP section into the ifb sink, the line printed when that rig
cannot run, the sentence that tells real zero-copy rows from fallback ones, the ``--vm`` hook.

Counts only, never timings: every datagram counted by the sink, every aiozc completion reported
zero-copy (ee_code 0).
"""

from __future__ import annotations

import argparse
import sys
import types
from typing import Any

import pytest
from rig import require_netns

from aiozc import __main__ as cli
from aiozc.tools import demo, netns

COUNT = 2000
AIOZC_APIS = {api for api, kind in demo.UDP_CASES if kind != "stock"}


def test_udp_section_counts_every_datagram_and_zerocopy_completions() -> None:
    require_netns()
    rows = demo.run_udp(COUNT)
    assert {(r.loop, r.api) for r in rows} == {
        (loop, api) for loop in ("asyncio", "uvloop") for api, _ in demo.UDP_CASES
    }
    for r in rows:
        assert (r.datagrams, r.sink_rx) == (COUNT, COUNT), r
        if r.api in AIOZC_APIS:
            assert r.zerocopy == COUNT, r  # ifb drops the skb: the pages are released uncopied
            assert r.state == "zerocopy", r
        else:
            assert r.zerocopy is None and r.state == "-", r


def test_demo_command_prints_both_parts_and_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    require_netns()
    cli.main(["demo", "--gib", "0.0625", "--udp-count", "500"])
    out = capsys.readouterr().out
    section = out[out.index("UDP into an ifb sink") :].splitlines()
    udp = [line for line in section if line.startswith(("asyncio ", "uvloop "))]
    zc_rows = [line for line in udp if "aiozc sendto_zc" in line]
    assert len(zc_rows) == 4 and all(line.count("500/500") == 2 for line in zc_rows), out
    assert sum("stock sendto" in line and "500/500" in line for line in udp) == 2, out
    verdict = " ".join(out.split())  # the sentence is wrapped
    assert "Real zero-copy (every completion ee_code 0): the UDP rows of aiozc" in verdict
    assert "The TCP rows measure the copy fallback" in verdict


def test_one_line_says_why_when_the_sink_rig_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(netns, "netns_available", lambda: "no ifb here (test)")

    def must_not_run(count: int = 0) -> list[demo.UdpResult]:
        raise AssertionError("the UDP section ran without its rig")

    monkeypatch.setattr(demo, "run_udp", must_not_run)
    demo.run(argparse.Namespace(gib=1 / 64, udp_count=100, vm=False))
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "UDP zero-copy section skipped" in line]
    assert len(skipped) == 1 and "no ifb here (test)" in skipped[0] and "as root" in skipped[0]
    assert "no row here is real zero-copy" in " ".join(out.split())  # the verdict is wrapped


def _row(api: str, zerocopy: int | None, datagrams: int = 10) -> demo.UdpResult:
    return demo.UdpResult("asyncio", api, 1.0, datagrams, zerocopy, "zerocopy", datagrams)


def test_verdict_names_only_the_rows_that_were_all_zerocopy() -> None:
    verdict = demo._verdict(
        [_row("stock sendto", None), _row("aiozc sendto_zc_many", 10), _row("aiozc sendto_zc coalesce_zc", 9)]
    )
    assert "the UDP rows of aiozc sendto_zc_many;" in verdict
    assert "aiozc sendto_zc coalesce_zc had copied completions" in verdict


def _vm_args() -> argparse.Namespace:
    return argparse.Namespace(gib=1.0, udp_count=10, vm=True)


def test_vm_flag_says_not_available_until_the_vm_rig_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiozc.tools.vm", None)  # import fails as if it were absent
    with pytest.raises(SystemExit, match="not available yet"):
        demo.run(_vm_args())


def test_vm_flag_hands_over_to_the_vm_rig(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setitem(sys.modules, "aiozc.tools.vm", types.SimpleNamespace(run_demo=seen.append))
    args = _vm_args()
    assert demo.run(args) == []
    assert seen == [args]
