"""Red-side (pre-encryption) MTU handling: tunnel MTU, IPv4 fragmentation, ICMP "too big".

A clear packet that does not fit into one ESP packet on the path is, before encryption:

* IPv4 with DF clear: fragmented (RFC 791), each fragment then travels in its own ESP packet;
* IPv4 with DF set: answered with ICMP Destination Unreachable / Fragmentation Needed carrying
  the tunnel MTU (RFC 792, RFC 1191);
* IPv6: answered with ICMPv6 Packet Too Big (RFC 4443 section 3.2); routers never fragment
  IPv6.

``decide`` picks among "pass", "fragment", "icmp" and "drop" (an ICMP error that RFC 1812
4.3.2.7 / RFC 4443 2.4(e) forbids, e.g. about an ICMP error or a non-initial fragment).
See docs/esp.md for the tunnel MTU formula.
"""
from __future__ import annotations

import struct
from typing import Literal

from .cipher import EspCipher, EspOverhead
from .errors import DropReason, EspError
from .ip import (
    IPV4_MIN_HEADER,
    IPV4_MIN_MTU,
    IPV6_HEADER,
    IPV6_MIN_MTU,
    PROTO_ICMP,
    PROTO_ICMPV6,
    IPv4Header,
    IPv6Header,
    addr_bytes,
    build_ipv4_header,
    checksum,
    ip_version,
    parse_ipv4,
    parse_ipv6,
)
from .packet import ESP_HEADER_LEN, TRAILER_LEN

UDP_HEADER_LEN = 8
ICMP_HEADER_LEN = 8
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMPV6_PACKET_TOO_BIG = 2
ICMP_ERROR_TYPES_V4 = frozenset({3, 4, 5, 11, 12})  # unreachable, quench, redirect, time, param
ICMP_TTL = 64
_IPTOS_TOS_MASK = 0x1E
_IPTOS_PREC_INTERNETCONTROL = 0xC0

Decision = Literal["pass", "fragment", "icmp", "drop"]


def outer_header_len(outer_family: int) -> int:
    if outer_family == 4:
        return IPV4_MIN_HEADER
    if outer_family == 6:
        return IPV6_HEADER
    raise ValueError("outer_family must be 4 or 6")


def tunnel_mtu(
    path_mtu: int,
    outer_family: int,
    overhead: EspOverhead | EspCipher,
    *,
    udp_encap: bool = False,
) -> int:
    """Largest inner packet whose ESP packet, with outer IP (and UDP) header, fits ``path_mtu``.

    ``outer(L) = H + U + 8 + IV + ceil((L + 2) / A) * A + ICV``, so the answer is
    ``floor((path_mtu - H - U - 8 - IV - ICV) / A) * A - 2`` (H = 20 or 40, U = 8 with
    UDP encapsulation else 0, A = the cipher's alignment: 16 for AES-CBC, 4 for the AEADs).
    Returns 0 when not even an empty payload fits.
    """
    if isinstance(overhead, EspCipher):
        overhead = overhead.overhead
    budget = (
        path_mtu - outer_header_len(outer_family) - (UDP_HEADER_LEN if udp_encap else 0)
        - ESP_HEADER_LEN - overhead.iv_len - overhead.icv_len
    )
    return max(budget // overhead.align * overhead.align - TRAILER_LEN, 0)


# -- IPv4 fragmentation (RFC 791) ------------------------------------------------------------
def _copied_options(options: bytes) -> bytes:
    """The options a non-first fragment carries (copy flag set), padded to 4 bytes."""
    out = bytearray()
    i = 0
    while i < len(options):
        opt = options[i]
        if opt == 0:  # End of Option List
            break
        if opt == 1:  # No Operation (copy flag clear)
            i += 1
            continue
        if i + 1 >= len(options):
            raise EspError(DropReason.MALFORMED, "IPv4 option without length")
        olen = options[i + 1]
        if olen < 2 or i + olen > len(options):
            raise EspError(DropReason.MALFORMED, "IPv4 option length")
        if opt & 0x80:
            out += options[i : i + olen]
        i += olen
    out += bytes(-len(out) % 4)
    return bytes(out)


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes]:
    """Fragment an IPv4 packet so that every fragment is at most ``mtu`` bytes.

    A packet that fits is returned alone, unchanged (trimmed to its Total Length). Otherwise
    DF must be clear (``EspError(DF_SET)``). Offsets are multiples of 8 and relative to the
    packet's own offset, so an already fragmented packet is fragmented further correctly (the
    last piece keeps the original MF); the first piece keeps all options, the others only those
    with the copy flag; identification, TOS, TTL and protocol are kept; checksums recomputed.
    """
    hdr = parse_ipv4(packet)
    packet = packet[: hdr.total_length]
    if hdr.total_length <= mtu:
        return [packet]
    if hdr.dont_fragment:
        raise EspError(DropReason.DF_SET, f"{hdr.total_length} > {mtu}")
    if mtu < IPV4_MIN_MTU:
        raise EspError(DropReason.BAD_MTU, f"IPv4 MTU {mtu} < {IPV4_MIN_MTU}")
    data = packet[hdr.header_length :]
    later_options = _copied_options(hdr.options)
    base = hdr.frag_offset * 8
    fragments = []
    pos = 0
    while pos < len(data):
        options = hdr.options if pos == 0 else later_options
        hlen = IPV4_MIN_HEADER + len(options)
        room = (mtu - hlen) // 8 * 8
        chunk = data[pos : pos + room]
        last = pos + len(chunk) == len(data)
        more = hdr.more_fragments if last else True
        flags_offset = (
            (0x8000 if hdr.reserved_flag else 0) | (0x2000 if more else 0) | ((base + pos) >> 3)
        )
        header = build_ipv4_header(
            tos=hdr.tos, total_length=hlen + len(chunk), ident=hdr.ident,
            flags_offset=flags_offset, ttl=hdr.ttl, protocol=hdr.protocol, src=hdr.src,
            dst=hdr.dst, options=options,
        )
        fragments.append(header + chunk)
        pos += len(chunk)
    return fragments


# -- ICMP errors -------------------------------------------------------------------------------
def _v4_icmp_allowed(hdr: IPv4Header, packet: bytes) -> bool:
    """RFC 1812 4.3.2.7: no ICMP error about an ICMP error, a non-initial fragment, or a packet
    whose source is not a unicast host or whose destination is broadcast/multicast."""
    if hdr.frag_offset != 0:
        return False
    s0, d0 = hdr.src[0], hdr.dst[0]
    if s0 == 0 or s0 == 127 or s0 >= 224:  # this-network, loopback, multicast, class E
        return False
    if d0 >= 224:  # multicast, class E, limited broadcast
        return False
    if hdr.protocol == PROTO_ICMP and hdr.total_length > hdr.header_length:
        if packet[hdr.header_length] in ICMP_ERROR_TYPES_V4:
            return False
    return True


_V6_EXT_HEADERS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options


def _v6_upper_layer(hdr: IPv6Header, packet: bytes) -> tuple[int, int] | None:
    """(protocol, offset) of the upper-layer header, or None if unknowable (later fragment)."""
    nh, off, end = hdr.next_header, IPV6_HEADER, hdr.total_length
    while nh in _V6_EXT_HEADERS or nh in (44, 51):
        if off + 8 > end:
            return None
        if nh == 44:  # Fragment header: upper layer only in the first fragment
            if struct.unpack_from("!H", packet, off + 2)[0] & 0xFFF8:
                return None
            nh, off = packet[off], off + 8
        elif nh == 51:  # AH: length in 4-octet units, minus 2
            nh, off = packet[off], off + (packet[off + 1] + 2) * 4
        else:
            nh, off = packet[off], off + (packet[off + 1] + 1) * 8
    return nh, off


def _v6_icmp_allowed(hdr: IPv6Header, packet: bytes) -> bool:
    """RFC 4443 2.4(e): no error about an ICMPv6 error or from an unspecified/multicast source
    (Packet Too Big may be sent for a multicast destination)."""
    if hdr.src[0] == 0xFF or hdr.src == bytes(16):
        return False
    upper = _v6_upper_layer(hdr, packet)
    if upper is not None:
        proto, off = upper
        if proto == PROTO_ICMPV6 and off < hdr.total_length and packet[off] < 128:
            return False
    return True


def icmp_frag_needed(original_packet: bytes, mtu: int, src_addr: object, *, ident: int = 0) -> bytes:
    """IPv4 ICMP Destination Unreachable, code 4 (Fragmentation Needed and DF Set), RFC 792 with
    the RFC 1191 Next-Hop MTU in the low 16 bits of the second word, quoting the original IP
    header and the first 8 data bytes. Sent from ``src_addr`` to the original source."""
    if not IPV4_MIN_MTU <= mtu <= 0xFFFF:
        raise EspError(DropReason.BAD_MTU, f"next-hop MTU {mtu}")
    hdr = parse_ipv4(original_packet, verify_checksum=False)
    quote = original_packet[: min(hdr.total_length, hdr.header_length + 8)]
    icmp = struct.pack("!BBHHH", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu) + quote
    icmp = icmp[:2] + checksum(icmp).to_bytes(2, "big") + icmp[4:]
    ip = build_ipv4_header(
        tos=(hdr.tos & _IPTOS_TOS_MASK) | _IPTOS_PREC_INTERNETCONTROL,
        total_length=IPV4_MIN_HEADER + len(icmp), ident=ident, flags_offset=0, ttl=ICMP_TTL,
        protocol=PROTO_ICMP, src=addr_bytes(src_addr, 4), dst=hdr.src,
    )
    return ip + icmp


def icmpv6_packet_too_big(original_packet: bytes, mtu: int, src_addr: object) -> bytes:
    """ICMPv6 Packet Too Big (type 2, code 0, RFC 4443 section 3.2) from ``src_addr`` to the
    original source, quoting as much of the original as fits in 1280 bytes. An MTU below 1280
    is reported as 1280 (the IPv6 minimum; the tunnel then has to fragment the outer packet)."""
    if mtu > 0xFFFFFFFF or mtu < 0:
        raise EspError(DropReason.BAD_MTU, f"MTU {mtu}")
    hdr = parse_ipv6(original_packet)
    src = addr_bytes(src_addr, 6)
    quote = original_packet[: min(hdr.total_length, IPV6_MIN_MTU - IPV6_HEADER - ICMP_HEADER_LEN)]
    icmp = struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, max(mtu, IPV6_MIN_MTU)) + quote
    pseudo = src + hdr.src + struct.pack("!I3xB", len(icmp), PROTO_ICMPV6)
    icmp = icmp[:2] + checksum(pseudo + icmp).to_bytes(2, "big") + icmp[4:]
    ip = struct.pack("!IHBB", 6 << 28, len(icmp), PROTO_ICMPV6, ICMP_TTL) + src + hdr.src
    return ip + icmp


# -- the decision --------------------------------------------------------------------------------
def decide(packet: bytes, mtu: int) -> Decision:
    """What to do with a clear packet about to enter a tunnel whose inner MTU is ``mtu``.

    IPv4: "pass" if it fits; else "fragment" if DF is clear; else "icmp" (Fragmentation
    Needed), or "drop" when RFC 1812 forbids that ICMP error. Already fragmented packets are
    treated the same way (they pass if they fit, are fragmented further if DF is clear).
    IPv6: "pass" if it fits, or if it is at most 1280 bytes (IPv6 minimum MTU: the tunnel must
    carry it, by fragmenting the outer packet); else "icmp" (Packet Too Big) or "drop".
    Malformed packets raise ``EspError(MALFORMED)``.
    """
    version = ip_version(packet)
    if version == 4:
        hdr4 = parse_ipv4(packet)
        if hdr4.total_length <= mtu:
            return "pass"
        if not hdr4.dont_fragment:
            return "fragment"
        return "icmp" if _v4_icmp_allowed(hdr4, packet) else "drop"
    if version == 6:
        hdr6 = parse_ipv6(packet)
        if hdr6.total_length <= mtu or hdr6.total_length <= IPV6_MIN_MTU:
            return "pass"
        return "icmp" if _v6_icmp_allowed(hdr6, packet) else "drop"
    raise EspError(DropReason.MALFORMED, f"IP version {version}")
