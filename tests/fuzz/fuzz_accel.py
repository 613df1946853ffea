"""atheris harness for the compiled helpers (vpn_gw/accel/_accel.c) against the pure-Python
code they replace: for every input the C and the Python answers must be equal, and nothing but
the documented results may come out (no exception, no crash).

* ``tso_segment(vnet, pkt)`` vs ``tso.segment_py`` (a TSO super-packet with its virtio-net
  header: segments byte for byte, or both refuse);
* ``csum_words`` vs RFC 1071 word by word, over one to four buffers;
* ``gro.complete_checksum`` (NEEDS_CSUM) with the C sum vs with the big-integer sum;
* ``udp_coalesce`` vs ``gro._udp_run_py`` (a list of UDP datagrams of one flow, bent: the same
  coalesced write as one buffer and the same count, or both None, from every start index).

The C code is not instrumented (libFuzzer's coverage comes from the Python side it is compared
with), so inputs start from a well-formed TCP packet the fuzzer then bends.

Run: .venv/bin/python tests/fuzz/fuzz_accel.py [libFuzzer flags] [CORPUS_DIR ...]
(bench/fuzz_harnesses.py runs it for longer.)
"""
from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports():
    from vpn_gw.dataplane.userspace import gro, tso

from esp.ip import checksum
from vpn_gw.accel import _accel

# IPv4 (no options, DF) + TCP (ACK, 20-byte header): 192.0.2.1 -> 198.51.100.10
_BASE = struct.pack("!BBHHHBBH4s4sHHIIBBHHH", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, bytes([192, 0, 2, 1]),
                    bytes([198, 51, 100, 10]), 40000, 5201, 1, 1, 0x50, 0x10, 512, 0, 0)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    v6 = fdp.ConsumeBool()
    vnet = struct.pack("=BBHHHH", fdp.ConsumeIntInRange(0, 255),
                       fdp.PickValueInList([1, 4, 0x81, 0x84, 0, 3, fdp.ConsumeIntInRange(0, 255)]),
                       fdp.ConsumeIntInRange(0, 65535), fdp.ConsumeIntInRange(0, 65535),
                       fdp.ConsumeIntInRange(0, 65535), fdp.ConsumeIntInRange(0, 65535))
    head = bytearray(_BASE if not v6 else b"\x60" + bytes(5) + b"\x06\x40" + bytes(32) + _BASE[20:])
    for _ in range(fdp.ConsumeIntInRange(0, 4)):  # bend a few header bytes
        head[fdp.ConsumeIntInRange(0, len(head) - 1)] = fdp.ConsumeIntInRange(0, 255)
    pkt = bytes(head) + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6000))
    if not v6 and fdp.ConsumeBool():
        pkt = pkt[:2] + len(pkt).to_bytes(2, "big") + pkt[4:] if len(pkt) < 65536 else pkt
    cut = fdp.ConsumeIntInRange(0, len(pkt))
    if fdp.ConsumeBool():
        pkt = pkt[:cut]
    c = _accel.tso_segment(vnet, pkt, tso.MAX_SEGMENTS)
    if c != tso.segment_py(vnet, pkt):
        raise AssertionError(f"tso_segment differs: vnet {vnet.hex()} packet {pkt[:80].hex()}")
    bufs = [pkt[i::3] for i in range(fdp.ConsumeIntInRange(1, 3))] + [fdp.ConsumeBytes(9)]
    s = _accel.csum_words(bufs)
    want = sum(~checksum(b) & 0xFFFF for b in bufs)  # RFC 1071 sums, word by word
    if not 0 <= s <= 0xFFFF or s % 0xFFFF != want % 0xFFFF or (s == 0) != (want == 0):
        raise AssertionError(f"csum_words {s:#x} vs {want:#x}")
    with_c = gro.complete_checksum(vnet, pkt)
    saved, gro.csum_words = gro.csum_words, None
    try:
        pure = gro.complete_checksum(vnet, pkt)
    finally:
        gro.csum_words = saved
    if with_c != pure:
        raise AssertionError("complete_checksum differs")
    _udp_runs(fdp)


# IPv4 (no options, DF) + UDP: 192.0.2.1:4000 -> 198.51.100.10:5201; length and checksums set below
_UDP = struct.pack("!BBHHHBBH4s4sHHHH", 0x45, 0, 0, 1, 0x4000, 64, 17, 0, bytes([192, 0, 2, 1]),
                   bytes([198, 51, 100, 10]), 4000, 5201, 0, 0)


def _datagram(payload: bytes, ident: int) -> bytes:
    p = bytearray(_UDP + payload)
    p[2:4] = len(p).to_bytes(2, "big")
    p[4:6] = ident.to_bytes(2, "big")
    p[10:12] = checksum(bytes(p[:20])).to_bytes(2, "big")
    p[24:26] = (len(p) - 20).to_bytes(2, "big")
    pseudo = bytes(p[12:20]) + struct.pack("!BBH", 0, 17, len(p) - 20)
    p[26:28] = (checksum(pseudo + bytes(p[20:])) or 0xFFFF).to_bytes(2, "big")
    return bytes(p)


def _udp_runs(fdp: atheris.FuzzedDataProvider) -> None:
    size = fdp.ConsumeIntInRange(1, 1500)
    pkts = [_datagram(bytes([k]) * (size if fdp.ConsumeBool() else fdp.ConsumeIntInRange(1, 1500)), k)
            for k in range(fdp.ConsumeIntInRange(1, 70))]
    for _ in range(fdp.ConsumeIntInRange(0, 3)):  # bend a few bytes anywhere
        k = fdp.ConsumeIntInRange(0, len(pkts) - 1)
        b = bytearray(pkts[k])
        b[fdp.ConsumeIntInRange(0, len(b) - 1)] = fdp.ConsumeIntInRange(0, 255)
        pkts[k] = bytes(b)
    for i in range(len(pkts)):
        want = gro._udp_run_py(pkts, i, len(pkts))
        got = _accel.udp_coalesce(pkts, i, gro.MAX_SEGMENTS)
        expected = None if want is None else (b"".join(bytes(x) for x in want[0]), want[1])
        if got != expected:
            raise AssertionError(f"udp_coalesce differs at {i} of {len(pkts)}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
