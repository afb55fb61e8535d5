"""User-space bytes copied by the comms, counted where the copies happen (for ``bench dask``).

Installed in every process of a cluster (``install()`` here and through ``client.run``), it wraps
the places that copy message bytes in user space and adds up the bytes each copies:

- dask, both comms: ``host_array_from_buffers`` (shards that are not adjacent slices of one
  buffer are rejoined into a new one).
- tcp://, dask's ``_add_frames_header`` joining a whole message into one bytes object (messages
  under 32 MiB with frames of 32 KiB on average or less), and tornado's IOStream: frames of
  2048 B or less appended to its write buffer, reads into its own read buffer
  (``_read_to_buffer`` outside a ``read_into``), what ``read_into`` then takes from that buffer
  and what ``read_bytes`` consumes from it.
- zc://, aiozc.dask's own counters (``aiozc.dask.copies``: small frames joined into one write,
  bytes moved from the receive scratch), and the aiozc transport copying unsent data into its
  queue (``_append_copy``).

Not counted: the kernel's copies (every byte over loopback), and copies dask's serializers make
inside objects (the same for both comms).
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, Callable

_counts: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()  # dask deserializes large messages in an offload thread
_originals: list[tuple[Any, str, Any]] = []  # (owner, name, what was there) to undo install()


def _add(key: str, nbytes: int) -> None:
    if nbytes > 0:
        with _lock:
            _counts[key] += nbytes


def _wrap(owner: Any, name: str, count: Callable[..., int], key: str, *, after: bool = False) -> None:
    """Replace ``owner.name`` by a wrapper adding ``count(*args)`` bytes (or, with ``after``,
    ``count(result, *args)``) under ``key``."""
    original = getattr(owner, name)
    _originals.append((owner, name, owner.__dict__.get(name)))

    if after:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            _add(key, count(result, *args))
            return result
    else:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _add(key, count(*args))
            return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _nbytes(buf: Any) -> int:
    return memoryview(buf).nbytes


def install() -> None:
    """Wrap the copy points in this process (once)."""
    if _originals:
        return
    _install_dask()
    _install_tcp()
    _install_zc()


def _install_dask() -> None:
    import importlib

    serialize = importlib.import_module("distributed.protocol.serialize")
    _wrap(serialize, "host_array_from_buffers", lambda buffers, *a: sum(map(_nbytes, buffers)),
          "dask host_array_from_buffers")


def _install_tcp() -> None:
    import distributed.comm.tcp as tcp
    from tornado import iostream

    def joined(result: Any, frames: Any, *args: Any) -> int:
        out_frames, _, total = result
        return total if len(out_frames) == 1 and len(frames) > 0 else 0

    _wrap(tcp, "_add_frames_header", joined, "tcp message join", after=True)
    threshold = iostream._StreamBuffer()._large_buf_threshold  # type: ignore[attr-defined]
    _wrap(iostream._StreamBuffer, "append",  # type: ignore[attr-defined]
          lambda self, data: len(data) if len(data) <= threshold else 0, "tornado write buffer")

    def own_buffer(result: Any, stream: Any) -> int:
        return (result or 0) if not stream._user_read_buffer else 0

    _wrap(iostream.IOStream, "_read_to_buffer", own_buffer, "tornado read buffer", after=True)
    _wrap(iostream.IOStream, "read_into",
          lambda stream, buf, *a, **k: min(stream._read_buffer_size, _nbytes(buf)), "tornado read buffer")
    _wrap(iostream.BaseIOStream, "_consume", lambda stream, loc: loc, "tornado read buffer")


def _install_zc() -> None:
    try:
        from aiozc.dask import copies
        from aiozc.transport import ZeroCopyTransport
    except ImportError:
        return
    copies.take()
    _wrap(ZeroCopyTransport, "_append_copy", lambda self, view: _nbytes(view), "zc transport queue")


def uninstall() -> None:
    """Put the wrapped functions back."""
    while _originals:
        owner, name, original = _originals.pop()
        if original is None:
            delattr(owner, name)  # it was inherited
        else:
            setattr(owner, name, original)


def take() -> dict[str, int]:
    """Bytes copied per copy point since the last take(), and reset."""
    with _lock:
        out = dict(_counts)
        _counts.clear()
    try:
        from aiozc.dask import copies
    except ImportError:
        return out
    for key, nbytes in copies.take().items():
        if nbytes:
            out[f"zc {key.replace('_', ' ')}"] = nbytes
    return out
