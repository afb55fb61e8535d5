"""transport.sendfile's two ways out (aiozc/streamfile.py): os.sendfile, and one copy from a
mapping of the file for large files to a receiver on this host. Both must send exactly the
bytes asked for, in order with writes, and end the same way on short files and closes."""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

import aiozc
import aiozc.streamfile as streamfile
from aiozc.web import ZeroCopySite
from tcp_helpers import open_fd_count, raw_server

MiB = 1 << 20
SIZE = 10 * MiB + 123  # several mapping windows, a tail that is not page-aligned


@pytest.fixture(scope="module")
def data() -> bytes:
    return np.random.default_rng(11).integers(0, 256, SIZE, dtype=np.uint8).tobytes()


@pytest.fixture()
def data_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path


@pytest.fixture(params=["copy", "sendfile"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once per way out; small windows so that a file crosses many of them."""
    monkeypatch.setattr(streamfile, "COPY_TO_LOCAL_PEERS", request.param == "copy")
    monkeypatch.setattr(streamfile, "MAP_WINDOW", 1 * MiB)
    return str(request.param)


def copied(transport: Any) -> int:
    return int(transport.stats.extra.get("sendfile_copied_bytes", 0))


def sent_by_file(transport: Any) -> int:
    return int(transport.stats.extra.get("sendfile_bytes", 0))


async def read_all(port: int, delay: float = 0.0, rcvbuf: int | None = None) -> bytes:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    await asyncio.sleep(delay)
    got = await reader.read()
    writer.close()
    return got


async def test_offsets_counts_and_writes_in_order(way: str, data_file: Path, data: bytes) -> None:
    results: list[tuple[int, int]] = []

    async def run(transport: Any) -> None:
        transport.write(b"head")
        with open(data_file, "rb") as f:
            # Unaligned start, ends mid-window; then the rest to EOF (count None); then a
            # count past EOF (clipped); then a small one (below COPY_MIN_BYTES).
            for offset, count in ((4097, 5 * MiB + 1), (4097 + 5 * MiB + 1, None),
                                  (SIZE - 5 * MiB, 6 * MiB), (10, 1000)):
                before = copied(transport)
                n = await transport.sendfile(f, offset, count)
                results.append((n, copied(transport) - before))
                transport.write(b"|")
        transport.close()

    async with raw_server(run) as port:
        got = await read_all(port)
    rest = SIZE - (4097 + 5 * MiB + 1)
    assert [n for n, _ in results] == [5 * MiB + 1, rest, 5 * MiB, 1000]
    expect = (b"head" + data[4097 : 4097 + 5 * MiB + 1] + b"|" + data[4097 + 5 * MiB + 1 :] + b"|"
              + data[SIZE - 5 * MiB :] + b"|" + data[10:1010] + b"|")
    assert got == expect
    if way == "copy":
        assert [c for _, c in results] == [5 * MiB + 1, rest, 5 * MiB, 0]
    else:
        assert all(c == 0 for _, c in results)


async def test_small_receive_buffer_many_partial_sends(way: str, data_file: Path, data: bytes) -> None:
    """The peer reads late through a small buffer: many EAGAINs and partial sends."""
    sent: list[int] = []

    async def run(transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        with open(data_file, "rb") as f:
            sent.append(await transport.sendfile(f, 1, SIZE - 2))
        transport.close()

    async with raw_server(run) as port:
        got = await read_all(port, delay=0.1, rcvbuf=32 * 1024)
    assert sent == [SIZE - 2]
    assert got == data[1:-1]


@pytest.mark.parametrize("cut", [512 * 1024 + 5, 3 * MiB + 5])  # in the mapped window; past it
async def test_file_truncated_while_sending_reports_what_was_sent(
    way: str, data_file: Path, data: bytes, cut: int
) -> None:
    """The file shrinks under a pending sendfile: it ends early and says how much went out,
    no exception, only the file's bytes. os.sendfile stops at the new end; from a mapping,
    send() faults near the cut (EFAULT: in the kernel never SIGBUS) or the next window cannot
    be mapped."""
    result: list[int] = []

    async def run(transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        with open(data_file, "rb") as f:
            task = asyncio.ensure_future(transport.sendfile(f, 0, SIZE))
            await asyncio.sleep(0.05)  # the peer is not reading yet: this is pending
            assert not task.done()
            os.truncate(data_file, cut)
            result.append(await task)
        transport.write(b"tail")
        transport.close()

    async with raw_server(run) as port:
        got = await read_all(port, delay=0.2, rcvbuf=32 * 1024)
    n = result[0]
    page_end = -(-cut // mmap.PAGESIZE) * mmap.PAGESIZE
    # send() copies in page-fragment pieces, all or nothing: the piece that reaches past the
    # cut page faults whole, so the copy path may stop a little before the cut (seen: at the
    # page boundary below it).
    assert n == cut if way == "sendfile" else cut - 64 * 1024 <= n <= page_end
    assert len(got) == n + 4 and got[n:] == b"tail"
    assert got[: min(n, cut)] == data[: min(n, cut)]
    assert got[cut:n] == bytes(max(n - cut, 0))


async def test_peer_closes_mid_file(way: str, data_file: Path) -> None:
    """A reset mid-file fails the sendfile, closes its mapping and its fd."""
    errors: list[BaseException] = []
    fds_before = open_fd_count()

    async def run(transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        with open(data_file, "rb") as f:
            try:
                await transport.sendfile(f)
            except (ConnectionError, OSError) as exc:
                errors.append(exc)

    async with raw_server(run) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        await asyncio.sleep(0.05)
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
    assert len(errors) == 1
    await asyncio.sleep(0)
    assert open_fd_count() <= fds_before


async def test_abort_mid_file(way: str, data_file: Path) -> None:
    errors: list[BaseException] = []

    async def run(transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        with open(data_file, "rb") as f:
            task = asyncio.ensure_future(transport.sendfile(f))
            await asyncio.sleep(0.05)
            transport.abort()
            try:
                await task
            except ConnectionError as exc:
                errors.append(exc)

    async with raw_server(run) as port:
        got = await read_all(port, delay=0.2)
    assert len(errors) == 1
    assert len(got) < SIZE


async def test_unmappable_file_falls_back_to_sendfile(
    data_file: Path, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamfile, "COPY_TO_LOCAL_PEERS", True)

    def refuse(*args: Any, **kwargs: Any) -> mmap.mmap:
        raise OSError(19, "No such device")  # ENODEV: a file system without mmap

    monkeypatch.setattr(streamfile.mmap, "mmap", refuse)
    counts: list[tuple[int, int, int]] = []

    async def run(transport: Any) -> None:
        with open(data_file, "rb") as f:
            n = await transport.sendfile(f, 7)
        counts.append((n, copied(transport), sent_by_file(transport)))
        transport.close()

    async with raw_server(run) as port:
        got = await read_all(port)
    assert counts == [(SIZE - 7, 0, SIZE - 7)]
    assert got == data[7:]


class _FakeSock:
    def __init__(self, family: int, peer: Any, local: Any) -> None:
        self.family, self._peer, self._local = family, peer, local

    def getpeername(self) -> Any:
        if isinstance(self._peer, OSError):
            raise self._peer
        return self._peer

    def getsockname(self) -> Any:
        return self._local


@pytest.mark.parametrize(
    ("family", "peer", "local", "expected"),
    [
        (socket.AF_INET, ("127.0.0.1", 1), ("127.0.0.1", 2), True),
        (socket.AF_INET, ("127.3.4.5", 1), ("127.0.0.1", 2), True),
        (socket.AF_INET6, ("::1", 1, 0, 0), ("::1", 2, 0, 0), True),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 1, 0, 0), ("::ffff:127.0.0.1", 2, 0, 0), True),
        (socket.AF_INET, ("10.1.2.3", 1), ("10.1.2.3", 2), True),  # our own address
        (socket.AF_INET, ("10.1.2.4", 1), ("10.1.2.3", 2), False),
        (socket.AF_INET6, ("fe80::1%eth0", 1, 0, 2), ("fe80::2%eth0", 2, 0, 2), False),
        (socket.AF_UNIX, "", "", True),
        (socket.AF_INET, OSError(107, "not connected"), ("10.1.2.3", 2), False),
    ],
)
def test_peer_on_this_host(family: int, peer: Any, local: Any, expected: bool) -> None:
    assert streamfile._peer_on_this_host(_FakeSock(family, peer, local)) is expected  # type: ignore[arg-type]


async def test_file_response_large_and_ranged(way: str, data_file: Path, data: bytes) -> None:
    """aiohttp's FileResponse through ZeroCopySite: whole file and Range requests."""
    import aiohttp

    transports: list[Any] = []

    async def handler(request: web.Request) -> web.FileResponse:
        transports.append(request.transport)
        return web.FileResponse(data_file)

    app = web.Application()
    app.router.add_get("/f", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = ZeroCopySite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{site.port}/f"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                assert await resp.read() == data
            lo, hi = 4095, 4095 + 6 * MiB
            async with session.get(url, headers={"Range": f"bytes={lo}-{hi - 1}"}) as resp:
                assert resp.status == 206
                assert await resp.read() == data[lo:hi]
            async with session.get(url, headers={"Range": "bytes=-100"}) as resp:
                assert await resp.read() == data[-100:]
    finally:
        await runner.cleanup()
    total_copied = sum({id(t): copied(t) for t in transports}.values())
    assert total_copied == (SIZE + 6 * MiB if way == "copy" else 0)


def count_dups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors os.dup is asked to duplicate, from here on."""
    asked: list[int] = []
    real = os.dup

    def dup(fd: int) -> int:
        asked.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "dup", dup)
    return asked


async def test_a_file_the_socket_takes_whole_needs_no_dup(
    monkeypatch: pytest.MonkeyPatch, data_file: Path, data: bytes
) -> None:
    """Nothing queued and room in the socket (a FileResponse's usual case): one os.sendfile
    from the caller's descriptor, no queue entry, so no dup + close of the descriptor."""
    dups = count_dups(monkeypatch)
    fds: list[int] = []
    results: list[int] = []

    async def run(transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 * MiB)
        with open(data_file, "rb") as f:
            fds.append(f.fileno())
            for offset in (0, 70_000):
                results.append(await transport.sendfile(f, offset, 64 * 1024))
                transport.write(b"|")
            assert sent_by_file(transport) == 2 * 64 * 1024
        transport.close()

    async with raw_server(run) as port:
        got = await read_all(port, delay=0.05)
    assert results == [64 * 1024, 64 * 1024]
    assert got == data[: 64 * 1024] + b"|" + data[70_000 : 70_000 + 64 * 1024] + b"|"
    assert fds[0] not in dups


async def test_the_rest_of_a_partly_sent_file_is_queued_with_a_dup(
    monkeypatch: pytest.MonkeyPatch, data_file: Path, data: bytes
) -> None:
    """The socket takes part of the file at once: the rest waits in the queue, which must not
    depend on the caller's descriptor (the caller may close its file if it is cancelled), so
    that entry holds a dup; it is closed when the file is sent."""
    monkeypatch.setattr(streamfile, "COPY_TO_LOCAL_PEERS", False)
    dups = count_dups(monkeypatch)
    fds: list[int] = []
    sent: list[int] = []
    open_on_file: list[list[int]] = []

    def fds_on(path: Path) -> list[int]:
        found = []
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}") == str(path):
                    found.append(int(name))
        return found

    async def run(transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        with open(data_file, "rb") as f:
            fds.append(f.fileno())
            sent.append(await transport.sendfile(f, 5, 3 * MiB))
            open_on_file.append(fds_on(data_file))
        transport.close()

    async with raw_server(run) as port:
        got = await read_all(port, delay=0.1, rcvbuf=32 * 1024)
    assert sent == [3 * MiB]
    assert got == data[5 : 5 + 3 * MiB]
    assert dups == fds
    assert open_on_file == [fds]  # the dup is closed once the file is sent
