"""The ``vpn-gw`` command line.

    vpn-gw run [-c FILE] [--log-format console|json] [--log-level LEVEL]
    vpn-gw status [NAME] [--peer ADDR] [--id N] [--json | --json-lines | --summary] [-s SOCKET]
    vpn-gw up NAME | down NAME | reload            [-s SOCKET]
    vpn-gw check-config FILE
    vpn-gw probe HOST [--port 500,4500] [--timeout S] [--json]
    vpn-gw nt-hash [--name IDENTITY]
    vpn-gw import-swanctl FILE [-o OUT] [--eap-users FILE] [--swanctl-dir DIR]
    vpn-gw demo
    vpn-gw --version

Every failure ends with a non-zero exit status and a one-line reason on stderr; ``--debug``
shows the traceback instead. Exit statuses: 0 success, 1 failure (bad configuration, command
refused, daemon not running), 2 usage error or feature not available in this build, 130
interrupted; ``probe`` also uses 3 (UDP blocked on every port) and 4 (some ports blocked).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from vpn_gw.config import DEFAULT_CONTROL_SOCKET, ConfigError, load_config
from vpn_gw.control import ControlError, control_request, control_stream
from vpn_gw.durations import format_duration, format_size

__all__ = ["main", "build_parser", "render_status", "render_reload", "render_result"]

PROG = "vpn-gw"
SOCKET_ENV = "VPN_GW_CONTROL_SOCKET"
DEFAULT_CONFIG = "/etc/vpn-gw/gw.toml"


class CliError(Exception):
    """A failure to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("vpn-gw")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked (importlib.metadata costs
    ~10 ms, which every ``vpn-gw run`` paid at start-up)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{PROG} {_version()}")
        parser.exit()


# --------------------------------------------------------------------------------------------
# status rendering


def _g(d: dict, key: str, default: str = "?") -> Any:
    v = d.get(key)
    return default if v is None or v == "" else v


def _endpoint(addr: Any, port: Any) -> str:
    if addr in (None, ""):
        return "?"
    a = str(addr)
    if ":" in a:
        a = f"[{a}]"
    return f"{a}:{port}" if port not in (None, "") else a


def _when(ts: Any, now: float) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return ""
    return f"{format_duration(max(now - ts, 0))} ago"


def _algs(v: Any) -> str:
    if isinstance(v, dict):
        return "/".join(str(x) for x in v.values() if x not in (None, ""))
    if isinstance(v, (list, tuple)):
        return "/".join(map(str, v))
    return str(v) if v not in (None, "") else ""


def _ts(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if v else "-"
    return str(v) if v not in (None, "") else "?"


def _num(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def render_status(result: list[dict], now: float | None = None) -> str:
    """Human rendering of the ``status`` result (schema in docs/control.md), swanctl style.

    Tolerates missing fields (shown as ``?``) so an older/newer daemon never crashes the CLI.
    """
    now = time.time() if now is None else now
    if not result:
        return "no IKE SAs"
    out: list[str] = []
    for sa in result:
        if not isinstance(sa, dict):
            continue
        head = f"{_g(sa, 'name')}: {_g(sa, 'state')}"
        if sa.get("uid") is not None:
            head = f"{_g(sa, 'name')}: #{sa['uid']}, {_g(sa, 'state')}"
        if sa.get("initiator") is not None:
            head += ", initiator" if sa["initiator"] else ", responder"
        if sa.get("spi_i") or sa.get("spi_r"):
            head += f", SPIs {_g(sa, 'spi_i')}_i {_g(sa, 'spi_r')}_r"
        out.append(head)
        out.append(f"  local  {_endpoint(sa.get('local_addr'), sa.get('local_port')):<28}"
                   f" id {_g(sa, 'local_id')}")
        nat = " (behind NAT)" if sa.get("nat_remote") else ""
        out.append(f"  remote {_endpoint(sa.get('remote_addr'), sa.get('remote_port')):<28}"
                   f" id {_g(sa, 'remote_id')}{nat}")
        if sa.get("transport") == "tcp":
            out.append("  over TCP (RFC 9329)")
        if sa.get("eap_identity"):
            out.append(f"  EAP identity {sa['eap_identity']}")
        if sa.get("virtual_ips"):
            out.append(f"  virtual IP {', '.join(map(str, sa['virtual_ips']))}")
        algs = _algs(sa.get("algorithms"))
        if algs:
            out.append(f"  {algs}")
        times = []
        est = _when(sa.get("established"), now)
        if est:
            times.append(f"established {est}")
        if isinstance(sa.get("rekey_in"), (int, float)):
            times.append(f"rekeying in {format_duration(sa['rekey_in'])}")
        if times:
            out.append("  " + ", ".join(times))
        children = sa.get("children") or []
        for ch in children:
            if not isinstance(ch, dict):
                continue
            mode = f", {str(ch['mode']).upper()}" if ch.get("mode") else ""
            if ch.get("encap"):
                mode += ", UDP-encapsulated"
            out.append(f"  {_g(ch, 'name')}: {_g(ch, 'state')}{mode}, "
                       f"SPIs {_g(ch, 'spi_in')}_i {_g(ch, 'spi_out')}_o")
            calgs = _algs(ch.get("algorithms"))
            line2 = []
            if calgs:
                line2.append(calgs)
            est = _when(ch.get("established"), now)
            if est:
                line2.append(f"established {est}")
            if isinstance(ch.get("rekey_in"), (int, float)):
                line2.append(f"rekeying in {format_duration(ch['rekey_in'])}")
            if line2:
                out.append("    " + ", ".join(line2))
            for d in ("in", "out"):
                b, p = _num(ch.get(f"bytes_{d}")), _num(ch.get(f"packets_{d}"))
                bs = "?" if b is None else f"{b} bytes ({format_size(b)})" if b >= 1024 \
                    else f"{b} bytes"
                ps = "?" if p is None else f"{p} packets"
                out.append(f"    {d + ' ':<4}{bs}, {ps}")
            drops = ch.get("drops")
            if isinstance(drops, dict) and any(drops.values()):
                out.append("    drops " + ", ".join(f"{k} {v}" for k, v in drops.items() if v))
            out.append(f"    local  {_ts(ch.get('local_ts'))}")
            out.append(f"    remote {_ts(ch.get('remote_ts'))}")
        if not children:
            out.append("  no CHILD_SAs")
    return "\n".join(out)


def render_reload(result: Any) -> str:
    """One-line summary of the reload result (a ConfigDiff.to_dict())."""
    if not isinstance(result, dict):
        return "configuration reloaded" if result is None else str(result)
    parts = []
    for key in ("added", "removed", "changed"):
        names = result.get(key) or []
        if names:
            parts.append(f"{key} {', '.join(names)}")
    unchanged = result.get("unchanged") or []
    if unchanged:
        parts.append(f"{len(unchanged)} unchanged")
    gw = result.get("gateway_changed") or []
    if gw:
        parts.append(f"gateway settings changed: {', '.join(gw)}")
    return "configuration reloaded: " + ("; ".join(parts) if parts else "no changes")


# --------------------------------------------------------------------------------------------
# commands


def _socket(args) -> str:
    from vpn_gw.config.gateway import default_control_socket  # $RUNTIME_DIRECTORY (ExecReload)
    return args.socket or os.environ.get(SOCKET_ENV) or default_control_socket()


def _request(args, cmd: str, **kw) -> Any:
    t = args.timeout if args.timeout is not None else 5.0
    return control_request(_socket(args), cmd, timeout=t, **kw)


def _status_filters(args) -> dict[str, Any]:
    """Only the filters given, so an older daemon sees the request it knows."""
    f: dict[str, Any] = {}
    if args.name is not None:
        f["name"] = args.name
    if args.peer is not None:
        f["peer"] = args.peer
    if args.id is not None:
        f["id"] = args.id
    return f


def render_summary(result: Any) -> str:
    """The ``status --summary`` result: totals, then one line per connection."""
    if not isinstance(result, dict):
        raise CliError("unexpected status summary from vpn-gw (expected an object)")
    states = ", ".join(f"{n} {s}" for s, n in (result.get("by_state") or {}).items())
    out = [f"{_g(result, 'ike_sas')} IKE SAs, {_g(result, 'child_sas')} CHILD_SAs"
           + (f" ({states})" if states else "")]
    for conn, counts in (result.get("by_connection") or {}).items():
        if not isinstance(counts, dict):
            continue
        per = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "total")
        out.append(f"  {conn or '?'}: {_g(counts, 'total')} ({per})")
    return "\n".join(out)


def _status_items(args, filters: dict[str, Any]):
    """The IKE SAs as the daemon streams them (one at a time); a daemon that answers with one
    list (older, or a stand-in) works too."""
    t = args.timeout if args.timeout is not None else 5.0
    stream = control_stream(_socket(args), "status", timeout=t, **filters)
    while True:
        try:
            yield next(stream)
        except StopIteration as stop:
            final = stop.value
            break
    if isinstance(final, list):
        yield from final
    elif not isinstance(final, dict):
        raise CliError("unexpected status result from vpn-gw (expected a stream or a list)")


def cmd_status(args) -> int:
    filters = _status_filters(args)
    if args.summary:
        if filters:
            raise CliError("--summary counts every IKE SA: it takes no NAME, --peer or --id", 2)
        print(render_summary(_request(args, "status", summary=True)))
        return 0
    # always streamed from the daemon (it never builds one answer for all IKE SAs); printed
    # as each IKE SA arrives
    out = sys.stdout
    count = 0
    if args.json:                       # one JSON list, as before streaming existed
        out.write("[")
        for item in _status_items(args, filters):
            body = json.dumps(item, indent=2).replace("\n", "\n  ")
            out.write(("\n  " if count == 0 else ",\n  ") + body)
            count += 1
        out.write("\n]\n" if count else "]\n")
        return 0
    for item in _status_items(args, filters):
        count += 1
        if args.json_lines:
            out.write(json.dumps(item, separators=(",", ":")) + "\n")
        else:
            out.write(render_status([item]) + "\n")
    if count == 0 and not args.json_lines:
        print(render_status([]))
    return 0


def render_result(result: Any, name: str, fallback: str) -> str:
    """One line for the result of up/down (schemas in docs/control.md)."""
    if result is None or result == "":
        return f"{name}: {fallback}"
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        if isinstance(result.get("message"), str):
            return result["message"]
        conn = result.get("connection", name)
        if "state" in result:
            return f"{conn}: {result['state']}"
        if "terminated" in result:
            n = result["terminated"]
            return f"{conn}: {n} IKE SA{'' if n == 1 else 's'} terminated"
    return json.dumps(result)


def cmd_up(args) -> int:
    # The daemon waits up to args.wait seconds for the IKE SA; the socket waits a little longer.
    t = args.timeout if args.timeout is not None else args.wait + 5.0
    result = control_request(_socket(args), "up", timeout=t,
                             args={"name": args.name, "timeout": args.wait})
    print(render_result(result, args.name, "initiating"))
    return 0


def cmd_down(args) -> int:
    print(render_result(_request(args, "down", name=args.name), args.name, "closing"))
    return 0


def cmd_rekey(args) -> int:
    res = _request(args, "rekey", name=args.name, child=args.child, ike=args.ike)
    what = "IKE SA" if args.ike else (f"CHILD_SA '{args.child}'" if args.child else "CHILD_SAs")
    print(f"{args.name}: rekeying {what} ({res.get('rekeying', 0)} started)")
    return 0


def cmd_reload(args) -> int:
    print(render_reload(_request(args, "reload")))
    return 0


def _ports(text: str) -> list[int]:
    ports: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise argparse.ArgumentTypeError(f"invalid port list {text!r} (e.g. 500,4500)")
        if int(part) not in ports:
            ports.append(int(part))
    return ports


def _probe_timeout(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        t = -1.0
    if not 0 < t <= 300:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r} (seconds, 0 < S <= 300)")
    return t


def render_probe(host: str, results: list, timeout: float) -> str:
    from vpn_gw.probe import verdict
    lines = []
    for r in results:
        if r.reachable:
            state = f"reachable, rtt {r.rtt * 1000:.2f} ms"
        else:
            state = f"no reply within {timeout:g} s" + (f" ({r.icmp_error})" if r.icmp_error else "")
        lines.append(f"{host} udp/{r.port}: {state}: {r.verdict}")
    lines.append(f"verdict: {verdict(results)[1]}")
    return "\n".join(lines)


def cmd_probe(args) -> int:
    from vpn_gw.probe import probe, verdict
    try:
        results = asyncio.run(probe(args.host, args.port, args.timeout))
    except (OSError, UnicodeError) as e:
        raise CliError(f"cannot probe {args.host}: {' '.join(str(e).split())}") from None
    code, summary = verdict(results)
    if args.json:
        print(json.dumps({"host": args.host, "address": results[0].address if results else None,
                          "timeout": args.timeout, "ports": [r.to_dict() for r in results],
                          "verdict": {0: "ok", 3: "blocked", 4: "partial", 5: "no-gateway"}[code],
                          "summary": summary,
                          "exit_status": code}, indent=2))
    else:
        print(render_probe(args.host, results, args.timeout))
    return code


def cmd_check_config(args) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        for p in e.problems:
            print(f"{p}", file=sys.stderr)
        return 1
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    n = len(cfg.connections)
    print(f"{args.file}: OK ({n} connection{'' if n == 1 else 's'})")
    return 0


def cmd_import_swanctl(args) -> int:
    from vpn_gw.swanctl_import import SwanctlSyntaxError, convert_file
    from vpn_gw.swanctl_import.convert import ConversionError
    users = os.path.abspath(args.eap_users) if args.eap_users else None
    try:
        conv = convert_file(args.file, swanctl_dir=args.swanctl_dir, eap_users=users)
    except (SwanctlSyntaxError, ConversionError) as e:
        raise CliError(f"cannot convert {args.file}: {e}") from None
    if conv.eap_users is not None and users is not None:
        fd = os.open(users, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(conv.eap_users)
        os.chmod(users, 0o600)
    if args.output:  # it may hold PSKs and EAP passwords: owner only, as vpn-gw wants it
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(conv.toml)
        os.chmod(args.output, 0o600)
    else:
        sys.stdout.write(conv.toml)
    if conv.skipped:
        print(f"not converted ({len(conv.skipped)}):", file=sys.stderr)
        for line in conv.skipped:
            print(f"  {line}", file=sys.stderr)
    return 0


def cmd_nt_hash(args) -> int:
    from ikev2.eap.users import nt_hash
    if sys.stdin.isatty():
        import getpass
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            raise CliError("the two passwords differ")
    else:
        pw = sys.stdin.readline().rstrip("\r\n")  # one line; e.g. from a password manager
    if not pw:
        raise CliError("empty password")
    h = nt_hash(pw)
    if args.name:
        print(f'[[user]]\nname = {json.dumps(args.name)}\nnt_hash = "{h}"\nmethods = ["mschapv2"]')
    else:
        print(h)
    return 0


def _call_maybe_async(fn, *a) -> Any:
    result = fn(*a)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


def _exit_code(result: Any) -> int:
    if isinstance(result, bool):
        return 0 if result else 1
    return result if isinstance(result, int) else 0


def _import_optional(module: str, what: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise CliError(f"{what} is not available in this build ({module} is missing)",
                           code=2) from None
        raise


def default_config() -> str:
    """gw.toml in systemd's ConfigurationDirectory= if set, else /etc/vpn-gw/gw.toml."""
    d = os.environ.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    return os.path.join(d, "gw.toml") if d else DEFAULT_CONFIG


def cmd_run(args) -> int:
    cfg = load_config(args.config or default_config())
    from vpn_gw.log import setup_logging
    level = args.log_level or cfg.log_level
    fmt = args.log_format or cfg.log_format
    setup_logging(level, fmt)
    import structlog
    logger = structlog.get_logger("vpn_gw")
    for w in cfg.warnings:
        logger.warning("configuration warning", problem=str(w))
    daemon = _import_optional("vpn_gw.daemon", "the daemon")
    return _exit_code(_call_maybe_async(daemon.run, cfg, args))


def cmd_demo(args) -> int:
    demo = _import_optional("vpn_gw.demo", "the demo")
    entry = getattr(demo, "run", None) or getattr(demo, "main", None)
    if entry is None:
        raise CliError("the demo is not available in this build (vpn_gw.demo has no run())",
                       code=2)
    return _exit_code(_call_maybe_async(entry, args))


# --------------------------------------------------------------------------------------------
# parser and entry point


class _Formatter(argparse.HelpFormatter):
    """Wraps help text without breaking words at hyphens ("vpn-gw", "check-config")."""

    def _split_lines(self, text, width):
        import textwrap
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        import textwrap
        return "\n\n".join(textwrap.fill(" ".join(par.split()), width, initial_indent=indent,
                                          subsequent_indent=indent, break_on_hyphens=False)
                            for par in text.split("\n\n"))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*a, **kw)

    def error(self, message: str):  # one line + usage hint, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors")
    sock = _Parser(add_help=False)
    sock.add_argument("-s", "--socket", metavar="SOCKET",
                      help=f"control socket (default: ${SOCKET_ENV} or {DEFAULT_CONTROL_SOCKET})")

    def timeout(parser, default: str = "5") -> None:
        parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                            help=f"how long to wait for the daemon's answer (default: {default})")

    p = _Parser(prog=PROG, description="IKEv2/IPsec VPN gateway", parents=[common],
                epilog="exit status: 0 success, 1 failure, 2 usage error; see each command's --help")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser("run", parents=[common], help="run the gateway daemon",
                       description="Run the gateway in the foreground until SIGTERM/SIGINT (SIGHUP "
                                   "reloads). Under systemd it reports readiness ($NOTIFY_SOCKET); "
                                   "see docs/deploy.md. Exit 1 when it cannot start (the reason is "
                                   "printed).")
    r.add_argument("-c", "--config", metavar="FILE",
                   help="configuration file (default: $CONFIGURATION_DIRECTORY/gw.toml under systemd, "
                        f"else {DEFAULT_CONFIG})")
    r.add_argument("--log-format", choices=("console", "json"),
                   help="log format (default: gateway.log_format, else console)")
    r.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="log level (default: gateway.log_level, else info)")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", parents=[common, sock], help="show IKE and CHILD SAs",
                       description="Show the running daemon's IKE SAs and their Child SAs: "
                                   "endpoints, identities, algorithms, selectors, counters; "
                                   "filtered by connection, peer or number.")
    timeout(s)
    s.add_argument("name", nargs="?", help="only this connection's IKE SAs")
    s.add_argument("--peer", metavar="ADDR", help="only IKE SAs with the peer at this IP address")
    s.add_argument("--id", metavar="N", type=int, help="only the IKE SA number N (#N)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the raw status JSON (one list)")
    fmt.add_argument("--json-lines", action="store_true",
                     help="print one IKE SA per line as JSON, streamed as the daemon sends them")
    fmt.add_argument("--summary", action="store_true",
                     help="counts by state and by connection (all IKE SAs)")
    s.set_defaults(func=cmd_status)

    u = sub.add_parser("up", parents=[common, sock], help="initiate a connection",
                       description="Initiate connection NAME and wait until its IKE SA and Child "
                                   "SAs are up. Exit 0 when established, 1 when the IKE SA fails or "
                                   "the peer refuses a Child SA (the reason is printed).")
    timeout(u, "--wait + 5")
    u.add_argument("name", help="connection name")
    u.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long the daemon waits for the IKE SA to come up (default: 30)")
    u.set_defaults(func=cmd_up)

    d = sub.add_parser("down", parents=[common, sock], help="close a connection's SAs",
                       description="Delete connection NAME's IKE SAs (with DELETE to the peer); it "
                                   "is not restarted automatically until 'up' or a reload.")
    timeout(d)
    d.add_argument("name", help="connection name")
    d.set_defaults(func=cmd_down)

    rk = sub.add_parser("rekey", parents=[common, sock], help="rekey a connection's CHILD_SAs or IKE SA",
                        description="Start rekeying connection NAME's Child SAs (all, or --child) or "
                                    "its IKE SA (--ike) now; returns once the rekeying has started.")
    timeout(rk)
    rk.add_argument("name", help="connection name")
    rk_what = rk.add_mutually_exclusive_group()
    rk_what.add_argument("--child", metavar="CHILD", help="only this CHILD_SA (default: all)")
    rk_what.add_argument("--ike", action="store_true", help="rekey the IKE SA instead")
    rk.set_defaults(func=cmd_rekey)

    rl = sub.add_parser("reload", parents=[common, sock],
                        help="re-read the daemon's configuration file and apply the changes",
                        description="Make the daemon re-read its configuration file: added "
                                    "connections start, removed ones are closed, unchanged ones keep "
                                    "their SAs. An invalid file is refused (exit 1) and the running "
                                    "configuration kept.")
    timeout(rl)
    rl.set_defaults(func=cmd_reload)

    c = sub.add_parser("check-config", parents=[common], help="validate a configuration file",
                       description="Load a configuration file as the daemon would and report every "
                                   "problem (file:line, key, what to write instead). Exit 0 when it "
                                   "is valid, also when there are warnings (printed to stderr); exit "
                                   "1 on errors.")
    c.add_argument("file", help="configuration file")
    c.set_defaults(func=cmd_check_config)

    pr = sub.add_parser("probe", parents=[common],
                        help="check whether UDP 500/4500 reach a vpn-gw gateway",
                        description="Ask a vpn-gw gateway for an echo on UDP 500 and 4500 and tell "
                                    "whether UDP gets through (else use TCP, docs/tcp-encapsulation.md). "
                                    "Only works against a vpn-gw: strongSwan and other IKE gateways do "
                                    "not answer probes, which looks like \"no reply\" (docs/probe.md).",
                        epilog="exit status: 0 every port answered (UDP ok); 3 no reply on any port "
                               "(UDP blocked on the way, or no vpn-gw at this address); 4 some ports "
                               "answered, some did not (use TCP); 5 every port refused with ICMP port "
                               "unreachable (no gateway listens there); 1 the probe could not run; "
                               "2 usage error")
    pr.add_argument("host", help="gateway address or name")
    pr.add_argument("--port", type=_ports, default=[500, 4500], metavar="PORTS",
                    help="comma-separated UDP ports (default: 500,4500; 4500 is probed behind the "
                         "non-ESP marker)")
    pr.add_argument("--timeout", type=_probe_timeout, default=3.0, metavar="SECONDS",
                    help="how long to wait for the replies, all ports together (default: 3)")
    pr.add_argument("--json", action="store_true", help="print the result as JSON")
    pr.set_defaults(func=cmd_probe)

    im = sub.add_parser("import-swanctl", parents=[common],
                        help="convert a strongSwan swanctl.conf to a vpn-gw configuration",
                        description="Read a strongSwan swanctl.conf (connections, children, proposals, "
                                    "secrets, pools; includes followed) and print the equivalent vpn-gw "
                                    "TOML. What cannot be converted is listed on stderr; check the result "
                                    "with 'vpn-gw check-config'. Exit 0 when converted, 1 when the file "
                                    "cannot be read or holds no connection.")
    im.add_argument("file", help="swanctl.conf")
    im.add_argument("-o", "--output", metavar="FILE", help="write the TOML here (default: stdout)")
    im.add_argument("--eap-users", metavar="FILE",
                    help="write the EAP users of eap-* secrets here (NT hashes, mode 0600) and name it "
                         "in users_file")
    im.add_argument("--swanctl-dir", metavar="DIR",
                    help="where x509/, x509ca/, private/ are (default: the directory of FILE)")
    im.set_defaults(func=cmd_import_swanctl)

    nh = sub.add_parser("nt-hash", parents=[common],
                        help="print the NT hash of a password for an EAP users file",
                        description="Read a password (from the terminal without echo, asked twice; or "
                                    "one line from stdin) and print its NT hash, the nt_hash of an "
                                    "EAP-MSCHAPv2 user in a users file (docs/eap.md). The password is "
                                    "never printed.")
    nh.add_argument("--name", metavar="IDENTITY",
                    help="print a whole [[user]] entry for this EAP identity")
    nh.set_defaults(func=cmd_nt_hash)

    from vpn_gw.pools.admin import add_parser as add_pool_parser
    add_pool_parser(sub, common)

    dm = sub.add_parser("demo", parents=[common], help="run the self-contained demo",
                        description="Build network namespaces with two branch gateways, bring a "
                                    "tunnel up, ping through it and clean up (root needed).")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    if args.func is cmd_run:
        # The daemon's start-up imports and allocates only long-lived objects: cyclic collections
        # there are ~6% of its CPU on the way to the first tunnel (restart recovery,
        # docs/architecture.md). The gateway enables collection again once it is up.
        gc.disable()
    else:
        gc.enable()  # vpn_gw.__main__ disabled it before knowing the command
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, ControlError, CliError) as e:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: {e}", file=sys.stderr)
        return getattr(e, "code", 1)
    except BrokenPipeError:  # e.g. `vpn-gw status | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:  # pragma: no cover
            pass
        return 1
    except OSError as e:  # the environment: ports in use, permissions, missing files
        if debug:
            traceback.print_exc()
        print(f"{PROG}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except Exception as e:
        if debug:
            traceback.print_exc()
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        print(f"{PROG}: internal error: {msg} (run with --debug for details)", file=sys.stderr)
        return 1
    finally:
        gc.enable()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
