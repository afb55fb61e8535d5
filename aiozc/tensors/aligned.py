"""Aligned arrays: where the channel receives frame bodies, and what ``out=`` should be.

The kernel's copy into user memory (``recv_into``) is slower into a destination that is not
64-byte aligned when the destination is not in cache, and numpy's ``np.empty`` of a large
array starts 16 bytes past a page boundary (glibc's mmap chunk header). Measured with
``python -m aiozc bench recv --chunk 1048576`` (loaded 2-core VM): ``recv_into`` a
16-bytes-past-a-page buffer cost 1.6-2.5x the receiver CPU of a page-aligned one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..buffers import CACHE_LINE, PAGE_SIZE

__all__ = ["aligned_empty", "destination_alignment"]


def destination_alignment(nbytes: int) -> int:
    """A page for arrays of a page or more, else a cache line (less slack for small arrays)."""
    return PAGE_SIZE if nbytes >= PAGE_SIZE else CACHE_LINE


def aligned_empty(shape: Any, dtype: Any = float) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on a page boundary (a cache line for
    arrays under a page): over-allocate by one alignment unit and offset into it.

    The result is an ordinary C-contiguous, writable array (a view: ``base`` keeps the
    allocation alive). Use it as ``chan.recv(out=...)``, or for any ``recv_into``.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if dtype.itemsize == 0 or dtype.hasobject:
        return np.empty(shape, dtype)  # nothing to align, or not raw memory
    align = destination_alignment(nbytes)
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)
