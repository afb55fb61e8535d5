"""What a ZeroCopySite must not cost per request: the event loop's attribute lookups, probe
writes to a client on this host."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

import aiozc.web as zweb
from aiozc.readiness import Multiplexer
from aiozc.policy import DEFAULT_REPROBE_FIRST_BYTES, PolicyOptions, ZeroCopyPolicy, ZeroCopyState


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


async def _start_a_site_and_look(loop: asyncio.AbstractEventLoop) -> None:
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


@pytest.mark.parametrize("base", [asyncio.SelectorEventLoop, uvloop.Loop], ids=["asyncio", "uvloop"])
def test_zero_copy_site_leaves_the_loops_attributes_inline(base: type) -> None:
    """On a loop class of its own, as a program's one loop class is. CPython 3.11 keeps one
    table of inline attribute names per class, and every new instance takes away one free
    place in it (while more than one is left). After the few dozen asyncio loops of a test
    session only one name that __init__ does not set can still join; test_server_args'
    monkeypatched ``loop.getaddrinfo`` took it, so ``loop.sendfile`` (install_sendfile) made
    the dict on a later loop: this test failed after test_server_args.py alone."""
    loop = type(f"Fresh{base.__name__}", (base,), {})()
    try:
        if not _detectable(loop):
            pytest.skip(f"{base.__name__} keeps no inline attribute values to lose here")
        loop.run_until_complete(_start_a_site_and_look(loop))
    finally:
        loop.close()


async def _serve_once(body: bytes, **site_options: Any) -> Any:
    """One GET of ``body`` from a ZeroCopySite over loopback; the server side's stats."""
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.transport)
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = zweb.ZeroCopySite(runner, "127.0.0.1", 0, **site_options)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(f"http://127.0.0.1:{site.port}/") as response:
                    assert await response.read() == body
        await asyncio.sleep(0.05)  # the last notifications, if any zero-copy send was made
        assert seen and all(t is seen[0] for t in seen)  # one keep-alive connection
        return seen[0].get_extra_info("aiozc_stats")
    finally:
        await runner.cleanup()


async def test_zero_copy_site_copies_from_the_start_for_a_client_on_this_host() -> None:
    """The kernel copies every zero-copy send delivered on this host: no probe writes."""
    stats = await _serve_once(os.urandom(1 << 20))
    assert stats.zc_sends == 0
    assert stats.state == "copy-fallback"
    assert "peer on this host" in stats.reason


async def test_zero_copy_site_probes_a_local_client_when_told_to() -> None:
    stats = await _serve_once(os.urandom(1 << 20), local_peer_copy=False)
    assert stats.zc_sends >= 1


@pytest.mark.parametrize("size", [11, 100_000])
async def test_keep_alive_requests_do_not_wake_the_private_epoll(size: int) -> None:
    """A client on this host gets copies from the start (no error-queue traffic), so its
    socket waits in the loop's own selector, as a stock transport's: each request costs the
    loop's epoll_wait alone. Through the private epoll a wake-up cost a nested epoll_wait too:
    7 system calls per sequential request on uvloop against stock's 6 (perf tracepoints)."""
    body = os.urandom(size)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = zweb.ZeroCopySite(runner, "127.0.0.1", 0)
    await site.start()
    mux = Multiplexer.for_loop(asyncio.get_running_loop())
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{site.port}/"
            async with session.get(url) as response:  # the connection is made and reading
                assert await response.read() == body
            before = mux.dispatches
            for _ in range(30):
                async with session.get(url) as response:
                    assert await response.read() == body
            assert mux.dispatches - before == 0, "requests woke the private epoll"
    finally:
        await runner.cleanup()


def test_assume_copied_starts_the_re_probe_schedule() -> None:
    policy = ZeroCopyPolicy(PolicyOptions(probe_first=True))
    policy.assume_copied("a peer on this host")
    assert policy.state is ZeroCopyState.COPY_FALLBACK
    assert not policy.wants_zerocopy(1 << 20)
    assert policy.copy_allowance() == DEFAULT_REPROBE_FIRST_BYTES
    policy.on_sent(DEFAULT_REPROBE_FIRST_BYTES, zerocopy=False)
    assert policy.wants_zerocopy(1 << 20)  # the first re-probe, as after a fallback
    disabled = ZeroCopyPolicy()
    disabled.disable("no SO_ZEROCOPY")
    disabled.assume_copied("a peer on this host")
    assert disabled.state is ZeroCopyState.DISABLED
