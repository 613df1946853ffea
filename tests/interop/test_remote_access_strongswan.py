"""Remote access with EAP against strongSwan 5.9.x: virtual IPs from a pool, DNS, pings.

Both directions (tests/interop/ra_helpers.py has the topology and configs):

* strongSwan road-warrior clients (charon, kernel-libipsec, in ``topo.gw``) against OUR
  gateway (``vpn-gw run`` in ``topo.site``, pool 10.99.0.0/24 with two DNS servers, protecting
  10.10.0.0/24): EAP-MSCHAPv2 and EAP-MD5 with a gateway PSK, EAP-TLS with a gateway
  certificate; EAP-only (RFC 5998); ten clients at once; a wrong password; sticky addresses
  across reconnects and a daemon restart.
* OUR client (``auth = "eap-*"``, ``vips = ["0.0.0.0"]``, ``dns_file``) against a strongSwan
  gateway with a pool, for each EAP method.

A ping between a virtual IP and a protected host can only pass through the tunnel (the
router has no route to 10/8).
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from pathlib import Path

import pytest
import ra_helpers as R
from ours_helpers import wait_log_event
from ra_helpers import User

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

HOST_A = "10.10.0.2"   # behind our gateway
HOST_B = "10.20.0.2"   # behind the strongSwan gateway


def _psk() -> str:
    return "test-only-" + secrets.token_hex(12)


def _pw() -> str:
    return "pw-" + secrets.token_hex(8)


def _gateway_env(workdir, prefix, users: list[User], *, method: str, cert: bool = False,
                 sw_gw_auth: str | None = None, charon_kwargs=None, sw_users: list[User] | None = None):
    """strongSwan clients (one connection per user) against our gateway. ``users`` go into our
    users file; ``sw_users`` (default: the same) are the identities/passwords strongSwan uses."""
    psk = None if cert else _psk()
    certs = R.make_certs(workdir, [u.name for u in users if u.method == "tls"]) if cert else None
    users_file = workdir / "users.toml"
    users_file.write_text(R.users_toml(users))
    users_file.chmod(0o600)
    lease_file = workdir / "pool-rw.json"

    def setup(topo, sw):
        if certs:
            sw.add_ca(certs.ca)
            for c in certs.clients.values():
                sw.add_cert(c)

    def ours_conns(topo):
        # users_file: MSCHAPv2/MD5 only (the config refuses it with remote_auth = "eap-tls")
        return [R.ours_gateway_conn(topo, method=method, users_file=None if method == "tls" else users_file,
                                    psk=psk, certs=certs, eap_only=sw_gw_auth == "eap-tls")]

    gw_auth = sw_gw_auth or ("pubkey" if cert else "psk")
    return R.ra_env(
        workdir, prefix=prefix, ours_role="gateway", setup=setup,
        sw_config=lambda t: R.sw_clients_conf(t, sw_users or users, psk=psk, certs=certs, gw_auth=gw_auth),
        ours_connections=ours_conns,
        pools=[R.pool_table("rw", R.POOL, R.OURS_DNS, lease_file)],
        n_client_addrs=len(users), charon_kwargs=charon_kwargs)


def _check_client(env: R.RaEnv, i: int, user: User, *, method: str) -> tuple[str, dict]:
    """Client ``c<i>`` is up: VIP on both sides, DNS in the resolve file, ping through."""
    conn = f"c{i}"
    vip = env.sw_vip(conn)
    assert R.in_pool(vip), f"strongSwan's list-sas shows no VIP from the pool for {conn}: {env.sw_sa(conn)}"
    # our side (`vpn-gw status --json`): the SA of this client, by its EAP identity
    st = env.ours.status()
    ours = [s for s in st if s.get("eap_identity") == user.name]
    assert len(ours) == 1, f"our status has {len(ours)} SAs with eap_identity {user.name}: {st}"
    o = ours[0]
    assert o["virtual_ips"] == [vip], (o["virtual_ips"], vip)
    assert o["state"] == "ESTABLISHED" and o["remote_id"] == user.name, o
    assert o["remote_addr"] == R.client_addr(i), o["remote_addr"]
    assert R.ours_lease_logged(env, user.name) == [vip]   # and the lease in our log
    ch = o["children"][0]
    assert ch["remote_ts"] == [f"{vip}/32"], ch
    assert ch["local_ts"] == [env.topo.site_net], ch
    sa = env.sw_sa(conn)
    sc = sa["child-sas"][0]
    assert sc["local-ts"] == [f"{vip}/32"] and sc["remote-ts"] == [env.topo.site_net], sc
    assert sc["spi-in"] == ch["spi_out"] and sc["spi-out"] == ch["spi_in"], (sc, ch)
    assert sa["remote-id"] == (R.GW_CERT_ID if method == "tls" else R.GW_PSK_ID)
    # DNS via the resolve plugin's file
    got_dns = env.sw_resolv()
    assert set(R.OURS_DNS) <= set(got_dns), f"resolv file of strongSwan: {got_dns}"
    # ping host_a behind our gateway, source = the VIP, only possible through the tunnel
    env.topo.gw.wait_ping(HOST_A, src=vip, timeout=5)
    assert env.topo.gw.ping(HOST_A, count=3, interval=0.2, src=vip), f"{conn}: ping {vip} -> {HOST_A} failed"
    return vip, o


def _ping_back(env: R.RaEnv, vip: str) -> None:
    """host_a -> the client's VIP: our gateway routes the VIP into the client's tunnel."""
    assert env.topo.host_a.ping(vip, count=2, interval=0.2), f"ping {HOST_A} -> {vip} failed"


# --------------------------------------------------------------------------- 1. strongSwan -> ours


@pytest.mark.parametrize("method,cert", [("mschapv2", False), ("md5", False), ("tls", True)],
                         ids=["eap-mschapv2-psk", "eap-md5-psk", "eap-tls-cert"])
def test_strongswan_client_gets_vip_dns_and_pings(sswan_workdir, method, cert):
    t0 = time.monotonic()
    user = User("alice@example.org", None if method == "tls" else _pw(), method)
    with _gateway_env(sswan_workdir, "rasw", [user], method=method, cert=cert) as env:
        assert not env.topo.gw.ping(HOST_A, count=1, wait=0.5), "reachable without a tunnel"
        env.sw.initiate(child=R.CHILD, ike="c0", timeout=15)
        env.ours_established(1, timeout=10)
        vip, o = _check_client(env, 0, user, method=method)
        assert vip == "10.99.0.1"
        _ping_back(env, vip)
        eap = {"mschapv2": "EAP_MSCHAPV2 succeeded, MSK established",
               "md5": "EAP_MD5 succeeded, no MSK established",
               "tls": "EAP_TLS succeeded, MSK established"}[method]
        log = env.sw.log_text()
        assert f"EAP method {eap}" in log
        if method == "tls":
            assert re.search(r"negotiated TLS 1\.2 using suite TLS_ECDHE_ECDSA_", log), \
                "strongSwan (libtls.version_max 1.2 by default) did not log the TLS 1.2 handshake"
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------------- 2. EAP-only

def test_eap_only_eap_tls(sswan_workdir):
    """strongSwan client with ``remote { auth = eap-tls }`` (EAP-only, mutual EAP-TLS, no AUTH
    by the gateway before EAP) against our EAP-TLS gateway."""
    t0 = time.monotonic()
    user = User("erin@example.org", None, "tls")
    with _gateway_env(sswan_workdir, "raeo", [user], method="tls", cert=True, sw_gw_auth="eap-tls") as env:
        res = env.sw.initiate(child=R.CHILD, ike="c0", timeout=15, check=False)
        log = env.sw.log_text()
        first = [ln for ln in log.splitlines() if "parsed IKE_AUTH response 1 " in ln]
        assert first and "AUTH" not in first[0].rsplit("[", 1)[1].split(), \
            f"gateway authenticated before EAP (not EAP-only): {first}"
        assert res.returncode == 0, f"strongSwan's initiate failed:\n{res.stdout[-1500:]}"
        assert "allow mutual EAP-only authentication" in log
        env.ours_established(1, timeout=10)
        _check_client(env, 0, user, method="tls")
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------------- 3. ten clients


def test_ten_clients_get_ten_distinct_addresses(sswan_workdir):
    """One charon, ten connections from ten source addresses, ten identities/passwords."""
    from concurrent.futures import ThreadPoolExecutor
    t0 = time.monotonic()
    users = [User(f"user{i}@example.org", _pw(), "mschapv2") for i in range(10)]
    # Every `swanctl --initiate` holds one charon worker thread until its IKE_SA is up: with
    # the default 16 threads, ten at once starve charon (no thread left to process replies).
    with _gateway_env(sswan_workdir, "ra10", users, method="mschapv2",
                      charon_kwargs={"charon_settings": {"threads": 40}}) as env:
        with ThreadPoolExecutor(max_workers=10) as ex:
            results = list(ex.map(lambda i: env.sw.initiate(child=R.CHILD, ike=f"c{i}", timeout=15,
                                                            check=False), range(10)))
        bad = [(i, r.stdout[-800:]) for i, r in enumerate(results) if r.returncode != 0]
        assert not bad, f"initiate failed for {[i for i, _ in bad]}: {bad[:2]}"
        env.ours_established(10, timeout=15)
        vips = {}
        for i, u in enumerate(users):
            vip = env.sw_vip(f"c{i}")
            assert R.in_pool(vip), (i, env.sw_sa(f"c{i}"))
            assert R.ours_lease_logged(env, u.name) == [vip], (u.name, vip)
            vips[u.name] = vip
        assert len(set(vips.values())) == 10, f"addresses not distinct: {vips}"
        # each client's tunnel carries its own traffic: ping host_a from every VIP
        for u in users:
            env.topo.gw.wait_ping(HOST_A, src=vips[u.name], timeout=5)
        ours = env.ours.status()
        assert {s["eap_identity"]: s["virtual_ips"] for s in ours} == {u: [v] for u, v in vips.items()}
        assert {s["eap_identity"]: s["children"][0]["remote_ts"] for s in ours} == \
            {u: [f"{v}/32"] for u, v in vips.items()}
        leases = json.loads((sswan_workdir / "pool-rw.json").read_text())
        assert {(e["identity"], e["address"]) for e in leases["leases"]} == set(vips.items())
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------------- 4. wrong password


@pytest.mark.parametrize("method", ["mschapv2", "md5"])
def test_wrong_password_authentication_failed_nothing_left(sswan_workdir, method):
    t0 = time.monotonic()
    user = User("alice@example.org", _pw(), method)
    wrong = User(user.name, _pw(), method)
    with _gateway_env(sswan_workdir, "rapw", [user], method=method, sw_users=[wrong]) as env:
        res = env.sw.initiate(child=R.CHILD, ike="c0", timeout=15, check=False)
        assert res.returncode != 0, f"initiate with a wrong password succeeded:\n{res.stdout}"
        log = env.sw.log_text()
        if method == "md5":
            # our gateway: EAP-Failure + AUTHENTICATION_FAILED in the same IKE_AUTH response
            assert "parsed IKE_AUTH response 3 [ EAP/FAIL N(AUTH_FAILED) ]" in log, log[-3000:]
            assert "received AUTHENTICATION_FAILED notify error" in log
            evs = env.log_events("EAP authentication failed")
            reasons = [r["reason"] for r in evs]
            assert reasons and "wrong password for 'alice@example.org' (EAP-MD5)" in reasons[0], reasons
            assert evs[0]["method"] == "eap-md5" and evs[0]["eap_identity"] == "alice@example.org"
        else:
            # our gateway answers with the MS-CHAPv2 Failure Request (E=691); strongSwan's peer
            # gives up there and tells us with N(AUTH_FAILED) instead of a Failure Response
            assert "EAP-MS-CHAPv2 failed with error ERROR_AUTHENTICATION_FAILURE" in log, log[-3000:]
            assert "generating INFORMATIONAL request 4 [ N(AUTH_FAILED) ]" in log
            # ...and our log says which method, who, and why (not "peer rejected our authentication");
            # strongSwan gives up without waiting for our answer: wait for our daemon to log it
            evs = wait_log_event(env.ours, "EAP authentication failed", timeout=5)
            assert evs[0]["method"] == "eap-mschapv2" and evs[0]["eap_identity"] == "alice@example.org"
            assert evs[0]["reason"] == "wrong password for 'alice@example.org' (MS-CHAPv2)", evs[0]
            # logged when the engine's AuthFailed event is handled, just after the line above:
            # wait for it rather than race the daemon's two writes
            failed = [r["reason"] for r in wait_log_event(env.ours, "authentication failed", timeout=5)]
            assert failed == ["EAP authentication of 'alice@example.org' failed: wrong password for "
                              "'alice@example.org' (MS-CHAPv2)"], failed
        env.sw.wait_no_sas(timeout=5)
        env.wait_ours(lambda st: st == [], timeout=5, what="no SA left on our side")
        assert env.log_events("authentication failed"), "our log does not show the failure"
        assert env.ours.status() == []
        assert not [r for r in env.log_events("virtual IP assigned")], "a lease was handed out"
        assert env.sw_resolv() == []
        assert not env.topo.gw.ping(HOST_A, count=1, wait=0.5)
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------------- 5. sticky addresses


def test_same_identity_same_address_after_reconnect_and_restart(sswan_workdir):
    t0 = time.monotonic()
    bob, alice = User("bob@example.org", _pw(), "mschapv2"), User("alice@example.org", _pw(), "mschapv2")
    lease_file = sswan_workdir / "pool-rw.json"
    with _gateway_env(sswan_workdir, "rask", [bob, alice], method="mschapv2") as env:
        def connect(i: int, n_ours: int) -> str:
            env.sw.initiate(child=R.CHILD, ike=f"c{i}", timeout=15)
            env.ours_established(n_ours, timeout=10)
            vip = env.sw_vip(f"c{i}")
            assert R.in_pool(vip)
            ident = (bob, alice)[i].name
            assert [s["virtual_ips"] for s in env.ours.status() if s["eap_identity"] == ident] == [[vip]]
            env.topo.gw.wait_ping(HOST_A, src=vip, timeout=5)
            return vip

        def disconnect_all():
            for i in (0, 1):
                if env.sw_sa(f"c{i}"):
                    env.sw.terminate(ike=f"c{i}", timeout=10)
            env.sw.wait_no_sas(timeout=5)
            env.wait_ours(lambda st: st == [], timeout=5, what="our SAs to be gone")

        first = {bob.name: connect(0, 1), alice.name: connect(1, 2)}
        assert first == {bob.name: "10.99.0.1", alice.name: "10.99.0.2"}, first
        disconnect_all()
        # alice first now: the lowest free address would be .1, the sticky lease gives .2
        assert connect(1, 1) == first[alice.name]
        assert connect(0, 2) == first[bob.name]
        disconnect_all()
        saved = json.loads(lease_file.read_text())
        assert saved["pool"] == "rw" and {(e["identity"], e["address"]) for e in saved["leases"]} \
            == set(first.items()), saved
        env.restart_ours()
        assert connect(1, 1) == first[alice.name], "lease not kept across the daemon restart"
        assert connect(0, 2) == first[bob.name]
        assert R.ours_lease_logged(env, alice.name) == [first[alice.name]]
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------------- 6. ours -> strongSwan


def _client_env(workdir, prefix, method: str):
    """OUR client (topo.site) against a strongSwan gateway with a pool (topo.gw)."""
    user = "alice@example.org"
    password = None if method == "tls" else _pw()
    cert = method == "tls"
    psk = None if cert else _psk()
    certs = R.make_certs(workdir, [user]) if cert else None
    dns_file = workdir / "ours-resolv.conf"

    def setup(topo, sw):
        if certs:
            sw.add_cert(certs.gateway)
            sw.add_ca(certs.ca)

    env = R.ra_env(
        workdir, prefix=prefix, ours_role="client", setup=setup,
        sw_config=lambda t: R.sw_gateway_conf(t, method=method, user=user, password=password, psk=psk,
                                              cert=f"{certs.gateway.name}.pem" if certs else None),
        ours_connections=lambda t: [R.ours_client_conn(t, method=method, user=user, dns_file=dns_file,
                                                       password=password, psk=psk, certs=certs)])
    return env, user, dns_file


@pytest.mark.parametrize("method", ["mschapv2", "md5", "tls"])
def test_ours_client_against_strongswan_gateway(sswan_workdir, method):
    t0 = time.monotonic()
    env_cm, user, dns_file = _client_env(sswan_workdir, "racl", method)
    with env_cm as env:
        topo = env.topo
        assert not topo.site.ping(HOST_B, count=1, wait=0.5), "reachable without a tunnel"
        env.ours.up(R.CONN)
        st = env.ours_established(1, timeout=10)
        sa = env.sw.wait_child(R.CHILD, timeout=10)[0]
        vip = (sa.get("remote-vips") or [None])[0]
        assert R.in_pool(vip), f"strongSwan assigned no VIP from its pool: {sa}"
        o = st[0]
        assert o["virtual_ips"] == [vip], o     # `vpn-gw status --json` shows the VIP we received
        assert o["local_addr"] == topo.site_ip and o["remote_id"] == (R.GW_CERT_ID if method == "tls" else R.GW_PSK_ID)
        ch = o["children"][0]
        assert ch["local_ts"] == [f"{vip}/32"] and ch["remote_ts"] == [topo.gw_net], ch
        sc = sa["child-sas"][0]
        assert sc["remote-ts"] == [f"{vip}/32"] and sc["local-ts"] == [topo.gw_net], sc
        assert sc["spi-in"] == ch["spi_out"] and sc["spi-out"] == ch["spi_in"], (sc, ch)
        assert sa["remote-id"] == user
        # our log: the VIP and DNS received; the VIP is on our TUN device
        got = env.log_events("virtual IP received")
        assert got and got[-1]["addresses"] == [vip] and got[-1]["dns"] == R.SW_DNS, got
        assert vip in [a.split("/")[0] for a in topo.site.addresses()], topo.site.addresses()
        # DNS file
        assert dns_file.exists(), "our dns_file was not written"
        servers = [line.split()[1] for line in dns_file.read_text().splitlines() if line.startswith("nameserver")]
        assert servers == R.SW_DNS, dns_file.read_text()
        # ping host_b behind strongSwan from our namespace, source = the VIP
        topo.site.wait_ping(HOST_B, src=vip, timeout=5)
        assert topo.site.ping(HOST_B, count=3, interval=0.2, src=vip), f"ping {vip} -> {HOST_B} failed"
        eap = {"mschapv2": "EAP_MSCHAPV2 succeeded, MSK established",
               "md5": "EAP_MD5 succeeded, no MSK established",
               "tls": "EAP_TLS succeeded, MSK established"}[method]
        assert f"EAP method {eap}" in env.sw.log_text()
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------------- the example pair

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "remote-access"


def _readdress(text: str, topo) -> str:
    """The example's addresses -> the test topology's (our gateway 192.0.2.1 -> topo.site_ip,
    its protected 10.1.0.0/24 -> topo.site_net)."""
    text = re.sub(r"(?<![\d.])192\.0\.2\.1(?![\d.])", topo.site_ip, text)
    return text.replace("10.1.0.", "10.10.0.")


def test_example_pair_works(sswan_workdir):
    """examples/remote-access/gateway.toml (+ eap-users.conf) against
    examples/remote-access/strongswan-client/swanctl.conf, only the addresses changed."""
    t0 = time.monotonic()

    def ours_text(topo, ours_dir: Path) -> str:
        users = ours_dir / "eap-users.conf"
        shutil.copyfile(EXAMPLES / "eap-users.conf", users)
        users.chmod(0o600)
        text = _readdress((EXAMPLES / "gateway.toml").read_text(), topo)
        text = re.sub(r'(?m)^control_socket = .*$', f'control_socket = "{ours_dir / "control.sock"}"', text)
        text = re.sub(r'(?m)^lease_file = .*$', f'lease_file = "{sswan_workdir / "pool-rw.json"}"', text)
        assert text.count(str(ours_dir)) == 1 and 'users_file = "eap-users.conf"' in text
        return text

    with R.ra_env(sswan_workdir, prefix="raex", ours_role="gateway", ours_connections=lambda t: [],
                  ours_config_text=ours_text,
                  sw_config=lambda t: _readdress(
                      (EXAMPLES / "strongswan-client" / "swanctl.conf").read_text(), t)) as env:
        env.sw.initiate(child="rw", ike="vpn", timeout=15)
        st = env.ours_established(1, timeout=10)
        assert st[0]["name"] == "roadwarriors" and st[0]["remote_id"] == "alice@example.org", st[0]
        vip = env.sw_vip("vpn")
        assert vip == "10.99.0.1", env.sw_sa("vpn")
        assert R.ours_lease_logged(env, "alice@example.org") == [vip]
        assert st[0]["children"][0]["remote_ts"] == [f"{vip}/32"]
        assert sorted(env.sw_resolv()) == ["10.10.0.53", "10.10.0.54"]
        env.topo.gw.wait_ping(HOST_A, src=vip, timeout=5)
        assert env.topo.gw.ping(HOST_A, count=3, interval=0.2, src=vip)
        assert env.log_events("configuration warning") == [], "the example loads with warnings"
    assert time.monotonic() - t0 < 40
