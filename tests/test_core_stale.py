"""A compiled core built from other sources than those beside it is not used (the editable
checkout moved on: its functions need not match the Python side that calls them)."""

from __future__ import annotations

import types

from aiozc._sys import core
from aiozc._sys._core_sources import source_hash


def test_a_core_without_the_fingerprint_is_stale() -> None:
    # What a core built before the fingerprint existed looks like.
    assert "stale" in (core._stale_reason(types.SimpleNamespace()) or "")


def test_a_core_from_other_sources_is_stale() -> None:
    old = types.SimpleNamespace(ZC_CORE_SOURCE_HASH=source_hash() ^ 1)
    assert "stale" in (core._stale_reason(old) or "")


def test_a_core_from_these_sources_is_used() -> None:
    assert core._stale_reason(types.SimpleNamespace(ZC_CORE_SOURCE_HASH=source_hash())) is None
    if core.compiled:  # the built core, when there is one, is current
        assert core.lib.ZC_CORE_SOURCE_HASH == source_hash()
