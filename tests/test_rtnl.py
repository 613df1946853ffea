"""vpn_gw.dataplane.rtnl: strict parsing of the kernel's rtnetlink answers (every length
checked, the acknowledgement matched to our request). The requests themselves run against the
real kernel in the netns data plane tests (TUN up, routes with MTU and source, virtual IPs)."""
from __future__ import annotations

import struct

import pytest

from vpn_gw.dataplane import rtnl
from vpn_gw.dataplane.rtnl import NLMSGHDR, RtnlError, parse_attrs, parse_messages


def _msg(kind: int, payload: bytes, seq: int = 1, flags: int = 0) -> bytes:
    n = NLMSGHDR.size + len(payload)
    return NLMSGHDR.pack(n, kind, flags, seq, 0) + payload + b"\0" * ((-n) % 4)


def test_messages_and_attributes_parse():
    attrs = rtnl._attr(rtnl.RTA_OIF, struct.pack("=I", 7)) + rtnl._attr(rtnl.RTA_GATEWAY, bytes([192, 0, 2, 1]))
    buf = _msg(rtnl.RTM_NEWROUTE, b"\0" * 12 + attrs, seq=5) + _msg(rtnl.NLMSG_DONE, b"\0" * 4, seq=5)
    msgs = parse_messages(buf, "t")
    assert [(m[0], m[2]) for m in msgs] == [(rtnl.RTM_NEWROUTE, 5), (rtnl.NLMSG_DONE, 5)]
    assert parse_attrs(msgs[0][3][12:], "t") == {rtnl.RTA_OIF: struct.pack("=I", 7),
                                                 rtnl.RTA_GATEWAY: bytes([192, 0, 2, 1])}


@pytest.mark.parametrize("buf", [
    b"\x10\0\0\0",  # shorter than a header
    NLMSGHDR.pack(8, 2, 0, 1, 0),  # length below the header's
    NLMSGHDR.pack(64, 2, 0, 1, 0) + b"\0" * 8,  # longer than the datagram
])
def test_malformed_messages_raise_one_typed_error(buf):
    with pytest.raises(RtnlError):
        parse_messages(buf, "t")


@pytest.mark.parametrize("buf", [b"\x08\0", struct.pack("=HH", 2, 1), struct.pack("=HH", 12, 1) + b"\0" * 4])
def test_malformed_attributes_raise_one_typed_error(buf):
    with pytest.raises(RtnlError):
        parse_attrs(buf, "t")


class _FakeSocket:
    """Stands in for the kernel's side of the socket: records the request, answers with ``replies``."""

    def __init__(self, replies: list[bytes]):
        self.replies = replies
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, _n: int) -> bytes:
        return self.replies.pop(0)


def _rtnl(replies: list[bytes]) -> rtnl.Rtnl:
    r = rtnl.Rtnl.__new__(rtnl.Rtnl)
    r.sock = _FakeSocket(replies)  # type: ignore[assignment]
    r.seq = 0
    return r


def test_error_answer_raises_with_errno_and_stale_answers_are_skipped():
    stale = _msg(rtnl.NLMSG_ERROR, struct.pack("=i", 0) + b"\0" * 16, seq=99)
    refusal = _msg(rtnl.NLMSG_ERROR, struct.pack("=i", -17) + b"\0" * 16, seq=1)
    r = _rtnl([stale + refusal])
    with pytest.raises(RtnlError) as e:
        r.addr_add(3, "198.51.100.1", 32)
    assert e.value.errno == 17 and "EEXIST" in str(e.value)
    assert not isinstance(e.value, OSError)  # OSError means "the socket broke": iproute reopens it


def test_ack_returns_and_truncated_error_raises():
    assert _rtnl([_msg(rtnl.NLMSG_ERROR, struct.pack("=i", 0) + b"\0" * 16)]).route_del("203.0.113.0/24") is None
    with pytest.raises(RtnlError):
        _rtnl([_msg(rtnl.NLMSG_ERROR, b"\0\0")]).route_del("203.0.113.0/24")


def test_address_dump_checks_the_address_length():
    addr = rtnl._attr(rtnl.IFA_ADDRESS, bytes([198, 51, 100, 1]))
    good = _msg(rtnl.RTM_NEWADDR, rtnl.IFADDRMSG.pack(2, 24, 0, 0, 3) + addr, flags=rtnl.NLM_F_MULTI)
    done = _msg(rtnl.NLMSG_DONE, b"\0" * 4, flags=rtnl.NLM_F_MULTI)
    assert [str(a) for a in _rtnl([good, done]).addresses()] == ["198.51.100.1"]
    bad = _msg(rtnl.RTM_NEWADDR, rtnl.IFADDRMSG.pack(2, 24, 0, 0, 3) + rtnl._attr(rtnl.IFA_ADDRESS, b"\1\2\3"),
               flags=rtnl.NLM_F_MULTI)
    with pytest.raises(RtnlError):
        _rtnl([bad, done]).addresses()
