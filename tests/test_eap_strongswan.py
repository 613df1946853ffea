"""EAP-MSCHAPv2 against a real strongSwan 5.9.8 exchange (tests/data/strongswan/eap-mschapv2-cp.json).

The IKE_AUTH messages are decrypted with the logged keys; then

* our authenticator, given strongSwan's identifier and challenge, emits byte-identical
  Requests, accepts the recorded client Responses and ends with the recorded EAP-Success;
* our peer, given the recorded peer challenge, answers the recorded Requests with
  byte-identical Responses (same NT-Response), and verifies the recorded authenticator
  response;
* the MSK both sides derive verifies the AUTH payloads of the final IKE_AUTH request and
  response (RFC 7296 2.16: prf(prf(MSK, "Key Pad for IKEv2"), <signed octets>)), i.e. our MSK
  is the one strongSwan used.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ikev2 import payloads as P
from ikev2.constants import AuthMethod, EapCode, EapType
from ikev2.crypto import auth as cauth
from ikev2.eap import EapClient, EapServer, UserDB, nt_hash
from ikev2.eap import mschapv2 as M
from tests.test_strongswan_recordings import Replay

DATA = Path(__file__).parent / "data" / "strongswan" / "eap-mschapv2-cp.json"


class Recorded:
    def __init__(self):
        self.replay = Replay(DATA)
        d = self.replay.d
        self.identity = d["eap"]["identity"]
        self.password = d["eap"]["password"]
        self.spis = self.replay.inner[0][0]
        self.eap = [(m, m.get(P.EAPPayload).message) for _s, m in self.replay.inner if m.get(P.EAPPayload)]
        self.requests = [raw for m, raw in self.eap if raw[0] in (EapCode.REQUEST, EapCode.SUCCESS, EapCode.FAILURE)]
        self.responses = [raw for m, raw in self.eap if raw[0] == EapCode.RESPONSE]
        auths = [m for _s, m in self.replay.inner if m.get(P.AuthPayload) and m.get(P.EAPPayload) is None
                 and m.get(P.IDiPayload) is None]
        self.final_request = next(m for m in auths if not m.is_response)
        self.final_response = next(m for m in auths if m.is_response)

    def octets(self, initiator: bool) -> bytes:
        r = self.replay
        ike, suite = r.keys[self.spis], r.suites[self.spis]
        req_raw, resp_raw = r.init_raw[self.spis]
        ni, nr = r.init_nonces[self.spis]
        first = r.inner[0][1]
        if initiator:
            return cauth.signed_octets(req_raw, nr, suite.prf, bytes.fromhex(ike["sk_pi"]),
                                       first.get(P.IDiPayload).encode_body())
        idr = next(m for _s, m in r.inner if m.is_response and m.get(P.IDrPayload)).get(P.IDrPayload)
        return cauth.signed_octets(resp_raw, ni, suite.prf, bytes.fromhex(ike["sk_pr"]), idr.encode_body())

    def check_msk(self, msk: bytes) -> None:
        suite = self.replay.suites[self.spis]
        for msg, initiator in ((self.final_request, True), (self.final_response, False)):
            auth = msg.get(P.AuthPayload)
            assert auth.method == AuthMethod.PSK
            assert auth.data == cauth.eap_msk_auth_data(suite.prf, msk, self.octets(initiator))
            assert auth.data != cauth.eap_msk_auth_data(suite.prf, msk[:63] + b"\x01", self.octets(initiator))


@pytest.fixture(scope="module")
def rec() -> Recorded:
    return Recorded()


class Feed:
    """random_bytes that hands out given values in order."""

    def __init__(self, *values: bytes):
        self.values = list(values)

    def __call__(self, n: int) -> bytes:
        v = self.values.pop(0)
        assert len(v) == n
        return v


def test_recording_has_the_expected_eap_conversation(rec):
    kinds = [(raw[0], raw[4] if len(raw) > 4 else None) for _m, raw in rec.eap]
    assert kinds == [(1, EapType.IDENTITY), (2, EapType.IDENTITY), (1, 26), (2, 26), (1, 26), (2, 26), (3, None)]
    assert rec.replay.d["strongswan_version"] == "5.9.8"


def test_server_identity_request_matches_strongswan(rec):
    srv = EapServer("mschapv2", UserDB(), Feed(bytes([rec.requests[0][1]]), bytes(16)))
    assert srv.start() == rec.requests[0]
    # and accepts strongSwan's identity response
    step = srv.process(rec.responses[0])
    assert step.identity == rec.identity and not step.done and step.send[4] == 26


def test_our_server_accepts_strongswan_client(rec):
    challenge_req, success_req, eap_success = rec.requests[1], rec.requests[2], rec.requests[3]
    challenge = M.parse_challenge(challenge_req[5:]).challenge
    users = UserDB.from_toml(f'[[user]]\nname = "{rec.identity}"\nnt_hash = "{nt_hash(rec.password)}"\n')
    srv = EapServer("mschapv2", users, Feed(bytes([challenge_req[1]]), challenge), identity_request=False,
                    server_name="strongSwan")
    # same identifier, challenge and name as strongSwan: byte-identical Challenge request
    assert srv.start(identity=rec.identity) == challenge_req
    step = srv.process(rec.responses[1])
    assert not step.done
    # code, identifier (0x42), type, OpCode Success, MS-CHAPv2-ID (0x41) as strongSwan
    assert step.send[:2] == success_req[:2] and step.send[4:7] == success_req[4:7]
    ours = M.parse_success_request(step.send[5:])
    theirs = M.parse_success_request(success_req[5:])
    assert ours.auth_string == theirs.auth_string  # same authenticator response as strongSwan
    step = srv.process(rec.responses[2])
    assert step.done and step.success and step.send == eap_success
    assert step.identity == rec.identity and step.method == "mschapv2"
    rec.check_msk(step.msk)


def test_our_client_answers_like_strongswan_client(rec):
    response = M.parse_response(rec.responses[1][5:])
    cli = EapClient(rec.identity, password=rec.password, allowed={"mschapv2"},
                    random_bytes=Feed(response.peer_challenge))
    assert cli.process(rec.requests[0]).send == rec.responses[0]  # Identity
    step = cli.process(rec.requests[1])  # Challenge -> Response with the same NT-Response
    assert M.parse_response(step.send[5:]).nt_response == response.nt_response
    assert step.send == rec.responses[1]
    step = cli.process(rec.requests[2])  # Success-Request: authenticator response verifies
    assert step.send == rec.responses[2] and not step.done
    step = cli.process(rec.requests[3])  # EAP-Success
    assert step.done and step.success and step.msk is not None
    rec.check_msk(step.msk)


def test_msk_from_recorded_values(rec):
    challenge = M.parse_challenge(rec.requests[1][5:]).challenge
    r = M.parse_response(rec.responses[1][5:])
    ph = M.nt_password_hash(rec.password)
    assert M.generate_nt_response(challenge, r.peer_challenge, M.strip_domain(r.name), ph) == r.nt_response
    auth = M.generate_authenticator_response(ph, r.nt_response, r.peer_challenge, challenge, r.name)
    assert auth == M.parse_success_request(rec.requests[2][5:]).auth_string
    rec.check_msk(M.mschapv2_msk(ph, r.nt_response))


def test_recorded_client_rejected_with_another_password(rec):
    challenge_req = rec.requests[1]
    challenge = M.parse_challenge(challenge_req[5:]).challenge
    users = UserDB.from_toml(f'[[user]]\nname = "{rec.identity}"\nnt_hash = "{nt_hash("not-it")}"\n')
    srv = EapServer("mschapv2", users, Feed(bytes([challenge_req[1]]), challenge, bytes(16)),
                    identity_request=False)
    srv.start(identity=rec.identity)
    step = srv.process(rec.responses[1])
    assert not step.done and step.send[5] == M.OP_FAILURE
    assert "wrong password" in srv.process(bytes([2, step.send[1], 0, 6, 26, 4])).reason


def test_recording_json_is_format_1():
    assert json.loads(DATA.read_text())["format"] == 1
