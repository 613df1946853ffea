"""Hypothesis strategies that generate valid IKEv2 payloads and messages (for round-trip tests
and as seeds of the decoder fuzzer)."""
from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from ikev2 import payloads as P
from ikev2.constants import CfgAttr, EapCode, ExchangeType, HeaderFlag, IdType, NotifyType, ProtocolId, TsType
from ikev2.message import Message
from ikev2.notify_data import _DATA_LEN

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def blob(min_size=0, max_size=64):
    return st.binary(min_size=min_size, max_size=max_size)


@st.composite
def transforms(draw):
    attrs = draw(st.lists(st.tuples(st.integers(1, 0x7FFF).filter(lambda t: t != 14),
                                    st.one_of(u16, blob(0, 8))), max_size=2))
    return P.Transform(draw(st.integers(1, 12)), draw(u16), draw(st.one_of(st.none(), u16)), attrs)


@st.composite
def proposals(draw):
    proto = draw(st.sampled_from([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH]))
    spi = draw(st.sampled_from([b"", bytes(range(8))])) if proto == ProtocolId.IKE else draw(blob(4, 4))
    return P.Proposal(draw(st.integers(1, 255)), proto, spi, draw(st.lists(transforms(), min_size=1, max_size=6)))


def ip4():
    return st.builds(ipaddress.IPv4Address, u32)


def ip6():
    return st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def selectors(draw):
    if draw(st.booleans()):
        a, b = draw(ip4()), draw(ip4())
        t = TsType.TS_IPV4_ADDR_RANGE
    else:
        a, b = draw(ip6()), draw(ip6())
        t = TsType.TS_IPV6_ADDR_RANGE
    return P.TrafficSelector(t, draw(u8), draw(u16), draw(u16), a, b)


@st.composite
def id_payload(draw, cls):
    t = draw(st.sampled_from([IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR, IdType.ID_FQDN,
                              IdType.ID_RFC822_ADDR, IdType.ID_DER_ASN1_DN, IdType.ID_KEY_ID, IdType.ID_NULL]))
    n = {IdType.ID_IPV4_ADDR: 4, IdType.ID_IPV6_ADDR: 16, IdType.ID_NULL: 0}.get(t)
    data = draw(blob(n, n)) if n is not None else draw(blob(1, 40))
    return cls(id_type=t, data=data)


@st.composite
def notifies(draw):
    ntype = draw(st.one_of(st.sampled_from(list(NotifyType)), u16))
    lo, hi = _DATA_LEN.get(ntype, (0, 40))
    if ntype in (NotifyType.REDIRECT, NotifyType.REDIRECTED_FROM):
        data = bytes([1, 4]) + draw(blob(4, 4))
    elif ntype == NotifyType.SIGNATURE_HASH_ALGORITHMS:
        data = draw(blob(1, 8).map(lambda b: b * 2))
    else:
        data = draw(blob(lo, min(hi, lo + 40)))
    if ntype == NotifyType.REKEY_SA:
        return P.NotifyPayload(notify_type=ntype, data=data, protocol=ProtocolId.ESP, spi=draw(blob(4, 4)))
    proto, spi = draw(st.sampled_from([(0, b""), (ProtocolId.IKE, b""), (ProtocolId.ESP, b"\x01\x02\x03\x04")]))
    return P.NotifyPayload(notify_type=ntype, data=data, protocol=proto, spi=spi)


@st.composite
def cfg_attrs(draw):
    t = draw(st.sampled_from([CfgAttr.INTERNAL_IP4_ADDRESS, CfgAttr.INTERNAL_IP4_DNS,
                              CfgAttr.INTERNAL_IP6_ADDRESS, CfgAttr.INTERNAL_IP4_SUBNET,
                              CfgAttr.APPLICATION_VERSION, 28675]))
    sizes = {CfgAttr.INTERNAL_IP4_ADDRESS: [0, 4], CfgAttr.INTERNAL_IP4_DNS: [0, 4],
             CfgAttr.INTERNAL_IP6_ADDRESS: [0, 17], CfgAttr.INTERNAL_IP4_SUBNET: [0, 8]}
    if t in sizes:
        n = draw(st.sampled_from(sizes[t]))
        return P.CfgAttribute(t, draw(blob(n, n)))
    return P.CfgAttribute(t, draw(blob(0, 20)))


@st.composite
def eap(draw):
    code = draw(st.sampled_from(list(EapCode)))
    if code in (EapCode.SUCCESS, EapCode.FAILURE):
        return P.EAPPayload.build(code, draw(u8))
    return P.EAPPayload.build(code, draw(u8), draw(st.integers(1, 255)), draw(blob(0, 40)))


def payload():
    return st.one_of(
        st.builds(P.SAPayload, proposals=st.lists(proposals(), min_size=1, max_size=3)),
        st.builds(P.KEPayload, group=u16, data=blob(1, 64)),
        id_payload(P.IDiPayload), id_payload(P.IDrPayload),
        st.builds(P.CertPayload, encoding=u8, data=blob(0, 64)),
        st.builds(P.CertReqPayload, encoding=u8, data=blob(0, 40)),
        st.builds(P.AuthPayload, method=u8, data=blob(1, 64)),
        st.builds(P.NoncePayload, data=blob(16, 64)),
        notifies(),
        st.builds(P.DeletePayload, protocol=st.just(ProtocolId.IKE), spis=st.just([])),
        st.builds(P.DeletePayload, protocol=st.just(ProtocolId.ESP), spis=st.lists(blob(4, 4), max_size=4)),
        st.builds(P.VendorIdPayload, data=blob(0, 32)),
        st.builds(P.TSiPayload, selectors=st.lists(selectors(), min_size=1, max_size=3)),
        st.builds(P.TSrPayload, selectors=st.lists(selectors(), min_size=1, max_size=3)),
        st.builds(P.CPPayload, cfg_type=st.integers(1, 4), attributes=st.lists(cfg_attrs(), max_size=4)),
        eap(),
        st.builds(P.UnknownPayload, type=st.integers(128, 255), body=blob(0, 16)),
    ).flatmap(lambda p: st.booleans().map(lambda c: _with_critical(p, c)))


def _with_critical(p, c):
    if not isinstance(p, P.UnknownPayload):  # an unknown payload with C set is rejected by design
        p.critical = c
    return p


@st.composite
def messages(draw, encrypted_tail=True):
    pls = draw(st.lists(payload(), max_size=6))
    if encrypted_tail and draw(st.booleans()):
        if draw(st.booleans()):
            pls.append(P.SKPayload(first_inner=draw(u8), data=draw(blob(0, 64))))
        else:
            total = draw(st.integers(1, 10))
            pls.append(P.SKFPayload(first_inner=draw(u8), fragment_number=draw(st.integers(1, total)),
                                    total_fragments=total, data=draw(blob(0, 64))))
    flags = draw(st.sampled_from([0, HeaderFlag.INITIATOR, HeaderFlag.RESPONSE,
                                  HeaderFlag.INITIATOR | HeaderFlag.RESPONSE]))
    return Message(draw(blob(8, 8)), draw(blob(8, 8)), draw(st.one_of(st.sampled_from(list(ExchangeType)), u8)),
                   draw(u32), flags, pls, draw(st.integers(0, 15)))
