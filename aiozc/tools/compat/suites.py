"""Which suites run, which of their test classes, and how each gets our loop.

uvloop's files have a class per loop (``Test_UV_TCP`` on uvloop, ``Test_AIO_TCP`` on asyncio):
the base picks the class and, for aiozc, the test case's ``new_loop()`` is replaced. CPython's
build their loops with ``asyncio.SelectorEventLoop(...)`` or ``asyncio.new_event_loop()``;
both are redirected to the loop under test. Of CPython's per-selector copies of a class only
the epoll one runs (the loop under test ignores the selector argument, so the others would
repeat it).
"""

from __future__ import annotations

import asyncio
import asyncio.unix_events
import unittest
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

AnyLoop = asyncio.AbstractEventLoop


@dataclass(frozen=True)
class Suite:
    name: str
    source: str  # "uvloop" or "cpython"
    module: str
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # base -> class names
    # base -> test methods left out, with the reason in EXCLUDED_WHY (printed in docs/compat.md)
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # uvloop's files skip some tests where ``implementation == "asyncio"``; set to "uvloop" to
    # run those on asyncio's loop anyway (what asyncio's own SSLProtocol does with them)
    implementation: str | None = None

    def bases(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def class_names(self, base: str) -> tuple[str, ...]:
        return self.classes[base]


def _uv(name: str, module: str, uv_class: str, aio_class: str) -> Suite:
    return Suite(name, "uvloop", module, {"uvloop": (uv_class,), "asyncio": (aio_class,)})


def _cp(name: str, module: str, *classes: str, uvloop_exclude: tuple[str, ...] = ()) -> Suite:
    return Suite(name, "cpython", module, {"uvloop": classes, "asyncio": classes},
                 {"uvloop": uvloop_exclude})


EXCLUDED_WHY = (
    "cpython/test_events on uvloop leaves out test_add_signal_handler and test_bidirectional_pty: "
    "they hang on the stock uvloop loop too (signals and ptys, not networking) and cost 20 s each"
)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        _uv("uvloop/test_tcp", "tests.test_tcp", "Test_UV_TCP", "Test_AIO_TCP"),
        _uv("uvloop/test_tcp:ssl", "tests.test_tcp", "Test_UV_TCPSSL", "Test_AIO_TCPSSL"),
        Suite("uvloop/test_tcp:ssl-uvloop-only", "uvloop", "tests.test_tcp",
              {"asyncio": ("Test_AIO_TCPSSL",)}, implementation="uvloop"),
        _uv("uvloop/test_udp", "tests.test_udp", "Test_UV_UDP", "Test_AIO_UDP"),
        _cp("cpython/test_events", "test.test_asyncio.test_events", "EPollEventLoopTests",
            uvloop_exclude=("test_add_signal_handler", "test_bidirectional_pty")),
        _cp("cpython/test_streams", "test.test_asyncio.test_streams", "StreamTests"),
        _cp("cpython/test_sendfile", "test.test_asyncio.test_sendfile", "EPollEventLoopTests"),
        _cp("cpython/test_buffered_proto", "test.test_asyncio.test_buffered_proto",
            "BufferedProtocolSelectorTests"),
        _cp("cpython/test_server", "test.test_asyncio.test_server", "SelectorStartServerTests"),
    )
}


def _iter_tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def load(suite: Suite, base: str) -> list[unittest.TestCase]:
    module = __import__(suite.module, fromlist=["_"])
    loader = unittest.TestLoader()
    tests: list[unittest.TestCase] = []
    for class_name in suite.class_names(base):
        case = getattr(module, class_name)
        if suite.implementation is not None:
            case.implementation = suite.implementation
        tests += _iter_tests(loader.loadTestsFromTestCase(case))
    excluded = suite.exclude.get(base, ())
    return [t for t in tests if t.id().rsplit(".", 1)[-1] not in excluded]


def _policy_for(factory: Callable[[], AnyLoop]) -> type[asyncio.AbstractEventLoopPolicy]:
    class Policy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc, valid-type]
        def _loop_factory(self) -> AnyLoop:  # type: ignore[override]
            return factory()

    return Policy


def _patch_uvloop_testbase(base: str, factory: Callable[[], AnyLoop]) -> None:
    from uvloop import _testbase as tb

    policy = _policy_for(factory)
    for case in (tb.UVTestCase, tb.AIOTestCase):
        case.new_loop = lambda self: factory()  # type: ignore[method-assign]
        case.new_policy = lambda self: policy()  # type: ignore[method-assign]
    # The tests tell asyncio's loop by its class's module; ours lives in aiozc.
    tb.BaseTestCase.is_asyncio_loop = lambda self: base == "asyncio"  # type: ignore[method-assign]


def _patch_asyncio_constructors(factory: Callable[[], AnyLoop]) -> None:
    """``asyncio.SelectorEventLoop(selector)`` and ``asyncio.new_event_loop()`` -> factory().

    A loop implementation that itself calls ``asyncio.SelectorEventLoop()`` while being built
    gets the real class (the ``building`` guard), not itself again."""
    real = asyncio.SelectorEventLoop
    building = [False]

    class _Meta(type):
        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, real)

        def __subclasscheck__(cls, sub: type) -> bool:
            return issubclass(sub, real)

    class SelectorEventLoop(metaclass=_Meta):
        def __new__(cls, selector: Any = None) -> Any:  # noqa: ARG003 - the loop picks its own
            if building[0]:
                return real(selector)
            building[0] = True
            try:
                return factory()
            finally:
                building[0] = False

    asyncio.SelectorEventLoop = SelectorEventLoop  # type: ignore[misc, assignment]
    asyncio.unix_events.SelectorEventLoop = SelectorEventLoop  # type: ignore[misc, assignment]
    asyncio.DefaultEventLoopPolicy._loop_factory = staticmethod(  # type: ignore[attr-defined]
        lambda: SelectorEventLoop()
    )


def _adapt_cpython_harness_to_uvloop() -> None:
    """CPython's TestCase.close_loop reads ``loop._default_executor``, which only asyncio's
    loop has; without this every test on uvloop errors in its cleanup."""
    from test.test_asyncio import utils as test_utils  # type: ignore[import-not-found]

    close_loop = test_utils.TestCase.close_loop

    def tolerant_close_loop(loop: Any) -> None:
        if hasattr(loop, "_default_executor"):
            close_loop(loop)
            return
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    test_utils.TestCase.close_loop = staticmethod(tolerant_close_loop)  # type: ignore[method-assign]


def install(suite: Suite, base: str, mode: str, factory: Callable[[], AnyLoop]) -> None:
    """Make the suite's tests build their loops with ``factory``."""
    if suite.source == "uvloop":
        if mode != "stock":
            _patch_uvloop_testbase(base, factory)
    elif (base, mode) != ("asyncio", "stock"):
        _patch_asyncio_constructors(factory)
        if base == "uvloop":
            _adapt_cpython_harness_to_uvloop()
