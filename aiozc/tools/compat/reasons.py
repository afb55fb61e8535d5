"""Why a test fails through aiozc, and whose area the fix is in.

Matched in order against each result that is worse on aiozc than on the stock loop; the first
rule whose patterns all match wins. ``detail`` is a regular expression over the one-line
summary the worker records (exception line and innermost frame). A failure no rule matches
is listed as "unclassified" in docs/compat.md: look at it and add a rule.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    area: str  # owner: tcp, loop, core, suites, or "unsupported" for a feature aiozc lacks
    why: str
    test: str = "*"  # fnmatch over the test method name
    suite: str = "*"  # fnmatch over the suite name
    detail: str = ""  # regex searched in the failure summary
    base: str = "*"

    def matches(self, suite: str, base: str, test: str, detail: str) -> bool:
        return (
            fnmatch.fnmatchcase(suite, self.suite)
            and fnmatch.fnmatchcase(base, self.base)
            and fnmatch.fnmatchcase(test, self.test)
            and (not self.detail or re.search(self.detail, detail) is not None)
        )


_KW = r"unexpected aiozc transport option\(s\): "

RULES: list[Reason] = [
    # -- TLS (#11 point 7) -------------------------------------------------------------------
    Reason("loop", "TLS: `ssl=` is refused (#11 point 7: layer asyncio's SSL protocol over the aiozc transport)",
           detail="aiozc does not support TLS"),
    Reason("loop", "`start_tls()` refuses aiozc transports (#11 points 7-8: the aiozc loop's start_tls)",
           detail="is not supported by start_tls"),
    Reason("loop", "start_tls / TLS over an aiozc transport never completes (#11 point 7)",
           suite="*:ssl", detail="no result after"),
    # -- keyword arguments (#11 point 6) -----------------------------------------------------
    Reason("core", "`reuse_address` is not accepted by aiozc.create_datagram_endpoint; asyncio raises "
           "ValueError for True and ignores False (datagram.py)", detail=_KW + "reuse_address"),
    Reason("loop", "`ssl_handshake_timeout` / `ssl_shutdown_timeout` not accepted (#11 point 6: "
           "ValueError without ssl, as asyncio)", detail=_KW + "ssl_"),
    Reason("loop", "`family` / `proto` / `flags` / `server_hostname` / `local_addr` ... not accepted "
           "(#11 point 6); the rest of the test is not reached", detail=_KW),
    Reason("loop", "create_server() with neither host/port nor sock: socket.gaierror from getaddrinfo(None, None) "
           "instead of asyncio's ValueError 'Neither host/port nor sock were specified'", test="test_create_server_2"),
    Reason("loop", "bind failure: asyncio/uvloop say \"error while attempting to bind on address (...)\"; "
           "aiozc re-raises the bare OSError", detail="(address already in use|Address already in use)"),
    Reason("loop", "a SOCK_DGRAM `sock=` is accepted instead of ValueError 'A Stream Socket was expected'",
           test="test_create_*_wrong_sock", suite="uvloop/test_tcp"),
    Reason("loop", "create_server(host=[...]) with an address the host lacks: asyncio's message names the "
           "address (\"error while attempting to bind on address\"), aiozc's does not",
           test="test_create_server_multiple_hosts_ipv*"),
    Reason("core", "wrong sock= for UDP: asyncio says 'A UDP Socket was expected', aiozc 'A datagram socket "
           "was expected'", test="test_create_datagram_endpoint_wrong_sock"),
    Reason("core", "sendto() to an unresolved host name: asyncio and uvloop raise ValueError "
           "(the address must be resolved), aiozc passes it to the kernel", test="test_udp_sendto_dns"),
    # -- transport contract ------------------------------------------------------------------
    Reason("tcp", "a protocol with get_buffer() that is not a BufferedProtocol subclass: uvloop picks the "
           "buffered read path by duck typing, aiozc calls data_received (missing) and the connection "
           "stays open", test="test_create_server_buffered_*"),
    Reason("core", "asyncio's datagram transport is also an asyncio.Transport (the test checks "
           "isinstance); aiozc's, like uvloop's, is only a DatagramTransport",
           suite="cpython/test_events", detail="is not an instance of <class 'asyncio.transports.Transport'>"),
    Reason("suites", "flaky: fails on the stock uvloop loop too in some runs (a subprocess test, no sockets)",
           suite="cpython/test_events", base="uvloop", test="test_subprocess_shell"),
    Reason("suites", "reads asyncio.Server's private `_waiters` (uvloop fails it the same way)",
           detail="no attribute '_waiters'"),
]


def classify(suite: str, base: str, test_id: str, detail: str) -> Reason | None:
    test = test_id.rsplit(".", 1)[-1]
    for rule in RULES:
        if rule.matches(suite, base, test, detail):
            return rule
    return None
