"""``routes`` of route-based connections: routes into the connection's interface, installed at
start for as long as the daemon runs and removed again at stop (an interface we created takes
them along)."""
from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import structlog

from vpn_gw.dataplane.iproute import ipr_call
from vpn_gw.dataplane.rtnl import Rtnl

log = structlog.get_logger("vpn_gw")


def _index(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


class ConnectionRoutes:
    def __init__(self) -> None:
        self.installed: list[tuple[str, str]] = []  # (destination, interface)

    def install(self, connections: Iterable[Any]) -> None:
        wanted = [(str(net), c.interface, c.name) for c in connections if c.interface for net in c.routes]
        if not wanted:
            return

        def add(ipr: Rtnl) -> list[tuple[str, str]]:
            done = []
            for dst, ifname, conn in wanted:
                idx = _index(ifname)
                if idx is None:
                    log.error("cannot add route: no such interface", connection=conn, dst=dst, interface=ifname)
                    continue
                try:
                    ipr.route_replace(dst, oif=idx)
                    done.append((dst, ifname))
                    log.info("route installed", connection=conn, dst=dst, interface=ifname)
                except Exception as e:  # noqa: BLE001 - RtnlError, the kernel's answer
                    log.error("cannot add route", connection=conn, dst=dst, interface=ifname, error=str(e))
            return done
        try:
            self.installed = ipr_call(add)
        except Exception as e:  # noqa: BLE001 - e.g. netlink thread failure: the tunnel still negotiates
            log.error("cannot add the connections' routes", error=f"{type(e).__name__}: {e}")

    def remove(self) -> None:
        routes = self.installed
        if not routes:
            return

        def delete(ipr: Rtnl) -> None:
            for dst, ifname in routes:
                idx = _index(ifname)
                if idx is not None:
                    try:
                        ipr.route_del(dst, oif=idx)
                    except Exception:  # noqa: BLE001 - already gone with its interface
                        pass
        try:
            ipr_call(delete)
        except Exception as e:  # noqa: BLE001
            log.warning("cannot remove the connections' routes", error=str(e))
        self.installed = []
