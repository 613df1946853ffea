"""Watch the addresses of one interface (the WAN link) through netlink.

:class:`AddressWatcher` reads the interface's addresses at :meth:`~AddressWatcher.start`,
then listens to RTM_NEWADDR/RTM_DELADDR (and RTM_NEWLINK/RTM_DELLINK, so an interface that
appears later or is re-created is followed) and calls ``callback(addresses)`` whenever the
set of *publishable* addresses changes. Every event triggers a full re-read of the
interface (events are hints, the dump is the truth), and a re-read also runs every
``resync_interval`` seconds and after any netlink error (e.g. an overrun socket).

Publishable, by default: global scope, not tentative (DAD running), not DAD-failed, not
deprecated (preferred lifetime over), not an IPv6 privacy (temporary) address.

pyroute2 0.9's synchronous ``IPRoute`` refuses to run inside a running asyncio loop, so this
uses ``AsyncIPRoute`` (two sockets: one bound to the multicast groups, one for dumps).
``netns`` opens both sockets in a named network namespace (pyroute2 forks a helper for it).
"""
from __future__ import annotations

import asyncio
import inspect
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

__all__ = ["AddressWatcher", "IfAddr", "select_addresses", "read_addresses"]

log = structlog.get_logger("vpn_gw.ddns")

# linux/if_addr.h
IFA_F_TEMPORARY = 0x01      # IPv6; for IPv4 this bit is IFA_F_SECONDARY
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
# linux/rtnetlink.h multicast groups (legacy bit masks)
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100


@dataclass(frozen=True, order=True)
class IfAddr:
    """One interface address as netlink reports it."""

    family: int          # 4 or 6
    address: str
    prefixlen: int
    scope: int
    flags: int

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def dadfailed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)

    @property
    def deprecated(self) -> bool:
        return bool(self.flags & IFA_F_DEPRECATED)

    @property
    def temporary(self) -> bool:
        """IPv6 privacy address (for IPv4 the same bit means "secondary", which is fine)."""
        return self.family == 6 and bool(self.flags & IFA_F_TEMPORARY)

    @classmethod
    def from_msg(cls, msg) -> IfAddr | None:
        addr = msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL")
        if msg.get("IFA_LOCAL"):          # IPv4 point-to-point: IFA_LOCAL is ours
            addr = msg.get("IFA_LOCAL")
        if not addr:
            return None
        flags = msg.get("IFA_FLAGS")
        if flags is None:
            flags = msg.get("flags", 0)
        fam = 6 if ":" in addr else 4
        return cls(fam, str(ipaddress.ip_address(addr)), int(msg.get("prefixlen", 0)),
                   int(msg.get("scope", 0)), int(flags))


def select_addresses(
    addrs: Iterable[IfAddr],
    families: Iterable[int] = (4, 6),
    *,
    include_link_local: bool = False,
    include_temporary: bool = False,
    include_deprecated: bool = False,
) -> list[str]:
    """The publishable addresses among ``addrs``: IPv4 first, then IPv6, sorted."""
    fams = set(families)
    out = set()
    for a in addrs:
        if a.family not in fams or a.tentative or a.dadfailed:
            continue
        if a.deprecated and not include_deprecated:
            continue
        if a.temporary and not include_temporary:
            continue
        if a.scope != RT_SCOPE_UNIVERSE and not (include_link_local and a.scope == RT_SCOPE_LINK):
            continue
        out.add(ipaddress.ip_address(a.address))
    return [str(a) for a in sorted(out, key=lambda a: (a.version, a))]


async def _dump(ipr, interface: str) -> tuple[int | None, list[IfAddr]]:
    index = None
    # read the whole dump: leaving it early keeps the kernel's dump running on this socket, and
    # the next dump on it (the addresses) then fails with EBUSY whenever the interface is not
    # the last link
    async for link in await ipr.link("dump"):
        if index is None and link.get("IFLA_IFNAME") == interface:
            index = link["index"]
    if index is None:
        return None, []
    out = []
    async for msg in await ipr.addr("dump"):
        if msg.get("index") == index:
            a = IfAddr.from_msg(msg)
            if a is not None:
                out.append(a)
    return index, sorted(out)


async def read_addresses(interface: str, netns: str | None = None) -> list[IfAddr]:
    """All addresses of ``interface`` now (empty if it does not exist)."""
    from pyroute2 import AsyncIPRoute
    ipr = AsyncIPRoute(netns=netns)
    try:
        return (await _dump(ipr, interface))[1]
    finally:
        ipr.close()


class AddressWatcher:
    """Follow the publishable addresses of ``interface``; see the module doc.

    ``callback(addresses: list[str])`` may be a plain function or a coroutine function; it
    runs for the initial state (unless ``initial_callback=False``) and on every change.
    Its exceptions are logged, never stop the watcher. :attr:`addresses` is the current list.
    """

    def __init__(
        self,
        interface: str,
        callback: Callable[[list[str]], Any] | None = None,
        *,
        families: Iterable[int] = (4, 6),
        include_link_local: bool = False,
        include_temporary: bool = False,
        include_deprecated: bool = False,
        netns: str | None = None,
        resync_interval: float = 300.0,
        initial_callback: bool = True,
    ):
        if not interface or len(interface) > 15:
            raise ValueError(f"bad interface name {interface!r}")
        self.interface = interface
        self.callback = callback
        self.families = tuple(families)
        self._select = dict(include_link_local=include_link_local,
                            include_temporary=include_temporary,
                            include_deprecated=include_deprecated)
        self.netns = netns
        self.resync_interval = float(resync_interval)
        self.initial_callback = initial_callback
        self.ifindex: int | None = None
        self.all_addresses: list[IfAddr] = []
        self.addresses: list[str] = []
        self.changes = 0
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._ev = None
        self._q = None

    # ------------------------------------------------------------------ public

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> list[str]:
        """Open netlink, read the initial addresses (callback), watch in a task. Returns them."""
        if self.running:
            return self.addresses
        self._stopping = False
        await self._open()
        await self._refresh(initial=True)
        self._task = asyncio.create_task(self._run(), name=f"addrwatch-{self.interface}")
        return self.addresses

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            # cancel until it is gone: a cancellation that races with a completing await can
            # be lost, and the loop also checks _stopping
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            if not task.cancelled() and task.exception() is not None:
                log.warning("ddns.watcher_failed", interface=self.interface,
                            error=repr(task.exception()))
        self._close()

    async def __aenter__(self) -> AddressWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    async def _open(self) -> None:
        from pyroute2 import AsyncIPRoute
        self._close()
        ev = AsyncIPRoute(netns=self.netns)
        try:
            await ev.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            q = AsyncIPRoute(netns=self.netns)
        except BaseException:
            ev.close()
            raise
        self._ev, self._q = ev, q

    def _close(self) -> None:
        for s in (self._ev, self._q):
            if s is not None:
                try:
                    s.close()
                except Exception:
                    pass
        self._ev = self._q = None

    def _relevant(self, msg) -> bool:
        event = msg.get("event", "")
        if event in ("RTM_NEWADDR", "RTM_DELADDR"):
            return self.ifindex is None or msg.get("index") == self.ifindex
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            return msg.get("index") == self.ifindex or msg.get("IFLA_IFNAME") == self.interface
        return False

    async def _refresh(self, initial: bool = False) -> None:
        index, addrs = await _dump(self._q, self.interface)
        if index != self.ifindex:
            log.info("ddns.interface", interface=self.interface, ifindex=index)
        self.ifindex = index
        self.all_addresses = addrs
        selected = select_addresses(addrs, self.families, **self._select)
        if selected == self.addresses and not initial:
            return
        old, self.addresses = self.addresses, selected
        if not initial:
            self.changes += 1
            log.info("ddns.address_change", interface=self.interface, old=old, new=selected)
        if self.callback is not None and (not initial or self.initial_callback):
            try:
                r = self.callback(list(selected))
                if inspect.isawaitable(r):
                    await r
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("ddns.callback_failed", interface=self.interface, error=repr(e))

    async def _next_batch(self) -> list:
        assert self._ev is not None  # bound in _run before the first batch
        return [m async for m in self._ev.get()]

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self._ev is None:
                    await self._open()
                    await self._refresh()
                batch = None                # None after the timeout: periodic re-read
                try:
                    async with asyncio.timeout(self.resync_interval):
                        batch = await self._next_batch()
                except TimeoutError:
                    pass
                if batch is None or any(self._relevant(m) for m in batch):
                    await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("ddns.netlink_error", interface=self.interface, error=repr(e))
                self._close()
                await asyncio.sleep(1.0)
