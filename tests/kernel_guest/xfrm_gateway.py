"""`vpn-gw run` with the kernel XFRM data plane, for the guest tests.

Until the daemon takes ``dataplane = "xfrm"`` from its configuration, this wires the backend
the way the daemon will (see docs/xfrm.md, "Daemon hooks"): the XfrmDataPlane gets the
gateway's ESP sender (NAT keepalives), its interface and if_id look-ups, and every IKE socket
gets the bypass policies (and ESP-in-UDP decapsulation on the NAT-T port) after binding.

    python -m tests.kernel_guest.xfrm_gateway -c vpn-gw.toml [--log-format json] [--log-level debug]
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from vpn_gw.config import load_config
from vpn_gw.daemon import Gateway
from vpn_gw.log import setup_logging
from vpn_gw.xfrm.backend import XfrmDataPlane
from vpn_gw.xfrm.sockets import prepare_ike_socket


class XfrmGateway(Gateway):
    def __init__(self, config):
        ifids = {c.interface: c.if_id for c in config.connections if c.interface}
        dp = XfrmDataPlane(None, lambda name: None, if_id_for=lambda ifname: ifids.get(ifname),
                           path_mtu=config.path_mtu, keepalive_interval=config.keepalive_interval)
        super().__init__(config, dataplane=dp)
        dp.send_udp = self._send_esp
        dp.interface_for = self._interface_for

    def open_sockets(self) -> None:
        super().open_sockets()
        for (_family, port), socks in self.sockets.items():
            for s in socks:
                prepare_ike_socket(s, natt=(port == self.config.natt_port))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--log-format", default="json")
    ap.add_argument("--log-level", default="debug")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    setup_logging(args.log_level, args.log_format)
    asyncio.run(XfrmGateway(cfg).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
