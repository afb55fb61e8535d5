"""Behaviours the anchors' suites (docs/compat.md) found different from the stock transports,
pinned down here on both loops with our own tests."""

from __future__ import annotations

import asyncio
import socket
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop
from tcp_helpers import RecordingProtocol, connect_pair
from udp_helpers import closed_port

import aiozc

T = TypeVar("T")


async def test_write_after_close_is_sent_while_the_queue_still_drains() -> None:
    # asyncio's and uvloop's transports accept write() after close() until their buffer has
    # drained (asyncio's SSLProtocol relies on it: its resume_writing() at close flushes the
    # ciphertext it held back; uvloop's test_remote_shutdown_receives_trailing_data).
    pair = await connect_pair()
    payload = b"a" * (32 << 20)  # more than both socket buffers hold: the rest stays queued
    pair.transport.write(payload)
    assert pair.transport.get_write_buffer_size() > 0
    pair.transport.close()
    pair.transport.write(b"tail")
    received = await asyncio.wait_for(pair.read_until_eof(), 30)
    assert len(received) == len(payload) + 4 and received.endswith(b"tail")
    assert await asyncio.wait_for(pair.protocol.lost, 30) is None
    pair.peer.close()


async def test_write_after_close_with_nothing_queued_is_dropped() -> None:
    # ... and drop it, as both stock loops do, once close() found nothing left to send.
    pair = await connect_pair()
    pair.transport.close()
    pair.transport.write(b"late")
    assert await asyncio.wait_for(pair.read_until_eof(), 30) == b""
    await asyncio.wait_for(pair.protocol.lost, 30)
    pair.peer.close()


class TailOnResume(RecordingProtocol):
    """Writes a tail from resume_writing() during close, as asyncio's SSLProtocol does."""

    def resume_writing(self) -> None:
        super().resume_writing()
        assert self.transport is not None
        if self.transport.is_closing():
            self.transport.write(b"tail")


async def test_write_from_resume_writing_during_close_is_sent() -> None:
    pair = await connect_pair(TailOnResume)
    payload = bytes(32 << 20)  # bytes: may be held zero-copy, pinned until the peer reads
    pair.transport.write(payload)
    assert pair.protocol.events[-1] == "pause"
    pair.transport.close()
    received = await asyncio.wait_for(pair.read_until_eof(), 30)
    assert "resume" in pair.protocol.events
    assert len(received) == len(payload) + 4 and received.endswith(b"tail")
    await asyncio.wait_for(pair.protocol.lost, 30)
    pair.peer.close()


# -- datagram transports: what each base loop's own transport does ------------------------------


class _Boom(Exception):
    pass


async def _stock_and_aiozc_endpoints(
    protocol: Any = asyncio.DatagramProtocol, **kwargs: Any
) -> tuple[Any, Any]:
    """The running loop's own datagram transport and aiozc's, both bound on loopback."""
    loop = asyncio.get_running_loop()
    stock, _ = await loop.create_datagram_endpoint(protocol, local_addr=("127.0.0.1", 0), **kwargs)
    ours, _ = await aiozc.create_datagram_endpoint(protocol, local_addr=("127.0.0.1", 0), **kwargs)
    return stock, ours


async def test_datagram_transport_classes_follow_the_loops_own() -> None:
    # cpython test_events checks isinstance(transport, asyncio.Transport): asyncio's datagram
    # transport derives _SelectorTransport; uvloop's derives none of asyncio's classes.
    stock, ours = await _stock_and_aiozc_endpoints()
    try:
        for cls in (asyncio.Transport, asyncio.ReadTransport, asyncio.WriteTransport):
            assert isinstance(ours, cls) == isinstance(stock, cls), cls
        assert isinstance(ours, asyncio.DatagramTransport)
        assert isinstance(ours, aiozc.ZeroCopyDatagramTransport)
    finally:
        stock.close()
        ours.close()


async def test_sendto_address_checks_follow_the_loops_own() -> None:
    # uvloop's sendto() never resolves a name: ('localhost', port) or an IPv6 address on an
    # IPv4 socket is a ValueError before anything is sent. asyncio's hands it to the socket.
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    stock, ours = await _stock_and_aiozc_endpoints(family=socket.AF_INET)
    try:
        for addr in (("localhost", port), ("::1", port)):
            outcomes = []
            for transport in (stock, ours):
                try:
                    transport.sendto(b"aaaa", addr)
                    outcomes.append("sent")
                except ValueError as exc:
                    outcomes.append(str(exc).split(": ", 1)[1])
            assert outcomes[0] == outcomes[1], (addr, outcomes)
        ours.sendto(b"numeric", ("127.0.0.1", port))  # a numeric address goes out on both
        receiver.setblocking(False)
        loop = asyncio.get_running_loop()
        while await asyncio.wait_for(loop.sock_recv(receiver, 100), 10) != b"numeric":
            pass  # what asyncio's sendto sent to ('localhost', port)
    finally:
        receiver.close()
        stock.close()
        ours.close()


async def test_error_received_raising_inside_sendto_reaches_the_caller() -> None:
    # Both stock transports call error_received() synchronously from sendto() (here: EMSGSIZE
    # for a datagram over 65507 bytes), so what it raises comes out of sendto().
    class Raising(asyncio.DatagramProtocol):
        def error_received(self, exc: Exception) -> None:
            raise _Boom(str(exc))

    handled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: handled.append(ctx))
    stock, ours = await _stock_and_aiozc_endpoints(Raising)
    try:
        for transport in (stock, ours):
            with pytest.raises(_Boom):
                transport.sendto(bytes(70000), ("127.0.0.1", 9))
        assert handled == []
        # ... and the transport carries on.
        ours.sendto(b"x", ours.get_extra_info("sockname"))
        assert not ours.is_closing()
    finally:
        stock.close()
        ours.close()


class _RaisingReceiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.more = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        if len(self.received) == 1:
            raise _Boom("first")
        if not self.more.done():
            self.more.set_result(None)


async def test_datagram_received_raising_is_reported_once_and_the_endpoint_stays_open() -> None:
    # asyncio: the exception leaves _read_ready, its Handle calls the loop's exception handler;
    # uvloop: UDPTransport._error -> loop._handle_exception -> the handler. Neither closes.
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, ctx: handled.append(ctx))
    for create in (loop.create_datagram_endpoint, aiozc.create_datagram_endpoint):
        handled.clear()
        transport, protocol = await create(_RaisingReceiver, local_addr=("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sender.sendto(b"1", transport.get_extra_info("sockname"))
            while not handled:
                await asyncio.sleep(0.01)
            sender.sendto(b"2", transport.get_extra_info("sockname"))
            await asyncio.wait_for(protocol.more, 10)
            assert protocol.received == [b"1", b"2"]
            assert [type(ctx["exception"]) for ctx in handled] == [_Boom], create
            assert not transport.is_closing()
        finally:
            sender.close()
            transport.close()


async def test_error_received_raising_on_the_receive_path_goes_to_the_handler() -> None:
    # An ICMP error read from the socket, not from a sendto(): asyncio's loop calls its
    # exception handler (uvloop leaks it to sys.unraisablehook from a noexcept libuv callback;
    # aiozc calls the handler on both bases) and the endpoint stays open.
    class Raising(asyncio.DatagramProtocol):
        def error_received(self, exc: Exception) -> None:
            raise _Boom(str(exc))

    handled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: handled.append(ctx))
    transport, _ = await aiozc.create_datagram_endpoint(Raising, remote_addr=closed_port())
    try:
        transport.sendto(b"x")  # the ICMP port unreachable arrives after sendto() returned
        while not handled:
            await asyncio.sleep(0.01)
        assert isinstance(handled[0]["exception"], _Boom)
        assert not transport.is_closing()
    finally:
        transport.close()


# -- the aiozc loop: arguments and fds as the base loop treats them ----------------------------


def _on_stock_and_aiozc(base: str, main: Callable[[], Coroutine[Any, Any, T]]) -> tuple[T, T]:
    stock = asyncio.SelectorEventLoop() if base == "asyncio" else uvloop.new_event_loop()
    results = []
    for loop in (stock, aiozc.new_event_loop(base=base)):
        try:
            results.append(loop.run_until_complete(main()))
        finally:
            loop.close()
    return results[0], results[1]


@pytest.mark.parametrize("base", ["asyncio", "uvloop"])
def test_datagram_reuse_address_as_the_base_loop(base: str) -> None:
    # uvloop still takes reuse_address (ValueError for True, DeprecationWarning otherwise);
    # asyncio 3.11 removed it (TypeError).
    async def outcome(reuse: bool) -> str:
        loop = asyncio.get_running_loop()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_address=reuse
                )
            except (TypeError, ValueError) as exc:
                return type(exc).__name__
        transport.close()
        return ",".join(sorted({w.category.__name__ for w in seen})) or "accepted"

    for reuse in (True, False):
        stock, ours = _on_stock_and_aiozc(base, lambda: outcome(reuse))
        assert ours == stock, (reuse, stock, ours)
    assert stock == ("TypeError" if base == "asyncio" else "DeprecationWarning")


@pytest.mark.parametrize("base", ["asyncio", "uvloop"])
def test_add_reader_on_a_transports_fd_is_refused_as_by_the_base_loop(base: str) -> None:
    # The base loop refuses add/remove_reader/writer on its own transports' fds; aiozc's
    # sockets live in aiozc's private epoll, so the aiozc loop must check them itself.
    async def refusals(kind: str) -> list[str]:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        if kind == "tcp":
            transport, _ = await loop.create_connection(
                asyncio.Protocol, *listener.getsockname()
            )
        else:
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
        fd = transport.get_extra_info("socket").fileno()
        calls = {
            "add_reader": lambda: loop.add_reader(fd, lambda: None),
            "remove_reader": lambda: loop.remove_reader(fd),
            "add_writer": lambda: loop.add_writer(fd, lambda: None),
            "remove_writer": lambda: loop.remove_writer(fd),
        }
        out = []
        for name, call in calls.items():
            try:
                call()
                out.append(f"{name}: allowed")
            except RuntimeError as exc:
                assert f"File descriptor {fd} is used by transport" in str(exc)
                out.append(f"{name}: refused")
        sock = socket.socket(fileno=fd)  # the same fd, detached (not closed) below
        try:
            # The stock loops refuse before waiting: the task is done after one iteration.
            task = asyncio.ensure_future(loop.sock_recv(sock, 1))
            await asyncio.sleep(0)
            if not task.done():
                out.append("sock_recv: waited")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif isinstance(task.exception(), RuntimeError):
                assert "is used by transport" in str(task.exception())
                out.append("sock_recv: refused")
            else:
                out.append(f"sock_recv: {task.exception()!r}")
        finally:
            sock.detach()
        transport.close()
        listener.close()
        await asyncio.sleep(0.05)
        return out

    for kind in ("tcp", "udp"):
        stock, ours = _on_stock_and_aiozc(base, lambda: refusals(kind))
        assert ours == stock, kind
        assert all(entry.endswith("refused") for entry in stock)


@pytest.mark.parametrize("base", ["asyncio", "uvloop"])
def test_datagram_received_raising_systemexit_leaves_run_until_complete(base: str) -> None:
    class Exiting(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            raise SystemExit(3)

    async def main(create: Callable[..., Any]) -> None:
        transport, _ = await create(Exiting, local_addr=("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sender.sendto(b"1", transport.get_extra_info("sockname"))
            await asyncio.sleep(10)  # SystemExit ends the loop's run before this does
        finally:
            sender.close()
            transport.close()

    for ours in (False, True):
        loop = asyncio.SelectorEventLoop() if base == "asyncio" else uvloop.new_event_loop()
        create = aiozc.create_datagram_endpoint if ours else loop.create_datagram_endpoint
        task = loop.create_task(main(create))
        try:
            with pytest.raises(SystemExit):
                loop.run_until_complete(task)
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        finally:
            loop.close()
