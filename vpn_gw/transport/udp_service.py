"""The gateway's UDP side: the IKE sockets on 500 and 4500 of every listen address, what arrives
on them (IKE to the engine, ESP to the data plane, firewall-traversal probes answered here) and
sending IKE and ESP from the right socket.

The service is given its receivers (``DatagramSinks``); it knows nothing of the daemon.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from ikev2.constants import NON_ESP_MARKER
from vpn_gw.bind_errors import BindError
from vpn_gw.probe import ProbeResponder, is_probe
from vpn_gw.transport.udp import IkeSocket

if TYPE_CHECKING:
    from vpn_gw.config import GatewayConfig
    from vpn_gw.dataplane import DataPlane

log = structlog.get_logger("vpn_gw")

Endpoint = tuple[str, int]

RECV_BATCH = 64  # datagrams read per socket wake-up before the loop runs other work


@dataclass
class DatagramSinks:
    """Where received datagrams go."""
    ike: Callable[[bytes, Endpoint, Endpoint], None]   # an IKE message (marker removed)
    after_batch: Callable[[], None]                     # after each wake-up: send what it produced


class UdpService:
    def __init__(self, config: Callable[[], GatewayConfig], dataplane: DataPlane, sinks: DatagramSinks,
                 probe_responder: ProbeResponder):
        self._config = config  # a getter: follows `vpn-gw reload`
        self.dataplane = dataplane
        self.sinks = sinks
        self.probe_responder = probe_responder
        self.sockets: dict[tuple[int, int], list[IkeSocket]] = {}  # (family, port) -> sockets
        self._sock_cache: dict[Endpoint, IkeSocket] = {}

    @property
    def config(self) -> GatewayConfig:
        return self._config()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        cfg = self.config
        for addr in cfg.listen:
            for port in (cfg.ike_port, cfg.natt_port):
                try:
                    s = IkeSocket(str(addr), port)
                except OSError as e:
                    raise BindError(e, str(addr), port, "UDP (IKE)",
                                    "[gateway] listen, ike_port or natt_port") from None
                if self.dataplane.name == "xfrm":
                    # IKE itself must never be encrypted; the kernel decapsulates ESP-in-UDP.
                    from vpn_gw.dataplane.xfrm.sockets import prepare_ike_socket
                    prepare_ike_socket(s, natt=(port == cfg.natt_port))
                if self.dataplane.name == "userspace" and port == cfg.natt_port and cfg.offload:
                    s.enable_gro()  # ESP bursts arrive coalesced (docs/esp.md, batching)
                self.sockets.setdefault((s.family, port), []).append(s)
                asyncio.get_running_loop().add_reader(s.fileno(), self._readable, s)
                log.info("listening", address=str(addr), port=port)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for socks in self.sockets.values():
            for s in socks:
                loop.remove_reader(s.fileno())
                s.close()
        self.sockets.clear()
        self._sock_cache.clear()

    # ------------------------------------------------------------------ receiving

    def _readable(self, sock: IkeSocket) -> None:
        natt = sock.port == self.config.natt_port
        dp = self.dataplane
        if natt:
            dp.rx_batch_begin()
        recv, esp_received = sock.recv_segments, dp.esp_received
        try:
            for _ in range(RECV_BATCH):  # bounded batch per wake-up
                got = recv()
                if got is None:
                    break
                data, seg, local, remote = got
                if seg:  # UDP GRO: several datagrams from the same source, seg bytes each
                    for off in range(0, len(data), seg):
                        d = data[off:off + seg]
                        if len(d) >= 8 and d[:4] != NON_ESP_MARKER:
                            esp_received(d, local, remote)  # the usual case, without detour
                        else:
                            self._datagram(sock, natt, d, local, remote)
                elif natt and len(data) >= 8 and data[:4] != NON_ESP_MARKER:
                    esp_received(data, local, remote)  # one ESP datagram (no GRO burst): no detour either
                else:
                    self._datagram(sock, natt, data, local, remote)
        finally:
            if natt:
                dp.rx_batch_end()
        self.sinks.after_batch()

    def _datagram(self, sock: IkeSocket, natt: bool, data: bytes, local: Endpoint, remote: Endpoint) -> None:
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
        self.sinks.ike(data, local, remote)

    def _answer_probe(self, sock: IkeSocket, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        reply = self.probe_responder.handle(data, remote[0], time.monotonic())
        if reply is None:
            return
        if sock.port == self.config.natt_port:
            reply = NON_ESP_MARKER + reply
        try:
            sock.send(reply, local[0], remote)
        except OSError:
            pass  # best effort, like the probe itself

    # ------------------------------------------------------------------ sending

    def socket_for(self, local: Endpoint) -> IkeSocket | None:
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

    def send_ike(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        sock = self.socket_for(local)
        if sock is None:
            log.error("no socket to send from", local=f"{local[0]}:{local[1]}")
            return
        if local[1] == self.config.natt_port:
            data = NON_ESP_MARKER + data
        try:
            sock.send(data, local[0], remote)
        except OSError as e:
            log.warning("send failed", remote=f"{remote[0]}:{remote[1]}", error=str(e))

    def send_esp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        """ESP in UDP (and NAT keepalives) from the NAT-T socket: no non-ESP marker."""
        sock = self.socket_for((local[0], self.config.natt_port))
        if sock is None:
            return
        try:
            sock.send(data, local[0], remote)
        except OSError:
            pass  # like a congested or unreachable link: ESP is best effort

    def send_esp_many(self, datagrams: list[bytes], local: Endpoint, remote: Endpoint) -> None:
        """Several ESP datagrams for one path, in order: UDP GSO where the kernel can."""
        sock = self.socket_for((local[0], self.config.natt_port))
        if sock is None:
            return
        try:
            sock.send_many(datagrams, local[0], remote)
        except OSError:
            pass  # like a congested or unreachable link: ESP is best effort
