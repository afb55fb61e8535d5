"""The keyword options every aiozc transport takes, checked by name, and the byte view of the
buffers they send."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields
from typing import Any

from .policy import PolicyOptions

# name -> (kind, minimum, what the number counts); kinds: "int", "number", "bool", "str".
_RULES: dict[str, tuple[str, float | None, str]] = {
    "zc_threshold": ("int", 1, "bytes"),
    "fallback_after": ("int", 1, "send calls"),
    "reprobe_bytes": ("int", 0, "bytes"),
    "close_timeout": ("number", 0, "seconds"),
    "max_pinned_bytes": ("int", 0, "bytes"),
    "errqueue_drain_every": ("int", 1, "send calls"),
    "engine": ("str", None, ""),
    "read_size": ("int", 1, "bytes"),
    "probe_first": ("bool", None, ""),
    "local_peer_copy": ("bool", None, ""),
}


@dataclass
class TransportOptions:
    """Keyword options of every aiozc transport, with their defaults (see README).

    Every value is checked when the options are made: a wrong type raises TypeError and an
    out-of-range value ValueError, each naming the option.
    """

    zc_threshold: int = PolicyOptions.threshold
    fallback_after: int = PolicyOptions.fallback_after
    reprobe_bytes: int = PolicyOptions.reprobe_bytes
    # close() keeps the fd open until the kernel released every pinned buffer, at most this long.
    close_timeout: float = 30.0
    # Above this many pinned bytes further zero-copy-eligible data is sent by copy instead.
    max_pinned_bytes: int = 64 * 1024 * 1024
    # Drain the error queue after this many zero-copy sends even without EPOLLERR having been
    # dispatched yet; draining after every send would defeat the kernel's range merging.
    errqueue_drain_every: int = 32
    engine: str = "auto"
    read_size: int = 256 * 1024
    # TCP completions on one host wait for the receiver to read (see PolicyOptions); UDP
    # endpoints default to False: a datagram's completion comes when the device is done.
    probe_first: bool = True
    # TCP to a peer on this host (loopback, our own address): start in copy-fallback instead of
    # probing, since the kernel copies every zero-copy send delivered locally (ee_code 1).
    # Off by default; aiozc.web.ZeroCopySite turns it on (a local client or reverse proxy).
    local_peer_copy: bool = False
    # TCP zero-copy receive (aiozc.zcrx.ZeroCopyReceive, True for its defaults); datagram
    # transports ignore it, so it can be a loop-wide default.
    zc_receive: Any = None

    def __post_init__(self) -> None:
        for name, (kind, minimum, unit) in _RULES.items():
            setattr(self, name, _checked(name, getattr(self, name), kind, minimum, unit))
        if self.zc_receive is not None:
            from .zcrx import ZeroCopyReceive  # noqa: PLC0415 - cffi only for those who opt in

            self.zc_receive = ZeroCopyReceive.coerce(self.zc_receive)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> TransportOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unexpected aiozc transport option(s): {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    def policy_options(self) -> PolicyOptions:
        return PolicyOptions(
            self.zc_threshold, self.fallback_after, self.reprobe_bytes, self.probe_first
        )


def _checked(name: str, value: Any, kind: str, minimum: float | None, unit: str) -> Any:
    got = f"got {value!r} ({type(value).__name__})"
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, {got}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, {got}")
        return value
    if isinstance(value, bool):  # an int to Python, never meant as a size or a count
        raise TypeError(f"{name} must be a number of {unit}, {got}")
    if kind == "int":
        try:
            value = operator.index(value)  # numpy integers too
        except TypeError:
            raise TypeError(f"{name} must be an int ({unit}), {got}") from None
    elif not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number ({unit}), {got}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g} ({unit}), got {value!r}")
    return value


def byte_view(buf: Any) -> memoryview:
    """A flat unsigned-byte view of any C-contiguous buffer (numpy arrays, mmap, bytes...).

    TypeError for objects that do not export a buffer, including numpy arrays of dtypes the
    buffer protocol cannot describe (datetime64, timedelta64, object): numpy refuses those
    with ValueError, which would read as a bad value rather than a wrong type.
    """
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(f"expected a bytes-like object, got {type(buf).__name__}") from None
    except ValueError as exc:
        raise TypeError(
            f"{type(buf).__name__} does not export a buffer ({exc}); for a datetime64 or "
            "timedelta64 array send arr.view('int64')"
        ) from exc
    if not view.c_contiguous:
        view.release()
        raise ValueError("zero-copy send needs a C-contiguous buffer; pass a contiguous copy")
    if view.format != "B" or view.ndim != 1:
        # Slicing a multi-dimensional or typed view would slice elements/rows, not bytes.
        flat = view.cast("B")
        view.release()
        return flat
    return view
