"""Socket options an IKE daemon needs next to a kernel IPsec data plane.

* Per-socket bypass policies (``IP_XFRM_POLICY`` / ``IPV6_XFRM_POLICY`` with
  ``XFRM_POLICY_ALLOW`` for both directions): IKE datagrams are never matched against the
  SPD, so a policy covering the peers' own addresses (host-to-host, or 0.0.0.0/0 selectors)
  cannot encrypt or drop IKE itself.
* ``UDP_ENCAP_ESPINUDP`` on the NAT-T (4500) socket: the kernel takes ESP-in-UDP packets
  (RFC 3948; first four bytes non-zero) off the socket and decapsulates them with its SAs;
  IKE messages (non-ESP marker, four zero bytes) still reach the socket, and NAT keepalives
  (a single 0xFF byte) are dropped by the kernel. The kernel decapsulates ESP-in-UDP only while
  such a socket is bound to the port.

Usage (after bind())::

    prepare_ike_socket(sock, natt=(port == 4500))
"""
from __future__ import annotations

import socket

from vpn_gw.dataplane.xfrm.netlink import (
    UDP_ENCAP_ESPINUDP,
    XFRM_POLICY_ALLOW,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
    xfrm_userpolicy_info,
)

SOL_UDP = 17
UDP_ENCAP = 100
IP_XFRM_POLICY = 17      # linux/in.h
IPV6_XFRM_POLICY = 35    # linux/in6.h


def bypass_policy(family: int, direction: int) -> bytes:
    """struct xfrm_userpolicy_info: allow, selector of the socket's family, no templates."""
    return xfrm_userpolicy_info.pack({"sel": {"family": family}, "dir": direction,
                                      "action": XFRM_POLICY_ALLOW})


def set_bypass(sock: socket.socket) -> None:
    """Exempt the socket from IPsec policies, in and out."""
    family = sock.family
    level, opt = ((socket.IPPROTO_IPV6, IPV6_XFRM_POLICY) if family == socket.AF_INET6
                  else (socket.IPPROTO_IP, IP_XFRM_POLICY))
    for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT):
        sock.setsockopt(level, opt, bypass_policy(family, direction))


def set_espinudp(sock: socket.socket) -> None:
    """Let the kernel decapsulate ESP-in-UDP arriving on this (NAT-T) socket."""
    sock.setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)


def prepare_ike_socket(sock, natt: bool) -> None:
    """Bypass policies on every IKE socket; ESP-in-UDP decapsulation on the NAT-T one.

    ``sock`` is a socket.socket or anything with a ``.sock`` attribute holding one
    (vpn_gw.transport.udp.IkeSocket)."""
    s = getattr(sock, "sock", sock)
    set_bypass(s)
    if natt:
        set_espinudp(s)


def get_encap(sock) -> int:
    """The socket's UDP_ENCAP type (0 = none), for tests and diagnostics."""
    s = getattr(sock, "sock", sock)
    return s.getsockopt(SOL_UDP, UDP_ENCAP)
