"""The gateway's RADIUS client: EAP relayed to a RADIUS server (RFC 3579) and accounting
(RFC 2866).

::

    client = RadiusClient([RadiusServer("192.0.2.10", secret)], nas_identifier="gw1")
    relay = client.eap_relay(called_station_id="192.0.2.1[4500]", calling_station_id="198.51.100.7[4500]")
    first = relay.start()                 # EAP-Request/Identity, made locally (no RADIUS yet)
    step = await relay.process(response)  # each EAP-Response from the client
    # step.send (Request / Success / Failure), step.done, step.success, step.msk, relay.accept
"""
from __future__ import annotations

import ipaddress
import os
import struct
import time
from dataclasses import dataclass, field

from pyrad import packet as pp

from ikev2.eap.packet import EapStep

from .codec import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    RadiusError,
    Reply,
    decrypt_mppe_key,
    dictionary,
    ip_value,
    join_eap,
    msk_from_mppe,
    split_eap,
)
from .transport import RadiusServer, RadiusTransport

EAP_REQUEST, EAP_RESPONSE, EAP_SUCCESS, EAP_FAILURE = 1, 2, 3, 4
EAP_IDENTITY = 1

# Acct-Terminate-Cause (RFC 2866 5.10), as the gateway uses them
CAUSE_USER_REQUEST = 1     # the client deleted its IKE SA
CAUSE_LOST_CARRIER = 2     # DPD: the client stopped answering
CAUSE_IDLE_TIMEOUT = 4
CAUSE_SESSION_TIMEOUT = 5
CAUSE_ADMIN_RESET = 6      # Disconnect-Request, or `vpn-gw` terminated it
CAUSE_ADMIN_REBOOT = 7     # the daemon stops
CAUSE_NAS_ERROR = 9
CAUSE_NAS_REQUEST = 10     # the gateway deleted it (rekey failure, reauthentication)


@dataclass
class AcceptAttributes:
    """What an Access-Accept told us about the user."""
    user_name: str | None = None
    ip4: str | None = None                 # Framed-IP-Address (overrides the pool)
    ip6: str | None = None                 # Framed-IPv6-Address or an address of Framed-IPv6-Prefix
    dns: list[str] = field(default_factory=list)
    classes: list[bytes] = field(default_factory=list)   # Class, echoed into accounting
    session_timeout: int | None = None
    interim_interval: int | None = None

    @property
    def addresses(self) -> list[str]:
        return [a for a in (self.ip4, self.ip6) if a]


def accept_attributes(reply: Reply) -> AcceptAttributes:
    a = AcceptAttributes()
    a.user_name = reply.first("User-Name")
    fip = ip_value(reply.first("Framed-IP-Address"))
    # RFC 2865 5.8: 255.255.255.255 = let the user choose, 255.255.255.254 = the NAS chooses
    if fip not in (None, "255.255.255.255", "255.255.255.254"):
        a.ip4 = fip
    a.ip6 = ip_value(reply.first("Framed-IPv6-Address"))
    prefix = reply.first("Framed-IPv6-Prefix")
    if a.ip6 is None and prefix is not None:
        try:
            net = ipaddress.IPv6Network(prefix)
        except ValueError:
            raise RadiusError(f"malformed Framed-IPv6-Prefix {prefix!r}") from None
        # a /128 is the address itself; a shorter prefix: its first host address
        a.ip6 = str(net.network_address if net.prefixlen == 128 else net.network_address + 1)
    for name in ("MS-Primary-DNS-Server", "MS-Secondary-DNS-Server", "DNS-Server-IPv6-Address"):
        a.dns += [d for d in (ip_value(v) for v in reply.values(name)) if d is not None]
    a.classes = [bytes(v) for v in reply.values("Class")]
    a.session_timeout = reply.first("Session-Timeout")
    a.interim_interval = reply.first("Acct-Interim-Interval")
    return a


class RadiusClient:
    """RADIUS for one gateway: the servers, the NAS-Identifier, and request construction."""

    def __init__(self, servers: list[RadiusServer], *, nas_identifier: str = "vpn-gw",
                 timeout: float = 3.0, retries: int = 2, source: str | None = None,
                 random_bytes=os.urandom):
        self.transport = RadiusTransport(servers, timeout=timeout, retries=retries, source=source)
        self.nas_identifier = nas_identifier
        self.random_bytes = random_bytes
        self.dict = dictionary()

    def close(self) -> None:
        self.transport.close()

    def eap_relay(self, *, called_station_id: str = "", calling_station_id: str = "",
                  nas_port: int | None = None) -> EapRelay:
        return EapRelay(self, called_station_id=called_station_id,
                        calling_station_id=calling_station_id, nas_port=nas_port)

    def _common(self, pkt: pp.Packet, called: str, calling: str, nas_port: int | None) -> None:
        pkt.AddAttribute("NAS-Identifier", self.nas_identifier)
        pkt.AddAttribute("NAS-Port-Type", "Virtual")
        if nas_port is not None:
            pkt.AddAttribute("NAS-Port", nas_port)
        if called:
            pkt.AddAttribute("Called-Station-Id", called)
        if calling:
            pkt.AddAttribute("Calling-Station-Id", calling)

    async def account(self, session: AcctSession, status: str, *, octets_in: int = 0,
                      octets_out: int = 0, packets_in: int = 0, packets_out: int = 0,
                      cause: int | None = None, now: float | None = None) -> None:
        """One Accounting-Request (Start / Interim-Update / Stop); raises RadiusTimeout if no
        server answered."""
        now = time.time() if now is None else now

        def build(server: RadiusServer) -> pp.Packet:
            pkt = pp.AcctPacket(code=ACCOUNTING_REQUEST, secret=server.secret, dict=self.dict)
            pkt.AddAttribute("Acct-Status-Type", status)
            pkt.AddAttribute("Acct-Session-Id", session.session_id)
            pkt.AddAttribute("User-Name", session.user_name)
            self._common(pkt, session.called_station_id, session.calling_station_id, session.nas_port)
            pkt.AddAttribute("Service-Type", "Framed-User")
            pkt.AddAttribute("Acct-Authentic", "RADIUS")
            pkt.AddAttribute("Event-Timestamp", int(now))
            for a in session.addresses:
                if ":" in a:
                    pkt.AddAttribute("Framed-IPv6-Address", a)
                else:
                    pkt.AddAttribute("Framed-IP-Address", a)
            for c in session.classes:
                pkt.AddAttribute("Class", c)
            if status != "Start":
                pkt.AddAttribute("Acct-Session-Time", max(0, int(now - session.started)))
                for name, value in (("Input", octets_in), ("Output", octets_out)):
                    pkt.AddAttribute(f"Acct-{name}-Octets", value & 0xFFFFFFFF)
                    pkt.AddAttribute(f"Acct-{name}-Gigawords", value >> 32)
                pkt.AddAttribute("Acct-Input-Packets", packets_in & 0xFFFFFFFF)
                pkt.AddAttribute("Acct-Output-Packets", packets_out & 0xFFFFFFFF)
            if status == "Stop" and cause is not None:
                pkt.AddAttribute("Acct-Terminate-Cause", cause)
            return pkt

        await self.transport.send(build, "acct")


@dataclass
class AcctSession:
    """The accounting view of one IKE SA."""
    session_id: str
    user_name: str
    started: float
    addresses: list[str] = field(default_factory=list)
    classes: list[bytes] = field(default_factory=list)
    called_station_id: str = ""
    calling_station_id: str = ""
    nas_port: int | None = None


class EapRelay:
    """One EAP conversation relayed to RADIUS (pass-through authenticator, RFC 3579).

    The gateway sends EAP-Request/Identity itself; the client's Identity Response opens the
    RADIUS conversation (User-Name = that identity). Each Access-Challenge carries the next
    EAP Request and a State, echoed in the next Access-Request. Every round goes to the server
    that answered the first one (it holds the State)."""

    def __init__(self, client: RadiusClient, *, called_station_id: str, calling_station_id: str,
                 nas_port: int | None):
        self.client = client
        self.called = called_station_id
        self.calling = calling_station_id
        self.nas_port = nas_port
        self.identity: str | None = None
        self.state: bytes | None = None
        self.server: int | None = None
        self.accept: AcceptAttributes | None = None
        self.done = False
        self._last_id = 0

    def start(self) -> bytes:
        """EAP-Request/Identity (RFC 3748 5.1) with a random Identifier."""
        ident = self.client.random_bytes(1)[0]
        return struct.pack("!BBHB", EAP_REQUEST, ident, 5, EAP_IDENTITY)

    async def process(self, message: bytes) -> EapStep:
        """One EAP-Response from the client in, the next step out. Raises RadiusError for a
        malformed response or a RADIUS failure (no server answered, malformed reply)."""
        if self.done:
            raise RadiusError("EAP conversation already finished")
        if len(message) < 5 or message[0] != EAP_RESPONSE:
            raise RadiusError("not an EAP-Response")
        if struct.unpack("!H", message[2:4])[0] != len(message):
            raise RadiusError("EAP-Response Length does not match its size")
        self._last_id = message[1]
        if self.identity is None:
            if message[4] != EAP_IDENTITY:
                raise RadiusError("the first EAP-Response must be an Identity response")
            try:
                self.identity = message[5:].decode("utf-8")
            except UnicodeDecodeError:
                raise RadiusError("EAP identity is not UTF-8") from None
            if not self.identity:
                raise RadiusError("empty EAP identity")
        chunks = split_eap(message)

        def build(server: RadiusServer) -> pp.Packet:
            pkt = pp.AuthPacket(code=ACCESS_REQUEST, secret=server.secret, dict=self.client.dict)
            pkt.add_message_authenticator()
            pkt.AddAttribute("User-Name", self.identity)
            self.client._common(pkt, self.called, self.calling, self.nas_port)
            pkt.AddAttribute("Service-Type", "Framed-User")
            for c in chunks:
                pkt.AddAttribute("EAP-Message", c)
            if self.state is not None:
                pkt.AddAttribute("State", self.state)
            return pkt

        self.server, reply = await self.client.transport.send(build, "auth", pinned=self.server)
        eap = join_eap(reply.values("EAP-Message"))
        if reply.code == ACCESS_CHALLENGE:
            if eap is None or eap[0] != EAP_REQUEST:
                raise RadiusError("Access-Challenge without an EAP-Request")
            self.state = reply.first("State")
            return EapStep(send=eap, identity=self.identity)
        self.done = True
        if reply.code == ACCESS_REJECT:
            why = reply.first("Reply-Message") or "Access-Reject"
            fail = eap if eap is not None and eap[0] == EAP_FAILURE else \
                struct.pack("!BBH", EAP_FAILURE, self._last_id, 4)
            return EapStep(send=fail, done=True, success=False, identity=self.identity,
                           reason=f"RADIUS rejected '{self.identity}': {why}")
        assert reply.code == ACCESS_ACCEPT
        recv, send = reply.first("MS-MPPE-Recv-Key"), reply.first("MS-MPPE-Send-Key")
        msk = None
        if recv is not None and send is not None:
            secret = self.client.transport.servers[self.server].secret
            ra = reply.request_authenticator
            msk = msk_from_mppe(decrypt_mppe_key(recv, secret, ra), decrypt_mppe_key(send, secret, ra))
        self.accept = accept_attributes(reply)
        ok = eap if eap is not None and eap[0] == EAP_SUCCESS else \
            struct.pack("!BBH", EAP_SUCCESS, self._last_id, 4)
        return EapStep(send=ok, done=True, success=True, identity=self.identity, msk=msk)
