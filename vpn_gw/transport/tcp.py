"""TCP encapsulation of IKE and ESP (RFC 9329), both roles (docs/tcp-encapsulation.md).

Wire format. The TCP Originator (the side that opened the connection: always the IKE
initiator here) first sends the 6-octet stream prefix ``IKETCP``, once. After that, both
directions carry frames::

    Length (2 octets, big-endian, counts itself) | payload (Length - 2 octets)

    IKE:  payload = 00 00 00 00 (non-ESP marker) | IKE message
    ESP:  payload = ESP packet as is (its SPI is never zero)
    NAT keepalive: payload = FF (Length 3): dropped silently, never sent (RFC 9329 8)

A Length below 3 cannot frame anything and closes the connection, as does a wrong prefix.
A frame is at most 65535 octets (the field's range), so every read buffer is bounded by one
frame plus one read.

How the engine sees it. Each TCP connection is a path whose local address is (our IP, our TCP
port) and whose remote address is (peer IP, peer TCP port). The sans-IO engine needs nothing
else: responses go back to the path a request came from (RFC 7296 2.11), NAT detection hashes
the TCP addresses (RFC 9329 7), and a new connection for an existing IKE SA is an
authenticated request from a new address, which address adoption or MOBIKE follows. The
daemon asks this module, for every datagram it sends, whether the path is a TCP one
(:meth:`TcpService.send_ike`, :meth:`TcpService.send_esp` return True when they took it).

Roles. The gateway listens on ``[gateway] tcp_port`` (default 4500, 0 = off) and never opens
connections. A connection with ``transport = "tcp"`` initiates over a new TCP connection to
the peer's ``tcp_port``; ``"auto"`` runs the UDP probe (vpn_gw.probe) first and uses TCP only
if UDP 500 or 4500 does not answer. When the originator's connection breaks, it reconnects with
bounded back-off and moves the IKE SA to the new connection (``IkeSA.local_moved``: a MOBIKE
update or an authenticated liveness check, which the peer adopts); same SPIs, no new handshake.
"""
from __future__ import annotations

import asyncio
import errno
import resource
import socket
import struct
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ikev2.constants import IKE_HEADER_LEN, NON_ESP_MARKER
from ikev2.sa_common import State
from vpn_gw.log import RateLimitedLogger
from vpn_gw.probe import EXIT_OK, is_probe, probe, verdict
from vpn_gw.transport.udp import route_source

if TYPE_CHECKING:  # pragma: no cover
    from ikev2.manager import IkeManager
    from vpn_gw.config import GatewayConfig
    from vpn_gw.dataplane import DataPlane

__all__ = ["PREFIX", "MIN_FRAME", "MAX_FRAME", "MAX_PAYLOAD", "NAT_KEEPALIVE", "FramingError", "frame",
           "ike_frame", "esp_frame", "Deframer", "classify", "TcpConnection", "TcpService"]

log = structlog.get_logger("vpn_gw.tcp")

PREFIX = b"IKETCP"
_LEN = struct.Struct("!H")
MIN_FRAME = 3             # Length counts itself: 2 + at least one octet of payload
MAX_FRAME = 0xFFFF        # the Length field's range
MAX_PAYLOAD = MAX_FRAME - _LEN.size
NAT_KEEPALIVE = b"\xff"
ESP_HEADER_LEN = 8        # SPI + sequence number

# Limits and timers (documented in docs/tcp-encapsulation.md). The ones an operator may need to
# change are [gateway] keys (tcp_max_connections, tcp_max_per_source, tcp_idle_timeout,
# tcp_max_unauth_frame, tcp_max_buffered); the constants below are their defaults.
PREFIX_TIMEOUT = 10.0     # an accepted connection must send "IKETCP" within this many seconds
IDLE_TIMEOUT = 30.0       # responder: no established IKE SA and no IKE frame for this long: closed
ORIGINATOR_GRACE = 5.0    # originator: close a connection no IKE SA uses after this long
SWEEP_INTERVAL = 1.0
CONNECT_TIMEOUT = 5.0
PROBE_TIMEOUT = 3.0       # transport = "auto": how long the UDP probe waits
RECONNECT_MIN = 0.5       # back-off after a failed reconnect: 0.5, 1, 2, ... 30 s
RECONNECT_MAX = 30.0
MAX_CONNECTIONS = 4096    # accepted connections, all sources together
MAX_PER_SOURCE = 64       # accepted connections from one IP address
MAX_UNAUTH_FRAME = 16384  # largest frame before the connection carries an established IKE SA
MAX_BUFFERED = 32 << 20   # partial-frame bytes of all connections together
FD_RESERVE = 64           # file descriptors never given to accepted connections (control socket, IKE, TUN)
ACCEPT_BATCH = 16         # accept() calls per wake-up of a listening socket
ACCEPT_PAUSE = 1.0        # after accept() failed (EMFILE, ENFILE, ENOBUFS, ...): stop accepting this long
ACCEPT_LOG_INTERVAL = 10.0  # accept() errors and fd-reserve refusals: one log line per interval
MAX_GARBAGE = 8           # frames that are neither IKE, ESP nor keepalive before the connection is closed
USER_TIMEOUT_MS = 30_000  # TCP_USER_TIMEOUT: a connection whose data stays unacknowledged this long fails
WRITE_HIGH = 256 * 1024   # above this, ESP frames are dropped (like a full UDP socket buffer)
WRITE_HARD = 4 * 1024 * 1024  # above this the peer is not reading: the connection is closed

Address = tuple[str, int]
Path = tuple[Address, Address]


# --------------------------------------------------------------------------------- framing


class FramingError(ValueError):
    """The byte stream is not RFC 9329 framing: the connection must be closed."""


class FrameTooLarge(FramingError):
    """A frame longer than the connection's ``max_frame`` (before authentication): closed."""


def frame(payload: bytes) -> bytes:
    """One frame: the 2-octet Length (payload + 2) and the payload."""
    if not payload:
        raise ValueError("an RFC 9329 frame carries at least one octet")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} octets does not fit a frame (max {MAX_PAYLOAD})")
    return _LEN.pack(len(payload) + _LEN.size) + payload


def ike_frame(message: bytes) -> bytes:
    """An IKE message behind the non-ESP marker, framed."""
    return frame(NON_ESP_MARKER + message)


def esp_frame(packet: bytes) -> bytes:
    """An ESP packet as is, framed."""
    return frame(packet)


class Deframer:
    """Incremental, strict decoder of one direction of a connection.

    ``feed(data)`` returns the payloads of the frames completed so far (any split of the stream
    gives the same frames) and raises FramingError on a wrong stream prefix (as soon as one
    octet differs) or a Length below MIN_FRAME, FrameTooLarge for a Length above ``max_frame``
    (as soon as the Length field is complete, so a partial frame never holds more than
    ``max_frame`` octets after ``feed`` returns). ``expect_prefix``: this is the TCP Responder's
    side, which reads "IKETCP" first.
    """

    __slots__ = ("_buf", "prefix_done", "max_frame")

    def __init__(self, expect_prefix: bool, max_frame: int = MAX_FRAME):
        self._buf = bytearray()
        self.prefix_done = not expect_prefix
        self.max_frame = max_frame

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        if not self.prefix_done:
            n = min(len(buf), len(PREFIX))
            if buf[:n] != PREFIX[:n]:
                raise FramingError("stream does not start with the IKETCP prefix")
            if n < len(PREFIX):
                return out
            del buf[:n]
            self.prefix_done = True
        while len(buf) >= _LEN.size:
            (length,) = _LEN.unpack_from(buf)
            if length < MIN_FRAME:
                raise FramingError(f"frame length {length} (at least {MIN_FRAME})")
            if length > self.max_frame:
                raise FrameTooLarge(f"frame length {length} (at most {self.max_frame} before authentication)")
            if len(buf) < length:
                break
            with memoryview(buf) as mv:
                out.append(bytes(mv[_LEN.size:length]))
            del buf[:length]
        return out


IKE, ESP, KEEPALIVE, RUNT = "ike", "esp", "keepalive", "runt"


def classify(payload: bytes) -> tuple[str, bytes]:
    """(kind, data): IKE (data without the marker), ESP, KEEPALIVE or RUNT (too short for either)."""
    if payload == NAT_KEEPALIVE:
        return KEEPALIVE, b""
    if payload[:4] == NON_ESP_MARKER:
        if len(payload) < len(NON_ESP_MARKER) + IKE_HEADER_LEN:
            return RUNT, payload
        return IKE, payload[len(NON_ESP_MARKER):]
    if len(payload) < ESP_HEADER_LEN:
        return RUNT, payload
    return ESP, payload


# --------------------------------------------------------------------------------- connections


def _addr(sockaddr: Any) -> Address:
    return (str(sockaddr[0]), int(sockaddr[1]))


class TcpConnection(asyncio.Protocol):
    """One TCP connection carrying IKE and ESP frames (either role)."""

    def __init__(self, service: TcpService, originator: bool):
        self.service = service
        self.originator = originator
        # Before an IKE SA is established on it, a responder connection takes only small frames.
        self.deframer = Deframer(expect_prefix=not originator,
                                 max_frame=MAX_FRAME if originator else service.max_unauth_frame)
        self.transport: asyncio.Transport | None = None
        self.local: Address = ("", 0)
        self.remote: Address = ("", 0)
        self.opened = self.last_ike = service.clock()  # last_ike: only IKE frames refresh it
        self.authenticated = originator  # responder: an established IKE SA uses this connection
        self.buffered = 0  # partial-frame bytes counted in the service's total
        self.registered = False
        self.counted = False  # responder: counted in the per-source limit
        self.paused = False
        self.closed = False
        self.garbage = 0
        self.frames_in = self.frames_out = 0

    @property
    def path(self) -> Path:
        return self.local, self.remote

    # asyncio callbacks: each guarded, an error closes this connection and never leaves a traceback
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP stream transport
        self.transport = transport
        try:
            self.local = _addr(transport.get_extra_info("sockname"))
            self.remote = _addr(transport.get_extra_info("peername"))
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A path that silently died (no RST) fails once our data goes unacknowledged, so
                # the originator reconnects instead of waiting for DPD to give up on the IKE SA.
                if hasattr(socket, "TCP_USER_TIMEOUT"):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
            transport.set_write_buffer_limits(high=WRITE_HIGH)
            if self.originator:
                transport.write(PREFIX)
            self.service._opened(self)
        except Exception as e:  # noqa: BLE001
            log.error("TCP connection setup failed", error=f"{type(e).__name__}: {e}")
            self.abort()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self.deframer.feed(data)
        except FramingError as e:
            self.service._framing_error(self, e)
            self.abort()
            return
        if self.deframer.buffered != self.buffered and not self.service._buffer_ok(self):
            self.abort()
            return
        if not self.registered and self.deframer.prefix_done:
            self.service._prefix_ok(self)
        if frames:
            self.frames_in += len(frames)
            self.service._frames(self, frames)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            self.service._lost(self, exc)
        except Exception as e:  # noqa: BLE001
            log.error("TCP connection teardown failed", error=f"{type(e).__name__}: {e}")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # ours
    def write(self, data: bytes, essential: bool) -> bool:
        """Queue one frame; ESP (not essential) is dropped while the peer is not keeping up."""
        t = self.transport
        if self.closed or t is None or t.is_closing():
            return False
        if t.get_write_buffer_size() > WRITE_HARD:
            self.service._ratelimit.log(("peer not reading", self.remote[0]), "TCP peer is not reading, closing",
                                        peer=f"{self.remote[0]}:{self.remote[1]}", level="warning")
            self.abort()
            return False
        if self.paused and not essential:
            return False
        t.write(data)
        self.frames_out += 1
        return True

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.closed = True


# --------------------------------------------------------------------------------- service


class TcpHost(Protocol):
    """What the TCP transport needs from the daemon that runs it."""
    manager: IkeManager
    dataplane: DataPlane

    @property
    def config(self) -> GatewayConfig: ...  # follows `vpn-gw reload`
    def flush(self) -> None: ...  # send what the engine produced, re-arm the timer
    def connection(self, name: str) -> Any: ...  # the connection's config (None: no such name)
    def initiate_to(self, name: str, remote_ip: str, transport: str | None = None) -> Any: ...
    def initiation_failed(self, name: str, reason: str) -> None: ...


class TcpService:
    """The daemon's TCP side: listener, originator connections, reconnects, the path registry.

    It sees the daemon only through ``TcpHost``: its ``manager``, ``dataplane`` and ``config``,
    ``flush()`` (send what the engine produced), ``initiate_to(name, ip, transport="udp")``,
    ``connection(name)`` and ``initiation_failed(name, reason)`` (an initiation that failed
    before an IKE SA existed is reported like a failed IKE SA: ``up`` waiters and restart logic
    see an IkeDown).
    """

    def __init__(self, gateway: TcpHost, *, clock=time.monotonic,
                 idle_timeout: float | None = None, prefix_timeout: float = PREFIX_TIMEOUT):
        self.gw = gateway
        self.clock = clock
        self._idle_timeout = idle_timeout  # None: [gateway] tcp_idle_timeout
        self.prefix_timeout = prefix_timeout
        self.conns: dict[Path, TcpConnection] = {}
        self.dead: dict[Path, float] = {}  # closed TCP paths that IKE SAs may still use: sends dropped
        self.servers: list[Listener] = []
        self.stats: Counter[str] = Counter()
        self._per_source: Counter[str] = Counter()
        self._responders = 0  # accepted connections counted in _per_source (all sources)
        self.buffered_total = 0  # partial-frame bytes held by all connections
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._pending: set[TcpConnection] = set()  # accepted, not yet registered (prefix outstanding)
        self._initiating: set[str] = set()
        self._reconnecting: dict[Path, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._closing = False
        self._ratelimit = RateLimitedLogger(log, limit=5, interval=60.0)
        self._accept_log = RateLimitedLogger(log, limit=1, interval=ACCEPT_LOG_INTERVAL)

    @property
    def config(self):
        return self.gw.config  # follows `vpn-gw reload`

    # [gateway] limits, read on every use so that `vpn-gw reload` applies them
    def _setting(self, key: str, default: Any) -> Any:
        return getattr(self.config, key, default)

    @property
    def idle_timeout(self) -> float:
        if self._idle_timeout is not None:
            return self._idle_timeout
        return self._setting("tcp_idle_timeout", IDLE_TIMEOUT)

    @property
    def max_unauth_frame(self) -> int:
        return self._setting("tcp_max_unauth_frame", MAX_UNAUTH_FRAME)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        port = getattr(self.config, "tcp_port", 0)
        if port and getattr(self.config, "dataplane", "userspace") not in ("userspace", "none"):
            log.info("not listening for TCP-encapsulated IKE: ESP over TCP needs the userspace data plane",
                     dataplane=self.config.dataplane, port=port)
            port = 0
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # after the daemon raised it
        if port:
            for addr in self.config.listen:
                try:
                    srv = Listener.open(self, str(addr), port)
                except OSError as e:
                    from vpn_gw.bind_errors import explain
                    log.error("cannot listen for TCP-encapsulated IKE (continuing with UDP only)",
                              address=str(addr), port=port,
                              error=explain(e, str(addr), port, "TCP (RFC 9329)", "[gateway] tcp_port"))
                    continue
                srv.start(loop)
                self.servers.append(srv)
                log.info("listening", address=str(addr), port=port, protocol="tcp")
        self._sweeper = loop.create_task(self._sweep_forever())

    async def close(self) -> None:
        self._closing = True
        for t in [self._sweeper, *self._tasks, *self._reconnecting.values()]:
            if t is not None:
                t.cancel()
        for srv in self.servers:
            srv.close()
        for c in [*self.conns.values(), *self._pending]:
            c.abort()
        self.servers.clear()

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # ------------------------------------------------------------------ daemon hooks

    def is_tcp(self, local: Address, remote: Address) -> bool:
        path = (local, remote)
        return path in self.conns or path in self.dead

    def transport_of(self, local: Address, remote: Address) -> str:
        return "tcp" if self.is_tcp(local, remote) else "udp"

    def _write(self, local: Address, remote: Address, data: bytes, essential: bool) -> bool:
        path = (local, remote)
        c = self.conns.get(path)
        if c is None:
            if path in self.dead:
                self.stats["dropped_no_connection"] += 1
                return True
            return False
        if not c.write(data, essential):
            self.stats["dropped_congestion" if not c.closed else "dropped_no_connection"] += 1
        return True

    def send_ike(self, data: bytes, local: Address, remote: Address) -> bool:
        """The daemon's _send: True if (local, remote) is a TCP path (the message is then framed
        and written to its connection, or dropped while the connection is down)."""
        if not self.conns and not self.dead:
            return False
        return self._write(local, remote, ike_frame(data), essential=True)

    def send_esp(self, data: bytes, local: Address, remote: Address) -> bool:
        """The daemon's _send_esp: True if the path is a TCP one. NAT keepalives are not sent over
        TCP (RFC 9329 8)."""
        if not self.conns and not self.dead:
            return False
        if (local, remote) not in self.conns and (local, remote) not in self.dead:
            return False
        if data == NAT_KEEPALIVE:
            return True
        try:
            fr = esp_frame(data)
        except ValueError:
            self.stats["dropped_oversize"] += 1
            return True
        return self._write(local, remote, fr, essential=False)

    def carries(self, local: Address, remote: Address) -> bool:
        """Whether ESP between these addresses goes over one of our TCP connections (or one
        waiting to be re-established): the outbound worker hands such ESP to the daemon."""
        return (local, remote) in self.conns or (local, remote) in self.dead

    def takes(self, conn) -> bool:
        """Whether initiating this connection is ours (transport tcp or auto)."""
        return getattr(conn, "transport", "udp") in ("tcp", "auto")

    def initiate(self, conn, remote_ip: str, local_ip: str | None) -> None:
        """Start initiating (asynchronously): probe for "auto", connect, then IKE_SA_INIT."""
        if conn.name in self._initiating:
            log.debug("initiation already in progress", connection=conn.name)
            return None
        self._initiating.add(conn.name)
        self._spawn(self._initiate(conn, remote_ip, local_ip))
        return None

    def roam(self, sa) -> bool:
        """The client's source address changed (daemon.check_local_addresses). For an IKE SA on
        a TCP path: drop the connection, the reconnect leaves from the new address. Returns
        whether the SA is a TCP one (then the daemon does nothing else)."""
        path = (sa.local, sa.remote)
        if not self.is_tcp(*path):
            return False
        c = self.conns.get(path)
        if c is not None and c.originator:
            log.info("local address changed, reconnecting the TCP connection", connection=sa.name,
                     local=f"{sa.local[0]}:{sa.local[1]}")
            c.abort()
        return True

    def counters(self) -> dict:
        out = {k: v for k, v in sorted(self.stats.items())}
        out["open"] = len(self.conns)
        out["accepted_open"] = self._responders
        out["sources"] = len(self._per_source)
        out["buffered_bytes"] = self.buffered_total
        out["fd_limit"] = self.fd_limit
        out["listening"] = len(self.servers)
        return out

    # ------------------------------------------------------------------ accepting

    def _accepted_socket(self, sock: socket.socket) -> None:
        """A socket the listener accepted: refused (closed at once) when it would eat into the
        descriptors kept for the control socket and IKE, else handed to asyncio."""
        if sock.fileno() >= self.fd_limit - FD_RESERVE:
            self.stats["refused_fd_reserve"] += 1
            self._accept_log.log(("TCP fd reserve",), "TCP connection refused: open-file limit nearly reached",
                                 fd_limit=self.fd_limit, reserve=FD_RESERVE, level="warning")
            _reset(sock)
            return
        sock.setblocking(False)
        self._spawn(self._adopt(sock))

    async def _adopt(self, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: TcpConnection(self, originator=False), sock)
        except (OSError, RuntimeError) as e:  # the peer left already; the loop is closing
            self.stats["accept_errors"] += 1
            self._accept_log.log(("TCP adopt failed",), "accepted TCP connection failed", error=str(e),
                                 level="info")
            sock.close()

    def _accept_failed(self, e: OSError) -> None:
        """accept() failed (out of descriptors or memory): counted, logged once per interval."""
        self.stats["accept_errors"] += 1
        self._accept_log.log(("TCP accept failed", e.errno), "TCP accept() failed, pausing the listener",
                             error=errno.errorcode.get(e.errno or 0, str(e)), detail=e.strerror,
                             pause=ACCEPT_PAUSE, errors=self.stats["accept_errors"], level="warning")

    # ------------------------------------------------------------------ connection events

    def _opened(self, c: TcpConnection) -> None:
        if c.originator:
            self._register(c)
            self.stats["connected"] += 1
            log.info("TCP connection to the peer opened", local=f"{c.local[0]}:{c.local[1]}",
                     remote=f"{c.remote[0]}:{c.remote[1]}")
            return
        ip = c.remote[0]
        total = self._responders
        if total >= self._setting("tcp_max_connections", MAX_CONNECTIONS) or \
                self._per_source[ip] >= self._setting("tcp_max_per_source", MAX_PER_SOURCE):
            self.stats["refused_limit"] += 1
            self._ratelimit.log(("TCP connection refused",), "TCP connection refused: too many connections",
                                peer=ip, level="warning", total=total, from_source=self._per_source[ip])
            c.abort()
            return
        self._per_source[ip] += 1
        self._responders += 1
        c.counted = True
        self._pending.add(c)
        self.stats["accepted"] += 1
        log.debug("TCP connection accepted", peer=f"{ip}:{c.remote[1]}", local=f"{c.local[0]}:{c.local[1]}")

    def _register(self, c: TcpConnection) -> None:
        old = self.conns.get(c.path)
        if old is not None and old is not c:
            old.abort()
        self.conns[c.path] = c
        self.dead.pop(c.path, None)
        c.registered = True

    def _prefix_ok(self, c: TcpConnection) -> None:
        """The stream prefix arrived: from now on this path is a TCP one."""
        self._pending.discard(c)
        self._register(c)

    def _framing_error(self, c: TcpConnection, e: FramingError) -> None:
        key = "bad_prefix" if not c.deframer.prefix_done else \
            "frame_too_large" if isinstance(e, FrameTooLarge) else "bad_frame"
        self.stats[key] += 1
        self._ratelimit.log(("TCP framing error", key), "closing TCP connection: not RFC 9329 framing",
                            peer=f"{c.remote[0]}:{c.remote[1]}", reason=str(e), level="warning")

    def _buffer_ok(self, c: TcpConnection) -> bool:
        """Account the connection's partial frame in the total; False: close it (the total is
        over tcp_max_buffered and the connection carries no established IKE SA)."""
        now_held = c.deframer.buffered
        self.buffered_total += now_held - c.buffered
        c.buffered = now_held
        if c.authenticated or self.buffered_total <= self._setting("tcp_max_buffered", MAX_BUFFERED):
            return True
        self.stats["closed_buffer_limit"] += 1
        self._ratelimit.log(("TCP buffer limit",), "closing TCP connection: partial frames over the memory budget",
                            peer=f"{c.remote[0]}:{c.remote[1]}", buffered=self.buffered_total, level="warning")
        return False

    def _check_authenticated(self, c: TcpConnection, ike: bytes) -> None:
        """After an IKE frame on a responder connection: does an established IKE SA use it now?
        (One SPI lookup; the sweep catches SAs that moved onto the path otherwise.)"""
        initiator_flag = len(ike) > 19 and ike[19] & 0x08
        our_spi = bytes(ike[8:16]) if initiator_flag else bytes(ike[0:8])
        sa = getattr(self.gw.manager, "by_spi", {}).get(our_spi)
        if sa is not None and sa.state in _AUTHENTICATED and (sa.local, sa.remote) == c.path:
            self._authenticate(c)

    def _authenticate(self, c: TcpConnection) -> None:
        c.authenticated = True
        c.deframer.max_frame = MAX_FRAME

    def _frames(self, c: TcpConnection, frames: list[bytes]) -> None:
        gw = self.gw
        flush = False
        now = time.monotonic()
        for payload in frames:
            if c.closed:
                break
            kind, data = classify(payload)
            try:
                if kind == IKE:
                    if is_probe(data):  # the UDP probe has no meaning here
                        self.stats["probe_dropped"] += 1
                        continue
                    self.stats["ike_in"] += 1
                    c.last_ike = self.clock()
                    gw.manager.receive(data, c.local, c.remote, now)
                    flush = True
                    if not c.authenticated:
                        self._check_authenticated(c, data)
                elif kind == ESP:
                    self.stats["esp_in"] += 1
                    gw.dataplane.esp_received(data, c.local, c.remote)
                elif kind == KEEPALIVE:
                    self.stats["keepalive_in"] += 1
                else:
                    self.stats["runt"] += 1
                    c.garbage += 1
                    if c.garbage > MAX_GARBAGE:
                        self._ratelimit.log(("TCP garbage", c.remote[0]), "closing TCP connection: unparsable frames",
                                            peer=f"{c.remote[0]}:{c.remote[1]}", frames=c.garbage, level="warning")
                        c.abort()
            except Exception as e:  # noqa: BLE001 - one frame never stops the gateway
                self._ratelimit.log(("TCP frame failed", type(e).__name__), "TCP frame handling failed",
                                    error=f"{type(e).__name__}: {e}", kind=kind, level="error")
        if flush:
            try:
                gw.flush()
            except Exception as e:  # noqa: BLE001
                log.error("sending after a TCP frame failed", error=f"{type(e).__name__}: {e}")

    def _lost(self, c: TcpConnection, exc: Exception | None) -> None:
        self._pending.discard(c)
        self.buffered_total -= c.buffered
        c.buffered = 0
        if c.counted:
            c.counted = False
            self._responders -= 1
            self._per_source[c.remote[0]] -= 1
            if self._per_source[c.remote[0]] <= 0:
                del self._per_source[c.remote[0]]
        if not c.registered:
            return
        if self.conns.get(c.path) is c:
            del self.conns[c.path]
            self.dead[c.path] = self.clock()
        self.stats["closed"] += 1
        if self._closing:
            return
        sas = self._sas_on(c.path)
        why = f"{type(exc).__name__}: {exc}" if exc else "closed"
        fields = dict(local=f"{c.local[0]}:{c.local[1]}", remote=f"{c.remote[0]}:{c.remote[1]}", reason=why,
                      frames_in=c.frames_in, frames_out=c.frames_out)
        if not sas:
            log.debug("TCP connection closed", **fields)
            return
        if not c.originator:
            log.info("TCP connection closed, waiting for the peer to reconnect", connection=sas[0].name, **fields)
            return
        if c.path not in self._reconnecting:
            log.info("TCP connection lost, reconnecting", connection=sas[0].name, **fields)
            t = asyncio.get_running_loop().create_task(self._reconnect(c.path))
            self._reconnecting[c.path] = t
            path = c.path

            def forget(_t: asyncio.Task[None]) -> None:
                self._reconnecting.pop(path, None)
            t.add_done_callback(forget)

    # ------------------------------------------------------------------ originator

    def _sas_on(self, path: Path) -> list:
        return [sa for sa in self.gw.manager.sas if sa.state != State.DELETED and (sa.local, sa.remote) == path]

    async def _connect(self, local_ip: str | None, remote: Address) -> TcpConnection:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET

        def originator() -> TcpConnection:
            return TcpConnection(self, originator=True)
        _t, proto = await asyncio.wait_for(
            loop.create_connection(originator, host=remote[0], port=remote[1],
                                   family=fam, local_addr=(local_ip, 0) if local_ip else None),
            CONNECT_TIMEOUT)
        return proto

    async def _choose(self, conn, remote_ip: str) -> tuple[str, str]:
        """transport = "auto": UDP if the probe answers on the IKE and NAT-T ports, else TCP."""
        ports = (self.config.ike_port, self.config.natt_port)
        try:
            results = await probe(remote_ip, ports=ports, timeout=PROBE_TIMEOUT, natt_ports=(self.config.natt_port,))
        except OSError as e:
            return "tcp", f"UDP probe failed: {e}"
        code, summary = verdict(results)
        detail = ", ".join(f"udp/{r.port} " + (f"rtt {(r.rtt or 0.0) * 1000:.1f} ms" if r.reachable else "no reply")
                           for r in results)
        return ("udp" if code == EXIT_OK else "tcp"), f"probe: {summary} ({detail})"

    async def _initiate(self, conn, remote_ip: str, local_ip: str | None) -> None:
        name = conn.name
        try:
            transport = conn.transport
            if transport == "auto":
                transport, why = await self._choose(conn, remote_ip)
                log.info("transport chosen", connection=name, transport=transport, reason=why)
                if transport == "udp":
                    self.gw.initiate_to(name, remote_ip, transport="udp")
                    return
            remote = (remote_ip, conn.tcp_port)
            try:
                c = await self._connect(local_ip, remote)
            except (OSError, TimeoutError) as e:
                self.stats["connect_failed"] += 1
                self._failed(name, f"TCP connection to {remote_ip}:{conn.tcp_port} failed: "
                                   f"{str(e) or type(e).__name__}")
                return
            if c.closed:
                self._failed(name, f"TCP connection to {remote_ip}:{conn.tcp_port} closed at once")
                return
            log.info("initiating over TCP", connection=name, local=f"{c.local[0]}:{c.local[1]}",
                     remote=f"{remote_ip}:{conn.tcp_port}")
            self.gw.manager.initiate(name, time.monotonic(), remote=c.remote, local=c.local)
            self.gw.flush()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - never a traceback, never a dead daemon
            self._failed(name, f"{type(e).__name__}: {e}")
        finally:
            self._initiating.discard(name)

    def _failed(self, name: str, reason: str) -> None:
        """An initiation failed before any IKE SA existed: report it like a failed IKE SA."""
        log.warning("cannot initiate", connection=name, reason=reason)
        self.gw.initiation_failed(name, reason)

    async def _reconnect(self, path: Path) -> None:
        try:
            await self._reconnect_loop(path)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - never a traceback, never a dead daemon
            log.error("TCP reconnect error", remote=f"{path[1][0]}:{path[1][1]}", error=f"{type(e).__name__}: {e}")

    async def _reconnect_loop(self, path: Path) -> None:
        """Reconnect for the IKE SAs of a lost originator connection and move them over."""
        remote = path[1]
        delay = 0.0
        attempt = 0
        while not self._closing:
            if delay:
                await asyncio.sleep(delay)
            sas = self._sas_on(path)
            if not sas:
                return  # deleted meanwhile (DPD, shutdown, `down`)
            attempt += 1
            delay = min(max(2 * delay, RECONNECT_MIN), RECONNECT_MAX)
            conn = self.gw.connection(sas[0].name)
            try:
                if conn is not None and conn.local_addrs:
                    local_ip = str(conn.local_addrs[0])
                else:
                    local_ip = route_source(remote[0])  # roaming clients follow the routing table
                c = await self._connect(local_ip, remote)
            except (OSError, TimeoutError) as e:
                self.stats["reconnect_failed"] += 1
                self._ratelimit.log(("TCP reconnect failed", remote[0]), "TCP reconnect failed",
                                    connection=sas[0].name, remote=f"{remote[0]}:{remote[1]}", attempt=attempt,
                                    retry_in=delay, error=str(e) or type(e).__name__, level="warning")
                continue
            if c.closed:
                continue
            now = time.monotonic()
            moved = []
            for sa in self._sas_on(path):
                if sa.pending is not None:
                    # A request in flight was lost with the old connection: resend it on the new
                    # one now rather than at its next retransmission time (the peer answers a
                    # duplicate from its cache, RFC 7296 2.1).
                    sa.pending.next_retransmit = min(sa.pending.next_retransmit, now)
                if sa.state == State.ESTABLISHED:
                    sa.local_moved(c.local, now)  # MOBIKE update or liveness check from the new path
                elif sa.state in (State.REKEYED, State.DELETING):
                    sa.adopt(c.local, sa.remote, now, "TCP reconnect")
                else:
                    sa.delete(now, "TCP connection lost during the IKE SA's negotiation")
                    continue
                moved.append(sa)
            self.stats["reconnected"] += 1
            self.gw.manager.tick(now)  # the early retransmissions above
            if moved:
                log.info("TCP connection re-established, IKE SA continues", connection=moved[0].name,
                         local=f"{c.local[0]}:{c.local[1]}", remote=f"{remote[0]}:{remote[1]}", attempt=attempt,
                         spi_i=moved[0].spi_i.hex(), spi_r=moved[0].spi_r.hex())
            self.gw.flush()
            return

    # ------------------------------------------------------------------ housekeeping

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.sweep()
            except Exception as e:  # noqa: BLE001 - never let the sweeper die
                log.error("TCP housekeeping failed", error=f"{type(e).__name__}: {e}")

    def sweep(self) -> None:
        """Close connections nobody needs: accepted ones without the prefix after PREFIX_TIMEOUT;
        responder connections without an established IKE SA that received no IKE frame for
        idle_timeout (NAT keepalives, ESP and garbage do not count, so an unauthenticated
        connection cannot be held open with them); originator connections whose IKE SA is gone;
        forget closed paths no IKE SA uses."""
        now = self.clock()
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # follows `prlimit` on the daemon
        # no TCP path to check (the usual case): no pass over every IKE SA either
        sas = self.gw.manager.sas if self.conns or self.dead else []
        in_use = {(sa.local, sa.remote) for sa in sas if sa.state != State.DELETED}
        established = {(sa.local, sa.remote) for sa in sas if sa.state in _AUTHENTICATED}
        idle_timeout = self.idle_timeout
        for c in list(self._pending):
            if now - c.opened > self.prefix_timeout:
                self.stats["prefix_timeout"] += 1
                self._ratelimit.log(("TCP prefix timeout", c.remote[0]), "closing TCP connection: no IKETCP prefix",
                                    peer=f"{c.remote[0]}:{c.remote[1]}", level="info")
                c.abort()
                self._pending.discard(c)
        for path, c in list(self.conns.items()):
            if c.originator:
                if path not in in_use and now - c.opened > ORIGINATOR_GRACE:
                    log.info("closing TCP connection: its IKE SA is gone", local=f"{c.local[0]}:{c.local[1]}",
                             remote=f"{c.remote[0]}:{c.remote[1]}")
                    self.stats["closed_unused"] += 1
                    c.abort()
            elif path in established:
                if not c.authenticated:
                    self._authenticate(c)
            elif now - c.last_ike > idle_timeout:
                log.debug("closing idle TCP connection without an IKE SA", peer=f"{c.remote[0]}:{c.remote[1]}")
                self.stats["closed_idle"] += 1
                c.abort()
        for path in [p for p in self.dead if p not in in_use and p not in self._reconnecting]:
            del self.dead[path]


_AUTHENTICATED = (State.ESTABLISHED, State.REKEYED, State.DELETING)  # IKE_AUTH completed once


def _reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): no TIME_WAIT, the client learns at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Listener:
    """A listening TCP socket read by our own accept loop (not asyncio's ``create_server``), so
    that every accepted descriptor is checked against the reserve before anything else holds it,
    and accept() errors are counted and logged once per interval instead of as tracebacks."""

    def __init__(self, service: TcpService, sock: socket.socket):
        self.service = service
        self.sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: asyncio.TimerHandle | None = None

    @classmethod
    def open(cls, service: TcpService, host: str, port: int, backlog: int = 128) -> Listener:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return cls(service, sock)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED, ...
                if e.errno == errno.ECONNABORTED:
                    continue
                self.service._accept_failed(e)
                self._pause()
                return
            try:
                self.service._accepted_socket(conn)
            except Exception as e:  # noqa: BLE001 - one connection never stops the listener
                self.service.stats["accept_errors"] += 1
                log.error("accepting a TCP connection failed", error=f"{type(e).__name__}: {e}")
                conn.close()

    def _pause(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.sock.fileno())
        self._paused = self._loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
