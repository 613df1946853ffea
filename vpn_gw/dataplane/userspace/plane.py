"""The userspace data plane: ESP (esp/) between TUN devices and the NAT-T UDP socket.

Every ESP packet travels in UDP 4500 (RFC 3948), with or without NAT: many firewalls pass UDP
but not IP protocol 50. Two modes, per connection:

* policy-based (no ``interface`` in the connection): one shared TUN (``vpngw0``); routes to
  each Child SA's remote selectors point into it; an SPD lookup on (source, destination,
  protocol, ports) picks the Child SA. Traffic that matches no Child SA is dropped and counted.
* route-based (``interface = "name"``): one TUN per connection, selectors normally 0.0.0.0/0 on
  both sides; whatever the routing table sends into that interface goes to that connection's
  newest Child SA. The responder binds a branch to its interface by the peer's IKE identity
  (the connection chosen in IKE_AUTH), never by selectors.

Red-side fragmentation: each Child SA has a tunnel MTU computed from the path MTU and the SA's
exact overhead (esp.fragment.tunnel_mtu). A clear IPv4 packet that does not fit is fragmented
*before* encryption when DF is clear, so encrypted packets never need fragmenting on the wire;
with DF set the sender gets ICMP "fragmentation needed" with the tunnel MTU; IPv6 gets Packet
Too Big.

Batching (``offload``, docs/esp.md "The data plane loop"): a TUN wake-up drains the device and
hands the ESP datagrams of each path to ``send_udp_batch`` (UDP GSO in the daemon); the daemon
brackets each NAT-T socket wake-up (UDP GRO bursts) with ``rx_batch_begin``/``rx_batch_end``,
and the decrypted packets of the burst are written with ``Tun.write_many`` (TCP segments of one
flow coalesced, vpn_gw.dataplane.userspace.gro).
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from esp import Direction, EspCipher, EspError, EspSA, Lifetime
from esp import compiled as esp_compiled
from esp.fragment import decide, fragment_ipv4, icmp_frag_needed, icmpv6_packet_too_big, tunnel_mtu
from esp.packet import decapsulate, decapsulate_many, encapsulate, encapsulate_many
from ikev2.events import Address, ChildUp
from vpn_gw import accel
from vpn_gw.accel import read_runs
from vpn_gw.dataplane import ChildCounters, DataPlane, InstallError
from vpn_gw.dataplane.iproute import invalidate_addresses, ipr_submit, local_addresses, wait_idle
from vpn_gw.dataplane.rtnl import RtnlError
from vpn_gw.dataplane.userspace import worker_protocol as wp
from vpn_gw.dataplane.userspace.gro import VNET_HDR_LEN
from vpn_gw.dataplane.userspace.spd import OutboundIndex, prefixes
from vpn_gw.dataplane.userspace.tso import MAX_SEGMENTS as TSO_MAX_SEGMENTS
from vpn_gw.dataplane.userspace.tun import Tun, TunError
from vpn_gw.dataplane.userspace.worker_link import RESTART_SEQ_GAP, OutboundWorker
from vpn_gw.dataplane.userspace.worker_protocol import Segments
from vpn_gw.holdoff import Holdoff
from vpn_gw.log import current_settings, enabled

log = structlog.get_logger("vpn_gw.dataplane")

DEFAULT_TUN = "vpngw0"
KEEPALIVE = b"\xff"
READ_BATCH = 256
READ_BURST = 32  # TUN reads per vpn_gw.accel.read_runs call
TX_BATCH = 64  # clear packets held per Child SA while draining a TUN device (one seal call, one GSO send)
RX_BATCH = 64  # decrypted packets held per TUN device during one socket wake-up (coalescing)
TRAP_QUEUE = 64  # packets held per trap policy while the IKE SA comes up
TRAP_RETRY = 5.0  # seconds before traffic may trigger the connection again
HELD_RX = 256  # decrypted packets held per Child SA while its routes are programmed
_V4_ADDRESSES = struct.Struct("!II").unpack_from  # (source, destination) of an IPv4 header at 12


@dataclass
class _Selector:
    version: int
    lo: int
    hi: int
    proto: int
    sport: int
    eport: int

    @classmethod
    def from_ts(cls, ts) -> _Selector:
        return cls(ts.start_addr.version, int(ts.start_addr), int(ts.end_addr), ts.ip_protocol,
                   ts.start_port, ts.end_port)

    def network_strings(self) -> list[str]:
        return list(_network_strings(self.version, self.lo, self.hi))


@functools.lru_cache(maxsize=4096)
def _network_strings(version: int, lo: int, hi: int) -> tuple[str, ...]:
    """The CIDR networks covering [lo, hi] as text (once per distinct range: every Child SA of a
    site-to-site or load-tested gateway has the same; ipaddress.summarize_address_range cost
    7 % of a set-up's CPU)."""
    if version == 4:
        return tuple(f"{socket.inet_ntoa(net.to_bytes(4, 'big'))}/{plen}" for plen, net in prefixes(lo, hi, 32))
    return tuple(f"{ipaddress.IPv6Address(net)}/{plen}" for plen, net in prefixes(lo, hi, 128))


@dataclass
class _Child:
    conn: str
    ike_id: int
    spi_in: bytes
    spi_out: bytes
    sa_in: EspSA
    sa_out: EspSA
    local: Address
    remote: Address
    local_ts: list[_Selector]
    remote_ts: list[_Selector]
    tun: Tun
    mtu: int
    routes: list[str] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    last_rx: float | None = None
    # Decrypted packets held while the routes back to the peer's hosts are being programmed
    # (the answers to them need those routes); None once they are (or none are needed).
    held_rx: list[bytes] | None = None
    # carried a packet since the last lifetime poll (then it is in the plane's _touched list)
    touched: bool = False
    # {version: ((lo, hi), ...)} when every selector is "any protocol, any port" (the usual
    # case): the per-packet policy checks then need only the addresses; None otherwise.
    fast_local: dict[int, tuple[tuple[int, int], ...]] | None = field(default=None, init=False)
    fast_remote: dict[int, tuple[tuple[int, int], ...]] | None = field(default=None, init=False)
    # With an outbound worker process (outbound_worker.py): the Child SA's counter slot in the
    # shared memory (worker_protocol.Segments), its outbound keys (to hand them to a restarted
    # worker), and whether its ESP goes through the daemon (a TCP path, RFC 9329).
    slot: int = field(default=-1, init=False)
    out_keys: tuple | None = field(default=None, init=False, repr=False)
    via_daemon: bool = field(default=False, init=False)

    # (remote lo, remote hi, local lo, local hi) when each side is one IPv4 range of any protocol
    # and port (a site-to-site or remote-access SA): the inbound check is then two comparisons.
    in4: tuple[int, int, int, int] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.fast_local = _address_ranges(self.local_ts)
        self.fast_remote = _address_ranges(self.remote_ts)
        fl, fr = self.fast_local, self.fast_remote
        if fl is not None and fr is not None and len(fl[4]) == 1 and len(fr[4]) == 1:
            self.in4 = (*fr[4][0], *fl[4][0])


@dataclass
class _Trap:
    conn: str
    local_ts: list[_Selector]
    remote_ts: list[_Selector]
    tun: Tun
    queue: list[bytes] = field(default_factory=list)
    acquired_at: float = -1e9
    routes: list[str] = field(default_factory=list)


def _flow(pkt: bytes) -> tuple[int, int, int, int, int, int] | None:
    """(version, src, dst, protocol, sport, dport) of a clear IP packet, or None if malformed."""
    if not pkt:
        return None
    v = pkt[0] >> 4
    if v == 4:
        if len(pkt) < 20:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        proto = pkt[9]
        src, dst = int.from_bytes(pkt[12:16], "big"), int.from_bytes(pkt[16:20], "big")
        sport = dport = 0
        frag_off = int.from_bytes(pkt[6:8], "big") & 0x1FFF
        if proto in (6, 17, 132) and frag_off == 0 and len(pkt) >= ihl + 4:
            sport, dport = int.from_bytes(pkt[ihl:ihl + 2], "big"), int.from_bytes(pkt[ihl + 2:ihl + 4], "big")
        return 4, src, dst, proto, sport, dport
    if v == 6:
        if len(pkt) < 40:
            return None
        proto = pkt[6]
        src, dst = int.from_bytes(pkt[8:24], "big"), int.from_bytes(pkt[24:40], "big")
        sport = dport = 0
        if proto in (6, 17, 132) and len(pkt) >= 44:
            sport, dport = int.from_bytes(pkt[40:42], "big"), int.from_bytes(pkt[42:44], "big")
        return 6, src, dst, proto, sport, dport
    return None


def _addresses(pkt: bytes) -> tuple[int, int, int] | None:
    """(version, src, dst) of a clear IP packet; None exactly when ``_flow`` is None."""
    if not pkt:
        return None
    v = pkt[0] >> 4
    if v == 4:
        if len(pkt) < 20:
            return None
        return 4, int.from_bytes(pkt[12:16], "big"), int.from_bytes(pkt[16:20], "big")
    if v == 6:
        if len(pkt) < 40:
            return None
        return 6, int.from_bytes(pkt[8:24], "big"), int.from_bytes(pkt[24:40], "big")
    return None


def _address_ranges(sels: list[_Selector]) -> dict[int, tuple[tuple[int, int], ...]] | None:
    """Selectors as address ranges per IP version if none restricts protocol or ports."""
    ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for s in sels:
        if s.proto != 0 or (s.sport, s.eport) != (0, 65535) or s.version not in ranges:
            return None
        ranges[s.version].append((s.lo, s.hi))
    return {v: tuple(r) for v, r in ranges.items()}


def _in_ranges(ranges: tuple[tuple[int, int], ...], addr: int) -> bool:
    for lo, hi in ranges:
        if lo <= addr <= hi:
            return True
    return False


def _match(sels: list[_Selector], version: int, addr: int, proto: int, port: int) -> bool:
    for s in sels:
        if s.version == version and s.lo <= addr <= s.hi and (s.proto == 0 or s.proto == proto) \
                and (s.sport <= port <= s.eport or (s.sport, s.eport) == (0, 65535)):
            return True
    return False


def _inbound_drop_reason(child: _Child, inner: bytes) -> str | None:
    """Why a decrypted packet may not leave this Child SA (RFC 4301 5.2: it must match the SA's
    selectors, source in the remote ones, destination in the local ones); None if it may."""
    in4 = child.in4
    if in4 is not None and len(inner) >= 20 and inner[0] >> 4 == 4:
        src, dst = _V4_ADDRESSES(inner, 12)
        ok = in4[0] <= src <= in4[1] and in4[2] <= dst <= in4[3]
    elif child.fast_local is not None and child.fast_remote is not None:
        a = _addresses(inner)
        if a is None:
            return "malformed"
        v, src, dst = a
        ok = _in_ranges(child.fast_remote[v], src) and _in_ranges(child.fast_local[v], dst)
    else:
        f = _flow(inner)
        if f is None:
            return "malformed"
        v, src, dst, proto, sport, dport = f
        ok = _match(child.remote_ts, v, src, proto, sport) and _match(child.local_ts, v, dst, proto, dport)
    return None if ok else "policy_mismatch"


class UserspaceDataPlane(DataPlane):
    name = "userspace"

    def __init__(self, send_udp: Callable[[bytes, Address, Address], None],
                 interface_for: Callable[[str], str | None], *, path_mtu: int = 1500,
                 tun_mtu: int = 1500, keepalive_interval: float = 20.0, replay_window: int = 1024,
                 clock: Callable[[], float] = time.monotonic, offload: bool = True, tso: bool = False,
                 holdoff: Holdoff | None = None, outbound_worker: bool = False):
        self.send_udp = send_udp
        self.holdoff = holdoff  # wake-up holdoff of the TUN readers (vpn_gw/holdoff.py), None = off
        self.interface_for = interface_for
        self.path_mtu = path_mtu
        self.tun_mtu = tun_mtu
        self.keepalive_interval = keepalive_interval
        self.replay_window = replay_window
        self.clock = clock
        self.tuns: dict[str, Tun] = {}
        self.by_spi_in: dict[bytes, _Child] = {}
        self.by_tun: dict[str, dict[bytes, _Child]] = {}  # interface -> {spi_in: child}, newest last
        # Policy-based (shared TUN): outbound lookup by destination prefix (spd.py)
        self.spd: dict[str, OutboundIndex[_Child]] = {}
        self.by_ike: dict[int, dict[bytes, _Child]] = {}  # IKE SA id -> {spi_in: child}
        # Per interface, how many of its Child SAs have each tunnel MTU (the device gets the largest)
        self._tun_mtus: dict[str, Counter[int]] = {}
        # Routes into the shared TUN (policy-based): how many Child SAs and traps want each
        # destination (added by the first, deleted after the last), and which are programmed.
        self._route_refs: dict[str, int] = {}
        self._routes_up: set[str] = set()
        # Child SAs that carried packets since the last expiries() poll: only their counters moved
        self._touched: list[_Child] = []
        self.unmatched: dict[str, int] = {}  # drops before an SA is known
        self._expiry_reported: dict[bytes, str] = {}  # spi_in -> the last lifetime state reported
        self._keepalive_task: asyncio.Task | None = None
        self.on_peer_moved: Callable[[int, Address, Address], None] | None = None
        self.on_acquire: Callable[[str], None] | None = None
        self.traps: dict[str, _Trap] = {}
        self.vips: dict[str, tuple[Tun, list[str]]] = {}
        self._raw4: socket.socket | None = None  # ICMP errors we generate (see _send_icmp4)
        # Several ESP datagrams for one path at once (the daemon sends them with UDP GSO);
        # None: one send_udp call per datagram.
        self.offload = offload  # TUN devices with vnet_hdr: coalesced TCP writes (vpn_gw.dataplane.userspace.gro)
        self.tso = offload and tso  # TUN devices offer TSO: super-packets cut by us (.tso)
        self._rx: dict[Tun, list[bytes]] | None = None  # between rx_batch_begin and rx_batch_end
        self._rx_now = 0.0  # the clock at rx_batch_begin
        self.send_udp_batch: Callable[[list[bytes], Address, Address], None] | None = None
        self._tx: dict[int, tuple[_Child, list[bytes]]] | None = None  # while draining a TUN
        self._read_buf = bytearray(65535 + VNET_HDR_LEN)  # read_runs's buffer (the largest read)
        self.tso_reads = 0  # TSO super-packets read from TUN devices
        self.tso_segments = 0  # wire segments cut from them
        # [gateway] outbound_worker: the outbound direction in a second process (outbound_worker.py)
        self.outbound_worker = outbound_worker
        self.worker: OutboundWorker | None = None  # the running worker (None: encrypting here)
        self.worker_link: OutboundWorker | None = None  # the worker, also after it was given up
        self.segments: Segments | None = None  # the worker's counter slots (worker_protocol)
        self._worker_states: list[tuple[bytes, str]] = []  # expiries the worker reported
        # (family, address, port, fd) of the NAT-T sockets the worker sends from
        self._esp_sockets: list[tuple[int, str, int, int]] = []
        # (local, remote) -> True when that path is a TCP connection (the daemon writes its ESP)
        self.path_via_daemon: Callable[[Address, Address], bool] = lambda _local, _remote: False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
        except OSError as e:
            log.error("TUN unavailable: the userspace data plane cannot carry traffic, every CHILD_SA "
                      "will fail to install (load the tun module, or give the daemon /dev/net/tun)",
                      error=f"cannot open /dev/net/tun: {e.strerror}")
        if self.keepalive_interval:
            self._keepalive_task = asyncio.get_running_loop().create_task(self._keepalives())
        if self.outbound_worker and self.worker is None:
            self.segments = Segments()
            level, fmt = current_settings()
            self.worker = self.worker_link = OutboundWorker(self, log_level=level, log_format=fmt,
                                         holdoff_us=round(self.holdoff.delay * 1e6) if self.holdoff else 0)
            try:
                self.worker.start()
            except OSError as e:
                log.error("cannot start the outbound worker process: encrypting in the daemon", error=str(e))
                self.worker = None

    async def close(self) -> None:
        if self._keepalive_task:
            self._keepalive_task.cancel()
        if self.worker is not None:
            await self.worker.stop()  # it stops reading the TUN devices before they close
        loop = asyncio.get_running_loop()
        for c in list(self.by_spi_in.values()):
            self.remove_child(c.spi_in, c.spi_out)
        try:
            await loop.run_in_executor(None, wait_idle)  # the routes are gone before the TUNs
        except Exception as e:  # noqa: BLE001 - a stuck netlink call must not stop the shutdown
            log.warning("netlink calls still pending at shutdown", error=str(e))
        for tun in self.tuns.values():
            if self.holdoff is not None:
                self.holdoff.forget(tun.fileno())
            try:
                loop.remove_reader(tun.fileno())
            except (ValueError, OSError):
                pass
            tun.close()
        self.tuns.clear()
        if self._raw4 is not None:
            self._raw4.close()
            self._raw4 = None
        if self.segments is not None:
            self.segments.close()
            self.segments = None

    def ensure_interface(self, name: str) -> None:
        self._tun(name)

    def stats(self) -> dict:
        out = super().stats()
        out["tso"] = {"reads": self.tso_reads, "segments": self.tso_segments,
                      "devices": {name: _offload_names(t) for name, t in self.tuns.items()}}
        out["compiled_helpers"] = accel.describe()
        out["esp_packet_path"] = esp_compiled.describe()
        if self.holdoff is not None:
            out["holdoff"] = self.holdoff.stats()  # (shared with the NAT-T sockets: daemon/gateway.py)
        if self.worker_link is not None:  # (after it was given up too: given_up says so)
            w = self.worker_link.describe()
            out["outbound_worker"] = w
            for reason, n in ((w["worker"] or {}).get("unmatched") or {}).items():  # its drops count here too
                out["unmatched"][reason] = out["unmatched"].get(reason, 0) + n
        return out

    def add_virtual_ips(self, conn: str, addresses: list[str]) -> None:
        tun = self._tun(self.interface_for(conn) or DEFAULT_TUN)

        def add(ipr):
            for a in addresses:
                plen = 128 if ":" in a else 32
                try:
                    ipr.addr_add(tun.index, a, plen)
                except Exception as e:  # noqa: BLE001 - already there (reconnect) is fine
                    if "exists" not in str(e).lower():
                        log.warning("cannot add virtual IP", address=a, interface=tun.name, error=str(e))
            invalidate_addresses()
        self.vips[conn] = (tun, list(addresses))
        ipr_submit(add, f"virtual IPs on {tun.name}")  # before the routes that use them
        log.info("virtual IP installed", connection=conn, interface=tun.name, addresses=addresses)

    def remove_virtual_ips(self, conn: str) -> None:
        tun, addresses = self.vips.pop(conn, (None, []))
        if tun is None:
            return

        def delete(ipr):
            for a in addresses:
                try:
                    ipr.addr_del(tun.index, a, 128 if ":" in a else 32)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            invalidate_addresses()
        ipr_submit(delete, f"virtual IPs on {tun.name}")

    def _count(self, reason: str, n: int = 1) -> None:
        self.unmatched[reason] = self.unmatched.get(reason, 0) + n

    def _tun(self, name: str) -> Tun:
        tun = self.tuns.get(name)
        if tun is None:
            tun = Tun(name, self.tun_mtu, vnet_hdr=self.offload, tso=self.tso)
            tun.route_based = name != DEFAULT_TUN
            self.tuns[name] = tun
            self.by_tun[name] = {}
            self.spd[name] = OutboundIndex()
            self._tun_mtus[name] = Counter()
            if self.worker is not None:
                self._worker_tun(tun)
            else:
                asyncio.get_running_loop().add_reader(tun.fileno(), self._tun_readable, tun)
            log.info("TUN device created", interface=tun.name, mtu=self.tun_mtu, offload=_offload_names(tun))
        return tun

    # ------------------------------------------------------------------ SA management

    def install_child(self, ev: ChildUp) -> None:
        k = ev.keys
        now = self.clock()
        try:
            c_in = EspCipher(k.encr_id, k.encr_key_bits, k.integ_id, k.encr_key_in, k.integ_key_in)
            c_out = EspCipher(k.encr_id, k.encr_key_bits, k.integ_id, k.encr_key_out, k.integ_key_out)
        except (EspError, ValueError) as e:
            raise InstallError(f"unsupported algorithms in the userspace data plane: {e}") from None
        # Time limits are the engine's (it rekeys by rekey_time); volume limits are ours.
        lifetime = Lifetime(soft_bytes=ev.rekey_bytes or None, hard_bytes=ev.life_bytes or None,
                            soft_packets=ev.rekey_packets or None, hard_packets=ev.life_packets or None)
        sa_in = EspSA(Direction.IN, int.from_bytes(k.spi_in, "big"), c_in, esn=k.esn,
                      replay_window=ev.replay_window or self.replay_window, created_at=now, lifetime=lifetime)
        sa_out = EspSA(Direction.OUT, int.from_bytes(k.spi_out, "big"), c_out, esn=k.esn,
                       created_at=now, lifetime=lifetime)
        ifname = self.interface_for(ev.ike_name) or DEFAULT_TUN
        try:
            tun = self._tun(ifname)
        except TunError as e:
            raise InstallError(f"no TUN device {ifname}: {e}") from None
        family = 6 if ":" in ev.remote[0] else 4
        mtu = tunnel_mtu(self.path_mtu, family, c_out, udp_encap=True)
        child = _Child(ev.ike_name, ev.ike_id, k.spi_in, k.spi_out, sa_in, sa_out, ev.local, ev.remote,
                       [_Selector.from_ts(t) for t in ev.local_ts], [_Selector.from_ts(t) for t in ev.remote_ts],
                       tun, mtu)
        self._index(child)
        self._tun_mtus[tun.name][mtu] += 1
        self._set_tun_mtu(tun)
        if self.interface_for(ev.ike_name) is None:
            self._add_routes(tun, child, child)
        if self.worker is not None:
            child.out_keys = (int(k.encr_id), k.encr_key_bits, int(k.integ_id) if k.integ_id is not None else None,
                              bytes(k.encr_key_out), bytes(k.integ_key_out or b""), bool(k.esn))
            child.via_daemon = self.path_via_daemon(ev.local, ev.remote)
            self._worker_add(child, (0, 0, 0))
        self._flush_trap(child)
        if enabled("info"):
            log.info("CHILD_SA installed in userspace data plane", child=ev.child_name, interface=tun.name,
                     spi_in=k.spi_in.hex(), spi_out=k.spi_out.hex(), tunnel_mtu=mtu,
                     peer=f"{ev.remote[0]}:{ev.remote[1]}")

    def _set_tun_mtu(self, tun: Tun) -> None:
        """The device MTU is the tunnel MTU (the largest of its Child SAs' on the shared device,
        whose routes carry each SA's own), so a packet too big for the tunnel meets it in the
        kernel, which answers "fragmentation needed" with that MTU, not the device's 1500."""
        mtu = max(self._tun_mtus.get(tun.name, ()), default=0)
        if not mtu or mtu == tun.mtu:
            return
        tun.mtu = mtu
        ipr_submit(lambda ipr: ipr.link_set(tun.index, mtu=mtu), f"MTU {mtu} on {tun.name}")

    def _add_routes(self, tun: Tun, owner: _Child | _Trap, child: _Child) -> None:
        """Policy-based mode: route the remote selectors into the shared TUN. Each destination is
        counted (``_route_refs``): only the first Child SA or trap that wants it programs it, a
        rekey or a thousand SAs with the same selectors cost no netlink call and no scan.
        Queued in the netlink thread (the event loop does not wait). Until this SA's routes are
        programmed (``_routes_up``), what it decrypts is held (``held_rx``): its answers would
        find no route yet."""
        wanted = self._wanted_routes(child)
        owner.routes = wanted
        refs = self._route_refs
        new = [n for n in wanted if not refs.get(n)]
        for n in wanted:
            refs[n] = refs.get(n, 0) + 1
        waits = owner is child and any(n not in self._routes_up for n in wanted)
        if waits:
            child.held_rx = []
        if not new and not waits:
            return
        loop = asyncio.get_running_loop()
        todo = set(new)

        def add(ipr):
            added: list[str] = []
            try:
                if todo:
                    added = self._add_routes_with(ipr, tun, child, todo)
            finally:
                loop.call_soon_threadsafe(self._routes_ready, child if waits else None, added)
        # (with nothing new to add, the call still waits behind the calls adding the routes it
        # shares with other SAs: the netlink thread runs them in order)
        ipr_submit(add, f"routes of {child.conn} into {tun.name}")

    def _wanted_routes(self, child: _Child) -> list[str]:
        """The destinations a Child SA (or trap) routes into the shared TUN: its remote selectors
        as networks, except a default route; for a full-tunnel client (a /0 remote selector and
        virtual IPs) the two halves of the address space and the pinned route to the gateway."""
        wanted: list[str] = []
        for sel in child.remote_ts:
            for net in sel.network_strings():
                if not net.endswith("/0"):
                    wanted.append(net)
                elif child.conn in self.vips:
                    version = 6 if ":" in net else 4
                    peer = child.remote[0]
                    if peer and (":" in peer) == (version == 6):
                        wanted.append(f"{peer}/{128 if version == 6 else 32}")
                    wanted += ("::/1", "8000::/1") if version == 6 else ("0.0.0.0/1", "128.0.0.0/1")
        return wanted

    def _routes_ready(self, child: _Child | None, added: list[str]) -> None:
        """In the event loop, after a netlink call of _add_routes: record what it programmed
        (still wanted), release what the Child SA held back."""
        self._routes_up.update(n for n in added if self._route_refs.get(n))
        if child is None:
            return
        held, child.held_rx = child.held_rx, None
        if held and child.tun.fd >= 0 and child.spi_in in self.by_spi_in:
            child.tun.write_many(held)

    def _add_routes_with(self, ipr, tun: Tun, child: _Child, todo: set[str]) -> list[str]:
        """(netlink thread) Program the routes in ``todo`` (the child's wanted routes that no
        other SA or trap has); returns those that were added."""
        added = []
        local_addrs = local_addresses(ipr)
        for sel in child.remote_ts:
            for net in sel.network_strings():
                n = ipaddress.ip_network(net)
                if n.prefixlen == 0:
                    if child.conn in self.vips and any(r in todo for r in (
                            ("::/1", "8000::/1") if n.version == 6 else ("0.0.0.0/1", "128.0.0.0/1"))):
                        added += self._full_tunnel_routes(ipr, tun, child, n.version)
                    continue  # otherwise never hijack the default route in policy-based mode
                if net not in todo:
                    continue
                src = next((a for a in local_addrs if a.version == n.version
                            and _match(child.local_ts, a.version, int(a), 0, 0)), None)
                # the tunnel MTU on the route: the kernel answers "fragmentation needed" with it
                mtu = child.mtu or None
                try:
                    try:
                        ipr.route_replace(net, oif=tun.index, mtu=mtu, prefsrc=str(src) if src else None)
                    except Exception:  # perhaps a cached source address is gone
                        if src is None:
                            raise
                        invalidate_addresses()
                        local_addrs = local_addresses(ipr)
                        src = next((a for a in local_addrs if a.version == n.version
                                    and _match(child.local_ts, a.version, int(a), 0, 0)), None)
                        ipr.route_replace(net, oif=tun.index, mtu=mtu, prefsrc=str(src) if src else None)
                    added.append(net)
                except Exception as e:  # noqa: BLE001 - RtnlError, the kernel's answer
                    log.warning("cannot add route", dst=net, interface=tun.name, error=str(e))
        return added

    def _full_tunnel_routes(self, ipr, tun: Tun, child: _Child, version: int) -> list[str]:
        """A remote-access client sending everything through the tunnel: the two halves of the
        address space via the TUN (more specific than the default route, which stays), and a
        host route to the gateway via the path it has now, so IKE and ESP do not loop."""
        added = []
        peer = child.remote[0]
        if ipaddress.ip_address(peer).version == version:
            try:
                oif, gateway = ipr.route_get(peer)
                if oif is None:
                    raise RtnlError(0, f"route to {peer}: no output interface")
                pinned = f"{peer}/{32 if version == 4 else 128}"
                ipr.route_replace(pinned, oif=oif, gateway=gateway)
                added.append(pinned)
            except Exception as e:  # noqa: BLE001
                log.warning("cannot pin the route to the gateway", gateway=peer, error=str(e))
                return added
        vip = next((a for a in self.vips[child.conn][1] if ipaddress.ip_address(a).version == version), None)
        halves = ("0.0.0.0/1", "128.0.0.0/1") if version == 4 else ("::/1", "8000::/1")
        for net in halves:
            try:
                ipr.route_replace(net, oif=tun.index, mtu=child.mtu or None, prefsrc=vip)
                added.append(net)
            except Exception as e:  # noqa: BLE001
                log.warning("cannot add route", dst=net, interface=tun.name, error=str(e))
        log.info("full tunnel: all traffic goes through the VPN", connection=child.conn, gateway=peer)
        return added

    def _del_routes(self, child: _Child) -> None:
        """Remove the child's routes that no other Child SA and no trap policy still wants
        (queued in the netlink thread, after the calls that set those routes)."""
        gone = self._release_routes(child.routes)
        if not gone:
            return

        def delete(ipr):
            for net in gone:
                for oif in (child.tun.index, None):  # TUN routes; the pinned gateway route
                    try:
                        ipr.route_del(net, oif=oif)
                        break
                    except Exception:  # noqa: BLE001 - already gone / not via the TUN
                        continue
        ipr_submit(delete, f"routes of {child.conn}")

    def _index(self, child: _Child) -> None:
        """Make a Child SA findable: by inbound SPI, by interface (newest last), in the
        interface's SPD (policy-based), by IKE SA."""
        self.by_spi_in[child.spi_in] = child
        self.by_tun[child.tun.name][child.spi_in] = child
        if not child.tun.route_based:
            self.spd[child.tun.name].add(child, child.fast_local is not None and child.fast_remote is not None)
        self.by_ike.setdefault(child.ike_id, {})[child.spi_in] = child

    def _unindex(self, spi_in: bytes) -> _Child | None:
        """The Child SA, no longer findable (``_index`` undone); None if there was none."""
        child = self.by_spi_in.pop(spi_in, None)
        if child is None:
            return None
        self.by_tun.get(child.tun.name, {}).pop(spi_in, None)
        spd = self.spd.get(child.tun.name)
        if spd is not None:
            spd.remove(child)
        of_ike = self.by_ike.get(child.ike_id)
        if of_ike is not None:
            of_ike.pop(spi_in, None)
            if not of_ike:
                del self.by_ike[child.ike_id]
        return child

    def remove_child(self, spi_in: bytes, spi_out: bytes) -> None:
        child = self._unindex(spi_in)
        if child is None:
            return
        mtus = self._tun_mtus.get(child.tun.name)
        if mtus is not None:
            mtus[child.mtu] -= 1
            if mtus[child.mtu] <= 0:
                del mtus[child.mtu]
        self._expiry_reported.pop(spi_in, None)
        if not child.tun.route_based:
            self._del_routes(child)
        if child.slot >= 0:
            if self.worker is not None:
                self.worker.send((wp.DELETE, spi_in))
            if self.segments is not None:
                self.segments.release(child.slot)
            child.slot = -1
        child.out_keys = None
        child.sa_in.wipe()
        child.sa_out.wipe()
        log.info("CHILD_SA removed from userspace data plane", spi_in=spi_in.hex(), spi_out=spi_out.hex())

    def update_addresses(self, ike_id: int, local: Address, remote: Address, encap: bool | None = None) -> None:
        # encap is ignored: this data plane always puts ESP in UDP 4500
        for c in self.by_ike.get(ike_id, {}).values():
            c.local, c.remote = local, remote
        if self.worker is not None and ike_id in self.by_ike:
            self.worker.send((wp.MOVE, ike_id, local, remote, self.path_via_daemon(local, remote)))

    def expiries(self, now: float) -> list[tuple[bytes, str]]:
        """Child SAs that reached a soft or hard volume limit (or sequence-number exhaustion)
        since the last poll. Only those that carried packets since then are checked: the plane
        sets no time limits (the engine rekeys by time), so an idle SA's state cannot change."""
        touched, self._touched = self._touched, []
        out = []
        for c in touched:
            c.touched = False
            spi_in = c.spi_in
            if self.by_spi_in.get(spi_in) is not c:
                continue
            states = (c.sa_in.check_lifetime(now), c.sa_out.check_lifetime(now))
            state = "hard" if "hard" in states else "soft" if "soft" in states else None
            if state is not None and state != self._expiry_reported.get(spi_in):
                self._expiry_reported[spi_in] = state
                out.append((spi_in, state))
        reported, self._worker_states = self._worker_states, []
        for spi_in, state in reported:  # the outbound direction's, from the worker
            if spi_in in self.by_spi_in and state != self._expiry_reported.get(spi_in) \
                    and not (state == "soft" and self._expiry_reported.get(spi_in) == "hard"):
                self._expiry_reported[spi_in] = state
                out.append((spi_in, state))
        return out

    def last_rx(self, spi_in: bytes) -> float | None:
        c = self.by_spi_in.get(spi_in)
        return c.last_rx if c else None

    def counters(self, spi_in: bytes) -> ChildCounters | None:
        c = self.by_spi_in.get(spi_in)
        if c is None:
            return None
        drops = {r.value: n for r, n in (c.sa_in.stats.drops + c.sa_out.stats.drops).items()}
        for r, n in c.drops.items():
            drops[r] = drops.get(r, 0) + n
        if c.slot >= 0 and self.segments is not None:  # the outbound direction is the worker's
            values = self.segments.read(c.slot)
            for name, n in zip(wp.SLOT_FIELDS[3:], values[3:], strict=True):
                if n:
                    drops[name] = drops.get(name, 0) + n
            return ChildCounters(c.sa_in.stats.bytes, c.sa_in.stats.packets, values[1], values[2], drops)
        return ChildCounters(c.sa_in.stats.bytes, c.sa_in.stats.packets, c.sa_out.stats.bytes,
                             c.sa_out.stats.packets, drops)

    # ------------------------------------------------------------------ outbound

    def _select(self, tun: Tun, pkt: bytes) -> _Child | None:
        """The Child SA for a clear packet read from ``tun``: route-based, the interface's newest;
        policy-based, the SPD index (most specific remote prefix, then newest; spd.py)."""
        if tun.route_based:
            by_spi = self.by_tun.get(tun.name)
            return next(reversed(by_spi.values())) if by_spi else None  # the interface chose
        spd = self.spd.get(tun.name)
        if not spd:
            return None
        n = len(pkt)
        if n >= 20 and pkt[0] >> 4 == 4:
            pair = pkt[12:20]
        elif n >= 40 and pkt[0] >> 4 == 6:
            pair = pkt[8:40]
        else:
            return None
        known = spd.flows.get(pair)
        if known is not None:
            return known  # the flow cache (spd.py): decided by these two addresses before
        a = _addresses(pkt)
        if a is None:
            return None
        v, src, dst = a
        flow: list[tuple[int, int, int, int, int, int] | None] = []

        def matches(c: _Child) -> bool:
            fl, fr = c.fast_local, c.fast_remote
            if fl is not None and fr is not None:
                return _in_ranges(fl[v], src) and _in_ranges(fr[v], dst)
            if not flow:
                flow.append(_flow(pkt))
            f = flow[0]
            assert f is not None  # _addresses() was not None
            _v, _src, _dst, proto, sport, dport = f
            return _match(c.local_ts, v, src, proto, sport) and _match(c.remote_ts, v, dst, proto, dport)
        child = spd.lookup(v, dst, matches)
        if child is not None:
            spd.remember(pair, child)
        return child

    def _tun_readable(self, tun: Tun) -> None:
        """Drain the TUN device (bounded); the packets for each Child SA are sealed together
        and their ESP datagrams sent together at the end (or once TX_BATCH are held), as UDP GSO
        when the daemon can. With a holdoff (vpn_gw/holdoff.py) a drain that found many packets
        delays the next one."""
        tx = self._tx = {}
        found = nbytes = 0
        try:
            if read_runs is not None:
                found, nbytes = self._drain_bursts(tun, read_runs)
            else:
                found, nbytes = self._drain(tun)
        finally:
            self._tx = None
            for child, pkts in tx.values():
                self._seal_and_send(child, pkts)
        if self.holdoff is not None:
            self.holdoff.after_drain(tun.fd, found, nbytes, found < READ_BATCH, self._tun_readable, tun)

    def _seal_and_send(self, child: _Child, pkts: list[bytes]) -> None:
        """Protect the clear packets held for ``child`` (in order, esp.packet.encapsulate_many:
        one compiled call when it can) and send the datagrams on the SA's path."""
        datagrams = encapsulate_many(child.sa_out, pkts)
        if datagrams:
            self._transmit(datagrams, child.local, child.remote)

    def _drain(self, tun: Tun) -> tuple[int, int]:
        """Up to READ_BATCH packets, one ``os.read`` each (without the compiled helpers); the
        number of reads and their bytes."""
        read, fd, vnet = os.read, tun.fd, tun.vnet_hdr
        nbytes = 0
        for n in range(READ_BATCH):
            try:
                pkt = read(fd, 65545)
            except BlockingIOError:
                return n, nbytes
            nbytes += len(pkt)
            if vnet:
                pkts = self._unwrapped(tun, pkt) if pkt[0] or pkt[1] else [pkt[VNET_HDR_LEN:]]
            else:
                pkts = [pkt]
            for p in pkts:
                try:
                    self._outbound(tun, p)
                except Exception as e:  # noqa: BLE001 - one bad packet never stops the data plane
                    self._count("internal_error")
                    log.error("outbound packet failed", error=f"{type(e).__name__}: {e}")
        return READ_BATCH, nbytes

    def _drain_bursts(self, tun: Tun, read_runs: Callable) -> tuple[int, int]:
        """``_drain`` with the compiled helper (vpn_gw.accel.read_runs): READ_BURST reads per
        call, the virtio-net header handled in C exactly as ``_unwrapped`` does (stripped, TSO
        super-packets cut, checksums left to us filled in), so only IP packets come back,
        grouped into runs: IPv4 packets in a row with the same addresses (the flow cache's key,
        spd.py), with the length of the longest.

        The common run takes a short lane in line (what ``_outbound`` and ``_send_esp`` would
        do, without their calls): a run whose Child SA is already known (the interface's SA,
        route-based; the flow cache, policy-based), whose packets all fit the SA's MTU, of an
        SA that has carried a packet since the last lifetime poll, is held for sealing at once,
        one step per run. Everything else goes through ``_outbound``, packet by packet.
        Returns the number of reads and, with a holdoff (else 0), the bytes of the packets
        they gave."""
        fd, vnet, buf, outbound = tun.fd, tun.vnet_hdr, self._read_buf, self._outbound
        tx, count_bytes = self._tx, self.holdoff is not None
        found = nbytes = 0
        for _ in range(READ_BATCH // READ_BURST):
            runs, reads, tso_reads, tso_segments, malformed, got = read_runs(fd, buf, READ_BURST, vnet,
                                                                            TSO_MAX_SEGMENTS)
            found += reads
            if count_bytes:
                nbytes += got
            if tso_reads:
                self.tso_reads += tso_reads
                self.tso_segments += tso_segments
            if malformed:
                self._count("malformed", malformed)
            # the lane's lookup, fixed for this burst (nothing adds or removes an SA meanwhile)
            route_child: _Child | None = None
            flows: dict[bytes, _Child] | None = None
            if tun.route_based:
                by_spi = self.by_tun.get(tun.name)
                route_child = next(reversed(by_spi.values())) if by_spi else None
            else:
                spd = self.spd.get(tun.name)
                flows = spd.flows if spd else None
            for key, pkts, longest in runs:
                if tx is not None and key is not None:
                    child = route_child if flows is None else flows.get(key)
                    if child is not None and child.touched and longest <= child.mtu:
                        # _send_esp's holding, repeated here on purpose: no call per run. At
                        # TX_BATCH or more they are sealed together (send_many cuts the GSO sends).
                        ckey = id(child)
                        entry = tx.get(ckey)
                        if entry is None:
                            tx[ckey] = entry = (child, pkts)
                        else:
                            entry[1].extend(pkts)
                        if len(entry[1]) >= TX_BATCH:
                            del tx[ckey]
                            self._seal_and_send(child, entry[1])
                        continue
                for pkt in pkts:
                    try:
                        outbound(tun, pkt)
                    except Exception as e:  # noqa: BLE001 - one bad packet never stops the data plane
                        self._count("internal_error")
                        log.error("outbound packet failed", error=f"{type(e).__name__}: {e}")
            if reads < READ_BURST:
                return found, nbytes
        return found, nbytes

    def _unwrapped(self, tun: Tun, pkt: bytes) -> list[bytes]:
        """The IP packets of a read whose virtio-net header is set: a TSO super-packet (GSO
        type) cut into its wire segments, or a packet whose checksum was left to us (NEEDS_CSUM)
        with it filled in; none (counted) if malformed."""
        if pkt[1]:
            segs = tun.unpack(pkt)
            if segs is None:
                self._count("malformed")
                return []
            self.tso_reads += 1
            self.tso_segments += len(segs)
            return segs
        stripped = tun.strip(pkt)
        if stripped is None:
            self._count("malformed")
            return []
        return [stripped]

    def _transmit(self, datagrams: list[bytes], local: Address, remote: Address) -> None:
        if len(datagrams) > 1 and self.send_udp_batch is not None:
            self.send_udp_batch(datagrams, local, remote)
        else:
            for d in datagrams:
                self.send_udp(d, local, remote)

    def _outbound(self, tun: Tun, pkt: bytes) -> None:
        if not pkt:  # (a read of a bare virtio-net header) no IP packet to protect
            self._count("malformed")
            return
        child = self._select(tun, pkt)
        if child is None:
            if not self._trap(tun, pkt):
                self._count("no_policy")
            return
        if len(pkt) > child.mtu:
            try:
                what = decide(pkt, child.mtu)
            except EspError:
                self._out_drop(child, "malformed")
                return
            if what == "fragment":
                for frag in fragment_ipv4(pkt, child.mtu):
                    self._send_esp(child, frag)
                return
            if what == "icmp":
                self._out_drop(child, "too_big")
                if pkt[0] >> 4 == 4:
                    # Source 0.0.0.0: the kernel fills in its own source address for the route
                    # back to the sender (raw(7), IP_HDRINCL), like for the ICMP it generates.
                    self._send_icmp4(icmp_frag_needed(pkt, child.mtu, ipaddress.ip_address("0.0.0.0")))
                else:
                    tun.write(icmpv6_packet_too_big(pkt, child.mtu, _v6_source(child)))
                return
            if what == "drop":
                self._out_drop(child, "too_big")
                return
        self._send_esp(child, pkt)

    def _out_drop(self, child: _Child, reason: str) -> None:
        """A clear packet for ``child`` that was not sent (too big, malformed)."""
        child.drops[reason] = child.drops.get(reason, 0) + 1

    def _send_icmp4(self, icmp: bytes) -> None:
        """Send an ICMP error generated by the gateway as a locally originated packet.

        Not through the TUN device: a packet written there is *received* by the kernel, and one
        whose source is a local address (the gateway's own) is dropped as a martian (unless
        accept_local), so the sender never learnt the tunnel MTU (PMTU black hole, TCP stalls)."""
        try:
            if self._raw4 is None:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
                s.setblocking(False)
                self._raw4 = s
            self._raw4.sendto(icmp, (socket.inet_ntoa(icmp[16:20]), 0))
        except OSError as e:
            self._count("icmp_send_failed")
            log.debug("cannot send ICMP", error=str(e))

    def _send_esp(self, child: _Child, pkt: bytes) -> None:
        if not child.touched:
            child.touched = True
            self._touched.append(child)
        tx = self._tx
        if tx is None:  # not while draining (trap queues): at once
            try:
                esp = encapsulate(child.sa_out, pkt, 4 if pkt[0] >> 4 == 4 else 41)
            except EspError:
                return  # counted on the SA
            # The SA's own path: (ip, NAT-T port) for ESP in UDP, or a TCP connection's
            # addresses (RFC 9329; the daemon writes it to that connection).
            self.send_udp(esp, child.local, child.remote)
            return
        key = id(child)
        entry = tx.get(key)
        if entry is None:
            tx[key] = (child, [pkt])
            return
        held = entry[1]
        held.append(pkt)
        if len(held) >= TX_BATCH:
            del tx[key]
            self._seal_and_send(child, held)

    # ------------------------------------------------------------------ trap policies

    def install_trap(self, conn: str, local_ts: list, remote_ts: list) -> None:
        """start_action = "trap": traffic matching the selectors starts the IKE SA; the first
        packets wait (bounded) until the Child SA is up, then they are sent through it."""
        ifname = self.interface_for(conn)
        tun = self._tun(ifname or DEFAULT_TUN)
        trap = _Trap(conn, [_Selector.from_ts(t) for t in local_ts], [_Selector.from_ts(t) for t in remote_ts], tun)
        self.traps[conn] = trap
        self._worker_traps()
        if ifname is None:
            # a stand-in that only carries selectors for the routes: never sees a packet
            probe = _Child(conn, -1, b"", b"", None, None,  # type: ignore[arg-type]
                           ("", 0), ("", 0), trap.local_ts, trap.remote_ts, tun, 0)
            self._add_routes(tun, trap, probe)
        log.info("trap policy installed", connection=conn, interface=tun.name,
                 remote_ts=[n for s in trap.remote_ts for n in s.network_strings()])

    def remove_trap(self, conn: str) -> None:
        trap = self.traps.pop(conn, None)
        if trap is not None:
            self._worker_traps()
            trap.queue.clear()
            # its routes stay until a Child SA that shares them goes (as before the counting)
            self._release_routes(trap.routes)

    def _release_routes(self, routes: list[str]) -> list[str]:
        """One owner fewer for each route; returns those nobody wants any more."""
        gone = []
        refs = self._route_refs
        for net in routes:
            n = refs.get(net, 0) - 1
            if n > 0:
                refs[net] = n
            else:
                refs.pop(net, None)
                self._routes_up.discard(net)
                gone.append(net)
        return gone

    def _trap(self, tun: Tun, pkt: bytes) -> bool:
        f = _flow(pkt)
        for trap in self.traps.values():
            if trap.tun is not tun:
                continue
            route_based = self.interface_for(trap.conn) is not None
            if not route_based and (f is None or not (_match(trap.local_ts, f[0], f[1], f[3], f[4])
                                                      and _match(trap.remote_ts, f[0], f[2], f[3], f[5]))):
                continue
            if len(trap.queue) < TRAP_QUEUE:
                trap.queue.append(pkt)
            else:
                self._count("trap_queue_full")
            now = self.clock()
            if self.on_acquire is not None and now - trap.acquired_at > TRAP_RETRY:
                trap.acquired_at = now
                log.info("traffic for a trap policy: starting the connection", connection=trap.conn)
                self.on_acquire(trap.conn)
            return True
        return False

    def _flush_trap(self, child: _Child) -> None:
        trap = self.traps.get(child.conn)
        if trap is None:
            return
        trap.acquired_at = -1e9  # it worked: if this SA goes, the next packet may start another
        if not trap.queue:
            return
        queued, trap.queue = trap.queue, []
        log.info("sending packets held by the trap policy", connection=child.conn, packets=len(queued))
        if self.worker is not None:  # the worker seals them (it owns the sequence numbers)
            chunk: list[bytes] = []
            size = 0
            for pkt in queued:
                if chunk and size + len(pkt) > wp.MAX_MESSAGE // 2:
                    self.worker.send((wp.PACKETS, child.tun.name, chunk))
                    chunk, size = [], 0
                chunk.append(pkt)
                size += len(pkt)
            self.worker.send((wp.PACKETS, child.tun.name, chunk))
            return
        for pkt in queued:
            self._outbound(child.tun, pkt)

    # ------------------------------------------------------------------ inbound

    def esp_received(self, data: bytes, local: Address, remote: Address) -> None:
        if len(data) < 8:
            self._count("malformed")
            return
        child = self.by_spi_in.get(data[:4])
        if child is None:
            self._count("unknown_spi")
            return
        try:
            _nh, inner = decapsulate(child.sa_in, data)
        except EspError:
            return  # counted on the SA by reason
        rx = self._rx
        child.last_rx = self._rx_now if rx is not None else self.clock()
        if not child.touched:
            child.touched = True
            self._touched.append(child)
        if remote != child.remote or local[0] != child.local[0]:
            # Authenticated, and the newest packet so far (it moved the replay window's top):
            # never a replay of an old packet. Address adoption decides (the engine).
            # (Without a replay window there is no "newest": no adoption from ESP then.)
            replay = child.sa_in.replay
            if (replay is not None and int.from_bytes(data[4:8], "big") == (replay.top & 0xFFFFFFFF)
                    and self.on_peer_moved is not None):
                self.on_peer_moved(child.ike_id, local, remote)
        # RFC 4301 5.2: the inner packet must match the SA's selectors.
        reason = _inbound_drop_reason(child, inner)
        if reason is not None:
            child.drops[reason] = child.drops.get(reason, 0) + 1
            return
        if child.held_rx is not None:  # its routes are being programmed (a few ms)
            if len(child.held_rx) < HELD_RX:
                child.held_rx.append(inner)
            else:
                child.drops["routes_pending"] = child.drops.get("routes_pending", 0) + 1
            return
        if rx is None:
            child.tun.write(inner)
        else:
            pending = rx.get(child.tun)
            if pending is None:
                rx[child.tun] = [inner]
            else:
                pending.append(inner)
                if len(pending) >= RX_BATCH:
                    del rx[child.tun]
                    child.tun.write_many(pending)

    def esp_received_many(self, datagrams: list[bytes], local: Address, remote: Address) -> None:
        """``esp_received`` for ESP datagrams with the same SPI from one source, in order (a run
        of one socket wake-up, between ``rx_batch_begin`` and ``rx_batch_end``): decrypted and
        checked against the SA's IPv4 selectors in one compiled call (esp.packet.decapsulate_many)
        unless something needs the per-packet path (an unknown SPI, a new address: adoption
        decides per packet; routes still being programmed)."""
        child = self.by_spi_in.get(datagrams[0][:4])
        rx = self._rx
        if (child is None or rx is None or child.held_rx is not None or remote != child.remote
                or local[0] != child.local[0]):
            for d in datagrams:
                self.esp_received(d, local, remote)
            return
        checked, unchecked, policy, opened = decapsulate_many(child.sa_in, datagrams, child.in4)
        if not opened:
            return  # every one refused (counted on the SA by reason)
        child.last_rx = self._rx_now
        if not child.touched:
            child.touched = True
            self._touched.append(child)
        if policy:
            child.drops["policy_mismatch"] = child.drops.get("policy_mismatch", 0) + policy
        for inner in unchecked:  # what the compiled check could not decide (IPv6, other selectors)
            reason = _inbound_drop_reason(child, inner)
            if reason is not None:
                child.drops[reason] = child.drops.get(reason, 0) + 1
            else:
                checked.append(inner)
        if not checked:
            return
        pending = rx.get(child.tun)
        if pending is None:
            rx[child.tun] = checked
            pending = checked
        else:
            pending.extend(checked)
        if len(pending) >= RX_BATCH:
            del rx[child.tun]
            child.tun.write_many(pending)

    def rx_batch_begin(self) -> None:
        self._rx = {}
        self._rx_now = self.clock()  # one clock read per batch: the packets' last_rx

    def rx_batch_end(self) -> None:
        rx, self._rx = self._rx, None
        if rx:
            for tun, packets in rx.items():
                if tun.fd >= 0:
                    tun.write_many(packets)

    # ------------------------------------------------------------------ the outbound worker

    def attach_sockets(self, sockets: list) -> None:
        """The daemon's NAT-T sockets (IkeSocket), which the outbound worker sends from."""
        self._esp_sockets = [(int(s.family), s.address, s.port, s.fileno()) for s in sockets]
        self._worker_sockets()

    def _worker_sockets(self) -> None:
        if self.worker is not None and self._esp_sockets:
            self.worker.send((wp.SOCKETS, [(f, a, p) for f, a, p, _fd in self._esp_sockets]),
                             [fd for *_rest, fd in self._esp_sockets])

    def _worker_tun(self, tun: Tun) -> None:
        assert self.worker is not None
        self.worker.send((wp.TUN, tun.name, tun.vnet_hdr, tun.offload_flags, tun.route_based, tun.index), [tun.fd])

    def _worker_traps(self) -> None:
        if self.worker is not None:
            self.worker.send((wp.TRAPS, sorted({t.tun.name for t in self.traps.values()})))

    def _worker_add(self, child: _Child, start: tuple[int, int, int]) -> None:
        """Hand a Child SA's outbound direction to the worker (``start``: its sequence number,
        bytes and packets so far)."""
        assert self.worker is not None and self.segments is not None and child.out_keys is not None
        if child.slot < 0:
            child.slot, new_fd = self.segments.allocate()
            if new_fd is not None:
                self.worker.send((wp.SEGMENT, len(self.segments.maps) - 1), [new_fd])
        lt = child.sa_out.lifetime
        sel = [(s.version, s.lo, s.hi, s.proto, s.sport, s.eport) for s in child.local_ts]
        rsel = [(s.version, s.lo, s.hi, s.proto, s.sport, s.eport) for s in child.remote_ts]
        self.worker.send((wp.ADD, child.spi_in, child.spi_out, child.slot, child.conn, child.ike_id, child.tun.name,
                          child.local, child.remote, sel, rsel, child.mtu, child.via_daemon, child.out_keys,
                          (lt.soft_bytes, lt.hard_bytes, lt.soft_packets, lt.hard_packets), start))

    def _worker_restarted(self) -> None:
        """A new worker process: everything again; each SA's sequence numbers continue past
        what the old one recorded (worker_link.RESTART_SEQ_GAP)."""
        assert self.worker is not None and self.segments is not None
        for i, fd in enumerate(self.segments.fds):
            self.worker.send((wp.SEGMENT, i), [fd])
        for tun in self.tuns.values():
            self._worker_tun(tun)
        self._worker_sockets()
        self._worker_traps()
        for child in self.by_spi_in.values():
            seq, nbytes, packets = self.segments.read(child.slot)[:3]
            self._worker_add(child, (min(seq + RESTART_SEQ_GAP, child.sa_out.seq_limit), nbytes, packets))
        log.info("outbound worker restarted: Child SAs handed over again", children=len(self.by_spi_in),
                 seq_gap=RESTART_SEQ_GAP)

    def _worker_gave_up(self) -> None:
        """No worker any more: the outbound direction comes back into this process."""
        segments, self.worker = self.segments, None
        if segments is not None:
            for child in self.by_spi_in.values():
                if child.slot < 0:
                    continue
                values = segments.read(child.slot)
                sa = child.sa_out
                sa.seq = min(values[0] + RESTART_SEQ_GAP, sa.seq_limit)
                sa.stats.bytes, sa.stats.packets = values[1], values[2]
                for name, n in zip(wp.SLOT_FIELDS[3:], values[3:], strict=True):
                    if n:
                        child.drops[name] = child.drops.get(name, 0) + n
                child.slot = -1
                child.out_keys = None
        loop = asyncio.get_running_loop()
        for tun in self.tuns.values():
            loop.add_reader(tun.fileno(), self._tun_readable, tun)

    def _worker_expiry(self, spi_in: bytes, state: str) -> None:
        if state in ("soft", "hard"):
            self._worker_states.append((spi_in, state))

    def _worker_unmatched(self, tun_name: str, pkt: bytes) -> None:
        """A clear packet the worker found no Child SA for, on a device with a trap policy."""
        tun = self.tuns.get(tun_name)
        if tun is not None and self.worker is not None and self._select(tun, pkt) is not None:
            # the Child SA came up while the packet was on its way here: back to be sealed
            self.worker.send((wp.PACKETS, tun_name, [pkt]))
            return
        if tun is None or not self._trap(tun, pkt):
            self._count("no_policy")

    # ------------------------------------------------------------------ keepalives

    def set_keepalive_interval(self, seconds: float) -> None:
        """`vpn-gw reload`: change the NAT keepalive interval live (0 stops the keepalives)."""
        self.keepalive_interval = seconds
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        if seconds and True:
            self._keepalive_task = asyncio.get_running_loop().create_task(self._keepalives())

    async def _keepalives(self) -> None:
        """RFC 3948 NAT keepalives (one 0xFF byte) to every peer, always (forced encapsulation).
        On a TCP path (RFC 9329 8) the daemon does not send them."""
        while True:
            await asyncio.sleep(self.keepalive_interval)
            peers = {(c.local, c.remote) for c in self.by_spi_in.values()}
            for local, remote in peers:
                self.send_udp(KEEPALIVE, local, remote)


def _offload_names(tun: Tun) -> list[str]:
    from vpn_gw.dataplane.userspace.tun import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6
    return [n for f, n in ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"))
            if tun.offload_flags & f]


def _v6_source(child: _Child):
    if ":" in child.local[0]:
        return ipaddress.ip_address(child.local[0])
    return ipaddress.ip_address("::1")
