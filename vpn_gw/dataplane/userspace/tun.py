"""TUN devices (Linux /dev/net/tun, IFF_TUN | IFF_NO_PI): raw IP packets in and out.

With ``vnet_hdr`` (IFF_VNET_HDR) every packet carries a 10-byte virtio-net header on the
device: ``read`` and ``write`` hide it, ``write_many`` uses it to hand the kernel coalesced TCP
segments (vpn_gw.dataplane.userspace.gro). With ``tso`` too, the device offers the kernel
checksum and TCP segmentation offload (TUNSETOFFLOAD: TSO4 and TSO6, else TSO4 alone, else
none): one read may then be a TCP super-packet of up to 64 KiB, which ``unpack`` cuts into its
wire segments (vpn_gw.dataplane.userspace.tso)."""
from __future__ import annotations

import fcntl
import os
import socket
import struct

from vpn_gw.dataplane.userspace.gro import (
    NO_OFFLOAD,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
    coalesce_counted,
    complete_checksum,
)
from vpn_gw.dataplane.userspace.tso import segment

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
# what to offer, best first: each refused set falls back to the next
OFFLOAD_CHOICES = (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, TUN_F_CSUM | TUN_F_TSO4)
IFNAMSIZ = 16


class TunError(OSError):
    pass


class Tun:
    def __init__(self, name: str, mtu: int = 1500, *, vnet_hdr: bool = False, tso: bool = False):
        if not name or len(name) >= IFNAMSIZ:
            raise TunError(f"bad interface name {name!r} (1-15 characters)")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(f"cannot open /dev/net/tun: {e.strerror}") from None
        res = None
        for flags in ((IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,) if vnet_hdr else ()) + (IFF_TUN | IFF_NO_PI,):
            try:
                res = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
                break
            except OSError as e:
                err = e
        if res is None:
            os.close(fd)
            raise TunError(f"cannot create TUN device {name}: {err.strerror}") from None
        self.vnet_hdr = bool(flags & IFF_VNET_HDR)
        self.offload_flags = 0  # TUN_F_* the kernel accepted
        if self.vnet_hdr and tso:
            for offer in OFFLOAD_CHOICES:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, offer)
                    self.offload_flags = offer
                    break
                except OSError:
                    continue
        self.coalescing = self.vnet_hdr  # write_many may hand the kernel coalesced TCP segments
        self.coalescing_udp = self.vnet_hdr  # ... and coalesced UDP datagrams (GSO UDP_L4)
        self.fd = fd
        self.route_based = False  # one connection per interface (set by the data plane)
        self.name = res[:16].rstrip(b"\0").decode()
        self.mtu = mtu
        from vpn_gw.dataplane.iproute import ipr_call

        def setup(ipr):
            idx = socket.if_nametoindex(self.name)
            ipr.link_set(idx, mtu=mtu, up=True)
            return idx
        try:
            self.index = ipr_call(setup)
        except Exception as e:  # noqa: BLE001 - RtnlError (the kernel's answer), OSError
            os.close(fd)
            raise TunError(f"cannot bring up TUN device {self.name}: {e}") from None

    @classmethod
    def adopt(cls, fd: int, name: str, *, vnet_hdr: bool, offload_flags: int, route_based: bool,
              mtu: int = 0, index: int = 0) -> Tun:
        """A device the daemon created, in the outbound worker process (its descriptor came over
        a socket: the same open file, so the flags set at creation hold)."""
        tun = cls.__new__(cls)
        tun.fd, tun.name, tun.mtu, tun.index = fd, name, mtu, index
        tun.vnet_hdr, tun.offload_flags, tun.route_based = vnet_hdr, offload_flags, route_based
        tun.coalescing = tun.coalescing_udp = vnet_hdr
        return tun

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes | None:
        try:
            pkt = os.read(self.fd, 65535 + VNET_HDR_LEN)
        except BlockingIOError:
            return None
        return self.strip(pkt) if self.vnet_hdr else pkt

    @staticmethod
    def unpack(pkt: bytes) -> list[bytes] | None:
        """The IP packets of a read from a vnet_hdr device that is a TSO super-packet (its GSO
        type byte set), cut into wire segments; None if malformed."""
        return segment(pkt[:VNET_HDR_LEN], pkt[VNET_HDR_LEN:])

    @staticmethod
    def strip(pkt: bytes) -> bytes | None:
        """The IP packet of what a vnet_hdr device gave us (None: unusable, see gro)."""
        if pkt[:2] == b"\0\0":  # no checksum left to us, no GSO: the usual case
            return pkt[VNET_HDR_LEN:]
        return complete_checksum(pkt[:VNET_HDR_LEN], pkt[VNET_HDR_LEN:])

    def write(self, packet: bytes) -> None:
        try:
            if self.vnet_hdr:
                os.writev(self.fd, (NO_OFFLOAD, packet))
            else:
                os.write(self.fd, packet)
        except BlockingIOError:
            pass  # queue full: drop, like a congested link

    def write_many(self, packets: list[bytes]) -> None:
        """Write packets in order; with vnet_hdr, runs of TCP segments (and UDP datagrams) of
        one flow as one. If the kernel refuses a coalesced packet, its segments are written one
        by one, and this device is not offered coalesced packets of that kind again."""
        if not self.vnet_hdr or not self.coalescing:
            for p in packets:
                self.write(p)
            return
        writev, fd = os.writev, self.fd
        done = 0
        for bufs, n in coalesce_counted(packets, udp=self.coalescing_udp):
            try:
                writev(fd, bufs)
            except BlockingIOError:
                pass  # queue full: drop, like a congested link
            except OSError:
                if n == 1:
                    raise
                if bufs[0][1] == VIRTIO_NET_HDR_GSO_UDP_L4:
                    self.coalescing_udp = False
                else:
                    self.coalescing = False
                for p in packets[done:done + n]:
                    self.write(p)
            done += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the kernel removes the (non-persistent) device
            self.fd = -1
