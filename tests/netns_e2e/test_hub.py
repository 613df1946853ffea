"""Hub and three branches, route-based, 0.0.0.0/0 selectors everywhere.

The hub has one connection per branch (``remote_addrs = ["%any"]``, ``remote_id`` per branch,
its own PSK, ``interface = "brN"``); the configurations differ only in identity, PSK and
interface. The hub binds each branch to its interface by the IKE identity, so each branch's
traffic must come out of (and the replies go back into) that branch's interface.
"""
from __future__ import annotations

import time

import pytest

from tests.gateway import connection
from tests.netns_e2e import tools
from tests.netns_e2e.topology import hub_and_branches

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

ANY = "0.0.0.0/0"


def _psk(n: int) -> str:
    return f"branch-{n}-secret-{n * 7919}"


def _children_by_conn(gw) -> dict[str, dict]:
    out = {}
    for sa, ch in gw.children():
        assert sa["name"] not in out, f"two CHILD_SAs on {sa['name']}"
        out[sa["name"]] = ch
    return out


def _quiet_counters(gw, settle: float = 0.4, timeout: float = 5.0) -> dict[str, dict]:
    """The counters once nothing moved for ``settle`` seconds (a late reply to an earlier
    ping on a loaded machine must not land in the next branch's window)."""
    deadline = time.monotonic() + timeout
    last = _children_by_conn(gw)
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = _children_by_conn(gw)
        if now == last:
            return now
        last = now
    return last


def test_hub_and_three_branches(e2e, tmp_path):
    hub = hub_and_branches(e2e.grp, 3)
    # Routes from the config (`routes`): installed into each connection's interface at start.
    hub_conns = [connection(f"br{b.n}", hub.wan, "%any", "hub.example.org", f"br{b.n}.example.org",
                            local_ts=ANY, remote_ts=ANY, psk=_psk(b.n), interface=f"br{b.n}", routes=[b.lan])
                 for b in hub.branches]
    ghub = e2e.gateway(hub.gw, "hub", hub_conns, [hub.wan])
    gws = {}
    for b in hub.branches:
        conn = connection("hub", b.wan, hub.wan, f"br{b.n}.example.org", "hub.example.org",
                          local_ts=ANY, remote_ts=ANY, psk=_psk(b.n), interface="hub")
        gws[b.n] = e2e.gateway(b.gw, f"br{b.n}", [conn], [b.wan])
    assert {"br1", "br2", "br3"} <= set(hub.gw.links())
    hub_routes = hub.gw.run(["ip", "route"]).stdout
    for b in hub.branches:
        assert f"{b.lan} dev br{b.n}" in hub_routes, hub_routes
        b.gw.ip("route", "add", hub.lan, "dev", "hub")

    for b in hub.branches:
        gws[b.n].up("hub")
    ghub.wait_children(3)
    sas = {sa["name"]: sa for sa in ghub.ike_sas()}
    assert set(sas) == {"br1", "br2", "br3"}
    for b in hub.branches:
        assert sas[f"br{b.n}"]["remote_id"] == f"br{b.n}.example.org"
        assert sas[f"br{b.n}"]["remote_addr"] == b.wan  # the identity chose the connection

    for b in hub.branches:
        b.host.wait_ping(hub.host_ip, timeout=5)

    # each branch's traffic lands on its own hub interface, and the replies leave through it
    for b in hub.branches:
        before = _quiet_counters(ghub)
        caps = {n: tools.Capture(hub.gw, f"br{n}", tmp_path / f"b{b.n}-br{n}.pcap", "icmp").start()
                for n in (1, 2, 3)}
        try:
            assert b.host.ping(hub.host_ip, count=5, interval=0.1, timeout=5)
        finally:
            for c in caps.values():
                c.stop()
        after = _children_by_conn(ghub)
        for n in (1, 2, 3):
            d_in = after[f"br{n}"]["packets_in"] - before[f"br{n}"]["packets_in"]
            d_out = after[f"br{n}"]["packets_out"] - before[f"br{n}"]["packets_out"]
            pkts = tools.ipv4_packets(tmp_path / f"b{b.n}-br{n}.pcap")
            requests = [p for p in pkts if p.proto == 1 and p.l4[0] == 8]
            replies = [p for p in pkts if p.proto == 1 and p.l4[0] == 0]
            if n == b.n:
                assert d_in >= 5 and d_out >= 5, (n, d_in, d_out)
                assert len(requests) >= 5 and {p.src for p in requests} == {b.host_ip}
                assert len(replies) >= 5 and {(p.src, p.dst) for p in replies} == {(hub.host_ip, b.host_ip)}
            else:
                assert d_in == 0 and d_out == 0, (f"branch {b.n}'s ping moved br{n}'s counters", d_in, d_out,
                                                  [(p.src, p.dst, p.proto) for p in pkts],
                                                  before[f"br{n}"], after[f"br{n}"])
                assert requests == [] and replies == [], f"branch {b.n}'s ping seen on br{n}"

    # the hub host reaches every branch host (hub-initiated traffic follows the routes)
    for b in hub.branches:
        assert hub.host.ping(b.host_ip, count=2, timeout=5)
    # branch to branch through the hub: allowed by the 0/0 selectors once routes say so
    hub.branches[0].gw.ip("route", "add", hub.branches[1].lan, "dev", "hub")
    hub.branches[1].gw.ip("route", "add", hub.branches[0].lan, "dev", "hub")
    assert hub.branches[0].host.ping(hub.branches[1].host_ip, count=2, timeout=5)
