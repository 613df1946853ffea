"""The daemon's RADIUS service: the gateway side of ``remote_auth = "eap-radius"``.

* ``backend()`` is the connection's ``eap_server`` factory: one :class:`RelayBackend` (an
  ``ikev2.eap_async.AsyncEapServer``) per IKE SA.
* ``on_event(ev)`` is fed every engine event before the daemon handles it:
  ``EapVerdictNeeded`` → the EAP-Response is relayed in a task and the verdict handed back with
  ``IkeManager.eap_verdict``; ``IkeUp`` → Accounting Start (and the Interim-Update timer);
  ``ChildDown`` → its byte/packet counters are kept for the session; ``IkeDown`` → Stop.
* ``framed(identity)``: the Framed-IP-Address / Framed-IPv6-Prefix / DNS of the user's
  Access-Accept, consumed by the address assignment (they override the pool).
* ``start()`` opens the Disconnect/CoA listener (Disconnect-Request deletes the matching
  IKE SAs; CoA-Request sets their Session-Timeout, as strongSwan's eap-radius); ``stop()`` sends Stop for the remaining
  sessions (Admin-Reboot) and closes everything.

A RADIUS failure never blocks the engine: no answer → the client is refused
(AUTHENTICATION_FAILED, the reason logged); accounting failures are logged and do not
affect the SA.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from ikev2 import events as E
from ikev2.eap.packet import EapStep
from ikev2.eap_async import AsyncEapServer, EapVerdictNeeded

from . import client as rc
from .codec import RadiusError
from .dae import CoaRequest, DaeListener, DisconnectRequest, start_dae_listener
from .settings import MIN_INTERIM, RFC_INTERIM, RadiusConfig
from .transport import RadiusServer

log = structlog.get_logger("vpn_gw.radius")


def station_id(addr: tuple[str, int]) -> str:
    """Called/Calling-Station-Id as strongSwan's eap-radius writes them: ``address[port]``."""
    return f"{addr[0]}[{addr[1]}]"


class RelayBackend(AsyncEapServer):
    """One IKE SA's EAP conversation, relayed to RADIUS."""

    def __init__(self, service: RadiusService):
        super().__init__()
        self.relay = service.client.eap_relay()

    def start(self) -> bytes:
        return self.relay.start()


@dataclass
class _Session:
    acct: rc.AcctSession
    children: set = field(default_factory=set)        # spi_in of live Child SAs
    closed: list = field(default_factory=lambda: [0, 0, 0, 0])  # bytes in/out, packets in/out
    interim: asyncio.Task | None = None
    expiry: asyncio.TimerHandle | None = None      # Session-Timeout from the Access-Accept


def terminate_cause(reason: str) -> int:
    r = reason.lower()
    if "deleted by peer" in r:
        return rc.CAUSE_USER_REQUEST
    if "did not answer" in r or "dead peer" in r:
        return rc.CAUSE_LOST_CARRIER
    if "session-timeout" in r:
        return rc.CAUSE_SESSION_TIMEOUT
    if "disconnect-request" in r:
        return rc.CAUSE_ADMIN_RESET
    if "shutting down" in r:
        return rc.CAUSE_ADMIN_REBOOT
    return rc.CAUSE_NAS_REQUEST


class RadiusService:
    def __init__(self, cfg: RadiusConfig, gateway):
        self.cfg = cfg
        self.gw = gateway
        secret = cfg.secret.reveal()
        servers = [RadiusServer(str(a), secret, cfg.auth_port, cfg.acct_port) for a in cfg.servers]
        self.client = rc.RadiusClient(servers, nas_identifier=cfg.nas_identifier, timeout=cfg.timeout,
                                      retries=cfg.retries)
        self._accepted: dict[int, rc.AcceptAttributes] = {}   # ike_id -> its Access-Accept
        self._framed: dict[str, rc.AcceptAttributes] = {}     # identity -> until address assignment
        self._sessions: dict[int, _Session] = {}
        self._tasks: set[asyncio.Task] = set()
        self.dae: DaeListener | None = None
        self.stats = {"accepted": 0, "rejected": 0, "errors": 0, "acct_failed": 0}

    # ------------------------------------------------------------------ engine side

    def backend(self) -> RelayBackend:
        return RelayBackend(self)

    def framed(self, identity: str) -> rc.AcceptAttributes | None:
        return self._framed.pop(identity, None)

    def on_event(self, ev: E.Event) -> None:
        if isinstance(ev, EapVerdictNeeded) and isinstance(ev.backend, RelayBackend):
            self._spawn(self._decide(ev))
        elif isinstance(ev, E.IkeUp) and ev.ike_id in self._accepted and ev.ike_id not in self._sessions:
            self._session_up(ev)
        elif isinstance(ev, E.ChildUp) and ev.ike_id in self._sessions:
            self._sessions[ev.ike_id].children.add(ev.keys.spi_in)
        elif isinstance(ev, E.ChildDown) and ev.ike_id in self._sessions:
            s = self._sessions[ev.ike_id]
            if ev.spi_in in s.children:
                s.children.discard(ev.spi_in)
                c = self.gw.dataplane.counters(ev.spi_in)
                if c is not None:
                    for i, v in enumerate((c.bytes_in, c.bytes_out, c.packets_in, c.packets_out)):
                        s.closed[i] += v
        elif isinstance(ev, E.IkeDown):
            self._accepted.pop(ev.ike_id, None)
            gone = self._sessions.pop(ev.ike_id, None)
            if gone is not None:
                self._session_down(gone, terminate_cause(ev.reason))

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _decide(self, ev: EapVerdictNeeded) -> None:
        backend = ev.backend
        assert isinstance(backend, RelayBackend)  # on_event only hands out our own
        relay = backend.relay
        relay.called, relay.calling = station_id(ev.local), station_id(ev.peer)
        try:
            step = await relay.process(ev.message)
        except RadiusError as e:
            self.stats["errors"] += 1
            log.warning("RADIUS: client refused", connection=ev.ike_name, ike_id=ev.ike_id,
                        identity=relay.identity, reason=str(e))
            step = EapStep(done=True, success=False, identity=relay.identity, reason=f"RADIUS: {e}")
        if step.done and step.success and relay.accept is not None and relay.identity:
            self.stats["accepted"] += 1
            self._accepted[ev.ike_id] = relay.accept
            self._framed[relay.identity] = relay.accept
            log.info("RADIUS Access-Accept", identity=relay.identity, ike_id=ev.ike_id,
                     framed=relay.accept.addresses or None, msk=step.msk is not None)
        elif step.done:
            self.stats["rejected"] += 1
        self.gw.manager.eap_verdict(ev.ike_id, ev.ticket, step, time.monotonic())
        self.gw.flush()

    # ------------------------------------------------------------------ accounting

    def _session_up(self, ev: E.IkeUp) -> None:
        """A RADIUS-authenticated IKE SA is up: its session (for accounting, Disconnect-Request
        and Session-Timeout)."""
        accept = self._accepted[ev.ike_id]
        sa = self.gw.manager.by_id(ev.ike_id)
        now = time.time()
        acct = rc.AcctSession(
            session_id=f"{int(now):08x}-{ev.ike_id:08x}",
            user_name=(sa.eap_identity if sa is not None and sa.eap_identity else ev.remote_id),
            started=now, addresses=list(sa.virtual_ips) if sa is not None else [],
            classes=list(accept.classes), called_station_id=station_id(ev.local),
            calling_station_id=station_id(ev.remote))
        s = _Session(acct)
        if sa is not None:
            s.children = {c.spi_in for c in sa.children}
        self._sessions[ev.ike_id] = s
        loop = asyncio.get_running_loop()
        if accept.session_timeout:
            s.expiry = loop.call_later(float(accept.session_timeout), self._expire, ev.ike_id)
        if not self.cfg.accounting:
            return
        self._spawn(self._account(s, "Start"))
        # Acct-Interim-Interval from the Access-Accept wins (as strongSwan's eap-radius); below
        # 60 s is allowed (RFC 2869 5.16 says SHOULD NOT) with a warning, below 1 s raised to 1 s
        interval = float(accept.interim_interval or self.cfg.interim_interval)
        if interval:
            if interval < RFC_INTERIM:
                log.warning("RADIUS Interim-Update interval below 60 s (RFC 2869 5.16)",
                            interval=interval, session=acct.session_id,
                            source="Access-Accept" if accept.interim_interval else "config")
            s.interim = loop.create_task(self._interim(s, max(MIN_INTERIM, interval)))

    def _expire(self, ike_id: int) -> None:
        sa = self.gw.manager.by_id(ike_id)
        if sa is not None:
            log.info("RADIUS Session-Timeout: deleting the IKE SA", ike_id=ike_id)
            sa.delete(time.monotonic(), "RADIUS Session-Timeout")
            self.gw.flush()

    def _counters(self, s: _Session) -> list[int]:
        total = list(s.closed)
        for spi in s.children:
            c = self.gw.dataplane.counters(spi)
            if c is not None:
                for i, v in enumerate((c.bytes_in, c.bytes_out, c.packets_in, c.packets_out)):
                    total[i] += v
        return total

    async def _interim(self, s: _Session, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._account(s, "Interim-Update")

    def _session_down(self, s: _Session, cause: int) -> None:
        if s.interim is not None:
            s.interim.cancel()
        if s.expiry is not None:
            s.expiry.cancel()
        if self.cfg.accounting:
            self._spawn(self._account(s, "Stop", cause=cause))

    async def _account(self, s: _Session, status: str, cause: int | None = None) -> None:
        b_in, b_out, p_in, p_out = self._counters(s)
        try:
            await self.client.account(s.acct, status, octets_in=b_in, octets_out=b_out,
                                      packets_in=p_in, packets_out=p_out, cause=cause)
            log.info("RADIUS accounting", status=status, session=s.acct.session_id,
                     user=s.acct.user_name, octets_in=b_in, octets_out=b_out)
        except RadiusError as e:
            self.stats["acct_failed"] += 1
            log.warning("RADIUS accounting failed", status=status, session=s.acct.session_id,
                        error=str(e))

    # ------------------------------------------------------------------ Disconnect / CoA

    def _disconnect(self, req: DisconnectRequest) -> int:
        now = time.monotonic()
        n = 0
        for ike_id, s in list(self._sessions.items()):
            if req.matches(s.acct.user_name, s.acct.session_id, s.acct.addresses):
                sa = self.gw.manager.by_id(ike_id)
                if sa is not None:
                    sa.delete(now, "RADIUS Disconnect-Request")
                    n += 1
        if n:
            self.gw.flush()
        return n

    def _coa(self, req: CoaRequest) -> int:
        """CoA-Request (as strongSwan's eap-radius): the matching sessions end
        ``req.session_timeout`` seconds from now (replacing any earlier Session-Timeout)."""
        loop = asyncio.get_running_loop()
        n = 0
        for ike_id, s in self._sessions.items():
            if req.match.matches(s.acct.user_name, s.acct.session_id, s.acct.addresses):
                if s.expiry is not None:
                    s.expiry.cancel()
                s.expiry = loop.call_later(float(req.session_timeout), self._expire, ike_id)
                log.info("RADIUS CoA: new Session-Timeout", ike_id=ike_id, session=s.acct.session_id,
                         seconds=req.session_timeout)
                n += 1
        return n

    async def start(self) -> None:
        if self.cfg.dae_port:
            secret = self.cfg.secret.reveal()
            try:
                self.dae = await start_dae_listener(str(self.cfg.dae_listen), self.cfg.dae_port,
                                                    {str(a): secret for a in self.cfg.servers},
                                                    self._disconnect, self._coa)
            except OSError as e:
                log.error("RADIUS Disconnect/CoA listener cannot start", port=self.cfg.dae_port,
                          error=str(e))
            else:
                log.info("RADIUS Disconnect/CoA listener", address=str(self.cfg.dae_listen),
                         port=self.cfg.dae_port)

    async def stop(self, timeout: float = 3.0) -> None:
        for s in list(self._sessions.values()):
            self._session_down(s, rc.CAUSE_ADMIN_REBOOT)
        self._sessions.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for t in list(self._tasks):
            t.cancel()
        if self.dae is not None and self.dae.transport is not None:
            self.dae.transport.close()
        self.client.close()
