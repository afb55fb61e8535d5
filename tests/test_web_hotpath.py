"""What a ZeroCopySite must not do to the event loop it runs on (per-request costs)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiohttp import web

import aiozc.web as zweb


def _attribute_dict_made(obj: Any, attribute: str) -> bool:
    """True once ``obj``'s attributes live in a dict of their own rather than inline values.

    CPython 3.11+ keeps a plain instance's attributes inline until something reads its
    ``__dict__``; from then on attribute and method lookups on it lose their specialisation.
    gc sees the inline values one by one, a made dict as one dict holding ``attribute``.
    """
    return any(type(ref) is dict and attribute in ref for ref in gc.get_referents(obj))


def _detectable(loop: asyncio.AbstractEventLoop) -> bool:
    fresh = type(loop)()
    try:
        if _attribute_dict_made(fresh, "_ready"):
            return False  # this interpreter keeps the dict from the start: nothing to see
        vars(fresh)
        return _attribute_dict_made(fresh, "_ready")
    finally:
        fresh.close()


async def test_zero_copy_site_leaves_the_loops_attributes_inline() -> None:
    loop = asyncio.get_running_loop()
    if not _detectable(loop):
        pytest.skip(f"{type(loop).__name__} keeps no inline attribute values to lose here")
    assert not _attribute_dict_made(loop, "_ready")
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = zweb.ZeroCopySite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert isinstance(loop.sendfile, zweb._SendfileHook)
        zweb.install_sendfile(loop)  # idempotent, and still no dict
        assert not _attribute_dict_made(loop, "_ready")
    finally:
        await runner.cleanup()
