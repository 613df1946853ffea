"""Dynamic Authorization (RFC 5176): a UDP listener for Disconnect-Request and CoA-Request.

Both name sessions by User-Name, Acct-Session-Id and/or Framed-IP-Address (all given attributes
must match, RFC 5176 3); NAS-Identifier, NAS-IP(v6)-Address, NAS-Port(-Id/-Type),
Called/Calling-Station-Id, Event-Timestamp, Message-Authenticator and Proxy-State may be
present and are not used to match.

* Disconnect-Request: the gateway deletes the matching IKE SAs and answers Disconnect-ACK, or
  Disconnect-NAK with Error-Cause 503 (Session-Context-Not-Found) when nothing matched, 402
  (Missing-Attribute) when the request names no session.
* CoA-Request, as strongSwan's eap-radius (eap_radius_dae.c) does it: the one authorization
  change applied is Session-Timeout (the matching sessions end that many seconds from now,
  accounting Stop with cause Session-Timeout; strongSwan sets it as the IKE SA's
  authentication lifetime). CoA-ACK when at least one session matched; CoA-NAK with Error-Cause
  402 (Missing-Attribute) without a session identification or without Session-Timeout, 401
  (Unsupported-Attribute) when the request carries any other attribute (an authorization change
  the gateway cannot apply is refused, not silently ignored; strongSwan ignores them), 503
  when no session matched, 405 (Unsupported-Service) when the daemon gives no CoA handler.

Requests are accepted only from the configured RADIUS servers' addresses, with a valid
Request Authenticator for that server's secret and, if present, a valid
Message-Authenticator; anything else is dropped (logged). Retransmitted requests (same
source, Identifier and Authenticator within 30 s) get the cached answer (RFC 5176 2.3).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyrad import packet as pp

from .codec import (
    COA_ACK,
    COA_NAK,
    COA_REQUEST,
    DISCONNECT_ACK,
    DISCONNECT_NAK,
    DISCONNECT_REQUEST,
    dictionary,
    verify_request_authenticator,
)

log = logging.getLogger("vpn_gw.radius.dae")

ERROR_UNSUPPORTED_ATTRIBUTE = 401
ERROR_UNSUPPORTED_SERVICE = 405
ERROR_MISSING_ATTRIBUTE = 402
ERROR_SESSION_NOT_FOUND = 503
DUPLICATE_WINDOW = 30.0


@dataclass(frozen=True)
class DisconnectRequest:
    """Which sessions to end (None = not given)."""
    user_name: str | None
    session_id: str | None
    framed_ip: str | None

    def matches(self, user_name: str | None, session_id: str | None, addresses) -> bool:
        if self.user_name is not None and self.user_name != user_name:
            return False
        if self.session_id is not None and self.session_id != session_id:
            return False
        return not (self.framed_ip is not None and self.framed_ip not in set(addresses))

    @property
    def names_nothing(self) -> bool:
        return self.user_name is None and self.session_id is None and self.framed_ip is None


@dataclass(frozen=True)
class CoaRequest:
    """Which sessions (``match``), and the change: they end ``session_timeout`` s from now."""
    match: DisconnectRequest
    session_timeout: int


# attributes that identify the session (matched) or the NAS / the request itself (not used)
IDENTIFYING = ("User-Name", "Acct-Session-Id", "Framed-IP-Address")
NOT_MATCHED = frozenset({"NAS-Identifier", "NAS-IP-Address", "NAS-IPv6-Address", "NAS-Port", "NAS-Port-Id",
                         "NAS-Port-Type", "Called-Station-Id", "Calling-Station-Id", "Event-Timestamp",
                         "Message-Authenticator", "Proxy-State"})
COA_APPLIED = frozenset({"Session-Timeout"})


class DaeListener(asyncio.DatagramProtocol):
    """``disconnect(request) -> number of sessions ended`` is called for each authentic
    Disconnect-Request, ``coa(request) -> number of sessions changed`` for each valid
    CoA-Request (None: CoA-NAK 405). ``secrets`` maps a client address (text) to its shared
    secret."""

    def __init__(self, secrets: dict[str, bytes], disconnect: Callable[[DisconnectRequest], int],
                 coa: Callable[[CoaRequest], int] | None = None):
        self.secrets = {str(ipaddress.ip_address(a)): s for a, s in secrets.items()}
        self.disconnect = disconnect
        self.coa = coa
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0
        self._recent: dict[tuple, tuple[float, bytes]] = {}

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if self.transport is None:
            return
        src = str(ipaddress.ip_address(addr[0].split("%")[0]))
        secret = self.secrets.get(src)
        if secret is None:
            return self._drop(f"request from unknown client {src}")
        if len(data) < 20 or len(data) > 4096:
            return self._drop(f"{len(data)}-octet datagram from {src}")
        if len(data) < int.from_bytes(data[2:4], "big") or int.from_bytes(data[2:4], "big") < 20:
            return self._drop(f"bad Length from {src}")
        data = data[:int.from_bytes(data[2:4], "big")]
        if not verify_request_authenticator(data, secret):
            return self._drop(f"bad Request Authenticator from {src} (wrong secret?)")
        # authentic: a retransmission (same source, Identifier, Authenticator) gets the same answer
        key = (src, data[1], data[4:20])
        now = time.monotonic()
        self._recent = {k: v for k, v in self._recent.items() if now - v[0] < DUPLICATE_WINDOW}
        if key in self._recent:
            self.transport.sendto(self._recent[key][1], addr)
            return
        try:
            req = pp.CoAPacket(secret=secret, dict=dictionary(), packet=data)
        except Exception as e:  # noqa: BLE001 - whatever pyrad raises on bad input
            return self._drop(f"malformed request from {src}: {e}")
        if req.code not in (DISCONNECT_REQUEST, COA_REQUEST):
            return self._drop(f"code {req.code} from {src}")
        if req.message_authenticator and not req.verify_message_authenticator():
            return self._drop(f"bad Message-Authenticator from {src}")
        reply = req.CreateReply()
        try:
            what = DisconnectRequest(
                user_name=(req.get("User-Name") or [None])[0],
                session_id=(req.get("Acct-Session-Id") or [None])[0],
                framed_ip=(req.get("Framed-IP-Address") or [None])[0])
            names = [k if isinstance(k, str) else repr(k) for k in req.keys()]
            timeout = (req.get("Session-Timeout") or [None])[0]
        except Exception as e:  # noqa: BLE001 - whatever pyrad raises on bad input
            return self._drop(f"malformed attribute from {src}: {e}")
        if req.code == COA_REQUEST:
            self._coa(req, reply, src, what, names, timeout)
        elif what.names_nothing:
            reply.code = DISCONNECT_NAK
            reply.AddAttribute("Error-Cause", ERROR_MISSING_ATTRIBUTE)
        else:
            n = self.disconnect(what)
            log.info("Disconnect-Request from %s: %d session(s) ended", src, n)
            if n == 0:
                reply.code = DISCONNECT_NAK
                reply.AddAttribute("Error-Cause", ERROR_SESSION_NOT_FOUND)
            else:
                assert reply.code == DISCONNECT_ACK
        raw = reply.ReplyPacket()
        self._recent[key] = (now, raw)
        self.transport.sendto(raw, addr)

    def _coa(self, req, reply, src: str, what: DisconnectRequest, names: list[str],
             timeout: int | None) -> None:
        reply.code = COA_NAK
        unsupported = sorted(set(names) - set(IDENTIFYING) - NOT_MATCHED - COA_APPLIED)
        if self.coa is None:
            cause, why = ERROR_UNSUPPORTED_SERVICE, "CoA not enabled"
        elif what.names_nothing:
            cause, why = ERROR_MISSING_ATTRIBUTE, "no User-Name, Acct-Session-Id or Framed-IP-Address"
        elif unsupported:
            cause, why = ERROR_UNSUPPORTED_ATTRIBUTE, f"cannot apply {', '.join(unsupported)}"
        elif timeout is None:
            cause, why = ERROR_MISSING_ATTRIBUTE, "no Session-Timeout (the one change supported)"
        else:
            n = self.coa(CoaRequest(what, int(timeout)))
            log.info("CoA-Request from %s: Session-Timeout %d s applied to %d session(s)", src, timeout, n)
            if n:
                reply.code = COA_ACK
                return
            cause, why = ERROR_SESSION_NOT_FOUND, "no session matches"
        log.info("CoA-Request from %s refused (Error-Cause %d): %s", src, cause, why)
        reply.AddAttribute("Error-Cause", cause)

    def _drop(self, why: str) -> None:
        self.dropped += 1
        log.warning("Disconnect/CoA request dropped: %s", why)


async def start_dae_listener(host: str, port: int, secrets: dict[str, bytes],
                             disconnect: Callable[[DisconnectRequest], int],
                             coa: Callable[[CoaRequest], int] | None = None) -> DaeListener:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: DaeListener(secrets, disconnect, coa),
                                                   local_addr=(host, port))
    return proto
