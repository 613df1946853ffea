"""TUN devices (Linux /dev/net/tun, IFF_TUN | IFF_NO_PI): raw IP packets in and out."""
from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


class TunError(OSError):
    pass


class Tun:
    def __init__(self, name: str, mtu: int = 1500):
        if not name or len(name) >= IFNAMSIZ:
            raise TunError(f"bad interface name {name!r} (1-15 characters)")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(f"cannot open /dev/net/tun: {e.strerror}") from None
        try:
            ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            raise TunError(f"cannot create TUN device {name}: {e.strerror}") from None
        self.fd = fd
        self.route_based = False  # one connection per interface (set by the data plane)
        self.name = res[:16].rstrip(b"\0").decode()
        self.mtu = mtu
        from .netlink import ipr_call

        def setup(ipr):
            idx = ipr.link_lookup(ifname=self.name)[0]
            ipr.link("set", index=idx, mtu=mtu, state="up")
            return idx
        try:
            self.index = ipr_call(setup)
        except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError and friends
            os.close(fd)
            raise TunError(f"cannot bring up TUN device {self.name}: {e}") from None

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes | None:
        try:
            return os.read(self.fd, 65535)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        try:
            os.write(self.fd, packet)
        except BlockingIOError:
            pass  # queue full: drop, like a congested link

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the kernel removes the (non-persistent) device
            self.fd = -1
