"""RADIUS for remote access (docs/fleet.md): EAP relayed to a RADIUS server, accounting,
and the Disconnect/CoA listener. pyrad is imported only when these are used (the
configuration loader imports ``vpn_gw.radius.settings`` alone)."""
from __future__ import annotations

_EXPORTS = {
    "AcceptAttributes": "client", "AcctSession": "client", "EapRelay": "client",
    "RadiusClient": "client", "RadiusError": "codec", "RadiusTimeout": "codec",
    "RadiusServer": "transport",
}
__all__ = ["AcceptAttributes", "AcctSession", "EapRelay", "RadiusClient", "RadiusError",  # noqa: F822
           "RadiusServer", "RadiusTimeout"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
