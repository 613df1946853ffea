"""DnsUpdatePublisher without a network: the RFC 2136 message it builds, TSIG, validation.

Updates against a real server (Knot, right and wrong keys) are in
tests/netns_e2e/test_ddns_netns.py.
"""
from __future__ import annotations

import asyncio
import base64

import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import pytest

from vpn_gw.ddns import Backoff, DnsUpdatePublisher

SECRET = base64.b64encode(bytes(range(32))).decode()


def publisher(**kw) -> DnsUpdatePublisher:
    args = dict(zone="example.test", names=["gw.example.test", "vpn.example.test."],
                server="192.0.2.53", tsig_name="gw-key", tsig_secret_b64=SECRET, ttl=60)
    args.update(kw)
    return DnsUpdatePublisher(**args)


def parse_signed(pub: DnsUpdatePublisher, wire: bytes) -> dns.message.Message:
    """Parse and verify the TSIG with the publisher's key (raises if it does not verify)."""
    return dns.message.from_wire(wire, keyring={dns.name.from_text("gw-key"): pub.key})


def rrs(msg):
    out = []
    for rr in msg.update:
        out.append((rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype),
                    "DELETE" if rr.deleting == dns.rdataclass.ANY else rr.ttl,
                    sorted(r.to_text() for r in rr)))
    return out


def test_update_message_replaces_a_and_aaaa_of_every_name():
    pub = publisher()
    msg = pub.build_update(["203.0.113.5", "2001:db8::5"])
    wire = msg.to_wire()
    got = parse_signed(pub, wire)
    assert got.opcode() == dns.opcode.UPDATE
    assert [(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in got.zone] == \
        [("example.test.", "SOA")]
    assert list(got.prerequisite) == []
    assert rrs(got) == [
        ("gw.example.test.", "A", "DELETE", []),
        ("gw.example.test.", "A", 60, ["203.0.113.5"]),
        ("gw.example.test.", "AAAA", "DELETE", []),
        ("gw.example.test.", "AAAA", 60, ["2001:db8::5"]),
        ("vpn.example.test.", "A", "DELETE", []),
        ("vpn.example.test.", "A", 60, ["203.0.113.5"]),
        ("vpn.example.test.", "AAAA", "DELETE", []),
        ("vpn.example.test.", "AAAA", 60, ["2001:db8::5"]),
    ]
    assert got.had_tsig and got.keyname == dns.name.from_text("gw-key")
    assert got.keyalgorithm == dns.tsig.HMAC_SHA256


def test_only_ipv4_deletes_aaaa_and_families_limit_what_is_touched():
    pub = publisher(names=["gw.example.test"])
    got = parse_signed(pub, pub.build_update(["203.0.113.5"]).to_wire())
    assert rrs(got) == [
        ("gw.example.test.", "A", "DELETE", []),
        ("gw.example.test.", "A", 60, ["203.0.113.5"]),
        ("gw.example.test.", "AAAA", "DELETE", []),   # the old IPv6 address is gone
    ]
    pub4 = publisher(names=["gw.example.test"], families=(4,), ttl=30)
    got = parse_signed(pub4, pub4.build_update(["203.0.113.5", "2001:db8::5"]).to_wire())
    assert rrs(got) == [
        ("gw.example.test.", "A", "DELETE", []),
        ("gw.example.test.", "A", 30, ["203.0.113.5"]),
    ]


def test_wrong_key_does_not_verify_and_algorithm_is_used():
    pub = publisher(tsig_algorithm="hmac-sha512")
    wire = pub.build_update(["203.0.113.5"]).to_wire()
    got = parse_signed(pub, wire)
    assert got.keyalgorithm == dns.tsig.HMAC_SHA512
    other = dns.tsig.Key("gw-key", base64.b64encode(b"x" * 32).decode(), dns.tsig.HMAC_SHA512)
    with pytest.raises(dns.tsig.BadSignature):
        dns.message.from_wire(wire, keyring={dns.name.from_text("gw-key"): other})


def test_unsigned_when_no_key():
    pub = publisher(tsig_name=None, tsig_secret_b64=None)
    got = dns.message.from_wire(pub.build_update(["203.0.113.5"]).to_wire())
    assert not got.had_tsig


@pytest.mark.parametrize("kw, text", [
    (dict(names=["gw.example.org"]), "not inside zone"),
    (dict(names=[]), "at least one name"),
    (dict(server="ns.example.test"), "does not appear to be an IPv4 or IPv6 address"),
    (dict(tsig_algorithm="hmac-foo"), "unknown TSIG algorithm"),
    (dict(tsig_secret_b64="not base64!"), "not valid base64"),
    (dict(tsig_secret_b64=None), "go together"),
    (dict(families=(5,)), "families"),
    (dict(port=0), "bad port"),
])
def test_validation(kw, text):
    with pytest.raises(ValueError, match=text):
        publisher(**kw)


def test_bad_address_raises_and_no_address_is_not_sent():
    pub = publisher()
    with pytest.raises(ValueError):
        pub.build_update(["203.0.113.500"])
    res = asyncio.run(pub.publish([]))
    assert not res.ok and not res.sent and "no address" in res.error
    pub4 = publisher(families=(4,))
    res = asyncio.run(pub4.publish(["2001:db8::5"]))    # nothing of a managed family
    assert not res.sent


def test_backoff_sequence():
    b = Backoff(30, 3600)
    assert b.delay() == 0
    assert [b.fail(0) for _ in range(9)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    b.reset()
    assert b.fail(100) == 130
    with pytest.raises(ValueError):
        Backoff(0, 10)


# --------------------------------------------------------------------------- member mode (fleet)


def member_rrs(msg):
    """Like rrs(), with RFC 2136 2.5.4 "delete an RR from an RRset" (class NONE) as DELETE-RR."""
    out = []
    for rr in msg.update:
        if rr.deleting == dns.rdataclass.NONE:
            kind = "DELETE-RR"
        elif rr.deleting == dns.rdataclass.ANY:
            kind = "DELETE"
        else:
            kind = rr.ttl
        out.append((rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype), kind, sorted(r.to_text() for r in rr)))
    return out


def test_member_mode_adds_only_its_records_without_prerequisite():
    pub = publisher(names=["vpn.example.test"], mode="member")
    got = parse_signed(pub, pub.build_update(["203.0.113.5", "2001:db8::5"]).to_wire())
    assert list(got.prerequisite) == []
    assert member_rrs(got) == [       # no whole-set delete: the other members' records stay
        ("vpn.example.test.", "A", 60, ["203.0.113.5"]),
        ("vpn.example.test.", "AAAA", 60, ["2001:db8::5"]),
    ]


def test_member_mode_address_change_deletes_exactly_the_old_record():
    pub = publisher(names=["vpn.example.test"], mode="member", families=(4,))
    got = parse_signed(pub, pub.build_update(["203.0.113.6"], withdraw=["203.0.113.5", "203.0.113.6",
                                                                        "2001:db8::5"]).to_wire())
    assert member_rrs(got) == [       # the still-current address is not deleted; AAAA not managed
        ("vpn.example.test.", "A", "DELETE-RR", ["203.0.113.5"]),
        ("vpn.example.test.", "A", 60, ["203.0.113.6"]),
    ]


def test_withdraw_message_deletes_exactly_the_given_records_of_every_name():
    pub = publisher(mode="member")
    got = parse_signed(pub, pub.build_withdraw(["203.0.113.5", "2001:db8::5"]).to_wire())
    assert member_rrs(got) == [
        ("gw.example.test.", "A", "DELETE-RR", ["203.0.113.5"]),
        ("gw.example.test.", "AAAA", "DELETE-RR", ["2001:db8::5"]),
        ("vpn.example.test.", "A", "DELETE-RR", ["203.0.113.5"]),
        ("vpn.example.test.", "AAAA", "DELETE-RR", ["2001:db8::5"]),
    ]


def test_member_mode_nothing_published_nothing_withdrawn_and_bad_mode():
    pub = publisher(mode="member")
    res = asyncio.run(pub.withdraw())
    assert res.ok and not res.sent
    with pytest.raises(ValueError, match="mode"):
        publisher(mode="shared")
