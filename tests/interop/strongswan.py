"""Test harness: strongSwan (charon 5.9.x, kernel-libipsec data plane) in network namespaces.

Facts this module relies on (see /work/shared/interop/strongswan-peer.md):

* one charon per namespace, each with a private tmpfs on /run (the PID file path
  /var/run/charon.pid is compiled in), its own ``STRONGSWAN_CONF``, VICI socket in the
  instance directory (outside /run so that swanctl in the root namespace reaches it);
* plugin order matters: ``kernel-libipsec`` must come before ``kernel-netlink`` (the
  first ipsec backend wins; XFRM ESP does not exist on the test kernel), and
  ``kernel-netlink`` cannot be dropped;
* ESP is always UDP-encapsulated on 4500 (kernel-libipsec), both ends fake NAT-D;
* strongswan.conf/swanctl.conf have no line continuation and want one setting per line.

Main pieces (all bounded in time, all cleaned up by context managers):

* :func:`require_strongswan` / :func:`strongswan_version` - presence checks.
* :func:`render_conf` - nested dict -> strongswan.conf / swanctl.conf syntax.
* :class:`Pki` - ``pki`` wrapper: ECDSA/RSA CAs, intermediates, end-entity certs with SANs.
* :class:`Charon` - one charon instance in a :class:`netns.Netns` (start/stop by PID,
  swanctl commands, list-sas via the ``vici`` package or parsed ``swanctl --pretty``).
* :class:`Topology` / :func:`build_topology` - site -- router -- gw namespaces
  (documentation ranges outside, 10.x / fd00:: only inside).
* :func:`strongswan_pair` - topology + two configured, started charons.
* :class:`Capture` - tcpdump on a link (``-s 0 -Z root -U -w``).
* Log parsers: :func:`parse_log`, :func:`parse_ike_keys`, :func:`parse_child_keys`,
  :func:`parse_summaries`, :func:`parse_established`.

Our gateway against strongSwan (strongSwan as the responder in ``topo.gw``)::

    with NetnsGroup("mytest") as grp:               # deletes namespaces + processes
        topo = build_topology(grp)
        gw = Charon(topo.gw, workdir / "gw", "gw", log_levels=KEY_LOG_LEVELS)
        gw.write_swanctl_conf(psk_site_to_site(topo, psk)[1])
        with gw:                                    # start() ... stop()
            gw.load_all()
            ours = topo.site.popen([...])           # our gateway in the site namespace
            sa, child = gw.wait_child("net", timeout=10)
            assert topo.host_a.ping(topo.host_b_ip)
            keys = parse_ike_keys(parse_log(gw.log_text()))
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

_TESTS_DIR = Path(__file__).resolve().parent.parent
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))

from netns import Capture, Netns, NetnsGroup, kill_pid, pid_alive, wait_until  # noqa: E402,F401  (tests/netns.py)

try:  # structured list-sas; falls back to parsing `swanctl --list-sas --pretty`
    import vici as _vici  # type: ignore
except Exception:  # pragma: no cover - depends on the venv
    _vici = None

__all__ = [
    "CHARON", "SWANCTL", "PKI", "DEFAULT_PLUGINS",
    "StrongSwanMissing", "SwanctlError", "CharonError",
    "require_strongswan", "missing_strongswan_parts", "strongswan_version", "package_version",
    "render_conf", "KEY_LOG_LEVELS", "DEFAULT_LOG_LEVELS",
    "Pki", "Cert", "Charon", "Topology", "build_topology", "strongswan_pair", "Pair",
    "psk_site_to_site", "quote", "Capture",
    "LogRecord", "parse_log", "parse_ike_keys", "parse_child_keys", "parse_summaries",
    "parse_established", "parse_swanctl_pretty",
]

CHARON = os.environ.get("STRONGSWAN_CHARON", "/usr/lib/ipsec/charon")
SWANCTL = shutil.which("swanctl") or "/usr/sbin/swanctl"
PKI = shutil.which("pki") or "/usr/bin/pki"
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

# Order matters (kernel-libipsec before kernel-netlink), one line only.
DEFAULT_PLUGINS = (
    "random nonce openssl pem pkcs1 pkcs8 x509 pubkey revocation constraints kdf "
    "kernel-libipsec kernel-netlink socket-default vici eap-identity eap-md5 "
    "eap-mschapv2 eap-tls attr resolve"
)
TOOL_PLUGINS = "pem pkcs1 pkcs8 x509 pubkey openssl random nonce revocation constraints"

# Levels that make charon log every IKE/CHILD key and the SPIs (MGR 2 logs checkins).
KEY_LOG_LEVELS = {"default": 1, "ike": 4, "chd": 4, "mgr": 2, "cfg": 2, "knl": 2, "enc": 1, "net": 1}
DEFAULT_LOG_LEVELS = {"default": 1, "ike": 2, "chd": 2, "mgr": 2, "cfg": 1, "knl": 2, "enc": 1, "net": 1}

CRED_DIRS = (
    "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey",
    "private", "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12", "conf.d",
)


class StrongSwanMissing(RuntimeError):
    """strongSwan (or a needed part of it) is not installed."""


class CharonError(RuntimeError):
    """charon failed to start / stop / died."""


class SwanctlError(RuntimeError):
    """A swanctl command failed."""

    def __init__(self, msg: str, result: subprocess.CompletedProcess | None = None):
        super().__init__(msg)
        self.result = result


# --------------------------------------------------------------------------- checks

REQUIRED_PLUGINS = ("kernel-libipsec", "kernel-netlink", "socket-default", "vici", "openssl")
INSTALL_HINT = (
    "apt-get install -y --no-install-recommends strongswan-charon strongswan-swanctl "
    "strongswan-pki libstrongswan-standard-plugins libcharon-extra-plugins "
    "libcharon-extauth-plugins tcpdump iputils-ping"
)


def missing_strongswan_parts(plugins: Iterable[str] = REQUIRED_PLUGINS) -> list[str]:
    """Human-readable list of what is missing (empty when everything is there)."""
    missing = []
    for path in (CHARON, SWANCTL, PKI):
        if not Path(path).exists():
            missing.append(path)
    for p in plugins:
        if not (PLUGIN_DIR / f"libstrongswan-{p}.so").exists():
            missing.append(f"plugin {p} ({PLUGIN_DIR}/libstrongswan-{p}.so)")
    for tool in ("ip", "tcpdump", "ping", "unshare"):
        if not shutil.which(tool):
            missing.append(tool)
    return missing


def require_strongswan(plugins: Iterable[str] = REQUIRED_PLUGINS) -> None:
    """Raise StrongSwanMissing (clear message, install hint) unless usable; needs root."""
    missing = missing_strongswan_parts(plugins)
    if missing:
        raise StrongSwanMissing(
            "strongSwan interop peer not available; missing: " + ", ".join(missing)
            + f"\ninstall with: {INSTALL_HINT}"
        )
    if os.geteuid() != 0:
        raise StrongSwanMissing("strongSwan interop tests need root (network namespaces)")


def strongswan_version() -> str:
    """Upstream version of the installed strongSwan, e.g. ``5.9.8`` (from ``pki --version``)."""
    res = subprocess.run([PKI, "--version"], capture_output=True, text=True, timeout=10,
                         env=_tool_env(None))
    m = re.search(r"strongSwan (\d+\.\d+\.\d+\S*)", res.stdout + res.stderr)
    if not m:
        raise StrongSwanMissing(f"cannot determine strongSwan version: {res.stdout!r}")
    return m.group(1)


def package_version(pkg: str = "strongswan-charon") -> str | None:
    """Distribution package version (``dpkg-query``), or None."""
    if not shutil.which("dpkg-query"):
        return None
    res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                         text=True, timeout=10)
    return res.stdout.strip() or None


def _tool_env(conf: Path | None) -> dict[str, str]:
    """Environment for swanctl/pki: ``STRONGSWAN_CONF=conf`` (its swanctl/pki ``load``
    lines keep the tools from probing plugins that are not installed)."""
    env = dict(os.environ)
    if conf is not None:
        env["STRONGSWAN_CONF"] = str(conf)
    return env


# --------------------------------------------------------------------------- config syntax


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v)
    s = str(v)
    if "\n" in s:
        raise ValueError(f"newline in config value {s!r}")
    return s


def render_conf(data: Mapping[str, Any], indent: int = 0) -> str:
    """Render nested mappings as strongswan.conf/swanctl.conf text (one setting per line).

    Values: str/int -> as is, bool -> yes/no, list -> comma separated, Mapping -> section.
    Keys whose value is None are skipped. Strings needing quotes must carry them
    (e.g. ``'"my secret"'``); use ``0x``/``0s`` encodings for binary secrets.
    """
    pad = "  " * indent
    out = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            out.append(f"{pad}{key} {{")
            body = render_conf(value, indent + 1)
            if body:
                out.append(body.rstrip("\n"))
            out.append(f"{pad}}}")
        else:
            out.append(f"{pad}{key} = {_fmt_value(value)}")
    return "\n".join(out) + ("\n" if out else "")


# --------------------------------------------------------------------------- PKI


@dataclasses.dataclass
class Cert:
    """A certificate and its private key, both PEM files."""

    name: str
    dn: str
    kind: str  # "ecdsa" | "rsa" | "ed25519"
    key_path: Path
    cert_path: Path
    sans: tuple[str, ...] = ()
    issuer: Cert | None = None
    is_ca: bool = False

    @property
    def cert_pem(self) -> str:
        return self.cert_path.read_text()

    @property
    def key_pem(self) -> str:
        return self.key_path.read_text()

    def chain(self) -> list[Cert]:
        """This cert followed by its issuers up to the root."""
        out, c = [], self
        while c is not None:
            out.append(c)
            c = c.issuer
        return out


class Pki:
    """Thin wrapper around strongSwan's ``pki`` tool (PEM everywhere, bounded calls).

    >>> pki = Pki(tmpdir)
    >>> ca = pki.ca("ca", "C=XX, O=Test, CN=Test Root CA")
    >>> im = pki.intermediate("im", "C=XX, O=Test, CN=Test Intermediate", ca)
    >>> gw = pki.end_entity("gw", "C=XX, O=Test, CN=gw.example.org", im, sans=["gw.example.org"])
    """

    def __init__(self, workdir: Path | str, lifetime_days: int = 30, timeout: float = 60.0):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lifetime = lifetime_days
        self.timeout = timeout
        self.conf = self.dir / "pki-strongswan.conf"
        self.conf.write_text(f"pki {{\n  load = {TOOL_PLUGINS}\n}}\n")

    def _pki(self, *args: str, input: bytes | None = None) -> bytes:
        try:
            res = subprocess.run([PKI, *args], input=input, capture_output=True,
                                 timeout=self.timeout, env=_tool_env(self.conf))
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"pki {args[0]} timed out") from exc
        if res.returncode != 0 or not res.stdout:
            raise RuntimeError(f"pki {' '.join(args)} failed: {res.stderr.decode(errors='replace')}")
        return res.stdout

    def key(self, name: str, kind: str = "ecdsa", size: int | None = None) -> Path:
        """Generate a private key (ecdsa 256/384/521, rsa 2048/3072/4096, ed25519)."""
        args = ["--gen", "--type", kind, "--outform", "pem"]
        if size is None:
            size = {"ecdsa": 256, "rsa": 3072}.get(kind)
        if size is not None and kind != "ed25519":
            args += ["--size", str(size)]
        path = self.dir / f"{name}.key.pem"
        path.write_bytes(self._pki(*args))
        path.chmod(0o600)
        return path

    def ca(self, name: str, dn: str, kind: str = "ecdsa", size: int | None = None) -> Cert:
        """Self-signed root CA."""
        key = self.key(name, kind, size)
        pem = self._pki("--self", "--ca", "--lifetime", str(self.lifetime), "--in", str(key),
                        "--type", "priv", "--dn", dn, "--outform", "pem")
        path = self.dir / f"{name}.cert.pem"
        path.write_bytes(pem)
        return Cert(name, dn, kind, key, path, is_ca=True)

    def _issue(self, name: str, dn: str, issuer: Cert, kind: str, size: int | None,
               extra: Sequence[str], sans: Sequence[str], is_ca: bool) -> Cert:
        key = self.key(name, kind, size)
        args = ["--issue", "--lifetime", str(self.lifetime), "--cacert", str(issuer.cert_path),
                "--cakey", str(issuer.key_path), "--in", str(key), "--type", "priv",
                "--dn", dn, "--outform", "pem", *extra]
        for san in sans:
            args += ["--san", san]
        pem = self._pki(*args)
        path = self.dir / f"{name}.cert.pem"
        path.write_bytes(pem)
        return Cert(name, dn, kind, key, path, tuple(sans), issuer, is_ca)

    def intermediate(self, name: str, dn: str, issuer: Cert, kind: str = "ecdsa",
                     size: int | None = None, pathlen: int = 0) -> Cert:
        """Intermediate CA signed by ``issuer``."""
        return self._issue(name, dn, issuer, kind, size,
                           ["--ca", "--pathlen", str(pathlen)], (), True)

    def end_entity(self, name: str, dn: str, issuer: Cert, sans: Sequence[str] = (),
                   kind: str = "ecdsa", size: int | None = None,
                   flags: Sequence[str] = ("serverAuth", "clientAuth", "ikeIntermediate")) -> Cert:
        """End-entity certificate with subjectAltNames (DNS names, emails, IPs)."""
        extra = []
        for f in flags:
            extra += ["--flag", f]
        return self._issue(name, dn, issuer, kind, size, extra, sans, False)


# --------------------------------------------------------------------------- swanctl pretty parser


def parse_swanctl_pretty(text: str, event: str = "list-sa event") -> list[dict]:
    """Parse ``swanctl --<cmd> --pretty`` output into the dicts VICI would give.

    Returns the bodies of all top-level sections named ``event``.
    """
    root: dict[str, Any] = {}
    stack: list[Any] = [root]
    events: list[dict] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        cur = stack[-1]
        if isinstance(cur, list):
            if line == "]":
                stack.pop()
            else:
                cur.append(line)
            continue
        if line == "}":
            stack.pop()
            continue
        if line.endswith("{"):
            name = line[:-1].strip()
            new: dict[str, Any] = {}
            if len(stack) == 1:
                if name == event:
                    events.append(new)
            else:
                cur[name] = new
            stack.append(new)
            continue
        if " = " in line or line.endswith(" ="):
            key, _, value = line.partition(" =")
            value = value.strip()
            if value == "[":
                lst: list[str] = []
                cur[key] = lst
                stack.append(lst)
            else:
                cur[key] = value
            continue
    return events


def _decode(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    if isinstance(obj, Mapping):
        return {(k.decode() if isinstance(k, bytes) else k): _decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_decode(x) for x in obj]
    return obj


def _normalize_sas(events: Iterable[Mapping]) -> list[dict]:
    """[{conn: {...}}] -> [{"name": conn, ..., "child-sas": [{"key": k, ...}]}]."""
    out = []
    for ev in events:
        for name, sa in _decode(ev).items():
            sa = dict(sa)
            sa["name"] = name
            children = sa.get("child-sas") or {}
            sa["child-sas"] = [dict(c, key=k) for k, c in children.items()]
            out.append(sa)
    return out


# --------------------------------------------------------------------------- Charon


class Charon:
    """One charon daemon inside a network namespace.

    ``workdir`` becomes the instance directory: strongswan.conf, charon.log, charon.vici,
    resolv.conf, stdout, and ``swanctl/`` (swanctl.conf + credential directories).
    """

    def __init__(
        self,
        ns: Netns,
        workdir: Path | str,
        name: str = "charon",
        *,
        log_levels: Mapping[str, int] | None = None,
        retransmit_timeout: float = 1.0,
        retransmit_tries: int = 2,
        fragment_size: int | None = None,
        charon_settings: Mapping[str, Any] | None = None,
        plugins: str = DEFAULT_PLUGINS,
        extra_conf: str = "",
        charon_bin: str | None = None,
        swanctl_bin: str | None = None,
        lookup_resolv_conf: Path | str | None = None,
    ):
        self.ns = ns
        # the resolv.conf charon's own look-ups use (FQDN remote_addrs): bind-mounted over
        # /etc/resolv.conf in charon's private mount namespace (the resolve plugin's file, where
        # DNS servers received by CP go, is another file: resolv_path)
        self.lookup_resolv_conf = Path(lookup_resolv_conf).resolve() if lookup_resolv_conf else None
        # Another build (strongSwan 6 in /opt/strongswan6, tests/interop/strongswan6.py).
        self.charon_bin = charon_bin or CHARON
        self.swanctl_bin = swanctl_bin or SWANCTL
        self.name = name
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.swanctl_dir = self.dir / "swanctl"
        for sub in CRED_DIRS:
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path = self.dir / "strongswan.conf"
        self.swanctl_conf_path = self.swanctl_dir / "swanctl.conf"
        self.log_path = self.dir / "charon.log"
        self.stdout_path = self.dir / "stdout.log"
        self.vici_path = self.dir / "charon.vici"
        self.resolv_path = self.dir / "resolv.conf"
        if len(str(self.vici_path)) > 100:
            raise ValueError(f"VICI socket path too long for AF_UNIX: {self.vici_path}")
        self.log_levels = dict(log_levels or DEFAULT_LOG_LEVELS)
        self.retransmit_timeout = retransmit_timeout
        self.retransmit_tries = retransmit_tries
        self.fragment_size = fragment_size
        self.charon_settings = dict(charon_settings or {})
        self.plugins = plugins
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None
        if not self.swanctl_conf_path.exists():
            self.swanctl_conf_path.write_text("")
        self.write_strongswan_conf()

    # ---- configuration
    @property
    def vici_uri(self) -> str:
        return f"unix://{self.vici_path}"

    def strongswan_conf(self) -> str:
        levels = {"default": 1, **self.log_levels}
        charon: dict[str, Any] = {
            "load": self.plugins,
            "filelog": {
                "main": {
                    "path": str(self.log_path),
                    "time_format": "%H:%M:%S",
                    "time_add_ms": True,
                    "ike_name": True,
                    "append": False,
                    "flush_line": True,
                    **levels,
                }
            },
            "syslog": {"daemon": {"default": -1}},
            "retransmit_timeout": self.retransmit_timeout,
            "retransmit_tries": self.retransmit_tries,
            "retransmit_base": 1.4,
            "fragment_size": self.fragment_size,
            "plugins": {
                "vici": {"socket": self.vici_uri},
                "resolve": {"file": str(self.resolv_path)},
            },
        }
        _deep_update(charon, self.charon_settings)
        conf = {
            "charon": charon,
            "swanctl": {"load": TOOL_PLUGINS},
            "pki": {"load": TOOL_PLUGINS},
        }
        return render_conf(conf) + (self.extra_conf + "\n" if self.extra_conf else "")

    def write_strongswan_conf(self) -> None:
        self.conf_path.write_text(self.strongswan_conf())

    def write_swanctl_conf(self, conf: str | Mapping[str, Any]) -> None:
        """Write swanctl.conf (text or a mapping for :func:`render_conf`)."""
        text = conf if isinstance(conf, str) else render_conf(conf)
        self.swanctl_conf_path.write_text(text)
        self.swanctl_conf_path.chmod(0o600)

    def add_cert(self, cert: Cert, with_key: bool = True) -> str:
        """Install an end-entity cert (x509/) and its key (private/); returns the file name."""
        fname = f"{cert.name}.pem"
        shutil.copyfile(cert.cert_path, self.swanctl_dir / "x509" / fname)
        if with_key:
            dst = self.swanctl_dir / "private" / fname
            shutil.copyfile(cert.key_path, dst)
            dst.chmod(0o600)
        return fname

    def add_ca(self, cert: Cert) -> str:
        """Install a CA / intermediate cert into x509ca/; returns the file name."""
        fname = f"{cert.name}.pem"
        shutil.copyfile(cert.cert_path, self.swanctl_dir / "x509ca" / fname)
        return fname

    # ---- lifecycle
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> Charon:
        """Start charon in the namespace (private /run) and wait until VICI answers."""
        if self.running():
            raise CharonError(f"{self.name}: already running (pid {self.pid})")
        self.write_strongswan_conf()
        with contextlib.suppress(FileNotFoundError):
            self.vici_path.unlink()
        env = dict(os.environ)
        env["STRONGSWAN_CONF"] = str(self.conf_path)
        script = "mount -t tmpfs -o mode=0755,size=4m sswan-run /run && "
        if self.lookup_resolv_conf is not None:
            script += f"mount --bind {shlex.quote(str(self.lookup_resolv_conf))} /etc/resolv.conf && "
        argv = [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", script + 'exec "$@"',
            "sh", self.charon_bin,
        ]
        out = open(self.stdout_path, "wb")
        try:
            self.proc = self.ns.popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        try:
            wait_until(self._vici_ready, timeout=timeout, interval=0.03,
                       what=f"{self.name}: VICI socket {self.vici_path}")
        except TimeoutError as exc:
            tail = self.log_tail()
            self.stop()
            raise CharonError(f"{self.name}: charon did not come up: {exc}\n{tail}") from exc
        return self

    def _vici_ready(self) -> bool:
        if not self.running():
            raise CharonError(f"{self.name}: charon exited with {self.proc.returncode}\n"
                              + self.log_tail())
        if not self.vici_path.exists():
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(str(self.vici_path))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM charon (by PID), SIGKILL after ``timeout``; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            kill_pid(self.proc.pid, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2.0)
        if self.proc.poll() is None or pid_alive(self.proc.pid):
            raise CharonError(f"{self.name}: pid {self.proc.pid} did not exit")

    def __enter__(self) -> Charon:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- logs
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text()
        try:
            text += self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            pass
        return "\n".join(text.splitlines()[-lines:])

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        """Wait until ``pattern`` (regex) appears in charon.log after offset ``start``."""
        rx = re.compile(pattern, re.M)
        return wait_until(lambda: rx.search(self.log_text(), start), timeout=timeout,
                          what=f"{self.name}: log pattern {pattern!r}")  # type: ignore[return-value]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    # ---- swanctl
    def swanctl(self, command: str, *args: str, check: bool = True,
                timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """``swanctl --<command> ... --uri <vici>`` (command must come first)."""
        argv = [self.swanctl_bin, f"--{command}", *map(str, args), "--uri", self.vici_uri]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 env=_tool_env(self.conf_path))
        except subprocess.TimeoutExpired as exc:
            raise SwanctlError(f"{self.name}: timeout after {timeout}s: {' '.join(argv)}") from exc
        if check and res.returncode != 0:
            raise SwanctlError(
                f"{self.name}: swanctl --{command} failed (rc={res.returncode})\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}", res)
        return res

    def load_all(self) -> subprocess.CompletedProcess[str]:
        """``--load-all`` from the instance's swanctl.conf; fails if anything did not load."""
        res = self.swanctl("load-all", "--file", str(self.swanctl_conf_path), check=False)
        bad = re.findall(r"^.*(?:failed|ignored).*$", res.stdout + res.stderr, re.M)
        bad = [b for b in bad if not b.startswith("opening directory")]
        if res.returncode != 0 or bad:
            raise SwanctlError(f"{self.name}: load-all failed:\n{res.stdout}\n{res.stderr}", res)
        return res

    def initiate(self, child: str | None = None, ike: str | None = None,
                 timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``--initiate`` a CHILD_SA (and its IKE_SA) or an IKE_SA only; waits for completion."""
        args: list[str] = []
        if child:
            args += ["--child", child]
        if ike:
            args += ["--ike", ike]
        args += ["--timeout", str(int(max(1, timeout - 2)))]
        return self.swanctl("initiate", *args, timeout=timeout, check=check)

    def terminate(self, ike: str | None = None, child: str | None = None,
                  ike_id: int | None = None, child_id: int | None = None, force: bool = False,
                  timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``--terminate`` by name or unique id (sends DELETE unless ``force``)."""
        args = _sa_selector(ike, child, ike_id, child_id)
        if force:
            args.append("--force")
        args += ["--timeout", str(int(max(1, timeout - 2)))]
        return self.swanctl("terminate", *args, timeout=timeout, check=check)

    def rekey(self, ike: str | None = None, child: str | None = None,
              ike_id: int | None = None, child_id: int | None = None, reauth: bool = False,
              timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``--rekey`` (asynchronous in charon: wait for the new SA with :meth:`wait_for`)."""
        args = _sa_selector(ike, child, ike_id, child_id)
        if reauth:
            args.append("--reauth")
        return self.swanctl("rekey", *args, timeout=timeout, check=check)

    def list_sas(self, ike: str | None = None, timeout: float = 10.0) -> list[dict]:
        """Current IKE_SAs as dicts (VICI keys: ``initiator-spi``, ``child-sas`` list, ...)."""
        if _vici is not None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(str(self.vici_path))
                sess = _vici.Session(s)
                filt = {"ike": ike} if ike else None
                return _normalize_sas(list(sess.list_sas(filt)))
            finally:
                s.close()
        args = ["--pretty"] + (["--ike", ike] if ike else [])
        res = self.swanctl("list-sas", *args, timeout=timeout)
        return _normalize_sas(parse_swanctl_pretty(res.stdout, "list-sa event"))

    def children(self, child: str | None = None, state: str | None = "INSTALLED") -> list[tuple[dict, dict]]:
        """(ike_sa, child_sa) pairs, optionally filtered by child name and state."""
        out = []
        for sa in self.list_sas():
            for c in sa["child-sas"]:
                if child and c.get("name") != child:
                    continue
                if state and c.get("state") != state:
                    continue
                out.append((sa, c))
        return out

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "SA state") -> Any:
        """Poll ``predicate(list_sas())`` until truthy; return its value (TimeoutError)."""
        return wait_until(lambda: predicate(self.list_sas()), timeout=timeout, interval=0.05,
                          what=f"{self.name}: {what}")

    def wait_child(self, child: str, timeout: float = 10.0,
                   exclude_spis: Iterable[str] = ()) -> tuple[dict, dict]:
        """Wait for an INSTALLED CHILD_SA ``child`` whose spi-in is not in ``exclude_spis``."""
        excl = set(exclude_spis)

        def pred(sas):
            for sa in sas:
                for c in sa["child-sas"]:
                    if c.get("name") == child and c.get("state") == "INSTALLED" \
                            and c.get("spi-in") not in excl:
                        return sa, c
            return None
        return self.wait_for(pred, timeout, f"CHILD_SA {child} installed")

    def wait_ike(self, ike: str | None = None, timeout: float = 10.0,
                 exclude_spis: Iterable[str] = ()) -> dict:
        """Wait for an ESTABLISHED IKE_SA (optionally named) whose initiator SPI is new."""
        excl = set(exclude_spis)

        def pred(sas):
            for sa in sas:
                if (ike is None or sa["name"] == ike) and sa.get("state") == "ESTABLISHED" \
                        and sa.get("initiator-spi") not in excl:
                    return sa
            return None
        return self.wait_for(pred, timeout, f"IKE_SA {ike or ''} established")

    def wait_no_sas(self, timeout: float = 10.0) -> None:
        self.wait_for(lambda sas: not sas, timeout, "no SAs left")

    def version(self) -> str:
        m = re.search(r"Starting IKE charon daemon \(strongSwan ([^,]+),", self.log_text())
        return m.group(1) if m else strongswan_version()


def _sa_selector(ike, child, ike_id, child_id) -> list[str]:
    args: list[str] = []
    if ike:
        args += ["--ike", ike]
    if child:
        args += ["--child", child]
    if ike_id is not None:
        args += ["--ike-id", str(ike_id)]
    if child_id is not None:
        args += ["--child-id", str(child_id)]
    if not args:
        raise ValueError("need ike, child, ike_id or child_id")
    return args


def _deep_update(dst: dict, src: Mapping) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


# --------------------------------------------------------------------------- topology


@dataclasses.dataclass
class Topology:
    """site (left, initiator side) -- router -- gw (right) plus optional protected hosts.

    IPv4: site wan0 192.0.2.10/24 <-> r0 192.0.2.1; gw wan0 198.51.100.10/24 <-> r2
    198.51.100.1; optional site wan1 203.0.113.10/24 <-> r1 203.0.113.1 (metric 200
    default route). Protected: site lan0 10.10.0.1/24 <-> host_a 10.10.0.2, gw lan0
    10.20.0.1/24 <-> host_b 10.20.0.2. IPv6 (``ipv6=True``): 2001:db8:1::/64, 2001:db8:2::/64,
    2001:db8:3::/64 outside, fd00:10::/64 and fd00:20::/64 inside (``::1`` gateway,
    ``::2`` host, ``::10`` outer). The router has no route to the protected nets, so
    traffic between them only passes through a tunnel.
    """

    group: NetnsGroup
    site: Netns
    gw: Netns
    router: Netns
    host_a: Netns | None
    host_b: Netns | None
    ipv6: bool
    second_uplink: bool
    site_ip: str = "192.0.2.10"
    site_ip2: str = "203.0.113.10"
    gw_ip: str = "198.51.100.10"
    site_net: str = "10.10.0.0/24"
    gw_net: str = "10.20.0.0/24"
    site_inner: str = "10.10.0.1"
    gw_inner: str = "10.20.0.1"
    host_a_ip: str = "10.10.0.2"
    host_b_ip: str = "10.20.0.2"
    transit_iface: str = "r2"  # router side of the router--gw link: sees all IKE/ESP

    def namespaces(self) -> list[Netns]:
        return [n for n in (self.site, self.gw, self.router, self.host_a, self.host_b) if n]


V6 = {
    "site_ip": "2001:db8:1::10", "site_ip2": "2001:db8:3::10", "gw_ip": "2001:db8:2::10",
    "site_net": "fd00:10::/64", "gw_net": "fd00:20::/64",
    "site_inner": "fd00:10::1", "gw_inner": "fd00:20::1",
    "host_a_ip": "fd00:10::2", "host_b_ip": "fd00:20::2",
}


def build_topology(group: NetnsGroup, *, ipv6: bool = False, hosts: bool = True,
                   second_uplink: bool = False) -> Topology:
    """Create the namespaces/links of :class:`Topology` inside ``group`` (IPv4 always;
    with ``ipv6`` the IPv6 addresses are added too and become the addresses used)."""
    site = group.add("site", forwarding=True)
    gw = group.add("gw", forwarding=True)
    r = group.add("r", forwarding=True)
    group.veth(site, "wan0", r, "r0", a_addrs=["192.0.2.10/24"], b_addrs=["192.0.2.1/24"])
    group.veth(gw, "wan0", r, "r2", a_addrs=["198.51.100.10/24"], b_addrs=["198.51.100.1/24"])
    for key in ("all", "default", "wan0"):
        site.sysctl(f"net.ipv4.conf.{key}.promote_secondaries", 1)
    site.add_route("default", via="192.0.2.1")
    gw.add_route("default", via="198.51.100.1")
    if second_uplink:
        group.veth(site, "wan1", r, "r1", a_addrs=["203.0.113.10/24"], b_addrs=["203.0.113.1/24"])
        site.ip("route", "add", "default", "via", "203.0.113.1", "metric", "200")
    host_a = host_b = None
    if hosts:
        host_a = group.add("ha")
        host_b = group.add("hb")
        group.veth(site, "lan0", host_a, "eth0", a_addrs=["10.10.0.1/24"], b_addrs=["10.10.0.2/24"])
        group.veth(gw, "lan0", host_b, "eth0", a_addrs=["10.20.0.1/24"], b_addrs=["10.20.0.2/24"])
        host_a.add_route("default", via="10.10.0.1")
        host_b.add_route("default", via="10.20.0.1")
    else:
        site.add_addr("lo", "10.10.0.1/32")
        gw.add_addr("lo", "10.20.0.1/32")
    topo = Topology(group, site, gw, r, host_a, host_b, ipv6, second_uplink)
    if ipv6:
        site.add_addr("wan0", "2001:db8:1::10/64")
        r.add_addr("r0", "2001:db8:1::1/64")
        gw.add_addr("wan0", "2001:db8:2::10/64")
        r.add_addr("r2", "2001:db8:2::1/64")
        site.add_route("default", via="2001:db8:1::1")
        gw.add_route("default", via="2001:db8:2::1")
        if second_uplink:
            site.add_addr("wan1", "2001:db8:3::10/64")
            r.add_addr("r1", "2001:db8:3::1/64")
            site.ip("-6", "route", "add", "default", "via", "2001:db8:3::1", "metric", "200")
        if hosts:
            site.add_addr("lan0", "fd00:10::1/64")
            host_a.add_addr("eth0", "fd00:10::2/64")
            gw.add_addr("lan0", "fd00:20::1/64")
            host_b.add_addr("eth0", "fd00:20::2/64")
            host_a.add_route("default", via="fd00:10::1")
            host_b.add_route("default", via="fd00:20::1")
        else:
            site.add_addr("lo", "fd00:10::1/128")
            gw.add_addr("lo", "fd00:20::1/128")
        for k, v in V6.items():
            setattr(topo, k, v)
    # the outer path must work before any IKE is attempted
    site.wait_ping(topo.gw_ip, timeout=10)
    return topo


def psk_site_to_site(topo: Topology, psk: str, *, ike_proposals: str = "aes256gcm16-prfsha256-x25519",
                     esp_proposals: str = "aes256gcm16", conn: str = "s2s", child: str = "net",
                     site_id: str = "site.example.org", gw_id: str = "gw.example.org",
                     mobike: bool = True, extra_conn: Mapping[str, Any] | None = None,
                     extra_child: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
    """swanctl.conf mappings (site, gw) for a PSK site-to-site tunnel over ``topo``."""
    secret = {"id-1": site_id, "id-2": gw_id, "secret": quote(psk)}

    def side(local_addrs, remote_addrs, lid, rid, lts, rts):
        c: dict[str, Any] = {
            "version": 2, "local_addrs": local_addrs, "remote_addrs": remote_addrs,
            "proposals": ike_proposals, "mobike": mobike, "encap": True,
            "local": {"auth": "psk", "id": lid}, "remote": {"auth": "psk", "id": rid},
            "children": {child: {"local_ts": lts, "remote_ts": rts,
                                 "esp_proposals": esp_proposals, **(extra_child or {})}},
        }
        _deep_update(c, extra_conn or {})
        return {"connections": {conn: c}, "secrets": {"ike-psk": secret}}

    site = side(topo.site_ip, topo.gw_ip, site_id, gw_id, topo.site_net, topo.gw_net)
    gw = side(topo.gw_ip, "%any", gw_id, site_id, topo.gw_net, topo.site_net)
    return site, gw


def quote(secret: str) -> str:
    """A secret as a quoted swanctl.conf string (no quotes, backslashes or newlines)."""
    if any(c in secret for c in '"\\\n') or not secret.isprintable():
        raise ValueError("secret must be printable without quotes/backslashes")
    return f'"{secret}"'


@dataclasses.dataclass
class Pair:
    topo: Topology
    site: Charon
    gw: Charon
    workdir: Path


@contextlib.contextmanager
def strongswan_pair(
    workdir: Path | str,
    site_conf: str | Mapping[str, Any] | None = None,
    gw_conf: str | Mapping[str, Any] | None = None,
    *,
    prefix: str = "ssw",
    ipv6: bool = False,
    hosts: bool = True,
    second_uplink: bool = False,
    log_levels: Mapping[str, int] | None = None,
    charon_kwargs: Mapping[str, Any] | None = None,
    setup=None,
    load: bool = True,
) -> Iterator[Pair]:
    """Topology + two charons (site, gw), configs loaded; everything torn down on exit.

    ``site_conf``/``gw_conf`` may be None when ``setup(pair)`` writes them (it runs after
    the charons are created and before they start, e.g. to install certificates).
    """
    require_strongswan()
    workdir = Path(workdir)
    group = NetnsGroup(prefix)
    site = gw = None
    try:
        topo = build_topology(group, ipv6=ipv6, hosts=hosts, second_uplink=second_uplink)
        kw = dict(charon_kwargs or {})
        site = Charon(topo.site, workdir / "site", "site", log_levels=log_levels, **kw)
        gw = Charon(topo.gw, workdir / "gw", "gw", log_levels=log_levels, **kw)
        pair = Pair(topo, site, gw, workdir)
        if site_conf is not None:
            site.write_swanctl_conf(site_conf)
        if gw_conf is not None:
            gw.write_swanctl_conf(gw_conf)
        if setup is not None:
            setup(pair)
        gw.start()
        site.start()
        if load:
            gw.load_all()
            site.load_all()
        yield pair
    finally:
        errors = []
        for c in (site, gw):
            if c is not None:
                try:
                    c.stop()
                except Exception as exc:  # continue tearing down
                    errors.append(exc)
        group.close()
        if errors:
            raise CharonError(f"teardown: {errors}")


# --------------------------------------------------------------------------- capture


# Capture (tcpdump in a namespace) lives in tests/netns.py, shared with tests/netns_e2e.


# --------------------------------------------------------------------------- log parsing

_LINE_RE = re.compile(
    r"^(?:(?P<time>.+?) )?(?P<thread>\d+)\[(?P<group>[A-Z]+)\] (?:<(?P<ike>[^>]*)> )?(?P<msg>.*)$")
_DUMP_HEAD_RE = re.compile(r"^(?P<label>.*?) => (?P<len>\d+) bytes @ (?:0x[0-9a-fA-F]+|\(nil\))\s*$")
_DUMP_LINE_RE = re.compile(r"^\s*(?P<off>\d+): (?P<hex>(?:[0-9A-F]{2} )*[0-9A-F]{2})")


@dataclasses.dataclass
class LogRecord:
    """One charon log message; hex dumps spread over several lines are joined in ``data``."""

    index: int
    time: str
    thread: int
    group: str
    ike: str | None  # "conn|uniqueid" (ike_name = yes) or None
    msg: str
    label: str | None = None  # for "label => N bytes @ 0x..." messages
    data: bytes | None = None

    @property
    def ike_uid(self) -> int | None:
        if not self.ike:
            return None
        m = re.search(r"(\d+)$", self.ike)
        return int(m.group(1)) if m else None

    @property
    def conn(self) -> str | None:
        if not self.ike or "|" not in self.ike:
            return None
        return self.ike.rsplit("|", 1)[0]


def parse_log(text: str) -> list[LogRecord]:
    """Parse charon's filelog (any ``time_format``, with or without ``ike_name``).

    Lines that do not look like log lines are ignored; a ``label => N bytes @ ptr`` message
    absorbs the following hex-dump lines of the same thread (charon writes all lines of one
    message while holding the logger lock, so they are contiguous).
    """
    records: list[LogRecord] = []
    pending: LogRecord | None = None
    want = 0
    buf = bytearray()
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if not m:
            continue
        thread = int(m.group("thread"))
        msg = m.group("msg")
        if pending is not None and thread == pending.thread and m.group("group") == pending.group:
            d = _DUMP_LINE_RE.match(msg)
            if d and int(d.group("off")) == len(buf):
                hx = d.group("hex").split()
                buf.extend(bytes.fromhex("".join(hx[: min(16, want - len(buf))])))
                if len(buf) >= want:
                    pending.data = bytes(buf)
                    pending = None
                continue
        if pending is not None:  # truncated dump: keep what we have
            pending.data = bytes(buf)
            pending = None
        rec = LogRecord(len(records), m.group("time"), thread, m.group("group"), m.group("ike"), msg)
        h = _DUMP_HEAD_RE.match(msg)
        if h:
            rec.label = h.group("label").strip()
            want = int(h.group("len"))
            buf = bytearray()
            if want == 0:
                rec.data = b""
            else:
                pending = rec
        records.append(rec)
    if pending is not None:
        pending.data = bytes(buf)
    return records


_IKE_KEY_LABELS = {
    "shared Diffie Hellman secret": "shared_dh_secret",
    "SKEYSEED": "skeyseed",
    "Sk_d secret": "sk_d",
    "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar",
    "Sk_ei secret": "sk_ei",
    "Sk_er secret": "sk_er",
    "Sk_pi secret": "sk_pi",
    "Sk_pr secret": "sk_pr",
}
_CHILD_KEY_LABELS = {
    "encryption initiator key": "encr_i",
    "integrity initiator key": "integ_i",
    "encryption responder key": "encr_r",
    "integrity responder key": "integ_r",
    "DH secret": "dh_secret",
    "seed": "seed",
}
_CHECKIN_RE = re.compile(r"^checkin IKEv2 SA (?P<name>.*)\[(?P<uid>\d+)\] "
                         r"with SPIs (?P<i>[0-9a-f]{16})_i (?P<r>[0-9a-f]{16})_r")
_REKEYED_RE = re.compile(r"^IKE_SA (?P<name>.*)\[(?P<uid>\d+)\] rekeyed between")
_CHILD_EST_RE = re.compile(
    r"^(?:inbound )?CHILD_SA (?P<name>.*)\{(?P<uid>\d+)\} "
    r"established with SPIs (?P<i>[0-9a-f]{8})_i (?P<o>[0-9a-f]{8})_o"
    r"(?: and TS (?P<ts>.*))?$")
_SUMMARY_RE = re.compile(r"^(?P<verb>generating|parsed) (?P<exch>\S+) (?P<kind>request|response) (?P<mid>\d+) "
                         r"\[ ?(?P<pl>.*?) ?\]$")
_SELECTED_RE = re.compile(r"^selected proposal: (?P<p>\S+)$")


def _zero(spi: str) -> bool:
    return int(spi, 16) == 0


class _Context:
    """Per-thread (reset whenever the thread checks an IKE_SA in) and per-IKE_SA context."""

    def __init__(self):
        self.thread: dict[int, dict] = {}
        self.uid: dict[int, dict] = {}
        self.uid_spis: dict[int, tuple[str, str]] = {}

    def feed(self, r: LogRecord) -> re.Match | None:
        """Update context from ``r``; returns the checkin match for MGR checkin lines."""
        th = self.thread.setdefault(r.thread, {})
        us = self.uid.setdefault(r.ike_uid, {}) if r.ike_uid is not None else {}
        if r.group == "ENC":
            m = _SUMMARY_RE.match(r.msg)
            if m:
                th["summary"] = m
                if m.group("exch") == "IKE_SA_INIT":
                    us["ike_init_initiator"] = (m.group("verb") == "generating") == (m.group("kind") == "request")
        elif r.group == "CFG":
            m = _SELECTED_RE.match(r.msg)
            if m:
                key = "ike_prop" if m.group("p").startswith("IKE:") else "child_prop"
                th[key] = m.group("p")
                us[key] = m.group("p")
        elif r.group == "MGR":
            m = _CHECKIN_RE.match(r.msg)
            if m:
                if not _zero(m.group("r")):
                    self.uid_spis[int(m.group("uid"))] = (m.group("i"), m.group("r"))
                return m
        return None

    def end_job(self, r: LogRecord) -> None:
        self.thread.pop(r.thread, None)

    def exchange_role(self, r: LogRecord) -> tuple[str | None, bool | None]:
        """(exchange, we_initiated) from the summary this thread handled last in this job."""
        m = self.thread.get(r.thread, {}).get("summary")
        if not m:
            return None, None
        return m.group("exch"), (m.group("verb") == "generating") == (m.group("kind") == "request")


def parse_ike_keys(records: Sequence[LogRecord]) -> list[dict]:
    """IKE_SA key sets in log order (needs ``ike = 4``; SPIs need ``mgr = 2``).

    Each dict: spi_i, spi_r, unique_id, name, shared_dh_secret, skeyseed, sk_d, sk_ai,
    sk_ar, sk_ei, sk_er, sk_pi, sk_pr (hex; sk_ai/sk_ar None with AEAD), ike_proposal
    (e.g. ``AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519``), exchange (IKE_SA_INIT or
    CREATE_CHILD_SA), we_initiated (this charon initiated that exchange, so spi_i is ours),
    rekeyed_from ({"unique_id", "spi_i", "spi_r"} of the old IKE_SA for a rekey), time.
    """
    ctx = _Context()
    pending: dict[int, dict] = {}
    waiting: dict[int, dict] = {}
    done: list[dict] = []
    for r in records:
        t = r.thread
        chk = ctx.feed(r)
        if r.group == "IKE" and r.label in _IKE_KEY_LABELS:
            field = _IKE_KEY_LABELS[r.label]
            if field == "shared_dh_secret" or t not in pending:
                th = ctx.thread.get(t, {})
                pending[t] = {"_idx": r.index, "time": r.time, "name": r.conn,
                              "tag_uid": r.ike_uid, "_thread_prop": th.get("ike_prop"),
                              "_role": ctx.exchange_role(r)}
            pending[t][field] = r.data.hex() if r.data is not None else None
            if field == "sk_pr":
                waiting[t] = pending.pop(t)
            continue
        w = waiting.get(t)
        if w is not None and r.group == "IKE":
            m = _REKEYED_RE.match(r.msg)
            if m:
                w["new_uid"] = int(m.group("uid"))
                w["old_uid"] = r.ike_uid
        if chk is not None:
            if w is not None and not _zero(chk.group("r")):
                uid = int(chk.group("uid"))
                if w.get("new_uid", w["tag_uid"]) == uid:
                    waiting.pop(t)
                    w["unique_id"] = uid
                    w["spi_i"], w["spi_r"] = chk.group("i"), chk.group("r")
                    if w["name"] is None:
                        w["name"] = chk.group("name")
                    done.append(w)
            ctx.end_job(r)
    done.extend(waiting.values())  # key sets whose SPIs were not logged (mgr < 2)
    result = []
    for w in sorted(done, key=lambda d: d["_idx"]):
        uid = w.get("unique_id", w["tag_uid"])
        if "new_uid" in w:
            exchange = "CREATE_CHILD_SA"
            we_init = w["_role"][1] if w["_role"][0] == "CREATE_CHILD_SA" else None
            prop = w["_thread_prop"]
            old = w.get("old_uid")
            spis = ctx.uid_spis.get(old) if old is not None else None
            rekeyed_from = {"unique_id": old, "spi_i": spis[0], "spi_r": spis[1]} if spis else None
        else:
            exchange = "IKE_SA_INIT"
            we_init = ctx.uid.get(uid, {}).get("ike_init_initiator")
            prop = w["_thread_prop"] or ctx.uid.get(w["tag_uid"], {}).get("ike_prop")
            rekeyed_from = None
        d = {k: w.get(k) for k in ("spi_i", "spi_r", "unique_id", "name", "shared_dh_secret",
                                   "skeyseed", "sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er",
                                   "sk_pi", "sk_pr")}
        d.update(ike_proposal=prop[4:] if prop and prop.startswith("IKE:") else prop,
                 exchange=exchange, we_initiated=we_init, rekeyed_from=rekeyed_from,
                 time=w["time"])
        result.append(d)
    return result


def parse_child_keys(records: Sequence[LogRecord]) -> list[dict]:
    """CHILD_SA keys in log order (needs ``chd = 4``).

    Each dict: name, unique_id, spi_in, spi_out (this charon's view), encr_i, integ_i,
    encr_r, integ_r (hex, None when not used), dh_secret (PFS), proposal (e.g.
    ``ESP:AES_GCM_16_256/NO_EXT_SEQ``), exchange, we_initiated (this charon initiated the
    exchange; the i/r keys refer to that exchange's initiator/responder), ike_unique_id,
    ts, time.
    """
    ctx = _Context()
    pending: dict[int, dict] = {}
    out = []
    for r in records:
        t = r.thread
        chk = ctx.feed(r)
        if r.group == "CHD" and r.label in _CHILD_KEY_LABELS:
            field = _CHILD_KEY_LABELS[r.label]
            if t not in pending or field in pending[t]:
                exch, we_init = ctx.exchange_role(r)
                pending[t] = {"time": r.time, "ike_unique_id": r.ike_uid,
                              "proposal": ctx.thread.get(t, {}).get("child_prop"),
                              "exchange": exch, "we_initiated": we_init}
            pending[t][field] = r.data.hex() if r.data is not None else None
            continue
        if r.group == "IKE" and t in pending:
            m = _CHILD_EST_RE.match(r.msg)
            if m:
                p = pending.pop(t)
                p.update(name=m.group("name"), unique_id=int(m.group("uid")),
                         spi_in=m.group("i"), spi_out=m.group("o"), ts=m.group("ts"))
                out.append(p)
        if chk is not None:
            ctx.end_job(r)
    keys = ("name", "unique_id", "spi_in", "spi_out", "encr_i", "integ_i", "encr_r", "integ_r",
            "dh_secret", "proposal", "exchange", "we_initiated", "ike_unique_id", "ts", "time")
    return [{k: p.get(k) for k in keys} for p in out]


_SEND_RE = re.compile(r"^sending packet: from (?P<src>\S+) to (?P<dst>\S+) \((?P<n>\d+) bytes\)")
_RECV_RE = re.compile(r"^received packet: from (?P<src>\S+) to (?P<dst>\S+) \((?P<n>\d+) bytes\)")


def parse_summaries(records: Sequence[LogRecord]) -> list[dict]:
    """``generating``/``parsed`` exchange summaries in order.

    Each dict: time, ike (``conn|uid``), dir ("out" for generating, "in" for parsed),
    exchange, kind (request/response), mid, payloads (the text between the brackets), and
    for "out" the packets charon then sent ([{"src","dst","bytes"}], several when
    fragmented), for "in" the packet that was received last in that thread.
    """
    out: list[dict] = []
    last_out: dict[int, dict] = {}
    last_recv: dict[int, dict] = {}
    for r in records:
        if r.group == "NET":
            m = _SEND_RE.match(r.msg)
            if m and r.thread in last_out:
                last_out[r.thread]["packets"].append(
                    {"src": m.group("src"), "dst": m.group("dst"), "bytes": int(m.group("n"))})
                continue
            m = _RECV_RE.match(r.msg)
            if m:
                last_recv[r.thread] = {"src": m.group("src"), "dst": m.group("dst"),
                                       "bytes": int(m.group("n"))}
            continue
        if r.group != "ENC":
            continue
        m = _SUMMARY_RE.match(r.msg)
        if not m:
            continue
        d = {
            "time": r.time, "ike": r.ike,
            "dir": "out" if m.group("verb") == "generating" else "in",
            "exchange": m.group("exch"), "kind": m.group("kind"), "mid": int(m.group("mid")),
            "payloads": m.group("pl"),
        }
        if d["dir"] == "out":
            d["packets"] = []
            last_out[r.thread] = d
        else:
            d["packets"] = [last_recv.pop(r.thread)] if r.thread in last_recv else []
            last_out.pop(r.thread, None)
        out.append(d)
    return out


def parse_established(records: Sequence[LogRecord]) -> list[dict]:
    """Milestones: IKE_SA established/rekeyed/deleted, CHILD_SA established/closed."""
    pats = [
        ("ike_established", re.compile(r"^IKE_SA (?P<name>.*)\[(?P<uid>\d+)\] established between (?P<peers>.*)$")),
        ("ike_rekeyed", _REKEYED_RE),
        ("ike_deleted", re.compile(r"^IKE_SA deleted$")),
        ("child_established", _CHILD_EST_RE),
        ("child_closing", re.compile(r"^closing CHILD_SA (?P<name>.*)\{(?P<uid>\d+)\} with SPIs (?P<i>[0-9a-f]{8})_i")),
        ("local_endpoint_changed", re.compile(r"^local endpoint changed from (?P<old>\S+) to (?P<new>\S+)")),
        ("remote_endpoint_changed", re.compile(r"^remote endpoint changed from (?P<old>\S+) to (?P<new>\S+)")),
    ]
    out = []
    for r in records:
        if r.group != "IKE":
            continue
        for kind, rx in pats:
            m = rx.match(r.msg)
            if m:
                out.append({"event": kind, "time": r.time, "ike": r.ike, **m.groupdict()})
                break
    return out
