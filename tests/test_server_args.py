"""asyncio's create_connection / create_server / connect_accepted_socket arguments and errors,
and the accept loop's back-off when the process is out of file descriptors (both loops)."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import resource
import socket
from asyncio import base_events
from typing import Any

import pytest

import aiozc
from aiozc.connect import interleave_addrinfos
from aiozc.readiness import Multiplexer


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


@pytest.fixture
def listener() -> Any:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


# -- errors asyncio gives ----------------------------------------------------------------------


async def test_datagram_sock_is_refused_everywhere() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            await aiozc.create_connection(Recorder, sock=udp)
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            await aiozc.create_server(Recorder, sock=udp)
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            await aiozc.connect_accepted_socket(Recorder, udp)


async def test_neither_address_nor_sock() -> None:
    with pytest.raises(ValueError, match="host and port was not specified and no sock specified"):
        await aiozc.create_connection(Recorder)
    with pytest.raises(ValueError, match="Neither host/port nor sock were specified"):
        await aiozc.create_server(Recorder)


@pytest.mark.parametrize("name", ["ssl_handshake_timeout", "ssl_shutdown_timeout"])
async def test_ssl_timeouts_need_ssl(name: str, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(ValueError, match=f"{name} is only meaningful with ssl"):
        await aiozc.create_connection(Recorder, "127.0.0.1", port, **{name: 1.0})
    with pytest.raises(ValueError, match=f"{name} is only meaningful with ssl"):
        await aiozc.create_server(Recorder, "127.0.0.1", 0, **{name: 1.0})
    with pytest.raises(ValueError, match=f"{name} is only meaningful with ssl"):
        await aiozc.connect_accepted_socket(Recorder, socket.socket(), **{name: 1.0})


async def test_tls_argument_checks(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
        await aiozc.create_connection(Recorder, "127.0.0.1", port, server_hostname="x")
    with pytest.raises(ValueError, match="You must set server_hostname when using ssl without a"):
        await aiozc.create_connection(Recorder, sock=socket.socket(), ssl=True)
    with pytest.raises(TypeError, match="ssl argument must be an SSLContext or None"):
        await aiozc.create_server(Recorder, "127.0.0.1", 0, ssl=True)


async def test_bind_failure_message_is_asyncios(listener: socket.socket) -> None:
    address = listener.getsockname()
    expected = f"error while attempting to bind on address {address!r}: address already in use"
    with pytest.raises(OSError) as server_error:
        await aiozc.create_server(Recorder, *address, reuse_address=False)
    assert server_error.value.errno == errno.EADDRINUSE
    assert str(server_error.value).endswith(expected)
    # And what asyncio's own loop says, so the two can never drift apart.
    def on_stock_loop() -> None:
        stock = asyncio.SelectorEventLoop()
        try:
            stock.run_until_complete(stock.create_server(Recorder, *address, reuse_address=False))
        finally:
            stock.close()

    with pytest.raises(OSError) as stock_error:
        await asyncio.to_thread(on_stock_loop)
    assert str(server_error.value) == str(stock_error.value)
    with pytest.raises(OSError, match="error while attempting to bind on address") as client_error:
        await aiozc.create_connection(Recorder, *address, local_addr=address)
    assert client_error.value.errno == errno.EADDRINUSE


async def test_local_addr_family_proto_flags(listener: socket.socket) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    transport, _ = await aiozc.create_connection(
        Recorder, "127.0.0.1", listener.getsockname()[1], family=socket.AF_INET,
        proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST,
        local_addr=("127.0.0.1", local_port),
    )
    try:
        assert transport.get_extra_info("sockname") == ("127.0.0.1", local_port)
    finally:
        transport.close()
    with pytest.raises(socket.gaierror):
        await aiozc.create_connection(
            Recorder, "127.0.0.1", listener.getsockname()[1], family=socket.AF_INET6,
            flags=socket.AI_NUMERICHOST,
        )


async def test_create_server_family_flags_and_start_serving() -> None:
    server = await aiozc.create_server(
        Recorder, "127.0.0.1", 0, family=socket.AF_INET, flags=socket.AI_PASSIVE,
        start_serving=False,
    )
    try:
        assert not server.is_serving()
        assert all(s.family == socket.AF_INET for s in server.sockets)
        await server.start_serving()
        assert server.is_serving()
        transport, _ = await aiozc.create_connection(Recorder, *server.sockets[0].getsockname())
        transport.close()
    finally:
        server.close()
        await server.wait_closed()


# -- happy eyeballs ----------------------------------------------------------------------------


def _info(family: int, n: int) -> tuple[Any, ...]:
    return (family, socket.SOCK_STREAM, 6, "", (f"addr{n}", 0))


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("first_count", [1, 2, 3])
def test_interleave_matches_asyncio(seed: int, first_count: int) -> None:
    rng = random.Random(seed)
    families = [socket.AF_INET, socket.AF_INET6]
    infos = [_info(rng.choice(families), n) for n in range(rng.randrange(1, 9))]
    assert interleave_addrinfos(infos, first_count) == base_events._interleave_addrinfos(
        infos, first_count
    )


def _stalled_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
    stays pending (retransmitting) instead of failing."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(sock.getsockname())
        fillers.append(filler)
    return sock, fillers


async def _until_stalled(stalled: socket.socket) -> None:
    """Wait until a plain connect to ``stalled`` really hangs (the fillers' handshakes done)."""
    loop = asyncio.get_running_loop()
    while True:
        with socket.socket() as probe:
            probe.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(probe, stalled.getsockname()), 0.2)
            except asyncio.TimeoutError:
                return


async def test_happy_eyeballs_races_past_a_stalled_address(listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stalled, fillers = _stalled_listener()
    good = listener.getsockname()
    bad = stalled.getsockname()

    real_getaddrinfo = loop.getaddrinfo

    async def two_addresses(host: Any, port: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host != "example.test":  # uvloop's sock_connect resolves through it too
            return await real_getaddrinfo(host, port, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", bad),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", good),
        ]

    loop.getaddrinfo = two_addresses  # type: ignore[method-assign]
    try:
        await _until_stalled(stalled)
        transport, _ = await asyncio.wait_for(
            aiozc.create_connection(Recorder, "example.test", 1, happy_eyeballs_delay=0.05), 30
        )
        assert transport.get_extra_info("peername") == good
        transport.close()
        # Without happy eyeballs the first (stalled) address is tried alone.
        attempt = asyncio.ensure_future(aiozc.create_connection(Recorder, "example.test", 1))
        done, _ = await asyncio.wait([attempt], timeout=0.3)
        assert not done
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
    finally:
        del loop.getaddrinfo
        stalled.close()
        for filler in fillers:
            filler.close()


async def test_all_addresses_failing_gives_asyncios_error() -> None:
    loop = asyncio.get_running_loop()
    refused = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            refused.append(s.getsockname())

    real_getaddrinfo = loop.getaddrinfo

    async def two_addresses(host: Any, port: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host != "example.test":  # uvloop's sock_connect resolves through it too
            return await real_getaddrinfo(host, port, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in refused]

    loop.getaddrinfo = two_addresses  # type: ignore[method-assign]
    try:
        for delay in (None, 0.01):
            with pytest.raises(OSError, match="Multiple exceptions") as info:
                await aiozc.create_connection(
                    Recorder, "example.test", 1, happy_eyeballs_delay=delay
                )
            assert str(refused[0][1]) in str(info.value) and str(refused[1][1]) in str(info.value)
    finally:
        del loop.getaddrinfo


# -- out of file descriptors -------------------------------------------------------------------


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


async def test_accept_backs_off_when_out_of_fds() -> None:
    """With no fd left, accept() fails with EMFILE while the listener stays readable. The
    server must stop watching it, report once, retry after a delay, and accept everyone once
    fds are free again (issue 12: it used to retry every loop iteration)."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    accepted: list[asyncio.BaseTransport] = []

    class Count(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    server = await aiozc.create_server(Count, "127.0.0.1", 0, start_serving=False)
    server.accept_retry_delay = 0.02
    attempts = 0
    enough_retries = asyncio.Event()
    accept_ready = server._accept_ready

    def counting_accept_ready(listener: socket.socket) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 5:
            enough_retries.set()
        accept_ready(listener)

    server._accept_ready = counting_accept_ready  # type: ignore[method-assign]
    retries = 0
    retry_accept = server._retry_accept

    def counting_retry_accept(listener: socket.socket) -> None:
        nonlocal retries
        retries += 1
        retry_accept(listener)

    server._retry_accept = counting_retry_accept  # type: ignore[method-assign]
    Multiplexer.for_loop(loop)  # its epoll fd must exist before fds run out
    clients = [socket.socket() for _ in range(40)]  # their fds too
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        await server.start_serving()
        resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), hard))
        for client in clients:
            client.setblocking(False)
            client.connect_ex(server.sockets[0].getsockname())
        await asyncio.wait_for(enough_retries.wait(), 30)
        assert accepted == []
        # One readiness callback (one failed accept()) per retry, one report for all of them.
        assert retries <= attempts <= retries + 1 and retries >= 4
        assert len(reports) == 1, reports
        assert reports[0]["message"] == "socket.accept() out of system resource"
        assert reports[0]["exception"].errno == errno.EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # fds are free again: the next retry accepts all 40.
    while len(accepted) < 40:
        await asyncio.sleep(0.01)
    assert len(reports) == 1
    for transport in accepted:
        transport.close()
    for client in clients:
        client.close()
    server.close()
    await server.wait_closed()
    loop.set_exception_handler(None)
