"""`vpn-gw demo`: two branch gateways of ours in network namespaces, a router between them and a
host behind each; brings the tunnel up, pings host to host through it, prints `vpn-gw status` of
both gateways, and cleans everything up (namespaces and processes), even on failure.

Topology (documentation ranges outside, 10.x only inside the namespaces):

    host-a 10.1.0.2 -- 10.1.0.1 gw-a 192.0.2.1 -- 192.0.2.254 router
           router 198.51.100.254 -- 198.51.100.1 gw-b 10.2.0.1 -- 10.2.0.2 host-b

The router has no route to 10.0.0.0/8, so host-to-host traffic can only pass through the tunnel.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"

CONFIG = """\
[gateway]
control_socket = "{dir}/{name}.sock"
listen = ["{wan}"]
log_level = "info"

[[connection]]
name = "{peer_name}"
local_addrs = ["{wan}"]
remote_addrs = ["{peer_wan}"]
local_id = "{name}.demo.example.org"
remote_id = "{peer_name}.demo.example.org"
auth = "psk"
psk = "file:{dir}/demo.psk"
ike_proposals = ["aes256gcm16-prfsha256-x25519"]
start_action = "{start}"
dpd_delay = "10s"

[[connection.child]]
name = "lan"
local_ts = ["{lan}"]
remote_ts = ["{peer_lan}"]
esp_proposals = ["aes256gcm16"]
"""


class DemoError(RuntimeError):
    pass


def _run(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise DemoError(f"{' '.join(args)}: {(p.stderr or p.stdout).strip()}")
    return p


class Namespaces:
    """The demo's namespaces; deleting them also removes their veth links."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def add(self, short: str, forwarding: bool = False) -> str:
        name = f"{self.prefix}-{short}"
        _run(IP, "netns", "add", name)
        self.names.append(name)
        _run(IP, "-n", name, "link", "set", "lo", "up")
        if forwarding:
            self.exec(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return name

    def exec(self, ns: str, *cmd: str, check: bool = True, timeout: float = 10.0):
        return _run(IP, "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def link(self, a: str, a_dev: str, a_addr: str, b: str, b_dev: str, b_addr: str) -> None:
        _run(IP, "-n", a, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b)
        for ns, dev, addr in ((a, a_dev, a_addr), (b, b_dev, b_addr)):
            _run(IP, "-n", ns, "addr", "add", addr, "dev", dev)
            _run(IP, "-n", ns, "link", "set", dev, "up")

    def spawn(self, ns: str, *cmd: str, log: Path) -> subprocess.Popen:
        fh = open(log, "w")
        p = subprocess.Popen([IP, "netns", "exec", ns, *cmd], stdout=fh, stderr=subprocess.STDOUT,
                             start_new_session=True)
        fh.close()
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for name in reversed(self.names):
            _run(IP, "netns", "del", name, check=False)


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise DemoError(f"timed out waiting for {what}")


def run(args=None) -> int:
    if os.geteuid() != 0:
        print("vpn-gw demo: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    vpn_gw = [sys.executable, "-m", "vpn_gw"]
    work = Path(tempfile.mkdtemp(prefix="vpn-gw-demo-"))
    ns = Namespaces(f"vgdemo{os.getpid()}")
    ok = False
    try:
        router = ns.add("router", forwarding=True)
        gw_a, gw_b = ns.add("gw-a", forwarding=True), ns.add("gw-b", forwarding=True)
        host_a, host_b = ns.add("host-a"), ns.add("host-b")
        ns.link(gw_a, "wan", "192.0.2.1/24", router, "to-a", "192.0.2.254/24")
        ns.link(gw_b, "wan", "198.51.100.1/24", router, "to-b", "198.51.100.254/24")
        ns.link(host_a, "eth0", "10.1.0.2/24", gw_a, "lan", "10.1.0.1/24")
        ns.link(host_b, "eth0", "10.2.0.2/24", gw_b, "lan", "10.2.0.1/24")
        for gw, via in ((gw_a, "192.0.2.254"), (gw_b, "198.51.100.254")):
            _run(IP, "-n", gw, "route", "add", "default", "via", via)
        _run(IP, "-n", host_a, "route", "add", "default", "via", "10.1.0.1")
        _run(IP, "-n", host_b, "route", "add", "default", "via", "10.2.0.1")
        (work / "demo.psk").write_text(os.urandom(24).hex() + "\n")
        (work / "demo.psk").chmod(0o600)
        sites = {
            "gw-a": dict(name="gw-a", peer_name="gw-b", wan="192.0.2.1", peer_wan="198.51.100.1",
                         lan="10.1.0.0/24", peer_lan="10.2.0.0/24", start="start", ns=gw_a),
            "gw-b": dict(name="gw-b", peer_name="gw-a", wan="198.51.100.1", peer_wan="192.0.2.1",
                         lan="10.2.0.0/24", peer_lan="10.1.0.0/24", start="none", ns=gw_b),
        }
        for s in sites.values():
            cfg = work / f"{s['name']}.toml"
            cfg.write_text(CONFIG.format(dir=work, **s))
            print(f"== starting {s['name']} ({cfg})")
            ns.spawn(s["ns"], *vpn_gw, "run", "-c", str(cfg), log=work / f"{s['name']}.log")
        for s in sites.values():
            sock = work / f"{s['name']}.sock"
            _wait(sock.exists, 10, f"{s['name']} control socket")

        def status(site) -> str:
            return ns.exec(site["ns"], *vpn_gw, "status", "-s", str(work / f"{site['name']}.sock"),
                           check=False).stdout

        def up() -> bool:
            return "INSTALLED" in status(sites["gw-a"]) and "INSTALLED" in status(sites["gw-b"])
        _wait(up, 20, "the tunnel to come up")
        print("== tunnel is up")
        ping = ns.exec(host_a, "ping", "-c", "3", "-W", "2", "10.2.0.2", check=False, timeout=20)
        print(f"== ping host-a 10.1.0.2 -> host-b 10.2.0.2 through the tunnel:\n{ping.stdout.strip()}")
        for s in sites.values():
            print(f"== vpn-gw status on {s['name']}\n{status(s)}")
        ok = True
        if ping.returncode != 0:
            print("== ping failed")
            for log in sorted(work.glob("*.log")):
                print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]))
            ok = False
    except (DemoError, subprocess.TimeoutExpired) as e:
        print(f"vpn-gw demo: {e}", file=sys.stderr)
        for log in sorted(work.glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]), file=sys.stderr)
    finally:
        ns.close()
        shutil.rmtree(work, ignore_errors=True)
        print("== cleaned up (namespaces and processes removed)")
    return 0 if ok else 1
