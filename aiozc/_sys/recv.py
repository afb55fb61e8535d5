"""The compiled core's read path (``_core_recv.c``): the ``Reader`` and ``Dispatcher`` types,
or None for both on the pure-Python path (:mod:`aiozc._sys.core` says why).

``Reader(transport, fallback, fd)`` is a TCP transport's ``on_readiness`` (see
:mod:`aiozc.streamread`); ``Dispatcher(epfd, callbacks, on_error)`` is what a
:class:`aiozc.readiness.Multiplexer` registers with ``loop.add_reader`` for its private epoll.
"""

from __future__ import annotations

from typing import Any

from . import core as _core

__all__ = ["Dispatcher", "Reader"]


def _export() -> tuple[Any, Any]:
    if not _core.compiled:
        return None, None
    found: dict[str, Any] = {}
    if _core.lib.zc_recv_export(id(found)) < 0:
        return None, None  # out of memory at import: the Python path
    return found["Reader"], found["Dispatcher"]


Reader, Dispatcher = _export()
