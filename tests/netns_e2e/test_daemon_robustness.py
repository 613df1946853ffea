"""What a peer (or anyone) sends can never crash the daemon, nor flood its log."""
from __future__ import annotations

import os
import random

import pytest

from ikev2 import payloads as P
from ikev2.constants import ExchangeType, HeaderFlag, NotifyType
from ikev2.message import Message, decode_message, encode_message
from tests.gateway import OurGateway, connection
from tests.netns import NetnsGroup, require_root
from tests.netns_e2e.topology import two_sites

pytestmark = pytest.mark.netns

SEND = r"""
import socket, sys
data = bytes.fromhex(sys.stdin.read().strip())
port = int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for chunk in data.split(b"||SEP||"):
    s.sendto((b"\0\0\0\0" + chunk) if port == 4500 and sys.argv[3] == "marker" else chunk, (sys.argv[1], port))
try:
    print(s.recv(65535).hex())
except socket.timeout:
    print("")
"""


def send(ns, dst, port, payloads: list[bytes], marker=False) -> bytes:
    blob = b"||SEP||".join(payloads)
    out = ns.run(["python3", "-c", SEND, dst, str(port), "marker" if marker else "-"], timeout=20,
                 input=blob.hex())
    return bytes.fromhex(out.stdout.strip()) if out.stdout.strip() else b""


def test_garbage_never_crashes_and_tunnel_still_comes_up(tmp_path):
    require_root()
    grp = NetnsGroup("rob")
    try:
        router, a, b = two_sites(grp)
        ga = OurGateway(a.gw, tmp_path, "a", [connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org",
                                                        local_ts=a.lan, remote_ts=b.lan)], listen=[a.wan])
        gb = OurGateway(b.gw, tmp_path, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                                        local_ts=b.lan, remote_ts=a.lan)], listen=[b.wan])
        ga.start()
        gb.start()
        rnd = random.Random(7)
        junk = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 400))) for _ in range(300)]
        send(a.gw, b.wan, 500, junk)
        send(a.gw, b.wan, 4500, junk, marker=True)
        send(a.gw, b.wan, 4500, junk)  # as ESP with unknown SPIs
        # A structurally broken IKE_SA_INIT request gets INVALID_SYNTAX back, without state.
        good = encode_message(Message(os.urandom(8), bytes(8), ExchangeType.IKE_SA_INIT, 0, HeaderFlag.INITIATOR,
                                      [P.NoncePayload(data=bytes(32))]))
        bad = bytearray(good)
        bad[28 + 2:28 + 4] = (200).to_bytes(2, "big")  # payload length beyond the message
        reply = send(a.gw, b.wan, 500, [bytes(bad)])
        m = decode_message(reply)
        assert m.is_response and m.notify(NotifyType.INVALID_SYNTAX) is not None
        # An unknown critical payload gets UNSUPPORTED_CRITICAL_PAYLOAD naming its type.
        crit = Message(os.urandom(8), bytes(8), ExchangeType.IKE_SA_INIT, 0, HeaderFlag.INITIATOR,
                       [P.UnknownPayload(type=201, body=b"x")])
        raw = bytearray(encode_message(crit))
        raw[29] = 0x80
        m = decode_message(send(a.gw, b.wan, 500, [bytes(raw)]))
        n = m.notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD)
        assert n is not None and n.data == bytes([201])
        assert gb.proc.poll() is None and ga.proc.poll() is None
        assert gb.status() == []  # nothing half-open was left behind
        # The log is rate-limited: far fewer lines than datagrams, and a summary later.
        drops = [e for e in gb.log_lines() if e.get("event") == "dropped datagram"]
        assert 0 < len(drops) <= 30
        # The gateway still works.
        ga.up("to-b")
        ga.wait_children(1)
        a.host.wait_ping(b.host_ip, timeout=5)
        ga.stop()
        gb.stop()
    finally:
        grp.close()
        assert grp.leftovers() == []
