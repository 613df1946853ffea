"""IPv6 alike: IPv6 outer addresses, IPv6 traffic selectors, IPv6 inside an IPv6 tunnel."""
from __future__ import annotations

import pytest

from tests.gateway import OurGateway, connection
from tests.netns import NetnsGroup, require_root

pytestmark = pytest.mark.netns


def test_ipv6_outer_and_inner(tmp_path):
    require_root()
    grp = NetnsGroup("v6")
    ga = gb = None
    try:
        router = grp.add("r", forwarding=True)
        gw_a, gw_b = grp.add("gwa", forwarding=True), grp.add("gwb", forwarding=True)
        h_a, h_b = grp.add("ha"), grp.add("hb")
        grp.veth(gw_a, "wan", router, "toa", a_addrs=["2001:db8:1::1/64"], b_addrs=["2001:db8:1::fe/64"])
        grp.veth(gw_b, "wan", router, "tob", a_addrs=["2001:db8:2::1/64"], b_addrs=["2001:db8:2::fe/64"])
        grp.veth(h_a, "eth0", gw_a, "lan", a_addrs=["fd00:a::2/64"], b_addrs=["fd00:a::1/64"])
        grp.veth(h_b, "eth0", gw_b, "lan", a_addrs=["fd00:b::2/64"], b_addrs=["fd00:b::1/64"])
        gw_a.ip("-6", "route", "add", "default", "via", "2001:db8:1::fe")
        gw_b.ip("-6", "route", "add", "default", "via", "2001:db8:2::fe")
        h_a.ip("-6", "route", "add", "default", "via", "fd00:a::1")
        h_b.ip("-6", "route", "add", "default", "via", "fd00:b::1")
        ga = OurGateway(gw_a, tmp_path, "a", [connection("to-b", "2001:db8:1::1", "2001:db8:2::1", "a.example.org",
                                                         "b.example.org", local_ts="fd00:a::/64",
                                                         remote_ts="fd00:b::/64")],
                        listen=["2001:db8:1::1"])
        gb = OurGateway(gw_b, tmp_path, "b", [connection("to-a", "2001:db8:2::1", "2001:db8:1::1", "b.example.org",
                                                         "a.example.org", local_ts="fd00:b::/64",
                                                         remote_ts="fd00:a::/64")],
                        listen=["2001:db8:2::1"])
        ga.start()
        gb.start()
        assert not h_a.ping("fd00:b::2", count=1, timeout=1)
        ga.up("to-b")
        (sa, ch), = ga.wait_children(1)
        assert sa["remote_addr"] == "2001:db8:2::1" and sa["remote_port"] == 4500
        assert ch["local_ts"] == ["fd00:a::/64"] and ch["remote_ts"] == ["fd00:b::/64"]
        h_a.wait_ping("fd00:b::2", timeout=5)
        assert h_a.ping("fd00:b::2", count=3, timeout=2)
        (_, ch), = ga.children()
        assert ch["packets_out"] >= 3 and ch["packets_in"] >= 3
    finally:
        for g in (ga, gb):
            if g is not None:
                g.stop()
        grp.close()
        assert grp.leftovers() == []
