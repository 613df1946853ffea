"""Shared helpers for dynamic-DNS tests in namespaces (tests/netns_e2e/test_ddns_daemon.py).

The approach is the one of tests/netns_e2e/test_ddns_netns.py: Knot DNS (``knotd -c``) runs as
a child process in a namespace of the test and is stopped by PID; DNS queries and RFC 2136
updates from the test are sent with dnspython from a thread that has ``setns()``-ed into a
namespace (setns is per thread, so the sockets it opens live there).

* :class:`KnotServer` - Knot serving one zone from a zone file, RFC 2136 updates allowed for
  one TSIG key; ``knotc`` over its control socket.
* :func:`in_netns` - run a function in a new thread inside a named namespace.
* :func:`dns_query` / :func:`dns_update` - dnspython query / signed RFC 2136 update, from a
  namespace.
* :func:`ddns_toml` - ``[[ddns]]`` tables as TOML, appended to an ``OurGateway`` config.
* :func:`dyn_topology` - hub, branch, router and DNS namespaces (module docstring of the test).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.gateway import _toml_value
from tests.netns import Netns, NetnsGroup, kill_pid, wait_until

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def knot_available() -> bool:
    return bool(shutil.which("knotd") and shutil.which("knotc"))


# --------------------------------------------------------------------------- threads in a netns


def _setns(ns_name: str) -> None:
    fd = os.open(f"/run/netns/{ns_name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns_name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(ns: Netns | str, fn, timeout: float = 10.0):
    """Run ``fn()`` in a new thread inside namespace ``ns``; return its result (bounded)."""
    name = ns if isinstance(ns, str) else ns.name
    out: dict = {}

    def target():
        try:
            _setns(name)
            out["v"] = fn()
        except BaseException as e:  # handed to the caller
            out["e"] = e
    t = threading.Thread(target=target, name=f"in-{name}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"in_netns({name}) still running after {timeout}s")
    if "e" in out:
        raise out["e"]
    return out["v"]


# --------------------------------------------------------------------------- Knot


@dataclass
class TsigKey:
    name: str          # without the trailing dot, as in our config (tsig_name)
    secret: str        # base64
    algorithm: str = "hmac-sha256"


class KnotServer:
    """Knot DNS in namespace ``ns`` listening on ``address``:53, serving ``zone`` from
    ``zone_text``; ``update_key`` may send RFC 2136 updates (no other restriction)."""

    def __init__(self, ns: Netns, workdir: Path, address: str, zone: str, zone_text: str,
                 update_key: TsigKey, answer_rotation: bool = False):
        self.ns = ns
        self.answer_rotation = answer_rotation  # rotate the order of a set's records per query
        self.dir = Path(workdir) / "knot"
        self.address = address
        self.zone = zone
        self.zone_text = zone_text
        self.key = update_key
        self.sock = str(self.dir / "run" / "knot.sock")
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "knotd.log"

    def start(self, timeout: float = 10.0) -> KnotServer:
        for d in ("run", "db", "zones"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        (self.dir / "zones" / f"{self.zone}.zone").write_text(self.zone_text)
        conf = self.dir / "knot.conf"
        conf.write_text(f"""\
server:
    rundir: "{self.dir}/run"
    listen: [ {self.address}@53 ]
    answer-rotation: {"on" if self.answer_rotation else "off"}
log:
  - target: stderr
    any: info
database:
    storage: "{self.dir}/db"
key:
  - id: {self.key.name}.
    algorithm: {self.key.algorithm}
    secret: {self.key.secret}
acl:
  - id: update
    key: {self.key.name}.
    action: update
control:
    listen: "{self.sock}"
template:
  - id: default
    storage: "{self.dir}/zones"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: changes
zone:
  - domain: {self.zone}
    acl: update
""")
        with open(self.log, "w") as fh:
            self.proc = self.ns.popen(["knotd", "-c", str(conf)], stdout=fh, stderr=subprocess.STDOUT)

        def loaded():
            if self.proc.poll() is not None:
                raise RuntimeError("knotd exited:\n" + self.log.read_text(errors="replace"))
            r = self.knotc("zone-status", self.zone, check=False)
            return r.returncode == 0 and "serial: " in r.stdout and "serial: none" not in r.stdout
        wait_until(loaded, timeout=timeout, what=f"knotd serving {self.zone}")
        return self

    def knotc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["knotc", "-s", self.sock, *args], capture_output=True, text=True, timeout=10)
        if check and r.returncode != 0:
            raise RuntimeError(f"knotc {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert kill_pid(self.proc.pid, timeout=5), "knotd did not stop"
            self.proc.wait(timeout=5)

    def query(self, name: str, rtype: str = "A", from_ns: Netns | None = None) -> tuple[list[str], int | None]:
        return dns_query(from_ns or self.ns, self.address, name, rtype)

    def update(self, name: str, rtype: str, values: list[str], ttl: int,
               from_ns: Netns | None = None, key: TsigKey | None = None) -> str:
        return dns_update(from_ns or self.ns, self.address, self.zone, name, rtype, values, ttl,
                          key or self.key)


# --------------------------------------------------------------------------- dnspython


def dns_query(ns: Netns, server: str, name: str, rtype: str = "A") -> tuple[list[str], int | None]:
    """Ask ``server`` (from namespace ``ns``): (sorted record texts, TTL), ([], None) if none."""
    import dns.message
    import dns.query
    import dns.rdatatype

    def q():
        resp = dns.query.udp(dns.message.make_query(name, rtype), server, timeout=2)
        rrs = [rr for rr in resp.answer if rr.rdtype == dns.rdatatype.from_text(rtype)]
        if not rrs:
            return [], None
        return sorted(r.to_text() for r in rrs[0]), rrs[0].ttl
    return in_netns(ns, q, timeout=10)


def dns_update(ns: Netns, server: str, zone: str, name: str, rtype: str, values: list[str], ttl: int,
               key: TsigKey) -> str:
    """RFC 2136: replace ``name``'s ``rtype`` set by ``values``, signed with ``key``. Returns the
    rcode text (``"NOERROR"``)."""
    import dns.name
    import dns.query
    import dns.rcode
    import dns.tsigkeyring
    import dns.update

    def u():
        keyname = dns.name.from_text(key.name)
        upd = dns.update.UpdateMessage(zone, keyring=dns.tsigkeyring.from_text({key.name: key.secret}),
                                       keyname=keyname, keyalgorithm=key.algorithm)
        rel = dns.name.from_text(name).relativize(dns.name.from_text(zone))
        upd.replace(rel, ttl, rtype, *values)
        resp = dns.query.udp(upd, server, timeout=3)
        return dns.rcode.to_text(resp.rcode())
    return in_netns(ns, u, timeout=10)


# --------------------------------------------------------------------------- config


def ddns_toml(tables: list[dict]) -> str:
    """``[[ddns]]`` tables (dicts) as TOML text, to append to a gateway's config file."""
    out = []
    for t in tables:
        out.append("\n[[ddns]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in t.items()]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- topology

HUB_WAN, HUB_RTR = "192.0.2.1", "192.0.2.126"          # 192.0.2.0/25
DNS_IP, WEB_IP, DNS_RTR = "192.0.2.153", "192.0.2.180", "192.0.2.254"  # 192.0.2.128/25
BR_OLD, BR_OLD_RTR = "198.51.100.1", "198.51.100.254"  # 198.51.100.0/24
BR_NEW, BR_NEW_RTR = "203.0.113.1", "203.0.113.254"    # 203.0.113.0/24, same link
HUB_LAN, HUB_HOST = "10.0.0.0/24", "10.0.0.2"
BR_LAN, BR_HOST = "10.1.0.0/24", "10.1.0.2"


@dataclass
class DynTopology:
    router: Netns
    dns: Netns
    hub: Netns
    hh: Netns | None
    branch: Netns | None
    bh: Netns | None

    def move_branch(self) -> None:
        """The branch's WAN address changes from BR_OLD to BR_NEW (another documentation
        subnet on the same link; the router routes both)."""
        b = self.branch
        b.del_addr("wan", f"{BR_OLD}/24")   # takes the default route with it
        b.add_addr("wan", f"{BR_NEW}/24")
        b.ip("route", "replace", "default", "via", BR_NEW_RTR)

    def renumber_hub(self, old: str, new: str) -> None:
        """The hub's WAN address changes from ``old`` to ``new`` (both in 192.0.2.0/25) without
        losing its default route: ``new`` is added, then ``old`` deleted, with
        ``promote_secondaries`` on (else deleting the primary address deletes ``new`` too)."""
        self.hub.sysctl("net/ipv4/conf/wan/promote_secondaries", 1)
        self.hub.add_addr("wan", f"{new}/25")
        self.hub.del_addr("wan", f"{old}/25")


def dyn_topology(grp: NetnsGroup, branch: bool = True, hosts: bool = True) -> DynTopology:
    """::

        hh 10.0.0.2 -- 10.0.0.1 hub wan 192.0.2.1/25 -- 192.0.2.126 r
                        dns eth0 192.0.2.153 (Knot), 192.0.2.180 (web) -- 192.0.2.254 r
        bh 10.1.0.2 -- 10.1.0.1 br wan 198.51.100.1/24 -- 198.51.100.254 r
                                       (later 203.0.113.1/24) -- 203.0.113.254 r (same link)

    The router knows only the outer networks: hub-to-branch host traffic needs a tunnel.
    """
    r = grp.add("r", forwarding=True)
    d = grp.add("dns")
    hub = grp.add("hub", forwarding=True)
    grp.veth(hub, "wan", r, "tohub", a_addrs=[f"{HUB_WAN}/25"], b_addrs=[f"{HUB_RTR}/25"])
    grp.veth(d, "eth0", r, "todns", a_addrs=[f"{DNS_IP}/25", f"{WEB_IP}/25"], b_addrs=[f"{DNS_RTR}/25"])
    hub.ip("route", "add", "default", "via", HUB_RTR)
    d.ip("route", "add", "default", "via", DNS_RTR)
    hh = br = bh = None
    if hosts:
        hh = grp.add("hh")
        grp.veth(hh, "eth0", hub, "lan", a_addrs=[f"{HUB_HOST}/24"], b_addrs=["10.0.0.1/24"])
        hh.ip("route", "add", "default", "via", "10.0.0.1")
    if branch:
        br = grp.add("br", forwarding=True)
        grp.veth(br, "wan", r, "tobr", a_addrs=[f"{BR_OLD}/24"], b_addrs=[f"{BR_OLD_RTR}/24", f"{BR_NEW_RTR}/24"])
        br.ip("route", "add", "default", "via", BR_OLD_RTR)
        if hosts:
            bh = grp.add("bh")
            grp.veth(bh, "eth0", br, "lan", a_addrs=[f"{BR_HOST}/24"], b_addrs=["10.1.0.1/24"])
            bh.ip("route", "add", "default", "via", "10.1.0.1")
    hub.wait_ping(DNS_IP, timeout=10)
    if br is not None:
        br.wait_ping(HUB_WAN, timeout=10)
    return DynTopology(r, d, hub, hh, br, bh)
