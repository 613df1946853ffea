"""vpn_gw/sdnotify.py over real AF_UNIX datagram sockets (path and abstract)."""
from __future__ import annotations

import os
import socket

from vpn_gw.sdnotify import Notifier


def test_path_and_abstract_sockets(tmp_path):
    for addr, bind in ((str(tmp_path / "n.sock"), str(tmp_path / "n.sock")),
                       (f"@vpngw-test-{os.getpid()}", f"\0vpngw-test-{os.getpid()}")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(bind)
            s.settimeout(2)
            n = Notifier(addr)
            assert n.enabled and n.ready("2 connections loaded")
            assert s.recv(4096).decode() == f"READY=1\nSTATUS=2 connections loaded\nMAINPID={os.getpid()}"
            assert n.reloading()
            assert s.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
            assert n.stopping() and s.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_nothing_happens(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled and Notifier().ready() is False
    assert Notifier(str(tmp_path / "nobody-listens")).ready() is False   # a failure is not fatal
