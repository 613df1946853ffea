"""The decoder is strict: each malformation raises ParseError naming what and where."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from ikev2 import payloads as P
from ikev2.constants import ExchangeType, HeaderFlag, IdType, NotifyType, PayloadType, ProtocolId, TsType
from ikev2.errors import ParseError, UnsupportedCriticalPayload
from ikev2.message import Message, UnsupportedVersion, decode_message, encode_message
from ikev2.notify_data import build_redirect, parse_redirect, u16_list

SPI_I = bytes.fromhex("0102030405060708")


def msg(*payloads, exchange=ExchangeType.IKE_SA_INIT):
    return Message(SPI_I, bytes(8), exchange, 0, HeaderFlag.INITIATOR, list(payloads))


def raw(*payloads):
    return encode_message(msg(*payloads))


def sa_init():
    sa = P.SAPayload(proposals=[P.Proposal(1, ProtocolId.IKE, b"", [
        P.Transform(1, 20, 256), P.Transform(2, 5), P.Transform(4, 31)])])
    return [sa, P.KEPayload(group=31, data=bytes(32)), P.NoncePayload(data=bytes(32))]


def test_header_too_short():
    with pytest.raises(ParseError, match="shorter than the IKE header") as e:
        decode_message(b"\x00" * 27)
    assert e.value.offset == 0


def test_header_length_mismatch_truncated_and_trailing():
    good = raw(*sa_init())
    with pytest.raises(ParseError, match="truncated message"):
        decode_message(good[:-1])
    with pytest.raises(ParseError, match="trailing bytes after message"):
        decode_message(good + b"\x00")


def test_major_version():
    good = bytearray(raw(*sa_init()))
    good[17] = 0x30
    with pytest.raises(UnsupportedVersion) as e:
        decode_message(bytes(good))
    assert e.value.major == 3 and isinstance(e.value, ParseError)


def test_payload_length_exceeds_message():
    good = bytearray(raw(*sa_init()))
    # The KE payload header follows the SA payload; make its length too large.
    sa_len = struct.unpack_from("!H", good, 28 + 2)[0]
    ke_at = 28 + sa_len
    struct.pack_into("!H", good, ke_at + 2, 0xFFF0)
    with pytest.raises(ParseError) as e:
        decode_message(bytes(good))
    assert e.value.offset == ke_at and e.value.payload == "KE"
    assert "exceeds" in str(e.value)


def test_payload_length_below_header():
    good = bytearray(raw(*sa_init()))
    struct.pack_into("!H", good, 28 + 2, 3)
    with pytest.raises(ParseError, match="payload length 3 < 4"):
        decode_message(bytes(good))


def test_unknown_critical_payload_reported():
    m = bytearray(raw(P.UnknownPayload(type=200, body=b"abc")))
    # C bit not set: kept as an unknown payload.
    assert decode_message(bytes(m)).payloads[0] == P.UnknownPayload(type=200, body=b"abc")
    m[28 + 1] = 0x80
    with pytest.raises(UnsupportedCriticalPayload) as e:
        decode_message(bytes(m))
    assert e.value.payload_type == 200 and e.value.offset == 28


def test_known_payload_keeps_critical_bit():
    m = bytearray(raw(P.NoncePayload(data=bytes(16))))
    m[29] = 0x80
    d = decode_message(bytes(m))
    assert d.payloads[0].critical is True
    assert encode_message(d) == bytes(m)


def test_transform_count_mismatch():
    good = bytearray(raw(*sa_init()))
    good[28 + 4 + 7] = 2  # proposal says 2 transforms, carries 3
    with pytest.raises(ParseError, match="says 2 transforms, contains 3"):
        decode_message(bytes(good))


def test_last_substructure_values_checked():
    good = bytearray(raw(*sa_init()))
    good[28 + 4 + 8] = 1  # first transform: last-substructure must be 3
    with pytest.raises(ParseError, match="must be 0 or 3"):
        decode_message(bytes(good))


def test_ike_proposal_spi_size_checked():
    sa = P.SAPayload(proposals=[P.Proposal(1, ProtocolId.IKE, b"\x01\x02\x03", [P.Transform(1, 12, 128)])])
    with pytest.raises(ParseError, match="SPI size must be 0 or 8"):
        decode_message(raw(sa))


def test_esp_proposal_spi_size_checked():
    sa = P.SAPayload(proposals=[P.Proposal(1, ProtocolId.ESP, b"", [P.Transform(1, 12, 128)])])
    with pytest.raises(ParseError, match="SPI size must be 4"):
        decode_message(raw(sa))


def test_duplicate_key_length():
    t = P.Transform(1, 12, 128, [(14, 256)])
    sa = P.SAPayload(proposals=[P.Proposal(1, ProtocolId.IKE, b"", [t])])
    with pytest.raises(ParseError, match="duplicate KEY_LENGTH"):
        decode_message(raw(sa))


@pytest.mark.parametrize("ntype,data", [
    (NotifyType.NAT_DETECTION_SOURCE_IP, bytes(19)),
    (NotifyType.COOKIE, b""),
    (NotifyType.COOKIE, bytes(65)),
    (NotifyType.INVALID_KE_PAYLOAD, b"\x00"),
    (NotifyType.ADDITIONAL_IP4_ADDRESS, bytes(16)),
    (NotifyType.MOBIKE_SUPPORTED, b"x"),
    (NotifyType.SIGNATURE_HASH_ALGORITHMS, b"\x00\x02\x00"),
    (NotifyType.COOKIE2, bytes(7)),
])
def test_notify_data_lengths(ntype, data):
    with pytest.raises(ParseError) as e:
        decode_message(raw(P.NotifyPayload(notify_type=ntype, data=data)))
    assert e.value.payload.startswith("N(") or e.value.payload == "Notify"


def test_rekey_sa_needs_esp_spi():
    with pytest.raises(ParseError, match="REKEY_SA"):
        decode_message(raw(P.NotifyPayload(notify_type=NotifyType.REKEY_SA)))
    ok = P.NotifyPayload(notify_type=NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=b"\x00\x00\x00\x01")
    assert decode_message(raw(ok)).payloads == [ok]


def test_unknown_status_notify_is_kept():
    n = P.NotifyPayload(notify_type=40999, data=b"opaque")
    assert decode_message(raw(n)).payloads == [n]


def test_nonce_length():
    with pytest.raises(ParseError, match="nonce length 15"):
        decode_message(raw(P.NoncePayload(data=bytes(15))))


def test_id_fixed_lengths():
    with pytest.raises(ParseError, match="ID_IPV4_ADDR must carry 4"):
        decode_message(raw(P.IDiPayload(id_type=IdType.ID_IPV4_ADDR, data=bytes(5))))
    d = decode_message(raw(P.IDiPayload(id_type=IdType.ID_IPV6_ADDR, data=ipaddress.ip_address("2001:db8::1").packed)))
    assert d.payloads[0].display() == "2001:db8::1"


def test_id_dn_display():
    from ikev2.asn1 import encode_dn
    der = encode_dn("C=CH, O=strongSwan, CN=moon.example.org")
    p = P.IDiPayload(id_type=IdType.ID_DER_ASN1_DN, data=der)
    assert decode_message(raw(p)).payloads[0].display() == "C=CH, O=strongSwan, CN=moon.example.org"


def test_ts_selector_length_checked():
    ts = P.TrafficSelector.from_network("10.1.0.0/24")
    good = bytearray(raw(P.TSiPayload(selectors=[ts])))
    struct.pack_into("!H", good, 28 + 4 + 4 + 2, 24)  # selector length field
    with pytest.raises(ParseError):
        decode_message(bytes(good))


def test_ts_count_mismatch():
    ts = P.TrafficSelector.from_network("10.1.0.0/24")
    good = bytearray(raw(P.TSiPayload(selectors=[ts, ts])))
    good[28 + 4] = 1
    with pytest.raises(ParseError, match="says 1 selectors"):
        decode_message(bytes(good))


def test_ts_display_and_families():
    v4 = P.TrafficSelector.from_network("10.1.0.0/24")
    v6 = P.TrafficSelector.from_network("2001:db8::/64", ip_protocol=6, start_port=443, end_port=443)
    assert str(v4) == "10.1.0.0/24" and v4.ts_type == TsType.TS_IPV4_ADDR_RANGE
    assert str(v6) == "2001:db8::/64[6/443]"
    d = decode_message(raw(P.TSrPayload(selectors=[v4, v6])))
    assert d.payloads[0].selectors == [v4, v6]


def test_delete_counts():
    d = P.DeletePayload(protocol=ProtocolId.ESP, spis=[b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"])
    good = bytearray(raw(d))
    struct.pack_into("!H", good, 28 + 4 + 2, 3)
    with pytest.raises(ParseError, match="says 3 SPIs of 4 bytes, 8 bytes follow"):
        decode_message(bytes(good))
    bad_ike = P.DeletePayload(protocol=ProtocolId.IKE, spis=[b"\x01" * 8], spi_size=8)
    with pytest.raises(ParseError, match="IKE Delete"):
        decode_message(raw(bad_ike))


def test_eap_length_must_match():
    e = P.EAPPayload.build(1, 7, 1, b"")
    good = bytearray(raw(e))
    struct.pack_into("!H", good, 28 + 4 + 2, 9)
    with pytest.raises(ParseError, match="EAP length field 9"):
        decode_message(bytes(good))
    d = decode_message(raw(e)).payloads[0]
    assert (d.code, d.identifier, d.eap_type) == (1, 7, 1)


def test_cp_attribute_lengths():
    cp = P.CPPayload(cfg_type=1, attributes=[P.CfgAttribute(1, bytes(3))])
    with pytest.raises(ParseError, match="INTERNAL_IP4_ADDRESS length 3"):
        decode_message(raw(cp))


def test_sk_must_be_last_and_nothing_after():
    sk = P.SKPayload(first_inner=PayloadType.IDi, data=bytes(40))
    m = raw(P.NotifyPayload(notify_type=NotifyType.COOKIE, data=b"c"), sk)
    d = decode_message(m)
    assert d.encrypted.first_inner == PayloadType.IDi and d.encrypted.offset == 28 + 4 + 5
    with pytest.raises(ParseError):
        decode_message(m + b"xx")


def test_skf_fragment_numbers():
    f = P.SKFPayload(fragment_number=3, total_fragments=2, data=bytes(20))
    with pytest.raises(ParseError, match="bad fragment number 3 of 2"):
        decode_message(raw(f))


def test_redirect_notify_roundtrip():
    data = build_redirect("192.0.2.7", bytes(16))
    r = parse_redirect(data)
    assert r.gateway == "192.0.2.7" and r.nonce == bytes(16)
    assert parse_redirect(build_redirect("gw.example.org"), with_nonce=True).gateway == "gw.example.org"
    assert u16_list(b"\x00\x02\x00\x05") == [2, 5]


def test_summary_matches_strongswan_notation():
    m = msg(*sa_init(), P.NotifyPayload(notify_type=NotifyType.NAT_DETECTION_SOURCE_IP, data=bytes(20)),
            P.NotifyPayload(notify_type=NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    assert m.summary() == "IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) N(FRAG_SUP) ]"
