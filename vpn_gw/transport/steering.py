"""Two sockets per IKE port, and the kernel choosing between them (SO_REUSEPORT group with a
classic BPF program, SO_ATTACH_REUSEPORT_CBPF, Linux 4.5):

* index 0, the main socket: everything that is not a cookie-less IKE_SA_INIT request: IKE
  responses, IKE_AUTH and later exchanges, IKE_SA_INIT requests whose first payload is a COOKIE
  notification (a peer answering our challenge), ESP and keepalives on the NAT-T port;
* index 1 .. INIT_BUCKETS, the INIT sockets: IKE_SA_INIT requests without a COOKIE, i.e. what
  a spoofed flood consists of, spread over the sockets by a hash of the source's /24 (IPv4) or
  /48 (IPv6). The daemon reads every INIT socket with the same budget per turn of its loop, so
  a flood from one range (a spoofer behind BCP 38 egress filtering can only forge addresses of
  its own network) fills its own socket's queue and a peer from elsewhere is still read at
  once; a flood spread over all addresses fills every queue (then only speed helps).

A flood then fills (and overflows) the INIT socket's queue only; a legitimate peer's COOKIE
retry, its IKE_AUTH and every established SA's traffic arrive on the main socket, which the
daemon reads first and in full. Only the very first IKE_SA_INIT of a peer competes with the
flood, and the peer retransmits it. The INIT socket is read in batches (recvmmsg) and answered
through the engine's stateless COOKIE path in batches (sendmmsg); see docs/architecture.md
"Spoofed IKE_SA_INIT floods".

The program sees the UDP payload (the kernel pulls the UDP header before running it); a load
past the end of a short datagram ends the program with 0, i.e. the main socket.
"""
from __future__ import annotations

import ctypes
import socket
import struct

SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", 15)
SO_ATTACH_REUSEPORT_CBPF = 51
MAIN = 0             # index of the main socket; INIT sockets are 1 .. buckets
INIT_BUCKETS = 8     # INIT sockets per group (a power of two)
_SKF_NET_OFF = -0x100000 & 0xFFFFFFFF  # loads relative to the IP header
_GOLDEN = 2654435761  # Knuth's multiplicative hash

# classic BPF opcodes (linux/filter.h)
_LD_W, _LD_H, _LD_B = 0x20, 0x28, 0x30   # BPF_LD | size | BPF_ABS
_JEQ, _JSET = 0x15, 0x45                 # BPF_JMP | op | BPF_K
_RET, _RET_A = 0x06, 0x16                # BPF_RET | BPF_K / BPF_A
_RSH, _MUL, _ADD = 0x74, 0x24, 0x04      # BPF_ALU | op | BPF_K
_XOR_X, _TAX = 0xAC, 0x07                # BPF_ALU | BPF_XOR | BPF_X, BPF_MISC | BPF_TAX

_IKE_SA_INIT = 34
_FLAG_RESPONSE = 0x20
_NOTIFY = 41
_COOKIE = 16390


def _assemble(prog: list[tuple]) -> list[tuple[int, int, int, int]]:
    """(op, k) or (op, k, true_label, false_label) or ("label", name) -> sock_filter tuples."""
    labels, pc = {}, 0
    for ins in prog:
        if ins[0] == "label":
            labels[ins[1]] = pc
        else:
            pc += 1
    out: list[tuple[int, int, int, int]] = []
    for ins in prog:
        if ins[0] == "label":
            continue
        here = len(out)
        if len(ins) == 4:
            op, k, jt, jf = ins
            t = labels[jt] - here - 1 if isinstance(jt, str) else jt
            f = labels[jf] - here - 1 if isinstance(jf, str) else jf
            out.append((op, t, f, k))
        else:
            out.append((ins[0], 0, 0, ins[1]))
    return out


def _shift(buckets: int) -> int:
    if buckets < 1 or buckets & (buckets - 1):
        raise ValueError(f"INIT buckets must be a power of two, not {buckets}")
    return 32 - (buckets.bit_length() - 1)


def prefix_key(ip: str) -> int:
    """What the program hashes: an IPv4 source's /24, an IPv6 source's /48 (as 32 bits)."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    if len(packed) == 4:
        return int.from_bytes(packed, "big") >> 8
    return int.from_bytes(packed[:4], "big") ^ int.from_bytes(packed[4:6], "big")


def bucket(ip: str, buckets: int = INIT_BUCKETS) -> int:
    """The socket index (1 .. buckets) the program gives a cookie-less IKE_SA_INIT from ``ip``."""
    if buckets == 1:
        return 1
    return 1 + (((prefix_key(ip) * _GOLDEN) & 0xFFFFFFFF) >> _shift(buckets))


def program(natt: bool, family: int = socket.AF_INET,
            buckets: int = INIT_BUCKETS) -> list[tuple[int, int, int, int]]:
    """The steering program for the IKE port (``natt`` False) or the NAT-T port (IKE behind the
    four-byte non-ESP marker; anything else there is ESP or a keepalive: main socket). A
    cookie-less IKE_SA_INIT goes to INIT socket 1 + hash(source /24 or /48) mod ``buckets``."""
    o = 4 if natt else 0
    prog: list[tuple] = []
    if natt:
        prog += [(_LD_W, 0), (_JEQ, 0, 0, "main")]                    # non-ESP marker
    prog += [
        (_LD_B, o + 18), (_JEQ, _IKE_SA_INIT, 0, "main"),             # exchange type
        (_LD_B, o + 19), (_JSET, _FLAG_RESPONSE, "main", 0),          # a request
        (_LD_B, o + 16), (_JEQ, _NOTIFY, 0, "init"),                  # first payload ...
        (_LD_H, o + 28 + 6), (_JEQ, _COOKIE, "main", "init"),         # ... a COOKIE notify
        ("label", "init"),
    ]
    if buckets == 1:
        prog += [(_RET, 1)]
    else:
        if family == socket.AF_INET6:   # the /48: address bytes 0-3 xor 4-5
            prog += [(_LD_W, _SKF_NET_OFF + 8), (_TAX, 0), (_LD_H, _SKF_NET_OFF + 12), (_XOR_X, 0)]
        else:                           # the /24
            prog += [(_LD_W, _SKF_NET_OFF + 12), (_RSH, 8)]
        prog += [(_MUL, _GOLDEN), (_RSH, _shift(buckets)), (_ADD, 1), (_RET_A, 0)]
    prog += [("label", "main"), (_RET, MAIN)]
    return _assemble(prog)


def attach(sock: socket.socket, natt: bool, buckets: int = INIT_BUCKETS) -> None:
    """Attach the steering program to the reuseport group of ``sock`` (OSError if the kernel
    refuses)."""
    ins = program(natt, sock.family, buckets)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in ins))
    fprog = struct.pack("@HP", len(ins), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
