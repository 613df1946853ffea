"""TCP encapsulation of IKE and ESP (RFC 9329, docs/tcp-encapsulation.md) through an nftables
firewall, between a client gateway of ours and a hub of ours:

    host-a 10.1.0.2 -- gw-a 192.0.2.1 (client) -- router (nftables) -- 198.51.100.1 gw-b (hub) -- host-b 10.2.0.2

The router filters what it forwards; captures are taken on its hub-side interface ("tob"), so
they show what got through the firewall.
"""
from __future__ import annotations

import time

import pytest

from tests.gateway import connection, wait_for
from tests.netns import Netns
from tests.netns_e2e.tools import Capture, esp_in_udp, ipv4_packets
from tests.netns_e2e.topology import Site, two_sites
from vpn_gw.transport import tcp as T

pytestmark = pytest.mark.netns

NFT = """
table inet tcpfw
delete table inet tcpfw
table inet tcpfw {
    counter dropped { }
    counter rejected { }
    chain forward_filter {
        type filter hook forward priority 0; policy accept;
        %s
    }
}
"""
DROP_UDP = "meta l4proto udp counter name dropped drop"
DROP_4500 = "udp dport 4500 counter name dropped drop\n        udp sport 4500 counter name dropped drop"
RESET_TCP = 'iifname "toa" tcp dport 4500 counter name rejected reject with tcp reset'
PROBE_TIMEOUT = T.PROBE_TIMEOUT


def firewall(router: Netns, rule: str = "") -> None:
    router.run(["nft", "-f", "-"], input=NFT % rule)


def start_pair(e2e, a: Site, b: Site, *, transport: str, mobike: bool = True, hub_any: bool = False,
               tcp_port: int | None = None):
    """The hub (gw-b, responder) and the client (gw-a, initiator with ``transport``)."""
    hub_gw = {"tcp_port": tcp_port} if tcp_port else None
    extra = {"tcp_port": tcp_port} if tcp_port else {}
    hub = e2e.gateway(b.gw, "hub", [connection("branch", b.wan, "%any" if hub_any else a.wan, "hub.example.org",
                                               "branch.example.org", local_ts=b.lan, remote_ts=a.lan)],
                      [b.wan], hub_gw)
    client = e2e.gateway(a.gw, "client", [connection("to-hub", a.wan, b.wan, "branch.example.org",
                                                     "hub.example.org", local_ts=a.lan, remote_ts=b.lan,
                                                     transport=transport, mobike=mobike, **extra)], [a.wan])
    return hub, client


def events(gw, name: str) -> list[dict]:
    return [line for line in gw.log_lines() if line.get("event") == name]


def sa_ids(gw) -> tuple:
    """The established IKE SA's SPIs and its CHILD_SAs' SPIs (fails unless exactly one IKE SA)."""
    sas = gw.ike_sas()
    assert len(sas) == 1, sas
    sa = sas[0]
    return sa["spi_i"], sa["spi_r"], tuple(sorted((c["spi_in"], c["spi_out"]) for c in sa["children"]))


def tcp_streams(path, port: int) -> dict[tuple, bytes]:
    """Reassembled TCP payload of each direction of each connection to/from ``port``."""
    segs: dict[tuple, dict[int, bytes]] = {}
    isn: dict[tuple, int] = {}
    for p in ipv4_packets(path):
        if p.proto != 6 or port not in (p.sport, p.dport) or len(p.l4) < 20:
            continue
        key = (p.src, p.sport, p.dst, p.dport)
        seq = int.from_bytes(p.l4[4:8], "big")
        if p.l4[13] & 0x02:  # SYN
            isn[key] = seq + 1
        data = p.l4[(p.l4[12] >> 4) * 4:]
        if data:
            d = segs.setdefault(key, {})
            if len(data) > len(d.get(seq, b"")):
                d[seq] = data
    out = {}
    for key, d in segs.items():
        nxt = isn.get(key, min(d))
        buf = bytearray()
        for seq in sorted(d):
            data = d[seq]
            if seq > nxt:
                break  # a hole in the capture: stop there
            if seq + len(data) > nxt:
                buf += data[nxt - seq:]
                nxt = seq + len(data)
        out[key] = bytes(buf)
    return out


def frame_kinds(stream: bytes, originator: bool) -> list[str]:
    d = T.Deframer(expect_prefix=originator)
    return [T.classify(f)[0] for f in d.feed(stream)]


@pytest.fixture
def topo(e2e):
    router, a, b = two_sites(e2e.grp)
    firewall(router)
    return router, a, b


def test_auto_picks_udp_when_udp_passes(e2e, topo, tmp_path):
    router, a, b = topo
    hub, client = start_pair(e2e, a, b, transport="auto")
    cap = Capture(router, "tob", tmp_path / "tob.pcap").start()
    try:
        client.up("to-hub")
        a.host.wait_ping(b.host_ip, timeout=10)
        assert a.host.ping(b.host_ip, count=3)
    finally:
        cap.stop()
    chosen = events(client, "transport chosen")
    assert [e["transport"] for e in chosen] == ["udp"], chosen
    assert "UDP ok" in chosen[0]["reason"]
    assert [sa["transport"] for sa in client.ike_sas()] == ["udp"]
    assert [(sa["transport"], sa["local_port"]) for sa in hub.ike_sas()] == [("udp", 4500)]
    pkts = ipv4_packets(cap.path)
    assert esp_in_udp(pkts), "no ESP in UDP 4500 reached the hub"
    assert [p for p in pkts if p.proto == 6 and 4500 in (p.sport, p.dport)] == []
    assert hub.control("stats")["tcp"].get("accepted", 0) == 0


def test_udp_blocked_tunnel_over_tcp(e2e, topo, tmp_path):
    router, a, b = topo
    firewall(router, DROP_UDP)
    hub, client = start_pair(e2e, a, b, transport="auto", tcp_port=443)  # TCP on 443, like HTTPS
    cap = Capture(router, "tob", tmp_path / "tob.pcap").start()
    try:
        t0 = time.monotonic()
        client.up("to-hub")
        took = time.monotonic() - t0
        a.host.wait_ping(b.host_ip, timeout=10)
        assert a.host.ping(b.host_ip, count=5)
        assert b.host.ping(a.host_ip, count=3)
    finally:
        cap.stop()
    chosen = events(client, "transport chosen")
    assert [e["transport"] for e in chosen] == ["tcp"], chosen
    assert "UDP is blocked" in chosen[0]["reason"]  # the probe's verdict, quoted in the log
    # the probe gave up within its timeout; the whole `up` took little more
    assert PROBE_TIMEOUT <= took < PROBE_TIMEOUT + 6, took
    for gw, port in ((client, "remote_port"), (hub, "local_port")):
        sas = gw.ike_sas()
        assert [(sa["transport"], sa[port]) for sa in sas] == [("tcp", 443)], sas
    # On the wire behind the firewall: no UDP at all, one TCP connection carrying everything.
    pkts = ipv4_packets(cap.path)
    assert [p for p in pkts if p.proto == 17] == []
    streams = tcp_streams(cap.path, 443)
    up = [s for (src, _sp, _d, dport), s in streams.items() if src == a.wan and dport == 443]
    down = [s for (src, sport, _d, _dp), s in streams.items() if src == b.wan and sport == 443]
    assert len(up) == 1 and len(down) == 1, streams.keys()
    assert up[0].startswith(T.PREFIX)
    kinds_up, kinds_down = frame_kinds(up[0], True), frame_kinds(down[0], False)
    assert kinds_up[:2] == ["ike", "ike"] and kinds_down[:2] == ["ike", "ike"]  # IKE_SA_INIT, IKE_AUTH
    assert kinds_up.count("esp") >= 8 and kinds_down.count("esp") >= 8, (kinds_up, kinds_down)
    assert "keepalive" not in kinds_up + kinds_down  # RFC 9329 8: no NAT keepalives over TCP
    stats = hub.control("stats")["tcp"]
    assert stats["accepted"] == 1 and stats["ike_in"] >= 2 and stats["esp_in"] >= 8
    assert not [e for e in hub.log_lines() + client.log_lines() if "Traceback" in str(e)]


def test_udp_4500_blocked_auto_picks_tcp(e2e, topo):
    router, a, b = topo
    firewall(router, DROP_4500)
    hub, client = start_pair(e2e, a, b, transport="auto")
    client.up("to-hub")
    a.host.wait_ping(b.host_ip, timeout=10)
    chosen = events(client, "transport chosen")
    assert [e["transport"] for e in chosen] == ["tcp"], chosen
    reason = chosen[0]["reason"]
    assert "partial: UDP ok on 500, blocked on 4500" in reason, reason
    assert "udp/500 rtt" in reason and "udp/4500 no reply" in reason
    assert [sa["transport"] for sa in client.ike_sas()] == ["tcp"]
    assert [sa["transport"] for sa in hub.ike_sas()] == ["tcp"]


def _reconnect_and_check(hub, client, a: Site, b: Site, break_it) -> None:
    client.up("to-hub")
    a.host.wait_ping(b.host_ip, timeout=10)
    before_client, before_hub = sa_ids(client), sa_ids(hub)
    old_port = hub.ike_sas()[0]["remote_port"]
    break_it()
    wait_for(lambda: events(client, "TCP connection re-established, IKE SA continues"), 20,
             "the client to reconnect")
    wait_for(lambda: hub.ike_sas() and hub.ike_sas()[0]["remote_port"] != old_port, 15,
             "the hub to move the IKE SA to the new connection")
    a.host.wait_ping(b.host_ip, timeout=10)
    assert a.host.ping(b.host_ip, count=3) and b.host.ping(a.host_ip, count=3)
    # the same IKE SA and CHILD_SAs continue: same SPIs, no new IKE_SA_INIT
    assert sa_ids(client) == before_client and sa_ids(hub) == before_hub
    assert len(events(client, "initiating IKE_SA")) == 1
    assert [sa["transport"] for sa in client.ike_sas() + hub.ike_sas()] == ["tcp", "tcp"]
    assert not [e for e in hub.log_lines() + client.log_lines() if "Traceback" in str(e)]


@pytest.mark.parametrize("mobike,hub_any", [(True, False), (False, True)], ids=["mobike", "adoption"])
def test_tcp_connection_killed_client_reconnects(e2e, topo, mobike, hub_any):
    router, a, b = topo
    firewall(router, DROP_UDP)
    hub, client = start_pair(e2e, a, b, transport="tcp", mobike=mobike, hub_any=hub_any)

    def kill():  # destroy the client's TCP socket (the hub gets a RST)
        a.gw.run(["ss", "-K", "dst", b.wan, "dport", "=", "4500"], check=False)
    _reconnect_and_check(hub, client, a, b, kill)
    lost = events(client, "TCP connection lost, reconnecting")
    assert len(lost) == 1
    if mobike:
        assert events(hub, "peer address changed")[-1]["reason"] == "MOBIKE UPDATE_SA_ADDRESSES"


def test_tcp_reset_by_firewall_client_backs_off_and_reconnects(e2e, topo):
    router, a, b = topo
    firewall(router, DROP_UDP)
    hub, client = start_pair(e2e, a, b, transport="tcp")

    def reset_for_a_while():
        firewall(router, DROP_UDP + "\n        " + RESET_TCP)
        a.host.ping(b.host_ip, count=2, wait=0.5)  # ESP towards the hub meets the reset
        wait_for(lambda: events(client, "TCP connection lost, reconnecting"), 10, "the client to notice")
        wait_for(lambda: events(client, "TCP reconnect failed"), 10, "a refused reconnect")
        time.sleep(1.5)
        firewall(router, DROP_UDP)
    _reconnect_and_check(hub, client, a, b, reset_for_a_while)
    failed = events(client, "TCP reconnect failed")
    assert failed and all(e["retry_in"] <= T.RECONNECT_MAX for e in failed)


def test_roaming_client_reopens_tcp_from_its_new_address(e2e, topo):
    """The client's WAN address changes: the daemon's roaming check re-opens the TCP connection
    from the new address (instead of moving a UDP path) and MOBIKE moves the same IKE SA there."""
    router, a, b = topo
    firewall(router, DROP_UDP)
    hub = e2e.gateway(b.gw, "hub", [connection("branch", b.wan, a.wan, "hub.example.org", "branch.example.org",
                                               local_ts=b.lan, remote_ts=a.lan)], [b.wan])
    conn = connection("to-hub", a.wan, b.wan, "branch.example.org", "hub.example.org", local_ts=a.lan,
                      remote_ts=b.lan, transport="tcp")
    conn["local_addrs"] = ["%any"]  # roaming: follow the routing table's source address
    client = e2e.gateway(a.gw, "client", [conn], ["0.0.0.0"])
    client.up("to-hub")
    a.host.wait_ping(b.host_ip, timeout=10)
    before = sa_ids(client), sa_ids(hub)
    new_ip = "192.0.2.2"
    a.gw.sysctl("net.ipv4.conf.wan.promote_secondaries", 1)  # the new address survives the old one
    a.gw.add_addr("wan", f"{new_ip}/24")
    a.gw.del_addr("wan", f"{a.wan}/24")
    a.gw.ip("route", "replace", "default", "via", "192.0.2.254")
    wait_for(lambda: [sa for sa in hub.ike_sas() if sa["remote_addr"] == new_ip], 15,
             "the hub to follow the client to its new address")
    a.host.wait_ping(b.host_ip, timeout=10)
    assert (sa_ids(client), sa_ids(hub)) == before
    assert [(sa["transport"], sa["local_addr"]) for sa in client.ike_sas()] == [("tcp", new_ip)]
    assert events(client, "local address changed, reconnecting the TCP connection")
    assert events(hub, "peer address changed")[-1]["reason"] == "MOBIKE UPDATE_SA_ADDRESSES"
    assert len(events(client, "initiating IKE_SA")) == 1
