"""SK and SKF payload protection (RFC 7296 3.14, RFC 5282, RFC 7383)."""
from __future__ import annotations

import pytest

from ikev2 import payloads as P
from ikev2.constants import EncrId, ExchangeType, HeaderFlag, IntegId, PayloadType
from ikev2.crypto.transforms import encr_by_id, integ_by_id
from ikev2.errors import AuthenticatedParseError, IntegrityError, ParseError
from ikev2.message import decode_message
from ikev2.sk import FragmentReassembler, SKKeys, open_message, seal
from tests.engine.harness import DetRandom

SUITES = [
    (EncrId.AES_GCM_16, 128, None),
    (EncrId.AES_GCM_16, 256, None),
    (EncrId.CHACHA20_POLY1305, None, None),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192),
    (EncrId.AES_CBC, 192, IntegId.HMAC_SHA2_512_256),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA1_96),
]


def keys_for(encr_id, bits, integ_id, seed="k"):
    rnd = DetRandom(seed)
    encr = encr_by_id(encr_id, bits)
    integ = integ_by_id(integ_id) if integ_id else None
    return SKKeys(encr, integ, rnd(encr.key_len), rnd(integ.key_len) if integ else b"")


def inner_payloads(n_big=0):
    out = [P.IDiPayload(id_type=2, data=b"site.example.org"),
           P.AuthPayload(method=2, data=bytes(range(32))),
           P.NotifyPayload(notify_type=16384)]
    if n_big:
        out.append(P.CertPayload(encoding=4, data=bytes(i % 251 for i in range(n_big))))
    return out


SPI_I, SPI_R = bytes.fromhex("1111111111111111"), bytes.fromhex("2222222222222222")


@pytest.mark.parametrize("encr_id,bits,integ_id", SUITES)
def test_seal_open_roundtrip(encr_id, bits, integ_id):
    k = keys_for(encr_id, bits, integ_id)
    pls = inner_payloads()
    [raw] = seal(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1, pls, k, DetRandom("iv"))
    msg = decode_message(raw)
    assert isinstance(msg.payloads[-1], P.SKPayload) and msg.payloads[-1].first_inner == PayloadType.IDi
    opened = open_message(raw, msg, k)
    assert opened.payloads == pls
    assert opened.message_id == 1 and opened.exchange == ExchangeType.IKE_AUTH


@pytest.mark.parametrize("encr_id,bits,integ_id", SUITES)
def test_any_flipped_bit_fails_integrity(encr_id, bits, integ_id):
    k = keys_for(encr_id, bits, integ_id)
    [raw] = seal(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 0, 7, inner_payloads(), k, DetRandom("iv"))
    # Flip one bit in the header, in the SK payload header, in the IV, the ciphertext, the ICV.
    for pos in (0, 20, 28 + 1, 28 + 4, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        try:
            msg = decode_message(bytes(bad))
        except ParseError:
            continue  # the header/payload structure itself broke: also rejected
        with pytest.raises(IntegrityError):
            open_message(bytes(bad), msg, k)


def test_wrong_key_fails():
    k1 = keys_for(EncrId.AES_GCM_16, 256, None, "one")
    k2 = keys_for(EncrId.AES_GCM_16, 256, None, "two")
    [raw] = seal(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 0, 2, [], k1, DetRandom("iv"))
    with pytest.raises(IntegrityError):
        open_message(raw, decode_message(raw), k2)


def test_too_short_encrypted_payload():
    k = keys_for(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128)
    from ikev2.message import Message, encode_message
    raw = encode_message(Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 0, 0,
                                 [P.SKPayload(first_inner=0, data=bytes(20))]))
    with pytest.raises(ParseError, match="too short"):
        open_message(raw, decode_message(raw), k)


def test_malformed_inner_content_is_authenticated_parse_error():
    """Content that decrypts fine but is malformed: the peer deserves INVALID_SYNTAX."""
    k = keys_for(EncrId.AES_GCM_16, 128, None)
    # A nonce that is too short is a well-formed chain but an invalid payload.
    [raw] = seal(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 0, 3, [P.NoncePayload(data=b"short")], k,
                 DetRandom("iv"))
    with pytest.raises(AuthenticatedParseError):
        open_message(raw, decode_message(raw), k)


@pytest.mark.parametrize("encr_id,bits,integ_id", SUITES)
@pytest.mark.parametrize("max_size", [200, 577, 1252])
def test_fragmentation_roundtrip_any_order(encr_id, bits, integ_id, max_size):
    k = keys_for(encr_id, bits, integ_id)
    pls = inner_payloads(n_big=3000)
    frags = seal(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1, pls, k, DetRandom("iv"), max_size)
    assert len(frags) > 1
    assert all(len(f) <= max_size for f in frags)
    assert sum(len(f) for f in frags[:-1]) / (len(frags) - 1) > max_size * 0.8  # fragments are full
    # Deliver in reverse order with a duplicate: reassembly completes exactly once.
    r = FragmentReassembler()
    results = []
    for raw in list(reversed(frags)) + [frags[0]]:
        msg = decode_message(raw)
        assert isinstance(msg.payloads[-1], P.SKFPayload)
        out = r.add(raw, msg, k)
        if out is not None:
            results.append(out)
    assert len(results) == 1
    assert results[0].payloads == pls


def test_fragment_with_bad_icv_is_rejected_before_storing():
    k = keys_for(EncrId.AES_GCM_16, 256, None)
    frags = seal(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 0, 1, inner_payloads(2000), k, DetRandom("iv"), 400)
    r = FragmentReassembler()
    bad = bytearray(frags[1])
    bad[-1] ^= 0xFF
    with pytest.raises(IntegrityError):
        r.add(bytes(bad), decode_message(bytes(bad)), k)
    assert r.pieces == {}


def test_reassembler_limits():
    k = keys_for(EncrId.AES_GCM_16, 256, None)
    frags = seal(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 0, 1, inner_payloads(6000), k, DetRandom("iv"), 300)
    r = FragmentReassembler(max_fragments=8)
    with pytest.raises(ParseError, match="exceed the limit"):
        r.add(frags[0], decode_message(frags[0]), k)
    r = FragmentReassembler(max_bytes=1000)
    with pytest.raises(ParseError, match="exceeds 1000 bytes"):
        for raw in frags:
            r.add(raw, decode_message(raw), k)


def test_newer_fragmentation_with_more_fragments_restarts():
    """RFC 7383 2.6: fragments of a re-fragmented retransmission (more fragments) win."""
    k = keys_for(EncrId.AES_GCM_16, 256, None)
    pls = inner_payloads(1500)
    big = seal(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 0, 1, pls, k, DetRandom("a"), 1000)
    small = seal(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 0, 1, pls, k, DetRandom("b"), 400)
    assert len(small) > len(big)
    r = FragmentReassembler()
    assert r.add(big[0], decode_message(big[0]), k) is None
    out = None
    for raw in small:
        out = r.add(raw, decode_message(raw), k) or out
    assert out is not None and out.payloads == pls
