"""The outbound worker process (``[gateway] outbound_worker = true``): the userspace data plane's
encrypting direction on a second core.

The daemon keeps everything else: IKE, the inbound direction (NAT-T socket reads, decryption,
replay windows, TUN writes), routes, traps, keepalives. This process reads the TUN devices,
picks each packet's Child SA, fragments or answers "too big" (red side), seals and sends the
ESP datagrams on the daemon's NAT-T sockets (UDP GSO), with the same code as the in-process
plane (``UserspaceDataPlane``'s outbound half). It owns the outbound state of every Child SA:
the sequence numbers and the outbound counters, which it writes after each sealed batch into
shared memory that the daemon reads (worker_protocol.Segments), and the outbound volume
lifetimes, whose soft and hard expiries it reports.

Started by the daemon (worker_link.OutboundWorker) as ``python -m
vpn_gw.dataplane.userspace.outbound_worker --fd N``; every descriptor it uses comes from the
daemon over that socket (SCM_RIGHTS): the TUN devices (the same open files: the daemon writes
into them, this process reads), the NAT-T sockets (the daemon receives on them, this process
sends), the counter segments. It exits when the socket closes (the daemon stopped or died) and
when the daemon dies (PR_SET_PDEATHSIG), so it never outlives it.

What it cannot do itself it hands to the daemon: clear packets that match no Child SA on a
device with a trap policy (the daemon starts the connection), and ESP for a Child SA whose IKE
SA runs over TCP (RFC 9329: the daemon owns the stream).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys
import time

import structlog

from esp import Direction, EspCipher, EspSA, Lifetime
from esp.errors import DropReason
from esp.packet import encapsulate_many
from vpn_gw.dataplane.userspace import worker_protocol as P
from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane, _Child, _Selector
from vpn_gw.dataplane.userspace.tun import Tun
from vpn_gw.holdoff import Holdoff
from vpn_gw.log import setup_logging
from vpn_gw.transport.udp import IkeSocket

log = structlog.get_logger("vpn_gw.dataplane.worker")

TICK = 0.1  # seconds between lifetime checks and counter writes of SAs with drops
STATS_EVERY = 10  # ticks between the statistics sent to the daemon
PR_SET_PDEATHSIG = 1


class OutboundPlane(UserspaceDataPlane):
    """The outbound half of UserspaceDataPlane, driven by the daemon's messages."""

    name = "userspace-outbound-worker"

    def __init__(self, to_daemon, holdoff: Holdoff | None = None):
        super().__init__(self._send_one, lambda _conn: None, keepalive_interval=0, holdoff=holdoff)
        self.send_udp_batch = self._send_batch
        self.to_daemon = to_daemon
        self.slots = P.Segments()  # (the daemon's counter segments, written here)
        self.sockets: dict[int, list[IkeSocket]] = {}  # family -> the daemon's NAT-T sockets
        self._sock_cache: dict[str, IkeSocket | None] = {}
        self.trap_tuns: set[str] = set()
        self._dirty: dict[bytes, _Child] = {}  # SAs whose drops moved since the last tick (by spi_in)
        self._reported: dict[bytes, str] = {}
        self.stopping = False
        self.messages = 0

    # ------------------------------------------------------------------ the daemon's messages

    def handle(self, msg: tuple, fds: list[int]) -> None:
        kind = msg[0]
        self.messages += 1
        if kind == P.ADD:
            self._add(*msg[1:])
        elif kind == P.DELETE:
            self._delete(msg[1])
        elif kind == P.MOVE:
            _, ike_id, local, remote, via = msg
            for c in self.by_ike.get(ike_id, {}).values():
                c.local, c.remote, c.via_daemon = tuple(local), tuple(remote), via
        elif kind == P.PACKETS:
            tun = self.tuns.get(msg[1])
            if tun is not None:
                self._outbound_now(tun, list(msg[2]))
        elif kind == P.TUN:
            _, name, vnet, offload_flags, route_based, index = msg
            self._adopt_tun(fds[0], name, vnet, offload_flags, route_based, index)
            fds = fds[1:]
        elif kind == P.SOCKETS:
            self._adopt_sockets(msg[1], fds)
            fds = []
        elif kind == P.SEGMENT:
            self.slots.attach(msg[1], fds[0])
            fds = fds[1:]
        elif kind == P.TRAPS:
            self.trap_tuns = set(msg[1])
        elif kind == P.STOP:
            self.stopping = True
        else:
            raise P.WorkerProtocolError(f"unknown message kind {kind!r}")
        for fd in fds:  # (none expected)
            os.close(fd)

    def _adopt_tun(self, fd: int, name: str, vnet: bool, offload_flags: int, route_based: bool, index: int) -> None:
        old = self.tuns.pop(name, None)
        if old is not None:  # the daemon re-created it
            self._forget_tun(old)
        tun = Tun.adopt(fd, name, vnet_hdr=vnet, offload_flags=offload_flags, route_based=route_based, index=index)
        self.tuns[name] = tun
        self.by_tun.setdefault(name, {})
        self.spd.setdefault(name, self._new_index())
        asyncio.get_running_loop().add_reader(fd, self._tun_readable, tun)

    @staticmethod
    def _new_index():
        from vpn_gw.dataplane.userspace.spd import OutboundIndex
        return OutboundIndex()

    def _forget_tun(self, tun: Tun) -> None:
        if self.holdoff is not None:
            self.holdoff.forget(tun.fd)
        try:
            asyncio.get_running_loop().remove_reader(tun.fd)
        except (ValueError, OSError):
            pass
        os.close(tun.fd)
        tun.fd = -1

    def _adopt_sockets(self, addresses: list, fds: list[int]) -> None:
        for socks in self.sockets.values():
            for s in socks:
                s.close()
        self.sockets.clear()
        self._sock_cache.clear()
        for (family, address, port), fd in zip(addresses, fds, strict=True):
            sock = socket.socket(family, socket.SOCK_DGRAM, fileno=fd)
            self.sockets.setdefault(family, []).append(IkeSocket(address, port, adopt=sock))

    def _add(self, spi_in: bytes, spi_out: bytes, slot: int, conn: str, ike_id: int, tun_name: str,
             local: list, remote: list, local_ts: list, remote_ts: list, mtu: int, via_daemon: bool,
             keys: tuple, lifetime: tuple, start: tuple) -> None:
        encr_id, key_bits, integ_id, encr_key, integ_key, esn = keys
        tun = self.tuns.get(tun_name)
        if tun is None:
            log.error("Child SA for an unknown TUN device: not installed", interface=tun_name,
                      spi_out=spi_out.hex())
            return
        soft_bytes, hard_bytes, soft_packets, hard_packets = lifetime
        sa_out = EspSA(Direction.OUT, int.from_bytes(spi_out, "big"),
                       EspCipher(encr_id, key_bits, integ_id, encr_key, integ_key), esn=esn,
                       created_at=time.monotonic(),
                       lifetime=Lifetime(soft_bytes=soft_bytes, hard_bytes=hard_bytes,
                                         soft_packets=soft_packets, hard_packets=hard_packets))
        sa_out.seq, sa_out.stats.bytes, sa_out.stats.packets = start
        child = _Child(conn, ike_id, spi_in, spi_out, None, sa_out,  # type: ignore[arg-type]
                       tuple(local), tuple(remote),
                       [_Selector(*t) for t in local_ts], [_Selector(*t) for t in remote_ts], tun, mtu)
        child.slot, child.via_daemon = slot, via_daemon
        old = self._unindex(spi_in)  # (a restarted worker's SA handed over again: the newer wins)
        if old is not None:
            old.sa_out.wipe()
        self._index(child)
        self._write_slot(child)

    def _delete(self, spi_in: bytes) -> None:
        # No last write of the slot: the daemon read the final numbers before it sent this, and
        # it may already have given the slot to a new SA (whose ADD follows, and writes it).
        child = self._unindex(spi_in)
        if child is None:
            return
        self._dirty.pop(spi_in, None)
        self._reported.pop(spi_in, None)
        child.sa_out.wipe()

    # ------------------------------------------------------------------ the outbound path

    def _outbound_now(self, tun: Tun, packets: list[bytes]) -> None:
        """Packets the daemon held for a trap policy, now that the Child SA is up."""
        tx = self._tx = {}
        try:
            for pkt in packets:
                self._outbound(tun, pkt)
        finally:
            self._tx = None
            for child, pkts in tx.values():
                self._seal_and_send(child, pkts)

    def _seal_and_send(self, child: _Child, pkts: list[bytes]) -> None:
        datagrams = encapsulate_many(child.sa_out, pkts)
        self._write_slot(child)
        if not datagrams:
            return
        if child.via_daemon:
            self.to_daemon((P.VIA_DAEMON, child.local, child.remote, datagrams))
        else:
            self._transmit(datagrams, child.local, child.remote)

    def _out_drop(self, child: _Child, reason: str) -> None:
        super()._out_drop(child, reason)
        self._dirty[child.spi_in] = child

    def _trap(self, tun: Tun, pkt: bytes) -> bool:
        if tun.name not in self.trap_tuns:
            return False
        self.to_daemon((P.UNMATCHED, tun.name, pkt))  # the daemon's trap decides (or counts it)
        return True

    def _write_slot(self, child: _Child) -> None:
        sa = child.sa_out
        st = sa.stats
        d, sd = child.drops, st.drops
        self.slots.write(child.slot, (
            sa.seq, st.bytes, st.packets, d.get("too_big", 0), d.get("malformed", 0),
            sd.get(DropReason.SEQ_EXHAUSTED, 0), sd.get(DropReason.LIFETIME_EXPIRED, 0), sd.get(DropReason.SA_DEAD, 0)))

    # ------------------------------------------------------------------ sending

    def _socket_for(self, local_ip: str) -> IkeSocket | None:
        sock = self._sock_cache.get(local_ip, False)
        if sock is False:
            family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
            cands = self.sockets.get(family, [])
            sock = next((s for s in cands if s.address == local_ip), cands[0] if cands else None)
            if len(self._sock_cache) > 1024:
                self._sock_cache.clear()
            self._sock_cache[local_ip] = sock
        return sock  # type: ignore[return-value]

    def _send_one(self, data: bytes, local, remote) -> None:
        sock = self._socket_for(local[0])
        if sock is None:
            self._count("no_socket")
            return
        try:
            sock.send(data, local[0], remote)
        except OSError:
            pass  # like a congested or unreachable link: ESP is best effort

    def _send_batch(self, datagrams: list[bytes], local, remote) -> None:
        sock = self._socket_for(local[0])
        if sock is None:
            self._count("no_socket", len(datagrams))
            return
        try:
            sock.send_many(datagrams, local[0], remote)
        except OSError:
            pass

    # ------------------------------------------------------------------ the tick

    def tick(self, n: int) -> None:
        """Lifetimes of the SAs that carried packets since the last tick (only they can have
        changed: the daemon's engine handles time limits), counters of SAs with new drops."""
        now = time.monotonic()
        touched, self._touched = self._touched, []
        for c in touched:
            c.touched = False
            if self.by_spi_in.get(c.spi_in) is not c:
                continue
            state = c.sa_out.check_lifetime(now)
            if state is not None and state != self._reported.get(c.spi_in):
                self._reported[c.spi_in] = state
                self.to_daemon((P.EXPIRY, c.spi_in, state), essential=True)
        dirty, self._dirty = self._dirty, {}
        for c in dirty.values():
            if self.by_spi_in.get(c.spi_in) is c:
                self._write_slot(c)
        if n % STATS_EVERY == 0:
            stats = self.stats()
            stats.pop("name", None)
            stats["children"] = len(self.by_spi_in)
            stats["messages"] = self.messages
            self.to_daemon((P.STATS, stats))


class _Link:
    """The worker's end of the socketpair: messages to the daemon, essential ones kept until
    the socket takes them."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.backlog: list[bytes] = []
        self.dropped = 0

    def send(self, msg: tuple, essential: bool = False) -> None:
        data = P.encode(msg)
        if self.backlog and essential:
            self.backlog.append(data)
            return
        try:
            self.sock.send(data)
        except BlockingIOError:
            if essential:
                self.backlog.append(data)
            else:
                self.dropped += 1  # a packet handed back to the daemon: dropped, like congestion

    def retry(self) -> None:
        while self.backlog:
            try:
                self.sock.send(self.backlog[0])
            except BlockingIOError:
                return
            self.backlog.pop(0)


async def run(fd: int, holdoff_us: int) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=fd)
    sock.setblocking(False)
    link = _Link(sock)
    plane = OutboundPlane(link.send, Holdoff(holdoff_us / 1e6) if holdoff_us else None)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        for _ in range(256):
            try:
                got = P.receive(sock)
            except BlockingIOError:
                return
            except (ConnectionError, P.WorkerProtocolError) as e:
                log.error("bad message from the daemon: stopping", error=str(e))
                got = None
            if got is None:
                if not done.done():
                    done.set_result(0)
                return
            msg, fds = got
            try:
                plane.handle(msg, fds)
            except Exception as e:  # noqa: BLE001 - one bad message never stops the data plane
                log.error("message failed", kind=msg[0], error=f"{type(e).__name__}: {e}")
            if plane.stopping and not done.done():
                done.set_result(0)
                return

    loop.add_reader(fd, readable)
    link.send((P.READY, os.getpid()), essential=True)
    n = 0
    while not done.done():
        await asyncio.wait([done], timeout=TICK)
        n += 1
        try:
            link.retry()
            plane.tick(n)
        except Exception as e:  # noqa: BLE001
            log.error("tick failed", error=f"{type(e).__name__}: {e}")
    loop.remove_reader(fd)
    for tun in list(plane.tuns.values()):
        plane._forget_tun(tun)
    for c in plane.by_spi_in.values():
        c.sa_out.wipe()
    return done.result()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="vpn-gw outbound worker (started by the daemon)")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-format", default="console")
    ap.add_argument("--holdoff-us", type=int, default=0)
    args = ap.parse_args(argv)
    try:  # die with the daemon, whatever kills it
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's; it stops us
    setup_logging(args.log_level, args.log_format)
    structlog.contextvars.bind_contextvars(process="outbound-worker")
    return asyncio.run(run(args.fd, args.holdoff_us))


if __name__ == "__main__":
    sys.exit(main())
