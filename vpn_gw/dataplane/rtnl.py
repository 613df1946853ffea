"""Minimal rtnetlink requests for the userspace data plane: bring a link up with its MTU, add and
delete addresses, replace, delete and look up routes, dump the host's addresses.

One blocking NETLINK_ROUTE socket, one request at a time, every reply parsed strictly (every
length checked; the acknowledgement must answer our sequence number). Why not pyroute2: its
import costs ~0.12 s of CPU, which sat on the path of a restarting gateway's first tunnel
(docs/architecture.md, "Start-up and restart recovery"); these few requests are all the
userspace data plane needs. Routes are written as pyroute2 wrote them (table main, protocol
static, scope global, unicast), so what an operator sees with ``ip route`` did not change.

The kernel's refusal raises :class:`RtnlError` (its errno and text), which is *not* an
OSError: an OSError means the socket itself failed, and the caller opens a new one.
"""
from __future__ import annotations

import errno as errno_mod
import ipaddress
import os
import socket
import struct

# linux/netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
# linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RTN_UNICAST = 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_METRICS = 1, 4, 5, 7, 8
RTAX_MTU = 2
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFLA_MTU = 4
IFF_UP = 0x1

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTATTR = struct.Struct("=HH")  # len, type
NLMSGERR = struct.Struct("=i")
RECV_SIZE = 65536
TIMEOUT = 5.0  # seconds: the kernel answers at once; this only bounds a wedged socket
MAX_REPLIES = 100_000  # messages per request (a dump), a bound on the read loop


class RtnlError(Exception):
    """The kernel refused a request (its errno), or answered something we cannot parse."""

    def __init__(self, err: int, what: str):
        self.errno = err
        name = errno_mod.errorcode.get(err, str(err))
        super().__init__(f"{what}: {os.strerror(err)} ({name})" if err else what)


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    n = RTATTR.size + len(payload)
    return RTATTR.pack(n, kind) + payload + b"\0" * (_align(n) - n)


def parse_attrs(buf: bytes | memoryview, what: str) -> dict[int, bytes]:
    """Route attributes (type -> payload; the last wins), every length checked."""
    out: dict[int, bytes] = {}
    off = 0
    while off < len(buf):
        if len(buf) - off < RTATTR.size:
            raise RtnlError(0, f"{what}: truncated attribute header")
        n, kind = RTATTR.unpack_from(buf, off)
        if n < RTATTR.size or off + n > len(buf):
            raise RtnlError(0, f"{what}: attribute length {n} out of bounds")
        out[kind & 0x3FFF] = bytes(buf[off + RTATTR.size:off + n])  # without NLA_F_NESTED/NET_BYTEORDER
        off += _align(n)
    return out


def parse_messages(buf: bytes, what: str) -> list[tuple[int, int, int, bytes]]:
    """The netlink messages in one datagram: (type, flags, seq, payload), every length checked."""
    out = []
    off = 0
    while off < len(buf):
        if len(buf) - off < NLMSGHDR.size:
            raise RtnlError(0, f"{what}: truncated netlink header")
        n, kind, flags, seq, _port = NLMSGHDR.unpack_from(buf, off)
        if n < NLMSGHDR.size or off + n > len(buf):
            raise RtnlError(0, f"{what}: netlink message length {n} out of bounds")
        out.append((kind, flags, seq, buf[off + NLMSGHDR.size:off + n]))
        off += _align(n)
    return out


def _addr_bytes(addr: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(addr)
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), ip.packed


class Rtnl:
    """One rtnetlink socket; not thread-safe (the netlink worker thread owns it)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self.sock.settimeout(TIMEOUT)
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------------ requests

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, payload) answers to it (a dump's parts; nothing
        for an acknowledged change). The kernel's error raises RtnlError."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        seq = self.seq
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body)
        answers: list[tuple[int, bytes]] = []
        for _ in range(MAX_REPLIES):
            for mtype, mflags, mseq, payload in parse_messages(self.sock.recv(RECV_SIZE), what):
                if mseq != seq:
                    continue  # an answer to an earlier request that gave up (never expected)
                if mtype == NLMSG_ERROR:
                    if len(payload) < NLMSGERR.size:
                        raise RtnlError(0, f"{what}: truncated error message")
                    err = -NLMSGERR.unpack_from(payload)[0]
                    if err < 0:
                        raise RtnlError(0, f"{what}: bad error code {-err}")
                    if err:
                        raise RtnlError(err, what)
                    return answers  # the acknowledgement
                if mtype == NLMSG_DONE:
                    return answers
                answers.append((mtype, payload))
                if not mflags & NLM_F_MULTI:
                    return answers  # a single answer (route get)
        raise RtnlError(0, f"{what}: more than {MAX_REPLIES} answers")

    def link_set(self, index: int, *, mtu: int | None = None, up: bool = False) -> None:
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)
        if mtu is not None:
            body += _attr(IFLA_MTU, struct.pack("=I", mtu))
        self._request(RTM_NEWLINK, NLM_F_ACK, body, f"set link {index}")

    def _addr(self, kind: int, flags: int, index: int, address: str, prefixlen: int, what: str) -> None:
        family, raw = _addr_bytes(address)
        body = IFADDRMSG.pack(family, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
        self._request(kind, NLM_F_ACK | flags, body, f"{what} {address}/{prefixlen}")

    def addr_add(self, index: int, address: str, prefixlen: int) -> None:
        self._addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, address, prefixlen, "add address")

    def addr_del(self, index: int, address: str, prefixlen: int) -> None:
        self._addr(RTM_DELADDR, 0, index, address, prefixlen, "delete address")

    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Every address of the host (IFA_ADDRESS of each, as `ip addr` lists them)."""
        body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for mtype, payload in self._request(RTM_GETADDR, NLM_F_DUMP, body, "dump addresses"):
            if mtype != RTM_NEWADDR:
                continue
            if len(payload) < IFADDRMSG.size:
                raise RtnlError(0, "dump addresses: truncated ifaddrmsg")
            family = payload[0]
            attrs = parse_attrs(memoryview(payload)[IFADDRMSG.size:], "dump addresses")
            raw = attrs.get(IFA_ADDRESS, attrs.get(IFA_LOCAL))
            want = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else None
            if raw is None or want is None:
                continue
            if len(raw) != want:
                raise RtnlError(0, f"dump addresses: address of {len(raw)} bytes for family {family}")
            out.append(ipaddress.ip_address(raw))
        return out

    def route_replace(self, dst: str, *, oif: int, mtu: int | None = None, prefsrc: str | None = None,
                      gateway: str | None = None) -> None:
        """Add or replace the route to ``dst`` (a network) out of interface ``oif``."""
        net = ipaddress.ip_network(dst)
        family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
        body = RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE,
                          RTN_UNICAST, 0)
        body += _attr(RTA_DST, net.network_address.packed) + _attr(RTA_OIF, struct.pack("=I", oif))
        if gateway is not None:
            body += _attr(RTA_GATEWAY, _addr_bytes(gateway)[1])
        if prefsrc is not None:
            body += _attr(RTA_PREFSRC, _addr_bytes(prefsrc)[1])
        if mtu is not None:
            body += _attr(RTA_METRICS, _attr(RTAX_MTU, struct.pack("=I", mtu)))
        self._request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body, f"replace route {dst}")

    def route_del(self, dst: str, *, oif: int | None = None) -> None:
        """Delete the route to ``dst`` in the main table (out of ``oif`` if given; any scope,
        protocol and type)."""
        net = ipaddress.ip_network(dst)
        family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
        body = RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0)
        body += _attr(RTA_DST, net.network_address.packed)
        if oif is not None:
            body += _attr(RTA_OIF, struct.pack("=I", oif))
        self._request(RTM_DELROUTE, NLM_F_ACK, body, f"delete route {dst}")

    def route_get(self, dst: str) -> tuple[int | None, str | None]:
        """The kernel's route to the address ``dst`` now: (output interface, gateway or None)."""
        family, raw = _addr_bytes(dst)
        body = RTMSG.pack(family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0) + _attr(RTA_DST, raw)
        for mtype, payload in self._request(RTM_GETROUTE, 0, body, f"route to {dst}"):
            if mtype != RTM_NEWROUTE:
                continue
            if len(payload) < RTMSG.size:
                raise RtnlError(0, f"route to {dst}: truncated rtmsg")
            attrs = parse_attrs(memoryview(payload)[RTMSG.size:], f"route to {dst}")
            oif = attrs.get(RTA_OIF)
            if oif is not None and len(oif) != 4:
                raise RtnlError(0, f"route to {dst}: RTA_OIF of {len(oif)} bytes")
            gw = attrs.get(RTA_GATEWAY)
            if gw is not None and len(gw) != len(raw):
                raise RtnlError(0, f"route to {dst}: RTA_GATEWAY of {len(gw)} bytes")
            return (struct.unpack("=I", oif)[0] if oif else None,
                    str(ipaddress.ip_address(gw)) if gw else None)
        raise RtnlError(errno_mod.ENETUNREACH, f"route to {dst}")
