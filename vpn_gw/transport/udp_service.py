"""The gateway's UDP side: the IKE sockets on 500 and 4500 of every listen address, what arrives
on them (IKE to the engine, ESP to the data plane, firewall-traversal probes answered here) and
sending IKE and ESP from the right socket.

The service is given its receivers (``DatagramSinks``); it knows nothing of the daemon.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from ikev2.constants import NON_ESP_MARKER
from vpn_gw.accel import recv_runs
from vpn_gw.bind_errors import BindError
from vpn_gw.holdoff import Holdoff
from vpn_gw.probe import ProbeResponder, is_probe
from vpn_gw.transport import mmsg, steering
from vpn_gw.transport.udp import BURST, BURST_SLOT, IkeSocket

if TYPE_CHECKING:
    from vpn_gw.config import GatewayConfig
    from vpn_gw.dataplane import DataPlane

@functools.lru_cache(maxsize=1024)
def _pktinfo(local: bytes) -> bytes:
    """The PKTINFO control message sending from a packed local address (a gateway has few)."""
    return mmsg.pktinfo(local)


@functools.lru_cache(maxsize=1024)
def _address_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


log = structlog.get_logger("vpn_gw")


def _tally(data: bytes, seg: int) -> tuple[int, int]:
    """(datagrams, bytes) of one received message (a UDP GRO burst of ``seg``-byte datagrams,
    the last maybe shorter, or one datagram): what a drain found, for the holdoff."""
    return (-(-len(data) // seg) if seg else 1), len(data)

Endpoint = tuple[str, int]

RECV_BATCH = 64  # datagrams read per socket wake-up before the loop runs other work
INIT_BATCH = 64  # cookie-less IKE_SA_INITs read (one recvmmsg) and answered (one sendmmsg) per wake-up
INIT_MAX = 4096  # bytes of one IKE_SA_INIT (never fragmented; a longer datagram arrives empty: dropped)


@dataclass
class DatagramSinks:
    """Where received datagrams go."""
    ike: Callable[[bytes, Endpoint, Endpoint], None]   # an IKE message (marker removed)
    after_batch: Callable[[], None]                     # after each wake-up: send what it produced
    # the stateless COOKIE answer to a cookie-less IKE_SA_INIT (data, ip, port, packed ip, now),
    # or None if the datagram must go to ``ike`` (IkeManager.stateless_init_reply)
    init_reply: Callable[[bytes, str, int, bytes, float], bytes | None] | None = None


class UdpService:
    def __init__(self, config: Callable[[], GatewayConfig], dataplane: DataPlane, sinks: DatagramSinks,
                 probe_responder: ProbeResponder, holdoff: Holdoff | None = None):
        self._config = config  # a getter: follows `vpn-gw reload`
        self.holdoff = holdoff  # wake-up holdoff of the NAT-T sockets (vpn_gw/holdoff.py), None = off
        self.dataplane = dataplane
        self.sinks = sinks
        self.probe_responder = probe_responder
        self.sockets: dict[tuple[int, int], list[IkeSocket]] = {}  # (family, port) -> sockets
        self._sock_cache: dict[Endpoint, IkeSocket] = {}
        self.init_sockets: list[IkeSocket] = []  # the INIT sockets of every steering group
        self._batches: tuple[mmsg.RecvBatch, mmsg.SendBatch] | None = None

    @property
    def config(self) -> GatewayConfig:
        return self._config()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        cfg = self.config
        for addr in cfg.listen:
            for port in (cfg.ike_port, cfg.natt_port):
                steer = self.sinks.init_reply is not None and mmsg.available()
                try:
                    s = IkeSocket(str(addr), port, reuseport=steer)
                except OSError as e:
                    raise BindError(e, str(addr), port, "UDP (IKE)",
                                    "[gateway] listen, ike_port or natt_port") from None
                self._prepare(s, port)
                if self.dataplane.name == "userspace" and port == cfg.natt_port and cfg.offload:
                    s.enable_gro()  # ESP bursts arrive coalesced (docs/esp.md, batching)
                self.sockets.setdefault((s.family, port), []).append(s)
                asyncio.get_running_loop().add_reader(s.fileno(), self._readable, s)
                if steer:
                    self._open_init_socket(s, port == cfg.natt_port)
                log.info("listening", address=str(addr), port=port, init_socket=steer)

    def _prepare(self, s: IkeSocket, port: int) -> None:
        if self.dataplane.name == "xfrm":
            # IKE itself must never be encrypted; the kernel decapsulates ESP-in-UDP.
            from vpn_gw.dataplane.xfrm.sockets import prepare_ike_socket
            prepare_ike_socket(s, natt=(port == self.config.natt_port))

    def _open_init_socket(self, main: IkeSocket, natt: bool) -> None:
        """The INIT sockets of main's steering group, for cookie-less IKE_SA_INITs
        (vpn_gw/transport/steering.py). Without them (an old kernel) main receives everything."""
        inits: list[IkeSocket] = []
        try:
            for _ in range(steering.INIT_BUCKETS):
                init = IkeSocket(main.address, main.port, reuseport=True)
                inits.append(init)
                self._prepare(init, main.port)
            steering.attach(main.sock, natt)
        except OSError as e:
            for init in inits:
                init.close()  # a group without the program would spread datagrams at random
            log.warning("no separate sockets for IKE_SA_INIT requests", address=main.address, port=main.port,
                        error=str(e))
            return
        if self._batches is None:  # filled and emptied within one callback: one pair for all INIT sockets
            self._batches = mmsg.RecvBatch(INIT_BATCH, INIT_MAX), mmsg.SendBatch(INIT_BATCH, 512)
        rx, tx = self._batches
        loop = asyncio.get_running_loop()
        for init in inits:
            self.init_sockets.append(init)
            loop.add_reader(init.fileno(), self._readable_inits, init, natt, rx, tx)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for socks in [*self.sockets.values(), self.init_sockets]:
            for s in socks:
                if self.holdoff is not None:
                    self.holdoff.forget(s.fileno())
                loop.remove_reader(s.fileno())
                s.close()
        self.sockets.clear()
        self.init_sockets = []
        self._sock_cache.clear()

    # ------------------------------------------------------------------ receiving

    def _readable(self, sock: IkeSocket) -> None:
        natt = sock.port == self.config.natt_port
        if natt and recv_runs is not None:
            self._readable_burst(sock, recv_runs)
            return
        dp = self.dataplane
        if natt:
            dp.rx_batch_begin()
        recv, esp_received = sock.recv_segments, dp.esp_received
        holdoff = self.holdoff if natt else None
        found, nbytes, emptied = 0, 0, False
        try:
            for _ in range(RECV_BATCH):  # bounded batch per wake-up
                got = recv()
                if got is None:
                    emptied = True
                    break
                data, seg, local, remote = got
                if holdoff is not None:
                    n, b = _tally(data, seg)
                    found += n
                    nbytes += b
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
        if holdoff is not None:
            holdoff.after_drain(sock.fileno(), found, nbytes, emptied, self._readable, sock)

    def _readable_burst(self, sock: IkeSocket, recv_runs: Callable) -> None:
        """``_readable`` for a NAT-T socket with the compiled helper (vpn_gw.accel.recv_runs):
        up to BURST messages per system call (recvmmsg), UDP GRO messages cut into their
        datagrams and grouped in C, the same handling of each, the same bound per wake-up. ESP
        datagrams in a row with the same SPI from the same source (GRO burst or not, within
        one burst) go to the data plane together (``esp_received_many``: one compiled call for
        the run); every other datagram (IKE, keepalives, runts) takes ``_datagram``."""
        dp = self.dataplane
        dp.rx_batch_begin()
        esp_received = dp.esp_received
        esp_many = getattr(dp, "esp_received_many", None)
        fd, buf = sock.fileno(), sock.burst_buffer()
        remotes, locals_ = sock.remotes, sock.locals
        holdoff = self.holdoff
        found, nbytes, emptied = 0, 0, False
        try:
            for _ in range(RECV_BATCH // BURST):  # bounded batch per wake-up
                items, messages, datagrams, got = recv_runs(fd, buf, BURST_SLOT, BURST)
                found += datagrams
                nbytes += got
                for esp, run, name, dst in items:
                    remote = remotes.get(name)
                    if remote is None:
                        remote = sock.remote_of(name)
                    local = locals_.get(dst)
                    if local is None:
                        local = sock.local_of(dst)
                    if esp:
                        self._esp_run(run, local, remote, esp_received, esp_many)
                    else:
                        self._datagram(sock, True, run[0], local, remote)
                if messages < BURST:
                    emptied = True
                    break
        finally:
            dp.rx_batch_end()
        self.sinks.after_batch()
        if holdoff is not None:
            holdoff.after_drain(fd, found, nbytes, emptied, self._readable, sock)

    @staticmethod
    def _esp_run(run: list[bytes], local: Any, remote: Any, esp_received: Callable,
                 esp_many: Callable | None) -> None:
        if len(run) == 1 or esp_many is None:
            for d in run:
                esp_received(d, local, remote)
        else:
            esp_many(run, local, remote)

    def _readable_inits(self, sock: IkeSocket, natt: bool, rx: mmsg.RecvBatch, tx: mmsg.SendBatch) -> None:
        """A batch from an INIT socket: each cookie-less IKE_SA_INIT that the engine answers
        statelessly gets its COOKIE response queued (sent with one sendmmsg); anything else
        takes the usual way (``_datagram``)."""
        n = rx.recv(sock.fileno())
        if not n:
            return
        reply_for = self.sinks.init_reply
        assert reply_for is not None
        now = time.monotonic()
        port = sock.port
        source = mmsg.source
        slow = False
        try:
            for i in range(n):
                data = rx.datagram(i)
                name = rx.name(i)
                ip, rport, packed = source(name)
                local = rx.local_address(i)
                reply = None
                if not natt:
                    reply = reply_for(data, ip, rport, packed, now)
                elif data[:4] == NON_ESP_MARKER:
                    reply = reply_for(data[4:], ip, rport, packed, now)
                    if reply is not None:
                        reply = NON_ESP_MARKER + reply
                if reply is not None:
                    tx.add(reply, name, self._control(local))
                else:
                    slow = True
                    self._datagram(sock, natt, data, (self._local_ip(local, sock), port), (ip, rport))
        finally:
            tx.flush(sock.fileno())  # never left half full for the next socket's batch
        if slow:
            self.sinks.after_batch()

    def _control(self, local: bytes | None) -> bytes:
        """The PKTINFO control message sending from ``local`` (packed)."""
        return b"" if local is None else _pktinfo(local)

    def _local_ip(self, local: bytes | None, sock: IkeSocket) -> str:
        return sock.address if local is None else _address_text(local)

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

    def esp_sockets(self) -> list[IkeSocket]:
        """The NAT-T port's main sockets (ESP in UDP is sent from them)."""
        port = self.config.natt_port
        return [s for (_fam, p), socks in self.sockets.items() if p == port for s in socks]

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
