"""Responder admission of new IKE SAs (RFC 7296 2.6), sans-IO: versioned COOKIEs with a rotating
secret, a per-address token bucket for new IKE SAs, and the stateless look at an IKE_SA_INIT
that decides whether it carries a COOKIE (header and first payload only).

The order the manager applies (docs/engine.md "Admission"):

1. a retransmitted IKE_SA_INIT of a half-open SA is answered again (no admission);
2. a COOKIE is required when the gateway holds ``cookie_threshold`` half-open SAs or the source
   address holds ``half_open_per_address``; without a valid one the request is answered with a
   fresh COOKIE and nothing else is decoded or stored (the fast path);
3. past the per-address limit only a request with a valid COOKIE gets in, and only by taking the
   place of the oldest half-open SA from that address that was admitted without a COOKIE (its
   INIT may have been spoofed by someone else, who must not lock the address out); otherwise it
   is dropped. An address never holds more than the limit;
4. the global ``half_open_limit`` (requests without a COOKIE never get that far once
   ``cookie_threshold`` is reached, so the slots between the two are for proven addresses);
5. the per-address rate of new IKE SAs (token bucket);
6. only then the whole message is decoded and an IKE SA created.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import struct
from collections.abc import Callable

from .constants import IKE_HEADER_LEN, NotifyType, PayloadType

COOKIE_FORMAT = 1  # first byte of every COOKIE we send
_COOKIE_LEN = 1 + 4 + 16  # format, secret generation (u32), truncated HMAC-SHA256


def address_key(ip: str) -> str:
    """What the per-address limits count by: an IPv4 address itself, an IPv6 address by its /64
    (one host or LAN gets a /64, so any of its 2^64 addresses is the same "address"; an
    IPv4-mapped IPv6 address counts as the IPv4 address). C calls only: it runs on the fast path."""
    if ":" not in ip:
        return ip
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
    except OSError:
        return ip
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


_V4_MAPPED = bytes(10) + b"\xff\xff"


def first_cookie(data: bytes) -> bytes | None:
    """The COOKIE notification data of an IKE_SA_INIT request, or None, from the first payload
    only (RFC 7296 2.6: a COOKIE MUST be the first payload). Every length is checked; anything
    malformed counts as "no COOKIE" (the full decoder judges the message later, if ever)."""
    if len(data) < IKE_HEADER_LEN + 8 or data[16] != PayloadType.NOTIFY:
        return None
    plen, = struct.unpack_from("!H", data, IKE_HEADER_LEN + 2)
    if plen < 8 or IKE_HEADER_LEN + plen > len(data):
        return None
    spi_size = data[IKE_HEADER_LEN + 5]
    ntype, = struct.unpack_from("!H", data, IKE_HEADER_LEN + 6)
    start = IKE_HEADER_LEN + 8 + spi_size
    if ntype != NotifyType.COOKIE or start > IKE_HEADER_LEN + plen:
        return None
    return data[start:IKE_HEADER_LEN + plen]


class CookieJar:
    """Makes and checks COOKIEs: ``format | generation | HMAC-SHA256(secret, format | generation |
    IPi | SPIi)[:16]``. The secret is replaced every ``lifetime`` seconds (driven by ``advance(now)``);
    COOKIEs of the previous generation stay valid ``grace`` seconds after the change, older ones
    never. Ni is not covered (as in strongSwan): the check needs nothing past the first payload."""

    __slots__ = ("rng", "lifetime", "grace", "generation", "_secret", "_previous", "_previous_until",
                 "_next_rotation", "rotations")

    def __init__(self, rng: Callable[[int], bytes], lifetime: float = 120.0, grace: float = 30.0):
        self.rng = rng
        self.lifetime = lifetime
        self.grace = grace
        self.generation = 0
        self._secret = rng(32)
        self._previous: bytes | None = None
        self._previous_until = 0.0
        self._next_rotation: float | None = None  # set by the first advance()
        self.rotations = 0

    def advance(self, now: float) -> None:
        """Rotate the secret if its lifetime is over (several lifetimes: the previous one is lost)."""
        if self._next_rotation is None:
            self._next_rotation = now + self.lifetime
            return
        if now < self._next_rotation:
            return
        missed = now - self._next_rotation >= self.lifetime
        self._previous = None if missed else self._secret
        self._previous_until = now + self.grace
        self._secret = self.rng(32)
        self.generation = (self.generation + 1) & 0xFFFFFFFF
        self._next_rotation = now + self.lifetime
        self.rotations += 1

    def rotate_now(self, now: float) -> None:
        """Start a new generation at once (the previous one keeps its grace period)."""
        self._next_rotation = now
        self.advance(now)

    @staticmethod
    def _mac(secret: bytes, generation: int, ip: str, spi_i: bytes) -> bytes:
        head = bytes([COOKIE_FORMAT]) + generation.to_bytes(4, "big")
        return head + hmac.new(secret, head + ipaddress.ip_address(ip).packed + spi_i, hashlib.sha256).digest()[:16]

    def make(self, ip: str, spi_i: bytes) -> bytes:
        return self._mac(self._secret, self.generation, ip, spi_i)

    def check(self, cookie: bytes, ip: str, spi_i: bytes, now: float) -> str:
        """"valid", "stale" (a generation we no longer accept) or "forged" (anything else)."""
        if len(cookie) != _COOKIE_LEN or cookie[0] != COOKIE_FORMAT:
            return "forged"
        gen = int.from_bytes(cookie[1:5], "big")
        if gen == self.generation:
            secret = self._secret
        elif gen == (self.generation - 1) & 0xFFFFFFFF and self._previous is not None \
                and now < self._previous_until:
            secret = self._previous
        else:
            return "stale"
        return "valid" if hmac.compare_digest(cookie, self._mac(secret, gen, ip, spi_i)) else "forged"


class AddressRate:
    """A token bucket per source address for new IKE SAs: ``rate`` per second, at most ``burst``
    at once. Memory is bounded: at most ``max_addresses`` buckets; the least recently used one is
    forgotten first (a forgotten bucket is a full one, which is what an idle address has anyway)."""

    __slots__ = ("rate", "burst", "max_addresses", "_buckets")

    def __init__(self, rate: float, burst: float, max_addresses: int = 65536):
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, time), oldest use first

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, ip: str, now: float) -> bool:
        """Spend one token of ``ip``; False (nothing spent) when its bucket is empty. A rate of 0
        means no limit."""
        if self.rate <= 0:
            return True
        tokens, last = self._buckets.pop(ip, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[ip] = (tokens, now)
        while len(self._buckets) > self.max_addresses:
            del self._buckets[next(iter(self._buckets))]
        return ok
