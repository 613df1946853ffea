"""What the daemon does with the engine's events: Child SAs into and out of the data plane,
address moves, virtual IPs (both roles), restarts and trap re-arming when an IKE SA goes down,
the ``up`` command's waiters, and the log lines that tell an operator what happened."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import structlog

from ikev2 import events as E
from ikev2.manager import IkeManager
from vpn_gw.daemon.client_dns import write_dns_file
from vpn_gw.daemon.scheduler import Scheduler
from vpn_gw.daemon.traps import Traps
from vpn_gw.daemon.virtual_ips import VirtualIps
from vpn_gw.dataplane import DataPlane, InstallError
from vpn_gw.log import enabled
from vpn_gw.policies import initiate_target

log = structlog.get_logger("vpn_gw")

RETRY_DELAY = 5.0  # seconds before a connection that should stay up is initiated again


class EventHost(Protocol):
    """What the event router needs from the gateway that composes it."""
    manager: IkeManager
    dataplane: DataPlane
    virtual_ips: VirtualIps
    scheduler: Scheduler
    traps: Traps
    held_down: set[str]  # taken down by `vpn-gw down`: no automatic restart

    def connection(self, name: str) -> Any: ...


class Waiters:
    """``vpn-gw up``: futures resolved by how the initiation ended: AuthFailed or IkeDown, or,
    once the IKE SA is up (IkeUp), the outcome of the Child SA that IKE_AUTH carried: the future
    gets ``(IkeUp, ChildUp | ChildFailed)``. A future whose IKE SA came up but that saw no Child
    event yet keeps the IkeUp in ``pending`` (the caller reports it at its timeout)."""
    def __init__(self) -> None:
        self._waiting: list[tuple[str, asyncio.Future[Any]]] = []
        self.pending: dict[int, E.IkeUp] = {}  # id(future) -> the IkeUp seen

    def add(self, name: str) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((name, fut))
        return fut

    def discard(self, fut: asyncio.Future[Any]) -> None:
        self._waiting = [(n, f) for n, f in self._waiting if f is not fut]
        self.pending.pop(id(fut), None)

    def event(self, ev: E.Event) -> None:
        if not isinstance(ev, (E.IkeUp, E.IkeDown, E.AuthFailed, E.ChildUp, E.ChildFailed)):
            return
        for name, fut in list(self._waiting):
            if ev.ike_name != name or fut.done():
                continue
            up = self.pending.get(id(fut))
            if isinstance(ev, E.IkeUp):
                if up is None:
                    self.pending[id(fut)] = ev
            elif isinstance(ev, (E.ChildUp, E.ChildFailed)):
                if up is not None and ev.ike_id == up.ike_id:
                    fut.set_result((up, ev))
            elif up is None or ev.ike_id == up.ike_id:
                fut.set_result(ev)


class EventRouter:
    def __init__(self, host: EventHost, waiters: Waiters):
        self.host = host
        self.waiters = waiters
        self.install_errors: dict[int, list[str]] = {}  # ike_id -> Child SAs the data plane refused

    def handle(self, ev: E.Event) -> None:
        h = self.host
        if isinstance(ev, E.ChildUp):
            try:
                h.dataplane.install_child(ev)
            except InstallError as e:
                self._child_install_failed(ev, str(e))
        elif isinstance(ev, E.ChildDown):
            h.dataplane.remove_child(ev.spi_in, ev.spi_out)
        elif isinstance(ev, (E.PeerAddressChanged, E.LocalAddressChanged)):
            sa = h.manager.by_id(ev.ike_id)
            if sa is not None:
                h.dataplane.update_addresses(ev.ike_id, sa.local, sa.remote, encap=sa.encap)
        elif isinstance(ev, E.VirtualIpAssigned):
            h.virtual_ips.assigned(ev.ike_id, ev.identity)
        elif isinstance(ev, E.VirtualIpReceived):
            h.dataplane.add_virtual_ips(ev.ike_name, ev.addresses)
            conn = h.connection(ev.ike_name)
            write_dns_file(getattr(conn, "dns_file", None) if conn else None, ev.ike_name, ev.dns)
        elif isinstance(ev, E.IkeDown):
            self._ike_down(ev)
        elif isinstance(ev, E.AuthFailed):
            log.warning("authentication failed", connection=ev.ike_name, reason=ev.reason)
        elif isinstance(ev, E.ExchangeDone):
            if enabled("info"):
                log.info("exchange", connection=ev.ike_name, exchange=ev.exchange, role=ev.role,
                         mid=ev.message_id, outcome=ev.outcome, spi_i=ev.spi_i.hex(), spi_r=ev.spi_r.hex(),
                         peer=f"{ev.peer[0]}:{ev.peer[1]}" if ev.peer else None)
        self.waiters.event(ev)

    def _child_install_failed(self, ev: E.ChildUp, reason: str) -> None:
        """The data plane cannot carry a negotiated Child SA: delete it (the peer learns it), and
        say so in the log, in `status` (install_errors) and to a waiting `vpn-gw up`."""
        log.error("CHILD_SA installation failed: deleting it", connection=ev.ike_name, child=ev.child_name,
                  spi_in=ev.keys.spi_in.hex(), error=reason)
        self.install_errors.setdefault(ev.ike_id, []).append(f"CHILD_SA {ev.child_name} not installed: {reason}")
        sa = self.host.manager.by_id(ev.ike_id)
        if sa is not None:
            sa.delete_child(ev.keys.spi_in, time.monotonic())

    def _ike_down(self, ev: E.IkeDown) -> None:
        h = self.host
        log.info("IKE_SA down", connection=ev.ike_name, reason=ev.reason)
        self.install_errors.pop(ev.ike_id, None)
        conn = h.connection(ev.ike_name)
        h.virtual_ips.released(ev.ike_id, conn)
        if conn is not None and conn.vips:
            h.dataplane.remove_virtual_ips(ev.ike_name)
        if conn is None or ev.ike_name in h.held_down:
            return
        keep_up = conn.start_action == "start" or conn.dpd_action == "restart"
        if keep_up and initiate_target(conn) and not h.manager.find(ev.ike_name):
            log.info("re-initiating", connection=ev.ike_name, delay=RETRY_DELAY)
            h.scheduler.retry_at(ev.ike_name, time.monotonic() + RETRY_DELAY)
        elif conn.dpd_action == "trap" and h.traps.supported and not h.traps.armed(ev.ike_name):
            # dpd_action = trap: the next packet for the tunnel starts it again.
            h.traps.install(conn.name)
            log.info("peer lost: trap policy installed, traffic will restart the connection",
                     connection=ev.ike_name)
