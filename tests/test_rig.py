"""The zero-copy rig itself: private namespaces, real zero-copy, ENOBUFS injection, cleanup."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading

import pytest

from aiozc._sys import kernel as _kernel
from aiozc.tools.netns import (
    OPTMEM_NO_ZEROCOPY,
    OPTMEM_ONE_PENDING_NOTIFICATION,
    NamespaceCallError,
    SinkNamespace,
    VethPair,
    list_namespaces,
    netns_available,
)
from rig import (  # the fixtures themselves come from conftest (pytest_plugins)
    drain_zc,
    ids_covered,
    require_netns,
    wait_zc_ids,
    zc_tcp_pair,
    zc_udp_socket,
)

DATAGRAM = 64000


# ------------------------------------------------------------------------------------------
# Functions run in a fresh interpreter inside the namespace (imported by reference there).


def udp_zerocopy_burst(dst: str, count: int, size: int) -> dict[str, object]:
    """Send ``count`` MSG_ZEROCOPY datagrams to ``dst``; report sends and notifications."""
    import select
    import time

    from aiozc._sys import kernel as k

    buf = bytearray(size)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert k.enable_zerocopy(s) is None
    k.enable_recverr(s)
    s.connect((dst, 9))
    sent = 0
    for i in range(count):
        buf[0] = i & 0xFF
        s.send(buf, k.MSG_ZEROCOPY)
        sent += 1
    ranges: list[list[object]] = []
    covered = 0
    deadline = time.monotonic() + 5
    p = select.poll()
    p.register(s.fileno(), 0)
    while covered < sent and time.monotonic() < deadline:
        for m in k.read_errqueue(s):
            assert isinstance(m, k.ZeroCopyRange), m
            ranges.append([m.lo, m.hi, m.copied])
            covered += ((m.hi - m.lo) & 0xFFFFFFFF) + 1
        if covered < sent:
            p.poll(50)
    s.close()
    return {"sent": sent, "ranges": ranges, "covered": covered}


def zc_sizes(dst: str, sizes: list[int]) -> dict[str, object]:
    """One MSG_ZEROCOPY send per size: errno or 0 for each; then the notified id ranges."""
    import errno as _errno
    import os as _os
    import select
    import time

    from aiozc._sys import kernel as k

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert k.enable_zerocopy(s) is None
    k.enable_recverr(s)
    s.connect((dst, 9))
    results = []
    for size in sizes:
        try:
            s.send(bytearray(size), k.MSG_ZEROCOPY)
            results.append(0)
        except OSError as exc:
            results.append(_errno.errorcode.get(exc.errno, exc.errno))
    ok = results.count(0)
    ranges: list[list[int]] = []
    deadline = time.monotonic() + 5
    p = select.poll()
    p.register(s.fileno(), 0)
    while sum(hi - lo + 1 for lo, hi in ranges) < ok and time.monotonic() < deadline:
        ranges += [[m.lo, m.hi] for m in k.read_errqueue(s)]
        p.poll(20)
    return {"uid": _os.getuid(), "results": results, "ranges": ranges}


def whoami_netns() -> dict[str, object]:
    import os

    return {"netns": os.readlink("/proc/self/ns/net"), "ifaces": sorted(os.listdir("/sys/class/net"))}


def boom() -> None:
    raise ValueError("raised inside the namespace")


# ------------------------------------------------------------------------------------------


def test_netns_available_gives_none_or_reason() -> None:
    reason = netns_available()
    assert reason is None or (isinstance(reason, str) and reason)


def test_netns_unavailable_reason_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiozc.tools.netns as netns

    netns_available.cache_clear()
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    try:
        reason = netns_available()
    finally:
        monkeypatch.undo()
        netns_available.cache_clear()
    assert reason is not None and "root" in reason


def test_enter_in_forked_child(sink_ns: SinkNamespace) -> None:
    """``enter()`` switches a forked single-threaded child; the parent stays where it was."""
    host = os.readlink("/proc/thread-self/ns/net")
    target = sink_ns.call(whoami_netns)["netns"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            sink_ns.enter()
            os.write(w, os.readlink("/proc/thread-self/ns/net").encode())
            sink_ns.close()  # a child never deletes its parent's namespace
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child_ns = f.read()
    os.waitpid(pid, 0)
    assert child_ns == target != host
    assert os.readlink("/proc/thread-self/ns/net") == host
    assert sink_ns.name in list_namespaces()


def test_reap_stale_namespaces_only_touches_dead_pids() -> None:
    require_netns()
    from aiozc.tools.netns import _ip, reap_stale_namespaces

    dead = 4194304  # above pid_max's hard limit (2**22): never a live pid
    stale = f"aiozc-reaptest-{dead}-{os.getpid()}"  # unique even with concurrent test runs
    _ip("netns", "add", stale)
    try:
        with SinkNamespace() as ns:
            reaped = reap_stale_namespaces(("aiozc-reaptest", "aiozc-sink"))
            # (a concurrent run may have reaped it first: check the outcome, not who did it)
            assert stale not in list_namespaces()
            assert ns.name not in reaped and ns.name in list_namespaces()
    finally:
        _ip("netns", "del", stale, check=False)


def test_rigs_take_the_next_name_when_a_stale_namespace_holds_theirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_netns()
    import itertools

    from aiozc.tools import netns

    prefix = f"aiozc-freetest{os.getpid()}"  # unique even with concurrent test runs
    stale = [f"{prefix}-{os.getpid()}-0", f"{prefix}-{os.getpid()}-0-a"]
    for name in stale:
        netns._ip("netns", "add", name)
    try:
        for make, first in ((SinkNamespace, lambda r: r.name), (VethPair, lambda r: r.a.name)):
            monkeypatch.setattr(netns, "_next_index", itertools.count().__next__)
            with make(prefix=prefix) as rig:
                assert first(rig).startswith(f"{prefix}-{os.getpid()}-1")
                assert first(rig) in list_namespaces()
        assert all(name in list_namespaces() for name in stale)  # never deleted: not ours
    finally:
        for name in stale:
            netns._ip("netns", "del", name, check=False)


def test_sink_namespace_shape(sink_ns: SinkNamespace) -> None:
    assert sink_ns.name.startswith(f"aiozc-sink-{os.getpid()}-")
    assert sink_ns.name in list_namespaces()
    x = sink_ns.local_addr.split(".")[2]
    assert sink_ns.local_addr == f"10.211.{x}.1"
    assert sink_ns.sink_addr == f"10.211.{x}.2"
    info = sink_ns.call(whoami_netns)
    assert info["ifaces"] == ["ifb0", "lo"]
    assert info["netns"] != os.readlink("/proc/self/ns/net")
    out = sink_ns.run(["ip", "-o", "addr", "show", "dev", "ifb0"], capture_output=True, text=True,
                      check=True).stdout
    assert f"{sink_ns.local_addr}/24" in out
    link = sink_ns.run(["ip", "-o", "link", "show", "dev", "ifb0"], capture_output=True, text=True,
                       check=True).stdout
    assert "mtu 65535" in link and "NOARP" in link and ",UP" in link


def test_udp_zerocopy_into_sink_is_not_copied(sink_ns: SinkNamespace) -> None:
    """Sender in a fresh interpreter inside the namespace: 64000 B datagrams to the ifb sink are
    released uncopied, and the notifications cover exactly one id per send, in order."""
    n = 50
    res = sink_ns.call(udp_zerocopy_burst, sink_ns.sink_addr, n, DATAGRAM)
    assert res["sent"] == n
    assert res["covered"] == n
    ranges = res["ranges"]
    assert ranges and all(copied is False for _, _, copied in ranges)
    assert ranges[0][0] == 0 and ranges[-1][1] == n - 1
    for (_, hi, _), (lo, _, _) in zip(ranges, ranges[1:]):
        assert lo == hi + 1


def test_udp_zerocopy_in_process_socket(sink_ns: SinkNamespace) -> None:
    """Same, with a socket created in-process inside the namespace (helper thread + setns)."""
    before = os.readlink("/proc/thread-self/ns/net")
    s = zc_udp_socket(sink_ns)
    assert os.readlink("/proc/thread-self/ns/net") == before  # our thread never moved
    with s:
        buf = bytearray(DATAGRAM)
        for _ in range(20):
            s.send(buf, _kernel.MSG_ZEROCOPY)
        ranges = wait_zc_ids(s, 20)
    assert ids_covered(ranges) == 20
    assert not any(r.copied for r in ranges)


def test_sink_cannot_reach_outside(sink_ns: SinkNamespace) -> None:
    s = sink_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s, pytest.raises(OSError) as info:
        s.sendto(b"x", ("192.0.2.1", 9))  # TEST-NET-1; unroutable from inside: ENETUNREACH
    assert info.value.errno == errno.ENETUNREACH


def _host_optmem() -> str:
    with open("/proc/sys/net/core/optmem_max") as f:
        return f.read().strip()


def _zc_send(s: socket.socket, buf: bytearray) -> int | None:
    """One MSG_ZEROCOPY send: None on success, else the errno."""
    try:
        s.send(buf, _kernel.MSG_ZEROCOPY)
    except OSError as exc:
        return exc.errno
    return None


def test_enobufs_with_one_pending_notification(enobufs_sink: SinkNamespace) -> None:
    """optmem_max = OPTMEM_ONE_PENDING_NOTIFICATION: one undrained notification exhausts option
    memory, later MSG_ZEROCOPY sends fail with ENOBUFS and consume no id."""
    host_optmem = _host_optmem()
    assert enobufs_sink.get_sysctl("net.core.optmem_max") == str(OPTMEM_ONE_PENDING_NOTIFICATION)
    assert _host_optmem() == host_optmem  # per netns
    buf = bytearray(DATAGRAM)
    with zc_udp_socket(enobufs_sink) as s:
        assert _zc_send(s, buf) is None
        failures = [_zc_send(s, buf) for _ in range(10)]
        assert failures == [errno.ENOBUFS] * 10
        s.send(buf)  # a plain (copying) send still works
        ranges = wait_zc_ids(s, 1)
        assert [(r.lo, r.hi, r.copied) for r in ranges] == [(0, 0, False)]
        # Drained: the next zero-copy send works again and gets id 1, not 11.
        assert _zc_send(s, buf) is None
        assert [(r.lo, r.hi) for r in wait_zc_ids(s, 1)] == [(1, 1)]

        # Mixed run: drain only every few sends; every success gets the next id, no failure does.
        ok = 2
        enobufs = 0
        for i in range(200):
            if i % 7 == 0:
                drain_zc(s)  # frees the queued notification skb
            err = _zc_send(s, buf)
            if err is None:
                ok += 1
            else:
                assert err == errno.ENOBUFS
                enobufs += 1
        rest = wait_zc_ids(s, 1, timeout=1.0)
        rest += drain_zc(s)
        assert enobufs > 0
        assert ok > 2
        # All ids handed out were 0..ok-1: the highest id reported is ok-1.
        assert max(r.hi for r in rest) == ok - 1


def test_enobufs_for_every_zerocopy_send_at_optmem_zero(sink_ns: SinkNamespace) -> None:
    sink_ns.set_sysctl("net.core.optmem_max", OPTMEM_NO_ZEROCOPY)
    buf = bytearray(DATAGRAM)
    with zc_udp_socket(sink_ns) as s:
        assert [_zc_send(s, buf) for _ in range(5)] == [errno.ENOBUFS] * 5
        s.send(buf)  # plain sends are unaffected
        assert drain_zc(s) == []
        sink_ns.set_sysctl("net.core.optmem_max", 131072)
        for _ in range(3):
            assert _zc_send(s, buf) is None
        ranges = wait_zc_ids(s, 3)
    # The 5 failed sends consumed no id: the first successful one is id 0.
    assert ranges[0].lo == 0 and ranges[-1].hi == 2 and ids_covered(ranges) == 3


def test_enobufs_from_memlock_for_unprivileged_sender(sink_ns: SinkNamespace) -> None:
    """Non-root with RLIMIT_MEMLOCK = 32 KiB: a 64000 B zero-copy send would pin 16+ pages and
    fails with ENOBUFS (and takes no id); 16000 B sends fit. Root is exempt (CAP_IPC_LOCK)."""
    sizes = [16000, 64000, 16000, 64000, 16000]
    res = sink_ns.call_unprivileged(zc_sizes, sink_ns.sink_addr, sizes, memlock=32 * 1024)
    assert res["uid"] == 65534
    assert res["results"] == [0, "ENOBUFS", 0, "ENOBUFS", 0]
    assert res["ranges"][0][0] == 0 and res["ranges"][-1][1] == 2
    as_root = sink_ns.call(zc_sizes, sink_ns.sink_addr, sizes)
    assert as_root["uid"] == 0 and as_root["results"] == [0] * 5


def test_tcp_zerocopy_across_veth_is_copied(veth_pair: VethPair) -> None:
    """A non-loopback interface, but the receiver is on this host: reported copied."""
    route = veth_pair.run("a", ["ip", "route", "get", veth_pair.b_addr], capture_output=True,
                          text=True, check=True).stdout
    assert "dev veth0" in route
    client, server = zc_tcp_pair(veth_pair)
    total = 0
    n = 8
    chunk = bytearray(256 * 1024)

    def reader() -> None:
        nonlocal total
        while True:
            data = server.recv(1 << 20)
            if not data:
                return
            total += len(data)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(n):
            client.sendall(chunk, _kernel.MSG_ZEROCOPY)  # may split: partial sends take ids too
        ranges = wait_zc_ids(client, n, timeout=10)
        assert ids_covered(ranges) >= n
        assert all(r.copied for r in ranges)
    finally:
        client.close()
        t.join(10)
        server.close()
    assert total == n * len(chunk)


def test_cleanup_removes_namespaces() -> None:
    require_netns()
    with SinkNamespace() as ns:
        name = ns.name
        proc = ns.popen(["sleep", "60"])
        assert name in list_namespaces()
    assert name not in list_namespaces()
    assert proc.poll() is not None  # popen'd children are stopped
    ns.close()  # idempotent

    with pytest.raises(RuntimeError, match="boom"):
        with VethPair() as pair:
            names = pair.names
            assert len(names) == 2 and all(n in list_namespaces() for n in names)
            raise RuntimeError("boom")
    assert not set(names) & set(list_namespaces())
    pair.close()


def test_call_reports_remote_errors(sink_ns: SinkNamespace) -> None:
    with pytest.raises(NamespaceCallError, match="raised inside the namespace") as info:
        sink_ns.call(boom)
    assert "ValueError" in info.value.remote_traceback


def test_run_python_snippet(sink_ns: SinkNamespace) -> None:
    got = sink_ns.run_python(
        """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((dst, 9))
        result = {"local": s.getsockname()[0], "n": n + 1}
        """,
        dst=sink_ns.sink_addr,
        n=41,
    )
    assert got == {"local": sink_ns.local_addr, "n": 42}


async def test_acall_does_not_block_the_loop(sink_ns: SinkNamespace) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        res = await sink_ns.acall(udp_zerocopy_burst, sink_ns.sink_addr, 5, DATAGRAM)
    finally:
        task.cancel()
    assert res["covered"] == 5
    assert ticks > 0


async def test_in_namespace_socket_on_running_loop(sink_ns: SinkNamespace) -> None:
    """A socket made inside the namespace works with the running loop's transports (asyncio and
    uvloop; uvloop has no loop.sock_sendto, so the datagram endpoint API is used)."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Rx(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not got.done():
                got.set_result(data)

    rx = sink_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((sink_ns.local_addr, 0))
    rx.setblocking(False)
    rx_transport, _ = await loop.create_datagram_endpoint(Rx, sock=rx)
    tx = sink_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    tx_transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=tx)
    try:
        tx_transport.sendto(b"ping", rx.getsockname())
        assert await asyncio.wait_for(got, 5) == b"ping"
    finally:
        tx_transport.close()
        rx_transport.close()
