"""Kernel ESP through vpn_gw.xfrm, run *inside* the QEMU guest (Debian 6.1 kernel).

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
from tests.netns import NetnsGroup
from tests.netns_e2e.topology import two_sites
from vpn_gw.xfrm import netlink as nl
from vpn_gw.xfrm.backend import DEFAULT_REQID_BASE, XfrmDataPlane, overhead_for
from vpn_gw.xfrm.sockets import prepare_ike_socket

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
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("Ip:"):
            d = dict(zip(names.split()[1:], values.split()[1:]))
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
            dpa.update_addresses(1, (a.wan, 4500), (b.wan, 4500))
            dpb.update_addresses(1, (b.wan, 4500), (a.wan, 4500))
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
        # EXPIRE: an SA of ours with a 1-second soft and 2-second hard lifetime.
        reqid = DEFAULT_REQID_BASE + 0x999
        dpa.xfrm.add_sa({"id": {"daddr": b.wan, "spi": 0x4242, "proto": 50}, "saddr": a.wan, "family": 2,
                         "mode": 1, "reqid": reqid, "flags": nl.XFRM_STATE_AF_UNSPEC,
                         "lft": {"soft_add_expires_seconds": 1, "hard_add_expires_seconds": 2}},
                        [("XFRMA_ALG_AEAD", {"alg_name": "rfc4106(gcm(aes))", "alg_icv_len": 128,
                                             "alg_key": bytes(20)})])
        # ACQUIRE: a trap for "net" (policies without SAs), then traffic that matches them.
        dpa.endpoints_for = lambda conn: (a.wan, b.wan)
        dpa.install_trap("net", _ts(a.lan), _ts(b.lan))
        a.host.ping(b.host_ip, wait=0.5)
        deadline = time.monotonic() + 10
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


def test_ours_to_ours_ike_policy_and_route_based(sites, tmp_path):
    """Two of our daemons (tests/kernel_guest/xfrm_gateway.py): a policy-based connection with
    plain ESP and a route-based one with forced UDP encapsulation, between the same gateways."""
    from tests.gateway import PYTHON, OurGateway, connection

    class KernelGateway(OurGateway):
        def start(self, timeout: float = 90.0):
            fh = open(self.log, "w")
            self.proc = self.ns.popen([PYTHON, "-m", "tests.kernel_guest.xfrm_gateway", "-c", str(self.config)],
                                      stdout=fh, stderr=subprocess.STDOUT, cwd=str(Path(__file__).parents[3]))
            fh.close()
            return self

        # Everything through the control socket from this process: a CLI process per call costs
        # seconds under TCG.
        def up(self, name: str):
            return self.control("up", name=name)

        def down(self, name: str):
            return self.control("down", name=name)

        def status(self):
            return self.control("status")

        def wait_started(self, timeout: float = 90.0):
            deadline = time.monotonic() + timeout
            while not self.socket.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} did not start\n{self.log_tail()}")
                time.sleep(0.2)

    router, a, b = sites
    # Extra subnets for the route-based connection: 10.11.0.0/24 behind a, 10.12.0.0/24 behind b.
    a.gw.ip("addr", "add", "10.11.0.1/24", "dev", "lan")
    a.host.ip("addr", "add", "10.11.0.2/24", "dev", "eth0")
    b.gw.ip("addr", "add", "10.12.0.1/24", "dev", "lan")
    b.host.ip("addr", "add", "10.12.0.2/24", "dev", "eth0")

    def conns(me, peer, me_tag, peer_tag, my_net, peer_net):
        pol = connection("pol", me.wan, peer.wan, f"{me_tag}-pol.example.org", f"{peer_tag}-pol.example.org",
                         local_ts=me.lan, remote_ts=peer.lan)
        rb = connection("rb", me.wan, peer.wan, f"{me_tag}-rb.example.org", f"{peer_tag}-rb.example.org",
                        local_ts="0.0.0.0/0", remote_ts="0.0.0.0/0", esp="aes128-sha256",
                        interface=f"ipsec-{me_tag}", if_id=50 if me_tag == "a" else 60, encap=True)
        return [pol, rb]
    t0 = time.monotonic()
    ga = KernelGateway(a.gw, tmp_path, "a", conns(a, b, "a", "b", "10.11.0.0/24", "10.12.0.0/24"), listen=[a.wan])
    gb = KernelGateway(b.gw, tmp_path, "b", conns(b, a, "b", "a", "10.12.0.0/24", "10.11.0.0/24"), listen=[b.wan])
    try:
        ga.start()
        gb.start()
        ga.wait_started()
        gb.wait_started()
        started = time.monotonic() - t0
        a.gw.ip("route", "add", "10.12.0.0/24", "dev", "ipsec-a")
        b.gw.ip("route", "add", "10.11.0.0/24", "dev", "ipsec-b")
        ga.up("pol")
        ga.up("rb")
        ga.wait_children(2, timeout=30)
        gb.wait_children(2, timeout=30)
        a.host.wait_ping(b.host_ip, timeout=10)
        a.host.wait_ping("10.12.0.2", timeout=10, src="10.11.0.2")
        assert a.host.ping(b.host_ip, count=3, interval=0.1)
        assert a.host.ping("10.12.0.2", count=3, interval=0.1, src="10.11.0.2")
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
