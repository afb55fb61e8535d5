"""The compat runner's bookkeeping (aiozc.tools.compat): what counts against aiozc, the doc."""

from __future__ import annotations

from pathlib import Path

from aiozc.tools.compat import doc, reasons
from aiozc.tools.compat.runner import Run


def _result(outcome: str, detail: str = "") -> dict[str, object]:
    return {"outcome": outcome, "detail": detail, "seconds": 0.0, "reached": True}


def _pair() -> tuple[Run, Run]:
    stock = Run("uvloop/test_udp", "uvloop", "stock", {
        "t.A.test_ok": _result("pass"),
        "t.A.test_broken_everywhere": _result("fail"),
        "t.A.test_regressed": _result("pass"),
        "t.A.test_skipped": _result("skip"),
    })
    zc = Run("uvloop/test_udp", "uvloop", "aiozc", {
        "t.A.test_ok": _result("pass"),
        "t.A.test_broken_everywhere": _result("error"),
        "t.A.test_regressed": _result("hang", "no result after 20 s"),
        "t.A.test_skipped": _result("error", "unexpected aiozc transport option(s): reuse_address"),
    })
    return stock, zc


def test_worse_counts_only_what_the_stock_loop_did_not_fail() -> None:
    stock, zc = _pair()
    assert [row[0] for row in doc.worse(stock, zc)] == ["t.A.test_regressed", "t.A.test_skipped"]


def test_classify_matches_detail_and_leaves_unknown_unclassified() -> None:
    rule = reasons.classify("uvloop/test_tcp", "uvloop", "t.A.test_x",
                            "ValueError: aiozc does not support TLS: kernel TLS [server.py:19]")
    assert rule is not None and rule.area == "loop"
    assert reasons.classify("uvloop/test_udp", "uvloop", "t.A.test_x", "something new") is None


def test_write_replaces_only_the_generated_block(tmp_path: Path) -> None:
    path = tmp_path / "compat.md"
    stock, zc = _pair()
    path.write_text("# intro\n\nhand-written\n")
    doc.write(path, doc.generated([stock, zc], ["first"]))
    path.write_text(path.read_text() + "\n## notes after\n")
    doc.write(path, doc.generated([stock, zc], ["second"]))
    text = path.read_text()
    assert text.startswith("# intro\n\nhand-written\n")
    assert text.count(doc.BEGIN) == 1 and "first" not in text and "second" in text
    assert text.rstrip().endswith("## notes after")
    assert "| test_regressed | hang | ? | unclassified |" in text
    assert "1 of these are not classified yet." in text
