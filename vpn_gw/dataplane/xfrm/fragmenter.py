"""Red-side fragmentation for policy-based XFRM tunnels: NFQUEUE (netfilterqueue) + a raw socket.

What the kernel already does for a policy-based tunnel (the packet's route is an XFRM bundle
whose MTU is the path MTU minus the SA's overhead, ``xfrm_init_pmtu``):

* forwarded IPv4 with DF set, and forwarded IPv6: ``ip_forward``/``ip6_forward`` compare the
  packet with the bundle's MTU and answer ICMP "fragmentation needed" / ICMPv6 "packet too big"
  with the tunnel MTU, before the FORWARD hook;
* locally generated traffic: the socket's route is the bundle, so the stack fragments (DF clear)
  or refuses (DF set) at the tunnel MTU itself.

What it does not do: forwarded IPv4 with DF clear is encrypted whole and the *ESP* packet is
fragmented (the far gateway reassembles). This module closes that gap:

* an nftables table of its own (``table ip vpn_gw_frag``) with one rule per tunnel in the
  forward hook, after the filter chains (priority 100): source in the local selectors,
  destination in the remote selectors, ``ip length`` from the tunnel MTU + 1 up to what the
  queue can carry (``QUEUE_MAX_LEN``) -> ``queue num N`` (``bypass`` when failing open);
* a reader (``netfilterqueue``) that fragments the packet to the tunnel MTU
  (``esp.fragment.fragment_ipv4``), sends the fragments through a raw socket (IP_HDRINCL,
  IP_PKTINFO with the original source so the route/XFRM lookup sees the tunnelled flow,
  IP_NODEFRAG so conntrack's defragmenter on OUTPUT leaves them alone), and drops the original.
  DF-set packets that still reach it get ICMP "fragmentation needed" with the tunnel MTU.

Packets longer than ``QUEUE_MAX_LEN`` never match: netfilterqueue copies at most 4016 bytes, and
a truncated copy cannot be fragmented. The kernel carries them as before (encrypted whole, outer
fragments). See docs/xfrm.md.
"""
from __future__ import annotations

import ipaddress
import select
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from esp.errors import EspError
from esp.fragment import decide, fragment_ipv4, icmp_frag_needed
from esp.ip import parse_ipv4
from vpn_gw.dataplane.xfrm import netlink as nl

log = structlog.get_logger("vpn_gw.dataplane")

TABLE = "vpn_gw_frag"
CHAIN = "VPN_GW_FRAG"  # iptables fallback: a chain of ours in table "security" (after "filter")
IPT_TABLE = "security"
BACKENDS = ("auto", "nft", "iptables")
DEFAULT_QUEUE = 0x5647  # "VG"
CHAIN_PRIORITY = 100  # after the filter chains (0): what they drop is never re-injected
QUEUE_MAX_LEN = 4016  # netfilterqueue: 4096-byte receive buffer minus 80 bytes of metadata
IP_NODEFRAG = 22
IP_PKTINFO = 8
NETLINK_NETFILTER = 12


class FragmenterError(RuntimeError):
    pass


@dataclass(frozen=True)
class Tunnel:
    """The clear traffic of one policy-based Child SA: IPv4 networks on both sides, tunnel MTU."""
    local: tuple[ipaddress.IPv4Network, ...]
    remote: tuple[ipaddress.IPv4Network, ...]
    mtu: int

    def matches(self, src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address) -> bool:
        return any(src in n for n in self.local) and any(dst in n for n in self.remote)


def ipv4_networks(selectors: Iterable) -> tuple[ipaddress.IPv4Network, ...]:
    """The IPv4 address ranges of the traffic selectors that take any protocol and port.

    Selectors limited to a protocol or ports are left out: the re-injected fragments carry no
    ports for the XFRM lookup (and a raw socket's protocol), so they could miss such a policy
    and leave in clear. Their oversized packets stay with the kernel (outer fragments)."""
    out: list[ipaddress.IPv4Network] = []
    for ts in selectors:
        if ts.start_addr is None or ts.start_addr.version != 4:
            continue
        if ts.ip_protocol or (ts.start_port, ts.end_port) != (0, 65535):
            continue
        out.extend(ipaddress.summarize_address_range(ts.start_addr, ts.end_addr))
    return tuple(ipaddress.collapse_addresses(out))


def ruleset(tunnels: Iterable[Tunnel], queue_num: int = DEFAULT_QUEUE, fail_open: bool = True,
            table: str = TABLE, max_len: int = QUEUE_MAX_LEN) -> str:
    """An ``nft -f`` script that replaces the table atomically with one rule per tunnel.

    ``ip length`` stops at ``max_len``: longer packets would reach the reader truncated."""
    rules = [f"    ip saddr {{ {', '.join(map(str, t.local))} }} ip daddr {{ {', '.join(map(str, t.remote))} }} "
             f"ip length {t.mtu + 1}-{max_len} counter queue num {queue_num}{' bypass' if fail_open else ''}"
             for t in _rule_tunnels(tunnels, max_len)]
    lines = [f"table ip {table} {{}}", f"delete table ip {table}", f"table ip {table} {{"]
    for chain in ("forward", "output"):
        lines += [f"  chain {chain} {{",
                  f"    type filter hook {chain} priority {CHAIN_PRIORITY}; policy accept;", *rules, "  }"]
    lines += ["}", ""]
    return "\n".join(lines)


def _rule_tunnels(tunnels: Iterable[Tunnel], max_len: int) -> list[Tunnel]:
    out: list[Tunnel] = []
    for t in sorted(tunnels, key=lambda t: (t.mtu, t.local, t.remote)):
        if t.local and t.remote and t.mtu + 1 <= max_len and t not in out:
            out.append(t)
    return out


def iptables_script(tunnels: Iterable[Tunnel], queue_num: int = DEFAULT_QUEUE, fail_open: bool = True,
                    chain: str = CHAIN, max_len: int = QUEUE_MAX_LEN) -> str:
    """The same rules for ``iptables-restore --noflush`` (declaring the chain flushes it), for
    kernels without nftables' queue statement (xt NFQUEUE instead)."""
    lines = [f"*{IPT_TABLE}", f":{chain} - [0:0]"]
    for t in _rule_tunnels(tunnels, max_len):
        lines.append(f"-A {chain} -s {','.join(map(str, t.local))} -d {','.join(map(str, t.remote))} "
                     f"-m length --length {t.mtu + 1}:{max_len} -j NFQUEUE --queue-num {queue_num}"
                     + (" --queue-bypass" if fail_open else ""))
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def plan(packet: bytes, mtu: int) -> tuple[str, list[bytes]]:
    """What the reader does with a queued packet: ("fragment", fragments), ("icmp", []) (the
    caller builds it: it needs a source address), ("pass", []) or ("drop", [])."""
    if not packet or packet[0] >> 4 != 4:
        return "pass", []
    try:
        action = decide(packet, mtu)
        if action == "fragment":
            return "fragment", fragment_ipv4(packet, mtu)
    except EspError:
        return "pass", []  # malformed or truncated: not ours to judge, the kernel decides
    return action, []


class RedFragmenter:
    """The nftables table and the queue reader of one daemon (one network namespace)."""

    def __init__(self, queue_num: int = DEFAULT_QUEUE, fail_open: bool = True, *, table: str = TABLE,
                 chain: str = CHAIN, backend: str = "auto", netns: str | None = None, max_len: int = QUEUE_MAX_LEN):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        self.backend = backend
        self._swept = False  # the first remove_table() also looks for an iptables chain of ours
        self.chain = chain
        self.queue_num = queue_num
        self.fail_open = fail_open
        self.table = table
        self.netns = netns
        self.max_len = max_len
        self.tunnels: dict[Any, Tunnel] = {}
        self.counters = {"queued": 0, "fragmented": 0, "fragments_sent": 0, "icmp_sent": 0, "passed": 0,
                         "dropped": 0, "errors": 0}
        self._nfq: Any = None
        self._nl_sock: socket.socket | None = None
        self._raw: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._reader_fd: int | None = None
        self._mark = 0
        self._loop = None
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None

    # ------------------------------------------------------------------ rules (nftables / iptables)

    def _run(self, argv: list[str], script: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = argv[0]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        try:
            p = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FragmenterError(f"cannot run {cmd}: {e}") from e
        if check and p.returncode != 0:
            raise FragmenterError(f"{cmd} failed: {p.stderr.strip()}")
        return p

    def _iptables(self, restore: bool = False) -> str:
        for name in (("iptables-nft-restore", "iptables-restore") if restore else ("iptables-nft", "iptables")):
            if shutil.which(name):
                return name
        raise FragmenterError("neither nft's queue statement nor iptables is available")

    def remove_table(self) -> None:
        """Delete our table / chain if they exist (stop, and leftovers of a crashed run at start)."""
        try:
            self._run(["nft", "-f", "-"], f"table ip {self.table} {{}}\ndelete table ip {self.table}\n", check=False)
        except FragmenterError:
            pass
        if self.backend != "nft" or not self._swept:
            self._swept = True
            try:
                ipt = self._iptables()
            except FragmenterError:
                return
            for hook in ("FORWARD", "OUTPUT"):
                while self._run([ipt, "-t", IPT_TABLE, "-D", hook, "-j", self.chain], check=False).returncode == 0:
                    pass
            self._run([ipt, "-t", IPT_TABLE, "-F", self.chain], check=False)
            self._run([ipt, "-t", IPT_TABLE, "-X", self.chain], check=False)

    def _pick_backend(self) -> None:
        """"auto": nftables if the kernel has the queue statement (nft_queue), else iptables
        (xt NFQUEUE through iptables-nft or legacy iptables, in table security)."""
        if self.backend != "auto":
            return
        probe = Tunnel((ipaddress.IPv4Network("0.0.0.0/32"),), (ipaddress.IPv4Network("0.0.0.0/32"),), 100)
        try:
            self._run(["nft", "-f", "-"], ruleset([probe], self.queue_num, True, self.table, self.max_len))
            self.backend = "nft"
        except FragmenterError as e:
            log.info("nftables cannot queue here, using iptables", reason=str(e).splitlines()[0][:200])
            self.backend = "iptables"

    def _apply(self) -> None:
        self._pick_backend()
        if self.backend == "iptables":
            self._run([self._iptables(restore=True), "--noflush"],
                      iptables_script(self.tunnels.values(), self.queue_num, self.fail_open, self.chain, self.max_len))
            ipt = self._iptables()
            for hook in ("FORWARD", "OUTPUT"):
                if self._run([ipt, "-t", IPT_TABLE, "-C", hook, "-j", self.chain], check=False).returncode != 0:
                    self._run([ipt, "-t", IPT_TABLE, "-A", hook, "-j", self.chain])
        else:
            self._run(["nft", "-f", "-"],
                      ruleset(self.tunnels.values(), self.queue_num, self.fail_open, self.table, self.max_len))

    def add(self, key: Any, local_ts: Iterable, remote_ts: Iterable, mtu: int) -> bool:
        """Queue the oversized clear traffic of a tunnel (IPv4 selectors only). False if nothing to do."""
        t = Tunnel(ipv4_networks(local_ts), ipv4_networks(remote_ts), mtu)
        if not t.local or not t.remote:
            return False
        self.tunnels[key] = t
        try:
            self._apply()
        except FragmenterError as e:
            log.error("cannot install the red-side fragmentation rule", error=str(e))
            return False
        return True

    def remove(self, key: Any) -> None:
        if self.tunnels.pop(key, None) is not None:
            try:
                self._apply()
            except FragmenterError as e:
                log.warning("cannot update the red-side fragmentation rules", error=str(e))

    def mtu_for(self, src: bytes, dst: bytes) -> int | None:
        s, d = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
        mtus = [t.mtu for t in list(self.tunnels.values()) if t.matches(s, d)]  # the reader may be a thread
        return min(mtus) if mtus else None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Remove a leftover table, open the raw sockets and bind the queue (synchronous)."""
        if self._nfq is not None:
            return
        try:
            from netfilterqueue import NetfilterQueue
        except ImportError as e:
            raise FragmenterError("the Python package netfilterqueue is missing (pip install "
                                  "'vpn-gw[nfqueue]')") from e
        self._pick_backend()
        self.remove_table()

        def opener():
            socks: list[socket.socket] = []
            try:
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))
                socks[0].setsockopt(socket.IPPROTO_IP, IP_NODEFRAG, 1)
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                socks.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
            except OSError:
                for s in socks:
                    s.close()
                raise
            return tuple(socks)
        try:
            self._raw, self._udp, self._nl_sock = nl._open_in_netns(self.netns, opener)
            self._nfq = NetfilterQueue(sockfd=self._nl_sock.fileno())
            self._nfq.bind(self.queue_num, self._on_packet)
        except OSError as e:
            self._close_sockets()
            raise FragmenterError(f"cannot bind NFQUEUE {self.queue_num}: {e}") from e
        self._nl_sock.setblocking(False)
        if self.tunnels:
            self._apply()
        log.info("red-side fragmentation queue bound", queue=self.queue_num, rules=self.backend,
                 fail=("open" if self.fail_open else "closed"))

    def start(self, loop) -> None:
        """open() and read the queue from the asyncio loop."""
        self.open()
        self._reader_fd = self._nfq.get_fd()
        self._loop = loop
        loop.add_reader(self._reader_fd, self.process)

    def serve_in_thread(self) -> None:
        """open() and read the queue from a thread (tests, tools)."""
        self.open()
        self._stop = threading.Event()
        fd, stop = self._nfq.get_fd(), self._stop

        def loop():
            while not stop.is_set():
                r, _, _ = select.select([fd], [], [], 0.1)
                if r and not stop.is_set():
                    self.process()
        self._thread = threading.Thread(target=loop, name="nfqueue-reader", daemon=True)
        self._thread.start()

    def stop_reading(self) -> None:
        """Stop the reader, unbind the queue, keep the table (fail-open/closed is then visible)."""
        if self._reader_fd is not None and self._loop is not None:
            try:
                self._loop.remove_reader(self._reader_fd)
            except (RuntimeError, ValueError, OSError):
                pass
        self._reader_fd = self._loop = None
        if self._thread is not None:
            assert self._stop is not None
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        self._close_sockets()

    def close(self) -> None:
        """Stop reading and delete the table."""
        self.stop_reading()
        self.tunnels.clear()
        self.remove_table()

    def _close_sockets(self) -> None:
        if self._nfq is not None:
            try:
                self._nfq.unbind()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._nfq = None
        for s in (self._raw, self._udp, self._nl_sock):
            if s is not None:
                s.close()
        self._raw = self._udp = self._nl_sock = None
        self._mark = 0

    # ------------------------------------------------------------------ the reader

    def process(self) -> None:
        """Handle every queued packet (non-blocking)."""
        if self._nfq is None:
            return
        try:
            self._nfq.run(block=False)
        except OSError as e:
            self.counters["errors"] += 1
            log.warning("NFQUEUE read error", error=str(e))

    def _on_packet(self, pkt) -> None:
        self.counters["queued"] += 1
        try:
            data = pkt.get_payload()
            action: str = "pass"
            out: list[bytes] = []
            mtu: int | None = None
            if len(data) >= 20 and data[0] >> 4 == 4:
                mtu = self.mtu_for(data[12:16], data[16:20])
                if mtu is not None:
                    action, out = plan(data, mtu)
            if action == "fragment":
                self._set_mark(pkt)
                self._send_fragments(out, data[12:16], data[16:20])
                self.counters["fragmented"] += 1
                self.counters["fragments_sent"] += len(out)
                pkt.drop()
            elif action == "icmp":
                assert mtu is not None  # plan() runs only with an MTU
                self._send_icmp(data, mtu)
                self.counters["icmp_sent"] += 1
                pkt.drop()
            elif action == "drop":
                self.counters["dropped"] += 1
                pkt.drop()
            else:
                self.counters["passed"] += 1
                pkt.accept()
        except Exception as e:  # noqa: BLE001 - a bad packet never stops the reader
            self.counters["errors"] += 1
            log.warning("red-side fragmentation failed, packet passed on", error=f"{type(e).__name__}: {e}")
            try:
                pkt.accept()  # the kernel carries it as before (outer fragments)
            except Exception:  # noqa: BLE001
                pass

    def _set_mark(self, pkt) -> None:
        """The fragments carry the original's mark (XFRM policies with a mark, policy routing)."""
        mark = pkt.get_mark() if hasattr(pkt, "get_mark") else 0
        if mark != self._mark and self._raw is not None:
            self._raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            self._mark = mark

    def _send_fragments(self, fragments: list[bytes], src: bytes, dst: bytes) -> None:
        """Send through the raw socket. IP_PKTINFO puts the original source into the route and
        XFRM lookup (a raw socket with IP_HDRINCL may use any source), so the fragments meet the
        tunnel's OUT policy as the original would have."""
        assert self._raw is not None
        pktinfo = struct.pack("=I4s4s", 0, src, bytes(4))
        dest = (socket.inet_ntoa(dst), 0)
        for f in fragments:
            self._raw.sendmsg([f], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, dest)

    def _send_icmp(self, packet: bytes, mtu: int) -> None:
        assert self._raw is not None and self._udp is not None
        sender = socket.inet_ntoa(parse_ipv4(packet, verify_checksum=False).src)
        self._udp.connect((sender, 9))  # the address the route back to the sender would use
        src = self._udp.getsockname()[0]
        self._raw.sendto(icmp_frag_needed(packet, mtu, src), (sender, 0))
