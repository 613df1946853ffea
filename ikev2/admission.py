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

import hmac
import ipaddress
import socket
import struct
from collections.abc import Callable
from hashlib import blake2s

from .constants import IKE_HEADER_LEN, ExchangeType, HeaderFlag, NotifyType, PayloadType

COOKIE_FORMAT = 2  # first byte of every COOKIE we send (1 was HMAC-SHA256, 2 is keyed BLAKE2s)
_COOKIE_LEN = 1 + 4 + 16  # format, secret generation (u32), 16-byte MAC


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


def cookie_reply(spi_i: bytes, cookie: bytes) -> bytes:
    """The whole IKE_SA_INIT response asking for ``cookie`` (RFC 7296 2.6), as bytes: the same
    message the full encoder makes for it, without building any object (the fast path)."""
    if len(cookie) == _COOKIE_LEN:
        return spi_i + _REPLY_MIDDLE + cookie
    return spi_i + _reply_middle(len(cookie)) + cookie


def _reply_middle(cookie_len: int) -> bytes:
    """Everything of a COOKIE response between SPIi and the COOKIE data."""
    return (bytes(8) + struct.pack("!BBBBII", PayloadType.NOTIFY, 0x20, ExchangeType.IKE_SA_INIT,
                                   HeaderFlag.RESPONSE, 0, IKE_HEADER_LEN + 8 + cookie_len)
            + struct.pack("!BBHBBH", 0, 0, 8 + cookie_len, 0, 0, NotifyType.COOKIE))


_IKE_HEADER = struct.Struct("!8s8sBBBBII")


def init_request_spi(data: bytes) -> bytes | None:
    """SPIi of ``data`` if its header is that of a new IKE_SA_INIT request (IKEv2, initiator,
    SPIr and message ID zero, length field = datagram length), else None (the full path judges
    it). Header bytes only."""
    if len(data) < IKE_HEADER_LEN + 4:
        return None
    spi_i: bytes
    spi_i, spi_r, _np, version, exchange, flags, mid, length = _IKE_HEADER.unpack_from(data)
    if (exchange != _IKE_SA_INIT or version >> 4 != 2 or flags & _INITIATOR_RESPONSE != _INITIATOR
            or spi_r != _ZERO8 or mid or length != len(data)):
        return None
    return spi_i


_ZERO8 = bytes(8)
_IKE_SA_INIT = int(ExchangeType.IKE_SA_INIT)
_INITIATOR = int(HeaderFlag.INITIATOR)
_INITIATOR_RESPONSE = int(HeaderFlag.INITIATOR | HeaderFlag.RESPONSE)


class CookieJar:
    """Makes and checks COOKIEs: ``format | generation | BLAKE2s-128(key=secret, format |
    generation | IPi | SPIi)`` (keyed BLAKE2s is a MAC, and 4x cheaper than HMAC-SHA256 here,
    where a spoofed flood makes one per datagram). The secret is replaced every ``lifetime``
    seconds (driven by ``advance(now)``); COOKIEs of the previous generation stay valid ``grace``
    seconds after the change, older ones never. Ni is not covered (as in strongSwan): the check
    needs nothing past the first payload."""

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

    @staticmethod
    def _mac(secret: bytes, generation: int, ip_packed: bytes, spi_i: bytes) -> bytes:
        head = bytes([COOKIE_FORMAT]) + generation.to_bytes(4, "big")
        return head + blake2s(head + ip_packed + spi_i, key=secret, digest_size=16).digest()

    def make(self, ip: str, spi_i: bytes) -> bytes:
        return self._mac(self._secret, self.generation, ipaddress.ip_address(ip).packed, spi_i)

    def make_packed(self, ip_packed: bytes, spi_i: bytes) -> bytes:
        """``make`` for an address already packed (4 or 16 bytes): the batch fast path."""
        return self._mac(self._secret, self.generation, ip_packed, spi_i)

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
        mac = self._mac(secret, gen, ipaddress.ip_address(ip).packed, spi_i)
        return "valid" if hmac.compare_digest(cookie, mac) else "forged"


_REPLY_MIDDLE = _reply_middle(_COOKIE_LEN)


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
