"""Dynamic DNS against real servers in network namespaces.

Topology: namespace ``gw`` (wan0 192.0.2.10/24, 2001:db8:53::10/64) -- veth -- namespace
``dns`` (eth0 192.0.2.53/24 = Knot DNS, 192.0.2.80/24 = dyndns2 test server). Knot serves
zone ``example.test`` (TTL 2 s) and accepts RFC 2136 updates signed with TSIG key
``ddns-key.``; ``other-key.`` is known to Knot but not allowed to update.

The code under test runs in the test process: an asyncio loop in a thread that has
``setns()``-ed into ``gw`` (setns is per thread, so its sockets, and those of the threads it
starts, live in ``gw``). The dyndns2 server's listening socket is created the same way in
``dns``. Knot runs as a child process (``knotd -c``) in ``dns`` and is stopped by PID.
Every namespace and process is removed at teardown, pass or fail.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from tests.dyndns2_server import Dyndns2TestServer
from tests.netns import NetnsGroup, kill_pid, pid_alive, require_root, wait_until
from vpn_gw.ddns import AddressWatcher, DnsUpdatePublisher, Dyndns2Publisher, PeerResolver

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

DNS_IP = "192.0.2.53"
WEB_IP = "192.0.2.80"
GW_IP = "192.0.2.10"
KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(32, 64))).decode()

ZONE = """\
$ORIGIN example.test.
$TTL 2
@     SOA ns hostmaster 1 60 60 3600 2
@     NS  ns
ns    A   192.0.2.53
peer  A   198.51.100.7
peer  AAAA 2001:db8:7::7
v4    A   198.51.100.9
long  3600 A 198.51.100.10
gw    A   203.0.113.1
"""

from tests.netns_e2e.ddns_tools import _setns, in_netns  # noqa: E402  (one copy of the netns helpers)


class NsLoop:
    """An asyncio event loop running in a thread that lives in a network namespace."""

    def __init__(self, ns_name: str):
        self.ns_name = ns_name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        ready = threading.Event()

        def target():
            try:
                _setns(ns_name)
            except BaseException as e:
                self._error = e
                ready.set()
                return
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self.thread = threading.Thread(target=target, name=f"loop-{ns_name}", daemon=True)
        self.thread.start()
        if not ready.wait(10) or self._error:
            raise RuntimeError(f"cannot start a loop in {ns_name}: {self._error}")

    def run(self, coro, timeout: float = 20.0):
        """Run ``coro`` on the loop (in the namespace) and wait at most ``timeout`` s."""
        fut = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        return fut.result(timeout + 5)

    def close(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


class Env:
    def __init__(self, grp: NetnsGroup, tmp: Path):
        self.grp = grp
        self.tmp = tmp
        self.dns = grp.add("dns")
        self.gw = grp.add("gw")
        grp.veth(self.gw, "wan0", self.dns, "eth0",
                 a_addrs=[f"{GW_IP}/24", "2001:db8:53::10/64"],
                 b_addrs=[f"{DNS_IP}/24", f"{WEB_IP}/24", "2001:db8:53::53/64"])
        self.loop = NsLoop(self.gw.name)
        self.knot: subprocess.Popen | None = None
        self.knot_sock = str(tmp / "run" / "knot.sock")
        self.servers: list[Dyndns2TestServer] = []

    # ---- Knot
    def start_knot(self) -> None:
        for d in ("run", "db", "zones"):
            (self.tmp / d).mkdir(exist_ok=True)
        (self.tmp / "zones" / "example.test.zone").write_text(ZONE)
        conf = self.tmp / "knot.conf"
        conf.write_text(f"""\
server:
    rundir: "{self.tmp}/run"
    listen: [ {DNS_IP}@53, 2001:db8:53::53@53 ]
log:
  - target: stderr
    any: info
database:
    storage: "{self.tmp}/db"
key:
  - id: ddns-key.
    algorithm: hmac-sha256
    secret: {KEY}
  - id: other-key.
    algorithm: hmac-sha256
    secret: {OTHER_KEY}
acl:
  - id: ddns-update
    key: ddns-key.
    action: update
control:
    listen: "{self.knot_sock}"
template:
  - id: default
    storage: "{self.tmp}/zones"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: changes
zone:
  - domain: example.test
    acl: ddns-update
""")
        self.knot_log = open(self.tmp / "knotd.log", "w")
        self.knot = self.dns.popen(["knotd", "-c", str(conf)], stdout=self.knot_log,
                                   stderr=subprocess.STDOUT)

        def loaded():
            if self.knot.poll() is not None:
                raise RuntimeError("knotd exited:\n" + (self.tmp / "knotd.log").read_text())
            r = self.knotc("zone-status", "example.test", check=False)
            return r.returncode == 0 and "serial: 1" in r.stdout
        wait_until(loaded, timeout=10, what="knotd serving example.test")

    def knotc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["knotc", "-s", self.knot_sock, *args], capture_output=True,
                           text=True, timeout=10)
        if check and r.returncode != 0:
            raise RuntimeError(f"knotc {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def zone_set(self, owner: str, ttl: int, rtype: str, *values: str) -> None:
        self.knotc("zone-begin", "example.test")
        try:
            self.knotc("zone-unset", "example.test", owner, rtype, check=False)
            for v in values:
                self.knotc("zone-set", "example.test", owner, str(ttl), rtype, v)
            self.knotc("zone-commit", "example.test")
        except BaseException:
            self.knotc("zone-abort", "example.test", check=False)
            raise

    def stop_knot(self) -> None:
        if self.knot is not None and self.knot.poll() is None:
            assert kill_pid(self.knot.pid, timeout=5)
            self.knot.wait(timeout=5)

    # ---- queries (from gw, with dnspython)
    def query(self, name: str, rtype: str) -> tuple[list[str], int | None]:
        async def q():
            resp = await dns.asyncquery.udp(dns.message.make_query(name, rtype), DNS_IP, timeout=2)
            rrs = [rr for rr in resp.answer if rr.rdtype == dns.rdatatype.from_text(rtype)]
            if not rrs:
                return [], None
            return sorted(r.to_text() for r in rrs[0]), rrs[0].ttl
        return self.loop.run(q())

    # ---- dyndns2
    def dyndns2_server(self, **kw) -> Dyndns2TestServer:
        srv = in_netns(self.dns.name, lambda: Dyndns2TestServer(WEB_IP, **kw))
        self.servers.append(srv)
        return srv.start()

    def close(self) -> None:
        try:
            for s in self.servers:
                s.stop()
            self.loop.close()
            self.stop_knot()
        finally:
            self.grp.close()
            if self.knot is not None:
                self.knot_log.close()


@pytest.fixture
def env(tmp_path):
    require_root()
    if not shutil.which("knotd") or not shutil.which("knotc"):
        pytest.skip("Knot DNS not installed (apt-get install knot; scripts/setup.sh does it)")
    grp = NetnsGroup("ddns")
    e = None
    try:
        e = Env(grp, tmp_path)
        yield e
    finally:
        if e is not None:
            e.close()
        else:
            grp.close()
        assert grp.leftovers() == [], "namespaces left behind"
        if e is not None and e.knot is not None:
            assert not pid_alive(e.knot.pid), "knotd left behind"


# ====================================================================== PeerResolver


def test_resolver_honours_ttl_and_sees_changes(env):
    env.start_knot()
    r = PeerResolver([DNS_IP], min_ttl=0.5, max_ttl=60, timeout=2)
    t0 = time.monotonic()
    res = env.loop.run(r.resolve("peer.example.test"))
    assert res.ok, res.error
    assert res.addresses == ("198.51.100.7", "2001:db8:7::7")
    assert res.dns_ttl == 2 and res.ttl == 2
    assert t0 + 2 <= res.expires_at <= time.monotonic() + 2
    assert r.cached("peer.example.test") == res
    assert r.due(time.monotonic()) == []
    # the name becomes due when its 2 s TTL has run out, not before
    wait_until(lambda: r.due(time.monotonic()) == ["peer.example.test"], timeout=4, interval=0.02,
               what="peer.example.test due")
    assert time.monotonic() >= res.expires_at

    # family filter; a long TTL is clamped to max_ttl
    v4 = env.loop.run(r.resolve("peer.example.test", socket.AF_INET))
    assert v4.addresses == ("198.51.100.7",)
    long = env.loop.run(r.resolve("long.example.test"))
    assert long.dns_ttl == 3600 and long.ttl == 60

    # a changed record (knotc zone-set) is seen by the next look-up
    env.zone_set("peer", 2, "A", "198.51.100.8")
    res2 = env.loop.run(r.resolve("peer.example.test"))
    assert res2.addresses == ("198.51.100.8", "2001:db8:7::7")

    # failures are results with a reason, never exceptions
    nx = env.loop.run(r.resolve("nope.example.test"))
    assert nx.error == "nope.example.test: name does not exist (NXDOMAIN)" and nx.addresses == ()
    assert nx.ttl == 0.5
    refused = env.loop.run(r.resolve("peer.other.test"))
    assert refused.error == "peer.other.test: 192.0.2.53 answered REFUSED"
    v6none = env.loop.run(r.resolve("v4.example.test", 6))
    assert v6none.error == "v4.example.test: no AAAA record"

    # DNS down: the error says so and the last good addresses are still reported
    env.stop_knot()
    down = env.loop.run(r.resolve("peer.example.test"), timeout=10)
    assert not down.ok and down.addresses == ()
    assert down.error == "peer.example.test: no answer from 192.0.2.53 within 2s"
    assert down.previous == ("198.51.100.8", "2001:db8:7::7")


def test_resolver_timeout_text(env):
    # nothing answers at 192.0.2.99 (no such host on the link): bounded by the timeout
    r = PeerResolver(["192.0.2.99"], timeout=1.0)
    t0 = time.monotonic()
    res = env.loop.run(r.resolve("peer.example.test"), timeout=10)
    assert time.monotonic() - t0 < 3
    assert res.error == "peer.example.test: no answer from 192.0.2.99 within 1s"


# ====================================================================== RFC 2136


def test_rfc2136_update_with_right_and_wrong_keys(env):
    env.start_knot()
    pub = DnsUpdatePublisher("example.test", ["gw.example.test", "vpn.example.test"], DNS_IP,
                             tsig_name="ddns-key", tsig_secret_b64=KEY, ttl=30)
    res = env.loop.run(pub.publish(["203.0.113.5", "2001:db8:1::5"]))
    assert res.ok, res.error
    assert res.status == {"gw.example.test.": "NOERROR", "vpn.example.test.": "NOERROR"}
    for name in ("gw.example.test", "vpn.example.test"):
        assert env.query(name, "A") == (["203.0.113.5"], 30)
        assert env.query(name, "AAAA") == (["2001:db8:1::5"], 30)

    # the peer resolver sees the update
    r = PeerResolver([DNS_IP], min_ttl=1)
    assert env.loop.run(r.resolve("gw.example.test")).addresses == ("203.0.113.5", "2001:db8:1::5")

    # replace: the old A is gone, no IPv6 address any more -> no AAAA
    res = env.loop.run(pub.publish(["203.0.113.6"]))
    assert res.ok, res.error
    assert env.query("gw.example.test", "A") == (["203.0.113.6"], 30)
    assert env.query("gw.example.test", "AAAA") == ([], None)
    assert env.loop.run(r.resolve("gw.example.test")).addresses == ("203.0.113.6",)

    # wrong secret: BADSIG, nothing changes
    bad = DnsUpdatePublisher("example.test", ["gw.example.test"], DNS_IP,
                             tsig_name="ddns-key", tsig_secret_b64=OTHER_KEY)
    res = env.loop.run(bad.publish(["203.0.113.66"]))
    assert not res.ok and res.retry_at is not None
    assert res.error.startswith("TSIG key rejected by 192.0.2.53: BADSIG"), res.error
    # key unknown to the server: BADKEY
    unknown = DnsUpdatePublisher("example.test", ["gw.example.test"], DNS_IP,
                                 tsig_name="nobody-key", tsig_secret_b64=KEY)
    res = env.loop.run(unknown.publish(["203.0.113.66"]))
    assert res.error.startswith("TSIG key rejected by 192.0.2.53: BADKEY"), res.error
    # valid key the ACL does not allow to update (Knot answers BADKEY too)
    other = DnsUpdatePublisher("example.test", ["gw.example.test"], DNS_IP,
                               tsig_name="other-key", tsig_secret_b64=OTHER_KEY)
    res = env.loop.run(other.publish(["203.0.113.66"]))
    assert res.error.startswith("TSIG key rejected by 192.0.2.53: BADKEY"), res.error
    # unsigned
    unsigned = DnsUpdatePublisher("example.test", ["gw.example.test"], DNS_IP)
    res = env.loop.run(unsigned.publish(["203.0.113.66"]))
    assert res.error == ("update of example.test. refused by 192.0.2.53: NOTAUTH (the server is "
                         "not authoritative for the zone, or does not allow unsigned updates: "
                         "configure a TSIG key)"), res.error
    assert env.query("gw.example.test", "A") == (["203.0.113.6"], 30)

    # server down: a bounded failure with a clear text
    env.stop_knot()
    down = DnsUpdatePublisher("example.test", ["gw.example.test"], DNS_IP,
                              tsig_name="ddns-key", tsig_secret_b64=KEY, timeout=1.0)
    res = env.loop.run(down.publish(["203.0.113.7"]), timeout=10)
    assert res.error == "no answer from 192.0.2.53 within 1s", res.error


# ====================================================================== AddressWatcher


def test_address_watcher_sees_changes_within_a_second(env):
    seen: queue.Queue = queue.Queue()
    w = AddressWatcher("wan0", lambda addrs: seen.put((time.monotonic(), addrs)),
                       resync_interval=60)
    initial = env.loop.run(w.start())
    assert initial == [GW_IP, "2001:db8:53::10"]
    assert seen.get(timeout=2)[1] == initial

    def expect(addrs, t0):
        while True:
            t, got = seen.get(timeout=max(0.01, t0 + 1.0 - time.monotonic()))
            if got == addrs:
                return t - t0
    try:
        t0 = time.monotonic()
        env.gw.add_addr("wan0", "203.0.113.5/24")
        assert expect([GW_IP, "203.0.113.5", "2001:db8:53::10"], t0) < 1.0
        t0 = time.monotonic()
        env.gw.add_addr("wan0", "2001:db8:5::5/64")
        assert expect([GW_IP, "203.0.113.5", "2001:db8:5::5", "2001:db8:53::10"], t0) < 1.0
        t0 = time.monotonic()
        env.gw.del_addr("wan0", "203.0.113.5/24")
        assert expect([GW_IP, "2001:db8:5::5", "2001:db8:53::10"], t0) < 1.0
        # a link-local address is not publishable: no callback, list unchanged
        env.gw.ip("addr", "add", "fe80::99/64", "dev", "wan0", "nodad")
        time.sleep(0.3)
        assert seen.empty() and w.addresses == [GW_IP, "2001:db8:5::5", "2001:db8:53::10"]
    finally:
        env.loop.run(w.stop())


def test_address_watcher_of_an_interface_that_is_not_the_last_link(env):
    """Regression: the link dump was left unfinished once the interface was found; the address
    dump on the same socket then failed with EBUSY (the gateway never published)."""
    for i in range(3):
        env.gw.ip("link", "add", f"later{i}", "type", "veth", "peer", "name", f"later{i}p")
    w = AddressWatcher("wan0", lambda addrs: None, families=(4,))
    try:
        assert env.loop.run(w.start()) == [GW_IP]
    finally:
        env.loop.run(w.stop())


def test_address_watcher_follows_an_interface_created_later(env):
    seen: queue.Queue = queue.Queue()
    w = AddressWatcher("wan9", lambda addrs: seen.put(addrs), families=(4,))
    assert env.loop.run(w.start()) == [] and w.ifindex is None
    assert seen.get(timeout=2) == []
    try:
        env.gw.ip("link", "add", "wan9", "type", "veth", "peer", "name", "wan9p")
        env.gw.add_addr("wan9", "198.51.100.99/24")
        env.gw.link_up("wan9")
        assert seen.get(timeout=1.0) == ["198.51.100.99"]
        assert w.ifindex is not None
        env.gw.ip("link", "del", "wan9")
        assert seen.get(timeout=1.0) == []
    finally:
        env.loop.run(w.stop())


def test_address_watcher_netns_argument_from_the_root_namespace(env):
    """``netns=`` opens the netlink sockets in a named namespace (used from the root one)."""
    seen: queue.Queue = queue.Queue()

    async def main():
        w = AddressWatcher("eth0", lambda a: seen.put(a), netns=env.dns.name, families=(4,))
        assert await w.start() == [DNS_IP, WEB_IP]
        try:
            await asyncio.to_thread(env.dns.add_addr, "eth0", "192.0.2.54/24")
            for _ in range(20):
                if w.addresses == [DNS_IP, "192.0.2.54", WEB_IP]:
                    break
                await asyncio.sleep(0.05)
            return w.addresses
        finally:
            await w.stop()
    assert asyncio.run(asyncio.wait_for(main(), 20)) == [DNS_IP, "192.0.2.54", WEB_IP]


# ====================================================================== dyndns2


def _ca_and_server_cert(tmp: Path) -> tuple[str, str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ddns test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "members.example.test")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("members.example.test"),
                x509.IPAddress(ipaddress.ip_address(WEB_IP))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(p) for p in paths)


NAMES = ["a.example.test", "b.example.test"]


def _check_request(req, address: str, password: str = "pw") -> None:
    assert req.method == "GET" and req.path == "/nic/update"
    assert req.raw_query == (f"hostname=a.example.test,b.example.test&myip={address}"
                             "&wildcard=NOCHG&mx=NOCHG&backmx=NOCHG")
    assert req.hostnames == NAMES and req.param("myip") == address
    assert req.param("mx") == "NOCHG" and req.param("wildcard") == "NOCHG"
    assert (req.user, req.password) == ("alice", password)
    assert req.headers["User-Agent"] == "vpn-gw/0.1"
    assert req.client == GW_IP


def test_dyndns2_over_http(env):
    srv = env.dyndns2_server(port=8245, users={"alice": "pw"})
    pub = Dyndns2Publisher(WEB_IP, NAMES, "alice", "pw", port=8245, scheme="http")
    res = env.loop.run(pub.publish("203.0.113.5"))
    assert res.ok and res.sent, res.error
    assert res.status == {"a.example.test": "good", "b.example.test": "good"}
    assert len(srv.requests) == 1
    _check_request(srv.requests[0], "203.0.113.5")
    # unchanged: nothing sent; forced refresh: sent, "nochg" is fine
    res = env.loop.run(pub.publish("203.0.113.5"))
    assert res.ok and not res.sent and len(srv.requests) == 1
    res = env.loop.run(pub.publish("203.0.113.5", force=True))
    assert res.ok and res.status == {"a.example.test": "nochg", "b.example.test": "nochg"}
    # a new (IPv6) address goes out at once
    res = env.loop.run(pub.publish("2001:db8:1::5"))
    assert res.ok and len(srv.requests) == 3
    _check_request(srv.requests[2], "2001:db8:1::5")


def test_dyndns2_badauth_stops_publishing(env):
    srv = env.dyndns2_server(port=8245, users={"alice": "pw"})
    pub = Dyndns2Publisher(WEB_IP, NAMES, "alice", "wrong", port=8245, scheme="http")
    res = env.loop.run(pub.publish("203.0.113.5"))
    assert not res.ok and res.stopped and "badauth" in res.error
    assert srv.requests[0].status == 401
    _check_request(srv.requests[0], "203.0.113.5", password="wrong")
    for address in ("203.0.113.5", "203.0.113.6"):
        res = env.loop.run(pub.publish(address, force=True))
        assert not res.sent and res.stopped
    assert len(srv.requests) == 1               # the provider never hears from us again


def test_dyndns2_911_backs_off_and_per_name_stop(env):
    srv = env.dyndns2_server(port=8245, script=["911", "good 203.0.113.5\nnohost"])
    clock_offset = [0.0]
    pub = Dyndns2Publisher(WEB_IP, NAMES, "alice", "pw", port=8245, scheme="http",
                           backoff_initial=1800, clock=lambda: time.monotonic() + clock_offset[0])
    res = env.loop.run(pub.publish("203.0.113.5"))
    assert not res.ok and "911" in res.error and res.retry_at is not None
    res = env.loop.run(pub.publish("203.0.113.6", force=True))
    assert not res.sent and len(srv.requests) == 1
    clock_offset[0] = 1801.0                    # 30 minutes later
    res = env.loop.run(pub.publish("203.0.113.5"))
    assert len(srv.requests) == 2 and res.status == {"a.example.test": "good", "b.example.test": "nohost"}
    assert pub.active_names == ["a.example.test"]
    res = env.loop.run(pub.publish("203.0.113.7"))
    assert res.ok and srv.requests[2].hostnames == ["a.example.test"]


def test_dyndns2_network_error_holds_only_the_failed_address(env):
    pub = Dyndns2Publisher(WEB_IP, NAMES, "alice", "pw", port=8246, scheme="http", timeout=2)
    res = env.loop.run(pub.publish("203.0.113.5"))
    assert not res.ok and res.error == f"cannot reach http://{WEB_IP}:8246/nic/update: Connection refused"
    assert res.retry_at is not None
    res = env.loop.run(pub.publish("203.0.113.5", force=True))
    assert not res.sent                          # held back
    srv = env.dyndns2_server(port=8246)
    res = env.loop.run(pub.publish("203.0.113.6"))  # new address: sent at once
    assert res.ok and res.sent and len(srv.requests) == 1


def test_dyndns2_over_https_with_test_ca(env):
    ca, cert, key = _ca_and_server_cert(env.tmp)
    srv = env.dyndns2_server(port=8443, users={"alice": "pw"}, certfile=cert, keyfile=key)
    pub = Dyndns2Publisher(WEB_IP, NAMES, "alice", "pw", port=8443, ca_file=ca)
    res = env.loop.run(pub.publish("203.0.113.5"))
    assert res.ok, res.error
    assert len(srv.requests) == 1
    _check_request(srv.requests[0], "203.0.113.5")
    # without the test CA (system trust store only) the certificate is refused
    untrusting = Dyndns2Publisher(WEB_IP, NAMES, "alice", "pw", port=8443)
    res = env.loop.run(untrusting.publish("203.0.113.5"))
    assert not res.ok and not res.stopped and res.retry_at is not None
    assert res.error.startswith(f"TLS certificate of {WEB_IP} not accepted: "), res.error
    assert len(srv.requests) == 1
    # the server's thread records the broken-off handshake a moment after the client gave up
    wait_until(lambda: srv.tls_errors, timeout=5, what="the test server to record the refused handshake")
    assert any("UNKNOWN_CA" in e.upper() or "unknown ca" in e for e in srv.tls_errors), srv.tls_errors
