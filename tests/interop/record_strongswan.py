#!/usr/bin/env python3
"""Record strongSwan <-> strongSwan IKEv2 exchanges as JSON test vectors.

Usage (root; strongSwan 5.9.x with kernel-libipsec, tcpdump)::

    .venv/bin/python tests/interop/record_strongswan.py tests/data/strongswan
    .venv/bin/python tests/interop/record_strongswan.py OUTDIR --only psk-gcm-x25519,mobike --keep

For every scenario two charons run in network namespaces (site = initiator, gw =
responder, a router between them), tcpdump captures the router--gw link, and one JSON
file is written with every IKE datagram (non-ESP marker stripped), the key material
parsed from the initiator's charon log (checked against the responder's), the exchange
summaries of both sides and the credentials needed to re-verify AUTH. See
tests/data/strongswan/README.md for the format. PSKs, passwords and keys are generated
fresh per run and are test-only.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pcapfile  # noqa: E402
import strongswan as ss  # noqa: E402

FORMAT_VERSION = 1
IKE_KEY_FIELDS = ("spi_i", "spi_r", "shared_dh_secret", "skeyseed", "sk_d", "sk_ai", "sk_ar",
                  "sk_ei", "sk_er", "sk_pi", "sk_pr")
CHILD_KEY_FIELDS = ("encr_i", "integ_i", "encr_r", "integ_r", "dh_secret")


@dataclass
class Recording:
    """What a scenario run collects besides the capture and logs."""

    name: str
    info: dict[str, Any] = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    t0: float = field(default_factory=time.time)

    def step(self, action: str, **kw) -> None:
        self.steps.append({"time": round(time.time(), 3), "action": action, **kw})
        print(f"  [{self.name}] {action} {kw if kw else ''}", flush=True)


def psk() -> str:
    return "test-only-" + secrets.token_hex(12)


# --------------------------------------------------------------------------- steps


def ping_ok(rec: Recording, src_ns, dst: str, count: int = 3, src: str | None = None,
            required: bool = True) -> bool:
    ok = src_ns.ping(dst, count=count, interval=0.2, wait=1.0, src=src)
    if not ok:  # the first packet may race with the route installation
        ok = src_ns.ping(dst, count=count, interval=0.2, wait=1.0, src=src)
    rec.step("ping", dst=dst, ok=ok)
    if required and not ok:
        raise AssertionError(f"ping {dst} through the tunnel failed")
    return ok


def initiate(rec: Recording, pair: ss.Pair, child: str) -> tuple[dict, dict]:
    pair.site.initiate(child=child)
    sa, c = pair.site.wait_child(child)
    pair.gw.wait_child(child)
    rec.step("initiate", child=child, ike_spis=[sa["initiator-spi"], sa["responder-spi"]],
             child_spis=[c["spi-in"], c["spi-out"]])
    return sa, c


def terminate(rec: Recording, who: ss.Charon, other: ss.Charon, ike: str) -> None:
    who.terminate(ike=ike)
    who.wait_no_sas()
    other.wait_no_sas()
    rec.step("terminate", by=who.name, ike=ike)


def rekey_child(rec: Recording, pair: ss.Pair, who: ss.Charon, child: str) -> None:
    _, old = pair.site.wait_child(child)
    _, gold = pair.gw.wait_child(child)
    who.rekey(child=child)
    _, new = pair.site.wait_child(child, exclude_spis=[old["spi-in"]])
    pair.gw.wait_child(child, exclude_spis=[gold["spi-in"]])
    # (the old inbound SA lingers for charon.delete_rekeyed_delay = 5 s; no need to wait)
    rec.step("rekey child", by=who.name, old_spis=[old["spi-in"], old["spi-out"]],
             new_spis=[new["spi-in"], new["spi-out"]])


def rekey_ike(rec: Recording, pair: ss.Pair, who: ss.Charon, ike: str) -> None:
    old = pair.site.wait_ike(ike)
    who.rekey(ike=ike)
    new = pair.site.wait_ike(ike, exclude_spis=[old["initiator-spi"]])
    pair.site.wait_for(lambda sas: len(sas) == 1, 10, "old IKE_SA deleted")
    pair.gw.wait_for(lambda sas: len(sas) == 1, 10, "old IKE_SA deleted")
    rec.step("rekey ike", by=who.name,
             old_spis=[old["initiator-spi"], old["responder-spi"]],
             new_spis=[new["initiator-spi"], new["responder-spi"]])


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    description: str
    run: Callable[[Recording, Path], None]


def _s2s(rec: Recording, work: Path, *, ike: str, esp: str, body: Callable[[ss.Pair], None],
         conf_kw: dict | None = None, **pair_kw) -> None:
    key = psk()
    rec.info["psk"] = key
    rec.info["ids"] = {"initiator": "site.example.org", "responder": "gw.example.org"}

    def setup(pair: ss.Pair):
        sc, gc = ss.psk_site_to_site(pair.topo, key, ike_proposals=ike, esp_proposals=esp,
                                     **(conf_kw or {}))
        pair.site.write_swanctl_conf(sc)
        pair.gw.write_swanctl_conf(gc)
    _run_pair(rec, work, setup=setup, body=body, **pair_kw)


def _run_pair(rec: Recording, work: Path, *, setup, body, ipv6=False, second_uplink=False,
              charon_kwargs=None) -> None:
    kw = {"retransmit_timeout": 1.0, "retransmit_tries": 2, **(charon_kwargs or {})}
    with ss.strongswan_pair(work, prefix="ssrec", ipv6=ipv6, second_uplink=second_uplink,
                            log_levels=ss.KEY_LOG_LEVELS, charon_kwargs=kw, setup=setup) as pair:
        rec.info["topology"] = {
            "initiator": pair.topo.site_ip, "responder": pair.topo.gw_ip,
            "initiator_net": pair.topo.site_net, "responder_net": pair.topo.gw_net,
            "initiator_second_address": pair.topo.site_ip2 if second_uplink else None,
        }
        rec.info["configs"] = {
            "initiator_swanctl_conf": pair.site.swanctl_conf_path.read_text(),
            "responder_swanctl_conf": pair.gw.swanctl_conf_path.read_text(),
        }
        rec.info["version"] = pair.site.version()
        pcap = work / "transit.pcap"
        with ss.Capture(pair.topo.router, pair.topo.transit_iface, pcap):
            body(pair)
            time.sleep(0.3)
        rec.info["pcap"] = pcap
        rec.info["site_log"] = pair.site.log_text()
        rec.info["gw_log"] = pair.gw.log_text()


def scen_psk_gcm_x25519(rec: Recording, work: Path) -> None:
    def body(pair: ss.Pair):
        initiate(rec, pair, "net")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        terminate(rec, pair.site, pair.gw, "s2s")
    _s2s(rec, work, ike="aes256gcm16-prfsha256-x25519", esp="aes256gcm16", body=body)


def scen_psk_cbc_ecp256(rec: Recording, work: Path) -> None:
    def body(pair: ss.Pair):
        initiate(rec, pair, "net")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        rekey_child(rec, pair, pair.site, "net")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        rekey_ike(rec, pair, pair.site, "s2s")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        terminate(rec, pair.gw, pair.site, "s2s")
    _s2s(rec, work, ike="aes128-sha256-ecp256", esp="aes128-sha256-ecp256", body=body)


def scen_psk_cbc_modp3072(rec: Recording, work: Path) -> None:
    def body(pair: ss.Pair):
        initiate(rec, pair, "net")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        rekey_child(rec, pair, pair.gw, "net")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        terminate(rec, pair.site, pair.gw, "s2s")
    _s2s(rec, work, ike="aes256-sha384-modp3072", esp="aes256-sha384-modp3072", body=body)


def scen_chacha_x448(rec: Recording, work: Path) -> None:
    def body(pair: ss.Pair):
        initiate(rec, pair, "net")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        terminate(rec, pair.site, pair.gw, "s2s")
    probe = work / "probe"
    group = ss.NetnsGroup("ssrecp")
    try:
        ns = group.add("p")
        with ss.Charon(ns, probe, "probe") as c:
            algs = c.swanctl("list-algs").stdout
    finally:
        group.close()
    dh = "x448" if "CURVE_448" in algs else "x25519"
    if "CHACHA20_POLY1305" not in algs:
        raise RuntimeError("strongSwan has no CHACHA20_POLY1305")
    rec.info["dh_fallback"] = dh != "x448"
    _s2s(rec, work, ike=f"chacha20poly1305-prfsha512-{dh}", esp="chacha20poly1305", body=body)


def _cert_conf(topo: ss.Topology, *, ike: str, esp: str, fragmentation: bool | None = None
               ) -> tuple[dict, dict]:
    def side(local_addrs, remote_addrs, lid, rid, cert, lts, rts):
        return {"connections": {"s2s": {
            "version": 2, "local_addrs": local_addrs, "remote_addrs": remote_addrs,
            "proposals": ike, "encap": True, "mobike": True, "send_certreq": True,
            "send_cert": "always", "fragmentation": fragmentation,
            "local": {"auth": "pubkey", "id": lid, "certs": cert},
            "remote": {"auth": "pubkey", "id": rid},
            "children": {"net": {"local_ts": lts, "remote_ts": rts, "esp_proposals": esp}},
        }}}
    site = side(topo.site_ip, topo.gw_ip, "site.example.org", "gw.example.org", "site.pem",
                topo.site_net, topo.gw_net)
    gw = side(topo.gw_ip, "%any", "gw.example.org", "site.example.org", "gw.pem",
              topo.gw_net, topo.site_net)
    return site, gw


def scen_ecdsa_certs(rec: Recording, work: Path) -> None:
    pki = ss.Pki(work / "pki")
    ca = pki.ca("ca", "C=XX, O=strongSwan interop test, CN=Test ECDSA Root CA", "ecdsa", 256)
    site = pki.end_entity("site", "C=XX, O=strongSwan interop test, CN=site.example.org", ca,
                          sans=["site.example.org"], kind="ecdsa", size=256)
    gw = pki.end_entity("gw", "C=XX, O=strongSwan interop test, CN=gw.example.org", ca,
                        sans=["gw.example.org"], kind="ecdsa", size=256)
    rec.info["ids"] = {"initiator": "site.example.org", "responder": "gw.example.org"}
    rec.info["certs"] = {"key_type": "ECDSA P-256", "ca": ca.cert_pem,
                         "initiator": site.cert_pem, "responder": gw.cert_pem}

    def setup(pair: ss.Pair):
        for c, cert in ((pair.site, site), (pair.gw, gw)):
            c.add_ca(ca)
            c.add_cert(cert)
        sc, gc = _cert_conf(pair.topo, ike="aes256gcm16-prfsha384-ecp256", esp="aes256gcm16")
        pair.site.write_swanctl_conf(sc)
        pair.gw.write_swanctl_conf(gc)

    def body(pair: ss.Pair):
        initiate(rec, pair, "net")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        terminate(rec, pair.site, pair.gw, "s2s")
    _run_pair(rec, work, setup=setup, body=body)


def scen_rsa_chain_fragmented(rec: Recording, work: Path) -> None:
    pki = ss.Pki(work / "pki")
    o = "C=XX, O=strongSwan interop test"
    root = pki.ca("root", f"{o}, CN=Test RSA Root CA", "rsa", 3072)
    # one intermediate per side: a CA the peer itself holds would be named in its CERTREQ
    # and then strongSwan stops the chain there and does not send it
    im_site = pki.intermediate("im-site", f"{o}, CN=Test RSA Intermediate CA site", root, "rsa", 3072)
    im_gw = pki.intermediate("im-gw", f"{o}, CN=Test RSA Intermediate CA gw", root, "rsa", 3072)
    site = pki.end_entity("site", f"{o}, CN=site.example.org", im_site,
                          sans=["site.example.org"], kind="rsa", size=3072)
    gw = pki.end_entity("gw", f"{o}, CN=gw.example.org", im_gw,
                        sans=["gw.example.org"], kind="rsa", size=3072)
    rec.info["ids"] = {"initiator": "site.example.org", "responder": "gw.example.org"}
    rec.info["certs"] = {"key_type": "RSA 3072", "ca": root.cert_pem,
                         "initiator_intermediate": im_site.cert_pem,
                         "responder_intermediate": im_gw.cert_pem,
                         "initiator": site.cert_pem, "responder": gw.cert_pem}
    rec.info["fragment_size"] = 512

    def setup(pair: ss.Pair):
        for c, im, cert in ((pair.site, im_site, site), (pair.gw, im_gw, gw)):
            c.add_ca(root)                  # the only trust anchor
            c.add_cert(im, with_key=False)  # own intermediate, sent as second CERT
            c.add_cert(cert)
        sc, gc = _cert_conf(pair.topo, ike="aes256-sha256-ecp384", esp="aes256-sha256",
                            fragmentation=True)
        pair.site.write_swanctl_conf(sc)
        pair.gw.write_swanctl_conf(gc)

    def body(pair: ss.Pair):
        initiate(rec, pair, "net")
        ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip)
        terminate(rec, pair.site, pair.gw, "s2s")
    _run_pair(rec, work, setup=setup, body=body, charon_kwargs={"fragment_size": 512})


def scen_eap_mschapv2_cp(rec: Recording, work: Path) -> None:
    key = psk()
    password = "pw-" + secrets.token_hex(8)
    rec.info["psk"] = key
    rec.info["ids"] = {"initiator": "alice@example.org", "responder": "vpn-psk.example.org"}
    rec.info["eap"] = {"method": "MSCHAPV2", "identity": "alice@example.org", "password": password}
    rec.info["pool"] = {"addrs": "10.99.0.0/24", "dns": ["10.20.0.53", "10.20.0.54"]}
    ike, esp = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"

    def setup(pair: ss.Pair):
        t = pair.topo
        pair.site.write_swanctl_conf({
            "connections": {"rw": {
                "version": 2, "local_addrs": t.site_ip, "remote_addrs": t.gw_ip,
                "vips": "0.0.0.0", "proposals": ike, "encap": True, "mobike": True,
                "local": {"auth": "eap", "id": "alice@example.org"},
                "remote": {"auth": "psk", "id": "vpn-psk.example.org"},
                "children": {"rw": {"remote_ts": t.gw_net, "esp_proposals": esp}},
            }},
            "secrets": {
                "ike-gw": {"id": "vpn-psk.example.org", "secret": ss.quote(key)},
                "eap-alice": {"id": "alice@example.org", "secret": ss.quote(password)},
            },
        })
        pair.gw.write_swanctl_conf({
            "connections": {"rw": {
                "version": 2, "local_addrs": t.gw_ip, "remote_addrs": "%any",
                "pools": "rwpool", "proposals": ike, "encap": True, "mobike": True,
                "local": {"auth": "psk", "id": "vpn-psk.example.org"},
                "remote": {"auth": "eap-mschapv2", "id": "alice@example.org", "eap_id": "%any"},
                "children": {"rw": {"local_ts": t.gw_net, "esp_proposals": esp}},
            }},
            "pools": {"rwpool": {"addrs": "10.99.0.0/24", "dns": "10.20.0.53, 10.20.0.54"}},
            "secrets": {
                "ike-rw": {"id": "vpn-psk.example.org", "secret": ss.quote(key)},
                "eap-alice": {"id": "alice@example.org", "secret": ss.quote(password)},
            },
        })

    def body(pair: ss.Pair):
        sa, _ = initiate(rec, pair, "rw")
        vips = sa.get("local-vips") or []
        rec.info["virtual_ip"] = vips[0] if vips else None
        rec.step("virtual ip", vips=vips)
        ping_ok(rec, pair.topo.site, pair.topo.host_b_ip)
        try:
            rec.info["client_resolv_conf"] = pair.site.resolv_path.read_text()
        except FileNotFoundError:
            rec.info["client_resolv_conf"] = None
        terminate(rec, pair.site, pair.gw, "rw")
    _run_pair(rec, work, setup=setup, body=body)


def scen_ipv6(rec: Recording, work: Path) -> None:
    def body(pair: ss.Pair):
        initiate(rec, pair, "net")
        ok = ping_ok(rec, pair.topo.host_a, pair.topo.host_b_ip, required=False)
        rec.info["data_plane_ok"] = ok
        terminate(rec, pair.site, pair.gw, "s2s")
    _s2s(rec, work, ike="aes256gcm16-prfsha256-x25519", esp="aes256gcm16", body=body, ipv6=True)


def scen_mobike(rec: Recording, work: Path) -> None:
    def moved_to(addr: str):
        def pred(sas):
            return any(sa.get("remote-host") == addr and any(
                c.get("state") == "INSTALLED" for c in sa["child-sas"]) for sa in sas)
        return pred

    def body(pair: ss.Pair):
        t = pair.topo
        sa, _ = initiate(rec, pair, "net")
        ping_ok(rec, t.host_a, t.host_b_ip)
        spis = (sa["initiator-spi"], sa["responder-spi"])
        # move 1: new address on the same link, old one removed (promote_secondaries=1)
        t.site.add_addr("wan0", "192.0.2.11/24")
        t.site.del_addr("wan0", "192.0.2.10/24")
        rec.step("address change", interface="wan0", old="192.0.2.10", new="192.0.2.11")
        pair.gw.wait_for(moved_to("192.0.2.11"), 15, "peer moved to 192.0.2.11")
        t.host_a.wait_ping(t.host_b_ip, timeout=10)
        rec.step("ping", dst=t.host_b_ip, ok=True)
        # move 2: the whole uplink goes away, the second one (another subnet) is left
        t.site.link_down("wan0")
        rec.step("link down", interface="wan0", remaining=t.site_ip2)
        pair.gw.wait_for(moved_to(t.site_ip2), 15, f"peer moved to {t.site_ip2}")
        t.host_a.wait_ping(t.host_b_ip, timeout=10)
        rec.step("ping", dst=t.host_b_ip, ok=True)
        now = pair.site.wait_ike("s2s")
        same = (now["initiator-spi"], now["responder-spi"]) == spis
        rec.info["ike_sa_survived"] = same
        rec.step("ike sa kept", same_spis=same, local_host=now.get("local-host"))
        if not same:
            raise AssertionError("IKE_SA SPIs changed during MOBIKE")
        terminate(rec, pair.site, pair.gw, "s2s")
    _s2s(rec, work, ike="aes256gcm16-prfsha256-ecp256", esp="aes256gcm16", body=body,
         second_uplink=True, conf_kw={"extra_conn": {"local_addrs": None}})


SCENARIOS = [
    Scenario("psk-gcm-x25519", "PSK site-to-site, IKE AES-GCM-256/PRF-HMAC-SHA2-256/X25519, "
             "ESP AES-GCM-256; pings through the tunnel, then the initiator terminates (DELETE).",
             scen_psk_gcm_x25519),
    Scenario("psk-cbc-ecp256", "PSK site-to-site, IKE AES-CBC-128/HMAC-SHA2-256/ECP-256, ESP "
             "AES-CBC-128/HMAC-SHA2-256 with ECP-256 PFS: CHILD_SA rekey (with KE) by the "
             "initiator, IKE_SA rekey by the initiator, then the responder deletes the IKE_SA.",
             scen_psk_cbc_ecp256),
    Scenario("psk-cbc-modp3072", "PSK site-to-site, IKE AES-CBC-256/HMAC-SHA2-384/MODP-3072, "
             "ESP AES-CBC-256/HMAC-SHA2-384 with MODP-3072 PFS; CHILD_SA rekey by the "
             "responder, then the initiator terminates.", scen_psk_cbc_modp3072),
    Scenario("chacha-x448", "PSK site-to-site, IKE ChaCha20-Poly1305/PRF-HMAC-SHA2-512/Curve448 "
             "(falls back to X25519 if unsupported, see dh_fallback), ESP ChaCha20-Poly1305.",
             scen_chacha_x448),
    Scenario("ecdsa-certs", "Certificates: ECDSA P-256 CA and end-entity certs (SAN DNS), "
             "CERT and CERTREQ payloads, RFC 7427 digital signature AUTH; IKE AES-GCM-256/"
             "PRF-HMAC-SHA2-384/ECP-256.", scen_ecdsa_certs),
    Scenario("rsa-chain-fragmented", "Certificates: RSA 3072 root -> intermediate -> end "
             "entity, one intermediate per side, each sent as a second CERT payload; RFC 7383 IKE fragmentation with "
             "charon.fragment_size = 512 so IKE_AUTH goes as SKF fragments; IKE "
             "AES-CBC-256/HMAC-SHA2-256/ECP-384.", scen_rsa_chain_fragmented),
    Scenario("eap-mschapv2-cp", "Remote access: client requests a virtual IP (CP CFG_REQUEST "
             "ADDR/DNS), EAP-Identity + EAP-MSCHAPv2 for the client, PSK AUTH for the gateway, "
             "pool 10.99.0.0/24 with two DNS servers; ping from the VIP through the tunnel.",
             scen_eap_mschapv2_cp),
    Scenario("ipv6", "PSK site-to-site over IPv6 outer addresses (2001:db8::/32) with IPv6 "
             "traffic selectors (fd00:10::/64 === fd00:20::/64); see data_plane_ok.",
             scen_ipv6),
    Scenario("mobike", "MOBIKE (RFC 4555): initiator's address changes on the same link "
             "(192.0.2.10 -> 192.0.2.11), then that link goes down and it moves to a second "
             "uplink (203.0.113.10); UPDATE_SA_ADDRESSES with NAT-D and COOKIE2, "
             "ADDITIONAL_IP4_ADDRESS, CHILD_SA rekeys after each move (kernel-libipsec).",
             scen_mobike),
]


# --------------------------------------------------------------------------- assembling


def _summaries(records) -> list[dict]:
    return [{"time": s["time"], "ike": s["ike"], "dir": s["dir"], "exchange": s["exchange"],
             "kind": s["kind"], "mid": s["mid"], "payloads": s["payloads"],
             "packets": s["packets"]} for s in ss.parse_summaries(records)]


def cross_check(ike_i: list[dict], ike_r: list[dict], ch_i: list[dict], ch_r: list[dict]) -> list[str]:
    problems = []
    by_spi = {(k["spi_i"], k["spi_r"]): k for k in ike_r}
    for k in ike_i:
        other = by_spi.get((k["spi_i"], k["spi_r"]))
        if other is None:
            problems.append(f"IKE_SA {k['spi_i']}/{k['spi_r']}: not in responder log")
            continue
        for f in IKE_KEY_FIELDS:
            if k.get(f) != other.get(f):
                problems.append(f"IKE_SA {k['spi_i']}/{k['spi_r']}: {f} differs")
    by_child = {(c["spi_out"], c["spi_in"]): c for c in ch_r}
    for c in ch_i:
        other = by_child.get((c["spi_in"], c["spi_out"]))
        if other is None:
            problems.append(f"CHILD_SA {c['spi_in']}/{c['spi_out']}: not in responder log")
            continue
        for f in CHILD_KEY_FIELDS:
            if c.get(f) != other.get(f):
                problems.append(f"CHILD_SA {c['spi_in']}/{c['spi_out']}: {f} differs")
    return problems


_PRF_HASH = {"PRF_HMAC_SHA1": "sha1", "PRF_HMAC_SHA2_256": "sha256",
             "PRF_HMAC_SHA2_384": "sha384", "PRF_HMAC_SHA2_512": "sha512"}


def verify_initial_keys(messages: list[dict], k: dict) -> bool | None:
    """Recompute SKEYSEED and SK_* of an IKE_SA_INIT-created SA (RFC 7296 2.14) from
    the nonces on the wire and the logged DH secret. None if the PRF is not HMAC-SHA*."""
    import hashlib
    import hmac
    prf_name = next((x for x in (k["ike_proposal"] or "").split("/") if x.startswith("PRF_")), None)
    if prf_name not in _PRF_HASH:
        return None
    h = getattr(hashlib, _PRF_HASH[prf_name])

    def nonce(msg: bytes) -> bytes:
        np_, off = msg[16], 28
        while np_ and off + 4 <= len(msg):
            nxt, ln = msg[off], int.from_bytes(msg[off + 2:off + 4], "big")
            if np_ == 40:
                return msg[off + 4:off + ln]
            np_, off = nxt, off + ln
        raise AssertionError("no nonce payload")

    init = [bytes.fromhex(m["hex"]) for m in messages]
    init = [m for m in init if len(m) > 28 and m[18] == 34 and m[:8].hex() == k["spi_i"]]
    req = [m for m in init if not m[19] & 0x20]
    rsp = [m for m in init if m[19] & 0x20 and m[8:16].hex() == k["spi_r"]]
    if not req or not rsp:
        raise AssertionError("IKE_SA_INIT messages of the SA not captured")
    ni, nr = nonce(req[-1]), nonce(rsp[-1])
    skeyseed = hmac.new(ni + nr, bytes.fromhex(k["shared_dh_secret"]), h).digest()
    names = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")
    want = "".join(k[n] or "" for n in names)
    seed = ni + nr + bytes.fromhex(k["spi_i"]) + bytes.fromhex(k["spi_r"])
    out, t, i = b"", b"", 1
    while len(out) * 2 < len(want):
        t = hmac.new(skeyseed, t + seed + bytes([i]), h).digest()
        out, i = out + t, i + 1
    return skeyseed.hex() == k["skeyseed"] and out.hex()[:len(want)] == want


def assemble(scen: Scenario, rec: Recording, version: str, package: str | None) -> dict:
    info = rec.info
    cap = pcapfile.classify_ike(info.pop("pcap"))
    site_recs = ss.parse_log(info.pop("site_log"))
    gw_recs = ss.parse_log(info.pop("gw_log"))
    ike_i, ike_r = ss.parse_ike_keys(site_recs), ss.parse_ike_keys(gw_recs)
    ch_i, ch_r = ss.parse_child_keys(site_recs), ss.parse_child_keys(gw_recs)
    problems = cross_check(ike_i, ike_r, ch_i, ch_r)
    if problems:
        raise AssertionError("initiator/responder key mismatch: " + "; ".join(problems))
    if not ike_i:
        raise AssertionError("no IKE keys found in the initiator's log")
    msg_spis = {(m["header"]["spi_i"], m["header"]["spi_r"]) for m in cap["messages"] if m["header"]}
    for k in ike_i:
        if (k["spi_i"], k["spi_r"]) not in msg_spis and k["exchange"] == "IKE_SA_INIT":
            raise AssertionError(f"IKE_SA {k['spi_i']}/{k['spi_r']} not seen in the capture")
    for k in ike_i:
        if k["exchange"] == "IKE_SA_INIT" and verify_initial_keys(cap["messages"], k) is False:
            raise AssertionError(f"IKE_SA {k['spi_i']}: SKEYSEED/SK_* do not follow from the capture")
    ike_sas = []
    for k in ike_i:
        d = {f: k[f] for f in IKE_KEY_FIELDS}
        d.update(ike_proposal=k["ike_proposal"], exchange=k["exchange"],
                 initiator_initiated_exchange=k["we_initiated"], unique_id=k["unique_id"],
                 rekeyed_from=k["rekeyed_from"])
        ike_sas.append(d)
    child_sas = []
    for c in ch_i:
        child_sas.append({
            "name": c["name"], "unique_id": c["unique_id"], "ike_unique_id": c["ike_unique_id"],
            "spi_in": c["spi_in"], "spi_out": c["spi_out"],
            "encr_i": c["encr_i"], "integ_i": c["integ_i"], "encr_r": c["encr_r"],
            "integ_r": c["integ_r"], "dh_secret": c["dh_secret"], "proposal": c["proposal"],
            "exchange": c["exchange"], "initiator_initiated_exchange": c["we_initiated"],
            "ts": c["ts"],
        })
    out: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "scenario": scen.name,
        "description": scen.description,
        "strongswan_version": info.pop("version", version),
        "strongswan_package": package,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.t0)),
        "topology": info.pop("topology"),
    }
    for key in ("psk", "ids", "eap", "certs", "pool", "virtual_ip", "client_resolv_conf",
                "fragment_size", "dh_fallback", "data_plane_ok", "ike_sa_survived"):
        if key in info:
            out[key] = info.pop(key)
    out.update({
        "messages": [{k: m[k] for k in ("time", "src", "sport", "dst", "dport", "hex",
                                         "non_esp_marker")} for m in cap["messages"]],
        "esp_packets": cap["esp_packets"],
        "keepalives": cap["keepalives"],
        "ike_sas": ike_sas,
        "child_sas": child_sas,
        "summaries": _summaries(site_recs),
        "responder_summaries": _summaries(gw_recs),
        "events": [{k: v for k, v in e.items() if v is not None}
                   for e in ss.parse_established(site_recs)],
        "steps": rec.steps,
    })
    out.update(info.pop("configs"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, pcaps)")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = ap.parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name}: {s.description}")
        return 0

    def _term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _term)

    ss.require_strongswan()
    version, package = ss.strongswan_version(), ss.package_version()
    wanted = set(args.only.split(",")) if args.only else None
    unknown = (wanted or set()) - {s.name for s in SCENARIOS}
    if unknown:
        ap.error(f"unknown scenarios: {sorted(unknown)}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    workroot = Path(tempfile.mkdtemp(prefix="ssrec-"))
    print(f"strongSwan {version} ({package}); work dir {workroot}", flush=True)
    failed = []
    try:
        for scen in SCENARIOS:
            if wanted and scen.name not in wanted:
                continue
            print(f"== {scen.name}", flush=True)
            rec = Recording(scen.name)
            t = time.monotonic()
            try:
                scen.run(rec, workroot / scen.name)
                data = assemble(scen, rec, version, package)
            except Exception:
                traceback.print_exc()
                failed.append(scen.name)
                continue
            path = args.outdir / f"{scen.name}.json"
            path.write_text(json.dumps(data, indent=1) + "\n")
            print(f"   wrote {path}: {len(data['messages'])} IKE messages, {data['esp_packets']} ESP, "
                  f"{len(data['ike_sas'])} IKE_SAs, {len(data['child_sas'])} CHILD_SAs, "
                  f"{path.stat().st_size // 1024} KiB, {time.monotonic() - t:.1f}s", flush=True)
    finally:
        if args.keep:
            print(f"kept {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
