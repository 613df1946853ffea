"""Real strongSwan traffic (tests/data/strongswan, see its README) read by our codec and crypto:

* every recorded IKE message decodes; unencrypted ones re-encode to the same bytes;
* with the keys strongSwan logged, every SK/SKF message decrypts (fragments reassemble) and
  its inner payloads read exactly as strongSwan's own log summarised them;
* our key derivation (SKEYSEED, SK_*, rekeyed IKE SAs, Child SA KEYMAT with and without PFS)
  gives the keys strongSwan logged;
* the AUTH payloads strongSwan sent verify with our AUTH computation (PSK and RFC 7427).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from ikev2 import payloads as P
from ikev2.constants import AuthMethod, ExchangeType, ProtocolId
from ikev2.crypto import auth as cauth
from ikev2.crypto.keys import derive_child_keys, derive_ike_keys, derive_rekeyed_ike_keys
from ikev2.crypto.proposals import child_suite, ike_suite
from ikev2.message import decode_message, encode_message
from ikev2.sk import FragmentReassembler, SKKeys, open_message
from ikev2.summary import payload_summary

DATA = Path(__file__).parent / "data" / "strongswan"
FILES = sorted(DATA.glob("*.json"))


def test_recordings_present():
    names = {p.stem for p in FILES}
    assert {"psk-gcm-x25519", "psk-cbc-ecp256", "psk-cbc-modp3072", "ecdsa-certs", "rsa-chain-fragmented",
            "eap-mschapv2-cp", "ipv6", "mobike", "chacha-x448"} <= names


class Replay:
    """Walks one recording in order, tracking IKE SAs, their suites and nonces."""

    def __init__(self, path: Path):
        self.d = json.loads(path.read_text())
        self.keys = {(bytes.fromhex(s["spi_i"]), bytes.fromhex(s["spi_r"])): s for s in self.d["ike_sas"]}
        self.suites: dict[tuple[bytes, bytes], object] = {}
        self.init_nonces: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
        self.init_raw: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
        self.rekeys: dict[tuple[bytes, bytes], dict] = {}  # new spis -> {old, ni, nr, suite}
        self.inner: list[tuple[tuple[bytes, bytes], object]] = []  # (spis, decrypted Message)
        self.reassemblers: dict[tuple, FragmentReassembler] = {}
        self._last_init_request = None
        self._pending_requests: dict[tuple, object] = {}
        self.run()

    def sk_keys(self, spis, from_initiator: bool) -> SKKeys:
        s, suite = self.keys[spis], self.suites[spis]
        e, a = ("sk_ei", "sk_ai") if from_initiator else ("sk_er", "sk_ar")
        return SKKeys(suite.encr, suite.integ, bytes.fromhex(s[e]), bytes.fromhex(s[a] or ""))

    def run(self):
        for m in self.d["messages"]:
            raw = bytes.fromhex(m["hex"])
            msg = decode_message(raw)
            if msg.exchange == ExchangeType.IKE_SA_INIT:
                if not msg.is_response:
                    self._last_init_request = (raw, msg)
                elif msg.get(P.SAPayload) is not None:
                    spis = (msg.spi_i, msg.spi_r)
                    req_raw, req = self._last_init_request
                    self.suites[spis] = ike_suite(msg.get(P.SAPayload).proposals[0])
                    self.init_nonces[spis] = (req.get(P.NoncePayload).data, msg.get(P.NoncePayload).data)
                    self.init_raw[spis] = (req_raw, raw)
                continue
            spis = (msg.spi_i, msg.spi_r)
            keys = self.sk_keys(spis, msg.is_initiator)
            if isinstance(msg.payloads[-1], P.SKFPayload):
                r = self.reassemblers.setdefault((spis, msg.message_id, msg.is_response), FragmentReassembler())
                inner = r.add(raw, msg, keys)
                if inner is None:
                    continue
            else:
                inner = open_message(raw, msg, keys)
            self.inner.append((spis, inner))
            self._track_ike_rekey(spis, inner)

    def _track_ike_rekey(self, spis, inner):
        sa = inner.get(P.SAPayload)
        if inner.exchange != ExchangeType.CREATE_CHILD_SA or sa is None or sa.proposals[0].protocol != ProtocolId.IKE:
            return
        key = (spis, inner.message_id)
        if not inner.is_response:
            self._pending_requests[key] = inner
            return
        req = self._pending_requests.pop(key)
        chosen = sa.proposals[0]
        new = (req.get(P.SAPayload).proposals[0].spi, chosen.spi)
        self.suites[new] = ike_suite(chosen)
        self.rekeys[new] = {"old": spis, "ni": req.get(P.NoncePayload).data, "nr": inner.get(P.NoncePayload).data}


@pytest.fixture(scope="module", params=FILES, ids=[p.stem for p in FILES])
def replay(request):
    return Replay(request.param)


def test_every_message_decodes_and_cleartext_reencodes(replay):
    n_clear = 0
    for m in replay.d["messages"]:
        raw = bytes.fromhex(m["hex"])
        msg = decode_message(raw)
        assert encode_message(msg) == raw  # SK/SKF bodies are kept as received, so all re-encode
        if msg.encrypted is None:
            n_clear += 1
    assert n_clear >= 2  # at least the IKE_SA_INIT pair


def _summaries(d):
    out = {}
    for s in d["summaries"] + d["responder_summaries"]:
        if s["payloads"].startswith("EF(") or s["exchange"] == "IKE_SA_INIT":
            continue
        out.setdefault((s["exchange"], s["kind"], s["mid"]), set()).add(s["payloads"])
    return out


def test_decrypted_payloads_match_strongswan_log(replay):
    summaries = _summaries(replay.d)
    assert replay.inner, "no encrypted message was decrypted"
    seen = 0
    for _spis, inner in replay.inner:
        key = (inner.exchange_name, "response" if inner.is_response else "request", inner.message_id)
        ours = payload_summary(inner.payloads)
        assert ours in summaries.get(key, set()), f"{key}: we read [{ours}], strongSwan logged {summaries.get(key)}"
        seen += 1
    assert seen == len(replay.inner)


def test_init_cleartext_matches_strongswan_log(replay):
    logged = {s["payloads"] for s in replay.d["summaries"] + replay.d["responder_summaries"]
              if s["exchange"] == "IKE_SA_INIT"}
    for m in replay.d["messages"]:
        msg = decode_message(bytes.fromhex(m["hex"]))
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            assert payload_summary(msg.payloads) in logged


def test_ike_keys_match_strongswan(replay):
    checked = 0
    for spis, s in replay.keys.items():
        suite = replay.suites[spis]
        shared = bytes.fromhex(s["shared_dh_secret"])
        if spis in replay.init_nonces:
            ni, nr = replay.init_nonces[spis]
            skeyseed, k = derive_ike_keys(suite.prf, suite.encr, suite.integ, shared, ni, nr, *spis)
        else:
            rk = replay.rekeys[spis]
            old = replay.keys[rk["old"]]
            old_suite = replay.suites[rk["old"]]
            skeyseed, k = derive_rekeyed_ike_keys(old_suite.prf, bytes.fromhex(old["sk_d"]), suite.prf,
                                                  suite.encr, suite.integ, shared, rk["ni"], rk["nr"], *spis)
        assert skeyseed.hex() == s["skeyseed"]
        for name in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
            assert (getattr(k, name) or b"").hex() == (s[name] or ""), name
        checked += 1
    assert checked == len(replay.d["ike_sas"]) >= 1


def _child_exchange(replay, child):
    """Nonces (ni, nr) and the ESP proposal of the exchange that created this Child SA."""
    spi_in, spi_out = bytes.fromhex(child["spi_in"]), bytes.fromhex(child["spi_out"])
    msgs = replay.inner
    for i, (spis, m) in enumerate(msgs):
        sa = m.get(P.SAPayload)
        if not m.is_response or sa is None or sa.proposals[0].protocol != ProtocolId.ESP:
            continue
        if sa.proposals[0].spi not in (spi_in, spi_out):
            continue
        req = next(r for s2, r in msgs[:i] if s2 == spis and not r.is_response and r.message_id == m.message_id
                   and r.exchange == m.exchange)
        if m.exchange == ExchangeType.IKE_AUTH:
            ni, nr = replay.init_nonces[spis]
        else:
            ni, nr = req.get(P.NoncePayload).data, m.get(P.NoncePayload).data
        return spis, ni, nr, sa.proposals[0]
    raise AssertionError(f"no exchange created child {child['spi_in']}/{child['spi_out']}")


def test_child_keys_match_strongswan(replay):
    checked = 0
    for child in replay.d["child_sas"]:
        if not child.get("encr_i"):
            continue
        spis, ni, nr, proposal = _child_exchange(replay, child)
        ike = replay.keys[spis]
        suite = replay.suites[spis]
        cs = child_suite(proposal)
        shared = bytes.fromhex(child["dh_secret"]) if child.get("dh_secret") else None
        k = derive_child_keys(suite.prf, bytes.fromhex(ike["sk_d"]), cs.encr, cs.integ, ni, nr, shared)
        assert k.encr_i.hex() == child["encr_i"] and k.encr_r.hex() == child["encr_r"]
        assert (k.integ_i or b"").hex() == (child.get("integ_i") or "")
        assert (k.integ_r or b"").hex() == (child.get("integ_r") or "")
        checked += 1
    assert checked >= 1


def test_auth_payloads_verify(replay):
    """AUTH of both peers with our signed-octets and PSK/signature code (not for EAP rounds)."""
    d = replay.d
    checked = 0
    for spis, m in replay.inner:
        if m.exchange != ExchangeType.IKE_AUTH or spis not in replay.init_raw:
            continue
        auth = m.get(P.AuthPayload)
        idp = m.get(P.IDrPayload if m.is_response else P.IDiPayload)
        if auth is None or idp is None:
            continue
        ike, suite = replay.keys[spis], replay.suites[spis]
        req_raw, resp_raw = replay.init_raw[spis]
        ni, nr = replay.init_nonces[spis]
        if m.is_response:
            octets = cauth.signed_octets(resp_raw, ni, suite.prf, bytes.fromhex(ike["sk_pr"]), idp.encode_body())
        else:
            octets = cauth.signed_octets(req_raw, nr, suite.prf, bytes.fromhex(ike["sk_pi"]), idp.encode_body())
        if auth.method == AuthMethod.PSK:
            if "eap" in d and not m.is_response:
                continue  # the EAP client's AUTH is keyed with the MSK, not the PSK
            expect = cauth.psk_auth_data(suite.prf, d["psk"].encode(), octets)
            assert auth.data == expect
        else:
            role = "responder" if m.is_response else "initiator"
            cert = x509.load_pem_x509_certificate(d["certs"][role].encode())
            assert cauth.verify(cert.public_key(), auth.method, auth.data, octets)
            assert not cauth.verify(cert.public_key(), auth.method, auth.data, octets + b"x")
        checked += 1
    if d["scenario"] != "eap-mschapv2-cp":
        assert checked >= 2
