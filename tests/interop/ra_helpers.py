"""Remote access (EAP, virtual IPs, DNS) between our gateway and strongSwan, in namespaces.

Reuses the harness of tests/interop/strongswan.py (``build_topology``, ``Charon``, ``Pki``)
and tests/gateway.py (``OurGateway``); ours_helpers.py is used read-only. Topology
(``build_topology``)::

    host_a 10.10.0.2 -- 10.10.0.1 site 192.0.2.10 -- router -- 198.51.100.10 gw 10.20.0.1 -- host_b 10.20.0.2

* :func:`ra_env` with ``ours="gateway"``: OUR gateway runs in ``topo.site`` with a ``[[pool]]``
  and protects 10.10.0.0/24 (host_a); strongSwan in ``topo.gw`` is the road-warrior client
  (one charon, any number of connections, each from its own source address 198.51.100.1x on
  the same veth). A client's VIP pings host_a through the tunnel.
* ``ours="client"``: OUR connection (``vips = ["0.0.0.0"]``, ``dns_file``) in ``topo.site``
  dials a strongSwan gateway in ``topo.gw`` that hands out addresses from its pool and protects
  10.20.0.0/24 (host_b); our namespace pings host_b with the VIP as source.

The router has no route to 10/8, so every ping between a VIP and a protected host can only
pass through the tunnel. Teardown (always): our daemon(s) and charon by PID, namespaces; then
(if the test itself passed) asserts that no namespace or process is left.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent, _HERE.parent.parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import netns  # noqa: E402
import ours_helpers as H  # noqa: E402
import strongswan as ss  # noqa: E402

from tests.gateway import OurGateway, render_toml  # noqa: E402

POOL = "10.99.0.0/24"
POOL_NET = ipaddress.ip_network(POOL)
OURS_DNS = ["10.10.0.53", "10.10.0.54"]   # pushed by our gateway (inside its protected subnet)
SW_DNS = ["10.20.0.53", "10.20.0.54"]     # pushed by the strongSwan gateway
GW_PSK_ID = "vpn-psk.example.org"         # gateway identity when it authenticates with a PSK
GW_CERT_ID = "vpn.example.org"            # ... with its certificate
CONN = "rw"
CHILD = "rw"
IKE = "aes256gcm16-prfsha256-x25519"
ESP = "aes256gcm16"
CLIENT_BASE = 11                          # strongSwan client i uses 198.51.100.(11 + i)

# Our daemon: fail fast when a peer disappears (keys of [gateway], docs/config.md).
FAST = {"retransmit_timeout": 1.0, "retransmit_base": 1.4, "retransmit_tries": 2}


# --------------------------------------------------------------------------- users / PKI


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    password: str | None = None       # mschapv2/md5
    method: str = "mschapv2"          # mschapv2 | md5 | tls; ttls | peap: strongSwan clients via RADIUS


def users_toml(users: list[User]) -> str:
    """Our users file: NT hashes for MSCHAPv2, the cleartext password where MD5 needs it."""
    from ikev2.eap import nt_hash
    out = []
    for u in users:
        out.append("[[user]]")
        out.append(f"name = {json.dumps(u.name)}")
        if u.method == "mschapv2":
            out.append(f'nt_hash = "{nt_hash(u.password)}"')
        elif u.method == "md5":
            out.append(f"password = {json.dumps(u.password)}")
        out.append(f'methods = ["{u.method}"]')
        out.append("")
    return "\n".join(out)


@dataclasses.dataclass
class Certs:
    ca: ss.Cert
    gateway: ss.Cert                  # SAN = GW_CERT_ID
    clients: dict[str, ss.Cert]       # identity -> cert with that identity as rfc822 SAN


def make_certs(workdir: Path, clients: list[str] = ()) -> Certs:
    pki = ss.Pki(Path(workdir) / "pki")
    ca = pki.ca("ca", "C=XX, O=vpn-gw interop, CN=RA Test CA")
    gw = pki.end_entity("vpn", f"C=XX, O=vpn-gw interop, CN={GW_CERT_ID}", ca, sans=[GW_CERT_ID],
                        flags=("serverAuth", "ikeIntermediate"))
    cl = {}
    for i, ident in enumerate(clients):
        cl[ident] = pki.end_entity(f"client{i}", f"C=XX, O=vpn-gw interop, CN={ident}", ca,
                                   sans=[ident], flags=("clientAuth",))
    return Certs(ca, gw, cl)


# --------------------------------------------------------------------------- our configs


def pool_table(name: str, addrs: str, dns: list[str], lease_file: Path | str) -> dict:
    return {"name": name, "addrs": addrs, "dns": list(dns), "lease_file": str(lease_file)}


def render_pools(pools: list[dict]) -> str:
    """``[[pool]]`` tables (tests/gateway.py's render_toml writes only gateway/connections)."""
    out = []
    for p in pools:
        out.append("\n[[pool]]")
        out += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
    return "\n".join(out) + "\n"


def ours_gateway_conn(topo: ss.Topology, *, method: str, users_file: Path | None = None,
                      psk: str | None = None, certs: Certs | None = None, pools=("rw",),
                      eap_only: bool = False) -> dict:
    """OUR remote-access gateway connection: PSK (or certificate for EAP-TLS) + EAP."""
    conn: dict[str, Any] = {
        "name": CONN, "local_addrs": [topo.site_ip], "remote_addrs": ["%any"],
        "remote_id": "*@example.org", "remote_auth": f"eap-{method}",
        "ike_proposals": [IKE], "pools": list(pools),
    }
    if certs is None:
        conn.update(local_id=GW_PSK_ID, auth="psk", psk=psk)
    else:
        conn.update(local_id=GW_CERT_ID, auth="eap-tls" if eap_only else "pubkey",
                    certs=[str(certs.gateway.cert_path)],
                    private_key=str(certs.gateway.key_path), cacerts=[str(certs.ca.cert_path)])
    if users_file is not None:
        conn["users_file"] = str(users_file)
    conn["children"] = [{"name": CHILD, "local_ts": [topo.site_net], "remote_ts": ["0.0.0.0/0"],
                         "esp_proposals": [ESP]}]
    return conn


def ours_client_conn(topo: ss.Topology, *, method: str, user: str, dns_file: Path,
                     password: str | None = None, psk: str | None = None,
                     certs: Certs | None = None) -> dict:
    """OUR remote-access client towards the strongSwan gateway in topo.gw."""
    conn: dict[str, Any] = {
        "name": CONN, "local_addrs": [topo.site_ip], "remote_addrs": [topo.gw_ip],
        "local_id": user, "auth": f"eap-{method}", "ike_proposals": [IKE],
        "vips": ["0.0.0.0"], "dns_file": str(dns_file),
    }
    if method in ("mschapv2", "md5"):
        conn["eap_password"] = password
    if certs is None:
        conn.update(remote_id=GW_PSK_ID, remote_auth="psk", psk=psk)
    else:
        conn.update(remote_id=GW_CERT_ID, remote_auth="pubkey", cacerts=[str(certs.ca.cert_path)])
    if method == "tls":
        c = certs.clients[user]
        conn.update(certs=[str(c.cert_path)], private_key=str(c.key_path))
    conn["children"] = [{"name": CHILD, "local_ts": ["0.0.0.0/0"], "remote_ts": [topo.gw_net],
                         "esp_proposals": [ESP]}]
    return conn


# --------------------------------------------------------------------------- strongSwan configs


def client_addr(i: int) -> str:
    return f"198.51.100.{CLIENT_BASE + i}"


def sw_client_conn(topo: ss.Topology, i: int, *, method: str, user: str, cert: str | None = None,
                   gw_auth: str = "psk") -> dict:
    """One strongSwan road-warrior connection (name ``c<i>``) from source 198.51.100.(11+i)."""
    local: dict[str, Any] = {"auth": f"eap-{method}", "id": user}
    if method == "tls":
        local["certs"] = cert
    # gw_auth "eap-tls": EAP-only (RFC 5998), the gateway authenticates inside EAP-TLS
    remote: dict[str, Any] = {"auth": gw_auth, "id": GW_PSK_ID if gw_auth == "psk" else GW_CERT_ID}
    return {
        "version": 2, "local_addrs": client_addr(i), "remote_addrs": topo.site_ip,
        "proposals": IKE, "encap": True, "mobike": True, "vips": "0.0.0.0",
        "local": local, "remote": remote,
        "children": {CHILD: {"remote_ts": topo.site_net, "esp_proposals": ESP,
                             "start_action": "none"}},
    }


def sw_clients_conf(topo: ss.Topology, users: list[User], *, psk: str | None = None,
                    certs: Certs | None = None, gw_auth: str = "psk") -> dict:
    """swanctl.conf with one connection per user (``c0``, ``c1``, ...)."""
    conns, secrets = {}, {}
    for i, u in enumerate(users):
        cert = f"{certs.clients[u.name].name}.pem" if u.method == "tls" else None
        conns[f"c{i}"] = sw_client_conn(topo, i, method=u.method, user=u.name, cert=cert,
                                        gw_auth=gw_auth)
        if u.password is not None:
            secrets[f"eap-{i}"] = {"id": u.name, "secret": ss.quote(u.password)}
    if psk is not None:
        secrets["ike-gw"] = {"id-1": GW_PSK_ID, "secret": ss.quote(psk)}
    out: dict[str, Any] = {"connections": conns}
    if secrets:
        out["secrets"] = secrets
    return out


def sw_gateway_conf(topo: ss.Topology, *, method: str, user: str, password: str | None = None,
                    psk: str | None = None, cert: str | None = None) -> dict:
    """A strongSwan remote-access gateway in topo.gw: pool 10.99.0.0/24 + 2 DNS, EAP."""
    if cert is None:
        local = {"auth": "psk", "id": GW_PSK_ID}
    else:
        local = {"auth": "pubkey", "certs": cert, "id": GW_CERT_ID}
    remote: dict[str, Any] = {"auth": f"eap-{method}", "id": user}
    if method != "tls":
        remote["eap_id"] = "%any"     # EAP-Identity round first
    conn = {
        "version": 2, "local_addrs": topo.gw_ip, "remote_addrs": "%any", "pools": "rwpool",
        "proposals": IKE, "encap": True, "mobike": True, "local": local, "remote": remote,
        "children": {CHILD: {"local_ts": topo.gw_net, "esp_proposals": ESP}},
    }
    secrets: dict[str, Any] = {}
    if psk is not None:
        secrets["ike-rw"] = {"id-1": GW_PSK_ID, "secret": ss.quote(psk)}
    if password is not None:
        secrets["eap-user"] = {"id": user, "secret": ss.quote(password)}
    return {"connections": {CONN: conn},
            "pools": {"rwpool": {"addrs": POOL, "dns": ", ".join(SW_DNS)}},
            **({"secrets": secrets} if secrets else {})}


# --------------------------------------------------------------------------- environment


@dataclasses.dataclass
class RaEnv(H.Env):
    group: netns.NetnsGroup = None
    pids: list = dataclasses.field(default_factory=list)
    ours_config_text: str = ""
    restarts: int = 0

    # ---- our daemon
    def restart_ours(self) -> None:
        """Stop our daemon (SIGTERM by PID) and start it again with the same configuration
        (the pool's lease_file survives). The old log is kept next to the new one."""
        self.ours.stop()
        assert self.ours.proc.poll() is not None, "our daemon did not exit"
        self.restarts += 1
        if self.ours.log.exists():
            self.ours.log.rename(self.ours.log.with_suffix(f".{self.restarts}.log"))
        if self.ours.socket.exists():   # a stale socket would make start() return too early
            self.ours.socket.unlink()
        self.ours.start()
        self.pids.append(self.ours.proc.pid)

    def wait_ours(self, pred: Callable[[list[dict]], Any], timeout: float, what: str) -> Any:
        last: list = []

        def ok():
            st = self.status()
            last[:] = [st]
            return pred(st)
        try:
            return netns.wait_until(ok, timeout=timeout, interval=0.1, what=what)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; our status: "
                                 f"{json.dumps(last[0] if last else None)[:3000]}") from None

    def ours_established(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Exactly ``n`` ESTABLISHED IKE SAs with one INSTALLED child each (control socket),
        then the same seen through ``vpn-gw status --json``."""
        def pred(st):
            est = [s for s in st if s["state"] == "ESTABLISHED"
                   and [c["state"] for c in s["children"]] == ["INSTALLED"]]
            return est if len(est) == n and len(st) == n else None
        self.wait_ours(pred, timeout, f"{n} established IKE SA(s) with a child on our side")
        st = self.ours.status()
        assert pred(st), f"`vpn-gw status --json` disagrees: {st}"
        return st

    def log_events(self, event: str) -> list[dict]:
        return [r for r in self.ours.log_lines() if r.get("event") == event]

    # ---- strongSwan
    def sw_sa(self, conn: str) -> dict | None:
        return next((s for s in self.sw.list_sas() if s["name"] == conn), None)

    def sw_vip(self, conn: str) -> str | None:
        sa = self.sw_sa(conn)
        vips = (sa or {}).get("local-vips") or []
        return vips[0] if vips else None

    def sw_resolv(self) -> list[str]:
        try:
            text = self.sw.resolv_path.read_text()
        except FileNotFoundError:
            return []
        return re.findall(r"^nameserver\s+(\S+)", text, re.M)


def _start_ours(topo: ss.Topology, workdir: Path, connections: list[dict], pools: list[dict],
                gateway: Mapping[str, Any]) -> tuple[OurGateway, str]:
    """OurGateway in topo.site; its configuration is rewritten with the ``[[pool]]`` tables."""
    ours = OurGateway(topo.site, workdir, "ours", connections, listen=[topo.site_ip])
    text = render_toml({"control_socket": str(ours.socket), "listen": [topo.site_ip], **FAST,
                        **gateway}, connections) + render_pools(pools)
    ours.config.write_text(text)
    return ours, text


@contextlib.contextmanager
def ra_env(
    workdir: Path,
    *,
    prefix: str,
    ours_role: str,
    sw_config: Callable[[ss.Topology], Mapping[str, Any]],
    ours_connections: Callable[[ss.Topology], list[dict]],
    pools: list[dict] = (),
    n_client_addrs: int = 1,
    gateway: Mapping[str, Any] | None = None,
    setup: Callable[[ss.Topology, ss.Charon], None] | None = None,
    charon_kwargs: Mapping[str, Any] | None = None,
    ours_config_text: Callable[[ss.Topology, Path], str] | None = None,
) -> Iterator[RaEnv]:
    """Namespaces + strongSwan (topo.gw) + our daemon (topo.site), torn down on exit.

    ``ours_role="gateway"``: our daemon is started first (strongSwan initiates); the gw
    namespace gets ``n_client_addrs`` source addresses 198.51.100.11, .12, ... on wan0.
    ``ours_role="client"``: strongSwan is the gateway, our daemon initiates (``ours.up``).
    ``ours_config_text(topo, ours_dir)`` replaces the generated configuration of our daemon by a
    complete file (e.g. an example from examples/); ``ours_connections``/``pools`` are then unused.
    """
    H.fail_unless_strongswan()
    workdir = Path(workdir)
    group = netns.NetnsGroup(prefix)
    sw = ours = None
    env: RaEnv | None = None
    pids: list[int] = []
    failed = False
    try:
        topo = ss.build_topology(group, hosts=True)
        if ours_role == "gateway":
            for i in range(n_client_addrs):
                topo.gw.add_addr("wan0", f"{client_addr(i)}/24")
        kw = {"log_levels": ss.DEFAULT_LOG_LEVELS, **(charon_kwargs or {})}
        sw = ss.Charon(topo.gw, workdir / "sw", "sw", **kw)
        if setup is not None:
            setup(topo, sw)
        sw.write_swanctl_conf(sw_config(topo))
        ours, text = _start_ours(topo, workdir, ours_connections(topo), list(pools), gateway or {})
        if ours_config_text is not None:
            text = ours_config_text(topo, ours.dir)
            ours.config.write_text(text)
        if ours_role == "gateway":
            ours.start()
            pids.append(ours.proc.pid)
            sw.start()
            pids.append(sw.pid)
            sw.load_all()
        else:
            sw.start()
            pids.append(sw.pid)
            sw.load_all()
            ours.start()
            pids.append(ours.proc.pid)
        env = RaEnv(topo, ours, sw, workdir, group=group, pids=pids, ours_config_text=text)
        yield env
    except BaseException:
        failed = True
        if env is not None:
            print(env.dump())
        elif ours is not None or sw is not None:
            print((ours.log_tail(60) if ours else "") + "\n" + (sw.log_tail(60) if sw else ""))
        raise
    finally:
        H.teardown(ours, sw, group, pids, failed)


# --------------------------------------------------------------------------- checks


def in_pool(addr: str | None) -> bool:
    return addr is not None and ipaddress.ip_address(addr) in POOL_NET and addr != str(POOL_NET[0])


def ours_lease_logged(env: RaEnv, identity: str) -> list[str] | None:
    """The addresses our gateway logged for ``identity`` ("virtual IP assigned", last one),
    after it logged the EAP success for that identity."""
    eap = [r for r in env.log_events("EAP authentication succeeded") if r.get("eap_identity") == identity]
    assert eap, f"our log has no EAP success for {identity!r}"
    got = [r for r in env.log_events("virtual IP assigned") if r.get("identity") == identity]
    return got[-1].get("addresses") if got else None
