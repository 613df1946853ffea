"""Batched UDP receive and send (Linux recvmmsg(2) / sendmmsg(2) through ctypes) into buffers
allocated once: one system call per batch instead of one per datagram, and no Python objects
but the datagrams themselves. Used for the socket that receives cookie-less IKE_SA_INIT
requests (vpn_gw/transport/steering.py), where a spoofed flood arrives.

Each received datagram comes with its source (sockaddr bytes, handed back unchanged when
replying) and the local address it was sent to (IP_PKTINFO / IPV6_PKTINFO), so a socket bound to
the unspecified address answers from the address that was asked.
"""
from __future__ import annotations

import ctypes
import errno
import socket
import struct

MSG_DONTWAIT = 0x40
NAME_SIZE = 28    # sizeof(struct sockaddr_in6), big enough for sockaddr_in
CTRL_SIZE = 64    # one IP_PKTINFO / IPV6_PKTINFO control message (32 / 40 bytes with header)
_CMSG_HDR = struct.Struct("=QiI")  # cmsg_len (size_t), cmsg_level, cmsg_type
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_HDR_SIZE = ctypes.sizeof(_Mmsghdr)
_LEN_OFFSET = _Mmsghdr.msg_len.offset
_FLAGS_OFFSET = _Msghdr.msg_flags.offset
_NAMELEN_OFFSET = _Msghdr.msg_namelen.offset
_CTRLLEN_OFFSET = _Msghdr.msg_controllen.offset
_IOV_SIZE = ctypes.sizeof(_Iovec)
_IOV_LEN_OFFSET = _Iovec.iov_len.offset
_U32, _U64 = struct.Struct("=I"), struct.Struct("=Q")
MSG_TRUNC = 0x20
_libc: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # the C library the interpreter already has loaded (dlopen(NULL)); ctypes.util.find_library
        # ran `ldconfig -p` in a subprocess on every start (issue 14, restart recovery)
        libc = ctypes.CDLL(None, use_errno=True)
        for fn in (libc.recvmmsg, libc.sendmmsg):
            fn.restype = ctypes.c_int
        libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        _libc = libc
    return _libc


def available() -> bool:
    try:
        _load()
    except (OSError, AttributeError):
        return False
    return True


class _Region:
    """``count`` headers with a data, name and control slot each, in one ctypes-owned buffer."""

    def __init__(self, count: int, size: int):
        self.count, self.size = count, size
        self.hdrs = (_Mmsghdr * count)()
        self.iovs = (_Iovec * count)()
        self.data = ctypes.create_string_buffer(count * size)
        self.names = ctypes.create_string_buffer(count * NAME_SIZE)
        self.ctrls = ctypes.create_string_buffer(count * CTRL_SIZE)
        base_d, base_n, base_c = (ctypes.addressof(b) for b in (self.data, self.names, self.ctrls))
        for i in range(count):
            self.iovs[i].iov_base = base_d + i * size
            self.iovs[i].iov_len = size
            h = self.hdrs[i].msg_hdr
            h.msg_name = base_n + i * NAME_SIZE
            h.msg_namelen = NAME_SIZE
            h.msg_iov = ctypes.addressof(self.iovs[i])
            h.msg_iovlen = 1
            h.msg_control = base_c + i * CTRL_SIZE
            h.msg_controllen = CTRL_SIZE
        self.pristine = bytes(self.hdrs)  # restored before each recvmmsg (the kernel writes lengths)


class RecvBatch:
    """Up to ``count`` datagrams of at most ``size`` bytes per recvmmsg call."""

    def __init__(self, count: int = 64, size: int = 2048):
        self.libc = _load()
        self.r = _Region(count, size)
        self._data = memoryview(self.r.data).cast("B")
        self._names = memoryview(self.r.names).cast("B")
        self._ctrls = memoryview(self.r.ctrls).cast("B")
        self._hdr_view = memoryview(self.r.hdrs).cast("B")
        self._lens: list[int] = []

    def recv(self, fd: int) -> int:
        """Datagrams now queued on ``fd`` (non-blocking), at most ``count``; 0 if none."""
        r = self.r
        ctypes.memmove(r.hdrs, r.pristine, len(r.pristine))
        n = self.libc.recvmmsg(fd, r.hdrs, r.count, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                return 0
            raise OSError(err, "recvmmsg: " + errno.errorcode.get(err, str(err)))
        hv = self._hdr_view
        lens = []
        for i in range(n):
            o = i * _HDR_SIZE
            length = int.from_bytes(hv[o + _LEN_OFFSET:o + _LEN_OFFSET + 4], "little")
            if int.from_bytes(hv[o + _FLAGS_OFFSET:o + _FLAGS_OFFSET + 4], "little") & MSG_TRUNC:
                length = 0  # longer than ``size``: handed on empty (a malformed datagram)
            lens.append(length)
        self._lens = lens
        return n

    def datagram(self, i: int) -> bytes:
        """The i-th datagram of the last recv() (empty if it was longer than ``size``)."""
        o = i * self.r.size
        return self._data[o:o + self._lens[i]].tobytes()

    def name(self, i: int) -> bytes:
        """The source sockaddr of the i-th datagram, raw (give it back to SendBatch.add)."""
        o = i * NAME_SIZE
        return self._names[o:o + NAME_SIZE].tobytes()

    def local_address(self, i: int) -> bytes | None:
        """The packed local address the i-th datagram was sent to (4 or 16 bytes), or None."""
        o = i * CTRL_SIZE
        c = self._ctrls
        clen, level, ctype = _CMSG_HDR.unpack_from(c, o)
        if level == socket.IPPROTO_IP and ctype == _IP_PKTINFO and clen >= 28:
            return c[o + 24:o + 28].tobytes()   # in_pktinfo.ipi_addr
        if level == socket.IPPROTO_IPV6 and ctype == _IPV6_PKTINFO and clen >= 36:
            return c[o + 16:o + 32].tobytes()   # in6_pktinfo.ipi6_addr
        return None


def source(name: bytes) -> tuple[str, int, bytes]:
    """(ip, port, packed ip) of a raw sockaddr_in / sockaddr_in6."""
    if name[0] == _AF_INET6_LOW and name[1] == 0:
        packed = name[8:24]
        return _ntop(_AF_INET6, packed), name[2] << 8 | name[3], packed
    packed = name[4:8]
    return _ntop(_AF_INET, packed), name[2] << 8 | name[3], packed


_ntop = socket.inet_ntop
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_AF_INET6_LOW = socket.AF_INET6 & 0xFF  # sa_family is host-order (little-endian here)


def pktinfo(local: bytes) -> bytes:
    """A control message choosing ``local`` (packed, 4 or 16 bytes) as the source address."""
    if len(local) == 4:
        return _CMSG_HDR.pack(28, socket.IPPROTO_IP, _IP_PKTINFO) + struct.pack("=I4s4s", 0, local, bytes(4))
    return _CMSG_HDR.pack(36, socket.IPPROTO_IPV6, _IPV6_PKTINFO) + struct.pack("=16sI", local, 0)


class SendBatch:
    """Collects up to ``count`` datagrams (each with a raw destination sockaddr and an optional
    control message) and sends them with one sendmmsg call."""

    def __init__(self, count: int = 64, size: int = 2048):
        self.libc = _load()
        self.r = _Region(count, size)
        self._count, self._size = count, size
        self._data = memoryview(self.r.data).cast("B")
        self._names = memoryview(self.r.names).cast("B")
        self._ctrls = memoryview(self.r.ctrls).cast("B")
        self._hdrs = memoryview(self.r.hdrs).cast("B")
        self._iovs = memoryview(self.r.iovs).cast("B")
        self.n = 0
        self.sent = 0
        self.failed = 0

    def add(self, data: bytes, name: bytes, control: bytes = b"") -> None:
        """Queue one datagram (dropped if the batch is full or it does not fit its slot)."""
        i = self.n
        size = self._size
        if i >= self._count or len(data) > size or len(control) > CTRL_SIZE:
            self.failed += 1
            return
        o = i * size
        self._data[o:o + len(data)] = data
        _U64.pack_into(self._iovs, i * _IOV_SIZE + _IOV_LEN_OFFSET, len(data))
        o = i * NAME_SIZE
        self._names[o:o + len(name)] = name
        h = i * _HDR_SIZE
        _U32.pack_into(self._hdrs, h + _NAMELEN_OFFSET, len(name))
        if control:
            o = i * CTRL_SIZE
            self._ctrls[o:o + len(control)] = control
        _U64.pack_into(self._hdrs, h + _CTRLLEN_OFFSET, len(control))
        self.n = i + 1

    def flush(self, fd: int) -> None:
        """Send what was queued, best effort (a datagram the kernel refuses is skipped)."""
        start = 0
        while start < self.n:
            k = self.libc.sendmmsg(fd, ctypes.addressof(self.r.hdrs) + start * _HDR_SIZE, self.n - start, 0)
            if k <= 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                if err in (errno.EAGAIN, errno.ENOBUFS):  # the send buffer is full: drop the rest
                    self.failed += self.n - start
                    break
                self.failed += 1   # this one cannot go (unreachable, buffer full): skip it
                start += 1
                continue
            self.sent += k
            start += k
        self.n = 0
