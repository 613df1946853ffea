"""vpn_gw.dataplane.xfrm.fragmenter on this machine's kernel: the NFQUEUE path on forwarded clear traffic.

No ESP here (tests/kernel_guest has it), so the "tunnel" is only the fragmenter's rule; what is
checked is the queue path itself:

    ha 10.1.0.2 --(MTU 9000)-- 10.1.0.1 gw 10.2.0.1 --(MTU 1500)-- 10.2.0.2 hb

* a 3000-byte DF-clear UDP datagram leaves gw as fragments of at most the tunnel MTU (1400) and
  arrives intact;
* a DF-set 1450-byte one (it fits the link, not the tunnel) comes back as ICMP "fragmentation
  needed" with MTU 1400;
* traffic outside the selectors, or small enough, is left alone;
* reader stopped: with ``bypass`` (fail-open) the datagram still arrives (the kernel fragments it
  as usual), without (fail-closed) it is dropped;
* the table is gone after close(), and a leftover one is removed at open().
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest

from ikev2.payloads import TrafficSelector
from tests.netns import NetnsGroup, packet_tap, read_ipv4, require_root
from vpn_gw.dataplane.xfrm import netlink as nl
from vpn_gw.dataplane.xfrm.backend import XfrmDataPlane
from vpn_gw.dataplane.xfrm.fragmenter import CHAIN, TABLE, RedFragmenter

pytestmark = pytest.mark.netns
try:  # never skipped: scripts/setup.sh installs the extra, and the feature must be tested
    import netfilterqueue  # noqa: F401
except ImportError:
    pytest.fail("the nfqueue extra (netfilterqueue) is not installed: pip install -e '.[nfqueue]' "
                "(needs libnetfilter-queue-dev; scripts/setup.sh does both)", pytrace=False)

MTU = 1400
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 10, 0, 2


@pytest.fixture
def net():
    require_root()
    grp = NetnsGroup("nfq")
    try:
        ha, gw, hb = grp.add("ha"), grp.add("gw", forwarding=True), grp.add("hb")
        grp.veth(ha, "eth0", gw, "lan", a_addrs=["10.1.0.2/24"], b_addrs=["10.1.0.1/24"], mtu=9000)
        grp.veth(gw, "out", hb, "eth0", a_addrs=["10.2.0.1/24"], b_addrs=["10.2.0.2/24"], mtu=1500)
        ha.ip("route", "add", "default", "via", "10.1.0.1")
        hb.ip("route", "add", "default", "via", "10.2.0.1")
        for ns, dev in ((gw, "lan"), (gw, "out"), (ha, "eth0"), (hb, "eth0")):
            ns.run(["ethtool", "-K", dev, "gro", "off", "gso", "off", "tso", "off"], check=False)
        yield ha, gw, hb
    finally:
        grp.close()
        assert grp.leftovers() == []


def _ts(net: str) -> list:
    return [TrafficSelector.from_network(net)]


def _sock(ns, kind, proto=0, **bind):
    def opener():
        s = socket.socket(*kind, proto)
        return s
    return nl._open_in_netns(ns.name, opener)


def _capture(ns, dev: str) -> socket.socket:
    return packet_tap(ns.name, dev)


def _udp_pair(ha, hb, df: bool, port: int):
    rx = _sock(hb, (socket.AF_INET, socket.SOCK_DGRAM))
    rx.bind(("10.2.0.2", port))
    rx.settimeout(3)
    tx = _sock(ha, (socket.AF_INET, socket.SOCK_DGRAM))
    tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)
    return tx, rx


def _send_and_capture(ha, gw, hb, size: int, df: bool, port: int):
    """Send one datagram of ``size`` bytes of IP packet from ha to hb; what hb received, the
    IPv4 packets gw sent on "out" (as hb's eth0 received them), and those ha received."""
    tx, rx = _udp_pair(ha, hb, df, port)
    cap_out, cap_ha = _capture(hb, "eth0"), _capture(ha, "eth0")
    payload = os.urandom(size - 28)
    try:
        read_ipv4(cap_out), read_ipv4(cap_ha)
        tx.sendto(payload, ("10.2.0.2", port))
        try:
            got = rx.recv(65535)
        except TimeoutError:
            got = None
        time.sleep(0.3)
        wire = read_ipv4(cap_out)
        back = read_ipv4(cap_ha)
        return payload, got, [w for w in wire if w["src"] == "10.1.0.2"], back
    finally:
        for s in (tx, rx, cap_out, cap_ha):
            s.close()


def _nft_tables(gw) -> str:
    """Our table (nft) or our chain (iptables-nft) if still there."""
    return gw.run(["nft", "list", "ruleset"]).stdout


def test_fragment_df_clear_icmp_df_set_and_cleanup(net):
    ha, gw, hb = net
    gw.run(["nft", "-f", "-"], input=f"add table ip {TABLE}\nadd chain ip {TABLE} stale\n")  # a crashed run's table
    frag = RedFragmenter(queue_num=7, fail_open=True, netns=gw.name)
    try:
        frag.serve_in_thread()
        assert "stale" not in gw.run(["nft", "list", "table", "ip", TABLE], check=False).stdout
        assert frag.add("child", _ts("10.1.0.0/24"), _ts("10.2.0.0/24"), MTU)
        rules = gw.run(["nft", "list", "ruleset"]).stdout  # nft, or iptables-nft where nft_queue is missing
        assert "queue num 7" in rules and "1401-4016" in rules, rules

        # DF clear, 3000 bytes: fragments of at most MTU leave gw, the datagram arrives intact.
        payload, got, wire, _ = _send_and_capture(ha, gw, hb, 3000, df=False, port=5001)
        assert got == payload
        assert len(wire) >= 3 and all(w["len"] <= MTU for w in wire), wire
        assert sum(1 for w in wire if w["mf"]) == len(wire) - 1 and wire[0]["off"] == 0
        assert sum(w["len"] - 20 for w in wire) == 3000 - 20
        assert frag.counters["fragmented"] == 1 and frag.counters["fragments_sent"] == len(wire)

        # Locally generated (gw's own 10.1.0.1 is in the local selector): the output hook.
        tx, rx = _udp_pair(gw, hb, False, 5005)
        tx.bind(("10.1.0.1", 0))
        cap = _capture(hb, "eth0")
        try:
            payload = os.urandom(3000 - 28)
            tx.sendto(payload, ("10.2.0.2", 5005))
            got = rx.recv(65535)
            time.sleep(0.3)
            wire = [w for w in read_ipv4(cap) if w["src"] == "10.1.0.1"]
        finally:
            for s in (tx, rx, cap):
                s.close()
        assert got == payload and len(wire) == 3 and all(w["len"] <= MTU for w in wire), wire
        assert frag.counters["fragmented"] == 2

        # DF set, 1450 bytes (fits the 1500 link, not the tunnel): ICMP frag-needed, MTU 1400.
        payload, got, wire, back = _send_and_capture(ha, gw, hb, 1450, df=True, port=5002)
        assert got is None and wire == []
        icmp = [b for b in back if b["proto"] == 1 and b["l4"][:2] == b"\x03\x04"]
        assert len(icmp) == 1, back
        assert struct.unpack_from("!H", icmp[0]["l4"], 6)[0] == MTU
        assert icmp[0]["src"] == "10.1.0.1" and icmp[0]["dst"] == "10.1.0.2"
        assert frag.counters["icmp_sent"] == 1
        assert "mtu 1400" in ha.ip("route", "get", "10.2.0.2")  # ha learnt the tunnel MTU
        ha.ip("route", "flush", "cache")

        # Small enough: not queued at all.
        queued = frag.counters["queued"]
        payload, got, wire, _ = _send_and_capture(ha, gw, hb, MTU, df=True, port=5003)
        assert got == payload and len(wire) == 1 and frag.counters["queued"] == queued

        # Outside the selectors (hb -> ha): not queued; ha's link takes it whole.
        frag.remove("child")
        assert "queue" not in gw.run(["nft", "list", "ruleset"]).stdout
        payload, got, wire, _ = _send_and_capture(ha, gw, hb, 3000, df=False, port=5004)
        assert got == payload and frag.counters["queued"] == queued
        assert max(w["len"] for w in wire) == 1500  # the kernel's fragmentation at the link MTU
    finally:
        frag.close()
    assert TABLE not in _nft_tables(gw) and CHAIN not in _nft_tables(gw)


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail_open", "fail_closed"])
def test_reader_not_running(net, fail_open):
    ha, gw, hb = net
    frag = RedFragmenter(queue_num=8, fail_open=fail_open, netns=gw.name)
    try:
        frag.open()
        frag.add("child", _ts("10.1.0.0/24"), _ts("10.2.0.0/24"), MTU)
        frag.stop_reading()  # the table stays, nobody reads the queue
        assert ("bypass" in gw.run(["nft", "list", "ruleset"]).stdout) == fail_open
        payload, got, wire, _ = _send_and_capture(ha, gw, hb, 3000, df=False, port=5010)
        if fail_open:
            assert got == payload and max(w["len"] for w in wire) == 1500
        else:
            assert got is None and wire == []
    finally:
        frag.close()
    assert TABLE not in _nft_tables(gw) and CHAIN not in _nft_tables(gw)


def test_started_by_the_xfrm_data_plane_on_its_loop(net):
    """The daemon's way: XfrmDataPlane.start() binds the queue and reads it from the asyncio
    loop; close() removes the rules."""
    ha, gw, hb = net

    async def main():
        dp = XfrmDataPlane(netns=gw.name, fragmenter=RedFragmenter(queue_num=9), require_esp=False)
        await dp.start()
        try:
            assert dp.fragmenter is not None and dp.fragmenter.netns == gw.name
            dp.fragmenter.add("child", _ts("10.1.0.0/24"), _ts("10.2.0.0/24"), MTU)
            return await asyncio.get_running_loop().run_in_executor(
                None, _send_and_capture, ha, gw, hb, 3000, False, 5020)
        finally:
            await dp.close()
    payload, got, wire, _ = asyncio.run(main())
    assert got == payload and len(wire) == 3 and all(w["len"] <= MTU for w in wire), wire
    assert TABLE not in _nft_tables(gw) and CHAIN not in _nft_tables(gw)
