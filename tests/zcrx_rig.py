"""The namespace both zero-copy receive test modules stream in (test_zcrx, test_zcrx_transport).

lo MTU 61492 makes the MSS 61440, 15 whole pages, so a MSG_ZEROCOPY sender's pages map whole
(PLATFORM.md, "Zero-copy receive"). The default receive buffer is raised to 1 MiB as well:
the sender's MSS is bounded by half the largest window the peer advertised when it is synced
(the kernel's tcp_bound_to_half_wnd), and with the stock 128 KiB buffer the first window is a
single 61440-byte segment. Measured: the MSS then started at 30720 and settled at 61440 or, in
most streams after the second in a namespace, 38400 (not a multiple of 4096: 95.65% mapped);
with 1 MiB it was 61440 from the start in every stream (99.76% mapped).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

from aiozc.tools.netns import NetNamespace
from rig import require_netns

_names = itertools.count()


def mss_namespace(tag: str) -> Iterator[NetNamespace]:
    require_netns()
    ns = NetNamespace(f"aiozc-probe-{os.getpid()}-{tag}{next(_names)}").create()
    try:
        ns.ip("link", "set", "lo", "mtu", "61492")
        ns.set_sysctl("net.ipv4.tcp_rmem", "4096 1048576 6291456")
        yield ns
    finally:
        ns.close()
