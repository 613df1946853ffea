"""Running under systemd: the unit file verifies, the daemon speaks the notify protocol over a
real AF_UNIX datagram socket (READY=1, RELOADING=1/READY=1, STOPPING=1), and it brings a
tunnel up with nothing but CAP_NET_ADMIN, CAP_NET_BIND_SERVICE and CAP_NET_RAW."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.gateway import PYTHON, ROOT, OurGateway, connection
from tests.netns import wait_until

pytestmark = pytest.mark.netns

UNIT = ROOT / "packaging" / "systemd" / "vpn-gw.service"
CAPS = ("net_admin", "net_bind_service", "net_raw")
CAP_MASK = (1 << 12) | (1 << 10) | (1 << 13)  # CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_NET_RAW


def test_unit_verifies(tmp_path):
    """systemd-analyze verify on the shipped unit; ExecStart/ExecReload point at this
    machine's vpn-gw instead of /opt/vpn-gw (not installed here), nothing else changed."""
    exe = shutil.which("vpn-gw") or str(Path(PYTHON).parent / "vpn-gw")
    assert os.access(exe, os.X_OK), exe
    text = UNIT.read_text()
    for key in ("Type=notify", "ExecReload=", "LimitNOFILE=", "RuntimeDirectory=vpn-gw",
                "StateDirectory=vpn-gw", "ConfigurationDirectory=vpn-gw", "NoNewPrivileges=yes",
                "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW",
                "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW"):
        assert key in text, key
    unit = tmp_path / "vpn-gw.service"
    unit.write_text(text.replace("/opt/vpn-gw/bin/vpn-gw", exe))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    p = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in p.stderr   # the check can fail


class CappedGateway(OurGateway):
    """`vpn-gw run` behind setpriv: only CAPS, no new privileges, NOTIFY_SOCKET set."""

    def __init__(self, *a, notify_socket: str, uid: int = 0, **kw):
        super().__init__(*a, **kw)
        self.notify_socket, self.uid = notify_socket, uid

    def start(self, timeout: float = 15.0):
        caps = ",".join(f"+{c}" for c in CAPS)
        fh = open(self.log, "w")
        env = {**os.environ, "NOTIFY_SOCKET": self.notify_socket, "PYTHONPATH": str(ROOT)}
        self.proc = self.ns.popen(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
             f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}",
             "--no-new-privs", "--", PYTHON, "-m", "vpn_gw", "run", "-c", str(self.config),
             "--log-format", "json", "--log-level", "debug"],
            stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)
        fh.close()
        wait_until(lambda: self.socket.exists() or self.proc.poll() is not None, timeout=timeout)
        assert self.proc.poll() is None, self.log_tail()
        return self


def _recv_all(sock: socket.socket, want: str, timeout: float) -> list[str]:
    """Notify messages until one containing ``want`` (bounded)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if want in got[-1]:
            return got
    raise AssertionError(f"no {want!r} within {timeout}s; got {got}")


def test_notify_and_capabilities_bring_a_tunnel_up(e2e, tmp_path):
    """Gateway a runs with only the three capabilities (as a non-root uid when /dev/net/tun is
    usable by one, else as root with the bounded set) and reports to our notify socket."""
    from tests.netns_e2e.topology import two_sites
    router, a, b = two_sites(e2e.grp)
    tun_world_rw = os.stat("/dev/net/tun").st_mode & 0o006 == 0o006
    uid = 65534 if tun_world_rw else 0
    work = Path(f"/tmp/vpngw-sd-{os.getpid()}")   # reachable by uid 65534 (tmp_path is 0700)
    work.mkdir(mode=0o755)
    try:
        os.chown(work, uid, uid)
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        npath = str(tmp_path / "notify.sock")
        nsock.bind(npath)
        os.chmod(npath, 0o666)
        conn_a = connection("to-b", a.wan, b.wan, "a.example.org", "b.example.org", local_ts=a.lan,
                            remote_ts=b.lan)
        ga = CappedGateway(a.gw, work, "a", [conn_a], listen=[a.wan], notify_socket=npath, uid=uid)
        os.chown(ga.dir, uid, uid)
        os.chown(ga.config, uid, uid)
        e2e.gateways.append(ga)
        e2e.gateway(b.gw, "b", [connection("to-a", b.wan, a.wan, "b.example.org", "a.example.org",
                                                local_ts=b.lan, remote_ts=a.lan)], [b.wan])
        ga.start()
        msgs = _recv_all(nsock, "READY=1", 15)
        assert any(f"MAINPID={ga.proc.pid}" in m for m in msgs), msgs
        assert ga.socket.exists()  # READY=1 only once the control socket (and IKE sockets) exist

        status = Path(f"/proc/{ga.proc.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert int(fields["CapEff"], 16) == CAP_MASK, fields["CapEff"]
        assert int(fields["CapBnd"], 16) == CAP_MASK, fields["CapBnd"]
        assert fields["NoNewPrivs"].strip() == "1"
        assert fields["Uid"].split()[0] == str(uid)

        ga.up("to-b")          # the tunnel comes up with only those capabilities
        ga.wait_children(1)
        a.host.wait_ping(b.host_ip, timeout=5)
        assert a.host.ping(b.host_ip, count=3, timeout=2)

        ga.cli("reload", "-s", str(ga.socket))
        msgs = _recv_all(nsock, "READY=1", 10)
        assert msgs[0].startswith("RELOADING=1\nMONOTONIC_USEC="), msgs
        os.kill(ga.proc.pid, signal.SIGHUP)          # SIGHUP reloads too
        msgs = _recv_all(nsock, "READY=1", 10)
        assert msgs[0].startswith("RELOADING=1"), msgs
        ga.proc.send_signal(signal.SIGTERM)
        assert _recv_all(nsock, "STOPPING=1", 10)[-1] == "STOPPING=1"
        ga.proc.wait(timeout=10)
        assert ga.proc.returncode == 0, ga.log_tail()
        nsock.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
