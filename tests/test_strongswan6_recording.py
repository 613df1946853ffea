"""A strongSwan 6 hybrid exchange (x25519 + ML-KEM-768, tests/data/strongswan6) checked with our code.

Recorded by tests/interop/record_strongswan6.py between two charon-6; both logged every
key-derivation step and save-keys wrote the SK_e keys of both steps.  Here:

* our RFC 7296 derivation gives strongSwan's keys after IKE_SA_INIT, and our RFC 9370 update
  (``multi_ke.updated_ike_keys``) its keys after IKE_INTERMEDIATE, SKEYSEED included;
* the IKE_INTERMEDIATE request (2 SKF fragments) and response decrypt with the first keys
  and carry an ML-KEM-768 encapsulation key / ciphertext of the exact lengths;
* IKE_AUTH decrypts with the updated keys, and both AUTH payloads verify with our RFC 9242
  IntAuth chain (``multi_ke``) appended to the signed octets.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ikev2 import payloads as P
from ikev2.constants import ExchangeType
from ikev2.crypto import auth as cauth
from ikev2.crypto.keys import derive_ike_keys
from ikev2.crypto.proposals import ike_suite, proposal_display
from ikev2.message import decode_message
from ikev2.multi_ke import IntAuthChain, int_auth_ap, updated_ike_keys
from ikev2.sk import FragmentReassembler, SKKeys, open_message

REC = json.loads((Path(__file__).parent / "data" / "strongswan6" / "pq-x25519-mlkem768.json").read_text())
KEY_NAMES = ("sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr")


def _messages():
    return [(bytes.fromhex(m["hex"]), decode_message(bytes.fromhex(m["hex"]))) for m in REC["messages"]]


@pytest.fixture(scope="module")
def rec():
    msgs = _messages()
    init_req = next(m for r, m in msgs if m.exchange == ExchangeType.IKE_SA_INIT and not m.is_response)
    init_rsp_raw, init_rsp = next((r, m) for r, m in msgs
                                  if m.exchange == ExchangeType.IKE_SA_INIT and m.is_response)
    init_req_raw = next(r for r, m in msgs if m is init_req)
    suite = ike_suite(init_rsp.get(P.SAPayload).proposals[0])
    ni, nr = init_req.get(P.NoncePayload).data, init_rsp.get(P.NoncePayload).data
    return dict(msgs=msgs, suite=suite, ni=ni, nr=nr, spi_i=init_rsp.spi_i, spi_r=init_rsp.spi_r,
                proposal=init_rsp.get(P.SAPayload).proposals[0],
                init_req_raw=init_req_raw, init_rsp_raw=init_rsp_raw)


def _hex(keys):
    return {n: getattr(keys, n).hex() for n in KEY_NAMES}


def test_negotiated_suite(rec):
    assert proposal_display(rec["proposal"]) == \
        "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519/KE1_ML_KEM_768"
    assert REC["list_sas"]["ake1"] == "ML_KEM_768"


def test_key_derivation_matches_strongswan_step_by_step(rec):
    s = rec["suite"]
    step0, step1 = REC["key_steps"]
    assert [len(x) // 2 for x in step0["shared_secrets"] + step1["shared_secrets"]] == [32, 32]
    skeyseed0, k0 = derive_ike_keys(s.prf, s.encr, s.integ, bytes.fromhex(step0["shared_secrets"][0]),
                                    rec["ni"], rec["nr"], rec["spi_i"], rec["spi_r"])
    assert skeyseed0.hex() == step0["skeyseed"]
    assert _hex(k0) == {n: step0[n] for n in KEY_NAMES}
    shared1 = bytes.fromhex(step1["shared_secrets"][0])  # ML-KEM-768 K
    # SKEYSEED(1) = prf(SK_d(0), SK(1) | Ni | Nr)  (RFC 9370 2.2.2)
    assert s.prf(k0.sk_d, shared1 + rec["ni"] + rec["nr"]).hex() == step1["skeyseed"]
    k1 = updated_ike_keys(s, k0, shared1, rec["ni"], rec["nr"], rec["spi_i"], rec["spi_r"])
    assert _hex(k1) == {n: step1[n] for n in KEY_NAMES}
    # save-keys wrote one line per step (SPIs, SK_ei, SK_er, ...), identical on both ends.
    lines = REC["save_keys"]["site"]
    assert lines == REC["save_keys"]["gw"] and len(lines) == 2
    for line, keys in zip(lines, (k0, k1), strict=True):
        spi_i, spi_r, sk_ei, sk_er = line.split(",")[:4]
        assert (spi_i, spi_r) == (rec["spi_i"].hex(), rec["spi_r"].hex())
        assert (sk_ei, sk_er) == (keys.sk_ei.hex(), keys.sk_er.hex())


def _keys(rec, step):
    st = REC["key_steps"][step]
    s = rec["suite"]
    return (SKKeys(s.encr, s.integ, bytes.fromhex(st["sk_ei"])),
            SKKeys(s.encr, s.integ, bytes.fromhex(st["sk_er"])))


def _decrypt(rec, exchange, step):
    ki, kr = _keys(rec, step)
    out = []
    reasm = FragmentReassembler()
    for raw, msg in rec["msgs"]:
        if msg.exchange != exchange:
            continue
        keys = kr if msg.is_response else ki
        if isinstance(msg.payloads[-1], P.SKFPayload):
            inner = reasm.add(raw, msg, keys)
            if inner is not None:
                out.append((inner, True))
        else:
            out.append((open_message(raw, msg, keys), False))
    return out


def test_intermediate_carries_mlkem768_in_fragments(rec):
    (req, req_frag), (rsp, rsp_frag) = _decrypt(rec, ExchangeType.IKE_INTERMEDIATE, 0)
    assert req_frag and not rsp_frag
    assert (req.get(P.KEPayload).group, len(req.get(P.KEPayload).data)) == (36, 1184)
    assert (rsp.get(P.KEPayload).group, len(rsp.get(P.KEPayload).data)) == (36, 1088)


def test_auth_payloads_verify_with_our_intauth(rec):
    s = rec["suite"]
    st0, st1 = REC["key_steps"]
    (req, _), (rsp, _) = _decrypt(rec, ExchangeType.IKE_INTERMEDIATE, 0)

    def ap(m):
        return int_auth_ap(inner=m.plain_inner, first=m.payloads[0].type, spi_i=rec["spi_i"],
                           spi_r=rec["spi_r"], exchange=m.exchange, flags=m.flags,
                           message_id=m.message_id)
    chain = IntAuthChain()
    chain.add(s.prf, bytes.fromhex(st0["sk_pi"]), bytes.fromhex(st0["sk_pr"]), ap(req), ap(rsp))
    (auth_req, _), (auth_rsp, _) = _decrypt(rec, ExchangeType.IKE_AUTH, 1)
    assert auth_req.message_id == 2
    tail = chain.auth_suffix(auth_req.message_id)
    psk = REC["psk"].encode()
    for m, init_raw, nonce, sk_p in ((auth_req, rec["init_req_raw"], rec["nr"], st1["sk_pi"]),
                                     (auth_rsp, rec["init_rsp_raw"], rec["ni"], st1["sk_pr"])):
        idp = m.get(P.IDiPayload) if m is auth_req else m.get(P.IDrPayload)
        octets = cauth.signed_octets(init_raw, nonce, s.prf, bytes.fromhex(sk_p), idp.encode_body())
        assert cauth.psk_auth_data(s.prf, psk, octets + tail) == m.get(P.AuthPayload).data
        # Without the IntAuth chain (or with a wrong one) it does not verify.
        assert cauth.psk_auth_data(s.prf, psk, octets) != m.get(P.AuthPayload).data
        assert cauth.psk_auth_data(s.prf, psk, octets + chain.auth_suffix(1)) != m.get(P.AuthPayload).data
