"""IPv4/IPv6 header helpers for the red (clear-text) side: strict parsing and the Internet checksum.

Parsing checks every length before using it and raises ``EspError(MALFORMED)`` on anything
inconsistent. Only what the ESP layer needs is decoded.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .errors import DropReason, EspError

IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
IPV4_MIN_MTU = 68  # RFC 791: every module must forward a 68-octet datagram without fragmenting
IPV6_MIN_MTU = 1280  # RFC 8200 section 5

PROTO_ICMP = 1
PROTO_IPIP = 4
PROTO_IPV6 = 41
PROTO_ICMPV6 = 58
PROTO_NONE = 59

_V4_FLAG_DF = 0x4000
_V4_FLAG_MF = 0x2000
_V4_OFFSET_MASK = 0x1FFF


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data`` (odd length padded with a zero byte)."""
    if len(data) % 2:
        data = data + b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


@dataclass(frozen=True, slots=True)
class IPv4Header:
    header_length: int  # bytes, 20..60
    tos: int
    total_length: int
    ident: int
    reserved_flag: bool
    dont_fragment: bool
    more_fragments: bool
    frag_offset: int  # in 8-octet units
    ttl: int
    protocol: int
    src: bytes
    dst: bytes
    options: bytes

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.frag_offset != 0


def parse_ipv4(packet: bytes, *, verify_checksum: bool = True) -> IPv4Header:
    """Parse and validate an IPv4 header. Bytes past Total Length (link padding) are ignored."""
    if len(packet) < IPV4_MIN_HEADER:
        raise EspError(DropReason.MALFORMED, "IPv4 packet shorter than 20 bytes")
    vihl, tos, total, ident, frag, ttl, proto, _csum = struct.unpack_from("!BBHHHBBH", packet)
    if vihl >> 4 != 4:
        raise EspError(DropReason.MALFORMED, "not IPv4")
    hlen = (vihl & 0x0F) * 4
    if hlen < IPV4_MIN_HEADER:
        raise EspError(DropReason.MALFORMED, "IPv4 IHL below 5")
    if total < hlen or total > len(packet):
        raise EspError(DropReason.MALFORMED, "IPv4 total length inconsistent")
    if verify_checksum and checksum(packet[:hlen]) != 0:
        raise EspError(DropReason.MALFORMED, "IPv4 header checksum")
    return IPv4Header(
        header_length=hlen,
        tos=tos,
        total_length=total,
        ident=ident,
        reserved_flag=bool(frag & 0x8000),
        dont_fragment=bool(frag & _V4_FLAG_DF),
        more_fragments=bool(frag & _V4_FLAG_MF),
        frag_offset=frag & _V4_OFFSET_MASK,
        ttl=ttl,
        protocol=proto,
        src=bytes(packet[12:16]),
        dst=bytes(packet[16:20]),
        options=bytes(packet[20:hlen]),
    )


def build_ipv4_header(
    *,
    tos: int,
    total_length: int,
    ident: int,
    flags_offset: int,
    ttl: int,
    protocol: int,
    src: bytes,
    dst: bytes,
    options: bytes = b"",
) -> bytes:
    """Serialise an IPv4 header with a freshly computed header checksum."""
    if len(options) % 4 or len(options) > 40:
        raise ValueError("IPv4 options must be padded to 4 bytes, at most 40")
    hlen = IPV4_MIN_HEADER + len(options)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | (hlen // 4), tos, total_length, ident, flags_offset, ttl,
        protocol, 0, src, dst,
    ) + options
    csum = checksum(hdr)
    return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:]


@dataclass(frozen=True, slots=True)
class IPv6Header:
    traffic_class: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes

    @property
    def total_length(self) -> int:
        return IPV6_HEADER + self.payload_length


def parse_ipv6(packet: bytes) -> IPv6Header:
    """Parse and validate a fixed IPv6 header. Jumbograms (payload length 0) are refused."""
    if len(packet) < IPV6_HEADER:
        raise EspError(DropReason.MALFORMED, "IPv6 packet shorter than 40 bytes")
    word0, plen, nh, hlim = struct.unpack_from("!IHBB", packet)
    if word0 >> 28 != 6:
        raise EspError(DropReason.MALFORMED, "not IPv6")
    if plen == 0 and len(packet) > IPV6_HEADER:
        raise EspError(DropReason.MALFORMED, "IPv6 jumbogram not supported")
    if IPV6_HEADER + plen > len(packet):
        raise EspError(DropReason.MALFORMED, "IPv6 payload length exceeds packet")
    return IPv6Header(
        traffic_class=(word0 >> 20) & 0xFF,
        payload_length=plen,
        next_header=nh,
        hop_limit=hlim,
        src=bytes(packet[8:24]),
        dst=bytes(packet[24:40]),
    )


def ip_version(packet: bytes) -> int:
    """The version nibble of an IP packet (MALFORMED if empty)."""
    if not packet:
        raise EspError(DropReason.MALFORMED, "empty packet")
    return packet[0] >> 4


def packet_length(packet: bytes) -> int:
    """Length of the IP packet as its own header states it (IPv4 Total Length / 40 + Payload)."""
    version = ip_version(packet)
    if version == 4:
        return parse_ipv4(packet, verify_checksum=False).total_length
    if version == 6:
        return parse_ipv6(packet).total_length
    raise EspError(DropReason.MALFORMED, f"IP version {version}")


def addr_bytes(addr: object, version: int) -> bytes:
    """Normalise an address given as str, bytes or ``ipaddress`` object to packed bytes."""
    if isinstance(addr, (bytes, bytearray)):
        packed = bytes(addr)
    else:
        packed = ipaddress.ip_address(addr).packed  # type: ignore[arg-type]
    if len(packed) != (4 if version == 4 else 16):
        raise ValueError(f"address {addr!r} is not IPv{version}")
    return packed
