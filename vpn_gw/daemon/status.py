"""`vpn-gw status`: the engine's view of each IKE SA and its Child SAs, with the data plane's
counters and the transport each path uses, in the JSON shape docs/control.md describes."""
from __future__ import annotations

from typing import Any

from ikev2.manager import IkeManager

from vpn_gw.dataplane import DataPlane
from vpn_gw.transport.tcp import TcpService


def status_entries(manager: IkeManager, dataplane: DataPlane, tcp: TcpService, now: float,
                   wall: float) -> list[dict[str, Any]]:
    return [ike_entry(st, dataplane, tcp, wall) for st in manager.status(now)]


def ike_entry(st: dict[str, Any], dataplane: DataPlane, tcp: TcpService, wall: float) -> dict[str, Any]:
    local_ip, local_port = st["local"].rsplit(":", 1)
    remote_ip, remote_port = st["remote"].rsplit(":", 1)
    est = st.get("established_for")
    return {
        "uid": st["id"], "name": st["name"], "state": st["state"].upper().replace("-", "_"),
        "initiator": st["initiator"], "local_addr": local_ip, "local_port": int(local_port),
        "remote_addr": remote_ip, "remote_port": int(remote_port),
        "local_id": st["local_id"], "remote_id": st["remote_id"],
        "spi_i": st["spi_i"], "spi_r": st["spi_r"], "algorithms": st["proposal"],
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
