"""The gateway daemon (see gateway.py for how the parts fit together)."""
from vpn_gw.daemon.gateway import Gateway, StartupError, run

__all__ = ["Gateway", "StartupError", "run"]
