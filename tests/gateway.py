"""Run our gateway (`vpn-gw run`) inside a test network namespace and talk to it.

    gw = OurGateway(ns, workdir, "hq", connections=[site_to_site(...)])
    gw.start()                 # waits (bounded) for the control socket
    gw.up("branch1")           # vpn-gw up, raises on failure
    sas = gw.status()          # parsed `vpn-gw status --json`
    gw.stop()                  # SIGTERM by PID, bounded; the netns cleanup kills leftovers

Configs are written from plain dicts (TOML), so tests read like the user's config files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.netns import Netns, kill_pid, wait_until

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def render_toml(gateway: dict, connections: list[dict]) -> str:
    lines = ["[gateway]"] + [f"{k} = {_toml_value(v)}" for k, v in gateway.items()]
    for conn in connections:
        lines.append("\n[[connection]]")
        children = conn.get("children", [])
        lines += [f"{k} = {_toml_value(v)}" for k, v in conn.items() if k != "children"]
        for ch in children:
            lines.append("[[connection.child]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in ch.items()]
    return "\n".join(lines) + "\n"


def connection(name: str, local_addr: str, remote_addr: str, local_id: str, remote_id: str, *,
               local_ts: str | list[str], remote_ts: str | list[str], psk: str = "interop-test-psk-123",
               ike: str = "aes256gcm16-prfsha256-x25519", esp: str = "aes256gcm16",
               start_action: str = "none", child: str = "net", **extra) -> dict:
    ch = {"name": child, "local_ts": [local_ts] if isinstance(local_ts, str) else local_ts,
          "remote_ts": [remote_ts] if isinstance(remote_ts, str) else remote_ts, "esp_proposals": [esp]}
    conn = {"name": name, "local_addrs": [local_addr], "remote_addrs": [remote_addr], "local_id": local_id,
            "remote_id": remote_id, "auth": "psk", "psk": psk, "ike_proposals": [ike],
            "start_action": start_action}
    conn.update(extra)
    if extra.get("auth") == "pubkey":
        conn.pop("psk", None)
    conn["children"] = [ch]
    return conn


class GatewayError(RuntimeError):
    pass


class OurGateway:
    def __init__(self, ns: Netns, workdir: Path, name: str, connections: list[dict],
                 listen: list[str] | None = None, gateway: dict | None = None, log_format: str = "json",
                 log_level: str = "debug", wrapper: list[str] | None = None):
        self.ns = ns
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.socket = self.dir / "control.sock"
        self.config = self.dir / "vpn-gw.toml"
        self.log = self.dir / "vpn-gw.log"
        gw = {"control_socket": str(self.socket)}
        if listen:
            gw["listen"] = listen
        gw.update(gateway or {})
        self.config.write_text(render_toml(gw, connections))
        self.config.chmod(0o600)  # it holds PSKs inline: as an operator installs it (no warning)
        self.log_format = log_format
        self.log_level = log_level  # benchmarks run at "info" (debug logging costs throughput)
        self.proc: subprocess.Popen | None = None
        self.wrapper = wrapper or []  # runs the daemon (e.g. in a mount namespace); must exec it

    def cli(self, *args: str, check: bool = True, timeout: float = 40.0) -> subprocess.CompletedProcess:
        p = self.ns.run([PYTHON, "-m", "vpn_gw", *args], check=False, timeout=timeout)
        if check and p.returncode != 0:
            raise GatewayError(f"vpn-gw {' '.join(args)} failed ({p.returncode}): "
                               f"{p.stderr.strip() or p.stdout.strip()}"
                               f"\n--- log tail ---\n{self.log_tail()}")
        return p

    def start(self, timeout: float = 15.0) -> OurGateway:
        fh = open(self.log, "w")
        self.proc = self.ns.popen([*self.wrapper, PYTHON, "-m", "vpn_gw", "run", "-c", str(self.config),
                                   "--log-format", self.log_format, "--log-level", self.log_level],
                                  stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT))
        fh.close()
        try:
            wait_until(lambda: self.socket.exists() or self.proc.poll() is not None, timeout=timeout)
        except TimeoutError:
            raise GatewayError(f"{self.name}: no control socket after {timeout}s\n{self.log_tail()}") from None
        if self.proc.poll() is not None:
            raise GatewayError(f"{self.name}: exited with {self.proc.returncode}\n{self.log_tail()}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_pid(self.proc.pid, timeout=timeout)
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    def control(self, cmd: str, timeout: float = 30.0, **args) -> Any:
        """A control-socket request straight from the test process (the socket is a file)."""
        from vpn_gw.control import control_request
        return control_request(str(self.socket), cmd, timeout=timeout, **args)

    def rekey(self, name: str, child: str | None = None, ike: bool = False) -> Any:
        return self.control("rekey", name=name, child=child, ike=ike)

    def status(self) -> list[dict]:
        return json.loads(self.cli("status", "--json", "-s", str(self.socket)).stdout)

    def up(self, name: str) -> str:
        return self.cli("up", name, "-s", str(self.socket)).stdout

    def down(self, name: str) -> None:
        self.cli("down", name, "-s", str(self.socket))

    def ike_sas(self, name: str | None = None, state: str | None = "ESTABLISHED") -> list[dict]:
        return [sa for sa in self.status() if (name is None or sa["name"] == name)
                and (state is None or sa["state"] == state)]

    def children(self, state: str = "INSTALLED") -> list[tuple[dict, dict]]:
        return [(sa, c) for sa in self.status() for c in sa["children"] if c["state"] == state]

    def wait_children(self, n: int = 1, timeout: float = 15.0) -> list[tuple[dict, dict]]:
        got: list = []

        def ok():
            nonlocal got
            got = self.children()
            return len(got) >= n
        try:
            wait_until(ok, timeout=timeout, interval=0.2)
        except TimeoutError:
            raise GatewayError(f"{self.name}: {len(got)} of {n} CHILD_SAs after {timeout}s\n"
                               f"{self.log_tail()}") from None
        return got

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": line})
        return out

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def env_has_root() -> bool:
    return os.geteuid() == 0
