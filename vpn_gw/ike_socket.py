"""UDP sockets for IKE (500) and NAT-T (4500) that know which local address a datagram arrived
on (IP_PKTINFO / IPV6_RECVPKTINFO) and can choose the source address of what they send."""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
CMSG_SPACE = 256
MAX_DATAGRAM = 65535
SOCKET_BUFFER = 4 * 1024 * 1024  # ESP bursts overflow the 212 KB default receive buffer


class IkeSocket:
    def __init__(self, address: str, port: int):
        self.address = address
        self.port = port
        self.family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
        self._anc: dict[str, list] = {}  # source address -> ancillary data (PKTINFO), cached

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> tuple[bytes, tuple[str, int], tuple[str, int]] | None:
        """One datagram: (data, local (ip, port), remote (ip, port)), or None if none is queued."""
        try:
            data, anc, _flags, src = self.sock.recvmsg(MAX_DATAGRAM, CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                return None  # ICMP errors reported on the socket
            raise
        local_ip = self.address
        for level, ctype, cdata in anc:
            if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
                local_ip = socket.inet_ntop(socket.AF_INET, cdata[8:12])
            elif level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO and len(cdata) >= 16:
                local_ip = socket.inet_ntop(socket.AF_INET6, cdata[:16])
        return data, (local_ip, self.port), (src[0], src[1])

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

    def close(self) -> None:
        self.sock.close()


def route_source(remote_ip: str) -> str:
    """The local address the kernel would use to reach remote_ip (no packet is sent)."""
    fam = socket.AF_INET6 if ipaddress.ip_address(remote_ip).version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((remote_ip, 9))
        return s.getsockname()[0]
