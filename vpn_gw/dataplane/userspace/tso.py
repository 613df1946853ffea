"""TCP segmentation of the super-packets a TUN device with TSO hands us (the encrypt side).

With ``TUNSETOFFLOAD`` (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) the kernel may give one read of up
to 64 KiB: a TCP packet with a virtio-net header saying GSO TCPV4/TCPV6, the segment size, and
NEEDS_CSUM (the TCP checksum field holds only the pseudo-header sum). ``segment`` cuts it into
the packets a network card's TSO would put on the wire: each with its own IP length (and IPv4
identification + 1 and header checksum), sequence number, flags (FIN and PSH on the last
segment only, CWR on the first only) and a complete TCP checksum. The segments then go through
the data plane like packets read one by one, and leave in one UDP GSO burst.

Parsing is strict: anything but IPv4 (no options) or IPv6 (no extension headers) carrying TCP
with consistent lengths is refused (None, counted as malformed by the caller).
"""
from __future__ import annotations

import struct

from vpn_gw.accel import tso_segment
from vpn_gw.dataplane.userspace.gro import VIRTIO_NET_HDR_GSO_TCPV4

VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80
MAX_SEGMENTS = 128
MAX_IP_LEN = 65535


def _fold(s: int) -> int:
    """The Internet checksum (complement of the ones' complement sum) of a sum of 16-bit
    words, via s mod 0xFFFF; a sum of 0xFFFF (residue 0) gives 0, as csum_fold does."""
    r = s % 0xFFFF
    return ~r & 0xFFFF if r else 0


def segment_py(vnet: bytes, pkt: bytes) -> list[bytes] | None:
    """The wire segments of one GSO TCP packet read from TUN with its virtio-net header;
    None if it is not a well-formed one. (``segment`` is this, or the compiled helper doing
    exactly the same: vpn_gw.accel.)"""
    _flags, gso_type, _hl, gso_size, _cs, _co = _VNET.unpack(vnet)
    kind = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    n = len(pkt)
    if kind == VIRTIO_NET_HDR_GSO_TCPV4:
        if n < 40 or pkt[0] != 0x45 or pkt[9] != 6 or (pkt[2] << 8 | pkt[3]) not in (n, 0):
            return None
        if int.from_bytes(pkt[6:8], "big") & 0x3FFF:
            return None  # a fragment (MF or offset)
        ip_len, v6 = 20, False
    elif kind == VIRTIO_NET_HDR_GSO_TCPV6:
        if n < 60 or pkt[0] >> 4 != 6 or pkt[6] != 6:
            return None
        ip_len, v6 = 40, True
    else:
        return None
    thl = (pkt[ip_len + 12] >> 4) * 4
    hl = ip_len + thl
    if thl < 20 or n < hl or not gso_size:
        return None
    total = n - hl
    count = max(1, -(-total // gso_size))
    if count > MAX_SEGMENTS or hl + min(total, gso_size) > MAX_IP_LEN:
        return None  # too many segments, or one that no IP length field can describe
    hdr = bytearray(pkt[:hl])
    hdr[ip_len + 16:ip_len + 18] = b"\0\0"  # TCP checksum: computed per segment below
    flags = hdr[ip_len + 13]
    seq0 = int.from_bytes(hdr[ip_len + 4:ip_len + 8], "big")
    # pseudo header: addresses + protocol (the length is added per segment)
    pseudo = (int.from_bytes(hdr[8:40], "big") if v6 else int.from_bytes(hdr[12:20], "big")) + 6
    ident0 = int.from_bytes(hdr[4:6], "big")
    out = []
    frombytes = int.from_bytes
    for k in range(count):
        start = hl + k * gso_size
        chunk = pkt[start:start + gso_size]
        h = hdr if k == 0 else bytearray(hdr)
        tcp_len = thl + len(chunk)
        if v6:
            h[4:6] = tcp_len.to_bytes(2, "big")
        else:
            h[2:4] = (20 + tcp_len).to_bytes(2, "big")
            h[4:6] = ((ident0 + k) & 0xFFFF).to_bytes(2, "big")
            h[10:12] = b"\0\0"
            h[10:12] = _fold(frombytes(h[:20], "big")).to_bytes(2, "big")
        h[ip_len + 4:ip_len + 8] = ((seq0 + k * gso_size) & 0xFFFFFFFF).to_bytes(4, "big")
        f = flags
        if k < count - 1:
            f &= ~(_TCP_FIN | _TCP_PSH)
        if k:
            f &= ~_TCP_CWR
        h[ip_len + 13] = f
        h[ip_len + 16:ip_len + 18] = b"\0\0"
        # TCP checksum: pseudo header + TCP header + payload. The header is even-sized, so the
        # payload's words line up; little-endian reading pads an odd last byte as RFC 1071 wants
        # and yields the byte-swapped sum (x 256 swaps back, modulo 0xFFFF).
        s = pseudo + tcp_len + frombytes(h[ip_len:], "big") + ((frombytes(chunk, "little") % 0xFFFF) << 8)
        h[ip_len + 16:ip_len + 18] = _fold(s).to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    return out


def _segment_compiled(vnet: bytes, pkt: bytes) -> list[bytes] | None:
    return tso_segment(vnet, pkt, MAX_SEGMENTS)  # type: ignore[misc]


segment = _segment_compiled if tso_segment is not None else segment_py
