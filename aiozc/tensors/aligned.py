"""Aligned arrays: where the channel receives frame bodies, and what ``out=`` should be.

``np.empty`` of a large array starts 16 bytes past a page boundary (glibc's header of an mmap'd
chunk), and the kernel's copy into user memory was measured 1.8-2.2x slower into such a
destination than into a page-aligned one (``python -m aiozc bench recv``: the ``page + 16``
row; start offsets 1-31 bytes into a page are the slow ones). Only the first ``recv_into`` of a
body starts at the array's start; later ones start wherever the previous one ended.
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
