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

_TLS = "TLS over aiozc transports (asyncio's SSLProtocol over the aiozc transport, tls.py)"

_MOCKED_SOCKET = (
    "mocks `asyncio.base_events.socket` (its socket class) and loop.getaddrinfo, so only asyncio's own "
    "create_server, which uses that module's `socket`, binds mock sockets; aiozc's, like uvloop's (which "
    "fails it too), binds real ones. "
)

RULES: list[Reason] = [
    # -- tests of another implementation's internals: not a contract aiozc can follow ---------
    Reason("n/a", "asserts asyncio.Server's private `_waiters` is None (test_server.py line 63; stock uvloop "
           "fails it the same way). aiozc's Server waits on a future, not a `_waiters` list. Every "
           "assertion before it passes, and the one after it passes too (checked with `_waiters` "
           "set by hand, not committed)", detail="no attribute '_waiters'"),
    Reason("n/a", _MOCKED_SOCKET + "Neither 1.2.3.4 nor 5.6.7.8 exists here: both binds give "
           "EADDRNOTAVAIL, hence 'could not bind on any address' (asyncio's own rule and message)",
           test="test_create_server_multiple_hosts_ipv4"),
    Reason("n/a", _MOCKED_SOCKET + "::1 binds and ::2 (EADDRNOTAVAIL) is skipped, as asyncio does; the "
           "test then calls `getsockbyname()`, a method only the mock has, on the real socket",
           test="test_create_server_multiple_hosts_ipv6"),
    Reason("n/a", "reads uvloop's private transport attribute `_paused` (test_tcp.py line 1054). The rest of "
           "the test passes through aiozc (checked with `_paused` aliased to `not is_reading()` by hand, not "
           "committed): pause/resume_reading twice, get_extra_info('socket'), add/remove_reader/writer "
           "refused on the transport's fd", detail="no attribute '_paused'"),
    Reason("n/a", "reads `get_extra_info('uvloop.sslproto')`, uvloop's own SSL protocol object",
           test="test_flush_before_shutdown", detail="pause_writing"),
    Reason("n/a", "uvloop-only behaviour: after abort() in connection_made uvloop has no socket to give and "
           "returns None; aiozc, like asyncio, returns the closed socket", test="test_tcp_handle_abort_in_connection_made"),
    Reason("suites", "flaky: fails on the stock uvloop loop too in some runs (a subprocess test, no sockets)",
           suite="cpython/test_events", base="uvloop", test="test_subprocess_shell"),
    # -- TLS (#11 point 7) -------------------------------------------------------------------
    Reason("loop", "TLS: `ssl=` is refused (#11 point 7: layer asyncio's SSL protocol over the aiozc transport)",
           detail="aiozc does not support TLS"),
    Reason("loop", "`start_tls()` refuses aiozc transports (#11 points 7-8: the aiozc loop's start_tls)",
           detail="is not supported by start_tls"),
    Reason("loop", "start_tls() over an aiozc transport never completes", test="test_start_tls*",
           detail="no result after|TimeoutError"),
    Reason("loop", _TLS + ": never completes", suite="*:ssl", detail="no result after|TimeoutError"),
    Reason("loop", _TLS + ": data written before close() is lost or cut short at shutdown",
           suite="*:ssl", test="test_remote_shutdown_receives_trailing_data"),
    Reason("loop", _TLS + ": data after close_notify reaches the SSL object (uvloop's own TLS discards it, bpo-39951)",
           suite="*:ssl", test="test_bpo_39951_discard_trailing_data"),
    # -- sendfile (#11 point 5) --------------------------------------------------------------
    Reason("loop", "write() during loop.sendfile() must raise RuntimeError 'sendfile is in progress'",
           test="test_sendfile_prevents_bare_write"),
    Reason("loop", "loop.sendfile() when the native path raises SendfileNotAvailableError (the test "
           "replaces loop._sendfile_native with BaseEventLoop's): the fallback never completes",
           test="test_sendfile_force_fallback"),
    Reason("loop", "fallback sendfile to a peer that closes in the middle: sent more than asyncio does "
           "before noticing (asyncio stops within the socket buffer)",
           test="test_sendfile_fallback_close_peer_in_the_middle_of_receiving"),
    # -- keyword arguments (#11 point 6) -----------------------------------------------------
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
    Reason("core", "wrong sock= for UDP: asyncio and uvloop say 'A UDP Socket was expected', aiozc "
           "'A datagram socket was expected'", test="test_create_datagram_endpoint_wrong_sock"),
    Reason("loop", "TLS + sendfile to a peer that closes: the TLS close waits for asyncio's 30 s SSL shutdown "
           "timeout in 2 of 3 runs (29.4 s; stock asyncio 0.3 s), so the test exceeds the per-test timeout",
           suite="cpython/test_sendfile", test="test_sendfile_ssl*", detail="no result after"),
    # -- transport contract ------------------------------------------------------------------
    Reason("tcp", "get_extra_info('socket') is None once the transport has closed (the server side closes "
           "at once, and aiozc released the socket before create_connection returned); uvloop still "
           "returns its socket object then. Timing-dependent: skipped ('fd not reused') in other runs",
           test="test_create_connection_sock_cancel_fd_leak", detail="no attribute 'fileno'"),
    Reason("tcp", "a protocol with get_buffer()/buffer_updated() that is not a BufferedProtocol subclass: "
           "uvloop picks the buffered read path by duck typing (asyncio by isinstance); aiozc calls the "
           "missing data_received, and the AttributeError leaves the connection open (#11 point 1)",
           test="test_create_server_buffered_*"),
]


def classify(suite: str, base: str, test_id: str, detail: str) -> Reason | None:
    test = test_id.rsplit(".", 1)[-1]
    for rule in RULES:
        if rule.matches(suite, base, test, detail):
            return rule
    return None
