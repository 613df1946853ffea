"""vpn_gw.dataplane.xfrm.fragmenter without a kernel: rule generation, the reader's decisions."""
from __future__ import annotations

import ipaddress

from esp.ip import build_ipv4_header, parse_ipv4
from ikev2.payloads import TrafficSelector
from vpn_gw.dataplane.xfrm.fragmenter import (
    QUEUE_MAX_LEN,
    RedFragmenter,
    Tunnel,
    iptables_script,
    ipv4_networks,
    plan,
    ruleset,
)

N = ipaddress.IPv4Network


def _pkt(size: int, df: bool, **kw) -> bytes:
    body = bytes(i % 251 for i in range(size - 20))
    return build_ipv4_header(tos=0, total_length=size, ident=0x1234, flags_offset=0x4000 if df else 0, ttl=63,
                             protocol=kw.get("proto", 17), src=ipaddress.ip_address(kw.get("src", "10.1.0.2")).packed,
                             dst=ipaddress.ip_address(kw.get("dst", "10.2.0.2")).packed) + body


def test_ipv4_networks_from_selectors():
    ts = [TrafficSelector.from_network("10.1.0.0/24"), TrafficSelector.from_network("10.1.1.0/24"),
          TrafficSelector.from_network("2001:db8::/64")]
    assert ipv4_networks(ts) == (N("10.1.0.0/23"),)
    rng = TrafficSelector.from_network("10.3.0.0/24")
    rng = TrafficSelector(rng.ts_type, 0, 0, 65535, ipaddress.ip_address("10.3.0.1"), ipaddress.ip_address("10.3.0.6"))
    assert ipv4_networks([rng]) == (N("10.3.0.1/32"), N("10.3.0.2/31"), N("10.3.0.4/31"), N("10.3.0.6/32"))
    # Protocol or port limits: left out (the fragments could miss such a policy).
    udp = TrafficSelector(rng.ts_type, 17, 0, 65535,
                          ipaddress.ip_address("10.4.0.0"), ipaddress.ip_address("10.4.0.255"))
    port = TrafficSelector(rng.ts_type, 0, 80, 80, ipaddress.ip_address("10.5.0.0"), ipaddress.ip_address("10.5.0.255"))
    assert ipv4_networks([udp, port]) == ()


def test_nft_ruleset():
    t1 = Tunnel((N("10.1.0.0/24"),), (N("10.2.0.0/24"), N("10.9.0.0/16")), 1438)
    t2 = Tunnel((N("0.0.0.0/0"),), (N("10.3.0.0/24"),), 1446)
    text = ruleset([t2, t1, t1], queue_num=9, fail_open=True)
    assert text.startswith("table ip vpn_gw_frag {}\ndelete table ip vpn_gw_frag\n")  # atomic replace
    assert "type filter hook forward priority 100; policy accept;" in text
    assert "type filter hook output priority 100; policy accept;" in text  # locally generated traffic
    rules = [line.strip() for line in text.splitlines() if "queue" in line]
    assert rules == 2 * [
        "ip saddr { 10.1.0.0/24 } ip daddr { 10.2.0.0/24, 10.9.0.0/16 } ip length 1439-4016 counter queue num 9 bypass",
        "ip saddr { 0.0.0.0/0 } ip daddr { 10.3.0.0/24 } ip length 1447-4016 counter queue num 9 bypass",
    ]
    assert "bypass" not in ruleset([t1], fail_open=False)
    # A tunnel MTU at or above what the queue carries needs no rule.
    assert "queue" not in ruleset([Tunnel((N("10.1.0.0/24"),), (N("10.2.0.0/24"),), QUEUE_MAX_LEN)])
    assert "queue" not in ruleset([])


def test_iptables_script():
    t = Tunnel((N("10.1.0.0/24"),), (N("10.2.0.0/24"), N("10.9.0.0/16")), 1438)
    assert iptables_script([t], queue_num=9, fail_open=False) == (
        "*security\n:VPN_GW_FRAG - [0:0]\n"
        "-A VPN_GW_FRAG -s 10.1.0.0/24 -d 10.2.0.0/24,10.9.0.0/16 -m length --length 1439:4016 "
        "-j NFQUEUE --queue-num 9\nCOMMIT\n")
    assert "--queue-bypass" in iptables_script([t])


def test_plan():
    action, frags = plan(_pkt(3000, df=False), 1438)
    assert action == "fragment" and len(frags) == 3
    assert all(len(f) <= 1438 for f in frags)
    hdrs = [parse_ipv4(f) for f in frags]
    assert [h.frag_offset * 8 for h in hdrs] == [0, 1416, 2832]
    assert [h.more_fragments for h in hdrs] == [True, True, False]
    assert b"".join(f[20:] for f in frags) == _pkt(3000, df=False)[20:]
    assert plan(_pkt(1500, df=True), 1438) == ("icmp", [])
    assert plan(_pkt(1438, df=False), 1438) == ("pass", [])
    assert plan(b"\x60" + bytes(60), 1280) == ("pass", [])  # IPv6: the kernel answers itself
    assert plan(_pkt(3000, df=False)[:2000], 1438) == ("pass", [])  # truncated copy: leave it


class FakePacket:
    def __init__(self, data: bytes):
        self.data, self.verdict = data, None

    def get_payload(self):
        return self.data

    def accept(self):
        self.verdict = "accept"

    def drop(self):
        self.verdict = "drop"


def test_reader_verdicts():
    f = RedFragmenter()
    f.tunnels["c"] = Tunnel((N("10.1.0.0/24"),), (N("10.2.0.0/24"),), 1438)
    sent, icmp = [], []
    f._send_fragments = lambda frags, src, dst: sent.append((frags, src, dst))
    f._send_icmp = lambda packet, mtu: icmp.append(mtu)

    p = FakePacket(_pkt(3000, df=False))
    f._on_packet(p)
    assert p.verdict == "drop" and len(sent[0][0]) == 3 and sent[0][1] == bytes([10, 1, 0, 2])

    p = FakePacket(_pkt(1500, df=True))
    f._on_packet(p)
    assert p.verdict == "drop" and icmp == [1438]

    p = FakePacket(_pkt(3000, df=False, dst="10.7.0.1"))  # no longer a tunnel's (rule just removed)
    f._on_packet(p)
    assert p.verdict == "accept"

    def broken(frags, src, dst):
        raise OSError(101, "Network is unreachable")
    f._send_fragments = broken
    p = FakePacket(_pkt(3000, df=False))
    f._on_packet(p)
    assert p.verdict == "accept"  # the kernel carries it as before
    assert f.counters == {"queued": 4, "fragmented": 1, "fragments_sent": 3, "icmp_sent": 1, "passed": 1,
                          "dropped": 0, "errors": 1}


def test_mtu_for_picks_the_smallest():
    f = RedFragmenter()
    f.tunnels["a"] = Tunnel((N("10.1.0.0/24"),), (N("10.2.0.0/24"),), 1438)
    f.tunnels["b"] = Tunnel((N("0.0.0.0/0"),), (N("10.2.0.0/16"),), 1400)
    assert f.mtu_for(bytes([10, 1, 0, 2]), bytes([10, 2, 0, 2])) == 1400
    assert f.mtu_for(bytes([10, 1, 0, 2]), bytes([10, 3, 0, 2])) is None
