"""Certificate authentication between our gateway and strongSwan, and IKE fragmentation.

Certificates are made in the test with strongSwan's ``pki`` (harness ``Pki``): one CA per test,
an end-entity certificate for each gateway (subjectAltName = its IKE identity). Our config uses
``auth = "pubkey"``, ``certs``, ``private_key``, ``cacerts`` (docs/config.md); strongSwan gets
its certificate in swanctl/x509, key in private/, CA in x509ca/.

Fragmentation (RFC 7383): RSA 3072 root -> intermediate -> end entity on both sides, both
send [end entity, intermediate]; strongSwan ``fragment_size = 576``, ours ``fragment_size =
576``: IKE_AUTH is carried in SKF payloads (type 53) in both directions, checked on the wire
(tcpdump on the router) and in strongSwan's log (``EF(i/n)``).
"""
from __future__ import annotations

import re
import time

import ours_helpers as H
import pcapfile
import pytest
import strongswan as ss

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

IKE, ESP = H.SUITES[1]
SKF = 53


def _pki(workdir, kind: str, size: int | None, intermediate: bool = False):
    pki = ss.Pki(workdir / "pki")
    ca = pki.ca("ca", "C=XX, O=vpn-gw interop, CN=Test Root CA", kind=kind, size=size)
    issuer = ca
    chain = []
    if intermediate:
        issuer = pki.intermediate("im", "C=XX, O=vpn-gw interop, CN=Test Intermediate CA", ca,
                                  kind=kind, size=size)
        chain = [issuer]
    ours = pki.end_entity("ours", f"C=XX, O=vpn-gw interop, CN={H.OURS_ID}", issuer,
                          sans=[H.OURS_ID], kind=kind, size=size)
    theirs = pki.end_entity("sw", f"C=XX, O=vpn-gw interop, CN={H.SW_ID}", issuer,
                            sans=[H.SW_ID], kind=kind, size=size)
    return ca, chain, ours, theirs


def _cert_env(workdir, prefix, kind, size, *, intermediate=False, sw_fragment_size=None,
              ours_extra=None):
    ca, chain, ours, theirs = _pki(workdir, kind, size, intermediate)

    def setup(topo, sw, _wd):
        sw.add_cert(theirs)
        sw.add_ca(ca)
        for im in chain:
            sw.add_ca(im)

    def ours_conns(topo):
        return [H.ours_conn(topo, ike=IKE, esp=ESP, auth="pubkey",
                            certs=[str(ours.cert_path)] + [str(c.cert_path) for c in chain],
                            private_key=str(ours.key_path), cacerts=[str(ca.cert_path)],
                            **(ours_extra or {}))]
    ck = {"fragment_size": sw_fragment_size} if sw_fragment_size else {}
    return H.ours_vs_strongswan(
        workdir, prefix=prefix, setup=setup, charon_kwargs=ck,
        sw_config=lambda t: H.sw_conf(t, ike=IKE, esp=ESP, auth="pubkey", cert=f"{theirs.name}.pem",
                                      conn={"fragmentation": "yes"}),
        ours_connections=ours_conns)


def _establish(env: H.Env, role: str):
    if role == "initiator":
        env.ours.up(H.CONN)
    else:
        env.sw.initiate(child=H.CHILD, timeout=15)
    return env.wait_both_child(timeout=10)


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("kind,size", [("ecdsa", 256), ("rsa", 2048)], ids=["ecdsa", "rsa"])
def test_pubkey_auth(sswan_workdir, kind, size, role):
    t0 = time.monotonic()
    with _cert_env(sswan_workdir, "oswc", kind, size) as env:
        osa, oc, ssa, sc = _establish(env, role)
        H.assert_same_sa(osa, oc, ssa, sc, env.topo, we_initiated=role == "initiator", ike=IKE, esp=ESP)
        # strongSwan authenticated us with our certificate and the CA it trusts
        log = env.sw.log_text()
        m = re.search(rf"authentication of '{re.escape(H.OURS_ID)}' with (\S+) successful", log)
        assert m, "strongSwan did not log a successful signature check of our AUTH"
        assert m.group(1).startswith("ECDSA" if kind == "ecdsa" else "RSA_"), m.group(0)
        assert re.search(r"reached self-signed root ca with a path length of 0", log), \
            "strongSwan did not verify our certificate against its CA"
        # our side checked theirs (IKE SA up with their identity)
        assert osa["remote_id"] == H.SW_ID
        env.ping_both_ways(count=2)
    assert time.monotonic() - t0 < 40


def _skf_messages(pcap, src: str) -> list[dict]:
    out = []
    for m in pcapfile.classify_ike(pcap)["messages"]:
        h = m["header"]
        if h and m["src"] == src and h["exchange"] == "IKE_AUTH":
            out.append(h)
    return out


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_ike_fragmentation_rsa3072_chain(sswan_workdir, role):
    t0 = time.monotonic()
    with _cert_env(sswan_workdir, "oswf", "rsa", 3072, intermediate=True, sw_fragment_size=576,
                   ours_extra={"fragment_size": 576}) as env:
        pcap = sswan_workdir / "transit.pcap"
        with ss.Capture(env.topo.router, env.topo.transit_iface, pcap, bpf="udp"):
            osa, oc, ssa, sc = _establish(env, role)
        H.assert_same_sa(osa, oc, ssa, sc, env.topo, we_initiated=role == "initiator", ike=IKE, esp=ESP)
        ours_auth = _skf_messages(pcap, env.topo.site_ip)
        sw_auth = _skf_messages(pcap, env.topo.gw_ip)
        assert ours_auth and all(h["next_payload"] == SKF for h in ours_auth), \
            f"our IKE_AUTH not fragmented: next payloads {[h['next_payload'] for h in ours_auth]}"
        assert sw_auth and all(h["next_payload"] == SKF for h in sw_auth), \
            f"strongSwan's IKE_AUTH not fragmented: {[h['next_payload'] for h in sw_auth]}"
        assert len(ours_auth) >= 3 and len(sw_auth) >= 3, (len(ours_auth), len(sw_auth))
        # no datagram above the configured fragment size (IP header 20 + UDP 8 + payload)
        for m in pcapfile.classify_ike(pcap)["messages"]:
            if m["header"] and m["header"]["exchange"] == "IKE_AUTH":
                ip_len = 20 + 8 + len(bytes.fromhex(m["hex"])) + (4 if m["non_esp_marker"] else 0)
                assert ip_len <= 576, f"IKE_AUTH datagram of {ip_len} bytes from {m['src']}"
        log = env.sw.log_text()
        sent = re.findall(r"generating IKE_AUTH (?:request|response) \d+ \[ EF\((\d+)/(\d+)\) \]", log)
        assert sent, "strongSwan's log shows no fragmented IKE_AUTH (EF(i/n))"
        assert re.search(r"received fragment #\d+ of \d+, reassembled fragmented IKE message", log), \
            "strongSwan did not reassemble our fragments"
        # both certificates travelled: strongSwan used our intermediate or its own copy
        assert f"authentication of '{H.OURS_ID}' with" in log
        env.ping_both_ways(count=1)
    assert time.monotonic() - t0 < 40
