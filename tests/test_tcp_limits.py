"""TCP encapsulation under attack (issue 14 item 3), on loopback against the real TcpService with
a fake gateway: keepalives do not keep unauthenticated connections alive, frame size and
partial-frame memory are bounded, the descriptor reserve refuses connections, the limits follow
the (reloadable) config."""
from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace

import pytest

from ikev2.sa_common import State
from tests.test_tcp_framing import (
    IKE_MSG,
    FakeGateway,
    _closed,
    _run,
    _until,
    running_service,
)
from vpn_gw.transport import tcp as T

KEEPALIVE_FRAME = T.frame(T.NAT_KEEPALIVE)


def test_deframer_refuses_frames_over_max_frame_as_soon_as_the_length_is_read():
    d = T.Deframer(expect_prefix=False, max_frame=1024)
    assert d.feed(T.frame(b"\x01" * 1022)) == [b"\x01" * 1022]  # exactly 1024 with the Length
    with pytest.raises(T.FrameTooLarge):
        d.feed(struct.pack("!H", 1025))  # no payload needed to know
    d2 = T.Deframer(expect_prefix=False, max_frame=1024)
    d2.max_frame = T.MAX_FRAME  # raised once the connection is authenticated
    assert d2.feed(T.frame(b"\x02" * 5000)) == [b"\x02" * 5000]


def test_keepalives_and_esp_do_not_refresh_an_unauthenticated_connection():
    async def main():
        now = [1000.0]
        async with running_service({"tcp_idle_timeout": 30.0}, clock=lambda: now[0]) as (svc, gw, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(T.PREFIX + T.ike_frame(IKE_MSG))
            await w.drain()
            await _until(lambda: len(svc.conns) == 1 and gw.manager.received)
            for step in range(3):  # keepalives and ESP every 10 s: the IKE frame is 30+ s old at the end
                now[0] += 10.5
                w.write(KEEPALIVE_FRAME + T.esp_frame(b"\x00\x00\x12\x34\x00\x00\x00\x01xx"))
                await w.drain()
                await _until(lambda s=step: svc.stats["keepalive_in"] == s + 1)
                svc.sweep()
            assert await _closed(r)
            assert svc.stats["closed_idle"] == 1
            # With an established IKE SA on the path the same connection would have stayed.
            _r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(T.PREFIX + T.ike_frame(IKE_MSG))
            await w2.drain()
            await _until(lambda: len(svc.conns) == 1)
            (c,) = svc.conns.values()
            gw.manager.sas = [SimpleNamespace(local=c.local, remote=c.remote, state=State.ESTABLISHED)]
            now[0] += 100.0
            svc.sweep()
            assert c.authenticated and c.deframer.max_frame == T.MAX_FRAME and not c.closed
    _run(main())


def test_large_frame_before_authentication_closes_the_connection():
    async def main():
        async with running_service({"tcp_max_unauth_frame": 2048}) as (svc, gw, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(T.PREFIX + struct.pack("!H", 2049))
            await w.drain()
            assert await _closed(r)
            assert svc.stats["frame_too_large"] == 1 and svc.buffered_total == 0
    _run(main())


def test_partial_frames_are_bounded_in_total():
    async def main():
        async with running_service({"tcp_max_buffered": 64 * 1024}) as (svc, gw, port):
            partial = T.PREFIX + struct.pack("!H", 16001) + b"\x00" * 15000  # 15,002 octets held
            streams = []
            for _ in range(6):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(partial)
                await w.drain()
                streams.append((r, w))
            await _until(lambda: svc.stats["closed_buffer_limit"] >= 2)
            await _until(lambda: len(svc.conns) == 4)
            assert svc.buffered_total == 4 * 15002 <= gw.config.tcp_max_buffered
            assert svc.counters()["buffered_bytes"] == svc.buffered_total
            for _r, w in streams:
                w.close()
            await _until(lambda: not svc.conns)
            assert svc.buffered_total == 0
    _run(main())


def test_descriptor_reserve_refuses_connections():
    async def main():
        async with running_service() as (svc, gw, port):
            svc.fd_limit = 0  # every descriptor is "in the reserve"
            try:  # reset at once: the connect itself may already see it
                r, _w = await asyncio.open_connection("127.0.0.1", port)
                assert await _closed(r)
            except ConnectionResetError:
                pass
            await _until(lambda: svc.stats["refused_fd_reserve"] == 1)
            assert svc.stats["accepted"] == 0 and not svc.conns and not svc._pending
    _run(main())


def test_per_source_and_total_limits_follow_the_config():
    async def main():
        async with running_service({"tcp_max_per_source": 2}) as (svc, gw, port):
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            assert await _closed(conns[2][0])
            await _until(lambda: svc.stats["refused_limit"] == 1)
            gw.config.tcp_max_per_source = 10  # `vpn-gw reload`
            gw.config.tcp_max_connections = 3
            more = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            assert await _closed(more[1][0])
            await _until(lambda: svc.stats["refused_limit"] == 2)
            assert svc.counters()["accepted_open"] == 3 and svc.stats["accepted"] == 3
    _run(main())


def test_accept_errors_are_counted_and_logged_once_per_interval():
    import errno
    import socket

    from structlog.testing import capture_logs

    class FailingSocket:  # a listening socket out of descriptors
        def __init__(self):
            self.real = socket.socket()

        def fileno(self):
            return self.real.fileno()

        def accept(self):
            raise OSError(errno.EMFILE, "Too many open files")

        def close(self):
            self.real.close()

    async def main():
        gw = FakeGateway(0)
        svc = T.TcpService(gw)
        listener = T.Listener(svc, FailingSocket())  # type: ignore[arg-type]
        listener.start(asyncio.get_running_loop())
        with capture_logs() as logs:
            for _ in range(50):
                listener._ready()
                listener._resume()
        listener.close()
        assert svc.stats["accept_errors"] == 50
        lines = [e for e in logs if "accept" in e["event"]]
        assert len(lines) == 1 and lines[0]["error"] == "EMFILE" and "exc_info" not in lines[0], lines
    _run(main())
