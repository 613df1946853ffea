"""Configuration payload contents (ikev2/cp.py): request/reply building and strict parsing."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.constants import CfgAttr, CfgType
from ikev2.cp import Assignment, CfgRequest, VirtualConfig, build_reply, build_request, parse_reply, parse_request
from ikev2.errors import ParseError
from ikev2.payloads import CfgAttribute, CPPayload, Reader

ip = ipaddress.ip_address
net = ipaddress.ip_network


def wire(cp: CPPayload) -> CPPayload:
    """Through the codec and back, as the engine would see it."""
    return CPPayload.decode_body(Reader(cp.encode_body()))


def cp(cfg_type, *attrs) -> CPPayload:
    return CPPayload(cfg_type=cfg_type, attributes=[CfgAttribute(t, v) for t, v in attrs])


def reply(*attrs) -> CPPayload:
    return cp(CfgType.CFG_REPLY, *attrs)


def request(*attrs) -> CPPayload:
    return cp(CfgType.CFG_REQUEST, *attrs)


A = CfgAttr

# strongSwan 5.9.8, tests/data/strongswan/eap-mschapv2-cp.json: the decrypted CP bodies of the
# first IKE_AUTH request (CPRQ(ADDR DNS)) and the last IKE_AUTH response (CPRP(ADDR DNS DNS)).
SWAN_REQUEST = bytes.fromhex("01000000" "00010000" "00030000")
SWAN_REPLY = bytes.fromhex("02000000" "000100040a630001" "000300040a140035" "000300040a140036")


# -- strongSwan vectors --------------------------------------------------------------------------

def test_strongswan_request_parses():
    req = parse_request(CPPayload.decode_body(Reader(SWAN_REQUEST)))
    assert req.addresses == (ip("0.0.0.0"),)
    assert req.address_families == {4} and req.wants_address(4) and not req.wants_address(6)
    assert req.requested(4) is None
    assert req.dns == {4} and req.subnets == frozenset() and req.other == ()


def test_we_build_strongswans_request_byte_for_byte():
    assert build_request(["0.0.0.0"]).encode_body() == SWAN_REQUEST


def test_strongswan_reply_parses():
    vc = parse_reply(CPPayload.decode_body(Reader(SWAN_REPLY)))
    assert vc.addresses == (ip("10.99.0.1"),)
    assert vc.interfaces == (ipaddress.ip_interface("10.99.0.1/32"),)
    assert vc.dns == (ip("10.20.0.53"), ip("10.20.0.54"))
    assert vc.subnets == () and vc.address(4) == ip("10.99.0.1") and vc.address(6) is None


def test_we_build_strongswans_reply_byte_for_byte():
    a = Assignment(addresses=["10.99.0.1"], dns=["10.20.0.53", "10.20.0.54"])
    assert build_reply(a).encode_body() == SWAN_REPLY


# -- gateway side --------------------------------------------------------------------------------

def test_request_both_families_specific_address_and_others():
    req = parse_request(wire(request(
        (A.INTERNAL_IP4_ADDRESS, bytes([10, 99, 0, 7])),
        (A.INTERNAL_IP6_ADDRESS, b""),
        (A.INTERNAL_IP4_NETMASK, b""),
        (A.INTERNAL_IP4_DNS, b""), (A.INTERNAL_IP6_DNS, b""),
        (A.INTERNAL_IP6_SUBNET, b""),
        (A.INTERNAL_IP4_NBNS, b""), (A.APPLICATION_VERSION, b"win"), (28675, b"x"))))
    assert req.addresses == (ip("10.99.0.7"), ip("::"))
    assert req.address_families == {4, 6}
    assert req.requested(4) == ip("10.99.0.7") and req.requested(6) is None
    assert req.dns == {4, 6} and req.subnets == {6} and req.netmask
    assert req.other == (A.INTERNAL_IP4_NBNS, A.APPLICATION_VERSION, 28675)


def test_request_all_zero_address_means_any_and_ipv6_with_prefix():
    req = parse_request(request((A.INTERNAL_IP4_ADDRESS, bytes(4)),
                                (A.INTERNAL_IP6_ADDRESS, ip("fd00::7").packed + b"\x40")))
    assert req.requested(4) is None
    assert req.requested(6) == ip("fd00::7")


def test_empty_request_asks_for_nothing():
    req = parse_request(request())
    assert req == CfgRequest() and req.address_families == frozenset()


def test_build_reply_layout_both_families():
    a = Assignment(addresses=[ip("10.99.0.5"), "fd00:99::5"], dns=["10.20.0.53", "fd00:20::53"],
                   subnets=["10.20.0.0/24", "fd00:20::/64"], ip4_prefix=24, ip6_prefix=64)
    got = build_reply(a)
    assert got.cfg_type == CfgType.CFG_REPLY
    assert [(x.type, x.value) for x in got.attributes] == [
        (A.INTERNAL_IP4_ADDRESS, bytes([10, 99, 0, 5])),
        (A.INTERNAL_IP4_NETMASK, bytes([255, 255, 255, 0])),
        (A.INTERNAL_IP6_ADDRESS, ip("fd00:99::5").packed + bytes([64])),
        (A.INTERNAL_IP4_DNS, bytes([10, 20, 0, 53])),
        (A.INTERNAL_IP6_DNS, ip("fd00:20::53").packed),
        (A.INTERNAL_IP4_SUBNET, bytes([10, 20, 0, 0, 255, 255, 255, 0])),
        (A.INTERNAL_IP6_SUBNET, ip("fd00:20::").packed + bytes([64])),
    ]
    vc = parse_reply(wire(got))
    assert vc.interfaces == (ipaddress.ip_interface("10.99.0.5/24"),
                             ipaddress.ip_interface("fd00:99::5/64"))
    assert vc.addresses == (ip("10.99.0.5"), ip("fd00:99::5"))
    assert vc.dns == (ip("10.20.0.53"), ip("fd00:20::53"))
    assert vc.subnets == (net("10.20.0.0/24"), net("fd00:20::/64"))


def test_build_reply_defaults_host_prefixes_no_netmask():
    got = build_reply(Assignment(addresses=["10.99.0.5", "fd00::5"]))
    assert [x.type for x in got.attributes] == [A.INTERNAL_IP4_ADDRESS, A.INTERNAL_IP6_ADDRESS]
    assert got.attributes[1].value[16] == 128
    # no netmask without an IPv4 address, even if ip4_prefix is set
    got = build_reply(Assignment(addresses=["fd00::5"], ip4_prefix=24))
    assert [x.type for x in got.attributes] == [A.INTERNAL_IP6_ADDRESS]


def test_assignment_str_of_addresses_is_bare():
    # the engine builds /32 and /128 traffic selectors from str(address)
    a = Assignment(addresses=["10.99.0.5", "fd00::5"])
    assert [str(x) for x in a.addresses] == ["10.99.0.5", "fd00::5"]


@pytest.mark.parametrize("kw,msg", [
    (dict(addresses=["0.0.0.0"]), "unspecified"),
    (dict(addresses=["224.0.0.1"]), "multicast"),
    (dict(dns=["::"]), "unspecified"),
    (dict(dns=["127.0.0.1"]), "loopback"),
])
def test_build_reply_refuses_non_unicast(kw, msg):
    with pytest.raises(ValueError, match=msg):
        build_reply(Assignment(**kw))


@pytest.mark.parametrize("kw", [dict(ip4_prefix=33), dict(ip6_prefix=129), dict(ip4_prefix=-1),
                                dict(subnets=["10.0.0.1/24"]), dict(addresses=["nonsense"])])
def test_assignment_refuses_bad_values(kw):
    with pytest.raises(ValueError):
        Assignment(**kw)


# -- client side ---------------------------------------------------------------------------------

def test_build_request_variants():
    got = build_request(["0.0.0.0", "::"])
    assert [(x.type, x.value) for x in got.attributes] == [
        (A.INTERNAL_IP4_ADDRESS, b""), (A.INTERNAL_IP6_ADDRESS, b""),
        (A.INTERNAL_IP4_DNS, b""), (A.INTERNAL_IP6_DNS, b"")]
    got = build_request([ip("::")], dns=False, subnets=True)
    assert [(x.type, x.value) for x in got.attributes] == [
        (A.INTERNAL_IP6_ADDRESS, b""), (A.INTERNAL_IP6_SUBNET, b"")]
    got = build_request(["10.99.0.9", "fd00::9"], dns=False)
    req = parse_request(wire(got))
    assert req.requested(4) == ip("10.99.0.9") and req.requested(6) == ip("fd00::9")
    assert build_request([]).attributes == []


def test_reply_netmask_applies_to_ipv4_in_any_order_and_duplicates_kept_once():
    vc = parse_reply(reply((A.INTERNAL_IP4_NETMASK, bytes([255, 255, 0, 0])),
                           (A.INTERNAL_IP4_ADDRESS, bytes([10, 99, 0, 5])),
                           (A.INTERNAL_IP4_DNS, bytes([10, 0, 0, 53])),
                           (A.INTERNAL_IP4_DNS, bytes([10, 0, 0, 53])),
                           (A.INTERNAL_IP4_SUBNET, bytes([10, 20, 0, 0, 255, 255, 0, 0])),
                           (A.INTERNAL_IP4_SUBNET, bytes([10, 20, 0, 0, 255, 255, 0, 0]))))
    assert vc.interfaces == (ipaddress.ip_interface("10.99.0.5/16"),)
    assert vc.dns == (ip("10.0.0.53"),) and vc.subnets == (net("10.20.0.0/16"),)


def test_reply_ignores_unknown_and_empty_attributes():
    unity = CfgAttribute(28676, b"\x0a\x00\x00\x00")
    vc = parse_reply(CPPayload(cfg_type=CfgType.CFG_REPLY, attributes=[
        CfgAttribute(A.INTERNAL_IP4_ADDRESS, b""), CfgAttribute(A.INTERNAL_IP6_DNS, b""),
        CfgAttribute(A.INTERNAL_IP4_NBNS, bytes([10, 0, 0, 1])), unity,
        CfgAttribute(A.INTERNAL_IP4_ADDRESS, bytes([10, 99, 0, 5]))]))
    assert vc.addresses == (ip("10.99.0.5"),)
    assert [x.type for x in vc.other] == [A.INTERNAL_IP4_NBNS, 28676]
    assert vc == VirtualConfig(addresses=(ip("10.99.0.5"),),
                               interfaces=(ipaddress.ip_interface("10.99.0.5/32"),))


def test_reply_zero_prefix_subnet_is_a_full_tunnel():
    vc = parse_reply(reply((A.INTERNAL_IP4_SUBNET, bytes(8)),
                           (A.INTERNAL_IP6_SUBNET, bytes(17))))
    assert vc.subnets == (net("0.0.0.0/0"), net("::/0"))


# -- strictness ----------------------------------------------------------------------------------

BAD_REPLIES = [
    ([(A.INTERNAL_IP4_ADDRESS, bytes(3))], "INTERNAL_IP4_ADDRESS #1: length 3, must be 0 or 4"),
    ([(A.INTERNAL_IP6_ADDRESS, bytes(16))], "INTERNAL_IP6_ADDRESS #1: length 16, must be 0 or 17"),
    ([(A.INTERNAL_IP4_SUBNET, bytes(4))], "INTERNAL_IP4_SUBNET #1: length 4"),
    ([(A.INTERNAL_IP4_ADDRESS, bytes([10, 0, 0, 1])), (A.INTERNAL_IP4_DNS, bytes([10, 0, 0, 53])),
      (A.INTERNAL_IP4_SUBNET, bytes([10, 0, 0, 0, 255, 0, 255, 0]))],
     "INTERNAL_IP4_SUBNET #3: netmask 255.0.255.0 is not contiguous"),
    ([(A.INTERNAL_IP4_SUBNET, bytes([10, 1, 2, 3, 255, 255, 255, 0]))],
     "INTERNAL_IP4_SUBNET #1: subnet 10.1.2.3/24 has host bits set (network 10.1.2.0/24)"),
    ([(A.INTERNAL_IP6_SUBNET, ip("fd00::1").packed + bytes([64]))], "has host bits set"),
    ([(A.INTERNAL_IP6_SUBNET, ip("fd00::").packed + bytes([129]))], "prefix length 129 exceeds 128"),
    ([(A.INTERNAL_IP6_ADDRESS, ip("fd00::1").packed + bytes([200]))], "prefix length 200"),
    ([(A.INTERNAL_IP4_ADDRESS, bytes(4))], "address 0.0.0.0 is the unspecified address"),
    ([(A.INTERNAL_IP4_ADDRESS, bytes([255] * 4))], "limited broadcast"),
    ([(A.INTERNAL_IP4_ADDRESS, bytes([127, 0, 0, 1]))], "loopback"),
    ([(A.INTERNAL_IP6_ADDRESS, ip("ff02::1").packed + b"\x80")], "multicast"),
    ([(A.INTERNAL_IP6_DNS, bytes(16))], "DNS server :: is the unspecified address"),
    ([(A.INTERNAL_IP4_DNS, bytes([224, 0, 0, 1]))], "DNS server 224.0.0.1 is a multicast"),
    ([(A.INTERNAL_IP4_NETMASK, bytes([255, 255, 255, 0]))],
     "INTERNAL_IP4_NETMASK #1: netmask without an INTERNAL_IP4_ADDRESS"),
    ([(A.INTERNAL_IP4_ADDRESS, bytes([10, 0, 0, 1])), (A.INTERNAL_IP4_NETMASK, bytes([255] * 4)),
      (A.INTERNAL_IP4_NETMASK, bytes([255] * 4))], "INTERNAL_IP4_NETMASK #3: more than one"),
    ([(A.INTERNAL_IP4_ADDRESS, bytes([10, 0, 0, 1])), (A.INTERNAL_IP4_NETMASK, bytes([0, 255, 255, 255]))],
     "not contiguous"),
]


@pytest.mark.parametrize("attrs,msg", BAD_REPLIES)
def test_malformed_reply_raises_parse_error(attrs, msg):
    with pytest.raises(ParseError) as ei:
        parse_reply(reply(*attrs))
    assert msg in str(ei.value)
    assert ei.value.payload == "CP"


@pytest.mark.parametrize("attrs,msg", [
    ([(A.INTERNAL_IP4_ADDRESS, bytes(5))], "INTERNAL_IP4_ADDRESS #1: length 5"),
    ([(A.INTERNAL_IP4_DNS, bytes(2))], "INTERNAL_IP4_DNS #1: length 2"),
    ([(A.INTERNAL_IP6_ADDRESS, bytes(16) + b"\x81")], "prefix length 129"),
    ([(A.INTERNAL_IP4_NETMASK, bytes([255, 0, 255, 0]))], "not contiguous"),
    ([(A.INTERNAL_IP4_SUBNET, bytes([10, 0, 0, 0, 0, 0, 0, 255]))], "not contiguous"),
    ([(A.INTERNAL_IP6_SUBNET, bytes(16) + b"\xff")], "prefix length 255"),
])
def test_malformed_request_raises_parse_error(attrs, msg):
    with pytest.raises(ParseError, match=msg):
        parse_request(request(*attrs))


def test_wrong_cfg_type():
    with pytest.raises(ParseError, match="expected CFG_REQUEST, got CFG_REPLY"):
        parse_request(reply())
    with pytest.raises(ParseError, match="expected CFG_REPLY, got CFG_SET"):
        parse_reply(cp(CfgType.CFG_SET))
    with pytest.raises(ParseError, match="expected CFG_REPLY, got CFG type 9"):
        parse_reply(cp(9))


def test_not_a_cp_payload():
    with pytest.raises(TypeError):
        parse_reply(b"\x02\x00\x00\x00")


# -- properties ----------------------------------------------------------------------------------

v4 = st.integers(1, 0xDFFFFFFF).map(ipaddress.IPv4Address).filter(
    lambda a: not (a.is_loopback or a.is_unspecified))
v6 = st.integers(1 << 120, (0xFE << 120) - 1).map(ipaddress.IPv6Address)
addr = st.one_of(v4, v6)
subnet = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: ipaddress.ip_network((t[0], t[1]), strict=False)),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: ipaddress.IPv6Network((t[0], t[1]), strict=False)))


@settings(max_examples=200, deadline=None)
@given(addrs=st.lists(addr, max_size=4, unique=True), dns=st.lists(addr, max_size=4, unique=True),
       subnets=st.lists(subnet, max_size=4, unique=True),
       p4=st.one_of(st.none(), st.integers(0, 32)), p6=st.integers(0, 128))
def test_reply_roundtrip(addrs, dns, subnets, p4, p6):
    a = Assignment(addresses=addrs, dns=dns, subnets=subnets, ip4_prefix=p4, ip6_prefix=p6)
    vc = parse_reply(wire(build_reply(a)))
    assert sorted(vc.addresses, key=lambda x: (x.version, int(x))) == \
        sorted(addrs, key=lambda x: (x.version, int(x)))
    assert vc.dns == tuple(dns) and vc.subnets == tuple(subnets)
    for i in vc.interfaces:
        want = (32 if p4 is None else p4) if i.version == 4 else p6
        assert i.network.prefixlen == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 8, 10, 13, 15, 4, 7]),
                          st.binary(max_size=20)), max_size=6))
def test_parsers_raise_only_parse_error(attrs):
    body = b"".join(struct.pack("!HH", t, len(v)) + v for t, v in attrs)
    for ctype, fn in ((1, parse_request), (2, parse_reply)):
        try:
            decoded = CPPayload.decode_body(Reader(bytes([ctype, 0, 0, 0]) + body))
        except ParseError:
            continue  # the codec already refuses wrong lengths
        try:
            fn(decoded)
        except ParseError:
            pass
        try:
            fn(CPPayload(cfg_type=ctype, attributes=[CfgAttribute(t, v) for t, v in attrs]))
        except ParseError:
            pass
