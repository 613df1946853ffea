"""The vpn-gw command line, end to end: the installed console script against a real ControlServer."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from vpn_gw import cli
from vpn_gw.cli import render_reload, render_result, render_status
from vpn_gw.control import ControlError, ControlServer

ROOT = Path(__file__).resolve().parent.parent
VPN_GW = Path(sys.executable).parent / "vpn-gw"
EXAMPLE = ROOT / "examples" / "site-to-site" / "hq.toml"


NOW = 1_700_000_000.0
STATUS = [
    {
        "name": "branch1", "uid": 1, "state": "ESTABLISHED", "initiator": True,
        "local_addr": "192.0.2.1", "local_port": 500,
        "remote_addr": "198.51.100.1", "remote_port": 4500, "nat_remote": True,
        "local_id": "hq.example.org", "remote_id": "branch1.example.org",
        "spi_i": "0123456789abcdef", "spi_r": "fedcba9876543210",
        "algorithms": "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519",
        "established": NOW - 125, "rekey_in": 14000,
        "children": [
            {"name": "net", "uid": 1, "state": "INSTALLED", "mode": "tunnel", "protocol": "esp",
             "spi_in": "c1a2b3c4", "spi_out": "d5e6f708", "algorithms": "AES_GCM_16-256",
             "local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24", "2001:db8:2::/48"],
             "bytes_in": 123456, "bytes_out": 789, "packets_in": 100, "packets_out": 7,
             "established": NOW - 60, "rekey_in": 3000},
        ],
    },
    {
        "name": "branch2", "state": "CONNECTING", "local_addr": "2001:db8::1", "local_port": 500,
        "remote_addr": "2001:db8::2", "remote_port": 500, "local_id": "hq.example.org",
        "remote_id": None, "children": [],
    },
]


# -- rendering ---------------------------------------------------------------------------------

def test_render_status():
    out = render_status(STATUS, now=NOW)
    lines = out.splitlines()
    assert lines[0] == ("branch1: #1, ESTABLISHED, initiator, SPIs 0123456789abcdef_i "
                        "fedcba9876543210_r")
    assert lines[1].split() == ["local", "192.0.2.1:500", "id", "hq.example.org"]
    assert lines[2].split() == ["remote", "198.51.100.1:4500", "id", "branch1.example.org",
                                "(behind", "NAT)"]
    assert lines[3] == "  AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519"
    assert lines[4] == "  established 2m 5s ago, rekeying in 3h 53m"
    assert lines[5] == "  net: INSTALLED, TUNNEL, SPIs c1a2b3c4_i d5e6f708_o"
    assert lines[6] == "    AES_GCM_16-256, established 1m ago, rekeying in 50m"
    assert lines[7] == "    in  123456 bytes (120.6 KiB), 100 packets"
    assert lines[8] == "    out 789 bytes, 7 packets"
    assert lines[9] == "    local  10.1.0.0/24"
    assert lines[10] == "    remote 10.2.0.0/24, 2001:db8:2::/48"
    assert lines[11] == "branch2: CONNECTING"
    assert lines[12].split() == ["local", "[2001:db8::1]:500", "id", "hq.example.org"]
    assert lines[13].split() == ["remote", "[2001:db8::2]:500", "id", "?"]
    assert lines[14] == "  no CHILD_SAs"
    assert len(lines) == 15


def test_render_status_empty_and_partial():
    assert render_status([]) == "no IKE SAs"
    out = render_status([{"name": "x", "children": [{"name": "c"}]}], now=NOW)
    assert "x: ?" in out and "c: ?, SPIs ?_i ?_o" in out and "in  ?, ?" in out


def test_render_status_encap_and_drops():
    sa = {"name": "a", "state": "ESTABLISHED", "children": [
        {"name": "c", "state": "INSTALLED", "mode": "tunnel", "encap": True,
         "drops": {"replay": 3, "icv": 0, "no_sa": 1}}]}
    out = render_status([sa], now=NOW)
    assert "  c: INSTALLED, TUNNEL, UDP-encapsulated, SPIs ?_i ?_o" in out
    assert "    drops replay 3, no_sa 1" in out


def test_render_result():
    assert render_result({"connection": "b1", "state": "established"}, "b1", "x") == "b1: established"
    assert render_result({"connection": "b1", "terminated": 1}, "b1", "x") == "b1: 1 IKE SA terminated"
    assert render_result({"connection": "b1", "terminated": 0}, "b1", "x") == "b1: 0 IKE SAs terminated"
    assert render_result(None, "b1", "closing") == "b1: closing"
    assert render_result("text", "b1", "x") == "text"
    assert render_result([1], "b1", "x") == "[1]"


def test_render_reload():
    assert render_reload({"added": ["d"], "removed": ["b"], "changed": ["c"], "unchanged": ["a"],
                          "gateway_changed": []}) == \
        "configuration reloaded: added d; removed b; changed c; 1 unchanged"
    assert render_reload({"added": [], "removed": [], "changed": [], "unchanged": []}) == \
        "configuration reloaded: no changes"


# -- a daemon stand-in -------------------------------------------------------------------------

class FakeDaemon:
    """A real ControlServer in a background loop with a small handler."""

    def __init__(self, path: Path):
        self.calls = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ControlServer(path, self.handle)
        self._run(self.server.start())

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    async def handle(self, cmd, args):
        self.calls.append((cmd, args))
        if cmd == "status":
            return STATUS
        if cmd in ("up", "down"):
            if args.get("name") not in ("branch1", "branch2"):
                raise ControlError(f"no connection named {args.get('name')!r}")
            return f"{args['name']}: {'initiating' if cmd == 'up' else 'closing'}"
        if cmd == "reload":
            return {"added": ["branch3"], "removed": [], "changed": ["branch1"],
                    "unchanged": ["branch2"], "changed_keys": {"branch1": ["dpd_delay"]},
                    "gateway_changed": []}
        raise ControlError(f"unknown command {cmd!r}")

    def close(self):
        self._run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vgcli", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(sockdir):
    d = FakeDaemon(sockdir / "control.sock")
    yield d
    d.close()


def run(*args, env=None):
    if not VPN_GW.exists():
        pytest.skip("console script not installed (pip install -e .)")
    e = dict(os.environ)
    e.pop("VPN_GW_CONTROL_SOCKET", None)
    e.update(env or {})
    p = subprocess.run([str(VPN_GW), *map(str, args)], capture_output=True, text=True,
                       timeout=30, env=e, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr or "--debug" in args, p.stderr
    return p


# -- control commands end to end ---------------------------------------------------------------

def test_status_table_and_json(daemon):
    sock = daemon.server.path
    p = run("status", "-s", sock)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("branch1: #1, ESTABLISHED")
    assert "    remote 10.2.0.0/24, 2001:db8:2::/48" in p.stdout
    p = run("status", "--json", "-s", sock)
    assert p.returncode == 0 and json.loads(p.stdout) == STATUS
    # the socket can also come from the environment
    p = run("status", "--json", env={"VPN_GW_CONTROL_SOCKET": str(sock)})
    assert p.returncode == 0 and json.loads(p.stdout)[0]["name"] == "branch1"
    assert [c[0] for c in daemon.calls] == ["status", "status", "status"]


def test_up_down_reload(daemon):
    sock = daemon.server.path
    p = run("up", "branch1", "-s", sock)
    assert (p.returncode, p.stdout) == (0, "branch1: initiating\n")
    p = run("down", "branch2", "-s", sock)
    assert (p.returncode, p.stdout) == (0, "branch2: closing\n")
    p = run("reload", "-s", sock)
    assert (p.returncode, p.stdout) == (0, "configuration reloaded: added branch3; changed branch1; "
                                           "1 unchanged\n")
    assert daemon.calls == [("up", {"name": "branch1", "timeout": 30.0}),
                            ("down", {"name": "branch2"}), ("reload", {})]
    p = run("up", "branch1", "--wait", "2", "-s", sock)
    assert p.returncode == 0 and daemon.calls[-1] == ("up", {"name": "branch1", "timeout": 2.0})


def test_command_refused_is_one_line_exit_1(daemon):
    p = run("up", "nope", "-s", daemon.server.path)
    assert p.returncode == 1
    assert p.stderr == "vpn-gw: no connection named 'nope'\n"
    assert p.stdout == ""


def test_daemon_not_running(sockdir):
    sock = sockdir / "none.sock"
    for args in (["status"], ["up", "x"], ["down", "x"], ["reload"]):
        p = run(*args, "-s", sock)
        assert p.returncode == 1
        assert p.stderr == f"vpn-gw: vpn-gw is not running (no control socket at {sock})\n"


# -- check-config ------------------------------------------------------------------------------

def test_check_config_ok(tmp_path):
    cfg = tmp_path / EXAMPLE.name
    shutil.copy(EXAMPLE, cfg)
    cfg.chmod(0o600)  # it holds the PSK inline: installed as 0600, it loads without warnings
    p = run("check-config", cfg)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"{cfg}: OK (1 connection)\n", "")


def test_check_config_warns_about_an_inline_psk_others_can_read(tmp_path):
    cfg = tmp_path / EXAMPLE.name
    shutil.copy(EXAMPLE, cfg)
    cfg.chmod(0o644)
    p = run("check-config", cfg)
    assert (p.returncode, p.stdout) == (0, f"{cfg}: OK (1 connection)\n")
    assert p.stderr.startswith(f"warning: {cfg}:21: connection[0].psk (connection 'branch1'): the psk is written "
                               "inline in this file, which is readable by group/others (mode 0644); chmod 600 it")


def test_check_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('dpd_delay = "30s"', 'dpd_dealy = "30s"')
                   .replace('local_ts = ["10.1.0.0/24"]', 'local_ts = ["10.1.0.0/33"]'))
    p = run("check-config", bad)
    assert p.returncode == 1 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert lines[0] == (f"{bad}:24: connection[0].dpd_dealy (connection 'branch1'): unknown key 'dpd_dealy' in "
                        f"connection[0] (did you mean 'dpd_delay'?)")
    assert lines[1].startswith(f"{bad}:31: connection[0].child[0].local_ts[0] (connection 'branch1', child 'net'): "
                               "'10.1.0.0/33' is "
                               f"not a valid CIDR subnet")
    assert len(lines) == 2


def test_check_config_warnings_and_missing_file(tmp_path):
    f = tmp_path / "empty.toml"
    f.write_text("[gateway]\n")
    p = run("check-config", f)
    assert p.returncode == 0
    assert p.stdout == f"{f}: OK (0 connections)\n"
    assert p.stderr == f"warning: {f}: no connections defined\n"
    p = run("check-config", tmp_path / "missing.toml")
    assert p.returncode == 1
    assert p.stderr == f"{tmp_path}/missing.toml: cannot read configuration: No such file or directory\n"


# -- run, demo, usage --------------------------------------------------------------------------

def test_run_with_bad_config_exits_1(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text("[gateway]\nlog_level = 'loud'\n")
    p = run("run", "-c", f)
    assert p.returncode == 1
    assert p.stderr == (f"vpn-gw: {f}:2: gateway.log_level: invalid value 'loud': must be one of "
                        f"debug, info, warning, error\n")


def test_run_without_daemon_module_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vpn_gw.daemon", None)  # import fails as if absent
    monkeypatch.setattr("vpn_gw.log.setup_logging", lambda level, fmt: None)
    assert cli.main(["run", "-c", str(EXAMPLE), "--log-format", "json"]) == 2
    assert capsys.readouterr().err == ("vpn-gw: the daemon is not available in this build "
                                       "(vpn_gw.daemon is missing)\n")


def test_demo_without_module_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vpn_gw.demo", None)
    assert cli.main(["demo"]) == 2
    assert capsys.readouterr().err == ("vpn-gw: the demo is not available in this build "
                                       "(vpn_gw.demo is missing)\n")


def test_demo_calls_run_with_args(monkeypatch):
    import types
    seen = []
    monkeypatch.setitem(sys.modules, "vpn_gw.demo", types.SimpleNamespace(run=lambda a: seen.append(a) or 3))
    assert cli.main(["demo"]) == 3
    assert seen[0].command == "demo"


def test_version_and_usage_errors():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.startswith("vpn-gw ") and p.stdout.strip() != "vpn-gw"
    p = run()
    assert p.returncode == 2 and "error:" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run("frobnicate")
    assert p.returncode == 2 and "invalid choice" in p.stderr
    if not os.path.exists("/etc/vpn-gw/gw.toml"):
        p = run("run")   # without -c: the default file, named in the error
        assert p.returncode == 1 and "/etc/vpn-gw/gw.toml: cannot read configuration" in p.stderr
    p = run("run", env={"CONFIGURATION_DIRECTORY": "/nonexistent-vpngw"})   # systemd's directory
    assert p.returncode == 1 and "/nonexistent-vpngw/gw.toml: cannot read" in p.stderr, p.stderr
    p = run("run", "-c", EXAMPLE, "--log-format", "xml")
    assert p.returncode == 2


# -- internal errors: one line, or a traceback with --debug (in-process) -----------------------

def test_internal_error_one_line_and_debug_traceback(monkeypatch, capsys):
    def boom(*a, **kw):
        raise RuntimeError("unexpected\nthing")
    monkeypatch.setattr(cli, "control_request", boom)
    monkeypatch.setattr(cli, "control_stream", boom)   # plain `status` streams
    assert cli.main(["status", "-s", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert err == ("vpn-gw: internal error: RuntimeError: unexpected thing "
                   "(run with --debug for details)\n")
    assert cli.main(["--debug", "status", "-s", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: unexpected" in err
    assert cli.main(["status", "--debug", "-s", "/nonexistent"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_os_errors_are_one_line_without_internal_error(monkeypatch, capsys):
    import types

    def run(config, args):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setitem(sys.modules, "vpn_gw.daemon", types.SimpleNamespace(run=run))
    monkeypatch.setattr("vpn_gw.log.setup_logging", lambda level, fmt: None)
    assert cli.main(["run", "-c", str(EXAMPLE)]) == 1
    assert capsys.readouterr().err == "vpn-gw: [Errno 13] Permission denied\n"


def test_run_calls_daemon_with_config_and_args(monkeypatch, tmp_path):
    import types
    seen = {}

    async def fake_run(config, args):
        seen["config"], seen["args"] = config, args
        return 0
    monkeypatch.setitem(sys.modules, "vpn_gw.daemon", types.SimpleNamespace(run=fake_run))
    monkeypatch.setattr("vpn_gw.log.setup_logging", lambda level, fmt: seen.update(log=(level, fmt)))
    assert cli.main(["run", "-c", str(EXAMPLE), "--log-level", "debug"]) == 0
    assert seen["config"].connection_names == ("branch1",)
    assert seen["args"].config == str(EXAMPLE)
    assert seen["log"] == ("debug", "console")


def test_render_summary_and_status_usage_errors(capsys):
    s = {"ike_sas": 5, "child_sas": 4, "by_state": {"ESTABLISHED": 4, "INIT_DONE": 1},
         "by_connection": {"ra": {"total": 4, "ESTABLISHED": 3, "INIT_DONE": 1},
                           "site": {"total": 1, "ESTABLISHED": 1}}}
    assert cli.render_summary(s).splitlines() == [
        "5 IKE SAs, 4 CHILD_SAs (4 ESTABLISHED, 1 INIT_DONE)",
        "  ra: 4 (3 ESTABLISHED, 1 INIT_DONE)", "  site: 1 (1 ESTABLISHED)"]
    assert cli.render_summary({"ike_sas": 0, "child_sas": 0, "by_state": {}, "by_connection": {}}) \
        == "0 IKE SAs, 0 CHILD_SAs"
    # no daemon is asked: these are usage errors (exit 2)
    assert cli.main(["status", "--summary", "--peer", "192.0.2.1", "-s", "/nonexistent"]) == 2
    assert "--summary counts every IKE SA" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["status", "--json", "--json-lines", "-s", "/nonexistent"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["status", "--id", "x", "-s", "/nonexistent"])
    assert e.value.code == 2


# -- help texts (issue 15, item 10) -------------------------------------------------------------

def _help(*argv) -> str:
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(buf.getvalue().split())


def test_every_subcommand_has_a_description():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert parser.description and len(parser.description) > 40, name


def test_timeout_help_is_per_command():
    assert "(default: --wait + 5)" in _help("up")
    for cmd in ("status", "down", "reload", "rekey"):
        text = _help(cmd)
        assert "how long to wait for the daemon's answer (default: 5)" in text, cmd
        assert "for up" not in text and "--wait" not in text, cmd


def test_check_config_help_and_warnings_exit_0(tmp_path, capsys):
    assert "Exit 0 when it is valid, also when there are warnings" in _help("check-config")
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[gateway]\nhalf_open_limit = 10\ncookie_threshold = 20\n")
    assert cli.main(["check-config", str(cfg)]) == 0
    cap = capsys.readouterr()
    assert "warning:" in cap.err and "OK" in cap.out


# -- vpn-gw nt-hash (issue 15, item 13) ---------------------------------------------------------

def test_nt_hash_from_stdin_any_directory(tmp_path):
    from ikev2.eap.users import nt_hash
    p = subprocess.run([sys.executable, "-m", "vpn_gw", "nt-hash"], input="alice-example-password\n",
                       capture_output=True, text=True, timeout=30, cwd=str(tmp_path),
                       env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1])})
    assert p.returncode == 0, p.stderr
    assert p.stdout == nt_hash("alice-example-password") + "\n" == "9aed63c219f0fa157410035e48b0a178\n"


def test_nt_hash_on_a_terminal_does_not_echo_and_writes_an_entry(tmp_path):
    """On a real pseudo-terminal: asked twice, never echoed, a [[user]] entry that loads."""
    import pty
    import select

    from ikev2.eap.users import UserDB, nt_hash
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.environ["PYTHONPATH"] = str(Path(cli.__file__).resolve().parents[1])
        os.execv(sys.executable, [sys.executable, "-m", "vpn_gw", "nt-hash", "--name", "carol@example.org"])
    out = b""
    try:
        deadline = __import__("time").monotonic() + 20
        sent = 0
        while __import__("time").monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            prompts = out.count(b"password: ") + out.count(b"again: ")
            if prompts > sent:
                os.write(fd, b"s3cret-Pass\n")
                sent += 1
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert sent == 2 and "s3cret-Pass" not in text, text
    entry = text[text.index("[[user]]"):].replace("\r\n", "\n")
    (tmp_path / "users.conf").write_text(entry)
    user = UserDB.load(str(tmp_path / "users.conf")).lookup("carol@example.org")
    assert user.nt_hash.hex() == nt_hash("s3cret-Pass")


def test_nt_hash_refuses_empty(capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli.main(["nt-hash"]) == 1
    assert "empty password" in capsys.readouterr().err


def test_client_default_socket_follows_systemd_runtime_directory(monkeypatch, capsys, tmp_path):
    """ExecReload=vpn-gw reload runs with $RUNTIME_DIRECTORY set: the client looks there."""
    monkeypatch.delenv("VPN_GW_CONTROL_SOCKET", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    assert cli.main(["reload"]) == 1
    assert str(tmp_path / "control.sock") in capsys.readouterr().err
