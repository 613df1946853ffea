"""A client with two uplinks, each behind its own router, and a hub across a small Internet.

    hc 10.1.0.2 -- 10.1.0.1 client up1 192.0.2.10/24  -- 192.0.2.1   r1 pub 198.51.100.65/26  --+
                                   up2 203.0.113.10/24 -- 203.0.113.1 r2 pub 198.51.100.129/26 --+- inet
                                                                 hub wan 198.51.100.10/26 -------+
    hh 10.2.0.2 -- 10.2.0.1 hub

``inet`` routes between the routers' public sides and the hub (it knows 192.0.2.0/24 via r1 and
203.0.113.0/24 via r2, so without NAT the client's own addresses are visible to the hub). With
``nat1=True`` router 1 masquerades everything leaving its public side (nftables), so the hub sees
the client as 198.51.100.65. Nobody outside the client and the hub knows 10/8: host-to-host
traffic only passes through a tunnel.

The client starts on uplink 1 (default route metric 100); uplink 2 is up with a worse default
route (metric 200). :meth:`Mobility.move` takes the active uplink down (the kernel then routes
to the hub over the other one), after bringing the standby one up if needed, so moves can be
repeated back and forth.

Also here: :class:`Pinger` (20 packets/s ``ping -D``, replies with their wall-clock times, gaps
around a moment) and :func:`send_from` (one UDP datagram from a given source address and port,
e.g. a replayed ESP packet from the client's old address).
"""
from __future__ import annotations

import contextlib
import itertools
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns import Netns, NetnsGroup, kill_pid

PYTHON = sys.executable

CLIENT_IP1 = "192.0.2.10"
CLIENT_IP2 = "203.0.113.10"
R1_PUB = "198.51.100.65"
R2_PUB = "198.51.100.129"
HUB_IP = "198.51.100.10"
CLIENT_LAN, CLIENT_LAN_GW, CLIENT_HOST = "10.1.0.0/24", "10.1.0.1", "10.1.0.2"
HUB_LAN, HUB_LAN_GW, HUB_HOST = "10.2.0.0/24", "10.2.0.1", "10.2.0.2"


@dataclass
class Uplink:
    dev: str          # client side
    addr: str         # client address on it
    router: Netns
    router_ip: str    # the client's gateway on this uplink
    pub_ip: str       # the router's public address (NAT address when masquerading)
    metric: int


@dataclass
class Mobility:
    grp: NetnsGroup
    client: Netns
    hc: Netns          # host behind the client
    hub: Netns
    hh: Netns          # host behind the hub
    inet: Netns
    uplinks: list[Uplink]
    active: int = 0    # index into uplinks
    moves: list[float] = field(default_factory=list)  # wall-clock time of each move
    _metric: int = 200

    hub_ip: str = HUB_IP
    hub_iface: str = "hub"  # inet's interface towards the hub: sees all client<->hub traffic

    @property
    def current(self) -> Uplink:
        return self.uplinks[self.active]

    @property
    def standby(self) -> Uplink:
        return self.uplinks[1 - self.active]

    def prepare_standby(self) -> None:
        """Make sure the standby uplink is up with a default route worse than the active one."""
        up = self.standby
        links = {ln["ifname"]: ln for ln in self.client.ip_json("link", "show", up.dev)}
        if "UP" not in links.get(up.dev, {}).get("flags", []):
            self.client.link_up(up.dev)
        self._metric += 100
        self.client.ip("route", "replace", "default", "via", up.router_ip, "dev", up.dev,
                       "metric", str(self._metric))
        up.metric = self._metric

    def move(self) -> float:
        """Take the active uplink down: the kernel now reaches the hub over the other one.
        Returns the wall-clock time of the move (also appended to ``moves``)."""
        old = self.current
        t = time.time()
        self.client.link_down(old.dev)
        self.active = 1 - self.active
        self.moves.append(t)
        return t


def build(grp: NetnsGroup, *, nat1: bool = False, nat2: bool = False, hosts: bool = True) -> Mobility:
    """Create the namespaces and links of the module docstring inside ``grp``."""
    inet = grp.add("inet", forwarding=True)
    client = grp.add("cl", forwarding=True)
    hub = grp.add("hub", forwarding=True)
    r1 = grp.add("r1", forwarding=True)
    r2 = grp.add("r2", forwarding=True)
    grp.veth(hub, "wan", inet, "hub", a_addrs=[f"{HUB_IP}/26"], b_addrs=["198.51.100.62/26"])
    hub.ip("route", "add", "default", "via", "198.51.100.62")
    uplinks = []
    for i, (r, addr, rtr, pub, inet_ip, metric, nat) in enumerate((
            (r1, CLIENT_IP1, "192.0.2.1", R1_PUB, "198.51.100.126", 100, nat1),
            (r2, CLIENT_IP2, "203.0.113.1", R2_PUB, "198.51.100.190", 200, nat2)), start=1):
        grp.veth(client, f"up{i}", r, "in", a_addrs=[f"{addr}/24"], b_addrs=[f"{rtr}/24"])
        grp.veth(r, "pub", inet, f"r{i}", a_addrs=[f"{pub}/26"], b_addrs=[f"{inet_ip}/26"])
        r.ip("route", "add", "default", "via", inet_ip)
        inet.ip("route", "add", f"{rtr.rsplit('.', 1)[0]}.0/24", "via", pub)
        client.ip("route", "add", "default", "via", rtr, "dev", f"up{i}", "metric", str(metric))
        if nat:
            masquerade(r, "pub")
        uplinks.append(Uplink(f"up{i}", addr, r, rtr, pub, metric))
    hc = hh = None
    if hosts:
        hc = grp.add("hc")
        hh = grp.add("hh")
        grp.veth(hc, "eth0", client, "lan", a_addrs=[f"{CLIENT_HOST}/24"], b_addrs=[f"{CLIENT_LAN_GW}/24"])
        grp.veth(hh, "eth0", hub, "lan", a_addrs=[f"{HUB_HOST}/24"], b_addrs=[f"{HUB_LAN_GW}/24"])
        hc.ip("route", "add", "default", "via", CLIENT_LAN_GW)
        hh.ip("route", "add", "default", "via", HUB_LAN_GW)
    m = Mobility(grp, client, hc, hub, hh, inet, uplinks)
    # the outer paths must work before any IKE is attempted
    client.wait_ping(HUB_IP, timeout=10, src=CLIENT_IP1)
    client.wait_ping(HUB_IP, timeout=10, src=CLIENT_IP2)
    return m


def masquerade(ns: Netns, oif: str) -> None:
    """Source NAT (masquerade) of everything leaving ``oif`` in ``ns``."""
    ruleset = (
        "table ip nat {\n"
        "  chain post {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{oif}" masquerade\n'
        "  }\n"
        "}\n")
    ns.run(["nft", "-f", "-"], input=ruleset)


# --------------------------------------------------------------------------- ping at 20/s

_REPLY_RE = re.compile(r"^\[(?P<t>\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(?P<seq>\d+)")


FAST_PING_BELOW = 0.02  # shorter intervals: fast_ping.py (iputils ping sends every ~16 ms at -i 0.01)


class Pinger:
    """``ping -D -i 0.05`` (20 packets/s) in ``ns`` to ``dst``, output to a file; stopped by PID.
    Intervals below 20 ms use fast_ping.py (same output format, a steady schedule).

    ``replies()`` lists (wall-clock time, icmp_seq) of every reply; ``gap(t)`` is the outage a
    move at ``t`` caused: last reply before the silence -> first reply after it, in ms (it
    includes one ping interval, 50 ms, that any two replies are apart anyway).
    """

    def __init__(self, ns: Netns, dst: str, out: Path, interval: float = 0.05, src: str | None = None):
        self.ns = ns
        self.dst = dst
        self.out = Path(out)
        self.interval = interval
        self.src = src
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> Pinger:
        if self.interval < FAST_PING_BELOW:
            if self.src:
                raise ValueError("fast_ping.py has no source address option")
            argv = [PYTHON, str(Path(__file__).with_name("fast_ping.py")), self.dst, f"{self.interval:g}"]
        else:
            argv = ["ping", "-D", "-n", "-i", f"{self.interval:g}", "-W", "1"]
            if self.src:
                argv += ["-I", self.src]
            argv.append(self.dst)
        with open(self.out, "w") as fh:
            self.proc = self.ns.popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        self.started = time.time()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_pid(self.proc.pid, timeout=3.0, sig=signal.SIGINT)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2.0)

    def __enter__(self) -> Pinger:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def replies(self) -> list[tuple[float, int]]:
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            m = _REPLY_RE.match(line)
            if m:
                out.append((float(m.group("t")), int(m.group("seq"))))
        return out

    def sent(self) -> int:
        """icmp_seq of the last reply (an upper bound of the requests answered so far)."""
        r = self.replies()
        return r[-1][1] if r else 0

    def replies_after(self, t: float) -> int:
        return sum(1 for ts, _ in self.replies() if ts > t)

    def gap(self, t: float, slack: float = 0.15) -> tuple[float, float, float] | None:
        """The silence a move at ``t`` caused: the largest interval between two consecutive
        replies (a, b) where a, the last reply before the silence, lies within ``slack`` seconds
        of ``t`` (a reply already on its way when the link went down arrives just after t).
        Returns (ms, a, b), or None without such a pair."""
        r = [ts for ts, _ in self.replies()]
        pairs = [(b - a, a, b) for a, b in itertools.pairwise(r) if t - slack <= a <= t + slack]
        if not pairs:
            return None
        d, a, b = max(pairs)
        return d * 1000.0, a, b

    def first_reply_after(self, t: float) -> float | None:
        return next((ts for ts, _ in self.replies() if ts > t), None)


# --------------------------------------------------------------------------- raw UDP send

_SEND_FROM = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
for hexdata in sys.stdin.read().split():
    s.sendto(bytes.fromhex(hexdata), (sys.argv[3], int(sys.argv[4])))
"""


def send_from(ns: Netns, src: tuple[str, int], dst: tuple[str, int], payloads: list[bytes]) -> None:
    """Send each payload as one UDP datagram from src (ip, port) to dst, from inside ``ns``."""
    ns.run([PYTHON, "-c", _SEND_FROM, src[0], str(src[1]), dst[0], str(dst[1])],
           input=" ".join(p.hex() for p in payloads), timeout=10)


def ours_roaming(name: str, remote: str, local_id: str, remote_id: str, *, local_ts: str, remote_ts: str,
                 psk: str, ike: str = "aes256gcm16-prfsha256-x25519", esp: str = "aes256gcm16",
                 child: str = "net", **extra) -> dict:
    """One of our connections WITHOUT local_addrs (a roaming client: it follows the kernel's
    source address towards the peer); tests/gateway.py ``connection()`` always sets them."""
    from tests.gateway import connection
    c = connection(name, "0.0.0.0", remote, local_id, remote_id, local_ts=local_ts, remote_ts=remote_ts,
                   psk=psk, ike=ike, esp=esp, child=child, **extra)
    del c["local_addrs"]
    return c
