"""The daemon's side of the outbound worker without processes (the netns tests run the real
ones, tests/netns_e2e/test_outbound_worker.py): what it does with a clear packet the worker
could not place, and the expiries the worker reports."""
from __future__ import annotations

import ipaddress
import struct

from esp import Direction, EspCipher, EspSA
from tests.test_esp_rx_runs import _Ts  # a traffic selector as the engine gives it
from vpn_gw.dataplane.userspace import worker_protocol as P
from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane, _Child, _Selector, _Trap
from vpn_gw.dataplane.userspace.spd import OutboundIndex


class FakeTun:
    name, fd, route_based = "vpngw0", 99, False


class FakeWorker:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, msg: tuple, fds=()) -> None:
        self.sent.append(msg)


def _packet(dst: str) -> bytes:
    p = bytearray(40)
    p[0], p[9] = 0x45, 17
    struct.pack_into("!H", p, 2, 40)
    p[12:16], p[16:20] = bytes([10, 1, 0, 2]), ipaddress.ip_address(dst).packed
    return bytes(p)


def _plane() -> tuple[UserspaceDataPlane, FakeWorker, FakeTun]:
    plane = UserspaceDataPlane(lambda *a: None, lambda c: None, keepalive_interval=0, clock=lambda: 100.0)
    worker = FakeWorker()
    plane.worker = worker  # type: ignore[assignment]
    tun = FakeTun()
    plane.tuns["vpngw0"] = tun  # type: ignore[assignment]
    plane.by_tun["vpngw0"] = {}
    plane.spd["vpngw0"] = OutboundIndex()
    return plane, worker, tun


def test_a_packet_for_an_sa_that_came_up_meanwhile_goes_back_to_the_worker():
    plane, worker, tun = _plane()
    acquired: list[str] = []
    plane.on_acquire = acquired.append
    trap = _Trap("to-b", [_Selector.from_ts(_Ts("10.1.0.0/24"))], [_Selector.from_ts(_Ts("10.2.0.0/24"))], tun)  # type: ignore[arg-type]
    plane.traps["to-b"] = trap
    # no Child SA yet: the daemon's trap holds the packet and starts the connection
    plane._worker_unmatched("vpngw0", _packet("10.2.0.9"))
    assert len(trap.queue) == 1 and acquired == ["to-b"] and worker.sent == []
    # the SA is up (installed while the next packet was on its way to the daemon)
    key = bytes(36)
    child = _Child("to-b", 1, b"\0\0\0\1", b"\0\0\0\2", EspSA(Direction.IN, 1, EspCipher(20, 256, None, key)),
                   EspSA(Direction.OUT, 2, EspCipher(20, 256, None, key)), ("192.0.2.1", 4500),
                   ("198.51.100.1", 4500), trap.local_ts, trap.remote_ts, tun, 1438)  # type: ignore[arg-type]
    plane._index(child)
    late = _packet("10.2.0.9")
    plane._worker_unmatched("vpngw0", late)
    assert worker.sent == [(P.PACKETS, "vpngw0", [late])] and len(trap.queue) == 1 and acquired == ["to-b"]
    # a packet no SA and no trap wants is counted, not sent anywhere
    plane._worker_unmatched("vpngw0", _packet("10.9.0.1"))
    plane._worker_unmatched("nosuch0", _packet("10.2.0.9"))
    assert plane.unmatched == {"no_policy": 2} and len(worker.sent) == 1


def test_worker_expiries_are_reported_once_and_never_downgraded():
    plane, _worker, tun = _plane()
    key = bytes(36)
    child = _Child("c", 1, b"\0\0\0\1", b"\0\0\0\2", EspSA(Direction.IN, 1, EspCipher(20, 256, None, key)),
                   EspSA(Direction.OUT, 2, EspCipher(20, 256, None, key)), ("192.0.2.1", 4500),
                   ("198.51.100.1", 4500), [], [], tun, 1438)  # type: ignore[arg-type]
    plane._index(child)
    plane._worker_expiry(b"\0\0\0\1", "soft")
    plane._worker_expiry(b"\0\0\0\1", "soft")
    plane._worker_expiry(b"\0\0\0\x09", "hard")  # an SA that is gone
    plane._worker_expiry(b"\0\0\0\1", "bogus")
    assert plane.expiries(100.0) == [(b"\0\0\0\1", "soft")]
    plane._worker_expiry(b"\0\0\0\1", "hard")
    plane._worker_expiry(b"\0\0\0\1", "soft")
    assert plane.expiries(100.0) == [(b"\0\0\0\1", "hard")]
    assert plane.expiries(100.0) == []
