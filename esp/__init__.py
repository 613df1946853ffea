"""Userspace ESP data plane, packet layer: pure, deterministic, no sockets, no clock reads.

See docs/esp.md. Modules: ``cipher`` (payload protection), ``packet`` (ESP format and
processing), ``sa`` (SA state, counters, lifetimes), ``replay`` (anti-replay window),
``udpencap`` (RFC 3948), ``fragment`` (tunnel MTU, IPv4 fragmentation, ICMP too-big), ``ip``.
"""
from .cipher import EncrTransform, EspCipher, EspOverhead, IntegTransform
from .errors import DropReason, EspError
from .fragment import (
    decide,
    fragment_ipv4,
    icmp_frag_needed,
    icmpv6_packet_too_big,
    tunnel_mtu,
)
from .packet import decapsulate, encapsulate, encapsulate_many, esp_open, esp_seal, parse_trailer, peek_spi
from .replay import ReplayWindow
from .sa import Direction, EspSA, Lifetime, SaStats
from .udpencap import Kind, classify, ike_with_marker, keepalive

__all__ = [
    "Direction",
    "DropReason",
    "EncrTransform",
    "EspCipher",
    "EspError",
    "EspOverhead",
    "EspSA",
    "IntegTransform",
    "Kind",
    "Lifetime",
    "ReplayWindow",
    "SaStats",
    "classify",
    "decapsulate",
    "decide",
    "encapsulate",
    "encapsulate_many",
    "esp_open",
    "esp_seal",
    "fragment_ipv4",
    "icmp_frag_needed",
    "icmpv6_packet_too_big",
    "ike_with_marker",
    "keepalive",
    "parse_trailer",
    "peek_spi",
    "tunnel_mtu",
]
