"""The kernel steers cookie-less IKE_SA_INITs to the INIT sockets of a SO_REUSEPORT group (classic
BPF, vpn_gw/transport/steering.py), by a hash of the source /24, and everything else to the main
socket; the INIT sockets are read with recvmmsg and answered with sendmmsg (mmsg.py) through
the engine's stateless COOKIE path (UdpService). Real sockets on loopback (127.0.0.0/8 is all
local, so clients can send from several /24s)."""
from __future__ import annotations

import asyncio
import os
import socket
import time
import types

import pytest

from ikev2.admission import first_cookie
from ikev2.manager import IkeManager
from ikev2.message import decode_message
from tests.engine.harness import DetRandom, child, psk_policy
from vpn_gw.dataplane import RecordingDataPlane
from vpn_gw.transport import mmsg, steering
from vpn_gw.transport.udp import IkeSocket
from vpn_gw.transport.udp_service import DatagramSinks, UdpService

GW = "127.0.0.2"


def init_request(src: str = "127.0.0.1") -> bytes:
    m = IkeManager([psk_policy("gw", "c.example.org", "gw.example.org", src, GW,
                               [child("net", "10.9.0.0/24", "10.1.0.0/24")])], os.urandom)
    m.initiate("gw", 0.0)
    (data, _s, _d), = m.pop_datagrams()
    return data


def group(natt: bool) -> tuple[IkeSocket, list[IkeSocket]]:
    main = IkeSocket(GW, 0, reuseport=True)
    port = main.sock.getsockname()[1]
    inits = [IkeSocket(GW, port, reuseport=True) for _ in range(steering.INIT_BUCKETS)]
    steering.attach(main.sock, natt)
    return main, inits


def drain(s: IkeSocket) -> list[bytes]:
    out = []
    while (got := s.recv()) is not None:
        out.append(got[0])
    return out


def sender(ip: str) -> socket.socket:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind((ip, 0))
    return c


def two_prefixes() -> tuple[str, str]:
    """Two loopback sources in /24s that the program puts into different INIT sockets."""
    a = "127.0.1.1"
    b = next(f"127.0.{n}.1" for n in range(2, 250) if steering.bucket(f"127.0.{n}.1") != steering.bucket(a))
    return a, b


def test_cookie_less_inits_go_to_the_init_socket_of_their_prefix_everything_else_to_main():
    main, inits = group(natt=False)
    port = main.sock.getsockname()[1]
    try:
        a, b = two_prefixes()
        init = init_request()
        cookie = init[:16] + bytes([41]) + init[17:28] + bytes([0, 0, 0, 12, 0, 0, 0x40, 0x06, 1, 2, 3, 4])
        cookie = cookie[:24] + len(cookie).to_bytes(4, "big") + cookie[28:]
        auth = os.urandom(16) + bytes([46, 0x20, 35, 0x08]) + (1).to_bytes(4, "big") + (40).to_bytes(4, "big") \
            + bytes(12)
        response = init[:19] + bytes([0x20]) + init[20:]
        sa, sb = sender(a), sender(b)
        for d in (init, cookie, auth, response, b"\x01\x02"):
            sa.sendto(d, (GW, port))
        sb.sendto(init, (GW, port))
        time.sleep(0.1)
        assert first_cookie(cookie) == bytes([1, 2, 3, 4])
        assert drain(main) == [cookie, auth, response, b"\x01\x02"]
        got = {i + 1: drain(s) for i, s in enumerate(inits)}
        assert got[steering.bucket(a)] == [init] and got[steering.bucket(b)] == [init]
        assert sum(len(v) for v in got.values()) == 2
    finally:
        for s in (main, *inits):
            s.close()


def test_natt_port_esp_and_keepalives_to_main_marked_inits_to_an_init_socket():
    main, inits = group(natt=True)
    port = main.sock.getsockname()[1]
    try:
        c = sender("127.0.1.1")
        init = init_request()
        esp = os.urandom(4) + os.urandom(60)
        for d in (esp, b"\xff", bytes(4) + init):
            c.sendto(d, (GW, port))
        time.sleep(0.1)
        assert drain(main) == [esp, b"\xff"]
        assert drain(inits[steering.bucket("127.0.1.1") - 1]) == [bytes(4) + init]
    finally:
        for s in (main, *inits):
            s.close()


def test_program_hash_matches_bucket_and_stays_in_range():
    for ip in ("192.0.2.7", "203.0.113.200", "2001:db8:1:2::1", "2001:db8:1:3::9"):
        assert 1 <= steering.bucket(ip) <= steering.INIT_BUCKETS
    assert steering.bucket("192.0.2.7") == steering.bucket("192.0.2.200")  # the same /24
    assert steering.bucket("2001:db8:1:2::1") == steering.bucket("2001:db8:1:ffff::1")  # the same /48
    with pytest.raises(ValueError):
        steering.program(False, buckets=3)


def test_recv_and_send_batches_round_trip_with_source_and_local_address():
    s = IkeSocket("127.0.0.1", 0)  # IP_PKTINFO on
    port = s.sock.getsockname()[1]
    c = sender("127.0.3.4")
    try:
        for n in range(5):
            c.sendto(bytes([n]) * (10 + n), ("127.0.0.1", port))
        c.sendto(b"x" * 200, ("127.0.0.1", port))  # longer than the batch's slots
        time.sleep(0.05)
        rx, tx = mmsg.RecvBatch(8, 100), mmsg.SendBatch(8, 100)
        n = rx.recv(s.fileno())
        assert n == 6
        assert [rx.datagram(i) for i in range(5)] == [bytes([i]) * (10 + i) for i in range(5)]
        assert rx.datagram(5) == b""  # truncated: handed on empty
        ip, sport, packed = mmsg.source(rx.name(0))
        assert (ip, sport, packed) == ("127.0.3.4", c.getsockname()[1], socket.inet_aton("127.0.3.4"))
        assert rx.local_address(0) == socket.inet_aton("127.0.0.1")
        for i in range(3):
            tx.add(b"reply %d" % i, rx.name(i), mmsg.pktinfo(rx.local_address(i)))
        tx.flush(s.fileno())
        assert tx.sent == 3 and rx.recv(s.fileno()) == 0
        c.settimeout(2)
        assert [c.recvfrom(100) for _ in range(3)] == [(b"reply %d" % i, ("127.0.0.1", port)) for i in range(3)]
    finally:
        s.close()
        c.close()


def test_udp_service_answers_a_flood_statelessly_and_passes_the_rest_on():
    """UdpService with steering: cookie-less INITs get the engine's COOKIE straight from the
    INIT sockets' batch path; the client's COOKIE retry arrives on the main socket and creates
    the IKE SA."""
    gw = IkeManager([psk_policy("c", "gw.example.org", "%any", GW, "%any",
                                [child("net", "10.1.0.0/24", "10.9.0.0/24")])], DetRandom("gw"),
                    cookie_threshold=0)
    cfg = types.SimpleNamespace(listen=[GW], ike_port=0, natt_port=0, offload=False)
    seen: list[bytes] = []

    def ike(data, local, remote):
        seen.append(data)
        gw.receive(data, local, remote, time.monotonic())

    def after():
        for d, local, remote in gw.pop_datagrams():
            svc.send_ike(d, local, remote)

    svc = UdpService(lambda: cfg, RecordingDataPlane(),
                     DatagramSinks(ike=ike, after_batch=after, init_reply=gw.stateless_init_reply), None)

    async def run() -> tuple[int, int, list]:
        # one socket per port of the group: pick free ports first
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((GW, 0))
        cfg.ike_port = probe.getsockname()[1]
        probe.close()
        cfg.natt_port = cfg.ike_port + 1
        svc.open()
        assert len(svc.init_sockets) == 2 * steering.INIT_BUCKETS
        c = sender("127.0.5.1")
        c.setblocking(False)
        flood = [os.urandom(8) + init_request()[8:] for _ in range(200)]
        for i, d in enumerate(flood):
            c.sendto(d, (GW, cfg.ike_port))
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        replies = []
        while True:
            try:
                replies.append(c.recv(2000))
            except BlockingIOError:
                break
        # a real client now: its first INIT gets a COOKIE, its retry goes through the main socket
        m = IkeManager([psk_policy("gw", "c.example.org", "gw.example.org", "127.0.5.1", GW,
                                   [child("net", "10.9.0.0/24", "10.1.0.0/24")])], DetRandom("c"))
        m.initiate("gw", 0.0)
        for _ in range(2):
            for d, _s, _dst in m.pop_datagrams():
                c.sendto(d, (GW, cfg.ike_port))
            await asyncio.sleep(0.2)
            while True:
                try:
                    d, src = c.recvfrom(2000)
                except BlockingIOError:
                    break
                m.receive(d, ("127.0.5.1", c.getsockname()[1]), src, 0.1)
        svc.close()
        c.close()
        return len(flood), len(replies), replies

    sent, answered, replies = asyncio.run(run())
    assert answered == sent  # every spoofed INIT got its COOKIE ...
    assert all(decode_message(r).notify(16390) is not None for r in replies)
    assert seen == [] or all(first_cookie(d) is not None for d in seen)  # ... without the full path
    assert gw.counters()["cookies_sent"] == sent + 1
    assert gw.counters()["inits_admitted_with_cookie"] == 1 and gw.half_open_count() == 1
