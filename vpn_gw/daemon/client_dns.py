"""Client side of remote access: the DNS servers the gateway sent, written to the connection's
``dns_file`` (never the system resolver unless the file named is the system resolver's)."""
from __future__ import annotations

import os

import structlog

log = structlog.get_logger("vpn_gw")


def write_dns_file(path: str | os.PathLike[str] | None, conn_name: str, servers: list[str]) -> None:
    if not path or not servers:
        return
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"# written by vpn-gw for connection {conn_name}\n")
            fh.writelines(f"nameserver {s}\n" for s in servers)
        os.replace(tmp, path)
        log.info("DNS servers written", connection=conn_name, file=str(path), servers=servers)
    except OSError as e:
        log.error("cannot write DNS servers", file=str(path), error=str(e))
