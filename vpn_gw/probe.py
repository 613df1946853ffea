"""Firewall-traversal echo probe: does UDP 500 / 4500 reach the gateway? (docs/probe.md)

A probe is shaped like an IKEv2 message (RFC 7296 3.1 header, one payload) but uses a
private-use exchange type and a private-use payload type (both ``PROBE_TYPE`` = 245; RFC 7296
3.1 reserves 240-255 for private use) and has the Response flag set in both directions, so:

* our IKE engine never sees one (the daemon diverts probes before ``IkeManager.receive``; even
  if it did, the exchange type is not IKE_SA_INIT and the SPI is unknown: dropped);
* a real IKE implementation ignores it (an unknown exchange type, and a "response" outside any
  IKE SA, to which RFC 7296 2.21.4 says a node MUST NOT respond);
* no IKE message is ever taken for a probe (no IKE exchange uses type 245).

Wire format (all integers big-endian; on UDP 4500 preceded by the 4-byte non-ESP marker)::

    0..7    IKE SA Initiator's SPI   "VGWPROBE" (MAGIC)
    8..15   IKE SA Responder's SPI   zero
    16      Next Payload             245 (PROBE_TYPE)
    17      Version                  0x20 (2.0)
    18      Exchange Type            245 (PROBE_TYPE)
    19      Flags                    0x20 (Response), in requests and replies alike
    20..23  Message ID               0
    24..27  Length                   whole message (without the non-ESP marker)
    28      Next Payload             0
    29      Critical + RESERVED      0
    30..31  Payload Length           32 + padding
    32      Probe version            1
    33      Kind                     1 request, 2 reply
    34..35  RESERVED                 0
    36..51  Token                    16 random bytes chosen by the client, echoed
    52..59  Timestamp                uint64, the client's clock in microseconds, echoed
    60..    Padding                  zero bytes; requests only (0..MAX_PADDING)

A reply is always exactly ``MIN_LEN`` (60) bytes and a request at least that, so the gateway
never sends more than it received. Parsing is strict: every fixed field must hold its value,
lengths must agree with the datagram, padding must be zero, a reply carries none.

``ProbeResponder`` answers requests without keeping any per-probe state, rate-limited per source
(per address, per /64 for IPv6) and globally with token buckets; time comes from the caller.
``probe()`` is the client used by ``vpn-gw probe``.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ikev2.constants import IKE_HEADER_LEN, NON_ESP_MARKER

__all__ = [
    "PROBE_TYPE", "MAGIC", "MIN_LEN", "MAX_PADDING", "MAX_LEN", "KIND_REQUEST", "KIND_REPLY",
    "ProbeError", "Probe", "build_request", "build_reply", "parse", "parse_request", "parse_reply",
    "is_probe", "TokenBucket", "ProbeResponder", "PortResult", "probe", "verdict", "EXIT_OK",
    "EXIT_BLOCKED", "EXIT_PARTIAL", "EXIT_NO_GATEWAY", "DEFAULT_PORTS", "DEFAULT_TIMEOUT",
]

PROBE_TYPE = 245          # private-use exchange type (240-255) and payload type (128-255)
MAGIC = b"VGWPROBE"       # the IKE SA Initiator's SPI of every probe
PROBE_VERSION = 1
KIND_REQUEST = 1
KIND_REPLY = 2
FLAG_RESPONSE = 0x20
IKE_VERSION = 0x20
PAYLOAD_FIXED = 32        # generic payload header (4) + version, kind, reserved (4) + token + timestamp
TOKEN_LEN = 16
MIN_LEN = IKE_HEADER_LEN + PAYLOAD_FIXED   # 60: every reply, the smallest request
MAX_PADDING = 1200
MAX_LEN = MIN_LEN + MAX_PADDING

_HDR = struct.Struct("!8s8sBBBBII")
_PAY = struct.Struct("!BBHBBH16sQ")
_ZERO_SPI = bytes(8)

# Defaults of the gateway's responder: a probing client sends a few datagrams per port, so a
# source gets a burst of 20 then 5 per second; all sources together 200 per second, burst 400
# (at 60-byte replies, at most ~12 kB/s of answers whatever the flood).
DEFAULT_RATE_PER_SOURCE = 5.0
DEFAULT_BURST = 20
DEFAULT_GLOBAL_RATE = 200.0
DEFAULT_GLOBAL_BURST = 400
DEFAULT_MAX_SOURCES = 4096

DEFAULT_PORTS = (500, 4500)
NATT_PORTS = (4500,)
DEFAULT_TIMEOUT = 3.0

EXIT_OK = 0
EXIT_BLOCKED = 3
EXIT_PARTIAL = 4
EXIT_NO_GATEWAY = 5  # every port answered with ICMP port unreachable


# --------------------------------------------------------------------------------- codec


class ProbeError(ValueError):
    """A datagram that is not a well-formed probe (message says what is wrong)."""


@dataclass(frozen=True)
class Probe:
    kind: int
    token: bytes
    timestamp: int
    padding: int = 0

    @property
    def is_request(self) -> bool:
        return self.kind == KIND_REQUEST


def _build(kind: int, token: bytes, timestamp: int, padding: int) -> bytes:
    if len(token) != TOKEN_LEN:
        raise ValueError(f"the probe token is {TOKEN_LEN} bytes")
    if not 0 <= timestamp < 1 << 64:
        raise ValueError("the probe timestamp is an unsigned 64-bit integer")
    if not 0 <= padding <= MAX_PADDING:
        raise ValueError(f"probe padding must be 0..{MAX_PADDING} bytes")
    total = MIN_LEN + padding
    return (_HDR.pack(MAGIC, _ZERO_SPI, PROBE_TYPE, IKE_VERSION, PROBE_TYPE, FLAG_RESPONSE, 0, total)
            + _PAY.pack(0, 0, PAYLOAD_FIXED + padding, PROBE_VERSION, kind, 0, token, timestamp)
            + bytes(padding))


def build_request(token: bytes, timestamp: int, padding: int = 0) -> bytes:
    """A probe request (without the non-ESP marker); ``padding`` zero bytes make it bigger."""
    return _build(KIND_REQUEST, token, timestamp, padding)


def build_reply(token: bytes, timestamp: int) -> bytes:
    """The reply to a request: its token and timestamp, no padding (always MIN_LEN bytes)."""
    return _build(KIND_REPLY, token, timestamp, 0)


def is_probe(data: bytes) -> bool:
    """Cheap header check: a datagram (after the non-ESP marker) with the probe exchange type.

    True means "claims to be a probe": it is the responder's to parse (strictly) and answer or
    drop; it never goes to the IKE engine (no IKE exchange has this type). Anything shorter than
    an IKE header is not a probe.
    """
    return len(data) >= IKE_HEADER_LEN and data[18] == PROBE_TYPE


def parse(data: bytes) -> Probe:
    """Decode a probe (request or reply) strictly; raises ProbeError."""
    n = len(data)
    if n < MIN_LEN:
        raise ProbeError(f"truncated: {n} bytes, a probe has at least {MIN_LEN}")
    if n > MAX_LEN:
        raise ProbeError(f"too long: {n} bytes, a probe has at most {MAX_LEN}")
    spi_i, spi_r, nxt, ver, exch, flags, mid, length = _HDR.unpack_from(data)
    if exch != PROBE_TYPE:
        raise ProbeError(f"exchange type {exch} is not the probe's ({PROBE_TYPE})")
    if spi_i != MAGIC or spi_r != _ZERO_SPI:
        raise ProbeError("bad SPIs")
    if ver != IKE_VERSION:
        raise ProbeError(f"bad version 0x{ver:02x}")
    if flags != FLAG_RESPONSE or mid != 0:
        raise ProbeError(f"bad flags 0x{flags:02x} or message ID {mid}")
    if nxt != PROBE_TYPE:
        raise ProbeError(f"next payload {nxt} is not the probe payload ({PROBE_TYPE})")
    if length != n:
        kind = "truncated" if length > n else "trailing bytes after"
        raise ProbeError(f"{kind} probe: header length {length}, datagram {n} bytes")
    pnxt, pflags, plen, pver, kind, reserved, token, ts = _PAY.unpack_from(data, IKE_HEADER_LEN)
    if pnxt != 0 or pflags != 0 or reserved != 0:
        raise ProbeError("non-zero next payload, flags or reserved field in the probe payload")
    if plen != n - IKE_HEADER_LEN:
        raise ProbeError(f"payload length {plen} does not match the {n - IKE_HEADER_LEN} bytes left")
    if pver != PROBE_VERSION:
        raise ProbeError(f"unknown probe version {pver}")
    if kind not in (KIND_REQUEST, KIND_REPLY):
        raise ProbeError(f"unknown probe kind {kind}")
    padding = n - MIN_LEN
    if padding:
        if kind == KIND_REPLY:
            raise ProbeError("a probe reply carries no padding")
        if data[MIN_LEN:] != bytes(padding):
            raise ProbeError("non-zero padding")
    return Probe(kind, bytes(token), ts, padding)


def parse_request(data: bytes) -> Probe:
    p = parse(data)
    if p.kind != KIND_REQUEST:
        raise ProbeError("not a probe request")
    return p


def parse_reply(data: bytes) -> Probe:
    p = parse(data)
    if p.kind != KIND_REPLY:
        raise ProbeError("not a probe reply")
    return p


# --------------------------------------------------------------------------------- responder


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; starts full. Time comes from the caller."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def refill(self, now: float) -> float:
        if now > self.last:  # a clock that goes backwards adds nothing
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        return self.tokens

    def take(self, now: float) -> bool:
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ProbeResponder:
    """Answers probe requests: no state beyond the rate limiters, a reply never bigger than the
    request, silence for anything malformed, over the limit, or not a request.

    ``handle(data, remote_ip, now)`` takes a datagram without the non-ESP marker and returns the
    reply (to send back as is, plus the marker on 4500) or None. Per-source buckets are keyed
    by address (IPv6: the /64); at most ``max_sources`` are kept, least recently used dropped
    first (the global bucket bounds what a spoofer of many addresses gets).
    """

    def __init__(self, rate_per_source: float = DEFAULT_RATE_PER_SOURCE, burst: int = DEFAULT_BURST,
                 global_rate: float = DEFAULT_GLOBAL_RATE, clock: Callable[[], float] = time.monotonic,
                 *, global_burst: int | None = None, max_sources: int = DEFAULT_MAX_SOURCES):
        if rate_per_source < 0 or global_rate < 0 or burst < 1 or max_sources < 1:
            raise ValueError("rates must be >= 0, burst and max_sources >= 1")
        self.rate_per_source = rate_per_source
        self.burst = burst
        self.global_rate = global_rate
        self.global_burst = global_burst if global_burst is not None else max(burst, int(2 * global_rate))
        if self.global_burst < 1:
            raise ValueError("global_burst must be >= 1")
        self.clock = clock
        self.max_sources = max_sources
        self._global = TokenBucket(global_rate, self.global_burst, clock())
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self.received = 0        # datagrams handed to handle()
        self.answered = 0
        self.malformed = 0       # not a well-formed probe request (replies included)
        self.limited_source = 0  # dropped by the per-source limit
        self.limited_global = 0  # dropped by the global limit
        self.bytes_in = 0
        self.bytes_out = 0

    @staticmethod
    def _source_key(ip: str) -> str:
        if ":" in ip:
            try:
                return str(ipaddress.IPv6Network(f"{ip.split('%', 1)[0]}/64", strict=False))
            except ValueError:
                return ip
        return ip

    def _source_bucket(self, key: str, now: float) -> TokenBucket:
        b = self._sources.get(key)
        if b is None:
            while len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
            b = self._sources[key] = TokenBucket(self.rate_per_source, self.burst, now)
        else:
            self._sources.move_to_end(key)
        return b

    def handle(self, data: bytes, remote_ip: str, now: float | None = None) -> bytes | None:
        now = self.clock() if now is None else now
        self.received += 1
        self.bytes_in += len(data)
        try:
            req = parse_request(data)
        except ProbeError:
            self.malformed += 1
            return None
        src = self._source_bucket(self._source_key(remote_ip), now)
        if src.refill(now) < 1.0:
            self.limited_source += 1
            return None
        if not self._global.take(now):
            self.limited_global += 1
            return None
        src.tokens -= 1.0
        reply = build_reply(req.token, req.timestamp)
        assert len(reply) <= len(data)  # by construction: replies are MIN_LEN, requests >= MIN_LEN
        self.answered += 1
        self.bytes_out += len(reply)
        return reply

    def counters(self) -> dict[str, int]:
        return {"received": self.received, "answered": self.answered, "malformed": self.malformed,
                "rate_limited_source": self.limited_source, "rate_limited_global": self.limited_global,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "sources": len(self._sources)}


# --------------------------------------------------------------------------------- client


@dataclass
class PortResult:
    port: int
    reachable: bool
    rtt: float | None = None          # seconds, from the first valid reply
    sent: int = 0                     # requests sent (first + retransmissions)
    address: str = ""
    icmp_error: str | None = None     # e.g. an ICMP port unreachable seen while waiting

    @property
    def refused(self) -> bool:
        """An ICMP port unreachable came back: nothing listens there (or a firewall rejects)."""
        return not self.reachable and self.icmp_error == "ICMP port unreachable"

    @property
    def verdict(self) -> str:
        if self.reachable:
            return "UDP ok"
        if self.refused:
            return "nothing listens on this port"
        return "UDP blocked, or no vpn-gw at this address"

    def to_dict(self) -> dict:
        return {"port": self.port, "reachable": self.reachable,
                "rtt_ms": round(self.rtt * 1000, 3) if self.rtt is not None else None,
                "sent": self.sent, "verdict": self.verdict, "icmp_error": self.icmp_error}


def verdict(results: Iterable[PortResult]) -> tuple[int, str]:
    """(exit status, summary): 0 "UDP ok" (every port answered), 3 no reply on any port (blocked,
    or no vpn-gw), 4 partial, 5 every port refused (ICMP port unreachable: no gateway there)."""
    results = list(results)
    ok = [r.port for r in results if r.reachable]
    bad = [r.port for r in results if not r.reachable]
    if results and not bad:
        return EXIT_OK, "UDP ok"
    if not ok and all(r.refused for r in results):
        # the host answered, with "port unreachable": no gateway there, TCP will not help
        return EXIT_NO_GATEWAY, ("no vpn-gw at this address: nothing listens on UDP "
                                 f"{', '.join(map(str, bad))} (ICMP port unreachable); check the "
                                 "address and that the gateway runs")
    if not ok:
        return EXIT_BLOCKED, ("no reply on any port: UDP is blocked on the way (then use TCP) or "
                              "no vpn-gw runs at this address (only vpn-gw answers probes)")
    return EXIT_PARTIAL, (f"partial: UDP ok on {', '.join(map(str, ok))}, blocked on "
                          f"{', '.join(map(str, bad))}: use TCP")


def _now_us() -> int:
    return time.monotonic_ns() // 1000


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, token: bytes, natt: bool, sent: set[int], done: asyncio.Future):
        self.token, self.natt, self.sent, self.done = token, natt, sent, done
        self.icmp_error: str | None = None

    def datagram_received(self, data: bytes, addr) -> None:
        if self.natt:
            if data[:4] != NON_ESP_MARKER:
                return
            data = data[4:]
        try:
            rep = parse_reply(data)
        except ProbeError:
            return
        if rep.token != self.token or rep.timestamp not in self.sent or self.done.done():
            return
        self.done.set_result(max(0, _now_us() - rep.timestamp) / 1e6)

    def error_received(self, exc: Exception) -> None:
        if getattr(exc, "errno", None) == errno.ECONNREFUSED:
            self.icmp_error = "ICMP port unreachable"
        else:
            self.icmp_error = str(exc)


async def _probe_port(loop, family: int, addr: tuple, port: int, natt: bool, deadline: float,
                      padding: int) -> PortResult:
    res = PortResult(port, False, address=addr[0])
    token = os.urandom(TOKEN_LEN)
    sent: set[int] = set()
    done: asyncio.Future = loop.create_future()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _ClientProtocol(token, natt, sent, done), family=family,
        remote_addr=(addr[0], port) + tuple(addr[2:]))
    try:
        interval = 0.25
        next_send = loop.time()
        while not done.done():
            now = loop.time()
            if now >= deadline:
                break
            if now >= next_send:
                ts = _now_us()
                while ts in sent:
                    ts += 1
                sent.add(ts)
                msg = build_request(token, ts, padding)
                transport.sendto(NON_ESP_MARKER + msg if natt else msg)
                res.sent += 1
                next_send = now + interval
                interval = min(interval * 2, 1.0)
            try:
                await asyncio.wait_for(asyncio.shield(done), max(0.0, min(next_send, deadline) - now))
            except TimeoutError:
                pass
        if done.done():
            res.reachable, res.rtt = True, done.result()
        res.icmp_error = proto.icmp_error
    finally:
        transport.close()
        if not done.done():
            done.cancel()
    return res


async def probe(host: str, ports: Iterable[int] = DEFAULT_PORTS, timeout: float = DEFAULT_TIMEOUT, *,
                natt_ports: Iterable[int] = NATT_PORTS, padding: int = 0) -> list[PortResult]:
    """Probe ``host`` on each UDP port concurrently, within ``timeout`` seconds in all.

    Requests go out at 0, 0.25, 0.75, 1.75 s ... (then every second) until a reply with our
    token arrives or the time is up; on ``natt_ports`` behind the non-ESP marker. A port without
    a valid reply is "not reachable" (UDP blocked on the way, or no probe-aware gateway there).
    Raises OSError when ``host`` does not resolve.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, _, _, _, addr = infos[0]
    deadline = loop.time() + timeout
    natt = set(natt_ports)
    return list(await asyncio.gather(*(_probe_port(loop, family, addr, p, p in natt, deadline, padding)
                                       for p in ports)))
