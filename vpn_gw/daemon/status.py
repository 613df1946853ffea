"""`vpn-gw status`: the engine's view of each IKE SA and its Child SAs, with the data plane's
counters and the transport each path uses, in the JSON shape docs/control.md describes.

Status has to stay cheap at 100k IKE SAs (issue 13), so it is built from three pieces:

* ``select_sas``: which IKE SAs a request asks for (connection name, peer address, IKE SA
  number, or all). Lookups go through the manager's public API (``by_id``, ``find``, ``sas``);
  the peer-address lookup is a scan today, isolated in ``sas_with_peer`` so that an index in
  the engine can replace that one function later (``find`` is a scan inside the engine today
  too, and gets faster when the engine indexes connections).
* ``ike_entry``: one IKE SA's entry, built only for the SAs selected, one at a time, so the
  control socket can stream them (``--json-lines``) instead of building one giant answer.
* ``summarise``: counts by state and by connection, without building any entry.
"""
from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ikev2.manager import IkeManager
from vpn_gw.dataplane import DataPlane
from vpn_gw.transport.tcp import TcpService

DELETED = "deleted"     # ikev2.sa_common.State.DELETED.value: gone, not shown


def state_name(engine_state: str) -> str:
    """The engine's state value ("init-done") as status shows it ("INIT_DONE")."""
    return engine_state.upper().replace("-", "_")


def parse_peer(text: str) -> str:
    """The ``--peer`` filter: an IP address (v4 or v6), returned in canonical text form."""
    try:
        return str(ipaddress.ip_address(str(text).strip().strip("[]")))
    except ValueError:
        raise ValueError(f"--peer: {text!r} is not an IP address") from None


def parse_ike_id(value: Any) -> int:
    """The ``--id`` filter: the IKE SA number status shows as ``#N`` (``uid``)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--id: {value!r} is not an IKE SA number") from None
    if n < 0:
        raise ValueError(f"--id: {value!r} is not an IKE SA number")
    return n


def _live(sas: Iterable[Any]) -> Iterator[Any]:
    return (sa for sa in sas if sa.state.value != DELETED)


def sas_with_peer(manager: IkeManager, peer_ip: str) -> list[Any]:
    """IKE SAs whose peer is at peer_ip (canonical text). A scan of all IKE SAs today: this is
    the one function an index by peer address (the engine's per-peer bookkeeping) replaces."""
    return [sa for sa in _live(manager.sas) if _same_ip(sa.remote[0], peer_ip)]


def _same_ip(ip: str, canonical: str) -> bool:
    """ip (as the socket reported it) is the canonical address; text compare first (IPv4 and
    the kernel's IPv6 text are canonical already), parsing only IPv6 text that differs."""
    return ip == canonical or (":" in ip and _canonical(ip) == canonical)


def _canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def select_sas(manager: IkeManager, *, name: str | None = None, peer: str | None = None,
               ike_id: int | None = None) -> list[Any]:
    """The live IKE SAs matching every filter given (none given: all of them), in the
    engine's order. The most selective lookup runs first; the others only test its results."""
    if ike_id is not None:
        sa = manager.by_id(ike_id)
        cands = [sa] if sa is not None and sa.state.value != DELETED else []
    elif name is not None:
        cands = manager.find(name)
    elif peer is not None:
        cands = sas_with_peer(manager, peer)
    else:
        # a snapshot of references (cheap even at 100k): the list may change while streaming
        return list(_live(manager.sas))
    return [sa for sa in cands
            if (name is None or (sa.policy is not None and sa.policy.name == name))
            and (peer is None or _same_ip(sa.remote[0], peer))]


def summarise(manager: IkeManager) -> dict[str, Any]:
    """Counts of live IKE SAs by state and by connection (and by state within each), and the
    number of Child SAs. One pass over the SAs reading attributes only: counters kept by the
    engine could replace it, but it needs no entries built and stays well under a second at 100k."""
    by_state: Counter[str] = Counter()
    by_conn: dict[str, Counter[str]] = {}
    children = 0
    for sa in _live(manager.sas):
        st = sa.state.value
        by_state[st] += 1
        conn = sa.policy.name if sa.policy is not None else ""
        c = by_conn.get(conn)
        if c is None:
            c = by_conn[conn] = Counter()
        c[st] += 1
        children += len(sa.children)
    return {
        "ike_sas": sum(by_state.values()),
        "child_sas": children,
        "by_state": {state_name(s): n for s, n in sorted(by_state.items())},
        "by_connection": {conn: {"total": sum(c.values()),
                                 **{state_name(s): n for s, n in sorted(c.items())}}
                          for conn, c in sorted(by_conn.items())},
    }


def status_entries(manager: IkeManager, dataplane: DataPlane, tcp: TcpService, now: float,
                   wall: float, sas: Iterable[Any] | None = None,
                   install_errors: Mapping[int, list[str]] | None = None) -> list[dict[str, Any]]:
    """Entries for sas (default: every live IKE SA)."""
    return list(iter_entries(manager, dataplane, tcp, now, wall, sas, install_errors))


def iter_entries(manager: IkeManager, dataplane: DataPlane, tcp: TcpService, now: float,
                 wall: float, sas: Iterable[Any] | None = None,
                 install_errors: Mapping[int, list[str]] | None = None) -> Iterator[dict[str, Any]]:
    """One entry at a time; an SA deleted since it was selected is skipped. install_errors:
    {IKE SA number: Child SAs the data plane refused} (shown as ``install_errors``)."""
    for sa in (select_sas(manager) if sas is None else sas):
        if sa.state.value != DELETED:
            entry = ike_entry(sa.status(now), dataplane, tcp, wall)
            if install_errors and install_errors.get(entry["uid"]):
                entry["install_errors"] = list(install_errors[entry["uid"]])
            yield entry


def ike_entry(st: dict[str, Any], dataplane: DataPlane, tcp: TcpService, wall: float) -> dict[str, Any]:
    local_ip, local_port = st["local"].rsplit(":", 1)
    remote_ip, remote_port = st["remote"].rsplit(":", 1)
    est = st.get("established_for")
    return {
        "uid": st["id"], "name": st["name"], "state": state_name(st["state"]),
        "initiator": st["initiator"], "local_addr": local_ip, "local_port": int(local_port),
        "remote_addr": remote_ip, "remote_port": int(remote_port),
        "local_id": st["local_id"], "remote_id": st["remote_id"],
        "spi_i": st["spi_i"], "spi_r": st["spi_r"], "algorithms": st["proposal"],
        "key_exchanges": st.get("key_exchanges", []),  # RFC 9370: every negotiated key exchange
        "ppk": st.get("ppk", False),  # RFC 8784: authenticated with a PPK
        "established": (wall - est) if est is not None else None,
        "nat_local": st["nat_local"], "nat_remote": st["nat_remote"],
        "transport": tcp.transport_of((local_ip, int(local_port)), (remote_ip, int(remote_port))),
        "eap_identity": st.get("eap_identity"), "virtual_ips": st.get("virtual_ips", []),
        "children": [child_entry(c, dataplane) for c in st["children"]],
    }


def child_entry(c: dict[str, Any], dataplane: DataPlane) -> dict[str, Any]:
    cnt = dataplane.counters(bytes.fromhex(c["spi_in"]))
    return {
        "name": c["name"], "state": c["state"].upper(), "mode": "tunnel",
        "spi_in": c["spi_in"], "spi_out": c["spi_out"], "algorithms": c["proposal"],
        # ESP in UDP: what was negotiated (NAT or forced); the userspace plane always does
        "encap": c["encap"] or dataplane.name == "userspace", "local_ts": c["local_ts"],
        "remote_ts": c["remote_ts"],
        "bytes_in": cnt.bytes_in if cnt else 0, "packets_in": cnt.packets_in if cnt else 0,
        "bytes_out": cnt.bytes_out if cnt else 0, "packets_out": cnt.packets_out if cnt else 0,
        "drops": dict(cnt.drops) if cnt else {},
    }
