"""aiozc.tools.report: the JSON + PNG writer shared by the benches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiozc.tools.report import find_rows, format_size, write_report


def test_format_size() -> None:
    assert [format_size(n) for n in (4096, 64000, 1 << 20, 3 << 30, 100)] == [
        "4 KiB", "64000 B", "1 MiB", "3 GiB", "100 B"
    ]


def test_rows_are_found_under_the_usual_keys() -> None:
    rows = [{"size": 1, "gbps": 2.0}]
    assert find_rows({"rows": rows}) == rows
    assert find_rows({"cases": rows}) == rows
    assert find_rows({"rows": [], "x": 1}) == []


def test_json_and_line_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = {
        "rows": [
            {"size": s, "series": name, "gbps": g * s / 4096}
            for s in (4096, 16384, 64000)
            for name, g in (("stock", 1.0), ("aiozc", 1.5))
        ],
        "options": {"path": Path("/x"), "sizes": {3, 1}},
        "plot": {"title": "hello"},
    }
    written = write_report(tmp_path / "out", "udp-sink", result)
    assert [p.name for p in written] == ["udp-sink.json", "udp-sink.png"]
    data = json.loads(written[0].read_text())
    assert data["options"] == {"path": "/x", "sizes": [1, 3]}
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bar_plot_for_named_workloads_without_series(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    cases = [
        {"workload": w, "loop": l, "server": s, "gbps": 1.0}
        for w in ("body", "file") for l in ("asyncio", "uvloop") for s in ("stock", "aiozc")
    ]
    written = write_report(tmp_path, "aiohttp", {"cases": cases})
    assert [p.suffix for p in written] == [".json", ".png"]


def test_no_rows_means_json_only(tmp_path: Path) -> None:
    assert [p.name for p in write_report(tmp_path, "empty", {"x": 1})] == ["empty.json"]


def test_udp_sink_two_panel_plot_and_replot_from_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from aiozc.tools.report import main, replot

    kinds = [("raw sendto", "raw", "-", 1.0), ("asyncio stock", "stock", None, 1.0),
             ("aiozc sendto_zc", "aiozc", None, 1.2), ("aiozc sendto_zc io_uring", "aiozc+uring", None, 1.3),
             ("aiozc sendto_zc_many io_uring fixed", "aiozc-many+uring-fixed", None, 2.0)]
    rows = [
        {"size": s, "series": name if loop == "-" else f"{name} ({lp})", "kind": kind,
         "loop": loop or lp, "gbps": g * s / 4096}
        for s in (4096, 16384, 64000) for lp in ("asyncio loop", "uvloop")
        for name, kind, loop, g in kinds if loop != "-" or lp == "uvloop"
    ]
    written = write_report(tmp_path, "udp-sink", {"rows": rows, "plot": {"title": "t"}})
    png = written[1]
    first = png.read_bytes()
    png.unlink()
    assert replot(written[0]) == png and png.read_bytes() == first
    png.unlink()
    main([str(written[0])])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"x": 1}))
    assert replot(empty) is None
