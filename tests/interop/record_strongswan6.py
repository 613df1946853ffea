#!/usr/bin/env python3
"""Record a strongSwan 6 <-> strongSwan 6 hybrid ML-KEM exchange as a JSON test vector.

Usage (root; ../shared/peers present, tcpdump)::

    .venv/bin/python tests/interop/record_strongswan6.py tests/data/strongswan6

Two charon-6 (``/opt/strongswan6``, unpacked from ../shared/peers if needed) run in the
namespaces of tests/interop/strongswan.py (site = initiator, gw = responder); the transit link
is captured.  Proposal ``aes256gcm16-prfsha384-x25519-ke1_mlkem768`` and, to make the
IKE_INTERMEDIATE request arrive in fragments, the default ``fragment_size`` (1280).  Written:
every IKE datagram, every key-derivation step both charons logged (ike = 4: the shared
secret of each key exchange, SKEYSEED, SK_*), the save-keys ``ikev2_decryption_table`` lines
and the PSK.  The recording is refused unless both charons logged identical key sets.
tests/test_strongswan6_recording.py checks our RFC 9370 derivation and RFC 9242 IntAuth
against it.  PSK and keys are generated per run and protect nothing.
"""
from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pcapfile  # noqa: E402
import strongswan as ss  # noqa: E402
import strongswan6 as s6  # noqa: E402

IKE = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
ESP = "aes256gcm16"
LABELS = {
    "shared Diffie Hellman secret": "shared_secret",
    "key exchange secret": "shared_secret",
    "additional key exchange secret": "additional_secret",
    "SKEYSEED": "skeyseed", "Sk_d secret": "sk_d", "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar", "Sk_ei secret": "sk_ei", "Sk_er secret": "sk_er",
    "Sk_pi secret": "sk_pi", "Sk_pr secret": "sk_pr",
}


def key_steps(log_text: str) -> list[dict]:
    """Key material in log order: one dict per SKEYSEED derivation, with the shared secrets
    logged since the previous one."""
    steps: list[dict] = []
    shared: list[str] = []
    cur: dict | None = None
    for r in ss.parse_log(log_text):
        if r.group != "IKE" or r.label not in LABELS or r.data is None:
            continue
        field = LABELS[r.label]
        if field == "shared_secret":
            shared.append(r.data.hex())
            continue
        if field == "additional_secret":  # strongSwan 6 logs it empty; nothing to keep
            continue
        if field == "skeyseed":
            cur = {"shared_secrets": shared, "skeyseed": r.data.hex()}
            shared = []
            steps.append(cur)
        elif cur is not None:
            cur[field] = r.data.hex()
    return steps


def main(argv: list[str]) -> int:
    outdir = Path(argv[0]) if argv else Path("tests/data/strongswan6")
    keep = "--keep" in argv
    s6.require_strongswan6()
    work = Path(tempfile.mkdtemp(prefix="ss6rec-"))
    psk = "test-only-" + secrets.token_hex(12)

    def setup(pair: ss.Pair):
        sc, gc = ss.psk_site_to_site(pair.topo, psk, ike_proposals=IKE, esp_proposals=ESP)
        pair.site.write_swanctl_conf(sc)
        pair.gw.write_swanctl_conf(gc)
        for c in (pair.site, pair.gw):  # save-keys writes into the instance directory
            (c.dir / "keys").mkdir(exist_ok=True)
            c.charon_settings = {"plugins": {"save-keys": {
                "ike": True, "esp": False, "wireshark_keys": str(c.dir / "keys")}}}
    kw = s6.charon6_kwargs(retransmit_timeout=1.0, retransmit_tries=2)
    try:
        with ss.strongswan_pair(work, prefix="ss6rec", log_levels=ss.KEY_LOG_LEVELS,
                                charon_kwargs=kw, setup=setup) as pair:
            pcap = work / "transit.pcap"
            with ss.Capture(pair.topo.router, pair.topo.transit_iface, pcap):
                pair.site.initiate(child="net")
                sa, _ = pair.site.wait_child("net")
                pair.gw.wait_child("net")
                time.sleep(0.3)
            site_log, gw_log = pair.site.log_text(), pair.gw.log_text()
            tables = {}
            for c in (pair.site, pair.gw):
                p = c.dir / "keys" / "ikev2_decryption_table"
                tables[c.name] = p.read_text().splitlines() if p.exists() else []
            version = pair.site.version()
        cap = pcapfile.classify_ike(pcap)
        si, sg = key_steps(site_log), key_steps(gw_log)
        if not si or si != sg:
            raise AssertionError(f"initiator and responder logged different keys:\n{si}\n{sg}")
        out = {
            "format": 1,
            "scenario": "pq-x25519-mlkem768",
            "description": f"PSK site-to-site between two strongSwan 6 charons, IKE {IKE}: "
                           "IKE_SA_INIT (x25519), one IKE_INTERMEDIATE (ML-KEM-768, request in "
                           "2 fragments), IKE_AUTH; keys logged after each derivation step.",
            "strongswan_version": version,
            "proposal": IKE,
            "psk": psk,
            "ids": {"initiator": "site.example.org", "responder": "gw.example.org"},
            "messages": [{k: m[k] for k in ("src", "sport", "dst", "dport", "hex", "non_esp_marker")}
                         for m in cap["messages"]],
            "key_steps": si,
            "save_keys": tables,
            "list_sas": {k: sa.get(k) for k in ("initiator-spi", "responder-spi", "dh-group", "ake1",
                                                "encr-alg", "prf-alg")},
        }
        outdir.mkdir(parents=True, exist_ok=True)
        path = outdir / "pq-x25519-mlkem768.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}: {len(out['messages'])} messages, {len(si)} key steps")
        return 0
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
