"""UDP sockets for IKE (500) and NAT-T (4500) that know which local address a datagram arrived
on (IP_PKTINFO / IPV6_RECVPKTINFO) and can choose the source address of what they send."""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import sys
from collections.abc import Iterable

from vpn_gw.accel import gso_ends
from vpn_gw.transport.mmsg import source

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
CMSG_SPACE = 256
MAX_DATAGRAM = 65535
SOCKET_BUFFER = 4 * 1024 * 1024  # ESP bursts overflow the 212 KB default receive buffer
SOL_UDP = 17
UDP_SEGMENT = 103  # UDP GSO (Linux 4.18): one sendmsg, several equal-sized datagrams
UDP_GRO = 104  # UDP GRO (Linux 5.0): one recvmsg, several datagrams of the cmsg's size
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels (newer ones allow 128)
GSO_MAX_BYTES = 65000  # UDP payload of one GSO send (below 65535 - IP and UDP headers)
_GSO_FALLBACK_ERRNOS = (errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
# datagrams per recvmmsg (vpn_gw.accel.recv_runs): one call per wake-up (RECV_BATCH); its slots
# take 4 MiB per NAT-T socket
BURST = 64
BURST_SLOT = MAX_DATAGRAM + 1  # bytes per datagram in the burst buffer (a UDP GRO message fits)
_ADDRESS_CACHE = 4096  # raw addresses -> (ip, port) kept per socket, then started afresh


def gso_ends_py(datagrams: list[bytes], max_segments: int, max_bytes: int) -> list[int]:
    """Where ``send_many`` cuts ``datagrams`` into UDP GSO sends: the end index of each run of
    datagrams whose sizes equal the first's, except a last shorter one, at most
    ``max_segments`` of them and ``max_bytes`` in all (the kernel's rule for one GSO send). The
    reference of the compiled ``vpn_gw.accel.gso_ends``."""
    ends = []
    n = len(datagrams)
    i = 0
    while i < n:
        size = total = len(datagrams[i])
        j = i + 1
        limit = min(n, i + max_segments)
        while j < limit:
            m = len(datagrams[j])
            if m > size or total + m > max_bytes:
                break
            total += m
            j += 1
            if m < size:
                break  # a shorter datagram ends the run
        ends.append(j)
        i = j
    return ends


class IkeSocket:
    def __init__(self, address: str, port: int, reuseport: bool = False, *, adopt: socket.socket | None = None):
        """A new socket bound to (address, port); or, with ``adopt``, one already bound (the
        daemon's NAT-T socket in the outbound worker process, which only sends on it)."""
        self.address = address
        self.port = port
        self.family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        if adopt is not None:
            self.sock = adopt
            self._init_state()
            return
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:  # a steering group (vpn_gw/transport/steering.py)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if self.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                # as root, go past net.core.rmem_max/wmem_max
                s.setsockopt(socket.SOL_SOCKET, {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}[opt], SOCKET_BUFFER)
            except OSError:
                pass
        s.setblocking(False)
        s.bind((address, port))
        self.sock = s
        self._init_state()

    def _init_state(self) -> None:
        self._anc: dict[str | None, list] = {}  # source address -> ancillary data (PKTINFO), cached
        self._burst: bytearray | None = None  # recv_runs's buffer, made on first use
        self.remotes: dict[bytes, tuple[str, int]] = {}  # raw source sockaddr -> (ip, port)
        self.locals: dict[bytes, tuple[str, int]] = {}  # raw PKTINFO address -> (ip, our port)
        self.gro = False  # UDP_GRO enabled: recv_segments() may return several datagrams
        self.gso = True  # try UDP_SEGMENT in send_many(); off after the kernel refused it

    def enable_gro(self) -> bool:
        """Ask the kernel for coalesced datagrams (UDP_GRO); False if it cannot."""
        try:
            self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            return False
        self.gro = True
        return True

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> tuple[bytes, tuple[str, int], tuple[str, int]] | None:
        """One datagram: (data, local (ip, port), remote (ip, port)), or None if none is queued.
        Not with GRO enabled (use recv_segments)."""
        got = self.recv_segments()
        if got is None:
            return None
        data, _seg, local, remote = got
        return data, local, remote

    def recv_segments(self) -> tuple[bytes, int, tuple[str, int], tuple[str, int]] | None:
        """(data, segment size, local, remote), or None if nothing is queued. With GRO enabled
        ``data`` may hold several datagrams from the same source: each ``segment size`` bytes
        long, the last one possibly shorter; segment size 0 means one datagram."""
        try:
            data, anc, _flags, src = self.sock.recvmsg(MAX_DATAGRAM, CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                return None  # ICMP errors reported on the socket
            raise
        key = b""  # no PKTINFO: our bound address
        seg = 0
        for level, ctype, cdata in anc:
            if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
                key = cdata[8:12]
            elif level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO and len(cdata) >= 16:
                key = cdata[:16]
            elif level == SOL_UDP and ctype == UDP_GRO and len(cdata) >= 2:
                seg = int.from_bytes(cdata[:4] if len(cdata) >= 4 else cdata[:2], sys.byteorder)
        if seg >= len(data):
            seg = 0
        local = self.locals.get(key)
        if local is None:
            local = self.local_of(key)
        return data, seg, local, (src[0], src[1])

    def burst_buffer(self) -> bytearray:
        """The buffer vpn_gw.accel.recv_runs receives into: BURST slots of BURST_SLOT bytes."""
        if self._burst is None:
            self._burst = bytearray(BURST * BURST_SLOT)
        return self._burst

    def remote_of(self, name: bytes) -> tuple[str, int]:
        """(ip, port) of a source sockaddr as recvmmsg wrote it (what recvmsg would have
        returned; an IPv6 scope as "%interface"), cached in ``remotes``."""
        if len(name) >= 8:
            ip, port, packed = source(name)
            scope = int.from_bytes(name[24:28], sys.byteorder) if len(packed) == 16 and len(name) >= 28 else 0
            if scope:
                ip = socket.getnameinfo((ip, port, 0, scope), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
        else:
            ip, port = "", 0  # no address (not for a UDP socket): nothing will match it
        if len(self.remotes) >= _ADDRESS_CACHE:
            self.remotes.clear()
        self.remotes[name] = remote = (ip, port)
        return remote

    def local_of(self, packed: bytes) -> tuple[str, int]:
        """(ip, our port) for a datagram's PKTINFO address (b"": none, our bound address), as
        recv_segments and recv_burst report it, cached in ``locals``."""
        if len(packed) == 4:
            ip = socket.inet_ntop(socket.AF_INET, packed)
        elif len(packed) == 16:
            ip = socket.inet_ntop(socket.AF_INET6, packed)
        else:
            ip = self.address
        if len(self.locals) >= _ADDRESS_CACHE:
            self.locals.clear()
        self.locals[packed] = local = (ip, self.port)
        return local

    def _ancillary(self, local_ip: str | None) -> list:
        anc = self._anc.get(local_ip)
        if anc is None:
            anc = []
            if local_ip and not ipaddress.ip_address(local_ip).is_unspecified:
                if self.family == socket.AF_INET:
                    anc = [(socket.IPPROTO_IP, IP_PKTINFO,
                            struct.pack("=I4s4s", 0, socket.inet_pton(socket.AF_INET, local_ip), bytes(4)))]
                else:
                    anc = [(socket.IPPROTO_IPV6, IPV6_PKTINFO,
                            struct.pack("=16sI", socket.inet_pton(socket.AF_INET6, local_ip), 0))]
            if len(self._anc) > 1024:
                self._anc.clear()
            self._anc[local_ip] = anc
        return anc

    def send(self, data: bytes, local_ip: str | None, remote: tuple[str, int]) -> None:
        self.sock.sendmsg([data], self._ancillary(local_ip), 0, remote)

    def send_many(self, datagrams: list[bytes], local_ip: str | None, remote: tuple[str, int]) -> None:
        """Send datagrams in order, best effort (errors drop what they concern, like a congested
        link). Runs of equal-sized datagrams (the last may be shorter) go out as one UDP GSO
        sendmsg (``gso_ends`` cuts them); if the kernel refuses GSO they are sent one by one
        (and GSO is not tried again on this socket if it is unsupported)."""
        anc = self._ancillary(local_ip)
        sendmsg = self.sock.sendmsg
        ends: Iterable[int]
        if self.gso:
            ends = (gso_ends or gso_ends_py)(datagrams, GSO_MAX_SEGMENTS, GSO_MAX_BYTES)
        else:
            ends = range(1, len(datagrams) + 1)
        i = 0
        for j in ends:
            try:
                if j - i == 1:
                    sendmsg([datagrams[i]], anc, 0, remote)
                else:
                    size = len(datagrams[i])
                    sendmsg(datagrams[i:j], anc + [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))],
                            0, remote)
            except OSError as e:
                if j - i > 1 and e.errno in _GSO_FALLBACK_ERRNOS:
                    if e.errno != errno.EINVAL:  # EINVAL: a datagram too big for the path
                        self.gso = False
                    for d in datagrams[i:j]:
                        try:
                            sendmsg([d], anc, 0, remote)
                        except OSError:
                            pass
            i = j

    def close(self) -> None:
        self.sock.close()


def route_source(remote_ip: str) -> str:
    """The local address the kernel would use to reach remote_ip (no packet is sent)."""
    fam = socket.AF_INET6 if ipaddress.ip_address(remote_ip).version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((remote_ip, 9))
        return s.getsockname()[0]
