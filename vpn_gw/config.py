"""Gateway configuration: TOML file -> validated, immutable dataclasses.

``load_config(path)`` reads and validates a file; ``parse_config(text, ...)`` does the same for a
string. Every problem found is reported as a ``ConfigError`` whose ``str`` is one line naming the
file, the line, the key and what is wrong, e.g.::

    hq.toml:14: connection[0].child[0].local_ts[1]: '10.1.0.5/24' has host bits set (did you mean '10.1.0.0/24'?)

All problems of a file are collected (``ConfigError.problems``); the first one is the message.
Key names follow strongSwan's swanctl.conf. ``docs/config.md`` documents every key; keep the two
in step (tests/test_config_docs.py checks that every key is documented).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import hmac
import hashlib
import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from ikev2.identity import Identity, IdentityPattern

from vpn_gw.durations import parse_duration, parse_size

__all__ = [
    "ConfigError", "Problem", "Secret", "parse_identity",
    "GatewayConfig", "ConnectionConfig", "ChildConfig", "PoolConfig", "ConfigDiff",
    "load_config", "parse_config", "diff_configs", "KeyLocator", "format_key_path",
    "DEFAULT_CONTROL_SOCKET",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
RemoteAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address,
                   ipaddress.IPv4Network, ipaddress.IPv6Network, str]

DEFAULT_CONTROL_SOCKET = "/run/vpn-gw/control.sock"

# Minimum PSK length: shorter keys are rejected outright (documented in docs/config.md).
PSK_MIN_BYTES = 8
# PSKs shorter than this load, with a warning.
PSK_WARN_BYTES = 16

AUTH_METHODS = ("psk", "pubkey", "eap-mschapv2", "eap-md5", "eap-tls")
EAP_METHODS = ("eap-mschapv2", "eap-md5", "eap-tls")
START_ACTIONS = ("none", "start", "trap")
DPD_ACTIONS = ("clear", "restart", "trap")
TRANSPORTS = ("udp", "tcp", "auto")  # how a connection initiates: RFC 9329 TCP encapsulation
MODES = ("tunnel", "transport")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
DATAPLANES = ("userspace", "xfrm", "none")

DEFAULT_IKE_PROPOSALS = ("aes256gcm16-aes128gcm16-prfsha256-prfsha384-x25519-ecp256-modp3072",
                         "aes256-aes128-sha256-sha384-x25519-ecp256-modp3072")
DEFAULT_ESP_PROPOSALS = ("aes256gcm16-aes128gcm16", "aes256-aes128-sha256-sha384")


# --------------------------------------------------------------------------------------------
# Secrets


class Secret:
    """Holds a secret value; ``repr``/``str``/``format`` never show it. ``reveal()`` returns it.

    Equality compares the values (constant time for bytes), so a changed PSK shows up in
    ``diff_configs``; private key objects compare by their DER encoding.
    """

    __slots__ = ("_value",)

    def __init__(self, value: Any):
        object.__setattr__(self, "_value", value)

    def __setattr__(self, name, value):  # pragma: no cover - immutability guard
        raise AttributeError("Secret is immutable")

    def reveal(self) -> Any:
        return self._value

    def _cmp_bytes(self) -> bytes:
        v = self._value
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        if isinstance(v, str):
            return v.encode()
        if hasattr(v, "private_bytes"):
            from cryptography.hazmat.primitives import serialization
            return v.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
        return repr(v).encode()

    def __eq__(self, other):
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._cmp_bytes(), other._cmp_bytes())

    def __hash__(self):
        return hash(hashlib.sha256(self._cmp_bytes()).digest())

    def __len__(self):
        return len(self._value)

    def __repr__(self):
        return "Secret('***')"

    def __str__(self):
        return "***"

    def __format__(self, spec):
        return "***"

    def __reduce__(self):  # keep secrets out of pickles too
        raise TypeError("Secret cannot be pickled")


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    """One error or warning: file, line (1-based, None if unknown), key path, message."""
    file: str | None
    line: int | None
    key: str | None
    message: str

    def __str__(self):
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        elif self.line:
            where = f"line {self.line}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigError(Exception):
    """The configuration is unreadable or invalid. ``str()`` is one line; ``problems`` lists all."""

    def __init__(self, message: str | Problem, *, file: str | None = None, line: int | None = None,
                 key: str | None = None, problems: Sequence[Problem] = ()):
        first = message if isinstance(message, Problem) else Problem(file, line, key, message)
        self.problems: tuple[Problem, ...] = tuple(problems) or (first,)
        self.file, self.line, self.key, self.message = first.file, first.line, first.key, first.message
        text = str(first).replace("\n", " ")
        extra = len(self.problems) - 1
        if extra > 0:
            text += f" (and {extra} more problem{'s' if extra > 1 else ''})"
        super().__init__(text)


# --------------------------------------------------------------------------------------------
# Locating keys in the TOML source (tomllib gives no positions)


def format_key_path(path: Iterable[str | int]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            s = p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else '"' + p.replace('"', '\\"') + '"'
            out += ("." if out else "") + s
    return out


class KeyLocator:
    """Maps key paths like ("connection", 1, "child", 0, "local_ts", 2) to 1-based source lines.

    A small scanner over (already tomllib-validated) TOML text: it records the line of every
    table header, array-of-tables entry, key, inline-table key and array element.
    ``line(path)`` returns the line of the longest recorded prefix of path, so a missing key
    points at its table's header.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str):
        self.text = text
        self.lines: dict[tuple, int] = {}
        self._aot: dict[tuple, int] = {}
        self._nl = [m.start() for m in re.finditer("\n", text)]
        try:
            self._scan()
        except Exception:  # never let locating break error reporting
            pass

    def line(self, path: Iterable[str | int]) -> int | None:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None

    # -- scanner ---------------------------------------------------------------------------
    def _line_of(self, i: int) -> int:
        import bisect
        return bisect.bisect_left(self._nl, i) + 1

    def _record(self, path: tuple, i: int):
        self.lines.setdefault(path, self._line_of(i))

    def _skip_ws(self, i: int, newlines: bool) -> int:
        t = self.text
        while i < len(t):
            c = t[i]
            if c in " \t\r" or (newlines and c == "\n"):
                i += 1
            elif c == "#" :
                while i < len(t) and t[i] != "\n":
                    i += 1
            else:
                break
        return i

    def _key(self, i: int) -> tuple[list[str], int]:
        """Parse a dotted key starting at i; returns parts and the index after it."""
        t = self.text
        parts = []
        while True:
            i = self._skip_ws(i, False)
            if t[i] in "\"'":
                s, i = self._string(i)
                parts.append(s)
            else:
                m = self._BARE.match(t, i)
                if not m:
                    raise ValueError("bad key")
                parts.append(m.group())
                i = m.end()
            i = self._skip_ws(i, False)
            if i < len(t) and t[i] == ".":
                i += 1
                continue
            return parts, i

    def _string(self, i: int) -> tuple[str, int]:
        t = self.text
        q = t[i]
        if t.startswith(q * 3, i):
            end = t.index(q * 3, i + 3)
            while t.startswith(q, end + 3):  # up to two extra quotes may close the string
                end += 1
            return t[i + 3:end], end + 3
        j = i + 1
        buf = []
        while t[j] != q:
            if q == '"' and t[j] == "\\":
                buf.append(t[j:j + 2])
                j += 2
                continue
            buf.append(t[j])
            j += 1
        raw = "".join(buf)
        if q == '"' and "\\" in raw:
            try:
                raw = tomllib.loads(f"x = \"{raw}\"")["x"]
            except tomllib.TOMLDecodeError:
                pass
        return raw, j + 1

    def _value(self, i: int, path: tuple) -> int:
        t = self.text
        c = t[i]
        if c == "[":
            i += 1
            idx = 0
            while True:
                i = self._skip_ws(i, True)
                if t[i] == "]":
                    return i + 1
                self._record(path + (idx,), i)
                i = self._value(i, path + (idx,))
                i = self._skip_ws(i, True)
                if t[i] == ",":
                    i += 1
                    idx += 1
        if c == "{":
            i += 1
            while True:
                i = self._skip_ws(i, False)
                if t[i] == "}":
                    return i + 1
                start = i
                parts, i = self._key(i)
                self._record(path + tuple(parts), start)
                i = self._skip_ws(i, False) + 1  # '='
                i = self._skip_ws(i, False)
                i = self._value(i, path + tuple(parts))
                i = self._skip_ws(i, False)
                if t[i] == ",":
                    i += 1
        if c in "\"'":
            return self._string(i)[1]
        while i < len(t) and t[i] not in ",]}\n#":
            i += 1
        return i

    def _resolve(self, parts: Sequence[str]) -> tuple:
        out: tuple = ()
        for part in parts:
            out += (part,)
            if out in self._aot:
                out += (self._aot[out] - 1,)
        return out

    def _scan(self):
        t = self.text
        table: tuple = ()
        i = 0
        while True:
            i = self._skip_ws(i, True)
            if i >= len(t):
                return
            start = i
            if t[i] == "[":
                aot = t.startswith("[[", i)
                parts, i = self._key(i + (2 if aot else 1))
                i += 2 if aot else 1
                if aot:
                    parent = self._resolve(parts[:-1])
                    arr = parent + (parts[-1],)
                    n = self._aot.get(arr, 0)
                    self._aot[arr] = n + 1
                    self._record(arr, start)
                    table = arr + (n,)
                else:
                    table = self._resolve(parts)
                self._record(table, start)
            else:
                parts, i = self._key(i)
                full = table + tuple(parts)
                for k in range(len(table) + 1, len(full) + 1):
                    self._record(full[:k], start)
                i = self._skip_ws(i, False) + 1  # '='
                i = self._skip_ws(i, False)
                i = self._value(i, full)


# --------------------------------------------------------------------------------------------
# Identities


def parse_identity(text: str) -> Identity:
    """Parse an identity string with the protocol core's strongSwan-style rules (``Identity.parse``).

    ValueError says what is wrong; ``%any`` is not an identity here (see ``_remote_id``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("identity must be a non-empty string")
    try:
        return Identity.parse(text)
    except ValueError as e:
        raise ValueError(str(e) or "unparseable identity") from None


# --------------------------------------------------------------------------------------------
# The configuration objects


@dataclass(frozen=True)
class ChildConfig:
    """One CHILD_SA (``[[connection.child]]``): traffic selectors, ESP proposals, lifetimes."""
    name: str
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    esp_proposals: tuple[Any, ...]          # ikev2 Proposal objects, parsed
    esp_proposals_text: tuple[str, ...]     # the strings as written
    mode: str                               # tunnel | transport
    start_action: str                       # none | start | trap (inherited from the connection)
    dpd_action: str                         # clear | restart | trap (inherited)
    rekey_time: float                       # seconds, 0 = never
    life_time: float
    rand_time: float
    rekey_bytes: int                        # 0 = no volume limit
    life_bytes: int
    rekey_packets: int
    life_packets: int
    replay_window: int                      # packets (32..65536)


@dataclass(frozen=True)
class ConnectionConfig:
    """One ``[[connection]]``: peers, authentication, IKE SA parameters and its children."""
    name: str
    local_addrs: tuple[IPAddress, ...]      # empty = %any
    remote_addrs: tuple[RemoteAddr, ...]    # addresses, networks, FQDNs (str); empty = %any
    local_id: Identity | None               # ikev2.identity.Identity; None: certificate subject
                                            # (auth = pubkey) or the local IP address
    remote_id: IdentityPattern              # exact, wildcard ("*@example.org") or "%any"
    auth: str                               # how we authenticate
    psk: Secret | None                      # Secret(bytes)
    certs: tuple[Any, ...]                  # cryptography x509.Certificate, own cert first
    cert_files: tuple[Path, ...]
    private_key: Secret | None              # Secret(private key object)
    private_key_file: Path | None
    cacerts: tuple[Any, ...]
    cacert_files: tuple[Path, ...]
    ike_proposals: tuple[Any, ...]
    ike_proposals_text: tuple[str, ...]
    start_action: str
    dpd_delay: float                        # seconds, 0 = no DPD
    dpd_action: str
    rekey_time: float
    reauth_time: float
    over_time: float
    rand_time: float
    encap: bool
    mobike: bool
    address_adoption: str | bool            # "auto" | true | false
    fragmentation: bool
    fragment_size: int
    keyingtries: int                        # 0 = forever
    if_id: int | None
    interface: str | None
    children: tuple[ChildConfig, ...]
    pools: tuple[str, ...] = ()             # gateway side: [[pool]] names to hand out from, in order
    vips: tuple[IPAddress, ...] = ()        # client side: request a virtual IP (0.0.0.0 and/or ::)
    dns_file: Path | None = None            # client side: where to write the DNS servers received
    remote_auth: str = "psk"                # how the peer authenticates (default: like us)
    users_file: Path | None = None          # gateway: EAP users (remote_auth = eap-mschapv2/md5)
    eap_identity: str | None = None         # client: EAP identity (default: local_id)
    eap_password: Secret | None = None      # client: EAP password
    transport: str = "udp"                  # udp | tcp | auto (initiating; docs/tcp-encapsulation.md)
    tcp_port: int = 4500                    # the peer's TCP port for transport = tcp/auto
    routes: tuple = ()                      # CIDR networks routed into `interface` while the daemon runs
    ppk_id: str | None = None               # RFC 8784 PPK_ID (docs/crypto.md, PPK)
    ppk: Secret | None = None               # the post-quantum preshared key
    ppk_required: bool = False              # refuse to authenticate without the PPK

    def child(self, name: str) -> ChildConfig:
        for c in self.children:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def remote_any(self) -> bool:
        return not self.remote_addrs

    @property
    def initiate_targets(self) -> tuple[IPAddress | str, ...]:
        """remote_addrs the gateway can initiate to: single addresses and FQDNs."""
        return _initiable(self.remote_addrs)

    def matches_remote_addr(self, addr: IPAddress | str) -> bool:
        """Whether a peer at addr may use this connection (FQDNs match any address here)."""
        if not self.remote_addrs:
            return True
        ip = ipaddress.ip_address(addr)
        for a in self.remote_addrs:
            if isinstance(a, str):
                return True  # resolved at run time by the daemon
            if isinstance(a, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                if ip.version == a.version and ip in a:
                    return True
            elif a == ip:
                return True
        return False


@dataclass(frozen=True)
class PoolConfig:
    """One ``[[pool]]``: virtual IPs for remote-access clients (see vpn_gw.pools, ikev2.cp)."""
    name: str
    addrs: str                              # normalised: "10.99.0.0/24" or "10.99.0.10-10.99.0.200"
    first: IPAddress                        # the range as written (a CIDR's network address ...
    last: IPAddress                         # ... and broadcast address included)
    network: IPNetwork | None               # the CIDR, None for a range
    dns: tuple[IPAddress, ...]              # INTERNAL_IP4/6_DNS
    subnets: tuple[IPNetwork, ...]          # INTERNAL_IP4/6_SUBNET (split tunnelling)
    lease_file: Path
    masquerade: str | None = None           # interface: source-NAT the pool's traffic leaving there

    @property
    def version(self) -> int:
        return self.first.version


@dataclass(frozen=True)
class DdnsConfig:
    """One ``[[ddns]]``: publish the address of a WAN interface under some names."""
    interface: str
    names: tuple[str, ...]
    method: str                             # rfc2136 | dyndns2
    families: tuple[int, ...]
    update_period: float                    # seconds, 0 = only on change
    server: str
    port: int
    zone: str | None = None                 # rfc2136
    tsig_name: str | None = None
    tsig_secret: Secret | None = None
    tsig_algorithm: str = "hmac-sha256"
    ttl: int = 60
    scheme: str = "https"                   # dyndns2
    path: str = "/nic/update"
    user: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None
    user_agent: str = "vpn-gw/0.1"


@dataclass(frozen=True)
class GatewayConfig:
    """The whole file: ``[gateway]`` settings and the connections."""
    control_socket: Path
    listen: tuple[IPAddress, ...]
    ike_port: int
    natt_port: int
    log_level: str
    log_format: str
    half_open_limit: int
    cookie_threshold: int
    connections: tuple[ConnectionConfig, ...]
    dataplane: str = "userspace"            # userspace | xfrm | none
    path_mtu: int = 1500                    # outer path MTU for the tunnel MTU (red-side fragmentation)
    xfrm_fragmentation: str = "nfqueue"     # policy-based xfrm tunnels: nfqueue | off
    xfrm_nfqueue: int = 0x5647              # NFQUEUE number of the red-side fragmenter
    xfrm_nfqueue_fail: str = "open"         # open (bypass) | closed, when the queue reader is not running
    keepalive_interval: float = 20.0        # NAT-T keepalives, seconds, 0 = off
    offload: bool = True                    # userspace ESP: UDP GSO/GRO, coalesced TUN writes
    tcp_port: int = 4500                    # RFC 9329 TCP encapsulation listener, 0 = off
    retransmit_timeout: float = 4.0         # first retransmission of an IKE request, seconds
    retransmit_base: float = 1.8            # back-off factor
    retransmit_tries: int = 5               # retransmissions before giving up
    dns_servers: tuple[IPAddress, ...] = () # resolver for FQDN remote_addrs; () = /etc/resolv.conf
    dns_port: int = 53
    dns_timeout: float = 2.0
    dns_min_ttl: float = 5.0
    dns_max_ttl: float = 3600.0
    ddns: tuple[DdnsConfig, ...] = ()       # [[ddns]] tables
    pools: tuple[PoolConfig, ...] = ()      # [[pool]] tables
    source: Path | None = field(default=None, compare=False)
    warnings: tuple[Problem, ...] = field(default=(), compare=False)

    def connection(self, name: str) -> ConnectionConfig:
        for c in self.connections:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def connection_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.connections)

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Validation machinery


class _Bad(Exception):
    """A converter's complaint; sub is a key-path suffix (e.g. a list index)."""

    def __init__(self, msg: str, sub: tuple = ()):
        super().__init__(msg)
        self.sub = sub


class _BadValue:
    def __repr__(self):
        return "<invalid>"


BAD: Any = _BadValue()
_REQUIRED: Any = object()
_REQUIRED_DEFAULT: Any = object()   # "use the built-in default proposals"


def _ok(*values) -> bool:
    return all(v is not BAD for v in values)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    m = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not m:
        m = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
               dict: "table"}


def _describe(v: Any, show: bool = True) -> str:
    name = _TYPE_NAMES.get(type(v), type(v).__name__)
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    article = "an" if name[0] in "aeiou" else "a"
    if not show:
        return f"{article} {name}"
    r = repr(v)
    if len(r) > 40:
        r = r[:37] + "..."
    return f"{article} {name} ({r})"


class _Ctx:
    def __init__(self, file: str | None, locator: KeyLocator, base_dir: Path):
        self.file = file
        self.loc = locator
        self.base_dir = base_dir
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def problem(self, path: tuple, msg: str) -> Problem:
        return Problem(self.file, self.loc.line(path), format_key_path(path) or None, msg)

    def error(self, path: tuple, msg: str):
        self.errors.append(self.problem(path, msg))

    def warn(self, path: tuple, msg: str):
        self.warnings.append(self.problem(path, msg))

    def path(self, s: str) -> Path:
        p = Path(s).expanduser()
        return p if p.is_absolute() else self.base_dir / p


class _Table:
    """Reads one TOML table: unknown-key check, typed getters that record errors."""

    def __init__(self, ctx: _Ctx, data: dict, path: tuple, known: Sequence[str],
                 elsewhere: Mapping[str, str] | None = None):
        self.ctx, self.data, self.path = ctx, data, path
        for k in data:
            if k in known:
                continue
            if elsewhere and k in elsewhere:
                hint = f" ({elsewhere[k]})"
            else:
                hint = _did_you_mean(k, known)
            where = format_key_path(path) or "the top level"
            ctx.error(path + (k,), f"unknown key '{k}' in {where}{hint}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, conv: Callable[[Any], Any], default: Any = _REQUIRED,
            why: str = "") -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                self.ctx.error(self.path, f"missing required key '{key}'{why}")
                return BAD
            return default
        try:
            return conv(self.data[key])
        except _Bad as e:
            self.ctx.error(self.path + (key,) + e.sub, str(e))
            return BAD


# -- converters --------------------------------------------------------------------------------

def _str(v):
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_describe(v)}")
    return v


def _nonempty_str(v):
    v = _str(v)
    if not v.strip():
        raise _Bad("must not be empty")
    return v


def _bool(v):
    if not isinstance(v, bool):
        hint = " (write true or false, without quotes)" if isinstance(v, str) and \
            v.lower() in ("true", "false", "yes", "no") else ""
        raise _Bad(f"expected a boolean, got {_describe(v)}{hint}")
    return v


def _int(lo: int | None = None, hi: int | None = None):
    def conv(v):
        if isinstance(v, bool) or not isinstance(v, int):
            hint = " (write it without quotes)" if isinstance(v, str) and v.strip().isdigit() else ""
            raise _Bad(f"expected an integer, got {_describe(v)}{hint}")
        if lo is not None and v < lo or hi is not None and v > hi:
            if hi is None:
                raise _Bad(f"must be >= {lo}, got {v}")
            raise _Bad(f"must be between {lo} and {hi}, got {v}")
        return v
    return conv


def _float(lo: float, hi: float):
    def conv(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"expected a number, got {_describe(v)}")
        if not lo <= v <= hi:
            raise _Bad(f"must be between {lo} and {hi}, got {v}")
        return float(v)
    return conv


def _auto_bool(v):
    if isinstance(v, bool) or v == "auto":
        return v
    raise _Bad(f"expected true, false or \"auto\", got {_describe(v)}")


def _choice(choices: Sequence[str]):
    def conv(v):
        v = _str(v)
        if v not in choices:
            raise _Bad(f"invalid value {v!r}: must be one of {', '.join(choices)}"
                       f"{_did_you_mean(v, choices)}")
        return v
    return conv


def _duration(v):
    try:
        return parse_duration(v)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _size(v):
    try:
        return parse_size(v)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _list(conv: Callable[[Any], Any], *, nonempty: bool = True, unique: bool = True,
          example: str = '["..."]'):
    def lconv(v):
        if not isinstance(v, list):
            raise _Bad(f"expected an array, got {_describe(v)}; write e.g. {example}")
        if nonempty and not v:
            raise _Bad("must not be empty")
        out = []
        for i, item in enumerate(v):
            try:
                x = conv(item)
            except _Bad as e:
                raise _Bad(str(e), (i,) + e.sub) from None
            if unique and x in out:
                raise _Bad(f"duplicate entry {item!r}", (i,))
            out.append(x)
        return tuple(out)
    return lconv


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _name(v):
    v = _str(v)
    if not _NAME_RE.fullmatch(v):
        raise _Bad(f"invalid name {v!r}: use 1-64 letters, digits, '.', '_' or '-', "
                   f"starting with a letter or digit")
    return v


def _ip(v):
    v = _str(v)
    try:
        return ipaddress.ip_address(v.strip())
    except ValueError:
        raise _Bad(f"{v!r} is not an IP address") from None


_HOST_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                      r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def _local_addr(v):
    v = _str(v)
    if v == "%any":
        return None
    return _ip(v)


def _remote_addr(v):
    v = _str(v).strip()
    if v == "%any":
        return None
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        pass
    if "/" in v:
        try:
            return ipaddress.ip_network(v, strict=True)
        except ValueError as e:
            raise _Bad(f"{v!r} is not a valid address or CIDR network ({e})") from None
    if re.fullmatch(r"[0-9.]+", v) or ":" in v:
        raise _Bad(f"{v!r} is not a valid IP address")
    if not _HOST_RE.fullmatch(v):
        raise _Bad(f"{v!r} is neither an IP address, a CIDR network, an FQDN nor %any")
    return v


def _ts(v):
    v = _str(v).strip()
    try:
        return ipaddress.ip_network(v, strict=True)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(v, strict=False)
    except ValueError:
        hint = " (traffic selectors are CIDR subnets like 10.1.0.0/24 or 2001:db8::/64)"
        if v in ("dynamic", "%dynamic"):
            hint = " ('dynamic' is not supported: list the subnets explicitly)"
        raise _Bad(f"{v!r} is not a valid CIDR subnet{hint}") from None
    raise _Bad(f"{v!r} has host bits set (did you mean '{net}'?)")


def _local_id(v):
    v = _nonempty_str(v).strip()
    if v == "%any" or any(c in v for c in "*?"):
        raise _Bad(f"local_id must be one exact identity, not {v!r}")
    try:
        return parse_identity(v)
    except ValueError as e:
        raise _Bad(f"invalid identity {v!r}: {e}") from None


def _remote_id(v):
    v = _nonempty_str(v).strip()
    if v not in ("%any", "*") and not any(c in v for c in "*?"):
        try:
            parse_identity(v)
        except ValueError as e:
            raise _Bad(f"invalid identity {v!r}: {e}") from None
    return IdentityPattern(v)


def _proposals(protocol: str):
    def conv(v):
        texts = _list(_nonempty_str, example='["aes256gcm16-prfsha256-x25519"]')(v)
        return texts, _parse_proposals(texts, protocol)
    return conv


def _parse_proposals(texts: Sequence[str], protocol: str) -> tuple:
    # Imported lazily: the proposal parser lives in the protocol core.
    from ikev2.constants import ProtocolId
    from ikev2.crypto.proposals import parse_proposal
    from ikev2.errors import ProposalError
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(parse_proposal(text.strip(), ProtocolId[protocol]))
        except ProposalError as e:
            msg = str(e)
            if text.strip() not in msg:
                msg += f" (in proposal {text!r})"
            raise _Bad(msg, (i,)) from None
    return tuple(out)


def _read_file(ctx: _Ctx, s: str, what: str) -> tuple[Path, bytes]:
    p = ctx.path(s)
    try:
        return p, p.read_bytes()
    except OSError as e:
        raise _Bad(f"cannot read {what} {str(p)!r}: {e.strerror or e}") from None


def _check_private_perms(ctx: _Ctx, path: tuple, p: Path, what: str):
    try:
        mode = p.stat().st_mode
    except OSError:  # pragma: no cover
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        ctx.warn(path, f"{what} file {str(p)!r} is readable by group/others "
                       f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")


def _psk(ctx: _Ctx, path: tuple):
    def conv(v):
        if not isinstance(v, str):
            raise _Bad(f"expected a string, got {_describe(v, show=False)}")
        if v.startswith("file:"):
            p, data = _read_file(ctx, v[5:].strip(), "PSK file")
            _check_private_perms(ctx, path, p, "PSK")
            text = data.rstrip(b"\r\n")
            # a file may itself hold 0x/0s notation
            try:
                s = text.decode()
            except UnicodeDecodeError:
                value = text
            else:
                value = _decode_psk(s) if s.startswith(("0x", "0s")) else text
        else:
            value = _decode_psk(v)
        if len(value) < PSK_MIN_BYTES:
            raise _Bad(f"pre-shared key is {len(value)} bytes; at least {PSK_MIN_BYTES} are required "
                       f"(use a long random key, e.g. `head -c 32 /dev/urandom | base64`)")
        if len(value) < PSK_WARN_BYTES:
            ctx.warn(path, f"pre-shared key is only {len(value)} bytes; use at least "
                           f"{PSK_WARN_BYTES} random bytes")
        return Secret(bytes(value))
    return conv


PPK_MIN_BYTES = 32  # RFC 8784 3: a PPK should have at least 256 bits of entropy


def _ppk(ctx: _Ctx, path: tuple):
    """A post-quantum preshared key: like a PSK (inline, 0x, 0s, file:), at least 32 bytes."""
    as_psk = _psk(ctx, path)

    def conv(v):
        secret = as_psk(v)
        n = len(secret.reveal())
        if n < PPK_MIN_BYTES:
            raise _Bad(f"PPK is {n} bytes; RFC 8784 wants at least {PPK_MIN_BYTES} random bytes "
                       f"(e.g. `head -c 32 /dev/urandom | base64` and \"0s...\")")
        return secret
    return conv


def _decode_psk(s: str) -> bytes:
    if s.startswith("0x"):
        try:
            return bytes.fromhex(s[2:])
        except ValueError:
            raise _Bad("pre-shared key starts with '0x' but is not valid hex") from None
    if s.startswith("0s"):
        try:
            return base64.b64decode(s[2:], validate=True)
        except (binascii.Error, ValueError):
            raise _Bad("pre-shared key starts with '0s' but is not valid base64") from None
    return s.encode()


def _certs(ctx: _Ctx):
    def conv(v):
        files = _list(_nonempty_str, example='["/etc/vpn-gw/hq.pem"]')(v)
        from cryptography import x509
        paths, certs = [], []
        for i, s in enumerate(files):
            try:
                p, data = _read_file(ctx, s, "certificate file")
            except _Bad as e:
                raise _Bad(str(e), (i,)) from None
            try:
                loaded = x509.load_pem_x509_certificates(data)
            except ValueError:
                raise _Bad(f"{str(p)!r} is not a PEM certificate file (expected "
                           f"-----BEGIN CERTIFICATE-----)", (i,)) from None
            paths.append(p)
            certs.extend(loaded)
        return tuple(paths), tuple(certs)
    return conv


def _private_key(ctx: _Ctx, path: tuple):
    def conv(v):
        s = _nonempty_str(v)
        from cryptography.hazmat.primitives import serialization
        p, data = _read_file(ctx, s, "private key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise _Bad(f"private key {str(p)!r} is encrypted; vpn-gw needs an unencrypted key "
                       f"(protect it with file mode 0600 instead)") from None
        except (ValueError, Exception):
            raise _Bad(f"{str(p)!r} is not a PEM private key") from None
        _check_private_perms(ctx, path, p, "private key")
        return p, Secret(key)
    return conv


# -- key sets ----------------------------------------------------------------------------------

TOP_KEYS = ("gateway", "connection", "pool", "ddns")
DDNS_KEYS = ("interface", "names", "method", "families", "update_period", "server", "port", "zone",
             "tsig_name", "tsig_secret", "tsig_algorithm", "ttl", "scheme", "path", "user", "password",
             "ca_file", "user_agent")
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")
GATEWAY_KEYS = ("control_socket", "listen", "ike_port", "natt_port", "log_level", "log_format",
                "half_open_limit", "cookie_threshold", "dataplane", "path_mtu", "keepalive_interval",
                "xfrm_fragmentation", "xfrm_nfqueue", "xfrm_nfqueue_fail", "offload", "retransmit_timeout", "retransmit_base", "retransmit_tries", "dns_servers", "dns_port",
                "dns_timeout", "dns_min_ttl", "dns_max_ttl", "tcp_port")
CONNECTION_KEYS = (
    "name", "local_addrs", "remote_addrs", "local_id", "remote_id", "auth", "remote_auth",
    "users_file", "eap_identity", "eap_password", "psk", "certs",
    "private_key", "cacerts", "ike_proposals", "start_action", "dpd_delay", "dpd_action",
    "rekey_time", "reauth_time", "over_time", "rand_time", "encap", "mobike", "address_adoption", "fragmentation",
    "fragment_size", "keyingtries", "if_id", "interface", "routes", "pools", "vips", "dns_file", "transport",
    "tcp_port", "ppk_id", "ppk", "ppk_required", "child",
)
CHILD_KEYS = (
    "name", "local_ts", "remote_ts", "esp_proposals", "mode", "start_action", "dpd_action",
    "rekey_time", "life_time", "rand_time", "rekey_bytes", "life_bytes", "rekey_packets",
    "life_packets", "replay_window",
)

_CONN_ONLY_HINT = {k: f"'{k}' is a connection key; keys written after [[connection.child]] belong "
                      f"to that child, so move it above the first [[connection.child]]"
                   for k in CONNECTION_KEYS if k not in CHILD_KEYS}
_GW_HINT = {k: f"'{k}' belongs in [gateway]" for k in GATEWAY_KEYS}
_CONN_HINT = {k: f"'{k}' belongs in a [[connection]] table" for k in CONNECTION_KEYS}
_CHILD_HINT = {k: f"'{k}' belongs in a [[connection.child]] table" for k in CHILD_KEYS
               if k not in CONNECTION_KEYS}
POOL_KEYS = ("name", "addrs", "dns", "subnets", "lease_file", "masquerade")
_POOL_HINT = {k: f"'{k}' belongs in a [[pool]] table (a connection refers to pools by name "
                 f"with pools = [...])" for k in POOL_KEYS if k != "name"}

_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def _ifname(v):
    v = _str(v)
    if not _IFNAME_RE.fullmatch(v) or v in (".", ".."):
        raise _Bad(f"invalid interface name {v!r}: 1-15 characters of letters, digits, "
                   f"'_', '-', '.'")
    return v


def _tables(v, what: str):
    """An array of tables; a plain table (single [x] instead of [[x]]) is a type error."""
    if isinstance(v, dict):
        raise _Bad(f"expected an array of tables: write [[{what}]] instead of [{what}]")
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise _Bad(f"expected an array of tables ([[{what}]]), got {_describe(v)}")
    return v


# -- pools (remote access) ---------------------------------------------------------------------

# Blocks a pool must stay out of: addresses a client cannot use as its own.
_NOT_FOR_POOLS = tuple((ipaddress.ip_network(n), why) for n, why in (
    ("0.0.0.0/8", "'this network'"), ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved, includes 255.255.255.255"),
    ("::/127", "unspecified and loopback"), ("fe80::/10", "link-local"), ("ff00::/8", "multicast"),
))


def _span_overlaps(first, last, net) -> bool:
    return first.version == net.version and int(first) <= int(net[-1]) and int(net[0]) <= int(last)


def _pool_addrs(v):
    from vpn_gw.pools import parse_pool_addrs
    v = _str(v)
    try:
        first, last, net = parse_pool_addrs(v)
    except ValueError as e:
        raise _Bad(str(e)) from None
    for block, why in _NOT_FOR_POOLS:
        if _span_overlaps(first, last, block):
            raise _Bad(f"{v!r} overlaps {block} ({why}): a pool must hold unicast addresses a "
                       f"client can use")
    return first, last, net


def _unicast_ip(v):
    a = _ip(v)
    if a.is_unspecified or a.is_multicast or a.is_loopback:
        raise _Bad(f"{a} is not a unicast address")
    return a


_VIP_HINTS = {"%any": "0.0.0.0", "%any4": "0.0.0.0", "%config": "0.0.0.0", "%config4": "0.0.0.0",
              "%cfg": "0.0.0.0", "%any6": "::", "%config6": "::"}


def _vip(v):
    s = _str(v).strip()
    if s in _VIP_HINTS:
        raise _Bad(f"write {_VIP_HINTS[s]!r} instead of {s!r} (vips takes 0.0.0.0 for an IPv4 "
                   f"and :: for an IPv6 virtual IP)")
    try:
        a = ipaddress.ip_address(s)
    except ValueError:
        raise _Bad(f"{s!r} is not an IP address; write \"0.0.0.0\" to request an IPv4 virtual IP "
                   f"or \"::\" for IPv6") from None
    if not a.is_unspecified:
        any_ = "0.0.0.0" if a.version == 4 else "::"
        raise _Bad(f"{s!r}: only \"0.0.0.0\" and \"::\" are supported (request any IPv4/IPv6 "
                   f"address; the gateway picks it and gives the same one back on reconnect); "
                   f"did you mean {any_!r}?")
    return a


def _interface_addrs(items: Iterable[Any]) -> list[tuple[str | None, Any]]:
    """Normalise parse_config's interface_addrs to (name or None, ip_interface)."""
    out = []
    for item in items:
        name = None
        if isinstance(item, tuple):
            name, item = item
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            item = f"{item.network_address}/{item.prefixlen}"
        out.append((name, ipaddress.ip_interface(item)))
    return out


def _at_line(ctx: _Ctx, path: tuple) -> str:
    line = ctx.loc.line(path)
    return f" (line {line})" if line else ""


def _pool(ctx: _Ctx, d: dict, path: tuple) -> PoolConfig | None:
    from vpn_gw.pools import default_lease_file
    nerr = len(ctx.errors)
    t = _Table(ctx, d, path, POOL_KEYS, {**_GW_HINT, **_CONN_HINT, **_CHILD_HINT})
    name = t.get("name", _name)
    addrs = t.get("addrs", _pool_addrs, why=' (a CIDR like "10.99.0.0/24" or a range like '
                                            '"10.99.0.10-10.99.0.200")')
    dns = t.get("dns", _list(_unicast_ip, example='["10.1.0.53"]'), ())
    subnets = t.get("subnets", _list(_ts, example='["10.1.0.0/24"]'), ())
    lease_file = t.get("lease_file", _nonempty_str, None)
    masquerade = t.get("masquerade", _ifname, None)
    if len(ctx.errors) > nerr:
        return None
    first, last, net = addrs
    return PoolConfig(masquerade=masquerade, name=name, addrs=str(net) if net is not None else f"{first}-{last}",
                      first=first, last=last, network=net, dns=dns, subnets=subnets,
                      lease_file=ctx.path(lease_file) if lease_file is not None
                      else default_lease_file(name))


def _family(v):
    if v not in (4, 6) or isinstance(v, bool):
        raise _Bad(f"expected 4 or 6, got {_describe(v)}")
    return v


def _fqdn(v):
    v = _str(v).rstrip(".")
    if not _HOST_RE.fullmatch(v) or "." not in v:
        raise _Bad(f"{v!r} is not a fully qualified domain name")
    return v


def _ddns_tables(ctx: _Ctx, top: _Table) -> list[DdnsConfig]:
    raw = top.get("ddns", lambda v: _tables(v, "ddns"), [])
    if raw is BAD:
        return []
    out = []
    for k, d in enumerate(raw):
        path = ("ddns", k)
        nerr = len(ctx.errors)
        t = _Table(ctx, d, path, DDNS_KEYS, {**_GW_HINT, **_CONN_HINT})
        interface = t.get("interface", _ifname)
        names = t.get("names", _list(_fqdn, example='["gw.example.org"]'))
        method = t.get("method", _choice(("rfc2136", "dyndns2")))
        families = t.get("families", _list(_family, example="[4, 6]"), (4, 6) if method == "rfc2136" else (4,))
        update_period = t.get("update_period", _duration, 3600.0 if method == "rfc2136" else 86400.0)
        server = t.get("server", _nonempty_str)
        scheme = t.get("scheme", _choice(("https", "http")), "https")
        default_port = 53 if method == "rfc2136" else (443 if scheme == "https" else 80)
        port = t.get("port", _int(1, 65535), default_port)
        kw = {}
        if method == "rfc2136":
            kw["zone"] = t.get("zone", _fqdn)
            kw["tsig_name"] = t.get("tsig_name", _nonempty_str)
            kw["tsig_secret"] = t.get("tsig_secret", _psk(ctx, path + ("tsig_secret",)))
            kw["tsig_algorithm"] = t.get("tsig_algorithm", _choice(TSIG_ALGORITHMS), "hmac-sha256")
            kw["ttl"] = t.get("ttl", _int(0, 86400), 60)
            if _ok(names, kw["zone"]) and names:
                for j, n in enumerate(names):
                    if not (n == kw["zone"] or n.endswith("." + kw["zone"])):
                        ctx.error(path + ("names", j), f"{n!r} is not inside zone {kw['zone']!r}")
            for k2 in ("user", "password", "ca_file", "path", "scheme"):
                if t.has(k2):
                    ctx.error(path + (k2,), f"'{k2}' is for method = \"dyndns2\", not \"rfc2136\"")
        elif method == "dyndns2":
            kw["user"] = t.get("user", _nonempty_str)
            kw["password"] = t.get("password", _psk(ctx, path + ("password",)))
            kw["path"] = t.get("path", _nonempty_str, "/nic/update")
            kw["user_agent"] = t.get("user_agent", _nonempty_str, "vpn-gw/0.1")
            ca = t.get("ca_file", _nonempty_str, None)
            kw["ca_file"] = ctx.path(ca) if ca not in (None, BAD) else None
            kw["scheme"] = scheme
            for k2 in ("zone", "tsig_name", "tsig_secret", "tsig_algorithm", "ttl"):
                if t.has(k2):
                    ctx.error(path + (k2,), f"'{k2}' is for method = \"rfc2136\", not \"dyndns2\"")
        if len(ctx.errors) > nerr:
            continue
        out.append(DdnsConfig(interface=interface, names=names, method=method, families=families,
                              update_period=update_period, server=server, port=port, **kw))
    return out


def _pools(ctx: _Ctx, top: _Table) -> tuple[list | None, list[tuple[int, PoolConfig]]]:
    """The [[pool]] tables: (raw tables or None if not an array of tables, [(index, PoolConfig)])."""
    raw = top.get("pool", lambda v: _tables(v, "pool"), [])
    if raw is BAD:
        return None, []
    out: list[tuple[int, PoolConfig]] = []
    seen: dict[str, int] = {}
    for k, pd in enumerate(raw):
        path = ("pool", k)
        name = pd.get("name")
        if isinstance(name, str):
            if name in seen:
                first = ctx.loc.line(("pool", seen[name], "name"))
                ctx.error(path + ("name",), f"duplicate pool name {name!r}"
                          + (f" (first defined at line {first})" if first else ""))
            else:
                seen[name] = k
        pc = _pool(ctx, pd, path)
        if pc is None:
            continue
        for k2, other in out:
            if pc.version == other.version and int(pc.first) <= int(other.last) and \
                    int(other.first) <= int(pc.last):
                ctx.error(path + ("addrs",), f"pool {pc.name!r} ({pc.addrs}) overlaps pool "
                          f"{other.name!r} ({other.addrs}){_at_line(ctx, ('pool', k2, 'addrs'))}")
            if pc.lease_file == other.lease_file:
                ctx.error(path + ("lease_file",), f"lease_file {str(pc.lease_file)!r} is also used "
                          f"by pool {other.name!r}{_at_line(ctx, ('pool', k2))}; each pool needs "
                          f"its own")
        out.append((k, pc))
    return raw, out


def _check_pools(ctx: _Ctx, pools_raw: list | None, pools: list[tuple[int, PoolConfig]],
                 conns_raw, connections: Sequence[ConnectionConfig]):
    """Connections' pool names exist; pools stay clear of protected and interface subnets."""
    conns_raw = conns_raw if conns_raw is not BAD else []
    names = [pd.get("name") for pd in (pools_raw or []) if isinstance(pd.get("name"), str)]
    used: set[str] = set()
    for i, cd in enumerate(conns_raw):
        refs = cd.get("pools")
        if not isinstance(refs, list):
            continue
        for j, n in enumerate(refs):
            if not isinstance(n, str):
                continue
            used.add(n)
            if pools_raw is not None and n not in names:
                hint = _did_you_mean(n, names) or (f" (defined pools: {', '.join(names)})" if names
                                                   else " (no [[pool]] is defined)")
                ctx.error(("connection", i, "pools", j), f"unknown pool {n!r}{hint}")
    index = {}
    for i, cd in enumerate(conns_raw):
        index.setdefault(cd.get("name"), i)
    ifaces = getattr(ctx, "interface_addrs", ())
    for k, pc in pools:
        path = ("pool", k, "addrs")
        if pc.name not in used:
            ctx.warn(("pool", k, "name"), f"pool {pc.name!r} is not used by any connection "
                                          f"(list it in a connection's pools)")
        for c in connections:
            i = index.get(c.name)
            for j, ch in enumerate(c.children):
                for m, ts in enumerate(ch.local_ts):
                    if ts.prefixlen == 0 or not _span_overlaps(pc.first, pc.last, ts):
                        continue  # 0.0.0.0/0 and ::/0 mean "everything" (full tunnel), no subnet
                    where = _at_line(ctx, ("connection", i, "child", j, "local_ts", m)) \
                        if i is not None else ""
                    ctx.error(path, f"pool {pc.name!r} ({pc.addrs}) overlaps local_ts {ts} of "
                                    f"connection {c.name!r} child {ch.name!r}{where}: the "
                                    f"gateway's protected subnets cannot be handed out to clients")
        reported = set()
        for ifname, iface in ifaces:
            net = iface.network
            if (ifname, net) in reported or not _span_overlaps(pc.first, pc.last, net):
                continue
            reported.add((ifname, net))
            who = f"interface {ifname}" if ifname else "a gateway interface"
            ctx.error(path, f"pool {pc.name!r} ({pc.addrs}) overlaps {net}, the subnet of {who} "
                            f"(address {iface})")


# -- the loader --------------------------------------------------------------------------------

def load_config(path: str | os.PathLike, *, interface_addrs: Iterable[Any] = ()) -> GatewayConfig:
    """Read and validate a configuration file. Raises ConfigError.

    ``interface_addrs``: the addresses on the gateway's interfaces (see ``parse_config``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read configuration: {e.strerror or e}", file=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError("file is not valid UTF-8", file=str(path), line=line) from None
    return parse_config(text, str(path), p.resolve().parent, _source=p,
                        interface_addrs=interface_addrs)


_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def parse_config(text: str, filename: str | None = "<string>", base_dir: str | os.PathLike | None = None,
                 *, _source: Path | None = None,
                 interface_addrs: Iterable[Any] = ()) -> GatewayConfig:
    """Validate configuration text. Relative paths in it resolve against base_dir (default cwd).

    ``interface_addrs``: the addresses on the gateway's interfaces, each an interface like
    ``"192.0.2.1/24"`` (str or ``ipaddress`` interface/network) or a pair ``("eth0",
    "192.0.2.1/24")``; no [[pool]] may overlap their subnets. The daemon passes the real ones;
    ``check-config`` and tests may pass none."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        line = None
        m = _TOML_POS.search(msg)
        if m:
            line = int(m.group(1))
            msg = msg[:m.start()] + f" (column {m.group(2)})"
        raise ConfigError(f"invalid TOML: {msg}", file=filename, line=line) from None
    ctx = _Ctx(filename, KeyLocator(text), Path(base_dir) if base_dir else Path.cwd())
    ctx.interface_addrs = _interface_addrs(interface_addrs)
    cfg = _build(ctx, data, _source)
    if ctx.errors or cfg is None:
        errors = sorted(ctx.errors, key=lambda p: p.line if p.line is not None else 1 << 30)
        raise ConfigError(errors[0], problems=errors)
    return cfg


def _build(ctx: _Ctx, data: dict, source: Path | None) -> GatewayConfig | None:
    top = _Table(ctx, data, (), TOP_KEYS, {**_GW_HINT, **_CONN_HINT, **_CHILD_HINT, **_POOL_HINT})
    gw_data = data.get("gateway", {})
    if not isinstance(gw_data, dict):
        ctx.error(("gateway",), f"expected a table ([gateway]), got {_describe(gw_data)}")
        gw_data = {}
    g = _Table(ctx, gw_data, ("gateway",), GATEWAY_KEYS, _CONN_HINT)
    control_socket = g.get("control_socket", _nonempty_str, DEFAULT_CONTROL_SOCKET)
    if control_socket is not BAD:
        control_socket = ctx.path(control_socket)
    listen = g.get("listen", _list(_ip, example='["0.0.0.0", "::"]'),
                   (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")))
    ike_port = g.get("ike_port", _int(1, 65535), 500)
    natt_port = g.get("natt_port", _int(1, 65535), 4500)
    if _ok(ike_port, natt_port) and ike_port == natt_port:
        ctx.error(("gateway", "natt_port"), f"must differ from ike_port ({ike_port})")
    log_level = g.get("log_level", _choice(LOG_LEVELS), "info")
    log_format = g.get("log_format", _choice(LOG_FORMATS), "console")
    half_open_limit = g.get("half_open_limit", _int(1), 1000)
    cookie_threshold = g.get("cookie_threshold", _int(0), 100)
    if _ok(half_open_limit, cookie_threshold) and cookie_threshold >= half_open_limit:
        ctx.warn(("gateway", "cookie_threshold"), f"cookie_threshold ({cookie_threshold}) is not "
                 f"below half_open_limit ({half_open_limit}): COOKIEs will never be requested")

    dataplane = g.get("dataplane", _choice(DATAPLANES), "userspace")
    path_mtu = g.get("path_mtu", _int(576, 65535), 1500)
    xfrm_fragmentation = g.get("xfrm_fragmentation", _choice(("nfqueue", "off")), "nfqueue")
    xfrm_nfqueue = g.get("xfrm_nfqueue", _int(0, 65535), 0x5647)
    xfrm_nfqueue_fail = g.get("xfrm_nfqueue_fail", _choice(("open", "closed")), "open")
    keepalive_interval = g.get("keepalive_interval", _duration, 20.0)
    offload = g.get("offload", _bool, True)
    tcp_port = g.get("tcp_port", _int(0, 65535), 4500)
    retransmit_timeout = g.get("retransmit_timeout", _duration, 4.0)
    retransmit_base = g.get("retransmit_base", _float(1.0, 4.0), 1.8)
    retransmit_tries = g.get("retransmit_tries", _int(0, 20), 5)
    if _ok(retransmit_timeout) and retransmit_timeout <= 0:
        ctx.error(("gateway", "retransmit_timeout"), "must be more than 0s")
    dns_servers = g.get("dns_servers", _list(_ip, example='["192.0.2.53"]'), ())
    dns_port = g.get("dns_port", _int(1, 65535), 53)
    dns_timeout = g.get("dns_timeout", _duration, 2.0)
    dns_min_ttl = g.get("dns_min_ttl", _duration, 5.0)
    dns_max_ttl = g.get("dns_max_ttl", _duration, 3600.0)
    if _ok(dns_min_ttl, dns_max_ttl) and dns_min_ttl > dns_max_ttl:
        ctx.error(("gateway", "dns_min_ttl"), f"dns_min_ttl ({dns_min_ttl:g}s) is above dns_max_ttl ({dns_max_ttl:g}s)")
    ddns = _ddns_tables(ctx, top)

    pools_raw, pools = _pools(ctx, top)
    conns_raw = top.get("connection", lambda v: _tables(v, "connection"), [])
    connections = []
    seen: dict[str, int] = {}
    if conns_raw is not BAD:
        for i, cd in enumerate(conns_raw):
            name = cd.get("name")
            if isinstance(name, str):
                if name in seen:
                    first = ctx.loc.line(("connection", seen[name], "name"))
                    ctx.error(("connection", i, "name"), f"duplicate connection name {name!r}"
                              + (f" (first defined at line {first})" if first else ""))
                else:
                    seen[name] = i
            conn = _connection(ctx, cd, ("connection", i), listen)
            if conn is not None:
                connections.append(conn)
        if not conns_raw:
            ctx.warn((), "no connections defined")
    _check_interfaces(ctx, connections)
    if _ok(dataplane) and dataplane not in ("userspace", "none"):
        # TCP encapsulation carries ESP in the TCP stream: only our userspace data plane can.
        names = [cd.get("name") for cd in conns_raw] if conns_raw is not BAD else []
        for c in connections:
            if c.transport != "udp":
                ctx.error(("connection", names.index(c.name), "transport"),
                          f'transport = "{c.transport}" needs dataplane = "userspace" (ESP travels '
                          f'in the TCP connection)')
    _check_pools(ctx, pools_raw, pools, conns_raw, connections)
    if ctx.errors:
        return None
    warnings = sorted(ctx.warnings, key=lambda p: p.line if p.line is not None else 1 << 30)
    return GatewayConfig(control_socket=control_socket, listen=listen, ike_port=ike_port,
                         natt_port=natt_port, log_level=log_level, log_format=log_format,
                         half_open_limit=half_open_limit, cookie_threshold=cookie_threshold,
                         connections=tuple(connections), dataplane=dataplane, path_mtu=path_mtu,
                         xfrm_fragmentation=xfrm_fragmentation, xfrm_nfqueue=xfrm_nfqueue,
                         xfrm_nfqueue_fail=xfrm_nfqueue_fail,
                         keepalive_interval=keepalive_interval, retransmit_timeout=retransmit_timeout,
                         offload=offload,
                         tcp_port=tcp_port,
                         retransmit_base=retransmit_base, retransmit_tries=retransmit_tries,
                         pools=tuple(pc for _, pc in pools), dns_servers=dns_servers, dns_port=dns_port,
                         dns_timeout=dns_timeout, dns_min_ttl=dns_min_ttl, dns_max_ttl=dns_max_ttl,
                         ddns=tuple(ddns), source=source,
                         warnings=tuple(warnings))


def _connection(ctx: _Ctx, d: dict, path: tuple, listen) -> ConnectionConfig | None:
    nerr = len(ctx.errors)
    t = _Table(ctx, d, path, CONNECTION_KEYS, {**_GW_HINT, **_CHILD_HINT, **_POOL_HINT})
    name = t.get("name", _name)
    local_addrs = t.get("local_addrs", _list(_local_addr, example='["192.0.2.1"]'), (None,))
    remote_addrs = t.get("remote_addrs", _list(_remote_addr, example='["198.51.100.1"]'), (None,))
    local_addrs = _any_list(ctx, path + ("local_addrs",), local_addrs)
    remote_addrs = _any_list(ctx, path + ("remote_addrs",), remote_addrs)
    local_id = t.get("local_id", _local_id, None)
    remote_id = t.get("remote_id", _remote_id, IdentityPattern("%any"))
    auth = t.get("auth", _choice(AUTH_METHODS), "psk")

    psk = t.get("psk", _psk(ctx, path + ("psk",)), None)
    cc = t.get("certs", _certs(ctx), ((), ()))
    cert_files, certs = (BAD, BAD) if cc is BAD else cc
    pk = t.get("private_key", _private_key(ctx, path + ("private_key",)), (None, None))
    private_key_file, private_key = (BAD, BAD) if pk is BAD else pk
    ca = t.get("cacerts", _certs(ctx), ((), ()))
    cacert_files, cacerts = (BAD, BAD) if ca is BAD else ca

    remote_auth = t.get("remote_auth", _choice(AUTH_METHODS), None)
    users_file = t.get("users_file", _nonempty_str, None)
    if users_file is not None and users_file is not BAD:
        users_file = ctx.path(users_file)
        from ikev2.eap import UserDB, UserFileError
        try:
            for w in UserDB.load(str(users_file)).warnings:
                ctx.warn(path + ("users_file",), w)
        except (UserFileError, OSError) as e:
            ctx.error(path + ("users_file",), str(e))
    eap_identity = t.get("eap_identity", _nonempty_str, None)
    eap_password = t.get("eap_password", _psk(ctx, path + ("eap_password",)), None)
    if auth is not BAD and remote_auth is not BAD:
        if remote_auth is None:
            # strongSwan's local/remote sections in one key: by default the peer authenticates
            # like us; a client that uses EAP verifies the gateway's certificate (or its PSK).
            if auth in EAP_METHODS:
                remote_auth = "pubkey" if t.has("cacerts") else "psk"
            else:
                remote_auth = auth
        need: dict[str, str] = {}
        if "psk" in (auth, remote_auth):
            need["psk"] = "a pre-shared key"
        if auth in ("pubkey", "eap-tls"):
            need["certs"] = "our certificate"
            need["private_key"] = "our private key"
        if remote_auth in ("pubkey", "eap-tls"):
            need["cacerts"] = "the CAs that sign the peer's certificate"
        if auth in ("eap-mschapv2", "eap-md5") and remote_auth not in EAP_METHODS:
            need["eap_password"] = "the EAP password"
        if remote_auth in ("eap-mschapv2", "eap-md5"):
            need["users_file"] = "the EAP users"
        how = f'auth = "{auth}"' + (f', remote_auth = "{remote_auth}"' if remote_auth != auth else "")
        for k, what in need.items():
            if not t.has(k):
                ctx.error(path, f"missing required key '{k}' ({how} needs {what})")
        for k in ("psk", "certs", "private_key", "cacerts", "eap_password", "users_file", "eap_identity"):
            if t.has(k) and k not in need and not (k == "eap_identity" and auth in EAP_METHODS):
                ctx.error(path + (k,), f"'{k}' is not used with {how}")
        if auth in EAP_METHODS and remote_auth in EAP_METHODS and (auth, remote_auth) != ("eap-tls", "eap-tls"):
            ctx.error(path + ("remote_auth",), "only one side of a connection can use EAP: the "
                                               "client (auth) or the gateway's peers (remote_auth); "
                                               "both \"eap-tls\" means EAP-only (RFC 5998)")
    if _ok(certs, private_key) and certs and private_key is not None:
        _check_key_matches(ctx, path, certs[0], private_key.reveal())

    ike = t.get("ike_proposals", _proposals("IKE"), _REQUIRED_DEFAULT)
    if ike is _REQUIRED_DEFAULT:
        ike = _default_proposals(ctx, path + ("ike_proposals",), DEFAULT_IKE_PROPOSALS, "IKE")
    ike_text, ike_parsed = (BAD, BAD) if ike is BAD else ike

    start_action = t.get("start_action", _choice(START_ACTIONS), "none")
    dpd_delay = t.get("dpd_delay", _duration, 0.0)
    dpd_action = t.get("dpd_action", _choice(DPD_ACTIONS), "clear")
    rekey_time = t.get("rekey_time", _duration, 4 * 3600.0)
    reauth_time = t.get("reauth_time", _duration, 0.0)
    over_time = t.get("over_time", _duration, None)
    rand_time = t.get("rand_time", _duration, None)
    if _ok(rekey_time, reauth_time, over_time):
        if over_time is None:
            over_time = round(0.1 * max(rekey_time, reauth_time), 3)
        if rand_time is None:
            rand_time = over_time
        if rand_time is not BAD:
            limits = [x for x in (rekey_time, reauth_time) if x > 0]
            if limits and rand_time >= min(limits):
                which = "rekey_time" if min(limits) == rekey_time else "reauth_time"
                ctx.error(path + ("rand_time",) if t.has("rand_time") else path + ("over_time",),
                          f"rand_time ({rand_time:g}s) must be less than {which} ({min(limits):g}s)")
    encap = t.get("encap", _bool, False)
    mobike = t.get("mobike", _bool, True)
    address_adoption = t.get("address_adoption", _auto_bool, "auto")
    fragmentation = t.get("fragmentation", _bool, True)
    ppk_id = t.get("ppk_id", _nonempty_str, None)
    ppk = t.get("ppk", _ppk(ctx, path + ("ppk",)), None)
    ppk_required = t.get("ppk_required", _bool, False)
    if ppk_id is not BAD and ppk is not BAD:
        if (ppk_id is None) != (ppk is None):
            have, miss = ("ppk_id", "ppk") if ppk is None else ("ppk", "ppk_id")
            ctx.error(path + (have,), f"'{have}' needs '{miss}' too (RFC 8784: the PPK and its PPK_ID)")
        if ppk_required is True and ppk is None:
            ctx.error(path + ("ppk_required",), "ppk_required = true needs 'ppk' and 'ppk_id'")
    fragment_size = t.get("fragment_size", _int(512, 65535), 1280)
    keyingtries = t.get("keyingtries", _int(0), 1)
    if_id = t.get("if_id", _int(1, 0xFFFFFFFF), None)
    interface = t.get("interface", _ifname, None)
    routes = t.get("routes", _list(_ts, example='["10.2.0.0/24"]'), ())
    if routes and _ok(routes, interface) and not interface:
        ctx.error(path + ("routes",), "routes need an interface: they are routed into the "
                                      "connection's own interface (route-based VPN)")
    pools = t.get("pools", _list(_name, example='["rw"]'), ())
    vips = t.get("vips", _list(_vip, example='["0.0.0.0"]'), ())
    dns_file = t.get("dns_file", _nonempty_str, None)
    transport = t.get("transport", _choice(TRANSPORTS), "udp")
    tcp_port = t.get("tcp_port", _int(1, 65535), 4500)
    if _ok(transport, tcp_port):
        if t.has("tcp_port") and transport == "udp":
            ctx.warn(path + ("tcp_port",), 'tcp_port has no effect with transport = "udp"')
        elif tcp_port == 500 and transport != "udp":
            # RFC 7296 2.23: an initiator talking to port 500 moves to 4500 after IKE_SA_INIT.
            ctx.error(path + ("tcp_port",), "500 cannot be used: an initiator whose peer port is 500 "
                                            "switches to port 4500 after IKE_SA_INIT (RFC 7296 2.23)")
    if dns_file is not None and dns_file is not BAD:
        dns_file = ctx.path(dns_file)
        if not vips:
            ctx.warn(path + ("dns_file",), "dns_file has no effect without vips (only a client receives DNS servers)")
    if pools and vips and _ok(pools, vips):
        ctx.error(path + ("vips",), "a connection either hands out virtual IPs (pools) or "
                                    "requests one (vips), not both")

    # peers
    if _ok(local_addrs, listen) and local_addrs:
        for j, a in enumerate(local_addrs):
            unspec = ipaddress.ip_address("0.0.0.0" if a.version == 4 else "::")
            if a not in listen and unspec not in listen:
                ctx.error(path + ("local_addrs", j), f"{a} is not covered by gateway.listen "
                                                     f"({', '.join(map(str, listen))})")
    if _ok(local_addrs, remote_addrs) and local_addrs and remote_addrs and \
            not any(isinstance(a, str) for a in remote_addrs):
        if not {a.version for a in local_addrs} & {a.version for a in remote_addrs}:
            ctx.error(path + ("remote_addrs",), "local_addrs and remote_addrs have no address "
                                                "family in common")

    # children
    children = []
    children_raw = t.get("child", lambda v: _tables(v, "connection.child"), [])
    if children_raw is not BAD:
        if not children_raw:
            ctx.warn(path, "connection has no [[connection.child]]: it will only set up an IKE SA")
        seen: dict[str, int] = {}
        for j, cd in enumerate(children_raw):
            cname = cd.get("name")
            if isinstance(cname, str):
                if cname in seen:
                    first = ctx.loc.line(path + ("child", seen[cname], "name"))
                    ctx.error(path + ("child", j, "name"), f"duplicate child name {cname!r} in "
                              f"this connection" + (f" (first defined at line {first})"
                                                    if first else ""))
                else:
                    seen[cname] = j
            ch = _child(ctx, cd, path + ("child", j), start_action, dpd_action)
            if ch is not None:
                children.append(ch)

    if _ok(start_action, remote_addrs):
        actions = {start_action} | {c.start_action for c in children}
        if actions & {"start", "trap"} and not _initiable(remote_addrs):
            key = path + ("start_action",) if start_action != "none" else path + ("remote_addrs",)
            ctx.error(key, "start_action = start/trap needs a remote address or FQDN to initiate "
                           "to in remote_addrs (%any and subnets can only respond)")
    if len(ctx.errors) > nerr:
        return None
    return ConnectionConfig(
        name=name, local_addrs=local_addrs, remote_addrs=remote_addrs, local_id=local_id,
        remote_id=remote_id, auth=auth, remote_auth=remote_auth, users_file=users_file,
        eap_identity=eap_identity, eap_password=eap_password, psk=psk, certs=certs, cert_files=cert_files,
        private_key=private_key, private_key_file=private_key_file, cacerts=cacerts,
        cacert_files=cacert_files, ike_proposals=ike_parsed, ike_proposals_text=ike_text,
        start_action=start_action, dpd_delay=dpd_delay, dpd_action=dpd_action,
        rekey_time=rekey_time, reauth_time=reauth_time, over_time=over_time, rand_time=rand_time,
        encap=encap, mobike=mobike, address_adoption=address_adoption, fragmentation=fragmentation, fragment_size=fragment_size,
        keyingtries=keyingtries, if_id=if_id, interface=interface,
        routes=tuple(routes) if _ok(routes) else (), children=tuple(children),
        pools=pools, vips=vips, dns_file=dns_file, transport=transport, tcp_port=tcp_port,
        ppk_id=ppk_id, ppk=ppk, ppk_required=bool(ppk_required))


def _initiable(remote_addrs) -> tuple:
    return tuple(a for a in remote_addrs
                 if isinstance(a, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)))


def _default_proposals(ctx: _Ctx, path: tuple, texts: Sequence[str], protocol: str):
    try:
        return tuple(texts), _parse_proposals(texts, protocol)
    except _Bad as e:  # the built-in default is not supported by the protocol core
        ctx.error(path, f"default {protocol} proposals are not usable ({e}); set the key explicitly")
        return BAD


def _any_list(ctx: _Ctx, path: tuple, values):
    """[%any] -> (); %any mixed with addresses is an error."""
    if values is BAD:
        return BAD
    if None in values:
        if len(values) > 1:
            ctx.error(path, "%any cannot be combined with other addresses")
            return BAD
        return ()
    return values


def _check_key_matches(ctx: _Ctx, path: tuple, cert, key):
    from cryptography.hazmat.primitives import serialization
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        same = cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    except Exception:  # pragma: no cover - exotic key types
        return
    if not same:
        ctx.error(path + ("private_key",), "private_key does not match the public key of the "
                                           "first certificate in certs")


def _child(ctx: _Ctx, d: dict, path: tuple, conn_start, conn_dpd) -> ChildConfig | None:
    nerr = len(ctx.errors)
    t = _Table(ctx, d, path, CHILD_KEYS, _CONN_ONLY_HINT)
    name = t.get("name", _name)
    local_ts = t.get("local_ts", _list(_ts, example='["10.1.0.0/24"]'))
    remote_ts = t.get("remote_ts", _list(_ts, example='["10.2.0.0/24"]'))
    if _ok(local_ts, remote_ts):
        if not {n.version for n in local_ts} & {n.version for n in remote_ts}:
            ctx.error(path + ("remote_ts",), "local_ts and remote_ts have no address family in "
                                             "common (IPv4 with IPv6 can never match)")
    esp = t.get("esp_proposals", _proposals("ESP"), _REQUIRED_DEFAULT)
    if esp is _REQUIRED_DEFAULT:
        esp = _default_proposals(ctx, path + ("esp_proposals",), DEFAULT_ESP_PROPOSALS, "ESP")
    esp_text, esp_parsed = (BAD, BAD) if esp is BAD else esp
    mode = t.get("mode", _choice(MODES), "tunnel")
    start_action = t.get("start_action", _choice(START_ACTIONS),
                         conn_start if conn_start is not BAD else "none")
    dpd_action = t.get("dpd_action", _choice(DPD_ACTIONS),
                       conn_dpd if conn_dpd is not BAD else "clear")
    rekey_time = t.get("rekey_time", _duration, 3600.0)
    life_time = t.get("life_time", _duration, None)
    rand_time = t.get("rand_time", _duration, None)
    if _ok(rekey_time, life_time, rand_time):
        if life_time is None:
            life_time = round(rekey_time * 1.1, 3)
        elif rekey_time and life_time and life_time <= rekey_time:
            ctx.error(path + ("life_time",), f"life_time ({life_time:g}s) must be greater than "
                                             f"rekey_time ({rekey_time:g}s)")
        if rand_time is None:
            rand_time = round(max(life_time - rekey_time, 0.0), 3) if rekey_time else 0.0
        elif rekey_time and rand_time >= rekey_time:
            ctx.error(path + ("rand_time",), f"rand_time ({rand_time:g}s) must be less than "
                                             f"rekey_time ({rekey_time:g}s)")
    rekey_bytes = t.get("rekey_bytes", _size, 0)
    life_bytes = t.get("life_bytes", _size, None)
    rekey_packets = t.get("rekey_packets", _int(0), 0)
    life_packets = t.get("life_packets", _int(0), None)
    life_bytes = _volume_life(ctx, path, "bytes", rekey_bytes, life_bytes)
    life_packets = _volume_life(ctx, path, "packets", rekey_packets, life_packets)
    replay_window = t.get("replay_window", _int(32, 65536), 1024)
    if len(ctx.errors) > nerr:
        return None
    return ChildConfig(
        name=name, local_ts=local_ts, remote_ts=remote_ts, esp_proposals=esp_parsed,
        esp_proposals_text=esp_text, mode=mode, start_action=start_action, dpd_action=dpd_action,
        rekey_time=rekey_time, life_time=life_time, rand_time=rand_time, rekey_bytes=rekey_bytes,
        life_bytes=life_bytes, rekey_packets=rekey_packets, life_packets=life_packets,
        replay_window=replay_window)


def _volume_life(ctx: _Ctx, path: tuple, unit: str, rekey, life):
    if not _ok(rekey, life):
        return BAD
    if life is None:
        return int(rekey * 1.1) if rekey else 0
    if rekey and life and life <= rekey:
        ctx.error(path + (f"life_{unit}",), f"life_{unit} ({life}) must be greater than "
                                            f"rekey_{unit} ({rekey})")
    return life


def _check_interfaces(ctx: _Ctx, connections: Sequence[ConnectionConfig]):
    """Connections may share an XFRM interface, but one name must map to one if_id."""
    by_name: dict[str, tuple[int, int | None]] = {}
    by_id: dict[int, tuple[int, str | None]] = {}
    for i, c in enumerate(connections):
        if c.interface and c.if_id is not None:
            prev = by_name.get(c.interface)
            if prev and prev[1] is not None and prev[1] != c.if_id:
                ctx.error(("connection", i, "if_id"), f"interface {c.interface!r} already has "
                          f"if_id {prev[1]} (connection {connections[prev[0]].name!r})")
            by_name.setdefault(c.interface, (i, c.if_id))
        if c.if_id is not None:
            prev2 = by_id.get(c.if_id)
            if prev2 and prev2[1] != c.interface:
                ctx.error(("connection", i, "if_id"), f"if_id {c.if_id} is already used by "
                          f"connection {connections[prev2[0]].name!r} with a different interface")
            by_id.setdefault(c.if_id, (i, c.interface))


# --------------------------------------------------------------------------------------------
# Reload diff


@dataclass(frozen=True)
class ConfigDiff:
    """What ``vpn-gw reload`` changes. Names keep the order of the file they come from."""
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    changed_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    gateway_changed: tuple[str, ...] = ()   # [gateway] keys that differ

    def __bool__(self):
        return bool(self.added or self.removed or self.changed or self.gateway_changed)

    def to_dict(self) -> dict:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": list(self.changed), "unchanged": list(self.unchanged),
                "changed_keys": {k: list(v) for k, v in self.changed_keys.items()},
                "gateway_changed": list(self.gateway_changed)}


def _changed_fields(a, b, skip: Iterable[str] = ()) -> list[str]:
    out = []
    for f in dataclasses.fields(a):
        if f.name in skip or not f.compare:
            continue
        if getattr(a, f.name) != getattr(b, f.name):
            out.append(f.name)
    return out


def diff_configs(old: GatewayConfig, new: GatewayConfig) -> ConfigDiff:
    old_c = {c.name: c for c in old.connections}
    new_c = {c.name: c for c in new.connections}
    added = tuple(n for n in new_c if n not in old_c)
    removed = tuple(n for n in old_c if n not in new_c)
    changed, unchanged, keys = [], [], {}
    for name, nc in new_c.items():
        oc = old_c.get(name)
        if oc is None:
            continue
        if oc == nc:
            unchanged.append(name)
            continue
        changed.append(name)
        ks = _changed_fields(oc, nc, skip=("children",))
        ochild = {c.name: c for c in oc.children}
        nchild = {c.name: c for c in nc.children}
        for cn, ncc in nchild.items():
            occ = ochild.get(cn)
            if occ is None:
                ks.append(f"child {cn}: added")
            elif occ != ncc:
                ks.extend(f"child {cn}: {k}" for k in _changed_fields(occ, ncc))
        ks.extend(f"child {cn}: removed" for cn in ochild if cn not in nchild)
        if [c.name for c in oc.children] != [c.name for c in nc.children] and \
                set(ochild) == set(nchild):
            ks.append("child order")
        keys[name] = tuple(ks)
    gw = tuple(_changed_fields(old, new, skip=("connections",)))
    return ConfigDiff(added, removed, tuple(changed), tuple(unchanged), keys, gw)
