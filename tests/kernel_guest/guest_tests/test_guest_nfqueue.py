"""Red-side fragmentation of policy-based XFRM tunnels (vpn_gw.dataplane.xfrm.fragmenter), run *inside* the
QEMU guest with real kernel ESP (Debian 6.1). Collected only in the guest, like test_guest_xfrm.py,
whose topology and helpers it uses; facts go into the same facts.json.

    host-a -- gw-a -- router -- gw-b -- host-b      (two_sites; the router drops 10/8 in clear)

A policy-based AES-CBC/SHA-256 Child SA between the sites (tunnel MTU 1438 on a 1500 path), the
fragmenter on both gateways. A capture on the router's link to gw-a shows every ESP packet in both
directions: none may be an outer fragment.
"""
from __future__ import annotations

import os
import socket
import time

from esp.fragment import tunnel_mtu
from tests.kernel_guest.guest_tests.test_guest_xfrm import (  # noqa: F401 - fixtures
    child_pair,
    fact,
    kernel_modules,
    sites,
    snmp,
)
from tests.netns import packet_tap, read_ipv4
from vpn_gw.dataplane.xfrm import netlink as nl
from vpn_gw.dataplane.xfrm.backend import XfrmDataPlane, overhead_for
from vpn_gw.dataplane.xfrm.fragmenter import CHAIN, TABLE, RedFragmenter

IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0


def _capture(ns, dev: str) -> socket.socket:
    """Every IPv4 frame in and out of ``dev``, read later with read_ipv4."""
    return packet_tap(ns.name, dev, every_frame=True)


def _outer(frames: list[dict], a, b) -> list[dict]:
    """ESP between the gateways, and anything else between them that is a fragment."""
    wans = {a.wan, b.wan}
    return [f for f in frames if {f["src"], f["dst"]} == wans]


def _udp(ns_name: str, bind: tuple | None = None) -> socket.socket:
    def opener():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        if bind:
            s.bind(bind)
        return s
    return nl._open_in_netns(ns_name, opener)


def _udp_once(a, b, port: int, size: int = 3000) -> tuple[bytes | None, bytes]:
    """One DF-clear UDP datagram of ``size`` bytes (IP packet) from host-a to host-b."""
    rx = _udp(b.host.name, (b.host_ip, port))
    rx.settimeout(5)
    tx = _udp(a.host.name)
    payload = os.urandom(size - 28)
    try:
        tx.sendto(payload, (b.host_ip, port))
        try:
            return rx.recv(65535), payload
        except TimeoutError:
            return None, payload
    finally:
        tx.close()
        rx.close()


def _rules(ns) -> str:
    return ns.run(["nft", "list", "ruleset"], check=False).stdout


def test_policy_based_red_side_fragmentation_nfqueue(sites):  # noqa: F811 - pytest injects the imported fixture
    router, a, b = sites
    dpa = XfrmDataPlane(netns=a.gw.name, fragmenter=RedFragmenter(netns=a.gw.name))
    dpb = XfrmDataPlane(netns=b.gw.name, fragmenter=RedFragmenter(netns=b.gw.name))
    dpa.open()
    dpb.open()
    cap = None
    try:
        dpa.fragmenter.serve_in_thread()
        dpb.fragmenter.serve_in_thread()
        ev_a, ev_b = child_pair(a, b, a.lan, b.lan, encr=12, bits=256, integ=12)
        dpa.install_child(ev_a)
        dpb.install_child(ev_b)
        a.host.wait_ping(b.host_ip, timeout=10)
        mtu = tunnel_mtu(1500, 4, overhead_for(12, 12))
        rules_a = _rules(a.gw)
        cap = _capture(router, "toa")
        read_ipv4(cap)
        gw_b_reasm, host_b_reasm = snmp(b.gw, "ReasmOKs"), snmp(b.host, "ReasmOKs")

        # A 4000-byte ping without DF both ways (host-a sends 3 link fragments; each that
        # exceeds the tunnel MTU is fragmented further by gw-a, the reply likewise by gw-b).
        big = a.host.run(["ping", "-n", "-c", "2", "-W", "3", "-M", "dont", "-s", str(4000 - 28), b.host_ip],
                         check=False)
        # A 3000-byte UDP datagram without DF, checked byte for byte.
        got, payload = _udp_once(a, b, 5001)
        # Locally generated (gw-a's LAN address is in the local selector): the stack hands the
        # whole datagram to XFRM (its fragments are only cut after encryption), so the output
        # hook queues it too.
        local = a.gw.run(["ping", "-n", "-c", "1", "-W", "3", "-M", "dont", "-I", a.gw_lan, "-s", str(3000 - 28),
                          b.host_ip], check=False)
        time.sleep(0.5)
        frames = _outer(read_ipv4(cap), a, b)
        gw_b_reasm2, host_b_reasm2 = snmp(b.gw, "ReasmOKs"), snmp(b.host, "ReasmOKs")

        # DF set and too big for the tunnel: ICMP "fragmentation needed" with the tunnel MTU.
        df = a.host.run(["ping", "-n", "-c", "1", "-W", "3", "-M", "do", "-s", "1472", b.host_ip], check=False)
        learnt = a.host.ip("route", "get", b.host_ip)
        df_fit = a.host.run(["ping", "-n", "-c", "1", "-W", "3", "-M", "do", "-s", str(mtu - 28), b.host_ip],
                            check=False)
        # DF set from the gateway itself: the socket is refused with the tunnel MTU.
        local_df = a.gw.run(["ping", "-n", "-c", "1", "-W", "3", "-M", "do", "-I", a.gw_lan, "-s", "1472", b.host_ip],
                            check=False)
        counters_a, counters_b = dict(dpa.fragmenter.counters), dict(dpb.fragmenter.counters)

        # Conntrack active in gw-a: its defragmenter reassembles host-a's link fragments before the
        # forward hook (the queue sees the whole 3000-byte datagram), and IP_NODEFRAG keeps it from
        # reassembling the re-injected fragments on output.
        a.gw.run(["nft", "-f", "-"], input="table ip ct_test {\n chain pre {\n type filter hook prerouting "
                                           "priority 0; ct state new counter\n }\n}\n")
        a.host.ip("route", "flush", "cache")
        read_ipv4(cap)
        ct_got, ct_payload = _udp_once(a, b, 5002)
        time.sleep(0.3)
        ct_frames = _outer(read_ipv4(cap), a, b)
        ct_counters = dict(dpa.fragmenter.counters)
        a.gw.run(["nft", "delete", "table", "ip", "ct_test"])

        # Fail-open: gw-a's reader stops, the rule stays (bypass): still delivered, but now the
        # kernel fragments the ESP packet (what the queue is there to avoid).
        dpa.fragmenter.stop_reading()
        a.host.ip("route", "flush", "cache")
        read_ipv4(cap)
        unread = a.host.run(["ping", "-n", "-c", "1", "-W", "3", "-M", "dont", "-s", str(3000 - 28), b.host_ip],
                            check=False)
        time.sleep(0.3)
        unread_frames = _outer(read_ipv4(cap), a, b)
        esp = [f for f in frames if f["proto"] == 50]
        outer_frags = [f for f in frames if f["mf"] or f["off"]]
        fact("nfqueue", {
            "mtu": mtu, "backend": dpa.fragmenter.backend, "rules_a": rules_a, "big_ping_rc": big.returncode,
            "big_ping_out": big.stdout.strip()[-200:], "udp_intact": got == payload,
            "udp_len": None if got is None else len(got), "local_ping_rc": local.returncode,
            "esp_packets": len(esp), "esp_max_len": max((f["len"] for f in esp), default=0),
            "outer_fragments": len(outer_frags), "gw_b_reasm": gw_b_reasm2 - gw_b_reasm,
            "host_b_reasm": host_b_reasm2 - host_b_reasm, "counters_a": counters_a, "counters_b": counters_b,
            "df_ping_rc": df.returncode, "df_ping_out": (df.stdout + df.stderr).strip()[-300:],
            "route_learnt": learnt.strip(), "df_fit_rc": df_fit.returncode,
            "local_df_rc": local_df.returncode, "local_df_out": (local_df.stdout + local_df.stderr).strip()[-300:],
            "unread_ping_rc": unread.returncode,
            "conntrack": {"udp_intact": ct_got == ct_payload, "esp": sum(1 for f in ct_frames if f["proto"] == 50),
                          "outer_fragments": sum(1 for f in ct_frames if f["mf"] or f["off"]),
                          "fragmented": ct_counters["fragmented"] - counters_a["fragmented"]},
            "unread_outer_fragments": sum(1 for f in unread_frames if f["mf"] or f["off"])})
        assert big.returncode == 0, big.stdout
        assert got == payload
        assert local.returncode == 0
        assert len(esp) >= 20 and not outer_frags, outer_frags
        assert max(f["len"] for f in esp) <= 1500
        assert gw_b_reasm2 == gw_b_reasm and host_b_reasm2 - host_b_reasm >= 3
        # host-a's 1500-byte link fragments of both pings and of the UDP datagram, gw-a's own ping;
        # the replies likewise at gw-b.
        assert counters_a["fragmented"] >= 7 and counters_b["fragmented"] >= 6
        assert df.returncode != 0 and f"mtu {mtu}" in learnt, (df.stdout, learnt)
        assert df_fit.returncode == 0
        assert local_df.returncode != 0 and f"mtu={mtu}" in (local_df.stdout + local_df.stderr).replace(" ", "")
        assert ct_got == ct_payload and not any(f["mf"] or f["off"] for f in ct_frames)
        assert ct_counters["fragmented"] == counters_a["fragmented"] + 1  # one whole datagram queued
        assert unread.returncode == 0
    finally:
        if cap is not None:
            cap.close()
        dpa.shutdown()
        dpb.shutdown()
    left = {"a": _rules(a.gw), "b": _rules(b.gw)}
    fact("nfqueue_cleanup", left)
    assert all(TABLE not in r and CHAIN not in r for r in left.values()), left


def test_policy_based_ipv6_packet_too_big_from_kernel(sites):  # noqa: F811 - pytest injects the imported fixture
    """IPv6 inner traffic needs no queue: routers never fragment IPv6, and the kernel answers
    "packet too big" with the bundle's MTU (ip6_forward) before the forward hook."""
    router, a, b = sites
    a6, b6 = "2001:db8:1::/64", "2001:db8:2::/64"
    a.gw.add_addr("lan", "2001:db8:1::1/64")
    a.host.add_addr("eth0", "2001:db8:1::2/64")
    b.gw.add_addr("lan", "2001:db8:2::1/64")
    b.host.add_addr("eth0", "2001:db8:2::2/64")
    a.host.ip("-6", "route", "add", "default", "via", "2001:db8:1::1")
    b.host.ip("-6", "route", "add", "default", "via", "2001:db8:2::1")
    a.gw.ip("-6", "route", "add", b6, "dev", "wan")  # any route: the XFRM bundle replaces it
    b.gw.ip("-6", "route", "add", a6, "dev", "wan")
    dpa = XfrmDataPlane(netns=a.gw.name, fragmenter=RedFragmenter(netns=a.gw.name))
    dpb = XfrmDataPlane(netns=b.gw.name, fragmenter=RedFragmenter(netns=b.gw.name))
    dpa.open()
    dpb.open()
    cap = None
    try:
        ev_a, ev_b = child_pair(a, b, a6, b6, encr=12, bits=256, integ=12)
        dpa.install_child(ev_a)
        dpb.install_child(ev_b)
        a.host.wait_ping("2001:db8:2::2", timeout=10)
        mtu = tunnel_mtu(1500, 4, overhead_for(12, 12))
        cap = _capture(router, "toa")
        read_ipv4(cap)
        big = a.host.run(["ping", "-6", "-n", "-c", "1", "-W", "3", "-s", "1452", "2001:db8:2::2"], check=False)
        learnt = a.host.ip("-6", "route", "get", "2001:db8:2::2")
        again = a.host.run(["ping", "-6", "-n", "-c", "2", "-W", "3", "-s", "3000", "2001:db8:2::2"], check=False)
        time.sleep(0.3)
        frames = _outer(read_ipv4(cap), a, b)
        fact("nfqueue_ipv6", {"mtu": mtu, "big_rc": big.returncode, "big_out": (big.stdout + big.stderr)[-300:],
                              "learnt": learnt.strip(), "again_rc": again.returncode,
                              "esp_packets": sum(1 for f in frames if f["proto"] == 50),
                              "outer_fragments": sum(1 for f in frames if f["mf"] or f["off"]),
                              "rules_a": _rules(a.gw), "queued_a": dpa.fragmenter.counters["queued"]})
        assert big.returncode != 0 and f"mtu {mtu}" in learnt, (big.stdout, learnt)
        assert again.returncode == 0
        assert not any(f["mf"] or f["off"] for f in frames)
        assert "queue" not in _rules(a.gw)  # IPv6 selectors: no rule
    finally:
        if cap is not None:
            cap.close()
        dpa.shutdown()
        dpb.shutdown()
