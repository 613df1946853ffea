"""The control socket's commands (docs/control.md): status, up, down, rekey, reload, stats.

Each command is a method; errors a user can fix (an unknown connection, nothing to rekey, a
broken config on reload) become ``ControlError`` with one clear sentence."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ikev2 import events as E
from vpn_gw.control import ControlError, Stream
from vpn_gw.daemon import status as st

if TYPE_CHECKING:
    from vpn_gw.daemon.gateway import Gateway


class ControlHandlers:
    def __init__(self, gateway: Gateway):
        self.gw = gateway

    async def handle(self, cmd: str, args: dict[str, Any]) -> Any:
        try:
            return await self._dispatch(cmd, args)
        except (ValueError, RuntimeError, OSError) as e:
            raise ControlError(str(e)) from None

    async def _dispatch(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "status":
            return self.status(args)
        if cmd == "up":
            return await self.up(args.get("name", ""), float(args.get("timeout", 30)))
        if cmd == "down":
            return self.down(args.get("name", ""))
        if cmd == "reload":
            return self.gw.reload()
        if cmd == "stats":
            return self.gw.stats()
        if cmd == "rekey":
            return self.rekey(args.get("name", ""), args.get("child"), bool(args.get("ike")))
        raise ValueError(f"unknown command '{cmd}'")

    def status(self, args: dict[str, Any]) -> Any:
        """IKE SAs, filtered by connection (``name``), peer address (``peer``) and IKE SA
        number (``id``); ``summary``: counts only; ``stream``: one line per IKE SA."""
        gw = self.gw
        if args.get("summary"):
            return st.summarise(gw.manager)
        name = args.get("name")
        if name is not None and gw.connection(str(name)) is None:
            raise ValueError(f"no connection named '{name}'")
        peer = st.parse_peer(args["peer"]) if args.get("peer") is not None else None
        ike_id = st.parse_ike_id(args["id"]) if args.get("id") is not None else None
        sas = st.select_sas(gw.manager, name=None if name is None else str(name), peer=peer,
                            ike_id=ike_id)
        entries = st.iter_entries(gw.manager, gw.dataplane, gw.tcp, time.monotonic(),
                                  time.time(), sas, gw.events.install_errors)
        if args.get("stream"):
            return Stream(entries)
        return list(entries)

    async def up(self, name: str, timeout: float) -> dict[str, Any]:
        gw = self.gw
        fut = gw.waiters.add(name)
        try:
            gw.initiate(name)
            ev = await asyncio.wait_for(fut, timeout=timeout)
        except TimeoutError:
            if gw.waiters.pending.get(id(fut)) is not None:
                raise RuntimeError(f"connection '{name}': IKE SA established, but no Child SA within "
                                   "the timeout") from None
            raise RuntimeError(f"connection '{name}' did not come up within the timeout") from None
        finally:
            gw.waiters.discard(fut)
        if isinstance(ev, tuple):
            up, child = ev
            if isinstance(child, E.ChildFailed):
                # as swanctl --initiate: the IKE SA alone is not a tunnel
                raise RuntimeError(f"connection '{name}': IKE SA established, but Child SA "
                                   f"'{child.child_name}' failed: {child.reason}")
            refused = gw.events.install_errors.get(up.ike_id)
            if refused:  # the data plane could not install it (e.g. no TUN device)
                raise RuntimeError(f"connection '{name}': IKE_SA established, but " + "; ".join(refused))
            return {"connection": name, "state": "established", "child": child.child_name}
        raise RuntimeError(f"connection '{name}' failed: {getattr(ev, 'reason', ev)}")

    def down(self, name: str) -> dict[str, Any]:
        gw = self.gw
        if gw.connection(name) is None:
            raise ValueError(f"no connection named '{name}'")
        gw.held_down.add(name)
        n = gw.manager.terminate(name, time.monotonic())
        gw.scheduler.cancel_retry(name)
        gw.flush()
        return {"connection": name, "terminated": n}

    def rekey(self, name: str, child: str | None, ike: bool) -> dict[str, Any]:
        """Rekey a connection's IKE SA (ike) or its Child SAs (all, or those named child)."""
        gw = self.gw
        if gw.connection(name) is None:
            raise ValueError(f"no connection named '{name}'")
        sas = gw.manager.find(name)
        if not sas:
            raise ValueError(f"connection '{name}' has no IKE SA")
        now = time.monotonic()
        started = 0
        for sa in sas:
            if ike:
                sa.rekey_ike(now)
                started += 1
                continue
            for c in list(sa.children):
                if child is None or c.name == child:
                    started += bool(sa.rekey_child(c.spi_in, now))
        gw.flush()
        if not started:
            raise ValueError(f"nothing to rekey on '{name}'" + (f" (no CHILD_SA '{child}')" if child else ""))
        return {"connection": name, "rekeying": started, "what": "ike" if ike else "child"}
