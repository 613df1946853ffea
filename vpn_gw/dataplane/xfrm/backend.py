"""The Linux kernel XFRM data plane: the kernel encrypts, the daemon installs SAs and policies.

Two modes, per connection (as in the userspace data plane, vpn_gw.dataplane.userspace.plane):

* policy-based (no ``interface``): per Child SA, one policy per (local selector, remote
  selector) block and direction (out, in, fwd), each with a template naming the SA by reqid
  and tunnel addresses. The kernel picks the SA for outbound packets by policy lookup.
* route-based (``interface = "name"``): an XFRM interface per connection with its own if_id;
  the policies (normally 0.0.0.0/0 <-> 0.0.0.0/0) and the SAs carry that if_id, so only what
  the routing table sends into the interface is encrypted with them. The interface MTU is the
  tunnel MTU (path MTU minus the exact ESP overhead), so the kernel fragments clear packets
  *before* encryption (red-side) or answers "fragmentation needed" / "packet too big".

Ownership: everything this backend installs carries a reqid from its range (``reqid_base`` ..
``reqid_base + reqid_count - 1``; policies through their templates), optionally a mark, and the
interfaces it creates have the alias ``vpn-gw``. ``close()`` removes exactly what it installed;
``start()`` first removes leftovers of a crashed previous run *of its own* (same range / alias)
and never touches other SAs, policies or links (strongSwan's, hand-made ``ip xfrm`` ones).

Rekeying without loss: a rekeyed Child SA (``ChildUp.rekey_of``) reuses the reqid of the SA it
replaces, so the policies stay as they are; the new SAs are added while the old ones still
exist (the kernel prefers the newest SA for outbound packets), and the old SAs are deleted only
when the engine reports the old Child SA down.

Events (ACQUIRE, EXPIRE soft/hard, MAPPING) are read from the XFRM multicast groups and handed
to ``on_event(kind, info)`` if set (logged otherwise). Counters come from XFRM_MSG_GETSA.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from esp.cipher import EspOverhead
from esp.fragment import tunnel_mtu
from ikev2.events import Address, ChildUp
from vpn_gw.dataplane import ChildCounters, DataPlane
from vpn_gw.dataplane.xfrm import netlink as nl

log = structlog.get_logger("vpn_gw.dataplane")

DEFAULT_REQID_BASE = 0x56470000  # "VG": far above strongSwan's reqids (1, 2, ...)
DEFAULT_REQID_COUNT = 0x10000
DEFAULT_PRIORITY_BASE = 0x30000  # lower number = preferred; more specific selectors subtract
LINK_ALIAS = "vpn-gw"
KEEPALIVE = b"\xff"
DEFAULT_IF_ID_BASE = 0x56470001

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
IFF_UP = 1

# IKEv2 transform IDs -> kernel algorithm names
_AEAD = {  # encr id: (name, icv bits)
    18: ("rfc4106(gcm(aes))", 64),
    19: ("rfc4106(gcm(aes))", 96),
    20: ("rfc4106(gcm(aes))", 128),
    21: ("rfc4543(gcm(aes))", 128),  # NULL_AUTH_AES_GMAC
    28: ("rfc7539esp(chacha20,poly1305)", 128),
}
_CRYPT = {11: "ecb(cipher_null)", 12: "cbc(aes)", 13: "rfc3686(ctr(aes))", 3: "cbc(des3_ede)"}
_AUTH = {  # integ id: (name, truncation bits)
    1: ("hmac(md5)", 96),
    2: ("hmac(sha1)", 96),
    5: ("xcbc(aes)", 96),
    8: ("cmac(aes)", 96),
    12: ("hmac(sha256)", 128),
    13: ("hmac(sha384)", 192),
    14: ("hmac(sha512)", 256),
}


class XfrmError(RuntimeError):
    pass


def overhead_for(encr_id: int, integ_id: int | None) -> EspOverhead:
    """IV, ICV and alignment of an ESP transform (for the tunnel MTU)."""
    if encr_id in _AEAD:
        return EspOverhead(8, _AEAD[encr_id][1] // 8, 4)
    icv = _AUTH.get(integ_id or 0, ("", 0))[1] // 8
    if encr_id == 12:
        return EspOverhead(16, icv, 16)
    if encr_id == 3:
        return EspOverhead(8, icv, 8)
    if encr_id == 13:
        return EspOverhead(8, icv, 4)
    return EspOverhead(0, icv, 4)


def algorithm_attrs(encr_id: int, key_bits: int | None, integ_id: int | None, encr_key: bytes,
                    integ_key: bytes) -> list[tuple[str, dict]]:
    """XFRMA_ALG_AEAD, or XFRMA_ALG_CRYPT + XFRMA_ALG_AUTH_TRUNC, for one SA direction."""
    if encr_id in _AEAD:
        name, icv = _AEAD[encr_id]
        return [("XFRMA_ALG_AEAD", {"alg_name": name, "alg_key_len": len(encr_key) * 8,
                                    "alg_icv_len": icv, "alg_key": bytes(encr_key)})]
    if encr_id not in _CRYPT:
        raise XfrmError(f"ESP encryption transform {encr_id} has no kernel algorithm here")
    attrs: list[tuple[str, dict]] = [("XFRMA_ALG_CRYPT", {"alg_name": _CRYPT[encr_id],
                                                          "alg_key_len": len(encr_key) * 8,
                                                          "alg_key": bytes(encr_key)})]
    if integ_id:
        if integ_id not in _AUTH:
            raise XfrmError(f"ESP integrity transform {integ_id} has no kernel algorithm here")
        name, trunc = _AUTH[integ_id]
        attrs.append(("XFRMA_ALG_AUTH_TRUNC", {"alg_name": name, "alg_key_len": len(integ_key) * 8,
                                               "alg_trunc_len": trunc, "alg_key": bytes(integ_key)}))
    elif encr_id != 21:
        raise XfrmError("ESP without integrity protection is refused")
    return attrs


# --------------------------------------------------------------------------- selectors

def _port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """(port, mask) blocks covering lo..hi exactly (like CIDR for 16-bit ports)."""
    if (lo, hi) == (0, 65535) or lo > hi:
        return [(0, 0)]
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, (0xFFFF << (size.bit_length() - 1)) & 0xFFFF))
        lo += size
    return out


def selector_blocks(ts) -> list[tuple[ipaddress._BaseNetwork, int, int, int]]:
    """A traffic selector as (network, protocol, port, port mask) blocks an xfrm_selector holds."""
    nets = list(ipaddress.summarize_address_range(ts.start_addr, ts.end_addr))
    ports = _port_blocks(ts.start_port, ts.end_port) if ts.ip_protocol in (0, 6, 17, 132) else [(0, 0)]
    return [(n, ts.ip_protocol, p, m) for n in nets for p, m in ports]


def make_selector(src, dst) -> dict:
    """xfrm_selector from two blocks (network, proto, port, mask)."""
    (sn, proto, sp, sm), (dn, proto2, dp, dm) = src, dst
    proto = proto or proto2
    fam = nl.AF_INET if sn.version == 4 else nl.AF_INET6
    return {"saddr": str(sn.network_address), "prefixlen_s": sn.prefixlen, "sport": sp, "sport_mask": sm,
            "daddr": str(dn.network_address), "prefixlen_d": dn.prefixlen, "dport": dp, "dport_mask": dm,
            "proto": proto, "family": fam}


def _sel_key(sel: dict) -> tuple:
    return (sel["family"], sel["saddr"], sel["prefixlen_s"], sel["daddr"], sel["prefixlen_d"],
            sel.get("proto", 0), sel.get("sport", 0), sel.get("sport_mask", 0), sel.get("dport", 0),
            sel.get("dport_mask", 0))


def _family(ip: str) -> int:
    return nl.AF_INET6 if ":" in ip else nl.AF_INET


# --------------------------------------------------------------------------- bookkeeping

@dataclass
class _Policy:
    sel: dict
    dir: int
    if_id: int
    tmpl: dict
    priority: int
    owner: int  # reqid whose template it carries now

    @property
    def key(self) -> tuple:
        return (_sel_key(self.sel), self.dir, self.if_id)


@dataclass
class _Child:
    conn: str
    ike_id: int
    spi_in: bytes
    spi_out: bytes
    reqid: int
    local: Address
    remote: Address
    encap: bool
    mode: int
    if_id: int
    ifname: str | None
    keys: Any  # ikev2.events.ChildSAKeys, kept to re-install on address changes
    local_ts: list
    remote_ts: list
    policy_keys: list[tuple] = field(default_factory=list)
    reqid_out: int = 0  # differs from reqid while a rekeyed SA waits to take over outbound traffic
    installed_in: bool = False
    installed_out: bool = False
    counter_base: dict = field(default_factory=dict)  # inbound -> (bytes, packets) before a MIGRATE
    limits: tuple = (0, 0, 0, 0)  # soft/hard bytes, soft/hard packets (0 = none): kernel EXPIRE events


@dataclass
class _Trap:
    conn: str
    reqid: int
    policies: dict[tuple, _Policy] = field(default_factory=dict)


@dataclass
class _Interface:
    name: str
    index: int
    if_id: int
    created: bool  # by us (deleted on close) or found (left alone)


class XfrmDataPlane(DataPlane):
    name = "xfrm"

    def __init__(self, send_udp: Callable[[bytes, Address, Address], None] | None = None,
                 interface_for: Callable[[str], str | None] = lambda conn: None, *,
                 if_id_for: Callable[[str], int | None] = lambda ifname: None,
                 path_mtu: int = 1500, keepalive_interval: float = 20.0, replay_window: int = 1024,
                 reqid_base: int = DEFAULT_REQID_BASE, reqid_count: int = DEFAULT_REQID_COUNT,
                 priority_base: int = DEFAULT_PRIORITY_BASE, mark: tuple[int, int] | None = None,
                 netns: str | None = None, on_event: Callable[[str, dict], None] | None = None,
                 endpoints_for: Callable[[str], tuple[str | None, str | None]] = lambda conn: (None, None),
                 rekey_grace: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 require_esp: bool = True,
                 fragmenter: Any = None):
        self.send_udp = send_udp
        # Red-side fragmentation for policy-based tunnels (vpn_gw.dataplane.xfrm.fragmenter.RedFragmenter):
        # route-based ones get it from the XFRM interface MTU.
        self.fragmenter = fragmenter
        self.interface_for = interface_for
        self.if_id_for = if_id_for
        self.path_mtu = path_mtu
        self.keepalive_interval = keepalive_interval
        self.replay_window = replay_window
        self.reqid_base = reqid_base
        self.reqid_count = reqid_count
        self.priority_base = priority_base
        self.mark = mark
        self.netns = netns
        self.on_event = on_event
        self.endpoints_for = endpoints_for  # trap templates: (local IP, remote IP) of a connection
        self.clock = clock
        self.require_esp = require_esp  # start() refuses a kernel without ESP (tests on such kernels: False)
        # After a rekey the old inbound SA lives on for rekey_grace seconds: the peer may still
        # send with it until it has processed the DELETE (the side that answers a DELETE removes
        # its SAs half a round trip before the other side switches over).
        self.rekey_grace = rekey_grace
        self._deferred: list[tuple[float, _Child]] = []
        # Hooks the daemon sets (same contract as the userspace data plane):
        self.on_acquire: Callable[[str], None] | None = None  # trapped traffic for a connection
        self.on_peer_moved: Callable[[int, Address, Address], None] | None = None  # NAT mapping changed
        self.traps: dict[str, _Trap] = {}
        self.vips: dict[str, tuple[int, list[str]]] = {}
        self._rx_seen: dict[bytes, tuple[int, float, float]] = {}  # spi_in -> (packets, changed at, polled at)
        self.xfrm: nl.XfrmSocket | None = None
        self.rtnl: nl.XfrmSocket | None = None
        self.events: nl.XfrmSocket | None = None
        self.children: dict[bytes, _Child] = {}
        self.policies: dict[tuple, _Policy] = {}
        self.interfaces: dict[str, _Interface] = {}
        self.unmatched: dict[str, int] = {}
        self.event_log: list[tuple[str, dict]] = []  # last events (bounded), for status and tests
        self._next_reqid = 0
        self._next_if_id = DEFAULT_IF_ID_BASE
        self._keepalive_task: asyncio.Task | None = None
        self._reader_fd: int | None = None
        self._expiries: list[tuple[bytes, str]] = []  # from kernel EXPIRE events, drained by expiries()
        self._expiry_reported: dict[bytes, str] = {}
        self.use_migrate = True  # XFRM_MSG_MIGRATE for address moves (off when the kernel lacks it)
        self.moves: dict[str, int] = {}  # Child SA moves by method (update, migrate, re-create)

    def expiries(self, now: float) -> list[tuple[bytes, str]]:
        out, self._expiries = self._expiries, []
        for spi in [s for s in self._expiry_reported if s not in self.children]:
            del self._expiry_reported[spi]
        return [(spi, st) for spi, st in out if spi in self.children]

    def stats(self) -> dict:
        out = super().stats()
        out["moves"] = dict(self.moves)
        out["migrate"] = self.use_migrate
        if self.fragmenter is not None:
            out["fragmenter"] = dict(self.fragmenter.counters)
        return out

    # ------------------------------------------------------------------ lifecycle

    def open(self, events: bool = True) -> None:
        """Open the netlink sockets and remove leftovers of a crashed run (synchronous part of
        start(); tests without an event loop call it directly)."""
        if self.xfrm is not None:
            return
        try:
            self.xfrm = nl.XfrmSocket(nl.NETLINK_XFRM, netns=self.netns)
            self.rtnl = nl.XfrmSocket(nl.NETLINK_ROUTE, netns=self.netns)
            if events:
                self.events = nl.XfrmSocket(
                    nl.NETLINK_XFRM, netns=self.netns,
                    groups=nl.group_mask(nl.XFRMNLGRP_ACQUIRE, nl.XFRMNLGRP_EXPIRE, nl.XFRMNLGRP_MAPPING),
                ).set_nonblocking()
        except OSError as e:
            self._close_sockets()
            raise XfrmError(f"cannot open XFRM netlink sockets (kernel without XFRM_USER?): {e}") from e
        self.sweep_leftovers()
        if self.fragmenter is not None and self.fragmenter.netns is None:
            self.fragmenter.netns = self.netns

    def _start_fragmenter(self, loop) -> None:
        from vpn_gw.dataplane.xfrm.fragmenter import FragmenterError
        try:
            self.fragmenter.start(loop)
        except FragmenterError as e:
            # Fail-open by nature: the tunnel works, oversized DF-clear packets are encrypted whole
            # and the kernel fragments the ESP packet instead.
            log.error("red-side fragmentation for policy-based tunnels is off", error=str(e))
            self.fragmenter = None

    def check_kernel_esp(self) -> None:
        """Install and remove one throwaway ESP SA (AES-CBC/HMAC-SHA-256, a TEST-NET-1 address,
        one of our reqids): a kernel without ESP support accepts policies but refuses SAs, and
        that must stop the daemon at start with a clear message, not fail every Child SA later."""
        assert self.xfrm is not None
        reqid = self.reqid_base + self.reqid_count - 1  # ours, swept after a crash like the rest
        info = {"id": {"daddr": "192.0.2.254", "spi": 0xFFFFFF01, "proto": nl.IPPROTO_ESP},
                "saddr": "192.0.2.253", "family": nl.AF_INET, "mode": nl.XFRM_MODE_TUNNEL, "reqid": reqid,
                "flags": nl.XFRM_STATE_AF_UNSPEC}
        attrs = [("XFRMA_ALG_CRYPT", {"alg_name": "cbc(aes)", "alg_key": bytes(16)}),
                 ("XFRMA_ALG_AUTH_TRUNC", {"alg_name": "hmac(sha256)", "alg_key_len": 256, "alg_trunc_len": 128,
                                           "alg_key": bytes(32)})] + self._mark_attrs()
        try:
            self.xfrm.add_sa(info, attrs)
        except nl.NetlinkError as e:
            raise XfrmError(f"this kernel refuses ESP SAs ({e}): it lacks ESP support (esp4/esp6 "
                            f"modules or CONFIG_INET_ESP); use dataplane = \"userspace\"") from None
        try:
            self.xfrm.del_sa("192.0.2.254", 0xFFFFFF01, nl.IPPROTO_ESP, self._mark_attrs())
        except nl.NetlinkError as e:
            log.warning("cannot remove the ESP probe SA", error=str(e))

    async def start(self) -> None:
        self.open()
        if self.require_esp:
            self.check_kernel_esp()
        loop = asyncio.get_running_loop()
        if self.events is not None:
            self._reader_fd = self.events.fileno()
            loop.add_reader(self._reader_fd, self.poll_events)
        if self.fragmenter is not None:
            self._start_fragmenter(loop)
        if self.keepalive_interval and self.send_udp is not None:
            self._keepalive_task = loop.create_task(self._keepalives())
        log.info("XFRM data plane started", reqids=f"{self.reqid_base:#x}+{self.reqid_count:#x}",
                 netns=self.netns)

    async def close(self) -> None:
        if self._keepalive_task:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        if self._reader_fd is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._reader_fd)
            except (RuntimeError, ValueError, OSError):
                pass
            self._reader_fd = None
        self.shutdown()

    def shutdown(self) -> None:
        """Remove every SA, policy and interface this instance installed; close the sockets."""
        if self.xfrm is None:
            return
        for c in list(self.children.values()):
            self.remove_child(c.spi_in, c.spi_out)
        self.reap_deferred(force=True)
        for p in list(self.policies.values()):
            self._del_policy(p)
        self.policies.clear()
        self.traps.clear()
        for conn in list(self.vips):
            self.remove_virtual_ips(conn)
        for itf in list(self.interfaces.values()):
            if itf.created:
                self._link_del(itf.index, itf.name)
        self.interfaces.clear()
        if self.fragmenter is not None:
            self.fragmenter.close()
        self._close_sockets()
        log.info("XFRM data plane stopped")

    def _close_sockets(self) -> None:
        for s in (self.xfrm, self.rtnl, self.events):
            if s is not None:
                s.close()
        self.xfrm = self.rtnl = self.events = None

    # ------------------------------------------------------------------ ownership

    def owns_reqid(self, reqid: int) -> bool:
        return self.reqid_base <= reqid < self.reqid_base + self.reqid_count

    def _mark_attrs(self) -> list:
        return [("XFRMA_MARK", {"v": self.mark[0], "m": self.mark[1]})] if self.mark else []

    def _mark_matches(self, msg) -> bool:
        m = nl.get_attr(msg, "XFRMA_MARK")
        if self.mark is None:
            return True
        return bool(m) and (m["v"], m["m"]) == tuple(self.mark)

    def sweep_leftovers(self) -> dict[str, int]:
        """Delete SAs and policies in our reqid range (and mark), and XFRM links with our alias:
        what a previous run of this daemon left when it crashed. Returns what was removed."""
        assert self.xfrm is not None
        removed = {"sas": 0, "policies": 0, "links": 0}
        for sa in self.xfrm.dump_sa():
            if self.owns_reqid(sa["reqid"]) and self._mark_matches(sa):
                try:
                    self.xfrm.del_sa(sa["id"]["daddr"], sa["id"]["spi"], sa["id"]["proto"],
                                     self._identity_attrs(sa))
                    removed["sas"] += 1
                except nl.NetlinkError as e:
                    log.warning("cannot remove leftover SA", spi=f"{sa['id']['spi']:08x}", error=str(e))
        for pol in self.xfrm.dump_policy():
            tmpls = nl.get_attr(pol, "XFRMA_TMPL") or []
            if tmpls and all(self.owns_reqid(t["reqid"]) for t in tmpls) and self._mark_matches(pol):
                try:
                    self.xfrm.del_policy(pol["sel"], pol["dir"], self._identity_attrs(pol))
                    removed["policies"] += 1
                except nl.NetlinkError as e:
                    log.warning("cannot remove leftover policy", error=str(e))
        for link in self._links():
            if link["alias"] == LINK_ALIAS and link["kind"] == "xfrm":
                self._link_del(link["index"], link["name"])
                removed["links"] += 1
        if any(removed.values()):
            log.warning("removed leftovers of a previous run", **removed)
        return removed

    @staticmethod
    def _identity_attrs(msg) -> list:
        """The attributes that identify an SA/policy besides its fixed part (mark, if_id)."""
        out = []
        a = nl.attrs_dict(msg)
        if a.get("XFRMA_MARK"):
            out.append(("XFRMA_MARK", {"v": a["XFRMA_MARK"]["v"], "m": a["XFRMA_MARK"]["m"]}))
        if a.get("XFRMA_IF_ID"):
            out.append(("XFRMA_IF_ID", a["XFRMA_IF_ID"]))
        return out

    def _alloc_reqid(self) -> int:
        used = {c.reqid for c in self.children.values()} | {c.reqid_out for c in self.children.values()} | \
            {t.reqid for t in self.traps.values()}
        for _ in range(self.reqid_count):
            r = self.reqid_base + self._next_reqid
            self._next_reqid = (self._next_reqid + 1) % self.reqid_count
            if r not in used and r != 0:
                return r
        raise XfrmError("reqid range exhausted")

    # ------------------------------------------------------------------ interfaces (route-based)

    def _links(self) -> list[dict]:
        assert self.rtnl is not None
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        seq = self.rtnl._next_seq()
        m = ifinfmsg()
        m["family"] = 0
        m["header"]["type"] = RTM_GETLINK
        m["header"]["flags"] = nl.NLM_F_REQUEST | nl.NLM_F_DUMP
        m["header"]["sequence_number"] = seq
        m.encode()
        out = []
        for msg in self.rtnl.transact(bytes(m.data), seq, "dump links", dump=True,
                                      classes={RTM_NEWLINK: ifinfmsg}):
            kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if_id = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_XFRM_IF_ID") if kind == "xfrm" else None
            out.append({"index": msg["index"], "name": msg.get_attr("IFLA_IFNAME"), "kind": kind,
                        "alias": msg.get_attr("IFLA_IFALIAS"), "if_id": if_id, "mtu": msg.get_attr("IFLA_MTU"),
                        "up": bool(msg["flags"] & IFF_UP)})
        return out

    def _link_request(self, msg_type: int, flags: int, index: int = 0, attrs: list | None = None,
                      up: bool | None = None, what: str = "") -> None:
        assert self.rtnl is not None
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        seq = self.rtnl._next_seq()
        m = ifinfmsg()
        m["family"] = 0
        m["index"] = index
        if up is not None:
            m["flags"] = IFF_UP if up else 0
            m["change"] = IFF_UP
        m["attrs"] = attrs or []
        m["header"]["type"] = msg_type
        m["header"]["flags"] = nl.NLM_F_REQUEST | nl.NLM_F_ACK | flags
        m["header"]["sequence_number"] = seq
        m.encode()
        self.rtnl.transact(bytes(m.data), seq, what, classes={})

    def _link_del(self, index: int, name: str) -> None:
        try:
            self._link_request(RTM_DELLINK, 0, index=index, what=f"delete interface {name}")
            log.info("XFRM interface deleted", interface=name)
        except nl.NetlinkError as e:
            log.warning("cannot delete XFRM interface", interface=name, error=str(e))

    def _set_mtu(self, itf: _Interface, mtu: int) -> None:
        try:
            self._link_request(RTM_NEWLINK, 0, index=itf.index, attrs=[("IFLA_MTU", mtu)],
                               what=f"set MTU of {itf.name}")
        except nl.NetlinkError as e:
            log.warning("cannot set the XFRM interface MTU", interface=itf.name, mtu=mtu, error=str(e))

    def ensure_interface(self, name: str) -> None:
        self._interface(name)

    def _interface(self, name: str) -> _Interface:
        itf = self.interfaces.get(name)
        if itf is not None:
            return itf
        if self.xfrm is None:
            self.open()
        existing = next((link for link in self._links() if link["name"] == name), None)
        if existing is not None:
            if existing["kind"] != "xfrm":
                raise XfrmError(f"interface {name} exists and is not an XFRM interface ({existing['kind']})")
            wanted = self.if_id_for(name)
            if wanted is not None and wanted != existing["if_id"]:
                raise XfrmError(f"XFRM interface {name} exists with if_id {existing['if_id']}, config says {wanted}")
            itf = _Interface(name, existing["index"], existing["if_id"], existing["alias"] == LINK_ALIAS)
            if not existing["up"]:
                self._link_request(RTM_NEWLINK, 0, index=itf.index, up=True, what=f"bring up {name}")
            log.info("using existing XFRM interface", interface=name, if_id=itf.if_id)
        else:
            if_id = self.if_id_for(name)
            if if_id is None:
                in_use = {i.if_id for i in self.interfaces.values()} | {
                    link["if_id"] for link in self._links() if link["kind"] == "xfrm"}
                while self._next_if_id in in_use:
                    self._next_if_id += 1
                if_id = self._next_if_id
                self._next_if_id += 1
            mtu = tunnel_mtu(self.path_mtu, 6, overhead_for(12, 14), udp_encap=True)  # worst case until an SA is up
            data = [("IFLA_XFRM_IF_ID", if_id)]
            attrs = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu),
                     ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "xfrm"),
                                                  ("IFLA_INFO_DATA", {"attrs": data})]})]
            try:
                self._link_request(RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, attrs=attrs, up=True,
                                   what=f"create XFRM interface {name}")
            except nl.NetlinkError:
                # Kernels before 6.? want an underlying device: loopback works for any route.
                data.append(("IFLA_XFRM_LINK", 1))
                self._link_request(RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, attrs=attrs, up=True,
                                   what=f"create XFRM interface {name}")
            link = next((x for x in self._links() if x["name"] == name), None)
            if link is None:
                raise XfrmError(f"XFRM interface {name} was created but cannot be found")
            # The alias marks the link as ours for the leftover sweep (RTM_NEWLINK ignores
            # IFLA_IFALIAS when it creates a link, so it is set afterwards).
            self._link_request(RTM_NEWLINK, 0, index=link["index"], attrs=[("IFLA_IFALIAS", LINK_ALIAS)],
                               what=f"set alias of {name}")
            itf = _Interface(name, link["index"], if_id, True)
            log.info("XFRM interface created", interface=name, if_id=if_id, mtu=mtu)
        self.interfaces[name] = itf
        return itf

    # ------------------------------------------------------------------ SAs

    def _sa_attrs(self, c: _Child, inbound: bool) -> list:
        k = c.keys
        attrs: list[tuple[str, Any]] = algorithm_attrs(k.encr_id, k.encr_key_bits, k.integ_id,
                                k.encr_key_in if inbound else k.encr_key_out,
                                k.integ_key_in if inbound else k.integ_key_out)
        window = self.replay_window if (self.replay_window or k.esn) else 0
        if k.esn and window == 0:
            window = 32  # the kernel wants a window with ESN; anti-replay off is not possible then
        if window:
            attrs.append(("XFRMA_REPLAY_ESN_VAL", {"bmp_len": (window + 31) // 32, "replay_window": window}))
        if c.encap:
            local_port, remote_port = c.local[1], c.remote[1]
            attrs.append(("XFRMA_ENCAP", {"encap_type": nl.UDP_ENCAP_ESPINUDP,
                                          "encap_sport": remote_port if inbound else local_port,
                                          "encap_dport": local_port if inbound else remote_port}))
        if c.if_id:
            attrs.append(("XFRMA_IF_ID", c.if_id))
        attrs += self._mark_attrs()
        return attrs

    def _sa_info(self, c: _Child, inbound: bool) -> dict:
        src, dst = (c.remote[0], c.local[0]) if inbound else (c.local[0], c.remote[0])
        spi = c.spi_in if inbound else c.spi_out
        flags = nl.XFRM_STATE_AF_UNSPEC if c.mode == nl.XFRM_MODE_TUNNEL else 0
        if c.keys.esn:
            flags |= nl.XFRM_STATE_ESN
        lft = {k: v for k, v in (("soft_byte_limit", c.limits[0]), ("hard_byte_limit", c.limits[1]),
                                 ("soft_packet_limit", c.limits[2]), ("hard_packet_limit", c.limits[3])) if v}
        return {"id": {"daddr": dst, "spi": int.from_bytes(spi, "big"), "proto": nl.IPPROTO_ESP},
                "saddr": src, "family": _family(dst), "mode": c.mode, "lft": lft,
                "reqid": c.reqid if inbound else (c.reqid_out or c.reqid), "flags": flags,
                "replay_window": 0, "sel": {"family": 0 if c.mode == nl.XFRM_MODE_TUNNEL else _family(dst)}}

    def _add_sa(self, c: _Child, inbound: bool, extra: list | None = None, update: bool = False) -> None:
        assert self.xfrm is not None
        self.xfrm.add_sa(self._sa_info(c, inbound), self._sa_attrs(c, inbound) + (extra or []), update=update)

    def _del_sa(self, c: _Child, inbound: bool) -> None:
        assert self.xfrm is not None
        daddr = c.local[0] if inbound else c.remote[0]
        spi = c.spi_in if inbound else c.spi_out
        attrs = ([("XFRMA_IF_ID", c.if_id)] if c.if_id else []) + self._mark_attrs()
        try:
            self.xfrm.del_sa(daddr, int.from_bytes(spi, "big"), nl.IPPROTO_ESP, attrs)
        except nl.NetlinkError as e:
            if e.code != 3:  # ESRCH: already gone (hard expiry)
                log.warning("cannot delete SA", spi=spi.hex(), error=str(e))

    def _get_sa(self, c: _Child, inbound: bool):
        assert self.xfrm is not None
        daddr = c.local[0] if inbound else c.remote[0]
        spi = c.spi_in if inbound else c.spi_out
        attrs = ([("XFRMA_IF_ID", c.if_id)] if c.if_id else []) + self._mark_attrs()
        try:
            return self.xfrm.get_sa(daddr, int.from_bytes(spi, "big"), nl.IPPROTO_ESP, attrs)
        except nl.NetlinkError:
            return None

    # ------------------------------------------------------------------ policies

    def _priority(self, sel: dict) -> int:
        spec = (sel["prefixlen_s"] + sel["prefixlen_d"]) * 4 + (2 if sel.get("proto") else 0) + \
            (1 if sel.get("sport_mask") or sel.get("dport_mask") else 0)
        return max(self.priority_base - spec, 1)

    def _policy_attrs(self, p: _Policy) -> list:
        attrs: list = [("XFRMA_TMPL", [p.tmpl])]
        if p.if_id:
            attrs.append(("XFRMA_IF_ID", p.if_id))
        return attrs + self._mark_attrs()

    def _put_policy(self, p: _Policy) -> None:
        """Install (or take over our own existing) policy; never overwrite someone else's."""
        assert self.xfrm is not None
        info = {"sel": p.sel, "dir": p.dir, "priority": p.priority, "action": nl.XFRM_POLICY_ALLOW}
        if p.key in self.policies:
            self.xfrm.add_policy(info, self._policy_attrs(p), update=True)
            return
        try:
            self.xfrm.add_policy(info, self._policy_attrs(p))
        except nl.NetlinkError as e:
            if e.code != 17:  # EEXIST
                raise
            ident = ([("XFRMA_IF_ID", p.if_id)] if p.if_id else []) + self._mark_attrs()
            cur = self.xfrm.get_policy(p.sel, p.dir, ident)
            tmpls = (nl.get_attr(cur, "XFRMA_TMPL") or []) if cur is not None else []
            if not tmpls or not all(self.owns_reqid(t["reqid"]) for t in tmpls):
                raise XfrmError(f"a policy for {p.sel['saddr']}/{p.sel['prefixlen_s']} -> "
                                f"{p.sel['daddr']}/{p.sel['prefixlen_d']} (dir {p.dir}) exists "
                                "and is not ours") from None
            self.xfrm.add_policy(info, self._policy_attrs(p), update=True)

    def _del_policy(self, p: _Policy) -> None:
        assert self.xfrm is not None
        ident = ([("XFRMA_IF_ID", p.if_id)] if p.if_id else []) + self._mark_attrs()
        try:
            self.xfrm.del_policy(p.sel, p.dir, ident)
        except nl.NetlinkError as e:
            if e.code != 2:  # ENOENT
                log.warning("cannot delete policy", error=str(e))

    def _policies_for(self, c: _Child) -> list[_Policy]:
        return self._make_policies(c.reqid, c.local[0], c.remote[0], c.mode, c.if_id, c.local_ts, c.remote_ts,
                                   reqid_out=c.reqid_out or c.reqid)

    def _make_policies(self, reqid: int, local_ip: str | None, remote_ip: str | None, mode: int, if_id: int,
                       local_ts: list, remote_ts: list, reqid_out: int | None = None) -> list[_Policy]:
        out = []
        for lts in local_ts:
            for rts in remote_ts:
                if lts.start_addr is None or rts.start_addr is None or lts.start_addr.version != rts.start_addr.version:
                    continue
                fam = _family(remote_ip) if remote_ip else (nl.AF_INET if lts.start_addr.version == 4 else nl.AF_INET6)
                tmpl_base: dict[str, Any] = {"family": fam, "reqid": reqid, "mode": mode}
                t_out = dict(tmpl_base, id={"daddr": remote_ip, "proto": nl.IPPROTO_ESP}, saddr=local_ip,
                             reqid=reqid_out or reqid)
                t_in = dict(tmpl_base, id={"daddr": local_ip, "proto": nl.IPPROTO_ESP}, saddr=remote_ip)
                dirs = [(nl.XFRM_POLICY_OUT, t_out, False), (nl.XFRM_POLICY_IN, t_in, True)]
                if mode == nl.XFRM_MODE_TUNNEL:
                    dirs.append((nl.XFRM_POLICY_FWD, t_in, True))
                for lb in selector_blocks(lts):
                    for rb in selector_blocks(rts):
                        for d, tmpl, inbound in dirs:
                            sel = make_selector(rb, lb) if inbound else make_selector(lb, rb)
                            out.append(_Policy(sel, d, if_id, tmpl, self._priority(sel), tmpl["reqid"]))
        return out

    def _claim(self, p: _Policy) -> None:
        """Make p the installed policy for its key (the newest holder wins)."""
        cur = self.policies.get(p.key)
        if cur is not None and cur.owner == p.owner and cur.tmpl == p.tmpl:
            return  # e.g. a rekey: the policy already points at this reqid and these addresses
        self._put_policy(p)
        self.policies[p.key] = p

    def _release(self, key: tuple, leaving: object) -> None:
        """``leaving`` (a child or a trap) no longer holds the policy ``key``: hand it to the newest
        remaining holder (a rekeyed or newer child, else the connection's trap), or delete it."""
        cur = self.policies.get(key)
        if cur is None:
            return
        heir: _Policy | None = None
        for o in reversed(list(self.children.values())):
            if o is not leaving and key in o.policy_keys:
                heir = next((q for q in self._policies_for(o) if q.key == key), None)
                break
        if heir is None:
            for t in self.traps.values():
                if t is not leaving and key in t.policies:
                    heir = t.policies[key]
                    break
        if heir is None:
            self._del_policy(cur)
            del self.policies[key]
        elif heir.owner != cur.owner or heir.tmpl != cur.tmpl:
            try:
                self._put_policy(heir)
                self.policies[key] = heir
            except (nl.NetlinkError, XfrmError) as e:
                log.warning("cannot hand a policy over", error=str(e))

    # ------------------------------------------------------------------ DataPlane

    def install_child(self, ev: ChildUp) -> None:
        if self.xfrm is None:
            self.open()
        self.reap_deferred()
        k = ev.keys
        old = self.children.get(ev.rekey_of) if ev.rekey_of else None
        ifname = self.interface_for(ev.ike_name)
        try:
            itf = self._interface(ifname) if ifname else None
            trap = self.traps.get(ev.ike_name)
            reqid = old.reqid if old is not None else trap.reqid if trap is not None else self._alloc_reqid()
            mode = nl.XFRM_MODE_TUNNEL if ev.keys.mode == "tunnel" else nl.XFRM_MODE_TRANSPORT
            c = _Child(ev.ike_name, ev.ike_id, k.spi_in, k.spi_out, reqid, ev.local, ev.remote, ev.encap,
                       mode, itf.if_id if itf else 0, ifname, k, list(ev.local_ts), list(ev.remote_ts))
            # A rekeyed SA is accepted inbound at once (same reqid as the IN/FWD templates), but
            # its outbound SA gets its own reqid and takes the OUT policies over only when the old
            # Child SA is removed: by then the peer has installed the new inbound SA too (it
            # sent or answered the DELETE), so no packet goes out with an SPI it cannot know yet.
            c.reqid_out = self._alloc_reqid() if old is not None else reqid
            c.limits = (ev.rekey_bytes, ev.life_bytes, ev.rekey_packets, ev.life_packets)
            algorithm_attrs(k.encr_id, k.encr_key_bits, k.integ_id, k.encr_key_in, k.integ_key_in)  # validate
            # Inbound first: the peer may already send with the new SPI.
            self._add_sa(c, inbound=True)
            c.installed_in = True
            self._add_sa(c, inbound=False)
            c.installed_out = True
            for p in self._policies_for(c):
                if old is not None and p.dir == nl.XFRM_POLICY_OUT and p.key in old.policy_keys:
                    c.policy_keys.append(p.key)  # deferred: handed over in remove_child(old)
                    continue
                self._claim(p)
                c.policy_keys.append(p.key)
        except (nl.NetlinkError, XfrmError, OSError) as e:
            log.error("cannot install CHILD_SA in the kernel", child=ev.child_name, connection=ev.ike_name,
                      error=str(e))
            if "c" in locals():
                self._undo(c)
            return
        self.children[k.spi_in] = c
        if itf is not None:
            fam = 6 if ":" in ev.remote[0] else 4
            mtu = tunnel_mtu(self.path_mtu, fam, overhead_for(k.encr_id, k.integ_id), udp_encap=ev.encap)
            self._set_mtu(itf, mtu)
        else:
            self._fragment_rule(c)
        log.info("CHILD_SA installed in the kernel", child=ev.child_name, connection=ev.ike_name,
                 spi_in=k.spi_in.hex(), spi_out=k.spi_out.hex(), reqid=reqid, interface=ifname,
                 if_id=c.if_id or None, encap=ev.encap, policies=len(c.policy_keys),
                 rekey_of=ev.rekey_of.hex() if ev.rekey_of else None)

    def _fragment_rule(self, c: _Child) -> None:
        """Policy-based tunnel mode: queue its oversized DF-clear IPv4 traffic to the fragmenter."""
        if self.fragmenter is None or c.mode != nl.XFRM_MODE_TUNNEL or c.ifname:
            return
        mtu = tunnel_mtu(self.path_mtu, 6 if ":" in c.remote[0] else 4, overhead_for(c.keys.encr_id, c.keys.integ_id),
                         udp_encap=c.encap)
        self.fragmenter.add(c.spi_in, c.local_ts, c.remote_ts, mtu)

    def _undo(self, c: _Child) -> None:
        if c.installed_out:
            self._del_sa(c, inbound=False)
        if c.installed_in:
            self._del_sa(c, inbound=True)
        self._release_policies(c)

    def _release_policies(self, c: _Child) -> None:
        keys, c.policy_keys = c.policy_keys, []
        for key in keys:
            self._release(key, c)

    def remove_child(self, spi_in: bytes, spi_out: bytes) -> None:
        self.reap_deferred()
        c = self.children.pop(spi_in, None)
        if c is None or self.xfrm is None:
            return
        successor = any(o.reqid == c.reqid for o in self.children.values())
        if self.fragmenter is not None:
            self.fragmenter.remove(c.spi_in)
        self._release_policies(c)  # a successor (rekey) takes the OUT policies over first
        self._del_sa(c, inbound=False)
        if successor and self.rekey_grace > 0:
            self._deferred.append((self.clock() + self.rekey_grace, c))
            try:
                asyncio.get_running_loop().call_later(self.rekey_grace + 0.05, self.reap_deferred)
            except RuntimeError:
                pass  # no event loop (tests): reaped by the next call, or by shutdown()
        else:
            self._del_sa(c, inbound=True)
        self._rx_seen.pop(spi_in, None)
        log.info("CHILD_SA removed from the kernel", spi_in=spi_in.hex(), spi_out=spi_out.hex(), reqid=c.reqid,
                 inbound_grace=self.rekey_grace if successor else 0)

    def reap_deferred(self, force: bool = False) -> None:
        """Delete the old inbound SAs whose post-rekey grace time is over."""
        if not self._deferred or self.xfrm is None:
            return
        now = self.clock()
        keep = []
        for when, c in self._deferred:
            if force or now >= when:
                self._del_sa(c, inbound=True)
            else:
                keep.append((when, c))
        self._deferred = keep

    def update_addresses(self, ike_id: int, local: Address, remote: Address, encap: bool | None = None) -> None:
        """Move the IKE SA's Child SAs to new addresses/ports (MOBIKE, address adoption, NAT
        mapping change), keeping SPIs, keys and sequence numbers (no rekey).

        * Only the ports changed (a NAT rebinding): XFRM_MSG_UPDSA changes the SAs'
          encapsulation in place.
        * An address changed: XFRM_MSG_MIGRATE, one message per policy of the Child SA, moves
          the policies' templates and the SAs (the kernel clones each SA to the new addresses with
          its replay state and removes the old one). The kernel does not carry the byte/packet
          counters over, so they are added to a per-SA base and status keeps counting.
        * Where MIGRATE is not possible (kernel without CONFIG_XFRM_MIGRATE, an SA whose policy is
          held by another Child SA during a rekey), the SA is re-created at the new addresses with
          its replay state and counters (XFRMA_REPLAY_ESN_VAL / XFRMA_LTIME_VAL)."""
        for c in [c for c in self.children.values() if c.ike_id == ike_id]:
            new_encap = c.encap if encap is None else encap
            if (c.local, c.remote, c.encap) == (local, remote, new_encap):
                continue
            # UPDSA changes the ports of an SA that already has UDP encapsulation; adding it (or a
            # new address) means a new SA.
            same_ips = (c.local[0], c.remote[0]) == (local[0], remote[0]) and c.encap and new_encap
            snapshot = {inbound: self._get_sa(c, inbound) for inbound in (True, False)}
            old_local, old_remote = c.local, c.remote
            migrated: set[bool] = set()
            ips_changed = (c.local[0], c.remote[0]) != (local[0], remote[0])
            if ips_changed and not (c.encap and not new_encap):  # MIGRATE cannot drop encapsulation
                migrated = self._migrate(c, local, remote, new_encap)
            if not same_ips:
                for inbound in (True, False):
                    if inbound not in migrated:
                        self._del_sa(c, inbound)
            old_keys = list(c.policy_keys)
            c.local, c.remote, c.encap = local, remote, new_encap
            for inbound in migrated:  # the kernel's clone starts its counters at zero
                got = snapshot[inbound]
                if got is not None:
                    base = c.counter_base.get(inbound, (0, 0))
                    c.counter_base[inbound] = (base[0] + got["curlft"]["bytes"], base[1] + got["curlft"]["packets"])
            try:
                for inbound in (True, False):
                    if inbound in migrated:
                        continue
                    attrs = self._sa_attrs(c, inbound)
                    got = snapshot[inbound]
                    if got is not None and not same_ips:
                        esn = nl.get_attr(got, "XFRMA_REPLAY_ESN_VAL")
                        legacy = nl.get_attr(got, "XFRMA_REPLAY_VAL")
                        if esn:
                            attrs = [a for a in attrs if a[0] != "XFRMA_REPLAY_ESN_VAL"]
                            attrs.append(("XFRMA_REPLAY_ESN_VAL", {k: esn[k] for k in (
                                "bmp_len", "oseq", "seq", "oseq_hi", "seq_hi", "replay_window", "bmp")}))
                        elif legacy:
                            attrs.append(("XFRMA_REPLAY_VAL", {k: legacy[k] for k in ("oseq", "seq", "bitmap")}))
                        attrs.append(("XFRMA_LTIME_VAL", dict(got["curlft"])))
                    assert self.xfrm is not None
                    self.xfrm.add_sa(self._sa_info(c, inbound), attrs, update=same_ips)
                c.policy_keys = []
                for p in self._policies_for(c):
                    if p.key in old_keys:
                        self._claim(p)
                        c.policy_keys.append(p.key)
            except (nl.NetlinkError, XfrmError) as e:
                log.error("cannot move CHILD_SA to the new addresses", spi_in=c.spi_in.hex(), error=str(e))
                continue
            self._fragment_rule(c)  # the tunnel MTU depends on UDP encapsulation
            how = "update" if same_ips else "migrate" if len(migrated) == 2 else \
                "migrate+re-create" if migrated else "re-create"
            self.moves[how] = self.moves.get(how, 0) + 1
            log.info("CHILD_SA moved", spi_in=c.spi_in.hex(), old_local=f"{old_local[0]}:{old_local[1]}",
                     old_remote=f"{old_remote[0]}:{old_remote[1]}", local=f"{local[0]}:{local[1]}",
                     remote=f"{remote[0]}:{remote[1]}", method=how)

    def _migrate(self, c: _Child, local: Address, remote: Address, encap: bool) -> set[bool]:
        """XFRM_MSG_MIGRATE for every policy this Child SA holds; returns the directions
        (True = inbound) whose SA the kernel moved, checked by reading the SA back at the new
        addresses."""
        if not self.use_migrate or self.xfrm is None:
            return set()
        ident = ([("XFRMA_IF_ID", c.if_id)] if c.if_id else [])
        done: set[bool] = set()
        for key in list(c.policy_keys):
            p = self.policies.get(key)
            inbound = p is not None and p.dir != nl.XFRM_POLICY_OUT
            want_reqid = c.reqid if inbound else (c.reqid_out or c.reqid)
            if p is None or p.owner != want_reqid:
                continue  # held by another Child SA (rekey in progress): its owner moves it
            old_src, old_dst = (c.remote[0], c.local[0]) if inbound else (c.local[0], c.remote[0])
            new_src, new_dst = (remote[0], local[0]) if inbound else (local[0], remote[0])
            if p.tmpl.get("saddr") != old_src or p.tmpl["id"]["daddr"] != old_dst:
                continue
            entry = {"old_daddr": old_dst, "old_saddr": old_src, "new_daddr": new_dst, "new_saddr": new_src,
                     "proto": nl.IPPROTO_ESP, "mode": c.mode, "reqid": want_reqid,
                     "old_family": _family(old_dst), "new_family": _family(new_dst)}
            enc = None
            if encap:
                sport, dport = (remote[1], local[1]) if inbound else (local[1], remote[1])
                enc = {"encap_type": nl.UDP_ENCAP_ESPINUDP, "encap_sport": sport, "encap_dport": dport}
            try:
                self.xfrm.migrate(p.sel, p.dir, [entry], encap=enc, attrs=ident)
            except nl.NetlinkError as e:
                if e.code in (95, 92):  # EOPNOTSUPP / ENOPROTOOPT: a kernel without XFRM_MIGRATE
                    log.warning("the kernel cannot MIGRATE XFRM SAs; re-creating them instead", error=str(e))
                    self.use_migrate = False
                    return set()
                log.warning("MIGRATE failed; the SA will be re-created", spi_in=c.spi_in.hex(), error=str(e))
                continue
            done.add(inbound)
        moved: set[bool] = set()
        for inbound in done:
            daddr = local[0] if inbound else remote[0]
            spi = c.spi_in if inbound else c.spi_out
            try:
                got = self.xfrm.get_sa(daddr, int.from_bytes(spi, "big"), nl.IPPROTO_ESP,
                                       ident + self._mark_attrs())
            except nl.NetlinkError:
                got = None
            if got is not None and got.get("saddr") == (remote[0] if inbound else local[0]):
                moved.add(inbound)
        return moved

    def counters(self, spi_in: bytes) -> ChildCounters | None:
        c = self.children.get(spi_in)
        if c is None or self.xfrm is None:
            return None
        sa_in, sa_out = self._get_sa(c, True), self._get_sa(c, False)
        cnt = ChildCounters()
        drops: dict[str, int] = {}
        base_in, base_out = c.counter_base.get(True, (0, 0)), c.counter_base.get(False, (0, 0))
        if sa_in is not None:
            cnt.bytes_in = base_in[0] + sa_in["curlft"]["bytes"]
            cnt.packets_in = base_in[1] + sa_in["curlft"]["packets"]
            st = sa_in["stats"]
            for reason, n in (("replay", st["replay"] + st["replay_window"]),
                              ("auth_failed", st["integrity_failed"])):
                if n:
                    drops[reason] = drops.get(reason, 0) + n
        else:
            drops["sa_missing"] = 1
        if sa_out is not None:
            cnt.bytes_out = base_out[0] + sa_out["curlft"]["bytes"]
            cnt.packets_out = base_out[1] + sa_out["curlft"]["packets"]
        cnt.drops = drops
        return cnt

    def sa_state(self, spi_in: bytes) -> dict | None:
        """Both kernel SAs of a Child SA as decoded by XFRM_MSG_GETSA (for status and tests)."""
        c = self.children.get(spi_in)
        if c is None:
            return None
        return {"in": self._get_sa(c, True), "out": self._get_sa(c, False), "reqid": c.reqid, "if_id": c.if_id}

    def last_rx(self, spi_in: bytes) -> float | None:
        """When the inbound SA's packet counter last grew (polled, at most once a second)."""
        c = self.children.get(spi_in)
        if c is None or self.xfrm is None:
            return None
        now = self.clock()
        seen = self._rx_seen.get(spi_in)
        if seen is not None and now - seen[2] < 1.0:
            return seen[1] if seen[0] else None
        sa = self._get_sa(c, True)
        packets = sa["curlft"]["packets"] if sa is not None else 0
        if seen is None or packets != seen[0]:
            changed = now if packets else 0.0
        else:
            changed = seen[1]
        self._rx_seen[spi_in] = (packets, changed, now)
        return changed if packets else None

    # ------------------------------------------------------------------ traps (start_action = trap)

    def install_trap(self, conn: str, local_ts: list, remote_ts: list) -> None:
        """Policies whose template has no SA yet: matching traffic makes the kernel send an
        ACQUIRE, which calls ``on_acquire(conn)``; the Child SA then takes the policies over
        (same reqid), and they fall back to the trap when it goes away."""
        if self.xfrm is None:
            self.open()
        old = self.traps.pop(conn, None)
        if old is not None:
            for key in list(old.policies):
                self._release(key, old)
        ifname = self.interface_for(conn)
        try:
            itf = self._interface(ifname) if ifname else None
            local_ip, remote_ip = self.endpoints_for(conn)
            trap = _Trap(conn, self._alloc_reqid())
            for p in self._make_policies(trap.reqid, local_ip, remote_ip, nl.XFRM_MODE_TUNNEL,
                                         itf.if_id if itf else 0, list(local_ts), list(remote_ts)):
                trap.policies[p.key] = p
                if not any(p.key in c.policy_keys for c in self.children.values()):
                    self._claim(p)
            self.traps[conn] = trap
        except (nl.NetlinkError, XfrmError, OSError) as e:
            log.error("cannot install trap policies", connection=conn, error=str(e))
            return
        log.info("trap policies installed", connection=conn, reqid=trap.reqid, policies=len(trap.policies))

    def remove_trap(self, conn: str) -> None:
        trap = self.traps.pop(conn, None)
        if trap is not None:
            for key in list(trap.policies):
                self._release(key, trap)

    # ------------------------------------------------------------------ virtual IPs (client)

    def add_virtual_ips(self, conn: str, addresses: list[str]) -> None:
        """Put the assigned addresses on the connection's XFRM interface (route-based) or on the
        loopback (policy-based; the policies' local selectors are these addresses)."""
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        ifname = self.interface_for(conn)
        try:
            index = self._interface(ifname).index if ifname else 1
        except (nl.NetlinkError, XfrmError) as e:
            log.error("cannot add virtual IPs", connection=conn, error=str(e))
            return
        for a in addresses:
            try:
                self._addr_request(ifaddrmsg, 20, nl.NLM_F_CREATE | nl.NLM_F_EXCL, index, a)  # RTM_NEWADDR
            except nl.NetlinkError as e:
                if e.code != 17:
                    log.warning("cannot add virtual IP", address=a, error=str(e))
        self.vips[conn] = (index, list(addresses))
        log.info("virtual IPs installed", connection=conn, addresses=addresses, interface=ifname or "lo")

    def remove_virtual_ips(self, conn: str) -> None:
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        index, addrs = self.vips.pop(conn, (0, []))
        for a in addrs:
            try:
                self._addr_request(ifaddrmsg, 21, 0, index, a)  # RTM_DELADDR
            except nl.NetlinkError:
                pass

    def _addr_request(self, cls, msg_type: int, flags: int, index: int, address: str) -> None:
        assert self.rtnl is not None
        seq = self.rtnl._next_seq()
        v6 = ":" in address
        m = cls()
        m["family"] = nl.AF_INET6 if v6 else nl.AF_INET
        m["prefixlen"] = 128 if v6 else 32
        m["index"] = index
        m["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        m["header"]["type"] = msg_type
        m["header"]["flags"] = nl.NLM_F_REQUEST | nl.NLM_F_ACK | flags
        m["header"]["sequence_number"] = seq
        m.encode()
        self.rtnl.transact(bytes(m.data), seq, f"address {address}", classes={})

    def esp_received(self, data: bytes, local: Address, remote: Address) -> None:
        # The NAT-T socket has UDP_ENCAP_ESPINUDP: the kernel takes ESP itself. Anything that
        # still arrives here matched no SA in the kernel (or the socket option is missing).
        self.unmatched["esp_in_userspace"] = self.unmatched.get("esp_in_userspace", 0) + 1

    # ------------------------------------------------------------------ events

    def poll_events(self) -> list[tuple[str, dict]]:
        """Read queued ACQUIRE / EXPIRE / MAPPING notifications; returns (kind, info) pairs."""
        if self.events is None:
            return []
        out = []
        try:
            msgs = self.events.read_events()
        except OSError as e:
            log.warning("XFRM event socket error", error=str(e))
            return []
        for m in msgs:
            ev = self._event(m)
            if ev is None:
                continue
            out.append(ev)
            self.event_log = (self.event_log + [ev])[-100:]
            self._dispatch(*ev)
            if self.on_event is not None:
                try:
                    self.on_event(*ev)
                except Exception as e:  # noqa: BLE001 - a handler bug never stops the reader
                    log.error("XFRM event handler failed", error=f"{type(e).__name__}: {e}")
            else:
                log.info("XFRM event", kind=ev[0], **{k: v for k, v in ev[1].items() if k != "raw"})
        return out

    def _dispatch(self, kind: str, info: dict) -> None:
        """Turn kernel events into the daemon's hooks (traps, NAT mapping changes)."""
        if kind == "acquire" and info.get("ours"):
            trap = next((t for t in self.traps.values() if t.reqid == info.get("reqid")), None)
            if trap is not None and self.on_acquire is not None:
                log.info("traffic for a trap policy: starting the connection", connection=trap.conn)
                self.on_acquire(trap.conn)
        elif kind == "expire" and info.get("ours"):
            spi = bytes.fromhex(info["spi"])
            c = self.children.get(spi) or next((x for x in self.children.values() if x.spi_out == spi), None)
            if c is not None:
                state = "hard" if info.get("hard") else "soft"
                if self._expiry_reported.get(c.spi_in) != state:
                    self._expiry_reported[c.spi_in] = state
                    self._expiries.append((c.spi_in, state))
        elif kind == "mapping" and info.get("ours"):
            spi = bytes.fromhex(info["spi"])
            c = self.children.get(spi)
            if c is not None and self.on_peer_moved is not None:
                self.on_peer_moved(c.ike_id, (c.local[0], c.local[1]), (info["new"][0], info["new"][1]))

    def _event(self, m) -> tuple[str, dict] | None:
        t = m["header"]["type"]
        if t == nl.XFRM_MSG_ACQUIRE:
            return "acquire", {"src": m["sel"]["saddr"], "dst": m["sel"]["daddr"], "proto": m["sel"]["proto"],
                               "tmpl_dst": m["id"]["daddr"], "tmpl_src": m["saddr"],
                               "reqid": (nl.get_attr(m, "XFRMA_TMPL") or [{}])[0].get("reqid"),
                               "ours": self._acquire_is_ours(m), "seq": m["seq"]}
        if t == nl.XFRM_MSG_EXPIRE:
            st = m["state"]
            spi = st["id"]["spi"].to_bytes(4, "big")
            return "expire", {"spi": spi.hex(), "dst": st["id"]["daddr"], "hard": bool(m["hard"]),
                              "reqid": st["reqid"], "ours": self.owns_reqid(st["reqid"]),
                              "spi_in": spi.hex() if spi in self.children else None}
        if t == nl.XFRM_MSG_MAPPING:
            return "mapping", {"spi": f"{m['id']['spi']:08x}", "reqid": m["reqid"],
                               "old": (m["old_saddr"], m["old_sport"]), "new": (m["new_saddr"], m["new_sport"]),
                               "ours": self.owns_reqid(m["reqid"])}
        return None

    def _acquire_is_ours(self, m) -> bool:
        tmpls = nl.get_attr(m, "XFRMA_TMPL") or []
        return bool(tmpls) and all(self.owns_reqid(t["reqid"]) for t in tmpls)

    # ------------------------------------------------------------------ keepalives

    def set_keepalive_interval(self, seconds: float) -> None:
        """`vpn-gw reload`: change the NAT keepalive interval live (0 stops the keepalives)."""
        self.keepalive_interval = seconds
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        if seconds and self.send_udp is not None:
            self._keepalive_task = asyncio.get_running_loop().create_task(self._keepalives())

    async def _keepalives(self) -> None:
        """RFC 3948 NAT keepalives to every peer reached through UDP encapsulation."""
        while True:
            await asyncio.sleep(self.keepalive_interval)
            peers = {(c.local[0], c.remote) for c in self.children.values() if c.encap}
            for local_ip, remote in peers:
                if self.send_udp is not None:
                    self.send_udp(KEEPALIVE, (local_ip, 4500), remote)
