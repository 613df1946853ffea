"""ESP datagrams in runs (one socket wake-up): UdpService groups ESP datagrams of one SPI from one
source that arrive in a row, the userspace plane's ``esp_received_many`` decrypts a run in one
compiled call (esp.packet.decapsulate_many). Both must do exactly what one call per datagram
does: the same packets delivered in the same order, the same counters and drops, address
adoption still decided per packet."""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import types

from esp import Direction, EspCipher, EspSA, compiled
from esp.packet import encapsulate
from ikev2.constants import NON_ESP_MARKER
from vpn_gw.accel import recv_runs
from vpn_gw.dataplane import RecordingDataPlane
from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane, _Child, _Selector
from vpn_gw.transport.udp_service import DatagramSinks, UdpService

KEY = bytes(range(36))
LOCAL, REMOTE = ("192.0.2.1", 4500), ("198.51.100.1", 4500)


class RecordingTun:
    name, fd, route_based = "vpngw0", 99, False

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, p: bytes) -> None:
        self.written.append(p)

    def write_many(self, pkts: list[bytes]) -> None:
        self.written.extend(pkts)


class _Ts:
    def __init__(self, net: str) -> None:
        n = ipaddress.ip_network(net)
        self.start_addr, self.end_addr = n[0], n[-1]
        self.ip_protocol, self.start_port, self.end_port = 0, 0, 65535


def _plane() -> tuple[UserspaceDataPlane, _Child, RecordingTun, list]:
    plane = UserspaceDataPlane(lambda *a: None, lambda c: None, keepalive_interval=0, clock=lambda: 5.0)
    moved: list = []
    plane.on_peer_moved = lambda ike_id, local, remote: moved.append((local, remote))
    tun = RecordingTun()
    sa_in = EspSA(Direction.IN, 0x1234, EspCipher(20, 256, None, KEY), replay_window=64)
    sa_out = EspSA(Direction.OUT, 0x99, EspCipher(20, 256, None, bytes(36)))
    child = _Child("c", 1, (0x1234).to_bytes(4, "big"), b"\0\0\0\x99", sa_in, sa_out, LOCAL, REMOTE,
                   [_Selector.from_ts(_Ts("10.2.0.0/24"))], [_Selector.from_ts(_Ts("10.1.0.0/24"))],
                   tun, 1438)  # type: ignore[arg-type]
    plane.by_spi_in[child.spi_in] = child
    return plane, child, tun, moved


def _ipv4(src: str, dst: str, n: int) -> bytes:
    p = bytearray(20 + n)
    p[0], p[9] = 0x45, 17
    struct.pack_into("!H", p, 2, 20 + n)
    p[12:16], p[16:20] = socket.inet_aton(src), socket.inet_aton(dst)
    return bytes(p)


def _ipv6(n: int) -> bytes:
    p = bytearray(40 + n)
    p[0], p[6] = 0x60, 17
    struct.pack_into("!H", p, 4, n)
    return bytes(p)


def _stream() -> list[bytes]:
    """A run as a peer (and an attacker) could send it: good packets, a replay, a forged one, a
    packet outside the SA's selectors, an IPv6 packet (not in them either), more good ones."""
    out = EspSA(Direction.OUT, 0x1234, EspCipher(20, 256, None, KEY))
    good = [encapsulate(out, _ipv4("10.1.0.2", "10.2.0.2", 40 + i), 4) for i in range(5)]
    outside = encapsulate(out, _ipv4("10.7.0.2", "10.2.0.2", 30), 4)
    v6 = encapsulate(out, _ipv6(30), 41)
    forged = bytearray(encapsulate(out, _ipv4("10.1.0.2", "10.2.0.2", 10), 4))
    forged[-1] ^= 1
    late = [encapsulate(out, _ipv4("10.1.0.2", "10.2.0.2", 60 + i), 4) for i in range(3)]
    return good[:3] + [good[1], bytes(forged), outside, v6] + good[3:] + late


def test_a_run_is_what_one_call_per_datagram_gives():
    assert compiled.Aead is not None, compiled.describe()  # the setup builds it (else: per packet, the same)
    results = []
    for many in (False, True):
        plane, child, tun, moved = _plane()
        plane.rx_batch_begin()
        if many:
            plane.esp_received_many(_stream(), LOCAL, REMOTE)
        else:
            for d in _stream():
                plane.esp_received(d, LOCAL, REMOTE)
        plane.rx_batch_end()
        st = child.sa_in.stats
        results.append((tun.written, st.packets, st.bytes, dict(st.drops), dict(child.drops), child.last_rx,
                        child.sa_in.replay.top, moved))
    assert results[0] == results[1]
    written, packets, _b, sa_drops, drops, last_rx, top, moved = results[1]
    assert len(written) == 8 and packets == 10 and last_rx == 5.0 and top == 11 and not moved
    assert {r.value: n for r, n in sa_drops.items()} == {"replay": 1, "auth_failed": 1}
    assert drops == {"policy_mismatch": 2}


def test_a_run_from_a_new_address_is_decided_packet_by_packet():
    """Address adoption looks at each packet (only the newest authentic one may move the SA):
    a run from another address takes the per-packet path, and adoption is asked for."""
    plane, child, tun, moved = _plane()
    new = ("203.0.113.9", 4500)
    plane.rx_batch_begin()
    plane.esp_received_many(_stream()[:3], LOCAL, new)
    plane.rx_batch_end()
    assert len(tun.written) == 3 and moved and moved[-1] == (LOCAL, new)


def test_runs_held_while_routes_are_programmed():
    plane, child, tun, _moved = _plane()
    child.held_rx = []
    plane.rx_batch_begin()
    plane.esp_received_many(_stream()[:3], LOCAL, REMOTE)
    plane.rx_batch_end()
    assert tun.written == [] and len(child.held_rx) == 3


class RunRecorder(RecordingDataPlane):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def esp_received(self, data: bytes, local, remote) -> None:
        self.calls.append(("one", remote[0], data[:4], data[8:9]))

    def esp_received_many(self, datagrams: list[bytes], local, remote) -> None:
        self.calls.append(("many", remote[0], datagrams[0][:4], b"".join(d[8:9] for d in datagrams)))


def test_udp_service_hands_runs_of_one_spi_from_one_source_over_in_order():
    """Sources A and B on loopback; datagrams of SPIs 1 and 2 and an IKE message (non-ESP
    marker) in between: every change of source or SPI, and every non-ESP datagram, ends a run."""
    assert recv_runs is not None  # the compiled helpers (the setup builds them): the burst path
    dp = RunRecorder()
    ike: list[bytes] = []
    cfg = types.SimpleNamespace(listen=["127.0.0.2"], ike_port=0, natt_port=0, offload=False)
    svc = UdpService(lambda: cfg, dp, DatagramSinks(ike=lambda d, _local, _remote: ike.append(d),
                                                    after_batch=lambda: None), None)

    def esp(spi: int, tag: int) -> bytes:
        return spi.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([tag]) + bytes(40)

    async def run() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.2", 0))
        cfg.ike_port = probe.getsockname()[1]
        probe.close()
        cfg.natt_port = cfg.ike_port + 1
        a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        a.bind(("127.0.3.1", 0))
        b.bind(("127.0.3.2", 0))
        try:
            svc.open()  # then the datagrams, before the loop runs: one wake-up reads them all
            dst = ("127.0.0.2", cfg.natt_port)
            for s, d in [(a, esp(1, 1)), (a, esp(1, 2)), (a, esp(1, 3)), (a, NON_ESP_MARKER + bytes(28)),
                         (a, esp(1, 4)), (a, esp(2, 5)), (a, esp(2, 6)), (b, esp(1, 7)), (b, esp(1, 8)),
                         (a, esp(1, 9))]:
                s.sendto(d, dst)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if len(dp.calls) >= 5:
                    break
        finally:
            svc.close()
            a.close()
            b.close()

    asyncio.run(run())
    one, two = (1).to_bytes(4, "big"), (2).to_bytes(4, "big")
    assert dp.calls == [("many", "127.0.3.1", one, b"\1\2\3"), ("one", "127.0.3.1", one, b"\4"),
                        ("many", "127.0.3.1", two, b"\5\6"), ("many", "127.0.3.2", one, b"\7\x08"),
                        ("one", "127.0.3.1", one, b"\x09")]
    assert len(ike) == 1
