"""RADIUS for remote access (docs/fleet.md): EAP relayed to a RADIUS server, accounting,
and the Disconnect/CoA listener."""
from .client import AcceptAttributes, AcctSession, EapRelay, RadiusClient
from .codec import RadiusError, RadiusTimeout
from .transport import RadiusServer

__all__ = ["AcceptAttributes", "AcctSession", "EapRelay", "RadiusClient", "RadiusError",
           "RadiusServer", "RadiusTimeout"]
