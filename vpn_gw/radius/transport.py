"""Asynchronous RADIUS over UDP: one connected socket per server and port, requests matched to
replies by Identifier, retransmission and failover to the next server.

pyrad's ``client_async`` is not used: it gives every request the same timeout handling
(a polling loop per socket), keeps no per-server state for failover, and does not tell a
forged/garbled reply (dropped, keep waiting, RFC 2865 3) from the real one.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pyrad import packet as pp

from .codec import RadiusError, RadiusTimeout, Reply, decode_reply, encode_request

log = logging.getLogger("vpn_gw.radius")


@dataclass(frozen=True)
class RadiusServer:
    """One RADIUS server: address, ports and its shared secret."""
    address: str
    secret: bytes = field(repr=False)
    auth_port: int = 1812
    acct_port: int = 1813

    def __str__(self) -> str:
        return self.address if ":" not in self.address else f"[{self.address}]"


class _Endpoint(asyncio.DatagramProtocol):
    """A connected UDP socket to one (server, port); up to 256 outstanding requests."""

    def __init__(self):
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[pp.Packet, asyncio.Future]] = {}
        self.next_id = 0
        self.dropped = 0  # replies that failed to decode/authenticate, or matched nothing

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 20:
            self.dropped += 1
            return
        entry = self.pending.get(data[1])
        if entry is None:
            self.dropped += 1
            return
        request, fut = entry
        try:
            reply = decode_reply(request, data)
        except RadiusError as e:
            self.dropped += 1
            log.warning("RADIUS reply dropped: %s", e)
            return
        if not fut.done():
            fut.set_result(reply)

    def error_received(self, exc) -> None:  # ICMP port unreachable etc.: retries handle it
        log.debug("RADIUS socket error: %s", exc)

    def allocate_id(self) -> int:
        for _ in range(256):
            i = self.next_id
            self.next_id = (self.next_id + 1) % 256
            if i not in self.pending:
                return i
        raise RadiusError("256 RADIUS requests outstanding to one server")


class RadiusTransport:
    """Sends requests to a list of servers: ``timeout`` seconds per try, ``retries`` more tries
    per server, then the next server. The server that answered last is tried first."""

    def __init__(self, servers: list[RadiusServer], *, timeout: float = 3.0, retries: int = 2,
                 source: str | None = None):
        if not servers:
            raise RadiusError("no RADIUS server configured")
        self.servers = list(servers)
        self.timeout = timeout
        self.retries = retries
        self.source = source
        self.current = 0
        self._endpoints: dict[tuple[int, str], _Endpoint] = {}
        self.sent = 0
        self.timeouts = 0

    async def _endpoint(self, server_index: int, kind: str) -> _Endpoint:
        key = (server_index, kind)
        ep = self._endpoints.get(key)
        if ep is None or ep.transport is None or ep.transport.is_closing():
            s = self.servers[server_index]
            port = s.auth_port if kind == "auth" else s.acct_port
            loop = asyncio.get_running_loop()
            local = (self.source, 0) if self.source else None
            _, ep = await loop.create_datagram_endpoint(_Endpoint, remote_addr=(s.address, port),
                                                        local_addr=local)
            self._endpoints[key] = ep
        return ep

    async def send(self, build: Callable[[RadiusServer], pp.Packet], kind: str, *,
                   pinned: int | None = None) -> tuple[int, Reply]:
        """``build(server)`` makes the request for one server (its secret); returns the index
        of the server that answered and its reply. ``pinned`` sends to that server only (the
        rounds of one EAP conversation must reach the server holding its State)."""
        order = [pinned] if pinned is not None else \
            [(self.current + i) % len(self.servers) for i in range(len(self.servers))]
        tried = []
        for idx in order:
            server = self.servers[idx]
            reply = await self._send_to(idx, server, build, kind)
            if reply is not None:
                if pinned is None and idx != self.current:
                    log.warning("RADIUS: failing over to server %s", server)
                    self.current = idx
                return idx, reply
            tried.append(str(server))
            log.warning("RADIUS server %s did not answer (%d tries of %.1f s)",
                        server, self.retries + 1, self.timeout)
        raise RadiusTimeout(f"no answer from RADIUS server{'s' if len(tried) > 1 else ''} "
                            f"{', '.join(tried)}")

    async def _send_to(self, idx: int, server: RadiusServer, build, kind: str) -> Reply | None:
        ep = await self._endpoint(idx, kind)
        pkt = build(server)
        pkt.id = ep.allocate_id()
        raw = encode_request(pkt)  # same Identifier and Authenticator on every retransmission
        fut = asyncio.get_running_loop().create_future()
        ep.pending[pkt.id] = (pkt, fut)
        assert ep.transport is not None  # set by create_datagram_endpoint
        try:
            for _ in range(self.retries + 1):
                ep.transport.sendto(raw)
                self.sent += 1
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
                except TimeoutError:
                    self.timeouts += 1
            return None
        finally:
            ep.pending.pop(pkt.id, None)
            if not fut.done():
                fut.cancel()

    def close(self) -> None:
        for ep in self._endpoints.values():
            if ep.transport is not None:
                ep.transport.close()
        self._endpoints.clear()
