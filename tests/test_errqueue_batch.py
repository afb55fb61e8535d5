"""The error-queue batch read the drains share (compiled: aiozc/_sys/_core_errqueue.c, called by
the TCP transport's and the datagram path's drains; pure: kernel.read_errqueue), at the ends of
a batch nothing else on loopback reaches, on both transports, compiled or not.

A truncated message (MSG_CTRUNC). A transmit timestamp (SO_TIMESTAMPING) is queued on the error
queue with an SCM_TIMESTAMPING control message ahead of its IP_RECVERR one; the readers' control
buffer holds one extended error and its address (kernel._CMSG_SPACE), so the kernel truncates
the message. That is what a lost zero-copy notification looks like too (a write that would never
resolve): the transport fails with ErrQueueTruncated (EMSGSIZE).

A failed recvmsg (not EAGAIN): raised from the drain. The kernel's error-queue read fails only
with EAGAIN on a socket, so the test puts a pipe behind the transport's descriptor (ENOTSOCK).

An empty queue: one read in the transport's errqueue_reads.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from aiozc._sys import kernel as _kernel
from aiozc.datagram import create_datagram_endpoint
from tcp_helpers import connect_pair

SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)  # <asm-generic/socket.h>
# <linux/net_tstamp.h>: a software timestamp of every send, reported without the payload
TIMESTAMP_SENDS = (1 << 1) | (1 << 4) | (1 << 11)  # TX_SOFTWARE | SOFTWARE | OPT_TSONLY
BIG = 50000  # above the UDP zero-copy threshold: sendto_zc's compiled path sends it


def timestamp_sends(transport: asyncio.BaseTransport) -> None:
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TIMESTAMP_SENDS)


def assert_truncated(exc: BaseException | None) -> None:
    assert isinstance(exc, _kernel.ErrQueueTruncated), exc
    assert exc.errno == errno.EMSGSIZE


async def test_a_truncated_message_fails_the_tcp_transport() -> None:
    pair = await connect_pair()
    try:
        timestamp_sends(pair.transport)
        future = pair.transport.write_zc(bytearray(64 << 10))
        assert_truncated(await asyncio.wait_for(pair.protocol.lost, 5))
        assert pair.transport.is_closing()
        with pytest.raises(OSError):
            await asyncio.wait_for(future, 5)  # its notification was never read: failed
        assert pair.transport.stats.notifications == 0
    finally:
        pair.close()


class _Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.errors: list[OSError] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def error_received(self, exc: OSError) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


@pytest.mark.parametrize("engine", ["msg_zerocopy", "auto"])
async def test_a_truncated_message_fails_the_datagram_transport(engine: str) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        transport, protocol = await create_datagram_endpoint(
            _Recorder, remote_addr=sink.getsockname(), engine=engine
        )
        timestamp_sends(transport)
        futures: list[Any] = [transport.sendto_zc(bytes(BIG)) for _ in range(2)]
        assert_truncated(await asyncio.wait_for(protocol.lost, 5))
        assert protocol.errors == []  # not a socket error: the transport's own failure
        assert transport.is_closing()
        # None left pending: failed with the transport, or resolved first (io_uring's
        # completions come from the ring, not from the error queue)
        _, pending = await asyncio.wait(futures, timeout=5)
        assert not pending
    finally:
        sink.close()



async def _tcp() -> tuple[Any, Callable[[], None]]:
    pair = await connect_pair()
    return pair.transport, pair.close


async def _udp() -> tuple[Any, Callable[[], None]]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    transport, _ = await create_datagram_endpoint(_Recorder, remote_addr=sink.getsockname(), engine="msg_zerocopy")

    def close() -> None:
        transport.abort()
        sink.close()

    return transport, close


OPEN = {"tcp": _tcp, "udp": _udp}


@pytest.mark.parametrize("kind", ["tcp", "udp"])
async def test_an_empty_queue_is_one_read(kind: str) -> None:
    transport, close = await OPEN[kind]()
    try:
        before = transport.stats.errqueue_reads
        assert transport._drain_errqueue() == 0
        assert transport.stats.errqueue_reads == before + 1
        assert not transport.is_closing()
    finally:
        close()


@pytest.mark.parametrize("kind", ["tcp", "udp"])
async def test_a_failed_read_is_raised(kind: str) -> None:
    transport, close = await OPEN[kind]()
    fd = transport.get_extra_info("socket").fileno()
    saved = os.dup(fd)  # keeps the socket (and the loop's registration of it) alive
    r, w = os.pipe()
    try:
        os.dup2(r, fd)
        with pytest.raises(OSError) as failed:
            transport._drain_errqueue()
        assert failed.value.errno == errno.ENOTSOCK
    finally:
        os.dup2(saved, fd)  # the socket again, before the loop sees the descriptor
        for extra in (saved, r, w):
            os.close(extra)
        close()
