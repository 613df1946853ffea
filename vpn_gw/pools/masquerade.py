"""Source NAT of remote-access pools (``[[pool]] masquerade = "wan0"``) with nftables.

The gateway owns one table, ``inet vpn_gw_nat``: created at start, deleted at stop, never
touching anyone else's rules. A missing ``nft`` or a refused rule set is a clear start-up error.
"""
from __future__ import annotations

import shutil
import subprocess

TABLE = "vpn_gw_nat"


class NatError(RuntimeError):
    pass


def ruleset(pools) -> str:
    """The nft script for the pools that have ``masquerade`` set."""
    rules = []
    for p in pools:
        if not getattr(p, "masquerade", None):
            continue
        fam = "ip6" if p.version == 6 else "ip"
        rules.append(f'        {fam} saddr {p.addrs} oifname "{p.masquerade}" masquerade comment "pool {p.name}"')
    if not rules:
        return ""
    return (f"table inet {TABLE} {{\n    chain postrouting {{\n"
            f"        type nat hook postrouting priority srcnat; policy accept;\n"
            + "\n".join(rules) + "\n    }\n}\n")


def _nft(script: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        p = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise NatError("the nft command (Debian package nftables) is needed for pool masquerading") from None
    if p.returncode != 0:
        raise NatError(f"nftables refused the NAT rules: {p.stderr.strip() or p.stdout.strip()}")


def install(pools) -> bool:
    """(Re)create our table with masquerade rules; returns whether there was anything to do."""
    script = ruleset(pools)
    remove()
    if not script:
        return False
    _nft(script)
    return True


def remove() -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        subprocess.run([nft, "delete", "table", "inet", TABLE], capture_output=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pass
