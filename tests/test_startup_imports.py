"""What a restarting gateway imports (issue 14, restart recovery; docs/architecture.md "Start-up
and restart recovery"): `vpn-gw run` with a PSK connection and the userspace data plane must not
load what only other set-ups need. Run in a fresh interpreter, so the test process's own
imports do not count."""
from __future__ import annotations

import subprocess
import sys
import textwrap

# each was measured on the start-up path once; each loads on first use now
NOT_AT_START = ("pyroute2", "ikev2.eap.client", "ikev2.eap.server", "ikev2.eap.mschapv2", "ikev2.eap.tls",
                "OpenSSL", "prometheus_client", "dns", "multiprocessing", "importlib.metadata", "psycopg",
                "pyrad", "vpn_gw.metrics", "vpn_gw.swanctl_import")

CONFIG = """
[gateway]
control_socket = "/nonexistent/control.sock"

[[connection]]
name = "s2s"
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
local_id = "gw-a.example"
remote_id = "gw-b.example"
auth = "psk"
psk = "test-only-psk-0123456789abcdef"
ike_proposals = ["aes256gcm16-prfsha256-x25519"]
start_action = "start"
[[connection.child]]
name = "net"
local_ts = ["198.51.100.0/24"]
remote_ts = ["203.0.113.0/24"]
esp_proposals = ["aes256gcm16"]
"""


def test_a_psk_userspace_gateway_start_imports_none_of_the_optional_stacks(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text(CONFIG)
    cfg.chmod(0o600)
    code = textwrap.dedent(f"""
        import sys
        import vpn_gw.cli
        vpn_gw.cli.build_parser()
        from vpn_gw.config import load_config
        import vpn_gw.daemon.gateway, vpn_gw.dataplane.userspace.plane, vpn_gw.daemon.roaming
        from vpn_gw.policies import ike_policy
        config = load_config({str(cfg)!r})
        policies = [ike_policy(c, config) for c in config.connections]
        print(" ".join(sorted(sys.modules)))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    loaded = set(p.stdout.split())
    assert "ikev2.manager" in loaded and "vpn_gw.dataplane.rtnl" in loaded  # it did import the gateway
    found = sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_AT_START))
    assert not found, f"imported at start-up: {found}"


def test_ikev2_eap_names_load_on_first_use():
    code = textwrap.dedent("""
        import sys
        import ikev2.eap
        assert "ikev2.eap.server" not in sys.modules
        from ikev2.eap import EapServer, UserDB, EapStep, nt_hash
        assert EapServer.__module__ == "ikev2.eap.server" and UserDB.__module__ == "ikev2.eap.users"
        try:
            ikev2.eap.NoSuchThing
        except AttributeError:
            print("ok")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
