"""The guest VM rig's host-side pieces (tools/vm): initramfs, module order, skips, cleanup.
The guest tests themselves are tests/vm (run inside the guest by `make vm-test`)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aiozc.tools import procs, vm
from aiozc.tools.vm import __main__ as vm_cli
from aiozc.tools.vm import assets, guest, peer
from aiozc.tools.vm.initramfs import INIT, build_initramfs, module_depends, module_load_order
from aiozc.tools.vm.peer import pattern_pool, pattern_sha256

sys.path.insert(0, str(Path(__file__).parent / "vm"))
from guest_helpers import POOL, alternates, stream_slice  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _read_newc(archive: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of each entry, checking magic and 4-byte alignment on the way."""
    entries, pos = [], 0
    while True:
        assert pos % 4 == 0 and archive[pos : pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_at = pos + 110
        name = archive[name_at : name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        entries.append((name, mode, archive[data_at : data_at + filesize]))
        pos = data_at + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            assert archive[pos:] == b""
            return entries


def test_initramfs_holds_busybox_init_and_modules_in_load_order(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF" + os.urandom(1001))  # odd sizes exercise the padding
    modules = []
    for name, size in (("virtio", 3), ("virtio_net", 4097)):
        modules.append(tmp_path / f"{name}.ko")
        modules[-1].write_bytes(os.urandom(size))
    entries = {name: (mode, data) for name, mode, data in _read_newc(gzip.decompress(build_initramfs(busybox, modules)))}
    assert entries["bin/busybox"] == (0o100755, busybox.read_bytes())
    assert entries["init"] == (0o100755, INIT.encode())
    assert entries["modules/virtio_net.ko"][1] == modules[1].read_bytes()
    assert entries["modules/order"][1] == b"virtio\nvirtio_net\n"
    assert entries["proc"][0] == 0o040755


def test_module_depends_reads_the_modinfo_string_table() -> None:
    image = b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net-failover\0vermagic=6.1\0"
    assert module_depends(image) == ["virtio_ring", "virtio", "net_failover"]
    assert module_depends(b"\0depends=\0name=x\0") == []
    assert module_depends(b"no modinfo here") == []


def _fake_module(folder: Path, name: str, deps: str) -> None:
    (folder / f"{name}.ko").write_bytes(b"\0name=" + name.encode() + b"\0depends=" + deps.encode() + b"\0")


def test_module_load_order_puts_dependencies_first(tmp_path: Path) -> None:
    for name, deps in {"9p": "9pnet,netfs,fscache", "fscache": "netfs", "netfs": "", "9pnet": "", "virtio_net": "virtio"}.items():
        _fake_module(tmp_path, name, deps)
    _fake_module(tmp_path, "virtio", "")
    order = module_load_order(tmp_path, ["virtio_net", "9p"])
    assert sorted(order) == sorted(["virtio", "virtio_net", "9pnet", "netfs", "fscache", "9p"])
    for later, earlier in [("virtio_net", "virtio"), ("9p", "fscache"), ("fscache", "netfs"), ("9p", "9pnet")]:
        assert order.index(earlier) < order.index(later)


def test_module_load_order_refuses_cycles_and_missing_modules(tmp_path: Path) -> None:
    _fake_module(tmp_path, "a", "b")
    _fake_module(tmp_path, "b", "a")
    with pytest.raises(ValueError, match="cycle"):
        module_load_order(tmp_path, ["a"])
    with pytest.raises(FileNotFoundError):
        module_load_order(tmp_path, ["missing"])


def test_unavailable_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (assets.why_unavailable() or "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/net/tun" else real_exists(p))
    assert "/dev/net/tun" in (assets.why_unavailable() or "")


def test_vm_test_skips_with_the_reason_and_succeeds(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(vm, "why_unavailable", lambda: "no /dev/net/tun (test)")
    assert vm_cli.main(["test"]) == 0
    assert "SKIPPED: guest VM tests cannot run here: no /dev/net/tun (test)" in capsys.readouterr().out


def test_archive_failure_is_a_skip_not_a_crash(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(vm, "why_unavailable", lambda: None)

    def unreachable() -> None:
        raise assets.AssetError("apt-get download failed: Temporary failure resolving deb.debian.org")

    monkeypatch.setattr(vm, "ensure_assets", unreachable)
    assert vm_cli.main(["test"]) == 0
    assert "resolving deb.debian.org" in capsys.readouterr().out


def test_the_guest_kernel_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "_kernel_package", lambda: "linux-image-6.1.0-50-amd64")
    monkeypatch.delenv("AIOZC_VM_KERNEL", raising=False)
    assert assets.kernel_release() == "6.1.0-50-amd64"
    monkeypatch.setenv("AIOZC_VM_KERNEL", "6.1.0-47-amd64")
    assert assets.kernel_release() == "6.1.0-47-amd64"
    assert assets.kernel_release("6.0.0-6-amd64") == "6.0.0-6-amd64"


def test_pattern_stream_is_the_pool_repeated() -> None:
    seed, total = 5, 3 * POOL + 12345
    pool = pattern_pool(seed, POOL)
    stream = (pool * 4)[:total]
    assert pattern_sha256(seed, POOL, total) == hashlib.sha256(stream).hexdigest()
    rng = random.Random(1)
    for _ in range(20):
        offset, size = rng.randrange(total - POOL), rng.randrange(POOL + 1)
        assert bytes(stream_slice(seed, offset, size)) == stream[offset : offset + size]


async def test_gated_peer_reads_only_as_far_as_it_is_told() -> None:
    """The peer's ``gated`` op (the close tests' receiver), on loopback: while it is told to read
    nothing a sender fills the two buffers and stops; then it reads exactly as far as told, and
    to EOF with the stream's sha256."""
    seed, total = 3, 4 << 20
    server = await asyncio.start_server(peer._handle, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(json.dumps({"op": "gated", "listen_rcvbuf": 64 << 10, "expect": {"seed": seed, "pool": POOL, "total": total}}).encode() + b"\n")
        port = json.loads(await reader.readline())["port"]
        sender = socket.socket()
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)  # no autotuning
        await asyncio.to_thread(sender.connect, ("127.0.0.1", port))
        stream = bytes(stream_slice(seed, 0, total))
        sender.setblocking(False)
        sent, before = _send_until_blocked(sender, stream), -1
        for _ in range(50):  # until ACKs stop freeing room: the two buffers are full
            if sent == before:
                break
            await asyncio.sleep(0.05)
            sent, before = _send_until_blocked(sender, stream, sent), sent
        assert sent == before and sent < total // 4, sent  # a reading peer would have taken it all

        async def read(until: int | None) -> dict[str, object]:
            writer.write(json.dumps({"read": until}).encode() + b"\n")
            return dict(json.loads(await asyncio.wait_for(reader.readline(), 30)))

        assert await read(sent // 2) == {"bytes": sent // 2}
        sender.setblocking(True)

        def send_the_rest() -> None:
            with sender:
                sender.sendall(stream[sent:])

        reply, _ = await asyncio.gather(read(None), asyncio.to_thread(send_the_rest))
        assert reply["bytes"] == total and reply["sha256"] == reply["expected"] == hashlib.sha256(stream).hexdigest()
        writer.close()
    finally:
        server.close()


def _send_until_blocked(sock: socket.socket, data: bytes, sent: int = 0) -> int:
    try:
        while sent < len(data):
            sent += sock.send(data[sent : sent + (64 << 10)])
    except BlockingIOError:
        pass
    return sent


def test_alternates() -> None:
    assert alternates(["pause", "resume", "pause"]) and alternates([])
    assert not alternates(["resume"]) and not alternates(["pause", "pause"])


@needs_root
def test_namespace_is_deleted_on_an_exception() -> None:
    with pytest.raises(RuntimeError), guest._namespace() as (ns, tap):
        assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        raise RuntimeError("boom")
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_children_are_ended_on_an_exception() -> None:
    with pytest.raises(RuntimeError), guest._process([sys.executable, "-c", "import time; time.sleep(60)"], name="qemu") as proc:
        raise RuntimeError("boom")
    assert proc.returncode is not None


def test_a_child_that_ignores_sigterm_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one stop_process (tools/procs.py) that the guest's children and netns popen share."""
    monkeypatch.setattr(procs, "STOP_GRACE", 0.5)
    ignore_term = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    with pytest.raises(RuntimeError), guest._process([sys.executable, "-c", ignore_term], name="peer") as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        raise RuntimeError("boom")
    assert proc.returncode == -signal.SIGKILL


@needs_root
def test_a_dead_runs_namespace_is_reaped_before_the_next_boot() -> None:
    dead = "aiozc-vm-4194304"  # above pid_max's hard limit (2**22): never a live pid
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        with guest._namespace() as (ns, tap):
            listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert dead not in listing and ns in listing
            links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
            assert tap in links
    finally:
        subprocess.run(["ip", "netns", "del", dead], capture_output=True)


def test_bench_tcp_speaks_the_peers_protocol_in_the_guest() -> None:
    from aiozc.tools.bench_tcp import Target

    peer = Target(("10.213.0.1", 9000), vm_peer=True)
    assert peer.header(123) == b'{"op": "sink"}\n'
    assert peer.received_all(b'{"bytes": 123, "sha256": "x", "expected": null}\n', 123)
    assert not peer.received_all(b'{"bytes": 122, "sha256": "x", "expected": null}\n', 123)
    loopback = Target(("127.0.0.1", 1))
    assert loopback.header(5) == (5).to_bytes(8, "big") and loopback.received_all(b"k", 5)


def test_demo_vm_says_why_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setattr(vm, "why_unavailable", lambda: "needs root (test)")
    with pytest.raises(SystemExit, match="needs root \\(test\\)"):
        vm.run_demo(argparse.Namespace(gib=0.1))


def test_a_checkout_under_tmp_is_bound_back_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    # The guest's /tmp is a tmpfs: a clone in the host's /tmp (where CI may put it) was
    # invisible there ("can't cd to /tmp/ci-full"), so job.sh binds it back from the host's.
    from aiozc.tools.vm.initramfs import HOST_TMP

    assert "mount -o bind /newroot/tmp /hosttmp" in INIT and f"/newroot{HOST_TMP}" in INIT
    monkeypatch.setattr(guest, "REPO", Path("/tmp/ci clone"))
    lines = guest._repo_in_place()
    assert f"mount -o bind '{HOST_TMP}/ci clone' '/tmp/ci clone'" in lines
    monkeypatch.setattr(guest, "REPO", Path("/work/main"))
    assert guest._repo_in_place() == ""
