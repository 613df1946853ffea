"""IkeSocket.send_many on loopback: the datagrams arrive whole and in order, through UDP GSO sends
(cut by vpn_gw.accel.gso_ends, or the Python loop) and without GSO, and the GSO runs are what
the kernel accepts (a refused GSO send would have turned ``gso`` off)."""
from __future__ import annotations

import socket

import pytest

from vpn_gw.transport import udp
from vpn_gw.transport.udp import IkeSocket


def _receive(sock: socket.socket, count: int) -> list[bytes]:
    sock.settimeout(2.0)
    return [sock.recv(65535) for _ in range(count)]


@pytest.mark.parametrize("cut", ["compiled", "python", "no-gso"])
def test_send_many_delivers_every_datagram_in_order(cut: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if cut == "python":
        monkeypatch.setattr(udp, "gso_ends", None)
    else:
        assert udp.gso_ends is not None, "the compiled helpers are built in this setup"
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = IkeSocket("127.0.0.1", 0)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if cut == "no-gso":
            sender.gso = False
        sizes = [100] * 5 + [60] + [100] * 3 + [1400] * 2 + [1] + [188] * 70 + [1300] * 50
        datagrams = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        sender.send_many(datagrams, "127.0.0.1", receiver.getsockname())
        assert _receive(receiver, len(datagrams)) == datagrams
        assert sender.gso is (cut != "no-gso")  # the kernel took every GSO send
    finally:
        sender.close()
        receiver.close()
