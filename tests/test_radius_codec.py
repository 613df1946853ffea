"""vpn_gw.radius.codec: EAP-Message split/join, MS-MPPE key decryption (RFC 2548), strict reply
decoding (every malformed or unauthentic reply is one RadiusError)."""
from __future__ import annotations

import random
import struct

import pytest
from pyrad import packet as pp

from vpn_gw.radius.codec import (
    ACCESS_ACCEPT,
    ACCESS_REQUEST,
    RadiusError,
    decode_reply,
    decrypt_mppe_key,
    dictionary,
    join_eap,
    msk_from_mppe,
    split_eap,
)

SECRET = b"testing123"


def test_split_and_join_eap():
    msg = struct.pack("!BBH", 2, 7, 600) + bytes(range(256)) * 2 + bytes(84)
    chunks = split_eap(msg)
    assert [len(c) for c in chunks] == [253, 253, 94]
    assert join_eap(chunks) == msg
    assert join_eap([]) is None
    with pytest.raises(RadiusError, match="EAP Length says"):
        join_eap(chunks[:2])
    with pytest.raises(RadiusError):
        split_eap(b"")


def test_mppe_key_roundtrip_with_pyrad_salt_encryption():
    """pyrad's SaltCrypt is RFC 2868 3.5, the same construction as RFC 2548 2.4.2."""
    req_auth = bytes(range(16))
    reply = pp.AuthPacket(code=ACCESS_ACCEPT, secret=SECRET, dict=dictionary())
    reply.request_authenticator = req_auth
    for key in (bytes(range(16)), bytes(range(32)), b"\xff" * 31):
        enc = reply.SaltCrypt(key)
        assert decrypt_mppe_key(enc, SECRET, req_auth) == key
        try:
            assert decrypt_mppe_key(enc, b"other", req_auth) != key
        except RadiusError:
            pass  # the wrong secret usually decrypts a key length that does not fit


def test_mppe_key_malformed():
    with pytest.raises(RadiusError, match="2 \\+ n\\*16"):
        decrypt_mppe_key(b"\x80\x01" + bytes(15), SECRET, bytes(16))
    with pytest.raises(RadiusError, match="high bit"):
        decrypt_mppe_key(b"\x00\x01" + bytes(16), SECRET, bytes(16))


def test_msk_is_padded_to_64_octets():
    assert msk_from_mppe(b"r" * 16, b"s" * 16) == b"r" * 16 + b"s" * 16 + bytes(32)
    assert msk_from_mppe(b"r" * 32, b"s" * 32) == b"r" * 32 + b"s" * 32


def _request():
    req = pp.AuthPacket(code=ACCESS_REQUEST, secret=SECRET, dict=dictionary(), id=5)
    req.add_message_authenticator()
    req.AddAttribute("User-Name", "alice")
    req.RequestPacket()
    return req


def _accept(req, **attrs):
    rep = req.CreateReply(**attrs)
    rep.code = ACCESS_ACCEPT
    return rep.ReplyPacket()


def test_decode_reply_authenticates():
    req = _request()
    raw = _accept(req, Framed_IP_Address="10.99.0.5")
    reply = decode_reply(req, raw)
    assert reply.code == ACCESS_ACCEPT and reply.first("Framed-IP-Address") == "10.99.0.5"
    forged = bytearray(raw)
    forged[-1] ^= 1
    with pytest.raises(RadiusError):
        decode_reply(req, bytes(forged))
    other = pp.AuthPacket(code=ACCESS_REQUEST, secret=b"wrong", dict=dictionary(), id=5,
                          authenticator=req.authenticator)
    with pytest.raises(RadiusError, match="fails authentication"):
        decode_reply(req, _accept(other))


def test_decode_reply_mutations_raise_only_radius_error():
    req = _request()
    raw = _accept(req, Framed_IP_Address="10.99.0.5", Class=b"c")
    rnd = random.Random(17)
    for _ in range(2000):
        b = bytearray(raw)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            b = b[:rnd.randrange(len(b))]
        try:
            decode_reply(req, bytes(b))
        except RadiusError:
            pass


def test_dae_listener_drops_garbage_and_answers_authentic_requests():
    """Disconnect listener (RFC 5176) without a network: mutated and foreign datagrams are dropped
    (counted), never an exception; an authentic request is answered ACK/NAK."""
    from vpn_gw.radius.codec import DISCONNECT_ACK, DISCONNECT_NAK, DISCONNECT_REQUEST
    from vpn_gw.radius.dae import DaeListener

    class Sink:
        def __init__(self):
            self.sent = []

        def sendto(self, data, addr):
            self.sent.append(data)

    seen = []
    dae = DaeListener({"192.0.2.10": SECRET}, lambda r: (seen.append(r), 1 if r.user_name == "alice" else 0)[1])
    dae.transport = Sink()
    req = pp.CoAPacket(code=DISCONNECT_REQUEST, secret=SECRET, dict=dictionary(), id=9)
    req.AddAttribute("User-Name", "alice")
    raw = req.RequestPacket()
    dae.datagram_received(raw, ("198.51.100.99", 3799))          # unknown client
    assert dae.dropped == 1 and not dae.transport.sent
    dae.datagram_received(raw, ("192.0.2.10", 3799))
    assert dae.transport.sent[-1][0] == DISCONNECT_ACK and seen[-1].user_name == "alice"
    dae.datagram_received(raw, ("192.0.2.10", 3799))              # retransmission: cached answer
    assert len(seen) == 1 and len(dae.transport.sent) == 2
    other = pp.CoAPacket(code=DISCONNECT_REQUEST, secret=SECRET, dict=dictionary(), id=10)
    other.AddAttribute("User-Name", "carol")
    dae.datagram_received(other.RequestPacket(), ("192.0.2.10", 3799))
    assert dae.transport.sent[-1][0] == DISCONNECT_NAK
    rnd = random.Random(5)
    before = len(dae.transport.sent)
    for _ in range(2000):
        b = bytearray(raw)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            b = b[:rnd.randrange(len(b))]
        if bytes(b) == raw:
            continue  # the mutation rewrote a byte with its own value: a real retransmission
        dae.datagram_received(bytes(b), ("192.0.2.10", 3799))
    # mutations fail the Request Authenticator (checked before the retransmission cache):
    # nothing answered for them
    assert len(dae.transport.sent) == before


def test_dae_listener_coa_session_timeout_ack_and_naks():
    """CoA-Request (as strongSwan's eap-radius): Session-Timeout applied to the matching
    sessions → CoA-ACK; NAK with Error-Cause 503 (no session), 401 (an attribute it cannot
    apply), 402 (no session named / no Session-Timeout), 405 (no CoA handler)."""
    from vpn_gw.radius.codec import COA_ACK, COA_NAK, COA_REQUEST
    from vpn_gw.radius.dae import DaeListener

    class Sink:
        def __init__(self):
            self.sent = []

        def sendto(self, data, addr):
            self.sent.append(data)

    seen = []

    def coa(r):
        seen.append(r)
        return 1 if r.match.matches("alice", "s-1", ["10.99.0.7"]) else 0

    def ask(dae, ident, **attrs):
        req = pp.CoAPacket(code=COA_REQUEST, secret=SECRET, dict=dictionary(), id=ident)
        for k, v in attrs.items():
            req.AddAttribute(k.replace("_", "-"), v)
        dae.datagram_received(req.RequestPacket(), ("192.0.2.10", 3799))
        reply = pp.CoAPacket(secret=SECRET, dict=dictionary(), packet=dae.transport.sent[-1])
        return reply.code, (reply.get("Error-Cause") or [None])[0]

    dae = DaeListener({"192.0.2.10": SECRET}, lambda r: 0, coa)
    dae.transport = Sink()
    assert ask(dae, 1, User_Name="alice", Session_Timeout=30) == (COA_ACK, None)
    assert seen[-1].session_timeout == 30 and seen[-1].match.user_name == "alice"
    assert ask(dae, 2, Acct_Session_Id="s-1", NAS_Identifier="radius", Session_Timeout=0) == (COA_ACK, None)
    assert ask(dae, 3, User_Name="carol", Session_Timeout=30) == (COA_NAK, 503)
    assert ask(dae, 4, User_Name="alice", Session_Timeout=30, Filter_Id="staff") == (COA_NAK, 401)
    assert ask(dae, 5, User_Name="alice") == (COA_NAK, 402)
    assert ask(dae, 6, Session_Timeout=30) == (COA_NAK, 402)
    assert len(seen) == 3     # the NAKed-before-matching requests never reached the handler
    off = DaeListener({"192.0.2.10": SECRET}, lambda r: 0)
    off.transport = Sink()
    assert ask(off, 7, User_Name="alice", Session_Timeout=30) == (COA_NAK, 405)
