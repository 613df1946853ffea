"""TCP segment and UDP datagram coalescing for TUN writes (what the kernel's GRO does for a
network card).

The userspace data plane decrypts bursts of ESP packets (one UDP GRO receive); consecutive
IPv4 TCP segments of one flow in such a burst are written to the TUN device as one large
packet with a virtio-net header (IFF_VNET_HDR, GSO type TCPV4, segment size = the first
segment's payload). The kernel then forwards and delivers that one packet (cutting it into the
original segments again wherever it must, e.g. on a link without TSO), instead of running its
whole stack once per segment.

The rules are those of Linux's tcp_gro_receive, a little stricter: adjacent segments only
(never reordered), same addresses, ports, TOS, TTL, DF set, no IP options, no fragments, same
ACK number, window and TCP options (timestamps included), ACK flag only (PSH allowed on the last
segment), consecutive sequence numbers, every segment but the last exactly the first one's
length, at most 64 KiB. Each segment's IPv4 header and TCP checksums are verified first (as GRO
does; one sum over the whole run, docs/esp.md "Checksums on the decrypt side"): the merged
packet's checksum is left to the kernel (NEEDS_CSUM), so a segment that arrived corrupted
(before the peer encrypted it) is written on its own, unchanged, for the receiver to refuse.

UDP (``udp=True``; GSO type UDP_L4, Linux 4.18+ accepts it from a TUN device): consecutive IPv4
datagrams of one flow (same addresses, ports, TOS, TTL, DF; no IP options, no fragments, a
non-zero UDP checksum), every payload the first one's size but the last, which may be shorter,
at most 64 and 64 KiB; checksums verified over the run as for TCP. The kernel cuts the packet
into the original datagrams again (on the way out, or before a socket without UDP_GRO), with
the checksums recomputed and IPv4 IDs counted up from the first datagram's (as when the kernel
segments a UDP GSO send). One write and one pass through the forwarding path for up to 64
small datagrams instead of 64: the decrypt side's small-packet rate is bounded by TUN writes.
"""
from __future__ import annotations

import struct
from itertools import repeat
from typing import Literal

from vpn_gw.accel import csum_words, udp_coalesce

VNET_HDR_LEN = 10  # struct virtio_net_hdr (no num_buffers: TUN's default header size)
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
NO_OFFLOAD = bytes(VNET_HDR_LEN)
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
MAX_LEN = 65535
MAX_SEGMENTS = 64
_TCP_ACK, _TCP_PSH = 0x10, 0x08


def _checksums_ok_py(run: list[bytes], proto: int = 6) -> bool:
    """Are the IPv4 header and TCP checksums of every segment in ``run`` right? The segments
    (IPv4 without options, TCP) share addresses, which coalesce_counted has checked.

    One ones' complement sum over the whole run (docs/esp.md "Checksums on the decrypt side"):
    2^16 = 1 (mod 0xFFFF), so a byte string read as one integer is, modulo 0xFFFF, the ones'
    complement sum of its 16-bit words. Read little-endian, the words pair bytes (0,1), (2,3)...
    from the start, an odd last byte padded with zero as RFC 1071 wants, and the sum comes out
    byte-swapped (its byte-order independence); multiplying by 256 swaps bytes modulo 0xFFFF.
    A segment with a valid IP header sums to the TCP segment's sum (the header sums to 0), and a
    valid TCP segment sums to minus its pseudo header (addresses, 6, TCP length), so for the run
    sum(packets) + sum(pseudo headers) = 0 (mod 0xFFFF) when all are right; 0 and 0xFFFF (the
    two zeros) are the same residue. A single corrupted segment always shows; errors in several
    segments cancel with probability 1/65535, the TCP checksum's own strength per segment."""
    little: repeat[Literal["little"]] = repeat("little", len(run))
    s = sum(map(int.from_bytes, run, little))
    return (s + (_pseudo_sum(run, proto) << 8)) % 0xFFFF == 0


def _pseudo_sum(run: list[bytes], proto: int) -> int:
    """The pseudo headers of the run's segments added up (their addresses are the same):
    addresses, protocol and the TCP/UDP length of each, congruent mod 0xFFFF to the ones'
    complement sum of their big-endian words."""
    return len(run) * (int.from_bytes(run[0][12:20], "big") + proto - 20) + sum(map(len, run))


def _checksums_ok_compiled(run: list[bytes], proto: int = 6) -> bool:
    """``_checksums_ok_py`` with the sum of the segments' big-endian words from the compiled
    helper (vpn_gw.accel): the same test, the pseudo headers added unswapped."""
    return (csum_words(run) + _pseudo_sum(run, proto)) % 0xFFFF == 0  # type: ignore[misc]


_checksums_ok = _checksums_ok_compiled if csum_words is not None else _checksums_ok_py


def _verified_end(pkts: list[bytes], i: int, j: int, proto: int = 6) -> int:
    """The end of the longest run pkts[i:end] (end <= j) whose checksums are right."""
    if _checksums_ok(pkts[i:j], proto):
        return j
    for e in range(i, j):
        if not _checksums_ok([pkts[e]], proto):
            return e
    return j  # not reached: a failing run has a failing segment


def _ip_checksum(hdr: bytes | bytearray) -> int:
    total = sum(struct.unpack("!10H", hdr[:20]))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _segment_info(p: bytes) -> tuple[int, int, int] | None:
    """(TCP header length, payload length, flags) of a segment that may be coalesced, else None."""
    n = len(p)
    if n < 40 or p[0] != 0x45 or p[9] != 6 or p[6] != 0x40 or p[7] != 0:
        return None  # not IPv4 without options / not TCP / DF clear or a fragment
    if (p[2] << 8 | p[3]) != n:
        return None
    thl = (p[32] >> 4) * 4
    flags = p[33]
    if thl < 20 or n <= 20 + thl or (flags & ~_TCP_PSH) != _TCP_ACK:
        return None  # no payload, or SYN/FIN/RST/URG/ECE/CWR
    return thl, n - 20 - thl, flags


def _datagram_size(p: bytes) -> int:
    """UDP payload length of an IPv4 datagram that may be coalesced, else -1."""
    n = len(p)
    if n <= 28 or p[0] != 0x45 or p[9] != 17 or p[6] & 0x3F or p[7] or (p[2] << 8 | p[3]) != n:
        return -1  # not IPv4 without options / not UDP / a fragment / no payload
    if (p[24] << 8 | p[25]) != n - 20 or p[26:28] == b"\0\0":
        return -1  # UDP length disagrees, or no checksum (nothing to verify)
    return n - 28


def _udp_run_py(pkts: list[bytes], i: int, n: int) -> tuple[list, int] | None:
    """One coalesced UDP write starting at pkts[i] (buffers, datagrams), or None. The
    reference; ``_udp_run_compiled`` gives the same bytes as one buffer."""
    p = pkts[i]
    size = _datagram_size(p)
    if size < 0:
        return None
    same = p[12:24]  # addresses and ports
    tos, ttl, df = p[1], p[8], p[6]
    total = len(p)
    j = i + 1
    limit = min(n, i + MAX_SEGMENTS)
    while j < limit:
        q = pkts[j]
        qsize = _datagram_size(q)
        if (qsize < 0 or qsize > size or total + qsize > MAX_LEN or q[12:24] != same or q[1] != tos
                or q[8] != ttl or q[6] != df):
            break
        total += qsize
        j += 1
        if qsize < size:
            break  # a shorter datagram ends the packet
    if j > i + 1:
        e = _verified_end(pkts, i, j, 17)
        if e < j:
            j = e
            total = sum(map(len, pkts[i:j])) - (j - i - 1) * 28
    if j <= i + 1:
        return None
    hdr = bytearray(p[:28])
    hdr[2:4] = total.to_bytes(2, "big")
    hdr[10:12] = b"\0\0"
    hdr[10:12] = _ip_checksum(hdr).to_bytes(2, "big")
    udp_len = total - 20
    hdr[24:26] = udp_len.to_bytes(2, "big")
    ps = int.from_bytes(hdr[12:14], "big") + int.from_bytes(hdr[14:16], "big") \
        + int.from_bytes(hdr[16:18], "big") + int.from_bytes(hdr[18:20], "big") + 17 + udp_len
    while ps > 0xFFFF:
        ps = (ps & 0xFFFF) + (ps >> 16)
    hdr[26:28] = ps.to_bytes(2, "big")  # NEEDS_CSUM: the pseudo-header sum, not complemented
    vnet = _VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, 28, size, 20, 6)
    return [vnet, hdr, *[memoryview(q)[28:] for q in pkts[i:j]]], j - i


def _udp_run_compiled(pkts: list[bytes], i: int, n: int) -> tuple[list, int] | None:
    """``_udp_run_py`` by the compiled helper (vpn_gw.accel.udp_coalesce): the write as one
    buffer (virtio-net header first), the payloads copied instead of 64 memoryviews."""
    run = udp_coalesce(pkts, i, MAX_SEGMENTS)  # type: ignore[misc]
    return None if run is None else ([run[0]], run[1])


_udp_run = _udp_run_compiled if udp_coalesce is not None else _udp_run_py


def coalesce(pkts: list[bytes], *, udp: bool = False) -> list[list]:
    """Group ``pkts`` (decrypted IP packets, in order) for writing: a list of writes, each the
    list of buffers of one TUN write, virtio-net header first. Order is kept."""
    return [bufs for bufs, _n in coalesce_counted(pkts, udp=udp)]


def coalesce_counted(pkts: list[bytes], *, udp: bool = False) -> list[tuple[list, int]]:
    """``coalesce``, each write with the number of ``pkts`` it carries."""
    out: list[tuple[list, int]] = []
    append = out.append
    i, n = 0, len(pkts)
    while i < n:
        p = pkts[i]
        if udp and i + 1 < n and len(p) > 9 and p[9] == 17:
            run = _udp_run(pkts, i, n)
            if run is not None:
                append(run)
                i += run[1]
                continue
        info = _segment_info(p) if i + 1 < n else None
        if info is None or info[2] & _TCP_PSH:
            append(([NO_OFFLOAD, p], 1))
            i += 1
            continue
        thl, size, flags = info
        hl = 20 + thl
        # what must match: version, IHL, flags, fragment offset, protocol (_segment_info), TOS
        # (1), TTL (8), addresses and ports (12..24), ACK number and data offset (28..33),
        # window (34..36), urgent pointer and TCP options (38..hl); flags: ACK, PSH on the last
        tos, ttl = p[1], p[8]
        same = p[12:24]
        ack_off = p[28:33]
        win = p[34:36]
        opts = p[38:hl]
        nxt = (int.from_bytes(p[24:28], "big") + size) & 0xFFFFFFFF
        total = len(p)
        j = i + 1
        limit = min(n, i + MAX_SEGMENTS)
        while j < limit:
            q = pkts[j]
            qi = _segment_info(q)
            if qi is None:
                break
            qthl, qsize, qflags = qi
            if (qthl != thl or qsize > size or total + qsize > MAX_LEN or q[12:24] != same
                    or int.from_bytes(q[24:28], "big") != nxt or q[28:33] != ack_off
                    or q[34:36] != win or q[38:hl] != opts or q[1] != tos or q[8] != ttl):
                break
            total += qsize
            nxt = (nxt + qsize) & 0xFFFFFFFF
            j += 1
            if qsize < size or qflags & _TCP_PSH:
                break  # a short or pushed segment ends the packet (as in GRO)
        if j > i + 1:
            e = _verified_end(pkts, i, j)
            if e < j:
                j = e
                total = sum(map(len, pkts[i:j])) - (j - i - 1) * hl
        if j <= i + 1:
            append(([NO_OFFLOAD, p], 1))
            i += 1
            continue
        tcp_len = total - 20
        hdr = bytearray(p[:hl])
        hdr[2:4] = total.to_bytes(2, "big")
        hdr[10:12] = b"\0\0"
        hdr[10:12] = _ip_checksum(hdr).to_bytes(2, "big")
        hdr[33] = flags | (pkts[j - 1][33] & _TCP_PSH)
        # NEEDS_CSUM: the checksum field holds the (not complemented) pseudo-header sum
        ps = int.from_bytes(hdr[12:14], "big") + int.from_bytes(hdr[14:16], "big") \
            + int.from_bytes(hdr[16:18], "big") + int.from_bytes(hdr[18:20], "big") + 6 + tcp_len
        while ps > 0xFFFF:
            ps = (ps & 0xFFFF) + (ps >> 16)
        hdr[36:38] = ps.to_bytes(2, "big")
        vnet = _VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hl, size, 20, 16)
        append(([vnet, hdr, *[memoryview(q)[hl:] for q in pkts[i:j]]], j - i))
        i = j
    return out


def complete_checksum(vnet: bytes, pkt: bytes) -> bytes | None:
    """A packet read from the TUN device with its virtio-net header: the plain packet, with the
    checksum the kernel left to us (NEEDS_CSUM) filled in; None for a GSO packet (never sent
    to us: the device offers no TSO)."""
    flags, gso_type, _hl, _gs, start, offset = _VNET.unpack(vnet)
    if gso_type != VIRTIO_NET_HDR_GSO_NONE:
        return None
    if not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return pkt
    if start + offset + 2 > len(pkt):
        return None
    if csum_words is not None:
        s = csum_words((memoryview(pkt)[start:],)) % 0xFFFF
    else:
        seg = pkt[start:]
        v = int.from_bytes(seg, "big")
        if len(seg) & 1:
            v <<= 8
        s = v % 0xFFFF  # the ones' complement sum, with 0xFFFF (-0) reported as 0
    csum = ~s & 0xFFFF if s else 0
    if csum == 0 and offset == 6:
        csum = 0xFFFF  # UDP: 0 would mean "no checksum"
    b = bytearray(pkt)
    b[start + offset:start + offset + 2] = csum.to_bytes(2, "big")
    return bytes(b)
