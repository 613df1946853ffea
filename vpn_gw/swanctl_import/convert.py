"""swanctl.conf (parsed by :mod:`.parser`) -> vpn-gw TOML.

:func:`convert` returns a :class:`Conversion`: the TOML text, the EAP users file's text (when
the gateway authenticates EAP clients and ``eap_users`` names where it goes) and ``skipped``,
one line per thing that has no vpn-gw equivalent (the CLI prints them to stderr). Nothing is
dropped silently: every key the converter does not map is listed.

Decisions (docs/migrate-strongswan.md): swanctl's ``dynamic`` selectors become the peer's or
our address (/32, /128), ``0.0.0.0/0`` on a gateway with ``pools`` (narrowed to the client's
virtual IP) and on a client with ``vips``; certificates and keys named relative to swanctl's
directories are looked up in ``x509/``, ``x509ca/`` and ``private/``/``rsa/``/``ecdsa/``/
``pkcs8/`` next to the swanctl.conf (or ``swanctl_dir``), the private key found by matching
the certificate's public key; secrets are kept in strongSwan's notation (``0x``, ``0s``, or the
string), which is ours too.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from pathlib import Path

from vpn_gw.swanctl_import.parser import Section, parse_file

__all__ = ["Conversion", "convert", "convert_file"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_YES = {"yes", "true", "enabled", "1"}
_NO = {"no", "false", "disabled", "0"}
_AUTH = {"psk": "psk", "pubkey": "pubkey", "rsa": "pubkey", "ecdsa": "pubkey", "ed25519": "pubkey",
         "eap-mschapv2": "eap-mschapv2", "eap-md5": "eap-md5", "eap-tls": "eap-tls"}
_DURATION_RE = re.compile(r"^\d+(\.\d+)?[smhd]?$")

# connection keys mapped one to one (value kind)
_CONN_DURATIONS = ("dpd_delay", "rekey_time", "reauth_time", "over_time", "rand_time")
_CONN_BOOLS = ("encap", "mobike")
_CHILD_DURATIONS = ("rekey_time", "life_time", "rand_time")
_CHILD_SIZES = ("rekey_bytes", "life_bytes")
_CHILD_INTS = ("rekey_packets", "life_packets", "replay_window")
# keys without an equivalent whose default (value) means the same as ours: no note when so
_HARMLESS = {"version": {"2"}, "unique": {"no", "never"}, "send_certreq": {"yes"},
             "send_cert": {"ifasked"}, "aggressive": {"no"}, "pull": {"yes"}, "dscp": {"000000"},
             "ipcomp": {"no"}, "hostaccess": {"no"}, "policies": {"yes"}, "close_action": {"none"},
             "inactivity": {"0", "0s"}, "local_port": {"500"}, "remote_port": {"500"},
             "dpd_timeout": set(), "sha256_96": {"no"}, "copy_df": {"yes"}, "copy_ecn": {"yes"},
             "copy_dscp": {"out"}}


class ConversionError(ValueError):
    """The file parsed but holds nothing we can convert (e.g. no connections)."""


@dataclasses.dataclass
class Conversion:
    toml: str
    skipped: list[str]
    eap_users: str | None = None          # text of the users file, if one was asked for
    eap_users_path: str | None = None


def _split(v: str | None) -> list[str]:
    return [x.strip() for x in (v or "").split(",") if x.strip()]


def _q(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_q(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


def _host_net(v: str) -> str:
    a = ipaddress.ip_address(v)
    return f"{a}/{a.max_prefixlen}"


class _Converter:
    def __init__(self, root: Section, swanctl_dir: Path, eap_users: str | None):
        self.root = root
        self.dir = swanctl_dir
        self.eap_users_path = eap_users
        self.skipped: list[str] = []
        self.conns: list[dict] = []
        self.pools: list[dict] = []
        self.eap_secrets: list[tuple[list[str], str, str]] = []  # (ids, secret, kind)
        self.ike_secrets: list[tuple[list[str], str, str]] = []  # (ids, secret, section name)

    def skip(self, where: str, what: str, why: str) -> None:
        self.skipped.append(f"{where}: {what}: {why}")

    def note_unmapped(self, where: str, sec: Section, used: set[str]) -> None:
        for k, v in sec.values.items():
            if k in used:
                continue
            if k in _HARMLESS and (not _HARMLESS[k] or v.strip().lower() in _HARMLESS[k]):
                if k == "dpd_timeout":
                    self.skip(where, f"dpd_timeout = {v}", "IKEv1 only; IKEv2 DPD uses the retransmission "
                                                          "settings ([gateway] retransmit_*)")
                continue
            self.skip(where, f"{k} = {v}", "no vpn-gw equivalent")
        for name in sec.sections:
            if name not in used:
                self.skip(where, f"section '{name}'", "no vpn-gw equivalent")

    # ---------------------------------------------------------------- values
    def duration(self, where: str, key: str, v: str) -> str | None:
        v = v.strip()
        if _DURATION_RE.match(v):
            return v if v[-1].isalpha() else f"{v}s"
        self.skip(where, f"{key} = {v}", "not a duration vpn-gw understands")
        return None

    def boolean(self, where: str, key: str, v: str) -> bool | None:
        lv = v.strip().lower()
        if lv in _YES:
            return True
        if lv in _NO:
            return False
        self.skip(where, f"{key} = {v}", "expected yes or no")
        return None

    def proposals(self, where: str, key: str, v: str) -> list[str] | None:
        from ikev2.constants import ProtocolId
        from ikev2.crypto.proposals import parse_proposal
        from ikev2.errors import ProposalError
        props = _split(v)
        if "default" in props:
            self.skip(where, f"{key} contains 'default'", "left out: vpn-gw's own defaults are used "
                                                          "in its place (docs/config.md)")
            props = [p for p in props if p != "default"]
        kept = []
        for p in props:
            try:   # the protocol core's own parser: refuses weak and unknown algorithms
                parse_proposal(p, ProtocolId.IKE if key == "proposals" else ProtocolId.ESP)
            except ProposalError as e:
                self.skip(where, f"{key} {p}", f"left out: {e}")
                continue
            kept.append(p)
        if props and not kept:
            self.skip(where, key, "no proposal left: vpn-gw's defaults apply")
        return kept or None

    # ---------------------------------------------------------------- files
    def find(self, sub: str, name: str) -> str:
        p = Path(name)
        if p.is_absolute():
            return str(p)
        return str((self.dir / sub / p).resolve())

    def private_key_for(self, cert_path: str) -> str | None:
        """The key file (in swanctl's key directories) whose public key is the certificate's;
        unreadable, encrypted or foreign files are passed over (None if none matches)."""
        from cryptography import x509
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        try:
            data = Path(cert_path).read_bytes()
        except OSError:
            return None
        try:
            cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                    else x509.load_der_x509_certificate(data))
        except (ValueError, UnsupportedAlgorithm):
            return None
        want = cert.public_key().public_bytes(*spki)
        for sub in ("private", "pkcs8", "rsa", "ecdsa", "ed25519"):
            d = self.dir / sub
            if not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                try:
                    data = f.read_bytes()
                    key = (serialization.load_pem_private_key(data, None) if b"-----BEGIN" in data
                           else serialization.load_der_private_key(data, None))
                except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
                    continue   # TypeError: an encrypted key (no password given)
                if key.public_key().public_bytes(*spki) == want:
                    return str(f.resolve())
        return None

    # ---------------------------------------------------------------- connections
    def run(self) -> None:
        for name in self.root.sections:
            if name not in ("connections", "secrets", "pools"):
                self.skip(f"section '{name}'", "not converted",
                          "only connections, secrets and pools are converted")
        for k, v in self.root.values.items():
            self.skip("top level", f"{k} = {v}", "no vpn-gw equivalent")
        self.read_secrets(self.root.section("secrets"))
        pools = self.root.section("pools")
        if pools is not None:
            for name, sec in pools.sections.items():
                self.pool(name, sec)
            for k in pools.values:
                self.skip("pools", k, "a key outside any pool")
        conns = self.root.section("connections")
        if conns is None or not conns.sections:
            raise ConversionError("no connections { ... } section with connections in it")
        for k in conns.values:
            self.skip("connections", k, "a key outside any connection")
        for name, sec in conns.sections.items():
            self.connection(name, self.resolve_templates(conns, sec, []))
        self.assign_secrets()

    def resolve_templates(self, parent: Section, sec: Section, chain: list[str]) -> Section:
        if not sec.templates:
            return sec
        merged = Section(sec.name, sec.line, sec.file)
        for t in sec.templates:
            base = parent.sections.get(t)
            if base is None or t in chain:
                self.skip(f"connection '{sec.name}'", f"template '{t}'", "not found (or a cycle)")
                continue
            merged.merge(self.resolve_templates(parent, base, chain + [sec.name]))
        own = dataclasses.replace(sec, templates=[])
        merged.merge(own)
        return merged

    def clean_name(self, kind: str, name: str) -> str:
        if _NAME_RE.match(name):
            return name
        new = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")[:64] or "conn"
        self.skip(f"{kind} '{name}'", "name", f"renamed to '{new}' (letters, digits, '.', '_', '-')")
        return new

    def connection(self, name: str, sec: Section) -> None:
        where = f"connection '{name}'"
        version = (sec.get("version") or "0").strip()
        if version == "1":
            self.skip(where, "whole connection", "IKEv1 (version = 1): vpn-gw speaks IKEv2 only")
            return
        if version == "0":
            self.skip(where, "version = 0 (any)", "vpn-gw speaks IKEv2 only; converted as IKEv2")
        c: dict = {"name": self.clean_name("connection", name)}
        used = {"version", "local_addrs", "remote_addrs", "proposals", "fragmentation",
                "keyingtries", "pools", "vips", "if_id_in", "if_id_out", *_CONN_DURATIONS,
                *_CONN_BOOLS, "children"}
        local_addrs = _split(sec.get("local_addrs")) or ["%any"]
        remote_addrs = _split(sec.get("remote_addrs")) or ["%any"]
        for label, addrs in (("local_addrs", local_addrs), ("remote_addrs", remote_addrs)):
            for a in addrs:
                if "-" in a and not _is_ip(a):
                    self.skip(where, f"{label} entry {a}", "address ranges are not supported")
            addrs[:] = [a for a in addrs if not ("-" in a and not _is_ip(a))] or ["%any"]
        if local_addrs != ["%any"]:
            c["local_addrs"] = local_addrs
        if remote_addrs != ["%any"]:
            c["remote_addrs"] = remote_addrs
        if "proposals" in sec.values:
            p = self.proposals(where, "proposals", sec.values["proposals"])
            if p:
                c["ike_proposals"] = p
        for k in _CONN_DURATIONS:
            if k in sec.values:
                d = self.duration(where, k, sec.values[k])
                if d is not None:
                    c[k] = d
        for k in _CONN_BOOLS:
            if k in sec.values:
                b = self.boolean(where, k, sec.values[k])
                if b is not None:
                    c[k] = b
        if "fragmentation" in sec.values:
            f = sec.values["fragmentation"].strip().lower()
            if f in ("yes", "accept", "force"):
                c["fragmentation"] = True
                if f == "force":
                    self.skip(where, "fragmentation = force", "IKEv1 only; converted to true")
            elif f == "no":
                c["fragmentation"] = False
            else:
                self.skip(where, f"fragmentation = {f}", "expected yes, accept, force or no")
        if "keyingtries" in sec.values:
            k = sec.values["keyingtries"].strip()
            if k.isdigit():
                c["keyingtries"] = int(k)
            else:
                self.skip(where, f"keyingtries = {k}", "not a number")
        if "pools" in sec.values:
            names = _split(sec.values["pools"])
            known = {p["name"] for p in self.pools}
            for n in names:
                if n not in known:
                    self.skip(where, f"pool '{n}'", "not a pool of this file (radius, dhcp and "
                                                   "attr pools are not supported)")
            names = [n for n in names if n in known]
            if names:
                c["pools"] = names
        if "vips" in sec.values:
            vips = []
            for v in _split(sec.values["vips"]):
                if v in ("0.0.0.0", "::"):
                    vips.append(v)
                else:
                    self.skip(where, f"vips entry {v}", "only 0.0.0.0 and :: (the gateway picks the address)")
            if vips:
                c["vips"] = vips
        ids = [sec.values.get("if_id_in"), sec.values.get("if_id_out")]
        if any(ids):
            if ids[0] == ids[1] and ids[0] and ids[0].isdigit():
                c["if_id"] = int(ids[0])
                c["interface"] = f"xfrm-{c['name']}"[:15]
                self.skip(where, "if_id_in/if_id_out", f"converted to if_id = {ids[0]} with "
                          f"interface = \"{c['interface']}\" (vpn-gw creates the interface; rename it "
                          "to yours)")
            else:
                self.skip(where, "if_id_in/if_id_out", "vpn-gw needs one if_id for both directions")
        self.auth_rounds(where, sec, c, used)
        self.note_unmapped(where, sec, used)
        children = []
        ch_sec = sec.section("children")
        if ch_sec is not None:
            for k in ch_sec.values:
                self.skip(where, f"children: {k}", "a key outside any child")
            for cname, csec in ch_sec.sections.items():
                ch = self.child(where, c, cname, csec)
                if ch is not None:
                    children.append(ch)
        if not children:
            self.skip(where, "whole connection", "no child that can be converted (vpn-gw needs at "
                                                 "least one)")
            return
        self.lift_actions(c, children)
        c["children"] = children
        self.conns.append(c)

    @staticmethod
    def lift_actions(c: dict, children: list[dict]) -> None:
        """swanctl sets start_action/dpd_action per child (default none/clear); vpn-gw starts,
        re-initiates and traps by the connection's value. The connection gets the children's
        value that keeps the most up (start > trap > none, restart > trap > clear); a child
        with the same value inherits it, the others keep theirs explicitly (swanctl's meaning)."""
        order = {"start_action": ("start", "trap", "none"), "dpd_action": ("restart", "trap", "clear")}
        for key, prio in order.items():
            values = {ch.get(key, prio[-1]) for ch in children}
            if values == {prio[-1]}:
                for ch in children:
                    ch.pop(key, None)
                continue
            c[key] = next(v for v in prio if v in values)
            for ch in children:
                v = ch.pop(key, prio[-1])
                if v != c[key]:
                    ch[key] = v

    def auth_rounds(self, where: str, sec: Section, c: dict, used: set[str]) -> None:
        for side in ("local", "remote"):
            rounds = sorted(n for n in sec.sections if n == side or n.startswith(side + "-"))
            used.update(rounds)
            if not rounds:
                if side == "remote":
                    continue
                self.skip(where, "no local section", "vpn-gw defaults apply (auth = psk)")
                continue
            if len(rounds) > 1:
                self.skip(where, f"{side} rounds {', '.join(rounds[1:])}",
                          "several authentication rounds are not supported: only the first is converted")
            r = sec.sections[rounds[0]]
            rwhere = f"{where}, {rounds[0]}"
            rused = {"auth", "id", "certs", "cacerts", "eap_id", "pubkeys"}
            auth = (r.get("auth") or "pubkey").strip().lower()
            auth = auth.split("-sha")[0] if auth.startswith(("pubkey-", "rsa-", "ecdsa-")) else auth
            mapped = _AUTH.get(auth)
            if mapped is None:
                self.skip(rwhere, f"auth = {auth}", "not supported (psk, pubkey, eap-mschapv2, eap-md5, "
                                                   "eap-tls)" + (": name the EAP method, e.g. eap-mschapv2"
                                                                 if auth in ("eap", "eap-radius") else ""))
            else:
                c["auth" if side == "local" else "remote_auth"] = mapped
            if "id" in r.values:
                c["local_id" if side == "local" else "remote_id"] = r.values["id"].strip()
            if side == "local" and "eap_id" in r.values:
                c["eap_identity"] = r.values["eap_id"].strip()
            if side == "remote" and r.values.get("eap_id", "%any").strip() not in ("%any", ""):
                self.skip(rwhere, f"eap_id = {r.values['eap_id']}", "vpn-gw matches the EAP identity "
                                                                     "against the users file")
            if side == "local" and "certs" in r.values:
                certs = [self.find("x509", n) for n in _split(r.values["certs"])]
                c["certs"] = certs
                key = self.private_key_for(certs[0]) if certs else None
                if key:
                    c["private_key"] = key
                else:
                    self.skip(rwhere, "private key", f"none found for {certs[0]} in private/, pkcs8/, "
                                                     f"rsa/, ecdsa/ under {self.dir}: add private_key")
            if side == "remote" and mapped in ("pubkey", "eap-tls"):
                if "cacerts" in r.values:
                    c["cacerts"] = [self.find("x509ca", n) for n in _split(r.values["cacerts"])]
                else:
                    d = self.dir / "x509ca"
                    files = sorted(str(f.resolve()) for f in d.iterdir()) if d.is_dir() else []
                    if files:
                        c["cacerts"] = files
                    else:
                        self.skip(rwhere, "cacerts", f"none listed and none in {d}: add cacerts")
            if "pubkeys" in r.values:
                self.skip(rwhere, "pubkeys", "raw public keys are not supported (use certificates)")
            self.note_unmapped(rwhere, r, rused)
            if side == "local" and mapped == "pubkey" and "id" not in r.values:
                pass  # our default is the certificate subject, as strongSwan's

    def child(self, where: str, conn: dict, name: str, sec: Section) -> dict | None:
        cwhere = f"{where}, child '{name}'"
        ch: dict = {"name": self.clean_name("child", name)}
        used = {"local_ts", "remote_ts", "esp_proposals", "mode", "start_action", "dpd_action",
                *_CHILD_DURATIONS, *_CHILD_SIZES, *_CHILD_INTS, "ah_proposals"}
        for side in ("local", "remote"):
            ts = _split(sec.get(f"{side}_ts")) or ["dynamic"]
            out = []
            for t in ts:
                got = self.selector(cwhere, conn, side, t)
                if got is None:
                    return None
                out += [x for x in got if x not in out]
            ch[f"{side}_ts"] = out
        if "esp_proposals" in sec.values:
            p = self.proposals(cwhere, "esp_proposals", sec.values["esp_proposals"])
            if p:
                ch["esp_proposals"] = p
        if "ah_proposals" in sec.values:
            self.skip(cwhere, "ah_proposals", "AH is not supported: the child is left out")
            return None
        mode = (sec.get("mode") or "tunnel").strip().lower()
        if mode in ("tunnel", "transport"):
            if "mode" in sec.values:
                ch["mode"] = mode
        else:
            self.skip(cwhere, f"mode = {mode}", "only tunnel and transport: the child is left out")
            return None
        sa = (sec.get("start_action") or "none").strip().lower()
        acts = set(sa.split("|"))
        if acts <= {"none", "start", "trap"}:
            if "start" in acts:
                ch["start_action"] = "start"
                if "trap" in acts:
                    self.skip(cwhere, "start_action = trap|start", "converted to start")
            elif "trap" in acts:
                ch["start_action"] = "trap"
            elif "start_action" in sec.values:
                ch["start_action"] = "none"
        else:
            self.skip(cwhere, f"start_action = {sa}", "expected none, start or trap")
        if "dpd_action" in sec.values:
            d = sec.values["dpd_action"].strip().lower()
            if d in ("clear", "restart", "trap"):
                ch["dpd_action"] = d
            elif d == "none":
                ch["dpd_action"] = "clear"
                self.skip(cwhere, "dpd_action = none", "converted to clear (the SAs are closed)")
            else:
                self.skip(cwhere, f"dpd_action = {d}", "expected clear, restart or trap")
        for k in _CHILD_DURATIONS:
            if k in sec.values:
                dur = self.duration(cwhere, k, sec.values[k])
                if dur is not None:
                    ch[k] = dur
        for k in _CHILD_SIZES:
            if k in sec.values:
                ch[k] = sec.values[k].strip()
        for k in _CHILD_INTS:
            if k in sec.values:
                v = sec.values[k].strip()
                if v.isdigit():
                    ch[k] = int(v)
                else:
                    self.skip(cwhere, f"{k} = {v}", "not a number")
        if ch.get("replay_window") == 0:
            self.skip(cwhere, "replay_window = 0", "replay protection cannot be turned off: default kept")
            del ch["replay_window"]
        self.note_unmapped(cwhere, sec, used)
        return ch

    def selector(self, where: str, conn: dict, side: str, t: str) -> list[str] | None:
        t = t.strip()
        if "[" in t:
            self.skip(where, f"{side}_ts {t}", "protocol/port selectors are not supported: "
                                                "converted to the whole subnet")
            t = t.split("[", 1)[0] or "dynamic"
        if t in ("dynamic", "%dynamic"):
            if side == "remote" and conn.get("pools"):
                fams = {ipaddress.ip_network(p["addrs"].split("-")[0], strict=False).version
                        for p in self.pools if p["name"] in conn["pools"]}
                return [n for v, n in ((4, "0.0.0.0/0"), (6, "::/0")) if v in fams] or ["0.0.0.0/0"]
            if side == "local" and conn.get("vips"):
                return ["0.0.0.0/0" if v == "0.0.0.0" else "::/0" for v in conn["vips"]]
            addrs = conn.get(f"{side}_addrs") or []
            ips = [a for a in addrs if _is_ip(a)]
            if len(ips) == 1:
                return [_host_net(ips[0])]
            self.skip(where, f"{side}_ts = dynamic", f"needs exactly one {side} address (has "
                      f"{', '.join(addrs) or '%any'}): the child is left out; list its subnets")
            return None
        if "-" in t:
            self.skip(where, f"{side}_ts {t}", "address ranges are not supported: the child is left out")
            return None
        try:
            return [str(ipaddress.ip_network(t, strict=False))]
        except ValueError:
            self.skip(where, f"{side}_ts {t}", "not a subnet: the child is left out")
            return None

    # ---------------------------------------------------------------- pools
    def pool(self, name: str, sec: Section) -> None:
        where = f"pool '{name}'"
        addrs = (sec.get("addrs") or "").strip()
        if not addrs:
            self.skip(where, "whole pool", "no addrs")
            return
        p: dict = {"name": self.clean_name("pool", name), "addrs": addrs}
        used = {"addrs", "dns", "subnets", "split_include"}
        if "dns" in sec.values:
            p["dns"] = _split(sec.values["dns"])
        subnets = _split(sec.get("subnets")) + _split(sec.get("split_include"))
        if subnets:
            p["subnets"] = subnets
        self.note_unmapped(where, sec, used)
        self.pools.append(p)

    # ---------------------------------------------------------------- secrets
    def read_secrets(self, sec: Section | None) -> None:
        if sec is None:
            return
        for k in sec.values:
            self.skip("secrets", k, "a key outside any secret")
        for name, s in sec.sections.items():
            kind = name.split("-", 1)[0]
            ids = [v.strip() for k, v in s.values.items() if k == "id" or k.startswith("id-")]
            secret = s.values.get("secret", "")
            where = f"secret '{name}'"
            if kind in ("ike", "eap", "ntlm") and "secret" not in s.values:
                self.skip(where, "secret", "missing")
                continue
            if kind == "ike":
                self.ike_secrets.append((ids, secret, name))
            elif kind in ("eap", "ntlm"):
                self.eap_secrets.append((ids, secret, kind))
            elif kind in ("private", "rsa", "ecdsa", "pkcs8", "pkcs12"):
                self.skip(where, "passphrase of a private key", "vpn-gw refuses encrypted keys: "
                          "decrypt the key and keep it mode 0600")
            else:
                self.skip(where, "whole secret", f"'{kind}' secrets are not supported")

    def assign_secrets(self) -> None:
        used = set()
        for c in self.conns:
            if "psk" in (c.get("auth", "psk"), c.get("remote_auth")):
                ids = {c.get("local_id"), c.get("remote_id")} - {None}
                best = None
                for i, (sids, _secret, _name) in enumerate(self.ike_secrets):
                    if not sids or set(sids) & ids:
                        score = len(set(sids) & ids)
                        if best is None or score > best[0]:
                            best = (score, i)
                if best is None:
                    self.skip(f"connection '{c['name']}'", "psk", "no ike secret matches its "
                                                                 "identities: add psk")
                else:
                    c["psk"] = self.ike_secrets[best[1]][1]
                    used.add(best[1])
            if c.get("auth") in ("eap-mschapv2", "eap-md5"):
                me = c.get("eap_identity") or c.get("local_id")
                for sids, secret, kind in self.eap_secrets:
                    if kind == "eap" and (not sids or me in sids):
                        c["eap_password"] = secret
                        break
                else:
                    self.skip(f"connection '{c['name']}'", "eap_password", "no eap secret for "
                              f"{me}: add eap_password")
        for i, (_, _, name) in enumerate(self.ike_secrets):
            if i not in used:
                self.skip(f"secret '{name}'", "not used", "matches no converted PSK connection")
        servers = [c for c in self.conns if c.get("remote_auth") in ("eap-mschapv2", "eap-md5")]
        if servers:
            if self.eap_users_path:
                for c in servers:
                    c["users_file"] = self.eap_users_path
            else:
                self.skip("EAP users", f"{len(self.eap_secrets)} secrets", "not written: pass "
                          "--eap-users FILE to write them (NT hashes) to a users file")

    def users_file(self) -> str | None:
        if not self.eap_users_path:
            return None
        from ikev2.eap.users import nt_hash
        md5 = any(c.get("remote_auth") == "eap-md5" for c in self.conns)
        lines = ["# EAP users converted from swanctl.conf by `vpn-gw import-swanctl` (docs/eap.md).",
                 "# Keep this file mode 0600."]
        for sids, secret, kind in self.eap_secrets:
            for ident in sids or []:
                lines += ["", "[[user]]", f"name = {_q(ident)}"]
                s = secret.strip()
                if kind == "ntlm":
                    h = s[2:] if s.lower().startswith("0x") else s
                    lines += [f"nt_hash = {_q(h.lower())}", 'methods = ["mschapv2"]']
                    continue
                if s.startswith("0x"):
                    pw = bytes.fromhex(s[2:]).decode("utf-8", "replace")
                elif s.startswith("0s"):
                    import base64
                    pw = base64.b64decode(s[2:]).decode("utf-8", "replace")
                else:
                    pw = s
                if md5:
                    lines += [f"password = {_q(pw)}", 'methods = ["mschapv2", "md5"]']
                else:
                    lines += [f"nt_hash = {_q(nt_hash(pw))}", 'methods = ["mschapv2"]']
            if not sids:
                self.skip("EAP users", "an eap secret without id", "left out: a user needs a name")
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- output
    def toml(self, source: str) -> str:
        out = [f"# Converted from {source} by `vpn-gw import-swanctl`; check it with",
               "#   vpn-gw check-config FILE",
               "# Keys: docs/config.md. What could not be converted was printed to stderr.", "",
               "[gateway]"]
        listen: list[str] = []
        anyaddr = False
        for c in self.conns:
            for a in c.get("local_addrs", ["%any"]):
                if _is_ip(a):
                    if a not in listen:
                        listen.append(a)
                else:
                    anyaddr = True
        if listen and not anyaddr:
            out.append(f"listen = {_q(listen)}")
        else:
            out.append('# listen: every address (some connection has local_addrs = %any)')
        for p in self.pools:
            out += ["", "[[pool]]"] + [f"{k} = {_q(v)}" for k, v in p.items()]
        for c in self.conns:
            out += ["", "[[connection]]"]
            out += [f"{k} = {_q(v)}" for k, v in c.items() if k != "children"]
            for ch in c["children"]:
                out += ["", "  [[connection.child]]"]
                out += [f"  {k} = {_q(v)}" for k, v in ch.items()]
        return "\n".join(out) + "\n"


def convert(root: Section, *, source: str = "swanctl.conf", swanctl_dir: str | os.PathLike = ".",
            eap_users: str | None = None) -> Conversion:
    """Convert a parsed swanctl.conf. ``swanctl_dir`` is where x509/, x509ca/, private/ live;
    ``eap_users`` is the path the TOML's ``users_file`` names (written by the caller)."""
    cv = _Converter(root, Path(swanctl_dir).resolve(), eap_users)
    cv.run()
    users = cv.users_file() if any(c.get("users_file") for c in cv.conns) else None
    return Conversion(cv.toml(source), cv.skipped, users, eap_users if users else None)


def convert_file(path: str | os.PathLike, *, swanctl_dir: str | os.PathLike | None = None,
                 eap_users: str | None = None) -> Conversion:
    root = parse_file(path)
    d = swanctl_dir if swanctl_dir is not None else os.path.dirname(os.path.abspath(path))
    return convert(root, source=str(path), swanctl_dir=d, eap_users=eap_users)
