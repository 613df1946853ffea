"""`vpn-gw run` start errors name the address and port and say what to do (issue 15, item 1)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.gateway import render_toml
from tests.netns import NetnsGroup, require_root

pytestmark = pytest.mark.netns


@pytest.fixture
def ns():
    require_root()
    grp = NetnsGroup("starterr")
    try:
        n = grp.add("gw")
        n.run(["ip", "address", "add", "192.0.2.1/24", "dev", "lo"])
        yield n
    finally:
        grp.close()
        assert grp.leftovers() == []


def _run(ns, tmp_path, gateway: dict) -> subprocess.CompletedProcess:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(render_toml({"control_socket": str(tmp_path / "c.sock"), "dataplane": "none",
                                "tcp_port": 0, **gateway}, []))
    return ns.run([sys.executable, "-m", "vpn_gw", "run", "-c", str(cfg), "--log-format", "json"],
                  check=False, timeout=30)


def test_address_not_on_this_host(ns, tmp_path):
    p = _run(ns, tmp_path, {"listen": ["198.51.100.77"]})
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("vpn-gw: cannot listen on UDP (IKE) 198.51.100.77:500: 198.51.100.77 is not "
                           "an address of this host"), p.stderr
    assert "ip address add 198.51.100.77" in last and "[gateway] listen" in last


def test_port_in_use(ns, tmp_path):
    holder = ns.popen([sys.executable, "-c", "import socket, time; s = socket.socket(socket.AF_INET, "
                       "socket.SOCK_DGRAM); s.bind(('192.0.2.1', 4500)); print('bound', flush=True); "
                       "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        p = _run(ns, tmp_path, {"listen": ["192.0.2.1"]})
        assert p.returncode == 1
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith("vpn-gw: cannot listen on UDP (IKE) 192.0.2.1:4500: the port is already in "
                               "use by another program"), p.stderr
        assert "ss -lunp 'sport = :4500'" in last and "natt_port" in last
    finally:
        holder.kill()
        holder.wait(timeout=5)


def test_metrics_port_in_use(ns, tmp_path):
    holder = ns.popen([sys.executable, "-c", "import socket, time; s = socket.socket(); "
                       "s.bind(('127.0.0.1', 9273)); s.listen(); print('bound', flush=True); time.sleep(30)"],
                      stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        p = _run(ns, tmp_path, {"listen": ["192.0.2.1"], "metrics_listen": "127.0.0.1:9273"})
        assert p.returncode == 1
        assert "cannot listen on TCP (metrics) 127.0.0.1:9273: the port is already in use" in p.stderr
        assert "ss -ltnp" in p.stderr and "metrics_listen" in p.stderr
    finally:
        holder.kill()
        holder.wait(timeout=5)
