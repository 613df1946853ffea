"""The userspace data plane's inbound selector check (RFC 4301 5.2): the fast IPv4 path, the
address-range path and the full (protocol, ports) path give the same verdicts."""
from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.payloads import TrafficSelector
from vpn_gw.dataplane.userspace.plane import (
    _Child,
    _inbound_drop_reason,
    _match,
    _Selector,
)


def child(local: list[TrafficSelector], remote: list[TrafficSelector]) -> _Child:
    return _Child("c", 1, b"in", b"out", None, None, ("192.0.2.1", 4500), ("198.51.100.1", 4500),
                  [_Selector.from_ts(t) for t in local], [_Selector.from_ts(t) for t in remote], None, 1400)


def ip4(src: str, dst: str, proto: int = 6, sport: int = 1000, dport: int = 80) -> bytes:
    l4 = struct.pack("!HH", sport, dport) + bytes(16)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + l4


def reference(c: _Child, pkt: bytes) -> str | None:
    v = pkt[0] >> 4
    src, dst = int.from_bytes(pkt[12:16], "big"), int.from_bytes(pkt[16:20], "big")
    proto, sport, dport = pkt[9], *struct.unpack("!HH", pkt[20:24])
    ok = _match(c.remote_ts, v, src, proto, sport) and _match(c.local_ts, v, dst, proto, dport)
    return None if ok else "policy_mismatch"


def test_site_to_site_takes_the_fast_path_and_checks_both_sides():
    c = child([TrafficSelector.from_network("10.2.0.0/16")], [TrafficSelector.from_network("10.1.0.0/16")])
    assert c.in4 is not None
    assert _inbound_drop_reason(c, ip4("10.1.0.2", "10.2.0.2")) is None
    assert _inbound_drop_reason(c, ip4("10.3.0.2", "10.2.0.2")) == "policy_mismatch"  # spoofed source
    assert _inbound_drop_reason(c, ip4("10.1.0.2", "10.9.0.2")) == "policy_mismatch"  # not ours
    assert _inbound_drop_reason(c, ip4("10.2.0.2", "10.1.0.2")) == "policy_mismatch"  # reversed
    assert _inbound_drop_reason(c, b"") == "malformed"
    assert _inbound_drop_reason(c, b"\x45" + bytes(10)) == "malformed"
    assert _inbound_drop_reason(c, bytes([0x60]) + bytes(39)) == "policy_mismatch"  # IPv6, no v6 selector


def test_port_selectors_use_the_full_check():
    c = child([TrafficSelector.from_network("10.2.0.0/16", 6, 80, 80)], [TrafficSelector.from_network("10.1.0.0/16")])
    assert c.in4 is None
    assert _inbound_drop_reason(c, ip4("10.1.0.2", "10.2.0.2", dport=80)) is None
    assert _inbound_drop_reason(c, ip4("10.1.0.2", "10.2.0.2", dport=81)) == "policy_mismatch"
    assert _inbound_drop_reason(c, ip4("10.1.0.2", "10.2.0.2", proto=17, dport=80)) == "policy_mismatch"


nets = st.builds(lambda a, p: str(ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}", strict=False)),
                 st.integers(0, 2**32 - 1), st.integers(0, 32))
addrs = st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a)))


@settings(max_examples=300, deadline=None)
@given(st.lists(nets, min_size=1, max_size=3), st.lists(nets, min_size=1, max_size=3), addrs, addrs)
def test_every_path_agrees_with_the_reference(local, remote, src, dst):
    c = child([TrafficSelector.from_network(n) for n in local], [TrafficSelector.from_network(n) for n in remote])
    pkt = ip4(src, dst)
    assert _inbound_drop_reason(c, pkt) == reference(c, pkt)
