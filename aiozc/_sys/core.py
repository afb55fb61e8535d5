"""The optional compiled core (cffi API mode, ``aiozc._sys._core``): which path is in use.

The core is built at install time when a C compiler is available (setup.py); otherwise, or
with ``AIOZC_NO_EXTENSIONS=1`` in the environment (the aiohttp / multidict / yarl
convention), aiozc runs its pure-Python path: :mod:`aiozc.completions` and the cffi ABI-mode
wrappers in this package. Both paths behave the same (tests/test_completions_diff.py).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from ._core_sources import source_hash

__all__ = ["NO_EXTENSIONS", "compiled", "ffi", "lib", "path_in_use", "why_pure"]

NO_EXTENSIONS = bool(os.environ.get("AIOZC_NO_EXTENSIONS"))

ffi: Any = None
lib: Any = None
why_pure: str | None = None
"""None when the compiled core is in use, else why not (in words)."""



def _stale_reason(core_lib: Any) -> str | None:
    """Why a built core must not be used: it came from other sources than those beside it
    (an editable checkout that moved on), so its functions need not match their callers."""
    try:
        want = source_hash()
    except OSError:
        return None  # installed without sources (a wheel): nothing to compare against
    if getattr(core_lib, "ZC_CORE_SOURCE_HASH", None) != want:
        return "the compiled core is stale (built from older sources; rebuild: make core)"
    return None


if NO_EXTENSIONS:
    why_pure = "AIOZC_NO_EXTENSIONS is set"
elif sys.implementation.name != "cpython":
    # The datagram path hands objects to C by id() (their address in CPython) and holds their
    # buffer exports through the CPython API (see _core_dgram.c).
    why_pure = f"the compiled core is CPython-only (this is {sys.implementation.name})"
else:
    try:
        from . import _core  # type: ignore[attr-defined]
    except ImportError:
        why_pure = "compiled core not built (no C compiler at install time?)"
    else:
        why_pure = _stale_reason(_core.lib)
        if why_pure is None:
            ffi, lib = _core.ffi, _core.lib
        else:
            warnings.warn(f"aiozc: {why_pure}; using the pure-Python path", RuntimeWarning)

compiled = lib is not None


def path_in_use() -> str:
    """``"compiled"`` or ``"pure-python (<reason>)"``: for probe and the transport stats."""
    return "compiled" if compiled else f"pure-python ({why_pure})"
