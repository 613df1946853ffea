"""Minimal pcap reader for interop recordings: UDP datagrams, IKE on 500/4500.

Only what tcpdump writes here is supported: classic pcap (not pcapng), link types
Ethernet (1), Linux cooked v1/v2 (113/276) and raw IP (101/228/229), IPv4 and IPv6,
with IP fragment reassembly (IKE messages above the path MTU without IKE fragmentation).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

IKE_PORTS = (500, 4500)
NON_ESP_MARKER = b"\x00\x00\x00\x00"

EXCHANGE_NAMES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
                  43: "IKE_SESSION_RESUME", 44: "GSA_AUTH", 45: "GSA_REGISTRATION",
                  46: "GSA_REKEY", 48: "IKE_INTERMEDIATE", 49: "IKE_FOLLOWUP_KE"}


@dataclasses.dataclass
class Datagram:
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def read_pcap(path: Path | str) -> Iterator[tuple[float, int, bytes]]:
    """Yield (timestamp, linktype, frame) from a classic pcap file."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (pcapng is not supported)")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        frame = data[off:off + incl]
        off += incl
        yield sec + frac / (1e9 if nano else 1e6), linktype, frame


def _l3(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """(ethertype, network-layer bytes) or None."""
    if linktype == 1:  # Ethernet, skip VLAN tags
        off, etype = 12, struct.unpack("!H", frame[12:14])[0]
        while etype in (0x8100, 0x88A8):
            off += 4
            etype = struct.unpack("!H", frame[off:off + 2])[0]
        return etype, frame[off + 2:]
    if linktype == 113:  # Linux cooked v1
        return struct.unpack("!H", frame[14:16])[0], frame[16:]
    if linktype == 276:  # Linux cooked v2
        return struct.unpack("!H", frame[0:2])[0], frame[20:]
    if linktype in (101, 12, 228, 229):  # raw IP
        v = frame[0] >> 4 if frame else 0
        return (0x0800 if v == 4 else 0x86DD), frame
    return None


class _Reassembler:
    def __init__(self):
        self.frags: dict[tuple, dict] = {}

    def add(self, key: tuple, offset: int, more: bool, payload: bytes) -> bytes | None:
        st = self.frags.setdefault(key, {"parts": {}, "total": None})
        st["parts"][offset] = payload
        if not more:
            st["total"] = offset + len(payload)
        if st["total"] is None:
            return None
        buf = bytearray()
        while len(buf) < st["total"]:
            part = st["parts"].get(len(buf))
            if part is None:
                return None
            buf.extend(part)
        del self.frags[key]
        return bytes(buf)


def udp_datagrams(path: Path | str) -> Iterator[Datagram]:
    """All UDP datagrams of a capture (IP fragments reassembled), in capture order."""
    reasm = _Reassembler()
    for ts, lt, frame in read_pcap(path):
        l3 = _l3(lt, frame)
        if l3 is None:
            continue
        etype, pkt = l3
        if etype == 0x0800 and len(pkt) >= 20:
            ihl = (pkt[0] & 0x0F) * 4
            total = struct.unpack("!H", pkt[2:4])[0]
            ident, fl = struct.unpack("!HH", pkt[4:8])
            proto = pkt[9]
            src, dst = str(ipaddress.IPv4Address(pkt[12:16])), str(ipaddress.IPv4Address(pkt[16:20]))
            body = pkt[ihl:total]
            more, foff = bool(fl & 0x2000), (fl & 0x1FFF) * 8
            if more or foff:
                body = reasm.add((4, src, dst, ident, proto), foff, more, body)
                if body is None:
                    continue
        elif etype == 0x86DD and len(pkt) >= 40:
            plen = struct.unpack("!H", pkt[4:6])[0]
            nh = pkt[6]
            src, dst = str(ipaddress.IPv6Address(pkt[8:24])), str(ipaddress.IPv6Address(pkt[24:40]))
            body = pkt[40:40 + plen]
            frag = None
            while nh in (0, 43, 60, 44) and len(body) >= 8:
                if nh == 44:
                    fo, ident = struct.unpack("!HI", body[2:8])
                    frag = (fo & 0xFFF8, bool(fo & 1), ident)
                    nh, body = body[0], body[8:]
                else:
                    hl = (body[1] + 1) * 8
                    nh, body = body[0], body[hl:]
            proto = nh
            if frag is not None:
                body = reasm.add((6, src, dst, frag[2]), frag[0], frag[1], body)
                if body is None:
                    continue
        else:
            continue
        if proto != 17 or len(body) < 8:
            continue
        sport, dport, ulen = struct.unpack("!HHH", body[:6])
        yield Datagram(ts, src, sport, dst, dport, body[8:ulen] if ulen >= 8 else body[8:])


def ike_header(msg: bytes) -> dict | None:
    """Decode the 28-byte IKE header (None if too short)."""
    if len(msg) < 28:
        return None
    spi_i, spi_r, np_, ver, exch, flags, mid, length = struct.unpack("!8s8sBBBBII", msg[:28])
    return {
        "spi_i": spi_i.hex(), "spi_r": spi_r.hex(), "next_payload": np_,
        "version": f"{ver >> 4}.{ver & 15}", "exchange_type": exch,
        "exchange": EXCHANGE_NAMES.get(exch, str(exch)),
        "flags": flags, "initiator": bool(flags & 0x08), "response": bool(flags & 0x20),
        "mid": mid, "length": length,
    }


def classify_ike(path: Path | str, ports: tuple[int, ...] = IKE_PORTS) -> dict:
    """Split a capture's UDP/500 and /4500 traffic into IKE messages, ESP and keepalives.

    Returns {"messages": [...], "esp_packets": n, "keepalives": n, "other_udp": n}; each
    message is {"time", "src", "sport", "dst", "dport", "hex", "non_esp_marker",
    "header"}, where hex is the IKE message with the non-ESP marker removed.
    """
    messages = []
    esp = keep = other = 0
    for d in udp_datagrams(path):
        if d.sport not in ports and d.dport not in ports:
            other += 1
            continue
        p = d.payload
        marker = False
        if 4500 in (d.sport, d.dport) and d.sport != 500 and d.dport != 500:
            if p == b"\xff":
                keep += 1
                continue
            if p[:4] != NON_ESP_MARKER:
                esp += 1
                continue
            p, marker = p[4:], True
        messages.append({
            "time": round(d.time, 6), "src": d.src, "sport": d.sport, "dst": d.dst,
            "dport": d.dport, "hex": p.hex(), "non_esp_marker": marker, "header": ike_header(p),
        })
    return {"messages": messages, "esp_packets": esp, "keepalives": keep, "other_udp": other}
