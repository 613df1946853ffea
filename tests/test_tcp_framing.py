"""RFC 9329 framing (vpn_gw.transport.tcp): encode/decode, partial reads, strictness, IKE/ESP
demultiplexing, and the TCP service on loopback against a fake gateway (no namespaces)."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from ikev2.constants import NON_ESP_MARKER
from ikev2.sa_common import State
from vpn_gw import probe as pr
from vpn_gw.transport import tcp as T

IKE_MSG = bytes(range(28)) + b"payload"           # shaped like an IKE message (28-octet header)
ESP_PKT = b"\x00\x00\x12\x34" + b"\x00\x00\x00\x01" + b"ciphertext"


# --------------------------------------------------------------------------------- encode


def test_frame_length_counts_itself():
    assert T.frame(b"\xff") == b"\x00\x03\xff"
    assert T.ike_frame(IKE_MSG) == struct.pack("!H", 2 + 4 + len(IKE_MSG)) + NON_ESP_MARKER + IKE_MSG
    assert T.esp_frame(ESP_PKT) == struct.pack("!H", 2 + len(ESP_PKT)) + ESP_PKT


def test_frame_limits():
    big = bytes(T.MAX_PAYLOAD)
    assert T.frame(big)[:2] == b"\xff\xff"
    with pytest.raises(ValueError):
        T.frame(big + b"x")
    with pytest.raises(ValueError):
        T.frame(b"")
    with pytest.raises(ValueError):
        T.ike_frame(bytes(T.MAX_PAYLOAD - 3))  # the marker does not fit any more


# --------------------------------------------------------------------------------- decode


def _stream() -> tuple[bytes, list[bytes]]:
    payloads = [NON_ESP_MARKER + IKE_MSG, ESP_PKT, b"\xff", bytes(1000), NON_ESP_MARKER + IKE_MSG * 3]
    return T.PREFIX + b"".join(T.frame(p) for p in payloads), payloads


def test_deframer_whole_stream():
    data, payloads = _stream()
    d = T.Deframer(expect_prefix=True)
    assert d.feed(data) == payloads
    assert d.buffered == 0 and d.prefix_done


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 1001])
def test_deframer_partial_reads(chunk):
    data, payloads = _stream()
    d = T.Deframer(expect_prefix=True)
    got = []
    for i in range(0, len(data), chunk):
        got += d.feed(data[i:i + chunk])
    assert got == payloads and d.buffered == 0


def test_deframer_every_split_point():
    data, payloads = _stream()
    for cut in range(len(data) + 1):
        d = T.Deframer(expect_prefix=True)
        assert d.feed(data[:cut]) + d.feed(data[cut:]) == payloads, cut


def test_deframer_holds_an_incomplete_frame():
    d = T.Deframer(expect_prefix=False)
    fr = T.esp_frame(ESP_PKT)
    assert d.feed(fr[:-1]) == [] and d.buffered == len(fr) - 1
    assert d.feed(fr[-1:]) == [ESP_PKT]


def test_deframer_largest_frame():
    d = T.Deframer(expect_prefix=False)
    big = bytes([7]) * T.MAX_PAYLOAD
    assert d.feed(T.frame(big) + T.frame(b"\xff")) == [big, b"\xff"]


def test_originator_side_reads_no_prefix():
    d = T.Deframer(expect_prefix=False)
    assert d.feed(T.frame(ESP_PKT)) == [ESP_PKT]
    d = T.Deframer(expect_prefix=False)
    with pytest.raises(T.FramingError):
        d.feed(b"\x00\x01")


@pytest.mark.parametrize("bad", [b"X", b"IKETCX", b"iketcp", b"GET / HTTP/1.1\r\n", b"\x00\x00\x00\x00IKETCP",
                                 b"SSH-2.0-OpenSSH"])
def test_bad_prefix(bad):
    d = T.Deframer(expect_prefix=True)
    with pytest.raises(T.FramingError, match="prefix"):
        d.feed(bad)


def test_bad_prefix_detected_on_the_first_wrong_octet():
    d = T.Deframer(expect_prefix=True)
    assert d.feed(b"IKE") == []
    with pytest.raises(T.FramingError):
        d.feed(b"x")


@pytest.mark.parametrize("length", [0, 1, 2])
def test_bad_length(length):
    d = T.Deframer(expect_prefix=True)
    with pytest.raises(T.FramingError, match="length"):
        d.feed(T.PREFIX + struct.pack("!H", length) + b"\x00" * 8)


def test_bad_length_after_good_frames():
    d = T.Deframer(expect_prefix=False)
    assert d.feed(T.frame(ESP_PKT)) == [ESP_PKT]
    with pytest.raises(T.FramingError):
        d.feed(b"\x00\x02")


# --------------------------------------------------------------------------------- demux


def test_classify():
    assert T.classify(NON_ESP_MARKER + IKE_MSG) == (T.IKE, IKE_MSG)
    assert T.classify(ESP_PKT) == (T.ESP, ESP_PKT)
    assert T.classify(b"\xff") == (T.KEEPALIVE, b"")
    for runt in (b"\x01", b"\x00\x00\x00", b"\x00\x00\x00\x00", NON_ESP_MARKER + IKE_MSG[:27], b"\x01\x02\x03\x04\x05"):
        assert T.classify(runt)[0] == T.RUNT, runt


# --------------------------------------------------------------------------------- service on loopback


class FakeManager:
    def __init__(self):
        self.received: list[tuple[bytes, tuple, tuple]] = []
        self.sas: list = []

    def receive(self, data, local, remote, now):
        self.received.append((data, local, remote))


class FakeDataplane:
    def __init__(self):
        self.esp: list[tuple[bytes, tuple, tuple]] = []

    def esp_received(self, data, local, remote):
        self.esp.append((data, local, remote))


class FakeGateway:
    def __init__(self, port: int):
        self.config = SimpleNamespace(tcp_port=port, listen=[__import__("ipaddress").ip_address("127.0.0.1")],
                                      ike_port=500, natt_port=4500)
        self.manager = FakeManager()
        self.dataplane = FakeDataplane()
        self.flushes = 0

    def flush(self):
        self.flushes += 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running_service(config: dict | None = None, **service_kwargs) -> AsyncIterator[tuple]:
    """A started TcpService on a free loopback port behind a FakeGateway (``config`` sets
    attributes of its config first); yields (service, gateway, port), closed on exit."""
    gw = FakeGateway(_free_port())
    for key, value in (config or {}).items():
        setattr(gw.config, key, value)
    svc = T.TcpService(gw, **service_kwargs)
    await svc.start()
    try:
        yield svc, gw, gw.config.tcp_port
    finally:
        await svc.close()


async def _until(pred, timeout=3.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def _closed(reader: asyncio.StreamReader, timeout=3.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionError:
        return True


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_service_demultiplexes_and_answers():
    async def main():
        async with running_service() as (svc, gw, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            me = writer.get_extra_info("sockname")[:2]
            # prefix and frames in awkward pieces
            data = T.PREFIX + T.ike_frame(IKE_MSG) + T.esp_frame(ESP_PKT) + T.frame(b"\xff")
            for i in range(0, len(data), 5):
                writer.write(data[i:i + 5])
                await writer.drain()
                await asyncio.sleep(0)
            await _until(lambda: gw.manager.received and gw.dataplane.esp)
            local = ("127.0.0.1", port)
            remote = (me[0], me[1])
            assert gw.manager.received == [(IKE_MSG, local, remote)]
            assert gw.dataplane.esp == [(ESP_PKT, local, remote)]
            assert gw.flushes >= 1
            assert svc.is_tcp(local, remote) and svc.transport_of(local, remote) == "tcp"
            assert not svc.is_tcp(local, (me[0], 4500))
            # the daemon's sends on that path go into the connection, framed; keepalives never
            assert svc.send_ike(b"response", local, remote)
            assert svc.send_esp(b"\xff", local, remote)
            assert svc.send_esp(ESP_PKT, local, remote)
            got = await asyncio.wait_for(reader.readexactly(2 + 4 + 8 + 2 + len(ESP_PKT)), 3)
            d = T.Deframer(expect_prefix=False)
            assert d.feed(got) == [NON_ESP_MARKER + b"response", ESP_PKT]
            # a UDP path is not ours
            assert not svc.send_ike(b"x", ("127.0.0.1", 4500), remote)
            c = svc.counters()
            assert c["ike_in"] == 1 and c["esp_in"] == 1 and c["keepalive_in"] == 1 and c["open"] == 1
            writer.close()
            await _until(lambda: not svc.conns)
            # closed, but IKE SAs may still use the path: sends are dropped, never sent in UDP
            assert svc.send_ike(b"late", local, remote)
            assert svc.counters()["dropped_no_connection"] == 1
            svc.sweep()  # no IKE SA uses it: forgotten
            assert not svc.is_tcp(local, remote)
    _run(main())


@pytest.mark.parametrize("garbage,counter", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_prefix"),
    (T.PREFIX + b"\x00\x00", "bad_frame"),
    (T.PREFIX + b"\x00\x02", "bad_frame"),
    (T.PREFIX + T.frame(ESP_PKT) + b"\x00\x01", "bad_frame"),
])
def test_service_closes_on_bad_framing(garbage, counter):
    async def main():
        async with running_service() as (svc, gw, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage)
            await writer.drain()
            assert await _closed(reader)
            await _until(lambda: svc.stats[counter] == 1)
            assert gw.manager.received == []
            await _until(lambda: not svc.conns and not svc._pending and not svc._per_source)
    _run(main())


def test_service_closes_after_too_many_runts_and_drops_probes():
    async def main():
        async with running_service() as (svc, gw, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            probe_msg = pr.build_request(bytes(16), 1)
            writer.write(T.PREFIX + T.ike_frame(probe_msg) + T.frame(b"\x01\x02") * (T.MAX_GARBAGE + 1))
            await writer.drain()
            assert await _closed(reader)
            await _until(lambda: svc.stats["runt"] == T.MAX_GARBAGE + 1)
            assert svc.stats["probe_dropped"] == 1 and gw.manager.received == []
    _run(main())


def test_service_timeouts_with_injected_clock():
    async def main():
        now = [1000.0]
        async with running_service(clock=lambda: now[0], idle_timeout=30.0, prefix_timeout=10.0) as (svc, gw, port):
            silent_r, _silent_w = await asyncio.open_connection("127.0.0.1", port)
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
            used_r, used_w = await asyncio.open_connection("127.0.0.1", port)
            for w in (idle_w, used_w):
                w.write(T.PREFIX + T.ike_frame(IKE_MSG))
                await w.drain()
            await _until(lambda: len(svc.conns) == 2 and len(svc._pending) == 1)
            used = next(c for c in svc.conns.values() if c.remote[1] == used_w.get_extra_info("sockname")[1])
            gw.manager.sas = [SimpleNamespace(local=used.local, remote=used.remote, state=State.ESTABLISHED)]
            now[0] += 9.0
            svc.sweep()
            assert len(svc._pending) == 1 and len(svc.conns) == 2
            now[0] += 2.0  # 11 s: the silent one never sent the prefix
            svc.sweep()
            assert await _closed(silent_r)
            assert svc.stats["prefix_timeout"] == 1
            now[0] += 20.0  # 31 s without a frame: the one without an IKE SA goes, the used one stays
            svc.sweep()
            assert await _closed(idle_r)
            await _until(lambda: len(svc.conns) == 1)
            assert used.path in svc.conns and svc.stats["closed_idle"] == 1
    _run(main())


def test_service_refuses_over_the_per_source_limit(monkeypatch):
    monkeypatch.setattr(T, "MAX_PER_SOURCE", 2)

    async def main():
        async with running_service() as (svc, gw, port):
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            assert await _closed(conns[2][0])
            await _until(lambda: svc.stats["refused_limit"] == 1)
            assert svc.stats["accepted"] == 2
    _run(main())


def test_listener_off_with_port_zero():
    async def main():
        gw = FakeGateway(0)
        svc = T.TcpService(gw)
        await svc.start()
        assert svc.servers == [] and svc.counters()["listening"] == 0
        assert not svc.send_ike(b"x", ("127.0.0.1", 4500), ("127.0.0.2", 4500))
        await svc.close()
    _run(main())


def test_no_listener_with_the_kernel_data_plane():
    async def main():
        gw = FakeGateway(_free_port())
        gw.config.dataplane = "xfrm"  # the kernel cannot put ESP into our TCP stream
        svc = T.TcpService(gw)
        await svc.start()
        assert svc.servers == []
        await svc.close()
    _run(main())
