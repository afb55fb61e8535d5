"""What the compiled core is built from, and a fingerprint of it.

Standalone on purpose (no aiozc imports): the builder loads it by path at install time, and
:mod:`aiozc._sys.core` compares the fingerprint built into ``_core`` with the sources beside
it, so that a core left over from older sources (an editable checkout that moved on) is not
called with the wrong functions.
"""

from __future__ import annotations

import hashlib
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
C_SOURCES = ("_core_tracker.c", "_core_errqueue.c", "_core_dgram.c", "_core_pyhot.c", "_core_pymeth.c",
             "_core_pins.c", "_core_coalesce.c", "_core_uring.c", "_core_udpring.c", "_core_recv.c",
             "_core_recvdispatch.c", "_core_tcp.c", "_core_tcpzc.c", "_core_tcpq.c", "_core_tcpflush.c",
             "_core_tcpdone.c")
BUILD_INPUTS = (*C_SOURCES, "_core_nogil.h", "_core_build.py")


def source_hash(here: pathlib.Path = HERE) -> int:
    """A u32 fingerprint of every file the core is built from; OSError if one is missing
    (an install that ships no sources: nothing to compare)."""
    digest = hashlib.sha256()
    for name in BUILD_INPUTS:
        digest.update((here / name).read_bytes())
    return int.from_bytes(digest.digest()[:4], "little")
