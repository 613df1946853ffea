"""The gateway daemon: asyncio glue between UDP sockets, the sans-IO IKE manager, timers, the
data plane and the control socket. ``run(config, args)`` is what ``vpn-gw run`` calls."""
from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import time
from typing import Any

import structlog

from ikev2 import events as E
from ikev2.constants import NON_ESP_MARKER
from ikev2.manager import IkeManager

from vpn_gw.config import GatewayConfig, diff_configs, load_config
from vpn_gw.control import ControlError, ControlServer
from vpn_gw.dataplane import DataPlane, RecordingDataPlane
from vpn_gw.ddns.service import is_fqdn
from vpn_gw.transport.udp import IkeSocket, route_source
from vpn_gw.policies import ike_policy, initiate_target
from vpn_gw.probe import ProbeResponder, is_probe

log = structlog.get_logger("vpn_gw")

RETRY_DELAY = 5.0
ROAM_DEBOUNCE = 0.05  # seconds after a netlink event before the roaming check


class Gateway:
    def __init__(self, config: GatewayConfig, dataplane: DataPlane | None = None):
        self.config = config
        if dataplane is None:
            if config.dataplane == "userspace":
                from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane
                dataplane = UserspaceDataPlane(self._send_esp, self._interface_for, path_mtu=config.path_mtu,
                                               keepalive_interval=config.keepalive_interval,
                                               offload=config.offload)
            elif config.dataplane == "xfrm":
                from vpn_gw.dataplane.xfrm.backend import XfrmDataPlane
                ifids = {c.interface: c.if_id for c in config.connections if c.interface}
                fragmenter = None
                if config.xfrm_fragmentation == "nfqueue":
                    from vpn_gw.dataplane.xfrm.fragmenter import RedFragmenter
                    fragmenter = RedFragmenter(config.xfrm_nfqueue, fail_open=config.xfrm_nfqueue_fail == "open")
                dataplane = XfrmDataPlane(self._send_esp, self._interface_for, if_id_for=ifids.get,
                                          path_mtu=config.path_mtu, keepalive_interval=config.keepalive_interval,
                                          endpoints_for=self._endpoints_for, fragmenter=fragmenter)
            else:
                dataplane = RecordingDataPlane()
        self.dataplane = dataplane
        from vpn_gw.ddns.service import DdnsService
        from vpn_gw.pools import PoolSet
        self.ddns = DdnsService(config, self)
        self.pools = PoolSet.from_config(config.pools)
        self._vip_owner: dict[int, str] = {}  # ike_id -> identity holding pool leases
        self.manager = IkeManager([self._policy(c, config) for c in config.connections], os.urandom,
                                  log=self._engine_log, wall_offset=time.time() - time.monotonic(),
                                  half_open_limit=config.half_open_limit,
                                  cookie_threshold=config.cookie_threshold)
        self.manager.set_activity_probe(self.dataplane.last_rx)
        if hasattr(self.dataplane, "send_udp_batch") and config.offload:
            self.dataplane.send_udp_batch = self._send_esp_batch
        if hasattr(self.dataplane, "on_peer_moved"):
            self.dataplane.on_peer_moved = self._esp_peer_moved
        self.sockets: dict[tuple[int, int], list[IkeSocket]] = {}  # (family, port) -> sockets
        self._sock_cache: dict[tuple[str, int], IkeSocket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[tuple[str, asyncio.Future]] = []
        self._retry: dict[str, float] = {}
        self._held_down: set[str] = set()  # taken down by `vpn-gw down`: no automatic restart
        self.started = time.time()
        from vpn_gw.log import RateLimitedLogger
        self._ratelimit = RateLimitedLogger(log, limit=5, interval=60.0)
        self.probe_responder = ProbeResponder()  # docs/probe.md: stateless, rate-limited echo
        from vpn_gw.transport.tcp import TcpService
        self.tcp = TcpService(self)  # RFC 9329 TCP paths (docs/tcp-encapsulation.md)

    def _policy(self, conn, config):
        return ike_policy(conn, config, address_assigner=lambda ident, req, c=conn: self._assign(c, ident, req))

    def _assign(self, conn, identity: str, req):
        """Lease virtual IPs for a remote-access client from the connection's pools (sticky per
        identity, persisted) and build the configuration reply."""
        from ikev2.cp import Assignment
        now = time.time()
        addrs, dns, subnets = [], [], []
        for version in sorted(req.address_families):
            got = self.pools.acquire(conn.pools, identity, version, now=now, requested=req.requested(version))
            if got is None:
                log.warning("address pool exhausted", connection=conn.name, identity=identity, family=version)
                continue
            pool_name, addr = got
            addrs.append(addr)
            pc = self.config.pool(pool_name)
            dns += [d for d in pc.dns if d not in dns]
            subnets += [n for n in pc.subnets if n not in subnets]
        if not addrs:
            return None
        try:
            self.pools.save()
        except OSError as e:
            log.error("cannot save pool leases", error=str(e))
        return Assignment(addresses=tuple(addrs), dns=tuple(dns), subnets=tuple(subnets))

    # ------------------------------------------------------------------ logging

    # Events a peer (or anyone on the Internet) can trigger at will: rate-limited per kind and
    # source address, so a flood of garbage cannot flood the log.
    _FLOODABLE = frozenset({"dropped datagram", "dropped malformed message",
                            "dropped message failing integrity check", "IKE_SA_INIT refused",
                            "asking for a cookie", "dropped request with unexpected message ID",
                            "dropped unexpected response"})

    def _engine_log(self, level: str, event: str, **fields: Any) -> None:
        if event in self._FLOODABLE:
            peer = str(fields.get("peer", "")).rsplit(":", 1)[0]
            self._ratelimit.log((event, fields.get("reason", ""), peer), event, level=level, **fields)
            return
        getattr(log, level, log.info)(event, **fields)

    # ------------------------------------------------------------------ sockets

    def open_sockets(self) -> None:
        for addr in self.config.listen:
            for port in (self.config.ike_port, self.config.natt_port):
                s = IkeSocket(str(addr), port)
                if self.dataplane.name == "xfrm":
                    # IKE itself must never be encrypted; the kernel decapsulates ESP-in-UDP.
                    from vpn_gw.dataplane.xfrm.sockets import prepare_ike_socket
                    prepare_ike_socket(s, natt=(port == self.config.natt_port))
                if self.dataplane.name == "userspace" and port == self.config.natt_port and self.config.offload:
                    s.enable_gro()  # ESP bursts arrive coalesced (docs/esp.md, batching)
                self.sockets.setdefault((s.family, port), []).append(s)
                asyncio.get_running_loop().add_reader(s.fileno(), self._readable, s)
                log.info("listening", address=str(addr), port=port)

    def _readable(self, sock: IkeSocket) -> None:
        natt = sock.port == self.config.natt_port
        dp = self.dataplane
        if natt:
            dp.rx_batch_begin()
        try:
            for _ in range(64):  # bounded batch per wake-up
                got = sock.recv_segments()
                if got is None:
                    break
                data, seg, local, remote = got
                if seg:  # UDP GRO: several datagrams from the same source, seg bytes each
                    esp_received = dp.esp_received
                    for off in range(0, len(data), seg):
                        d = data[off:off + seg]
                        if len(d) >= 8 and d[:4] != NON_ESP_MARKER:
                            esp_received(d, local, remote)  # the usual case, without detour
                        else:
                            self._datagram(sock, natt, d, local, remote)
                else:
                    self._datagram(sock, natt, data, local, remote)
        finally:
            if natt:
                dp.rx_batch_end()
        self._flush()

    def _datagram(self, sock: IkeSocket, natt: bool, data: bytes, local: tuple[str, int],
                  remote: tuple[str, int]) -> None:
        if natt:
            if len(data) < 4:
                if data != b"\xff":  # NAT-T keepalive
                    log.debug("dropped runt datagram on NAT-T port", peer=remote[0], size=len(data))
                return
            if data[:4] != NON_ESP_MARKER:
                self.dataplane.esp_received(data, local, remote)
                return
            data = data[4:]
        if is_probe(data):  # firewall-traversal probe: answered here, never IKE
            self._answer_probe(sock, data, local, remote)
            return
        self.manager.receive(data, local, remote, time.monotonic())

    def _answer_probe(self, sock: IkeSocket, data: bytes, local: tuple[str, int],
                      remote: tuple[str, int]) -> None:
        reply = self.probe_responder.handle(data, remote[0], time.monotonic())
        if reply is None:
            return
        if sock.port == self.config.natt_port:
            reply = NON_ESP_MARKER + reply
        try:
            sock.send(reply, local[0], remote)
        except OSError:
            pass  # best effort, like the probe itself

    def _socket_for(self, local: tuple[str, int]) -> IkeSocket | None:
        sock = self._sock_cache.get(local)
        if sock is None:
            fam = socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 else socket.AF_INET
            cands = self.sockets.get((fam, local[1]), [])
            sock = next((s for s in cands if s.address == local[0]), cands[0] if cands else None)
            if sock is not None:
                if len(self._sock_cache) > 1024:
                    self._sock_cache.clear()
                self._sock_cache[local] = sock
        return sock

    def _send(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        if self.tcp.send_ike(data, local, remote):
            return  # a TCP path: framed onto its connection
        sock = self._socket_for(local)
        if sock is None:
            log.error("no socket to send from", local=f"{local[0]}:{local[1]}")
            return
        if local[1] == self.config.natt_port:
            data = NON_ESP_MARKER + data
        try:
            sock.send(data, local[0], remote)
        except OSError as e:
            log.warning("send failed", remote=f"{remote[0]}:{remote[1]}", error=str(e))

    def _send_esp(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        """ESP in UDP (and NAT keepalives) from the NAT-T socket: no non-ESP marker."""
        if self.tcp.send_esp(data, local, remote):
            return  # a TCP path: framed onto its connection
        sock = self._socket_for((local[0], self.config.natt_port))
        if sock is None:
            return
        try:
            sock.send(data, local[0], remote)
        except OSError:
            pass  # like a congested or unreachable link: ESP is best effort

    async def _watch_lifetimes(self, interval: float = 0.2) -> None:
        """Volume limits (rekey_bytes/life_bytes/rekey_packets/life_packets) and sequence-number
        exhaustion live in the data plane (the kernel's SA lifetimes with dataplane = "xfrm"):
        a soft limit rekeys the Child SA, a hard one deletes it. Checked five times a second (the
        kernel reports its EXPIREs at once; the userspace plane's counters are polled)."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.check_lifetimes()
            except Exception as e:  # noqa: BLE001 - never let the watcher die
                log.error("lifetime check failed", error=f"{type(e).__name__}: {e}")

    def check_lifetimes(self) -> int:
        now = time.monotonic()
        acted = 0
        for spi_in, state in self.dataplane.expiries(now):
            sa = next((s for s in self.manager.sas if any(c.spi_in == spi_in for c in s.children)), None)
            if sa is None:
                continue
            child = next(c for c in sa.children if c.spi_in == spi_in)
            if state == "soft":
                if sa.rekey_child(spi_in, now):
                    log.info("CHILD_SA reached its soft volume limit: rekeying", connection=sa.name,
                             child=child.name, spi_in=spi_in.hex())
                    acted += 1
            else:
                log.warning("CHILD_SA reached its hard volume limit: deleting", connection=sa.name,
                            child=child.name, spi_in=spi_in.hex())
                sa.delete_child(spi_in, now)
                acted += 1
        if acted:
            self._flush()
        return acted

    def _install_conn_routes(self) -> None:
        """``routes`` of route-based connections: into the connection's interface, for as long
        as the daemon runs (removed again at stop; an interface we created takes them along)."""
        from vpn_gw.dataplane.iproute import ipr_call
        self._conn_routes: list[tuple[str, str]] = []
        wanted = [(str(net), c.interface, c.name) for c in self.config.connections if c.interface
                  for net in c.routes]
        if not wanted:
            return

        def add(ipr):
            done = []
            for dst, ifname, conn in wanted:
                idx = ipr.link_lookup(ifname=ifname)
                if not idx:
                    log.error("cannot add route: no such interface", connection=conn, dst=dst, interface=ifname)
                    continue
                try:
                    ipr.route("replace", dst=dst, oif=idx[0])
                    done.append((dst, ifname))
                    log.info("route installed", connection=conn, dst=dst, interface=ifname)
                except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError
                    log.error("cannot add route", connection=conn, dst=dst, interface=ifname, error=str(e))
            return done
        try:
            self._conn_routes = ipr_call(add)
        except Exception as e:  # noqa: BLE001 - e.g. netlink thread failure: the tunnel still negotiates
            log.error("cannot add the connections' routes", error=f"{type(e).__name__}: {e}")

    def _remove_conn_routes(self) -> None:
        from vpn_gw.dataplane.iproute import ipr_call
        routes = getattr(self, "_conn_routes", [])
        if not routes:
            return

        def delete(ipr):
            for dst, ifname in routes:
                idx = ipr.link_lookup(ifname=ifname)
                if idx:
                    try:
                        ipr.route("del", dst=dst, oif=idx[0])
                    except Exception:  # noqa: BLE001 - already gone with its interface
                        pass
        try:
            ipr_call(delete)
        except Exception as e:  # noqa: BLE001
            log.warning("cannot remove the connections' routes", error=str(e))
        self._conn_routes = []

    def _send_esp_batch(self, datagrams: list[bytes], local: tuple[str, int], remote: tuple[str, int]) -> None:
        """Several ESP datagrams for one path, in order: UDP GSO where the kernel can."""
        if self.tcp.conns or self.tcp.dead:
            for d in datagrams:
                self._send_esp(d, local, remote)
            return
        sock = self._socket_for((local[0], self.config.natt_port))
        if sock is None:
            return
        try:
            sock.send_many(datagrams, local[0], remote)
        except OSError:
            pass  # like a congested or unreachable link: ESP is best effort

    def _esp_peer_moved(self, ike_id: int, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self.manager.esp_adopt(ike_id, local, remote, time.monotonic())
        self._flush()

    def check_local_addresses(self) -> int:
        """Client roaming: if the address the kernel would now use to reach a peer is not the one
        an IKE SA uses (ours disappeared, the default route moved), move the SA there and tell
        the peer (MOBIKE update, or an authenticated liveness check it adopts)."""
        moved = 0
        for sa in list(self.manager.sas):
            if not sa.initiator or sa.state.value != "established" or sa.policy.local_addrs:
                continue  # a connection with configured local_addrs never roams
            try:
                src = route_source(sa.remote[0])
            except OSError:
                continue  # no route at all right now: keep the SA, DPD decides
            if src != sa.local[0]:
                if self.tcp.roam(sa):
                    continue  # over TCP: the connection is re-opened from the new address
                why = "address gone" if not self._is_local(sa.local[0]) else "route changed"
                log.info("local path changed, moving IKE SA", connection=sa.name, old=sa.local[0], new=src,
                         reason=why)
                moved += self.manager.local_address_changed(sa.local[0], src, time.monotonic())
        if moved:
            self._flush()
        return moved

    @staticmethod
    def _is_local(ip: str) -> bool:
        """Is ip still an address of this host (bindable)?"""
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            try:
                s.bind((ip, 0))
                return True
            except OSError:
                return False

    async def _watch_local_addresses(self, interval: float = 1.0) -> None:
        """Check the roaming connections' paths as soon as the kernel reports an address, route
        or link change (netlink), after a short debounce; and every ``interval`` seconds anyway."""
        events = None
        try:
            from pyroute2 import AsyncIPRoute
            from pyroute2.netlink.rtnl import (RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR,
                                               RTMGRP_IPV6_ROUTE, RTMGRP_LINK)
            events = AsyncIPRoute()
            await events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
                              | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        except Exception as e:  # noqa: BLE001 - fall back to polling only
            log.warning("no netlink events for roaming, polling only", error=str(e))
            events = None
        try:
            while True:
                if events is not None:
                    try:
                        async with asyncio.timeout(interval):
                            async for _msg in events.get():
                                break
                        await asyncio.sleep(ROAM_DEBOUNCE)  # let the kernel finish the change
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(interval)
                try:
                    self.check_local_addresses()
                except Exception as e:  # noqa: BLE001 - never let the watcher die
                    log.error("local address check failed", error=f"{type(e).__name__}: {e}")
        finally:
            if events is not None:
                events.close()

    def _write_dns(self, conn_name: str, servers: list[str]) -> None:
        """Client: write the DNS servers the gateway sent to the connection's dns_file (never
        the system resolver unless the file named is the system resolver's)."""
        conn = self._conn(conn_name)
        path = getattr(conn, "dns_file", None) if conn else None
        if not path or not servers:
            return
        try:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as fh:
                fh.write(f"# written by vpn-gw for connection {conn_name}\n")
                fh.writelines(f"nameserver {s}\n" for s in servers)
            os.replace(tmp, path)
            log.info("DNS servers written", connection=conn_name, file=str(path), servers=servers)
        except OSError as e:
            log.error("cannot write DNS servers", file=str(path), error=str(e))

    def _install_traps(self) -> None:
        if not hasattr(self.dataplane, "install_trap"):
            return
        self.dataplane.on_acquire = self._acquire
        for conn in self.config.connections:
            if conn.start_action == "trap":
                pol = next(p for p in self.manager.policies if p.name == conn.name)
                for cp in pol.children:
                    self.dataplane.install_trap(conn.name, cp.local_ts, cp.remote_ts)

    def _acquire(self, name: str) -> None:
        if self.manager.find(name):
            return  # already being set up
        try:
            self.initiate(name)
        except (OSError, ValueError) as e:
            log.warning("cannot start connection for trapped traffic", connection=name, error=str(e))

    def _endpoints_for(self, name: str) -> tuple[str | None, str | None]:
        """(local, remote) outer addresses of a connection, for kernel trap-policy templates."""
        conn = self._conn(name)
        if conn is None:
            return None, None
        local = str(conn.local_addrs[0]) if conn.local_addrs else None
        target = initiate_target(conn)
        return local, (target if target and not is_fqdn(target) else None)

    def _interface_for(self, name: str) -> str | None:
        conn = self._conn(name)
        return conn.interface if conn is not None else None

    # ------------------------------------------------------------------ engine output

    def _flush(self) -> None:
        m = self.manager
        for data, local, remote in m.pop_datagrams():
            self._send(data, local, remote)
        for ev in m.pop_events():
            try:
                self._on_event(ev)
            except Exception as e:  # noqa: BLE001 - an event handler bug never stops the gateway
                log.error("event handling failed", event=type(ev).__name__, connection=ev.ike_name,
                          error=f"{type(e).__name__}: {e}", exc_info=True)
        for data, local, remote in m.pop_datagrams():  # events may have caused more
            self._send(data, local, remote)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.manager.next_deadline()
        retry = min(self._retry.values()) if self._retry else None
        times = [t for t in (deadline, retry) if t is not None]
        if not times:
            self._timer = None
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, min(times) - time.monotonic())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        self.manager.tick(now)
        for name, when in list(self._retry.items()):
            if now >= when:
                del self._retry[name]
                self.initiate(name)
        self._flush()

    def _on_event(self, ev: E.Event) -> None:
        if isinstance(ev, E.ChildUp):
            self.dataplane.install_child(ev)
        elif isinstance(ev, E.ChildDown):
            self.dataplane.remove_child(ev.spi_in, ev.spi_out)
        elif isinstance(ev, (E.PeerAddressChanged, E.LocalAddressChanged)):
            sa = self.manager.by_id(ev.ike_id)
            if sa is not None:
                self.dataplane.update_addresses(ev.ike_id, sa.local, sa.remote, encap=sa.encap)
        elif isinstance(ev, E.VirtualIpAssigned):
            self._vip_owner[ev.ike_id] = ev.identity
        elif isinstance(ev, E.VirtualIpReceived):
            self.dataplane.add_virtual_ips(ev.ike_name, ev.addresses)
            self._write_dns(ev.ike_name, ev.dns)
        elif isinstance(ev, E.IkeDown):
            log.info("IKE_SA down", connection=ev.ike_name, reason=ev.reason)
            owner = self._vip_owner.pop(ev.ike_id, None)
            conn_ = self._conn(ev.ike_name)
            if owner is not None and conn_ is not None and conn_.pools:
                released = self.pools.release(owner, names=conn_.pools, now=time.time())
                log.info("virtual IP released (lease kept for the same identity)", identity=owner,
                         addresses=[str(a) for _, a in released])
                try:
                    self.pools.save()
                except OSError as e:
                    log.error("cannot save pool leases", error=str(e))
            if conn_ is not None and conn_.vips:
                self.dataplane.remove_virtual_ips(ev.ike_name)
            conn = self._conn(ev.ike_name)
            keep_up = conn is not None and (conn.start_action == "start" or conn.dpd_action == "restart")
            if keep_up and ev.ike_name not in self._held_down and initiate_target(conn) \
                    and not self.manager.find(ev.ike_name):
                log.info("re-initiating", connection=ev.ike_name, delay=RETRY_DELAY)
                self._retry[ev.ike_name] = time.monotonic() + RETRY_DELAY
            elif (conn is not None and conn.dpd_action == "trap" and ev.ike_name not in self._held_down
                  and hasattr(self.dataplane, "install_trap") and ev.ike_name not in self.dataplane.traps):
                # dpd_action = trap: the next packet for the tunnel starts it again.
                pol = next(p for p in self.manager.policies if p.name == conn.name)
                for cp in pol.children:
                    self.dataplane.install_trap(conn.name, cp.local_ts, cp.remote_ts)
                log.info("peer lost: trap policy installed, traffic will restart the connection",
                         connection=ev.ike_name)
        elif isinstance(ev, E.AuthFailed):
            log.warning("authentication failed", connection=ev.ike_name, reason=ev.reason)
        elif isinstance(ev, E.ExchangeDone):
            log.info("exchange", connection=ev.ike_name, exchange=ev.exchange, role=ev.role,
                     mid=ev.message_id, outcome=ev.outcome, spi_i=ev.spi_i.hex(), spi_r=ev.spi_r.hex(),
                     peer=f"{ev.peer[0]}:{ev.peer[1]}" if ev.peer else None)
        for name, fut in list(self._waiters):
            if ev.ike_name == name and not fut.done() and isinstance(ev, (E.IkeUp, E.IkeDown, E.AuthFailed)):
                fut.set_result(ev)

    def _conn(self, name: str):
        return next((c for c in self.config.connections if c.name == name), None)

    # ------------------------------------------------------------------ commands

    def initiate(self, name: str):
        self._held_down.discard(name)
        conn = self._conn(name)
        if conn is None:
            raise ValueError(f"no connection named '{name}'")
        target = initiate_target(conn)
        if target is None:
            raise ValueError(f"connection '{name}' has no remote address to initiate to (remote_addrs is %any)")
        if is_fqdn(target):
            # A dynamic-DNS peer: resolve (honouring the TTL) on every initiation and retry.
            asyncio.get_running_loop().create_task(self._initiate_fqdn(name, target))
            return None
        return self._initiate_to(name, target)

    async def _initiate_fqdn(self, name: str, fqdn: str) -> None:
        addrs = await self.ddns.resolve(fqdn)
        usable = [a for a in addrs if self._reachable(a)]
        if not usable:
            log.warning("cannot initiate: peer name did not resolve to a reachable address", connection=name,
                        name=fqdn, addresses=addrs)
            self._retry[name] = time.monotonic() + RETRY_DELAY
            self._arm_timer()
            return
        try:
            self._initiate_to(name, usable[0])
        except (OSError, ValueError) as e:
            log.warning("cannot initiate", connection=name, error=str(e))

    @staticmethod
    def _reachable(ip: str) -> bool:
        try:
            route_source(ip)
            return True
        except OSError:
            return False

    def _initiate_to(self, name: str, remote_ip: str, transport: str | None = None):
        conn = self._conn(name)
        local_ip = str(conn.local_addrs[0]) if conn.local_addrs else route_source(remote_ip)
        if transport is None and self.tcp.takes(conn):
            return self.tcp.initiate(conn, remote_ip, local_ip)  # transport tcp/auto: asynchronous
        sa = self.manager.initiate(name, time.monotonic(), remote=(remote_ip, self.config.ike_port),
                                   local=(local_ip, self.config.ike_port))
        self._flush()
        return sa

    def sas_for_fqdn(self, fqdn: str) -> list:
        """Established IKE SAs of connections whose remote_addrs name this FQDN."""
        def norm(n: str) -> str:
            return n.lower().rstrip(".")
        names = {c.name for c in self.config.connections
                 if norm(fqdn) in [norm(a) for a in c.remote_addrs if isinstance(a, str)]}
        return [sa for sa in self.manager.sas if sa.name in names and sa.state.value == "established"]

    def liveness_check(self, sa) -> None:
        sa.liveness(time.monotonic())
        self._flush()

    async def handle_control(self, cmd: str, args: dict) -> Any:
        try:
            return await self._handle_control(cmd, args)
        except (ValueError, RuntimeError, OSError) as e:
            raise ControlError(str(e)) from None

    async def _handle_control(self, cmd: str, args: dict) -> Any:
        if cmd == "status":
            return self.status()
        if cmd == "up":
            name = args.get("name", "")
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((name, fut))
            try:
                self.initiate(name)
                ev = await asyncio.wait_for(fut, timeout=float(args.get("timeout", 30)))
            except asyncio.TimeoutError:
                raise RuntimeError(f"connection '{name}' did not come up within the timeout") from None
            finally:
                self._waiters = [(n, f) for n, f in self._waiters if f is not fut]
            if isinstance(ev, E.IkeUp):
                return {"connection": name, "state": "established"}
            raise RuntimeError(f"connection '{name}' failed: {getattr(ev, 'reason', ev)}")
        if cmd == "down":
            name = args.get("name", "")
            if self._conn(name) is None:
                raise ValueError(f"no connection named '{name}'")
            self._held_down.add(name)
            n = self.manager.terminate(name, time.monotonic())
            self._retry.pop(name, None)
            self._flush()
            return {"connection": name, "terminated": n}
        if cmd == "reload":
            return self.reload()
        if cmd == "stats":
            return {"probe": self.probe_responder.counters(), "tcp": self.tcp.counters(),
                    "dataplane": self.dataplane.stats()}
        if cmd == "rekey":
            return self.rekey(args.get("name", ""), args.get("child"), bool(args.get("ike")))
        raise ValueError(f"unknown command '{cmd}'")

    def rekey(self, name: str, child: str | None, ike: bool) -> dict:
        """Rekey a connection's IKE SA (ike) or its Child SAs (all, or those named child)."""
        if self._conn(name) is None:
            raise ValueError(f"no connection named '{name}'")
        sas = self.manager.find(name)
        if not sas:
            raise ValueError(f"connection '{name}' has no IKE SA")
        now = time.monotonic()
        started = 0
        for sa in sas:
            if ike:
                sa.rekey_ike(now)
                started += 1
                continue
            for c in list(sa.children):
                if child is None or c.name == child:
                    started += bool(sa.rekey_child(c.spi_in, now))
        self._flush()
        if not started:
            raise ValueError(f"nothing to rekey on '{name}'" + (f" (no CHILD_SA '{child}')" if child else ""))
        return {"connection": name, "rekeying": started, "what": "ike" if ike else "child"}

    def reload(self) -> dict:
        if self.config.source is None:
            raise ValueError("configuration was not loaded from a file")
        new = load_config(self.config.source)
        d = diff_configs(self.config, new)
        for name in d.removed:
            self.manager.terminate(name, time.monotonic())
        pols = {p.name: p for p in self.manager.policies}
        self.manager.policies = [pols[c.name] if c.name in d.unchanged else self._policy(c, new)
                                 for c in new.connections]
        self.config = new
        for name in d.added:
            if self._conn(name).start_action == "start":
                self.initiate(name)
        self._flush()
        return d.to_dict()

    def status(self) -> list[dict]:
        now = time.monotonic()
        wall = time.time()
        out = []
        for st in self.manager.status(now):
            local_ip, local_port = st["local"].rsplit(":", 1)
            remote_ip, remote_port = st["remote"].rsplit(":", 1)
            est = st.get("established_for")
            entry = {
                "uid": st["id"], "name": st["name"], "state": st["state"].upper().replace("-", "_"),
                "initiator": st["initiator"], "local_addr": local_ip, "local_port": int(local_port),
                "remote_addr": remote_ip, "remote_port": int(remote_port),
                "local_id": st["local_id"], "remote_id": st["remote_id"],
                "spi_i": st["spi_i"], "spi_r": st["spi_r"], "algorithms": st["proposal"],
                "key_exchanges": st.get("key_exchanges", []),  # RFC 9370: every negotiated KE
                "ppk": st.get("ppk", False),  # RFC 8784: authenticated with a PPK
                "established": (wall - est) if est is not None else None,
                "nat_local": st["nat_local"], "nat_remote": st["nat_remote"],
                "transport": self.tcp.transport_of((local_ip, int(local_port)), (remote_ip, int(remote_port))),
                "eap_identity": st.get("eap_identity"), "virtual_ips": st.get("virtual_ips", []), "children": [],
            }
            for c in st["children"]:
                cnt = self.dataplane.counters(bytes.fromhex(c["spi_in"]))
                entry["children"].append({
                    "name": c["name"], "state": c["state"].upper(), "mode": "tunnel",
                    "spi_in": c["spi_in"], "spi_out": c["spi_out"], "algorithms": c["proposal"],
                    # ESP in UDP: what was negotiated (NAT or forced); the userspace plane always does
                    "encap": c["encap"] or self.dataplane.name == "userspace", "local_ts": c["local_ts"], "remote_ts": c["remote_ts"],
                    "bytes_in": cnt.bytes_in if cnt else 0, "packets_in": cnt.packets_in if cnt else 0,
                    "bytes_out": cnt.bytes_out if cnt else 0, "packets_out": cnt.packets_out if cnt else 0,
                    "drops": dict(cnt.drops) if cnt else {},
                })
            out.append(entry)
        return out

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.ddns.start()
        for note in self.pools.load():
            log.warning("address pool", note=note)
        from vpn_gw.pools import masquerade as nat
        try:
            if nat.install(self.config.pools):
                log.info("pool masquerading installed", table=nat.TABLE,
                         pools=[p.name for p in self.config.pools if p.masquerade])
        except nat.NatError as e:
            raise StartupError(str(e)) from None
        try:
            await self.dataplane.start()
        except Exception as e:  # noqa: BLE001 - e.g. no kernel ESP for dataplane = "xfrm"
            raise StartupError(f"cannot start the {self.dataplane.name} data plane: {e}") from None
        for conn in self.config.connections:
            if conn.interface:
                try:
                    self.dataplane.ensure_interface(conn.interface)
                except OSError as e:
                    log.error("cannot create the connection's interface", connection=conn.name,
                              interface=conn.interface, error=str(e))
        self._install_conn_routes()
        self.open_sockets()
        await self.tcp.start()
        self._install_traps()
        control = ControlServer(str(self.config.control_socket), self.handle_control)
        await control.start()
        from ikev2.crypto.mlkem import mlkem_backend_text
        log.info("vpn-gw started", connections=len(self.config.connections),
                 control_socket=str(self.config.control_socket), dataplane=self.dataplane.name,
                 mlkem=mlkem_backend_text())  # which ML-KEM sets the linked OpenSSL offers
        for conn in self.config.connections:
            if conn.start_action == "start" and initiate_target(conn):
                try:
                    self.initiate(conn.name)
                except (OSError, ValueError) as e:
                    log.warning("cannot initiate", connection=conn.name, error=str(e))
                    self._retry[conn.name] = time.monotonic() + RETRY_DELAY
        self._flush()
        watcher = loop.create_task(self._watch_local_addresses())
        lifetimes = loop.create_task(self._watch_lifetimes())
        await stop.wait()
        watcher.cancel()
        lifetimes.cancel()
        log.info("stopping: deleting IKE SAs")
        now = time.monotonic()
        for sa in list(self.manager.sas):
            sa.delete(now, "gateway shutting down")
        self._flush()
        await asyncio.sleep(0.2)  # let the DELETEs leave (no retransmission at shutdown)
        if self._timer:
            self._timer.cancel()
        await control.stop()
        await self.tcp.close()
        for socks in self.sockets.values():
            for s in socks:
                loop.remove_reader(s.fileno())
                s.close()
        self._remove_conn_routes()
        await self.dataplane.close()
        await self.ddns.stop()
        if any(p.masquerade for p in self.config.pools):
            from vpn_gw.pools import masquerade as nat
            nat.remove()
        log.info("vpn-gw stopped")


class StartupError(RuntimeError):
    """The gateway cannot start (one-line reason for the user)."""


def run(config: GatewayConfig, args=None) -> int:
    try:
        asyncio.run(Gateway(config).serve())
    except (StartupError, OSError) as e:
        log.error("vpn-gw cannot start", error=str(e))
        import sys
        print(f"vpn-gw: {e}", file=sys.stderr)
        return 1
    return 0
