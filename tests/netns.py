"""Small helpers for Linux network namespaces in tests (needs root).

Everything goes through the ``ip`` command (iproute2) with bounded timeouts, so the
module has no dependency beyond the standard library.  Typical use::

    from netns import NetnsGroup

    with NetnsGroup("mytest") as grp:          # names are unique per process
        a = grp.add("a")
        b = grp.add("b")
        grp.veth(a, "eth0", b, "eth0",
                 a_addrs=["192.0.2.1/24"], b_addrs=["192.0.2.2/24"])
        assert a.ping("192.0.2.2")
        proc = b.popen(["sleep", "100"])       # killed when the group closes
    # all namespaces deleted, all processes started in them killed

Namespace names are ``<prefix><pid>`` + a per-process counter + ``-<short name>``, so
parallel runs (different PIDs) never clash; :func:`cleanup_stale` removes namespaces
left behind by dead processes that used the same prefix.

Interfaces are created directly inside their namespace (``ip -n NS link add ... peer
... netns OTHER``) so nothing ever appears in the root namespace, and interface names
only have to be unique within one namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = [
    "NetnsError",
    "Netns",
    "NetnsGroup",
    "run",
    "require_root",
    "list_netns",
    "netns_pids",
    "cleanup_stale",
    "wait_until",
    "kill_pid",
    "pid_alive",
    "descendants",
]

IP = shutil.which("ip") or "/usr/sbin/ip"
DEFAULT_TIMEOUT = 10.0

_counter = itertools.count(1)
_counter_lock = threading.Lock()


class NetnsError(RuntimeError):
    """A namespace operation failed (command output included in the message)."""


# --------------------------------------------------------------------------- basics


def _argv(cmd: str | Sequence[str]) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def run(
    cmd: str | Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (argv list or shell-like string, never through a shell).

    Output is captured as text. A timeout kills the command and raises NetnsError, as
    does a non-zero exit status when ``check`` is true.
    """
    argv = _argv(cmd)
    try:
        res = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"timeout after {timeout}s: {shlex.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise NetnsError(f"command not found: {argv[0]}") from exc
    if check and res.returncode != 0:
        raise NetnsError(
            f"command failed (rc={res.returncode}): {shlex.join(argv)}\n"
            f"stdout: {res.stdout.strip()}\nstderr: {res.stderr.strip()}"
        )
    return res


def require_root() -> None:
    """Raise NetnsError unless running as root with ``ip netns`` available."""
    if os.geteuid() != 0:
        raise NetnsError("network namespace tests need root (euid 0)")
    if not Path(IP).exists():
        raise NetnsError("iproute2 'ip' command not found")


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> object:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``: the children of all its threads, recursively (e.g. a
    daemon's crypto workers and their forkserver)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except FileNotFoundError:
            continue
        for t in tasks:
            try:
                kids = [int(k) for k in (t / "children").read_text().split()]
            except (FileNotFoundError, ValueError):
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pid(pid: int, timeout: float = 5.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to ``pid``, wait up to ``timeout`` s, then SIGKILL. True if it is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Stop a process this test started (``sig``, then SIGKILL after ``timeout``) and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        kill_pid(proc.pid, timeout=timeout, sig=sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def list_netns() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    res = run([IP, "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def netns_pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``name``."""
    res = run([IP, "netns", "pids", name], check=False)
    return [int(x) for x in res.stdout.split() if x.isdigit()]


def cleanup_stale(prefix: str) -> list[str]:
    """Delete namespaces named ``<prefix><pid>...`` whose creating process is dead.

    Processes still running inside such a namespace are killed first. Returns the
    names deleted. Only namespaces carrying ``prefix`` are touched.
    """
    removed = []
    pat = re.compile(re.escape(prefix) + r"(\d+)")
    for name in list_netns():
        m = pat.match(name)
        if not m or pid_alive(int(m.group(1))):
            continue
        for pid in netns_pids(name):
            kill_pid(pid, timeout=2.0)
        run([IP, "netns", "delete", name], check=False)
        removed.append(name)
    return removed


# --------------------------------------------------------------------------- Netns


class Netns:
    """One named network namespace.

    Create it with :meth:`create` (or through :class:`NetnsGroup.add`); :meth:`delete`
    kills every process still inside it and removes it. Usable as a context manager.
    """

    def __init__(self, name: str):
        self.name = name
        self.procs: list[subprocess.Popen] = []
        self._deleted = False

    # ---- lifecycle
    @classmethod
    def create(cls, name: str, *, lo_up: bool = True) -> Netns:
        if len(name) > 200 or "/" in name:
            raise ValueError(f"bad namespace name {name!r}")
        run([IP, "netns", "add", name])
        ns = cls(name)
        try:
            if lo_up:
                ns.ip("link", "set", "lo", "up")
        except BaseException:
            ns.delete()
            raise
        return ns

    def exists(self) -> bool:
        return self.name in list_netns()

    def pids(self) -> list[int]:
        return netns_pids(self.name)

    def kill_all(self, timeout: float = 5.0) -> None:
        """Stop tracked Popen objects, then every other process in the namespace."""
        for p in self.procs:
            if p.poll() is None:
                kill_pid(p.pid, timeout=timeout)
            try:
                p.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.pids():
            kill_pid(pid, timeout=timeout)

    def delete(self) -> None:
        if self._deleted:
            return
        try:
            self.kill_all()
        finally:
            run([IP, "netns", "delete", self.name], check=False)
            self._deleted = True

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    # ---- running commands
    def exec_argv(self, cmd: str | Sequence[str]) -> list[str]:
        """argv that runs ``cmd`` inside this namespace (``ip netns exec``)."""
        return [IP, "netns", "exec", self.name, *_argv(cmd)]

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it (bounded)."""
        return run(self.exec_argv(cmd), check=check, timeout=timeout, input=input, env=env)

    def popen(self, cmd: str | Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a background command in the namespace; it is killed by :meth:`delete`.

        ``ip netns exec`` execs the command, so ``Popen.pid`` is the command's own PID.
        Output goes to /dev/null unless stdout/stderr are given.
        """
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(self.exec_argv(cmd), **kwargs)
        self.procs.append(p)
        return p

    def ip(self, *args: str, check: bool = True, timeout: float = DEFAULT_TIMEOUT) -> str:
        """``ip -n NS args...``; returns stdout."""
        return run([IP, "-n", self.name, *map(str, args)], check=check, timeout=timeout).stdout

    def ip_json(self, *args: str) -> list:
        out = run([IP, "-j", "-n", self.name, *map(str, args)]).stdout
        return json.loads(out) if out.strip() else []

    # ---- links, addresses, routes
    def link_up(self, dev: str) -> None:
        self.ip("link", "set", dev, "up")

    def link_down(self, dev: str) -> None:
        self.ip("link", "set", dev, "down")

    def links(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link", "show")]

    def add_addr(self, dev: str, cidr: str) -> None:
        """Add an address; IPv6 addresses are added with ``nodad`` (usable at once)."""
        extra = ["nodad"] if ipaddress.ip_interface(cidr).version == 6 else []
        self.ip("addr", "add", cidr, "dev", dev, *extra)

    def del_addr(self, dev: str, cidr: str) -> None:
        self.ip("addr", "del", cidr, "dev", dev)

    def addresses(self, dev: str | None = None, family: int | None = None) -> list[str]:
        """Addresses as ``addr/prefixlen`` strings (optionally of one device / family 4|6)."""
        args = ["addr", "show"] + (["dev", dev] if dev else [])
        out = []
        for link in self.ip_json(*args):
            for a in link.get("addr_info", []):
                fam = 4 if a.get("family") == "inet" else 6
                if family and fam != family:
                    continue
                out.append(f"{a['local']}/{a['prefixlen']}")
        return out

    def add_route(
        self,
        dst: str,
        via: str | None = None,
        dev: str | None = None,
        src: str | None = None,
        table: str | int | None = None,
        replace: bool = False,
    ) -> None:
        args = ["-6"] if _is_v6(dst, via) else []
        args += ["route", "replace" if replace else "add", dst]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        if src:
            args += ["src", src]
        if table is not None:
            args += ["table", str(table)]
        self.ip(*args)

    def del_route(self, dst: str, table: str | int | None = None, check: bool = True) -> None:
        args = ["-6"] if _is_v6(dst) else []
        args += ["route", "del", dst]
        if table is not None:
            args += ["table", str(table)]
        self.ip(*args, check=check)

    def routes(self, family: int = 4, table: str | int = "main") -> list[dict]:
        return self.ip_json(f"-{family}", "route", "show", "table", str(table))

    # ---- sysctls
    def sysctl(self, key: str, value: object | None = None) -> str:
        """Read (value None) or write a sysctl inside the namespace.

        ``key`` is dotted (``net.ipv4.ip_forward``) or slash-separated
        (``net/ipv4/conf/eth0.100/forwarding``, needed when a name contains dots).
        """
        path = Path("/proc/sys") / (key if "/" in key else key.replace(".", "/"))
        if value is None:
            return self.run(["cat", str(path)]).stdout.strip()
        self.run(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", str(value), str(path)])
        return str(value)

    def enable_forwarding(self, ipv6: bool = True) -> None:
        self.sysctl("net.ipv4.ip_forward", 1)
        if ipv6:
            self.sysctl("net.ipv6.conf.all.forwarding", 1)

    def disable_dad(self) -> None:
        """Make IPv6 addresses usable at once on interfaces created later."""
        for scope in ("all", "default"):
            self.sysctl(f"net.ipv6.conf.{scope}.accept_dad", 0)
            self.sysctl(f"net.ipv6.conf.{scope}.dad_transmits", 0)

    # ---- probes
    def ping(
        self,
        dst: str,
        *,
        count: int = 1,
        src: str | None = None,
        size: int | None = None,
        wait: float = 1.0,
        interval: float = 0.2,
        timeout: float | None = None,
    ) -> bool:
        """Ping ``dst``; True if at least one reply came back. Bounded in time."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", f"{wait:g}", "-i", f"{interval:g}"]
        if ipaddress.ip_address(dst).version == 6:
            argv.insert(1, "-6")
        if src:
            argv += ["-I", src]
        if size is not None:
            argv += ["-s", str(size)]
        argv.append(dst)
        budget = timeout if timeout is not None else count * (interval + wait) + 5.0
        try:
            res = self.run(argv, check=False, timeout=budget)
        except NetnsError:
            return False
        return res.returncode == 0

    def wait_ping(self, dst: str, timeout: float = 10.0, src: str | None = None) -> None:
        """Ping until one reply arrives; raise TimeoutError after ``timeout``."""
        wait_until(
            lambda: self.ping(dst, src=src, wait=0.5),
            timeout=timeout,
            interval=0.05,
            what=f"ping {dst} from {self.name}",
        )


def _is_v6(*addrs: str | None) -> bool:
    for a in addrs:
        if a and a != "default" and ":" in a:
            return True
    return False


# --------------------------------------------------------------------------- NetnsGroup


class NetnsGroup:
    """A set of namespaces with a common unique prefix, deleted together.

    ``prefix`` should be short (a few letters); the group's real prefix is
    ``<prefix><pid>x<n>`` so that every group of every process is distinct.
    """

    def __init__(self, prefix: str = "nt"):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", prefix):
            raise ValueError("prefix: 1-12 lowercase letters/digits, starting with a letter")
        with _counter_lock:
            n = next(_counter)
        self.base_prefix = prefix
        self.prefix = f"{prefix}{os.getpid()}x{n}"
        self.namespaces: list[Netns] = []
        self._closed = False

    def add(self, short: str, *, forwarding: bool = False) -> Netns:
        """Create namespace ``<prefix>-<short>`` (lo up, IPv6 DAD off)."""
        ns = Netns.create(f"{self.prefix}-{short}")
        self.namespaces.append(ns)
        ns.disable_dad()
        if forwarding:
            ns.enable_forwarding()
        return ns

    def veth(
        self,
        a: Netns,
        a_dev: str,
        b: Netns,
        b_dev: str,
        *,
        a_addrs: Iterable[str] = (),
        b_addrs: Iterable[str] = (),
        mtu: int | None = None,
        up: bool = True,
    ) -> None:
        """Create a veth pair with one end in each namespace (never in the root one)."""
        for dev in (a_dev, b_dev):
            if len(dev) > 15:
                raise ValueError(f"interface name too long: {dev!r}")
        a.ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b.name)
        for ns, dev, addrs in ((a, a_dev, a_addrs), (b, b_dev, b_addrs)):
            if mtu:
                ns.ip("link", "set", dev, "mtu", str(mtu))
            for addr in addrs:
                ns.add_addr(dev, addr)
            if up:
                ns.link_up(dev)

    def close(self) -> None:
        """Kill all processes in the group's namespaces and delete them (idempotent)."""
        if self._closed:
            return
        errors = []
        for ns in reversed(self.namespaces):
            try:
                ns.delete()
            except Exception as exc:  # keep going, report at the end
                errors.append(exc)
        self._closed = True
        if errors:
            raise NetnsError(f"cleanup errors: {errors}")

    def leftovers(self) -> list[str]:
        """Namespaces of this group that still exist (should be [] after close())."""
        return [n for n in list_netns() if n.startswith(self.prefix + "-")]

    def __enter__(self) -> NetnsGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- capture


class Capture:
    """tcpdump in ``ns`` on ``iface`` writing ``path`` (full snaplen, packet-buffered)."""

    def __init__(self, ns: Netns, iface: str, path: Path | str, bpf: str = ""):
        self.ns = ns
        self.iface = iface
        self.path = Path(path)
        self.bpf = bpf
        self.proc: subprocess.Popen | None = None
        self.err = self.path.with_suffix(".tcpdump.log")

    def start(self, timeout: float = 10.0) -> Capture:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["tcpdump", "-i", self.iface, "-s", "0", "-n", "-U", "--immediate-mode", "-Z", "root",
                "-w", str(self.path)] + (self.bpf.split() if self.bpf else [])
        with open(self.err, "wb") as err:
            self.proc = self.ns.popen(argv, stderr=err)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump exited: {self.err.read_text(errors='replace')}")
            return "listening on" in self.err.read_text(errors="replace")
        wait_until(ready, timeout=timeout, what=f"tcpdump on {self.iface} to listen")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        time.sleep(0.2)  # let the last packets reach the file
        kill_pid(self.proc.pid, timeout=timeout, sig=signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2.0)

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- packet taps

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800


def packet_tap(ns_name: str, dev: str, *, every_frame: bool = False, rcvbuf: int = 4 << 20) -> socket.socket:
    """A non-blocking AF_PACKET socket on ``dev`` inside the namespace, read with
    :func:`read_ipv4`: IPv4 frames the device receives, or with ``every_frame`` every frame in
    and out (ETH_P_ALL; non-IPv4 ones are skipped when reading)."""
    from vpn_gw.dataplane.xfrm.netlink import _open_in_netns
    proto = ETH_P_ALL if every_frame else ETH_P_IP

    def opener():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((dev, proto))
        s.setblocking(False)
        return s
    return _open_in_netns(ns_name, opener)


def read_ipv4(tap: socket.socket) -> list[dict]:
    """Everything queued on a :func:`packet_tap` so far, as IPv4 header fields (``len``, ``id``,
    ``df``, ``mf``, ``off`` in bytes, ``proto``, ``src``, ``dst``) plus ``l4`` (the payload)."""
    out = []
    while True:
        try:
            data, addr = tap.recvfrom(65535)
        except BlockingIOError:
            return out
        if addr[1] != ETH_P_IP or len(data) < 20:
            continue
        vihl, _, total, ident, frag, _, proto = struct.unpack_from("!BBHHHBB", data)
        hl = (vihl & 15) * 4
        out.append({"len": total, "id": ident, "df": bool(frag & 0x4000), "mf": bool(frag & 0x2000),
                    "off": (frag & 0x1FFF) * 8, "proto": proto, "src": socket.inet_ntoa(data[12:16]),
                    "dst": socket.inet_ntoa(data[16:20]), "l4": data[hl:total]})
