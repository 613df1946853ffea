"""Kernel ESP through vpn_gw.dataplane.xfrm, run *inside* the QEMU guest (Debian 6.1 kernel).

Collected only in the guest (tests/kernel_guest/conftest.py); tests/kernel_guest/test_kernel_guest.py
boots the guest, runs this module and asserts on the JUnit report and on ``facts.json`` written
here into the results share.

Topology (tests/netns_e2e/topology.two_sites): host-a -- gw-a -- router -- gw-b -- host-b; the
router has no route to 10/8, so host-to-host traffic passes only through a tunnel.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest

from esp.fragment import tunnel_mtu
from ikev2.events import ChildSAKeys, ChildUp
from ikev2.payloads import TrafficSelector
from tests.gateway import PYTHON, ROOT, OurGateway, connection
from tests.netns import NetnsGroup
from tests.netns_e2e.topology import two_sites
from vpn_gw.dataplane.xfrm import netlink as nl
from vpn_gw.dataplane.xfrm.backend import DEFAULT_REQID_BASE, XfrmDataPlane, overhead_for
from vpn_gw.dataplane.xfrm.sockets import prepare_ike_socket

RESULTS = Path(os.environ.get("VPN_GW_GUEST_RESULTS", "/results"))
FACTS: dict = {}


def fact(name: str, value) -> None:
    FACTS[name] = value
    (RESULTS / "facts.json").write_text(json.dumps(FACTS, indent=1, default=str))


@pytest.fixture(scope="session", autouse=True)
def kernel_modules():
    t0 = time.monotonic()
    p = subprocess.run(["modprobe", "-a", "esp4", "esp6", "xfrm_user", "xfrm_interface", "aesni_intel", "gcm",
                        "authenc", "sha256_generic", "cbc"], capture_output=True, text=True)
    fact("modprobe", {"rc": p.returncode, "stderr": p.stderr.strip(), "seconds": round(time.monotonic() - t0, 1)})
    fact("kernel", os.uname().release)
    yield


@pytest.fixture(scope="module")
def sites():
    """One topology for the whole module (building it costs ~10 s under TCG); every test
    removes what it installed, and asserts so."""
    grp = NetnsGroup("kg")
    try:
        yield two_sites(grp)
    finally:
        grp.close()


def _ts(net: str) -> list:
    return [TrafficSelector.from_network(net)]


def child_pair(a, b, a_ts: str, b_ts: str, *, encr: int = 20, bits: int = 256, integ: int | None = None,
               esn: bool = False, encap: bool = False, conn: str = "net", rekey_of=(None, None), ike_id: int = 1):
    """Matching ChildUp events for gateway a and gateway b (fresh SPIs and keys)."""
    klen = bits // 8 + (4 if encr in (20, 28) else 0)
    ilen = {None: 0, 2: 20, 12: 32, 13: 48, 14: 64}[integ]
    k_ab, k_ba = secrets.token_bytes(klen), secrets.token_bytes(klen)
    i_ab, i_ba = secrets.token_bytes(ilen), secrets.token_bytes(ilen)
    spi_a, spi_b = secrets.token_bytes(4), secrets.token_bytes(4)
    port = 4500 if encap else 500
    keys_a = ChildSAKeys(spi_a, spi_b, 3, "tunnel", encr, bits, integ, esn, k_ba, i_ba, k_ab, i_ab)
    keys_b = ChildSAKeys(spi_b, spi_a, 3, "tunnel", encr, bits, integ, esn, k_ab, i_ab, k_ba, i_ba)
    ev_a = ChildUp("child", keys_a, _ts(a_ts), _ts(b_ts), (a.wan, port), (b.wan, port), encap, "test",
                   rekey_of=rekey_of[0], ike_name=conn, ike_id=ike_id)
    ev_b = ChildUp("child", keys_b, _ts(b_ts), _ts(a_ts), (b.wan, port), (a.wan, port), encap, "test",
                   rekey_of=rekey_of[1], ike_name=conn, ike_id=ike_id)
    return ev_a, ev_b


def xfrm_json(ns, what: str) -> list:
    out = ns.run(["ip", "-j", "xfrm", what, "list"], check=False).stdout.strip()
    if not out:
        return []
    try:
        return json.loads(out)
    except ValueError:  # older iproute2 without JSON for xfrm: count blocks
        return [b for b in ns.run(["ip", "xfrm", what], check=False).stdout.split("\nsrc ") if b.strip()]


def count_xfrm(ns, what: str) -> int:
    """Number of SAs (what="state") or policies ("policy") in the namespace."""
    text = ns.run(["ip", "xfrm", what], check=False).stdout
    if what == "state":
        return sum(1 for line in text.splitlines() if line.startswith("src "))
    return sum(1 for line in text.splitlines() if line.lstrip().startswith("dir "))


def snmp(ns, key: str) -> int:
    lines = ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("Ip:"):
            d = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(d[key])
    raise KeyError(key)


def encap_socket(ns_name: str) -> socket.socket:
    """What the daemon's NAT-T socket does: bound to 4500, UDP_ENCAP_ESPINUDP, IKE bypass."""
    def opener():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 4500))
        prepare_ike_socket(s, natt=True)
        return s
    return nl._open_in_netns(ns_name, opener)


# --------------------------------------------------------------------------- policy-based


def test_policy_based_aes_gcm(sites):
    router, a, b = sites
    dpa, dpb = XfrmDataPlane(netns=a.gw.name), XfrmDataPlane(netns=b.gw.name)
    dpa.open()
    dpb.open()
    try:
        assert not a.host.ping(b.host_ip, wait=0.5)  # no tunnel: the router drops 10/8
        ev_a, ev_b = child_pair(a, b, a.lan, b.lan)
        dpa.install_child(ev_a)
        dpb.install_child(ev_b)
        a.host.wait_ping(b.host_ip, timeout=10)
        assert a.host.ping(b.host_ip, count=3, interval=0.1)
        ca, cb = dpa.counters(ev_a.keys.spi_in), dpb.counters(ev_b.keys.spi_in)
        st = dpa.sa_state(ev_a.keys.spi_in)
        aead = nl.get_attr(st["out"], "XFRMA_ALG_AEAD")
        fact("policy_based", {"counters_a": vars(ca), "counters_b": vars(cb), "reqid": st["reqid"],
                              "aead": aead["alg_name"], "icv": aead["alg_icv_len"],
                              "states_a": count_xfrm(a.gw, "state"), "policies_a": len(dpa.policies)})
        assert ca.packets_out >= 3 and ca.packets_in >= 3 and cb.packets_in >= 3
        assert st["reqid"] >= DEFAULT_REQID_BASE
        assert aead["alg_name"] == "rfc4106(gcm(aes))" and aead["alg_icv_len"] == 128
        assert st["out"]["id"]["daddr"] == b.wan and st["in"]["id"]["daddr"] == a.wan
        assert len(dpa.policies) == 3  # out, in, fwd
        # A NAT appears (IKE moved to 4500): the SAs move to UDP encapsulation, keeping their
        # sequence numbers and counters.
        socks = [encap_socket(a.gw.name), encap_socket(b.gw.name)]
        try:
            dpa.update_addresses(1, (a.wan, 4500), (b.wan, 4500), encap=True)
            dpb.update_addresses(1, (b.wan, 4500), (a.wan, 4500), encap=True)
            assert a.host.ping(b.host_ip, count=3, interval=0.1)
            moved = dpa.counters(ev_a.keys.spi_in)
            st2 = dpa.sa_state(ev_a.keys.spi_in)
            enc = nl.get_attr(st2["out"], "XFRMA_ENCAP")
            oseq = nl.get_attr(st2["out"], "XFRMA_REPLAY_ESN_VAL")["oseq"]
            fact("policy_based_moved", {"counters": vars(moved), "encap": dict(enc) if enc else None, "oseq": oseq})
            assert enc and enc["encap_dport"] == 4500
            assert moved.packets_out >= ca.packets_out + 3 and oseq == moved.packets_out
        finally:
            for s_ in socks:
                s_.close()
    finally:
        dpa.shutdown()
        dpb.shutdown()
    left = {"states_a": count_xfrm(a.gw, "state"), "states_b": count_xfrm(b.gw, "state"),
            "policies_a": a.gw.run(["ip", "xfrm", "policy"]).stdout.strip(),
            "policies_b": b.gw.run(["ip", "xfrm", "policy"]).stdout.strip()}
    fact("policy_based_cleanup", left)
    assert left == {"states_a": 0, "states_b": 0, "policies_a": "", "policies_b": ""}
    assert not a.host.ping(b.host_ip, wait=0.5)


def test_policy_based_rekey_without_loss(sites):
    router, a, b = sites
    dpa, dpb = XfrmDataPlane(netns=a.gw.name), XfrmDataPlane(netns=b.gw.name)
    dpa.open()
    dpb.open()
    try:
        old_a, old_b = child_pair(a, b, a.lan, b.lan, encr=12, bits=128, integ=12, esn=True)
        dpa.install_child(old_a)
        dpb.install_child(old_b)
        a.host.wait_ping(b.host_ip, timeout=10)
        ping = a.host.popen(["ping", "-n", "-q", "-i", "0.02", "-c", "150", b.host_ip],
                            stdout=subprocess.PIPE, text=True)
        time.sleep(0.6)
        new_a, new_b = child_pair(a, b, a.lan, b.lan, rekey_of=(old_a.keys.spi_in, old_b.keys.spi_in))
        # As in CREATE_CHILD_SA: the responder installs first, the initiator on the response;
        # the old SAs go when the DELETE exchange completes (responder first).
        dpb.install_child(new_b)
        time.sleep(0.2)
        dpa.install_child(new_a)
        time.sleep(0.2)
        dpb.remove_child(old_b.keys.spi_in, old_b.keys.spi_out)
        time.sleep(0.2)
        dpa.remove_child(old_a.keys.spi_in, old_a.keys.spi_out)
        out, _ = ping.communicate(timeout=60)
        summary = next((line for line in out.splitlines() if "packets transmitted" in line), out)
        ca = dpa.counters(new_a.keys.spi_in)
        in_grace = count_xfrm(a.gw, "state")  # the old inbound SA lives on for rekey_grace
        time.sleep(dpa.rekey_grace + 0.1)
        dpa.reap_deferred()
        fact("rekey", {"ping": summary, "new_counters_a": vars(ca), "states_in_grace": in_grace,
                       "states_after": count_xfrm(a.gw, "state"), "policies_a": len(dpa.policies)})
        assert " 0% packet loss" in summary, summary
        assert ca.packets_out > 0 and ca.packets_in > 0  # traffic moved to the new SAs
        assert in_grace == 3 and count_xfrm(a.gw, "state") == 2 and len(dpa.policies) == 3
    finally:
        dpa.shutdown()
        dpb.shutdown()


def test_leftovers_removed_others_untouched(sites):
    router, a, b = sites
    # Someone else's SA and policy (reqid 7, like strongSwan's): must survive everything below.
    a.gw.ip("xfrm", "state", "add", "src", a.wan, "dst", b.wan, "proto", "esp", "spi", "0x00001234", "reqid", "7",
            "mode", "tunnel", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128")
    a.gw.ip("xfrm", "policy", "add", "src", "10.77.0.0/24", "dst", "10.78.0.0/24", "dir", "out", "tmpl", "src", a.wan,
            "dst", b.wan, "proto", "esp", "reqid", "7", "mode", "tunnel")
    crashed = XfrmDataPlane(netns=a.gw.name)
    crashed.open()
    ev_a, _ = child_pair(a, b, a.lan, b.lan)
    crashed.install_child(ev_a)
    crashed.ensure_interface("ipsec-left")
    before = (count_xfrm(a.gw, "state"), "ipsec-left" in a.gw.links())
    crashed._close_sockets()  # "crash": sockets gone, nothing removed
    fresh = XfrmDataPlane(netns=a.gw.name)
    fresh.open()
    removed = dict(fresh.sweep_leftovers())  # already swept by open(): nothing more to do
    after_states = a.gw.run(["ip", "xfrm", "state"]).stdout
    after_policies = a.gw.run(["ip", "xfrm", "policy"]).stdout
    fresh.shutdown()
    fact("leftovers", {"before": before, "second_sweep": removed, "states": after_states, "policies": after_policies,
                       "links": a.gw.links()})
    assert before == (3, True)
    assert removed == {"sas": 0, "policies": 0, "links": 0}
    a.gw.ip("xfrm", "state", "delete", "src", a.wan, "dst", b.wan, "proto", "esp", "spi", "0x00001234")
    a.gw.ip("xfrm", "policy", "delete", "src", "10.77.0.0/24", "dst", "10.78.0.0/24", "dir", "out")
    assert "spi 0x00001234" in after_states
    assert sum(1 for line in after_states.splitlines() if line.startswith("src ")) == 1
    assert "10.77.0.0/24" in after_policies and "reqid 7" in after_policies
    assert sum(1 for line in after_policies.splitlines() if line.lstrip().startswith("dir ")) == 1
    assert "ipsec-left" not in a.gw.links()


# --------------------------------------------------------------------------- route-based


def test_route_based_espinudp_red_side_fragmentation(sites):
    router, a, b = sites
    socks = [encap_socket(a.gw.name), encap_socket(b.gw.name)]
    dpa = XfrmDataPlane(netns=a.gw.name, interface_for=lambda c: "ipsec-a", if_id_for=lambda n: 41)
    dpb = XfrmDataPlane(netns=b.gw.name, interface_for=lambda c: "ipsec-b", if_id_for=lambda n: 42)
    dpa.open()
    dpb.open()
    try:
        dpa.ensure_interface("ipsec-a")
        dpb.ensure_interface("ipsec-b")
        a.gw.ip("route", "add", b.lan, "dev", "ipsec-a")
        b.gw.ip("route", "add", a.lan, "dev", "ipsec-b")
        ev_a, ev_b = child_pair(a, b, "0.0.0.0/0", "0.0.0.0/0", encr=12, bits=256, integ=12, encap=True)
        dpa.install_child(ev_a)
        dpb.install_child(ev_b)
        a.host.wait_ping(b.host_ip, timeout=10)
        st = dpa.sa_state(ev_a.keys.spi_in)
        encap = nl.get_attr(st["out"], "XFRMA_ENCAP")
        link = a.gw.ip_json("link", "show", "ipsec-a")[0]
        want_mtu = tunnel_mtu(1500, 4, overhead_for(12, 12), udp_encap=True)
        # Red-side fragmentation: a 1472-byte ping (1500-byte packet) without DF is fragmented
        # by gw-a before encryption (interface MTU), so gw-b never reassembles outer packets.
        gw_b_reasm, host_b_reasm = snmp(b.gw, "ReasmOKs"), snmp(b.host, "ReasmOKs")
        big = a.host.run(["ping", "-n", "-c", "2", "-W", "2", "-M", "dont", "-s", "1472", b.host_ip], check=False)
        gw_b_reasm2, host_b_reasm2 = snmp(b.gw, "ReasmOKs"), snmp(b.host, "ReasmOKs")
        df = a.host.run(["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", b.host_ip], check=False)
        df2 = a.host.run(["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", str(want_mtu - 28), b.host_ip],
                         check=False)
        ca = dpa.counters(ev_a.keys.spi_in)
        fact("route_based", {
            "if_id_sa": nl.get_attr(st["out"], "XFRMA_IF_ID"), "encap": dict(encap) if encap else None,
            "mtu": link["mtu"], "want_mtu": want_mtu, "counters_a": vars(ca),
            "big_ping_rc": big.returncode, "gw_b_reasm": gw_b_reasm2 - gw_b_reasm,
            "host_b_reasm": host_b_reasm2 - host_b_reasm, "df_ping_rc": df.returncode,
            "df_ping_out": (df.stdout + df.stderr).strip()[-300:], "df_fit_rc": df2.returncode,
            "policies": a.gw.run(["ip", "xfrm", "policy"]).stdout})
        assert nl.get_attr(st["out"], "XFRMA_IF_ID") == 41
        assert encap["encap_type"] == nl.UDP_ENCAP_ESPINUDP and encap["encap_dport"] == 4500
        assert link["mtu"] == want_mtu
        assert big.returncode == 0
        assert gw_b_reasm2 == gw_b_reasm and host_b_reasm2 - host_b_reasm >= 2
        assert df.returncode != 0 and df2.returncode == 0
        assert ca.packets_out >= 6 and ca.packets_in >= 6
    finally:
        dpa.shutdown()
        dpb.shutdown()
        for s in socks:
            s.close()
    fact("route_based_cleanup", {"links_a": a.gw.links(), "states_a": count_xfrm(a.gw, "state")})
    assert "ipsec-a" not in a.gw.links() and count_xfrm(a.gw, "state") == 0


def test_expire_and_acquire_events(sites):
    router, a, b = sites
    dpa = XfrmDataPlane(netns=a.gw.name)
    dpa.open()
    got: list = []
    dpa.on_event = lambda kind, info: got.append((kind, info))
    acquired: list = []
    dpa.on_acquire = acquired.append
    try:
        # EXPIRE: an SA of ours with a 1-second soft and 5-second hard lifetime. The kernel's
        # state timer first runs ~1 s after the add; if it runs only after the hard lifetime it
        # goes straight to the hard expire without a soft one (xfrm_timer_handler). Under the
        # emulated guest a timer was once that late with a 2-second hard lifetime (stop 21).
        reqid = DEFAULT_REQID_BASE + 0x999
        dpa.xfrm.add_sa({"id": {"daddr": b.wan, "spi": 0x4242, "proto": 50}, "saddr": a.wan, "family": 2,
                         "mode": 1, "reqid": reqid, "flags": nl.XFRM_STATE_AF_UNSPEC,
                         "lft": {"soft_add_expires_seconds": 1, "hard_add_expires_seconds": 5}},
                        [("XFRMA_ALG_AEAD", {"alg_name": "rfc4106(gcm(aes))", "alg_icv_len": 128,
                                             "alg_key": bytes(20)})])
        # ACQUIRE: a trap for "net" (policies without SAs), then traffic that matches them.
        dpa.endpoints_for = lambda conn: (a.wan, b.wan)
        dpa.install_trap("net", _ts(a.lan), _ts(b.lan))
        a.host.ping(b.host_ip, wait=0.5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not ({"acquire"} <= {k for k, _ in got}
                                                   and sum(1 for k, i in got if k == "expire") >= 2):
            dpa.poll_events()
            time.sleep(0.1)
        fact("events", [(k, i) for k, i in got])
        kinds = [(k, i.get("hard")) for k, i in got]
        assert ("expire", False) in kinds and ("expire", True) in kinds
        assert acquired == ["net"]
    finally:
        dpa.shutdown()


# --------------------------------------------------------------------------- ours to ours (IKE)


class KernelGateway(OurGateway):
    """`vpn-gw run` with ``dataplane = "xfrm"``; requests go through the control socket from
    this process (a CLI process per call costs seconds under TCG)."""

    def __init__(self, *args, gateway: dict | None = None, **kw):
        super().__init__(*args, gateway={"dataplane": "xfrm", "retransmit_timeout": 2.0, **(gateway or {})}, **kw)

    def start_nowait(self):
        fh = open(self.log, "w")
        self.proc = self.ns.popen([PYTHON, "-m", "vpn_gw", "run", "-c", str(self.config), "--log-format", "json",
                                   "--log-level", "debug"], stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT))
        fh.close()
        return self

    def wait_started(self, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not start\n{self.log_tail()}")
            time.sleep(0.2)

    def up(self, name: str):
        return self.control("up", name=name, timeout=60)

    def down(self, name: str):
        return self.control("down", name=name)

    def status(self):
        return self.control("status")

    def events(self, event: str) -> list[dict]:
        return [e for e in self.log_lines() if e.get("event") == event]


def extra_subnets(a, b) -> None:
    """10.11.0.0/24 behind a and 10.12.0.0/24 behind b (for route-based connections)."""
    for ns, addr in ((a.gw, "10.11.0.1/24"), (a.host, "10.11.0.2/24"), (b.gw, "10.12.0.1/24"),
                     (b.host, "10.12.0.2/24")):
        ns.ip("addr", "replace", addr, "dev", "lan" if ns in (a.gw, b.gw) else "eth0")


def test_ours_to_ours_ike_policy_and_route_based(sites, tmp_path):
    """Two of our daemons (`vpn-gw run`, dataplane = "xfrm"): a policy-based connection with
    plain ESP and a route-based one with forced UDP encapsulation, between the same gateways.
    The route-based one carries IPv4 and IPv6 (0.0.0.0/0 and ::/0 policies with the if_id),
    with its routes from the config."""
    router, a, b = sites
    extra_subnets(a, b)

    def conns(me, peer, me_tag, peer_tag, peer_net, peer_net6):
        pol = connection("pol", me.wan, peer.wan, f"{me_tag}-pol.example.org", f"{peer_tag}-pol.example.org",
                         local_ts=me.lan, remote_ts=peer.lan)
        rb = connection("rb", me.wan, peer.wan, f"{me_tag}-rb.example.org", f"{peer_tag}-rb.example.org",
                        local_ts=["0.0.0.0/0", "::/0"], remote_ts=["0.0.0.0/0", "::/0"], esp="aes128-sha256",
                        interface=f"ipsec-{me_tag}", if_id=50 if me_tag == "a" else 60, encap=True,
                        routes=[peer_net, peer_net6])
        return [pol, rb]
    # IPv6 inside the route-based tunnel (outer IPv4): ::/0 policies with the if_id
    for ns, addr, dev in ((a.gw, "2001:db8:11::1/64", "lan"), (a.host, "2001:db8:11::2/64", "eth0"),
                          (b.gw, "2001:db8:12::1/64", "lan"), (b.host, "2001:db8:12::2/64", "eth0")):
        ns.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=False)
        ns.ip("addr", "replace", addr, "dev", dev, "nodad")
    a.host.run(["ip", "-6", "route", "replace", "2001:db8:12::/64", "via", "2001:db8:11::1"])
    b.host.run(["ip", "-6", "route", "replace", "2001:db8:11::/64", "via", "2001:db8:12::1"])
    t0 = time.monotonic()
    ga = KernelGateway(a.gw, tmp_path, "a", conns(a, b, "a", "b", "10.12.0.0/24", "2001:db8:12::/64"), listen=[a.wan])
    gb = KernelGateway(b.gw, tmp_path, "b", conns(b, a, "b", "a", "10.11.0.0/24", "2001:db8:11::/64"), listen=[b.wan])
    try:
        ga.start_nowait()
        gb.start_nowait()
        ga.wait_started()
        gb.wait_started()
        started = time.monotonic() - t0
        routes_a = a.gw.run(["ip", "route"]).stdout + a.gw.run(["ip", "-6", "route"]).stdout
        assert "10.12.0.0/24 dev ipsec-a" in routes_a and "2001:db8:12::/64 dev ipsec-a" in routes_a, routes_a
        ga.up("pol")
        ga.up("rb")
        ga.wait_children(2, timeout=30)
        gb.wait_children(2, timeout=30)
        a.host.wait_ping(b.host_ip, timeout=10)
        a.host.wait_ping("10.12.0.2", timeout=10, src="10.11.0.2")
        assert a.host.ping(b.host_ip, count=3, interval=0.1)
        assert a.host.ping("10.12.0.2", count=3, interval=0.1, src="10.11.0.2")
        a.host.wait_ping("2001:db8:12::2", timeout=10)
        policies_a = a.gw.run(["ip", "xfrm", "policy"]).stdout
        assert "src ::/0 dst ::/0" in policies_a and "if_id 0x32" in policies_a, policies_a
        by_conn = {sa["name"]: (sa, c) for sa, c in ga.children()}
        states = a.gw.run(["ip", "xfrm", "state"]).stdout
        fact("ours_to_ours", {
            "startup_seconds": round(started, 1),
            "children": {n: {"local_port": sa["local_port"], "encap": c["encap"], "packets_in": c["packets_in"],
                             "packets_out": c["packets_out"], "spi_in": c["spi_in"]} for n, (sa, c) in by_conn.items()},
            "states": states})
        pol_sa, pol_c = by_conn["pol"]
        rb_sa, rb_c = by_conn["rb"]
        assert pol_c["packets_out"] >= 3 and pol_c["packets_in"] >= 3
        assert rb_c["packets_out"] >= 3 and rb_c["packets_in"] >= 3
        assert rb_c["encap"] and "espinudp" in states
        assert pol_c["spi_in"] in states.replace("0x", "")
        ga.down("pol")
        ga.down("rb")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and count_xfrm(a.gw, "state") + count_xfrm(b.gw, "state"):
            time.sleep(0.2)
        assert count_xfrm(a.gw, "state") == 0 and count_xfrm(b.gw, "state") == 0
    finally:
        ga.stop()
        gb.stop()
        fact("ours_to_ours_logs", {"a": ga.log_tail(15), "b": gb.log_tail(15)})
    fact("ours_to_ours_after_stop", {"policies_a": a.gw.run(["ip", "xfrm", "policy"]).stdout,
                                     "links_a": a.gw.links()})
    assert a.gw.run(["ip", "xfrm", "policy"]).stdout.strip() == ""
    assert "ipsec-a" not in a.gw.links()


# --------------------------------------------------------------------------- rekey under load, MOBIKE


def _udp_stream(client, server, server_ip: str, *, mbit: int, seconds: float, port: int) -> dict:
    from tests.netns_e2e.tools import iperf3
    return iperf3(client, server, server_ip, seconds=seconds, port=port,
                  extra=["-u", "-b", f"{mbit}M", "-l", "1200"])


def test_ours_rekey_under_load_and_mobike_migrate(sites, tmp_path):
    """Our daemons over kernel ESP: a Child SA rekey in the middle of a UDP stream loses no more
    than the packets in flight; then gateway a's address changes and MOBIKE moves the SAs with
    XFRM_MSG_MIGRATE on both sides: same SPIs, new addresses, traffic flows again, no rekey."""
    _roaming_pair(sites, tmp_path, mobike=True, rekey_under_load=True)


def test_ours_address_adoption_migrate(sites, tmp_path):
    """The same move without MOBIKE (the hub does not offer it), route-based this time (XFRM
    interfaces, 0/0 selectors, routes from the config): gateway a sends an authenticated
    liveness check from its new address, the hub adopts the address, and both sides MIGRATE
    their kernel SAs (with the if_id). Before that, rekey_packets = 300 makes the kernel's soft
    EXPIRE rekey the Child SA."""
    _roaming_pair(sites, tmp_path, mobike=False, rekey_under_load=False)


def _roaming_pair(sites, tmp_path, *, mobike: bool, rekey_under_load: bool) -> None:
    import threading

    router, a, b = sites
    new_wan = "192.0.2.2"
    tag = "mobike" if mobike else "adoption"
    # The MOBIKE variant is policy-based, the adoption variant route-based (XFRM interfaces:
    # MIGRATE must carry the if_id), so both kinds of kernel policies move.
    route_based = not mobike
    ts_a, ts_b = ("0.0.0.0/0", "0.0.0.0/0") if route_based else (a.lan, b.lan)
    rb_a = {"interface": "xm-a", "if_id": 71, "routes": [b.lan]} if route_based else {}
    rb_b = {"interface": "xm-b", "if_id": 72, "routes": [a.lan]} if route_based else {}
    # a roams: no local_addrs (a connection pinned to an address never roams); b accepts any.
    ca = connection("m", a.wan, b.wan, "a-m.example.org", "b-m.example.org", local_ts=ts_a, remote_ts=ts_b, **rb_a)
    del ca["local_addrs"]
    if not rekey_under_load:  # a volume limit instead: the kernel's soft EXPIRE rekeys the Child SA
        ca["children"][0].update(rekey_packets=300, life_packets=1_000_000)
    # With MOBIKE the hub's address adoption is off, so UPDATE_SA_ADDRESSES alone must move it.
    cb = connection("m", b.wan, "%any", "b-m.example.org", "a-m.example.org", local_ts=ts_b, remote_ts=ts_a,
                    mobike=mobike, address_adoption=not mobike, **rb_b)
    ga = KernelGateway(a.gw, tmp_path, "ma", [ca])
    gb = KernelGateway(b.gw, tmp_path, "mb", [cb], listen=[b.wan])
    a.gw.run(["sysctl", "-qw", "net.ipv4.conf.wan.promote_secondaries=1"])
    try:
        ga.start_nowait()
        gb.start_nowait()
        ga.wait_started()
        gb.wait_started()
        ga.up("m")
        ((_, c0),) = ga.wait_children(1, timeout=30)
        gb.wait_children(1, timeout=30)
        a.host.wait_ping(b.host_ip, timeout=10)

        if rekey_under_load:  # rekey in the middle of a 6 s, 4 Mbit/s UDP stream (~420 packets/s)
            rtt = a.host.run(["ping", "-c", "5", "-i", "0.2", "-q", b.host_ip]).stdout
            rtt_ms = float(rtt.rsplit("=", 1)[1].split("/")[1])
            mbit, seconds = 4, 6.0
            result: dict = {}
            t = threading.Thread(target=lambda: result.update(
                _udp_stream(a.host, b.host, b.host_ip, mbit=mbit, seconds=seconds, port=5301)))
            t.start()
            time.sleep(2.5)
            ga.control("rekey", name="m", child="net")
            t.join(timeout=seconds + 30)
            assert not t.is_alive() and "end" in result, result
            lost = result["end"]["sum"]["lost_packets"]
            sent = result["end"]["sum"]["packets"]
            after = ga.children()
            assert len(after) == 1 and after[0][1]["spi_in"] != c0["spi_in"], "no rekey happened"
            pps = mbit * 1e6 / (1200 * 8)
            in_flight = int(pps * rtt_ms / 1000) + 1
            fact("rekey_under_load", {"sent": sent, "lost": lost, "rtt_ms": rtt_ms, "in_flight": in_flight,
                                      "old_spi": c0["spi_in"], "new_spi": after[0][1]["spi_in"]})
            assert lost <= in_flight, f"{lost} of {sent} packets lost across the rekey (in flight: {in_flight})"
            assert _wait_states(a.gw, 2), a.gw.run(["ip", "xfrm", "state"]).stdout
        else:  # rekey_packets = 300 on a: ~450 packets make the kernel send one soft EXPIRE
            _udp_stream(a.host, b.host, b.host_ip, mbit=2, seconds=2.2, port=5302)

            def settled():  # exactly one Child SA left, in any state, and it is a new one
                every = [c for sa in ga.status() for c in sa["children"]]
                return len(every) == 1 and every[0]["state"] == "INSTALLED" and every[0]["spi_in"] != c0["spi_in"]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not settled():
                time.sleep(0.2)
            soft = ga.events("CHILD_SA reached its soft volume limit: rekeying")
            fact("volume_rekey", {"soft_events": len(soft), "old_spi": c0["spi_in"],
                                  "children": [c["spi_in"] for _, c in ga.children()]})
            assert soft and settled(), (len(soft), ga.status())
            assert _wait_states(a.gw, 2), a.gw.run(["ip", "xfrm", "state"]).stdout

        # --- a's address changes: MOBIKE UPDATE_SA_ADDRESSES (or a liveness check the hub
        # adopts), MIGRATE on both sides
        ((_, c1),) = ga.children()
        spis = {c1["spi_in"], c1["spi_out"]}
        packets_before = c1["packets_in"]
        a.gw.ip("addr", "add", f"{new_wan}/24", "dev", "wan")
        a.gw.ip("addr", "del", f"{a.wan}/24", "dev", "wan")
        a.gw.run(["ip", "route", "replace", "default", "via", "192.0.2.254"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sas = gb.ike_sas("m")
            if sas and sas[0]["remote_addr"] == new_wan:
                break
            time.sleep(0.2)
        a.host.wait_ping(b.host_ip, timeout=10)
        assert a.host.ping(b.host_ip, count=3, interval=0.1)
        ((_, c2),) = ga.children()
        states = {n: ns.run(["ip", "xfrm", "state"]).stdout for n, ns in (("a", a.gw), ("b", b.gw))}
        moves = {n: [(e.get("method"), e.get("local"), e.get("remote")) for e in g.events("CHILD_SA moved")]
                 for n, g in (("a", ga), ("b", gb))}
        reasons = [e.get("reason") for e in gb.events("peer address changed")]
        fact(f"{tag}_migrate", {"moves": moves, "reasons": reasons, "states": states, "ike_b": gb.ike_sas("m"),
                                "packets_in_before": packets_before, "packets_in_after": c2["packets_in"]})
        assert {c2["spi_in"], c2["spi_out"]} == spis, "the Child SA was replaced, not moved"
        assert gb.ike_sas("m")[0]["remote_addr"] == new_wan
        if mobike:
            assert "MOBIKE UPDATE_SA_ADDRESSES" in reasons, reasons
        else:
            assert "authenticated IKE request" in reasons and "MOBIKE UPDATE_SA_ADDRESSES" not in reasons, reasons
        for n in ("a", "b"):
            assert moves[n] and all(m[0] == "migrate" for m in moves[n]), moves
            assert f"src {new_wan} " in states[n] or f"dst {new_wan}" in states[n], states[n]
            assert f"src {a.wan} " not in states[n] and f"dst {a.wan}\n" not in states[n], states[n]
        assert c2["packets_in"] > packets_before  # counters carried over the migration
        dp_stats = {n: g.control("stats")["dataplane"] for n, g in (("a", ga), ("b", gb))}
        assert all(st["name"] == "xfrm" and st["moves"].get("migrate", 0) >= 1 and st["migrate"]
                   for st in dp_stats.values()), dp_stats
        ga.down("m")
        assert _wait_states(a.gw, 0) and _wait_states(b.gw, 0)
    finally:
        ga.stop()
        gb.stop()
        fact(f"{tag}_logs", {"a": ga.log_tail(20), "b": gb.log_tail(20)})
        a.gw.run(["ip", "addr", "replace", f"{a.wan}/24", "dev", "wan"], check=False)
        a.gw.run(["ip", "addr", "del", f"{new_wan}/24", "dev", "wan"], check=False)
        a.gw.run(["ip", "route", "replace", "default", "via", "192.0.2.254"], check=False)


def _wait_states(ns, n: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_xfrm(ns, "state") == n:
            return True
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------- strongSwan (kernel-netlink)

SWAN_PLUGINS = "random nonce openssl pem pkcs1 x509 pubkey kdf kernel-netlink socket-default vici"


def test_strongswan_kernel_netlink_policy_and_route_based(sites, tmp_path):
    """Our daemon (gw-a) and strongSwan's charon with its kernel-netlink backend (gw-b), both on
    kernel ESP: a policy-based connection with plain ESP (we initiate) and a route-based one
    over ESP-in-UDP (strongSwan initiates; XFRM interfaces with their own if_id on both sides,
    0/0 selectors). Ping and iperf3 through each; SPIs and counters agree."""
    from tests.interop.strongswan import Charon
    from tests.netns_e2e.tools import iperf3

    router, a, b = sites
    extra_subnets(a, b)
    psk = "guest-interop-psk-0123456789"
    conns = [connection("pol", a.wan, b.wan, "a-pol.example.org", "sw-pol.example.org", local_ts=a.lan,
                        remote_ts=b.lan, psk=psk),
             connection("rb", a.wan, b.wan, "a-rb.example.org", "sw-rb.example.org", local_ts="0.0.0.0/0",
                        remote_ts="0.0.0.0/0", psk=psk, esp="aes128gcm16", interface="ipsec-a", if_id=50,
                        encap=True)]
    ga = KernelGateway(a.gw, tmp_path, "sa", conns, listen=[a.wan])
    b.gw.ip("link", "add", "xfrm-sw", "type", "xfrm", "dev", "wan", "if_id", "77")
    b.gw.ip("link", "set", "xfrm-sw", "up")
    sw = Charon(b.gw, tmp_path / "charon", plugins=SWAN_PLUGINS, retransmit_timeout=2.0, retransmit_tries=3,
                charon_settings={"install_routes": "no"})

    def conn(name, ts_l, ts_r, esp, **extra):
        child_extra = {k: extra.pop(k) for k in ("if_id_in", "if_id_out") if k in extra}
        return {"version": 2, "local_addrs": b.wan, "remote_addrs": a.wan, "proposals": "aes256gcm16-prfsha256-x25519",
                "local": {"auth": "psk", "id": f"sw-{name}.example.org"},
                "remote": {"auth": "psk", "id": f"a-{name}.example.org"},
                "children": {name: {"local_ts": ts_l, "remote_ts": ts_r, "esp_proposals": esp, "mode": "tunnel",
                                    **child_extra}}, **extra}
    sw.write_swanctl_conf({
        "connections": {"pol": conn("pol", b.lan, a.lan, "aes256gcm16"),
                        "rb": conn("rb", "0.0.0.0/0", "0.0.0.0/0", "aes128gcm16", encap="yes",
                                   if_id_in=77, if_id_out=77)},
        "secrets": {f"ike-{n}": {"id-a": f"a-{n}.example.org", "id-b": f"sw-{n}.example.org", "secret": psk}
                    for n in ("pol", "rb")}})
    try:
        ga.start_nowait()
        sw.start(timeout=60)
        sw.load_all()
        ga.wait_started()
        a.gw.run(["ip", "route", "replace", "10.12.0.0/24", "dev", "ipsec-a"], check=False)
        ga.up("pol")
        sw.initiate(child="rb", timeout=40)
        ga.wait_children(2, timeout=30)
        b.gw.ip("route", "replace", "10.11.0.0/24", "dev", "xfrm-sw")
        a.gw.run(["ip", "route", "replace", "10.12.0.0/24", "dev", "ipsec-a"])
        a.host.wait_ping(b.host_ip, timeout=10)
        a.host.wait_ping("10.12.0.2", timeout=10, src="10.11.0.2")
        tput = {"pol": iperf3(a.host, b.host, b.host_ip, seconds=2, port=5311),
                "rb": iperf3(a.host, b.host, "10.12.0.2", seconds=2, port=5312, extra=["-B", "10.11.0.2"])}
        mbit = {k: round(v["end"]["sum_received"]["bits_per_second"] / 1e6, 1) for k, v in tput.items()}
        ours = {sa["name"]: c for sa, c in ga.children()}
        theirs = {c["name"]: c for _, c in sw.children()}
        states_b = b.gw.run(["ip", "xfrm", "state"]).stdout
        fact("strongswan_kernel", {"mbit": mbit, "ours": ours, "theirs": theirs, "states_b": states_b})
        assert set(ours) == {"pol", "rb"} and set(theirs) == {"pol", "rb"}
        for n in ("pol", "rb"):
            assert ours[n]["spi_in"] == theirs[n]["spi-out"] and ours[n]["spi_out"] == theirs[n]["spi-in"], \
                (n, ours, theirs)
            assert ours[n]["packets_in"] > 100 and int(theirs[n]["packets-in"]) > 100, (n, ours[n], theirs[n])
            assert mbit[n] > 1.0, mbit
        assert ours["rb"]["encap"] and theirs["rb"].get("encap") == "yes" and "espinudp" in states_b
        assert not ours["pol"]["encap"] and theirs["pol"].get("encap") != "yes"
        ga.down("pol")
        ga.down("rb")
        assert _wait_states(b.gw, 0) and _wait_states(a.gw, 0)
    finally:
        fact("strongswan_kernel_logs", {
            "ours": ga.log_tail(20), "charon": sw.log_text()[-6000:],
            **{f"{n}_{w}": ns.run(["ip", "-s", "xfrm", w], check=False).stdout
               for n, ns in (("a", a.gw), ("b", b.gw)) for w in ("state", "policy")},
            **{f"{n}_routes": ns.run(["ip", "route", "show", "table", "all"], check=False).stdout
               for n, ns in (("a", a.gw), ("b", b.gw))}})
        ga.stop()
        sw.stop()
        b.gw.run(["ip", "link", "del", "xfrm-sw"], check=False)
    assert a.gw.run(["ip", "xfrm", "policy"]).stdout.strip() == ""
