"""The roaming watcher's event handling (vpn_gw/daemon/roaming.py): a burst of netlink events is
coalesced into one check that runs a few ms after the burst, not after a fixed sleep, and a
burst that never ends is still checked by SETTLE_MAX. The netlink socket is stood in for by a
datagram socketpair (the watcher never parses the messages); the move itself is tested in
tests/netns_e2e/test_roaming_reaction.py."""
from __future__ import annotations

import asyncio
import socket

from ikev2.manager import IkeManager
from vpn_gw.daemon import roaming
from vpn_gw.daemon.roaming import RoamingWatcher, drain, open_route_events


def _watcher() -> RoamingWatcher:
    return RoamingWatcher(IkeManager([], lambda n: bytes(n)), lambda sa: False, lambda: None)


async def _feed(w: RoamingWatcher, bursts: list[tuple[float, int]], wait: float) -> list[float]:
    """Send each (delay, count) burst into the watcher; returns the loop times of the checks."""
    loop = asyncio.get_running_loop()
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setblocking(False)
    times: list[float] = []
    real_check = w.check

    def check() -> int:
        times.append(loop.time())
        return real_check()

    w.check = check  # type: ignore[method-assign]
    loop.add_reader(rx.fileno(), w._on_events, rx, loop)
    try:
        t0 = loop.time()
        for delay, count in bursts:
            await asyncio.sleep(delay)
            for _ in range(count):
                tx.send(b"x")
        await asyncio.sleep(wait)
    finally:
        loop.remove_reader(rx.fileno())
        tx.close()
        rx.close()
    return [t - t0 for t in times]


def test_one_burst_is_one_check_a_few_ms_later():
    w = _watcher()
    times = asyncio.run(_feed(w, [(0.0, 5)], wait=0.2))
    assert len(times) == 1, times
    assert w.checks == 1
    assert times[0] >= roaming.SETTLE
    assert times[0] < 0.1, "the check waited like the old 50 ms debounce or longer"  # loaded CI slack


def test_two_bursts_apart_are_two_checks():
    times = asyncio.run(_feed(_watcher(), [(0.0, 3), (0.15, 3)], wait=0.2))
    assert len(times) == 2, times
    assert times[1] - times[0] >= 0.1


def test_endless_events_are_still_checked_by_settle_max():
    # an event every ms for 60 ms: the quiet window never comes, SETTLE_MAX forces checks
    times = asyncio.run(_feed(_watcher(), [(0.001, 1)] * 60, wait=0.05))
    assert len(times) >= 2, times
    assert times[0] <= roaming.SETTLE_MAX + 0.05, times  # + slack for a loaded machine


def test_drain_reads_everything_queued():
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setblocking(False)
    with tx, rx:
        for _ in range(7):
            tx.send(b"m")
        assert drain(rx) == 7
        assert drain(rx) == 0


def test_real_netlink_socket_opens():
    with open_route_events() as s:
        assert s.family == socket.AF_NETLINK
        assert drain(s) >= 0
