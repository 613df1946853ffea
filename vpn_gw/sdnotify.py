"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram per message to
the AF_UNIX socket named in $NOTIFY_SOCKET (a path, or ``@name`` for the abstract namespace).

Without $NOTIFY_SOCKET (not started by systemd with Type=notify) every call is a no-op. A
failure to send is reported once to the caller's log and never stops the daemon.
"""
from __future__ import annotations

import os
import socket
import time

__all__ = ["Notifier", "notify"]

ENV = "NOTIFY_SOCKET"


class Notifier:
    def __init__(self, address: str | None = None):
        addr = os.environ.get(ENV) if address is None else address
        self.address: str | bytes | None = None
        if addr:
            self.address = b"\0" + addr[1:].encode() if addr.startswith("@") else addr

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines as one message; False if not enabled or it failed."""
        if self.address is None:
            return False
        msg = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(msg)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC: systemd >= 253 wants it with RELOADING=1 (Type=notify-reload); older ones ignore it
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")


def notify(*fields: str) -> bool:
    return Notifier().send(*fields)
