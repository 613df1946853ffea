"""Wake-up holdoff (vpn_gw/holdoff.py) on a real event loop and real sockets.

A UNIX datagram socketpair stands in for a TUN device or the NAT-T socket: the reader drains
what is queued and reports how much it found; with a holdoff a large drain stops the watching
of the descriptor for the delay, then drains again.
"""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from vpn_gw.holdoff import Holdoff


class Reader:
    def __init__(self, sock: socket.socket, holdoff: Holdoff, bound: int):
        self.sock, self.holdoff, self.bound = sock, holdoff, bound
        self.drains: list[tuple[float, int]] = []  # (monotonic time, datagrams found)

    def readable(self) -> None:
        found, nbytes, emptied = 0, 0, False
        for _ in range(self.bound):  # bounded, like the data plane's drains
            try:
                nbytes += len(self.sock.recv(2048))
            except BlockingIOError:
                emptied = True
                break
            found += 1
        self.drains.append((time.monotonic(), found))
        self.holdoff.after_drain(self.sock.fileno(), found, nbytes, emptied, self.readable)


async def _run(holdoff: Holdoff, bursts: list[int], gap: float, bound: int = 1000,
               size: int = 100) -> tuple[Reader, float]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    loop = asyncio.get_running_loop()
    r = Reader(a, holdoff, bound)
    loop.add_reader(a.fileno(), r.readable)
    try:
        t0 = time.monotonic()
        for n in bursts:
            for _ in range(n):
                b.send(bytes(size))
            await asyncio.sleep(gap)
        await asyncio.sleep(2 * holdoff.delay + 0.01)  # a drain still held off happens now
        return r, t0
    finally:
        holdoff.forget(a.fileno())
        loop.remove_reader(a.fileno())
        a.close()
        b.close()


def test_small_drains_never_hold_off():
    h = Holdoff(0.05, after=4)
    r, _ = asyncio.run(_run(h, [1, 2, 3, 1], 0.01))
    assert [n for _, n in r.drains] == [1, 2, 3, 1]
    assert h.engaged == 0 and h.stats()["held_off"] == 0


def test_a_large_drain_holds_the_next_one_off_for_the_delay():
    h = Holdoff(0.05, after=4)
    r, _ = asyncio.run(_run(h, [5, 3, 3], 0.01))
    # the 5 stopped the watching: the two later bursts (10 and 20 ms later) waited in the
    # socket and were drained together once, 50 ms after the first drain; that drain (6) held
    # off again, and the one after it found nothing: the descriptor is watched again
    assert [n for _, n in r.drains] == [5, 6, 0]
    (t1, _), (t2, _), (t3, _) = r.drains
    assert t2 - t1 >= 0.05 and t3 - t2 >= 0.05
    assert h.engaged == 2 and h.stats()["held_off"] == 0


def test_the_held_off_drain_holds_off_again_while_the_traffic_keeps_up():
    h = Holdoff(0.02, after=4)
    r, _ = asyncio.run(_run(h, [4] * 12, 0.005))
    found = [n for _, n in r.drains]
    assert sum(found) == 48  # nothing lost, nothing read twice
    assert h.engaged >= 2
    # each drain after the first large one found what queued up during a holdoff (about 4
    # bursts of 4 per 20 ms), in fewer drains than bursts
    assert len(found) < 12 and max(found) >= 8


def test_a_drain_stopped_at_its_bound_reads_on_at_once():
    """A drain that found its bound's worth with more still queued never holds off: the
    daemon is behind, so it reads on (the holdoff must never cap the rate)."""
    h = Holdoff(0.05, after=4)
    r, _ = asyncio.run(_run(h, [25], 0.001, bound=10))
    (t1, n1), (t2, n2), (t3, n3) = r.drains[:3]
    assert (n1, n2, n3) == (10, 10, 5)
    assert t3 - t1 < 0.04  # read on without waiting for the holdoff
    # the drain that emptied the queue with 5 (>= 4) held off the next one
    assert h.engaged == 1


def test_drains_of_large_packets_never_hold_off():
    """Large packets (TCP data, TSO super-packets) are worth their wake-up: no holdoff, even
    for many of them; at the limit (512 bytes on average) the drain still counts as small."""
    h = Holdoff(0.05, after=4)
    r, _ = asyncio.run(_run(h, [8, 8], 0.01, size=1400))
    assert [n for _, n in r.drains] == [8, 8] and h.engaged == 0
    h = Holdoff(0.05, after=4)
    r, _ = asyncio.run(_run(h, [8], 0.01, size=512))
    assert h.engaged == 1


def test_zero_delay_is_off():
    h = Holdoff(0.0, after=1)
    r, _ = asyncio.run(_run(h, [5, 5], 0.01))
    assert [n for _, n in r.drains] == [5, 5] and h.engaged == 0


def test_forget_cancels_a_pending_drain():
    async def main() -> int:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        h = Holdoff(0.02, after=1)
        calls = []

        def readable():
            calls.append(1)
            a.recv(64)
            h.after_drain(a.fileno(), 1, 64, True, readable)

        loop = asyncio.get_running_loop()
        loop.add_reader(a.fileno(), readable)
        b.send(b"x")
        await asyncio.sleep(0.005)
        assert h.stats()["held_off"] == 1
        h.forget(a.fileno())  # the owner closes the descriptor
        a.close()
        b.close()
        await asyncio.sleep(0.04)  # the cancelled drain never runs on the closed descriptor
        return len(calls)
    assert asyncio.run(main()) == 1


def test_a_negative_delay_is_refused():
    with pytest.raises(ValueError):
        Holdoff(-0.001)
