"""``[[connection]]`` and ``[[connection.child]]``: peers, authentication, IKE and Child SA parameters."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ikev2.identity import Identity, IdentityPattern
from vpn_gw.config.convert import (
    _HOST_RE,
    _REQUIRED_DEFAULT,
    BAD,
    IPAddress,
    IPNetwork,
    RemoteAddr,
    _auto_bool,
    _Bad,
    _bool,
    _choice,
    _Ctx,
    _duration,
    _ifname,
    _int,
    _ip,
    _list,
    _name,
    _nonempty_str,
    _ok,
    _size,
    _str,
    _Table,
    _tables,
    _ts,
)
from vpn_gw.config.credentials import _certs, _check_key_matches, _ppk, _private_key, _psk
from vpn_gw.config.keys import _CHILD_HINT, _CONN_ONLY_HINT, _GW_HINT, _POOL_HINT, CHILD_KEYS, CONNECTION_KEYS
from vpn_gw.config.secret import Secret

AUTH_METHODS = ("psk", "pubkey", "eap-mschapv2", "eap-md5", "eap-tls")
EAP_METHODS = ("eap-mschapv2", "eap-md5", "eap-tls")
START_ACTIONS = ("none", "start", "trap")
DPD_ACTIONS = ("clear", "restart", "trap")
TRANSPORTS = ("udp", "tcp", "auto")  # how a connection initiates: RFC 9329 TCP encapsulation
MODES = ("tunnel", "transport")


DEFAULT_IKE_PROPOSALS = ("aes256gcm16-aes128gcm16-prfsha256-prfsha384-x25519-ecp256-modp3072",
                         "aes256-aes128-sha256-sha384-x25519-ecp256-modp3072")
DEFAULT_ESP_PROPOSALS = ("aes256gcm16-aes128gcm16", "aes256-aes128-sha256-sha384")


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

    psk = t.get("psk", _psk(ctx, path + ("psk",), base64_hint=True), None)
    cc = t.get("certs", _certs(ctx), ((), ()))
    cert_files, certs = (BAD, BAD) if cc is BAD else cc
    pk = t.get("private_key", _private_key(ctx, path + ("private_key",)), (None, None))
    private_key_file, private_key = (BAD, BAD) if pk is BAD else pk
    ca = t.get("cacerts", _certs(ctx), ((), ()))
    cacert_files, cacerts = (BAD, BAD) if ca is BAD else ca

    remote_auth = t.get("remote_auth", _choice(AUTH_METHODS + ("eap-radius",)), None)
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
        if auth in EAP_METHODS and remote_auth == "eap-radius":
            ctx.error(path + ("remote_auth",), 'remote_auth = "eap-radius" is for a gateway: its own auth '
                                               'must be "psk" or "pubkey"')
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
                _check_child_only_action(ctx, t, cd, path + ("child", j), ch,
                                         {"start_action": start_action, "dpd_action": dpd_action})

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
        encap=encap, mobike=mobike, address_adoption=address_adoption, fragmentation=fragmentation,
        fragment_size=fragment_size,
        keyingtries=keyingtries, if_id=if_id, interface=interface,
        routes=tuple(routes) if _ok(routes) else (), children=tuple(children),
        pools=pools, vips=vips, dns_file=dns_file, transport=transport, tcp_port=tcp_port,
        ppk_id=ppk_id, ppk=ppk, ppk_required=bool(ppk_required))


_DECIDES = {"start_action": "decides whether the gateway starts (or traps) the connection",
            "dpd_action": "decides what happens when the peer is lost"}


def _check_child_only_action(ctx: _Ctx, conn: _Table, child_data: dict, path: tuple, child: ChildConfig,
                             conn_values: dict[str, Any]):
    """start_action/dpd_action set on a child, not on its connection, to another value: most
    likely meant for the connection but written after [[connection.child]] (TOML puts it in the
    child). The daemon starts, re-initiates and traps by the connection's value, so say so."""
    for key, conn_value in conn_values.items():
        value = getattr(child, key)
        if key not in conn.data and key in child_data and conn_value is not BAD \
                and value != conn_value:
            ctx.warn(path + (key,), f"{key} = \"{value}\" is set for child {child.name!r} only: keys "
                     f"written after [[connection.child]] belong to that child (TOML scoping), and "
                     f"the connection keeps {key} = \"{conn_value}\", which {_DECIDES[key]}; if it "
                     f"is meant for the connection, move it above the first [[connection.child]] "
                     f"(set {key} on the connection too to keep a per-child value without this "
                     f"warning)")


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
