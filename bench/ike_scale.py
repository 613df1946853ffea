#!/usr/bin/env python3
"""Control-plane scale (issue 13): our responder vs. strongSwan's, same topology, same load.

    sudo .venv/bin/python bench/ike_scale.py --n 200                 # develop / check (small N)
    sudo .venv/bin/python bench/ike_scale.py --n 1000 --n 10000 --json scale.json   # the issue's points
    sudo .venv/bin/python bench/ike_scale.py --n 1000 --repeat 7 --responders ours-none,strongswan

A run at N = 1000 lasts about a second, so one run says little on a shared machine: ``--repeat R``
runs every responder R times, interleaved (the order reversed every other round), and prints the
median rate and the median of the per-round ratios to strongSwan (each ours / strongSwan's run of
the same round).

Topology (fresh namespaces per run, from tests/netns.py): the load generator's namespace
``lt`` (198.51.100.10) and the responder's ``gw`` (198.51.100.1, and 203.0.113.129 on lo, inside
its local TS 203.0.113.128/25) on one veth pair. Nothing else
runs in them.

Load generator: strongSwan 6's ``load-tester`` plugin in charon-6 (/opt/strongswan6), run
exactly as ../shared/peers/strongswan6.md §5.1 describes (fake_kernel, load-tester first in
``load``, distinct IDi ``c%d-r%d.lt.example.org``, one PSK), started in ``lt`` with a private
/run; the test starts when it starts. ``--n N`` set-ups (IKE_SA_INIT + IKE_AUTH with PSK,
``aes256gcm16-prfsha256-x25519``, one Child SA ``aes256gcm16``), ``--initiators`` threads,
``--init-limit`` half-open at a time, all SAs kept (no ``delete_after_established``), no
rekeys, no DPD.

Decision: "N concurrent initiators" means N distinct initiators (identities
``c1-r1.lt.example.org`` ... ``cN-r1...``, one IKE SA + one Child SA each), all of them held at
the end, so the same run gives the set-up rate at N and the cost of holding N. How many are in
flight at once is ``--init-limit`` (default 32; the responder's half-open limits are raised
above it); strongSwan's load-tester is a single source address, as in strongswan6.md.

Responders (``--responders``, all by default), each in a fresh ``gw`` namespace:

* ``ours-none``: ``vpn-gw run`` with ``dataplane = "none"`` (control plane only);
* ``ours-userspace``: the same with the userspace data plane (TUN, Child SAs installed);
* ``strongswan``: Debian's strongSwan **5.9.8** charon with kernel-libipsec (Child SAs installed
  in userspace), ``dos_protection = no`` and ``install_routes = no``, as §5.2 describes, and
  ``ikesa_table_size = 65536``/``ikesa_table_segments = 16`` (strongSwan's IKE SA table has one
  bucket by default: its documented tuning for many SAs; the load generator gets it too).

Our responder gets ``half_open_limit``/``cookie_threshold``/``half_open_per_address`` above the
load's concurrency and no per-address rate limit (``new_sa_rate_per_address = 0``): all load comes
from one address, like strongSwan's ``dos_protection = no``. It logs at ``warning``.

Measured per responder and N:

* ``setups/s``: N / (time of the N-th "IKE_SA ... established" − the first "initiating IKE_SA"),
  from the load-tester's log (ms timestamps);
* ``cpu ms/setup``: the responder's utime+stime (/proc/PID/stat) over the load, per established SA;
* ``KiB/SA``: (VmRSS after N established − VmRSS before the load) / N, from /proc/PID/status;
* ``INIT µs @0`` and ``@N``: the time from a probe initiator's IKE_SA_INIT (built by our engine,
  a fresh SPI each, sent from ``lt`` on its own port) to the response, median and minimum of
  ``--probes``, before the load and with the N SAs held (on a loaded machine the minimum is the
  steadier figure: the median carries the wait for a CPU);
* ``sum ms`` (ours): ``status --summary`` with the N SAs held, the control-socket round trip /
  the ``vpn-gw status --summary`` command from start to exit (a Python process start included);
* ``lt ms``: the load generator's CPU per set-up (its start-up included), and ``busy``: the
  cores the whole machine kept busy from the first initiation to the N-th set-up (/proc/stat,
  sampled every 50 ms; 2.00 = both): with both busy,
  the rate is 2 cores / (responder + load generator CPU per set-up), so a responder that makes
  the load generator work harder per set-up loses rate too;
* the machine load (/proc/loadavg) before and after, retransmits and failures seen by the
  load generator.

100k (issue 13): ``--n 100000 --timeout 1500 --stall 60``, about 1.5 GiB per responder and 3 GiB
for the load generator; the load-tester's log (over 100 MB) is read incrementally. Our userspace
responder needs one route for all the SAs (they share the remote selectors; routes are counted
per destination), so no kernel route limit applies. Profiling our responder during a run:
``py-spy record -p $(pgrep -f "vpn_gw run -c <workdir>") -d 10 -f raw -o prof.txt`` (the
``bench`` extra).

Columns: ``up`` IKE SAs and ``child`` Child SAs the load generator saw established, ``held``
established IKE SAs the responder reports afterwards (ours: ``status --summary``; strongSwan:
``swanctl --stats``).

Needs root, /opt/strongswan6 (../shared/peers/strongswan6.md §2) and, for ``strongswan``,
Debian's strongswan-charon. Not a test: it prints a table (and ``--json``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "tests" / "interop"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from netns import descendants  # noqa: E402  (tests/netns.py)
from netns_e2e.tools import machine_ticks  # noqa: E402

PYTHON = sys.executable
SW6 = Path(os.environ.get("SW6", "/opt/strongswan6"))
LT_IP, GW_IP = "198.51.100.10", "198.51.100.1"
IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"
PSK = "load-test-psk-0123456789"
GW_ID = "gw.example.org"
TS_LT, TS_GW = "203.0.113.0/25", "203.0.113.128/25"
GW_LAN_IP = "203.0.113.129"
RESPONDERS = ("ours-none", "ours-userspace", "strongswan")
IKESA_TABLE_SIZE = 65536  # strongSwan's ikesa_table_size (a power of 2; the default is 1), both sides
HZ = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# ----------------------------------------------------------------------------- /proc

def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def cpu_seconds_tree(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and of every process below it, by PID."""
    got = {}
    for p in [pid, *descendants(pid)]:
        try:
            got[p] = cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return got


def _seconds_of_day() -> float:
    """Now, as the load-tester's log timestamps count (local time, seconds since midnight)."""
    t = time.time()
    lt = time.localtime(t)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t % 1)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs: everything but idle and iowait)
    since boot, from tests/netns_e2e/tools.machine_ticks."""
    user, nice, system, _idle, _iowait, *rest = machine_ticks()
    return (user + nice + system + sum(rest)) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ----------------------------------------------------------------------------- the probe

def probe_main(target: str, count: int, timeout: float) -> None:
    """Runs inside ``lt``: ``count`` IKE_SA_INITs (fresh SPI each, built by our engine) to
    target:500, one at a time; prints the round-trip times in µs as JSON (null = no answer)."""
    from ikev2.manager import IkeManager
    from vpn_gw.config import parse_config
    from vpn_gw.policies import ike_policy
    cfg = parse_config(f'''[gateway]
[[connection]]
name = "probe"
remote_addrs = ["{target}"]
local_id = "probe.lt.example.org"
remote_id = "{GW_ID}"
auth = "psk"
psk = "{PSK}"
ike_proposals = ["{IKE}"]
[[connection.child]]
name = "net"
local_ts = ["{TS_LT}"]
remote_ts = ["{TS_GW}"]
esp_proposals = ["{ESP}"]
''')
    policy = ike_policy(cfg.connections[0], cfg)
    rtts: list[float | None] = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(timeout)
    for _ in range(count):
        m = IkeManager([policy], os.urandom)
        m.initiate("probe", time.monotonic(), remote=(target, 500))
        (data, _local, _remote), = [d for d in m.pop_datagrams()][:1]
        spi_i = data[:8]
        t0 = time.perf_counter()
        s.sendto(data, (target, 500))
        rtt = None
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            try:
                reply = s.recv(65535)
            except TimeoutError:
                break
            if reply[:8] == spi_i:
                rtt = (time.perf_counter() - t0) * 1e6
                break
        rtts.append(rtt)
        time.sleep(0.05)
    print(json.dumps(rtts))


# ----------------------------------------------------------------------------- load generator

LT_PLUGINS = ("random nonce sha3 openssl ml pem pkcs1 pkcs8 x509 pubkey kdf load-tester kernel-netlink "
              "socket-default vici counters")
LT_CONF = """charon {{
    load = {plugins}
    filelog {{
        main {{
            path = {dir}/charon.log
            time_format = %H:%M:%S
            time_add_ms = yes
            flush_line = yes
            ike_name = yes
            default = 0
            ike = 1
        }}
    }}
    syslog {{ daemon {{ default = -1 }} }}
    reuse_ikesa = no
    threads = 16
    # strongSwan's IKE SA table has ONE bucket by default (a linked list): at 30k+ SAs the
    # load generator, not the responder, was the bottleneck (75 % CPU, 37 set-ups/s)
    ikesa_table_size = {table_size}
    ikesa_table_segments = 16
    install_virtual_ip = yes
    plugins {{
        vici {{ socket = unix://{dir}/charon.vici }}
        load-tester {{
            enable = yes
            initiators = {initiators}
            iterations = {iterations}
            delay = {delay}
            init_limit = {init_limit}
            fake_kernel = yes
            version = 2
            initiator = {lt_ip}
            responder = {gw_ip}
            proposal = {ike}
            esp = {esp}
            initiator_auth = {auth}
            responder_auth = {auth}
            preshared_key = {psk}{issuer}
            initiator_id = c%d-r%d.lt.example.org
            responder_id = {gw_id}
            initiator_tsi = {ts_lt}
            initiator_tsr = {ts_gw}
            child_rekey = 0
            ike_rekey = 0
            dpd_delay = 0
            delete_after_established = no
            shutdown_when_complete = no
        }}
    }}
}}
swanctl {{ load = pem pkcs1 pkcs8 x509 pubkey openssl random nonce }}
"""

ESTABLISHED = re.compile(rb"^(\d\d):(\d\d):(\d\d)\.(\d{3}) .*IKE_SA load-test\[\d+\] established", re.MULTILINE)
INITIATING = re.compile(rb"^(\d\d):(\d\d):(\d\d)\.(\d{3}) .*initiating IKE_SA load-test", re.MULTILINE)
CHILD_UP = re.compile(rb"CHILD_SA load-test\{\d+\} established")   # not "establishing CHILD_SA"
RETRANSMIT = re.compile(rb"retransmit \d+ of request")
FAILED = re.compile(rb"giving up after|establishing IKE_SA failed|received (AUTHENTICATION_FAILED|"
                    rb"NO_PROPOSAL_CHOSEN|TS_UNACCEPTABLE)|no CHILD_SA built")


def _secs(m: re.Match) -> float:
    h, mi, s, ms = (int(x) for x in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


class LoadTester:
    """charon-6 with the load-tester plugin in ns (private /run), per strongswan6.md."""

    def __init__(self, ns, workdir: Path, n: int, initiators: int, init_limit: int, delay: int,
                 pki: Pki | None = None):
        self.ns, self.dir, self.n = ns, workdir, n
        self.dir.mkdir(parents=True, exist_ok=True)
        initiators = max(1, min(initiators, n))
        if n % initiators:
            raise SystemExit(f"--n {n} is not a multiple of --initiators {initiators}")
        self.conf = self.dir / "strongswan.conf"
        self.conf.write_text(LT_CONF.format(
            plugins=LT_PLUGINS, table_size=IKESA_TABLE_SIZE, dir=self.dir, initiators=initiators,
            iterations=n // initiators, delay=delay,
            init_limit=init_limit, lt_ip=LT_IP, gw_ip=GW_IP, ike=IKE, esp=ESP, psk=PSK, gw_id=GW_ID,
            ts_lt=TS_LT, ts_gw=TS_GW, auth="pubkey" if pki else "psk",
            issuer=f"\n            issuer_cert = {pki.ca_cert}\n            issuer_key = {pki.ca_key}"
                   "\n            digest = sha256" if pki else ""))
        self.log = self.dir / "charon.log"
        self.proc: subprocess.Popen | None = None
        # the log is read incrementally (at 100k set-ups it grows past 100 MB: no re-reading)
        self._offset = 0
        self._established: list[float] = []  # timestamps, in log order
        self._first: float | None = None
        self._counts = {"children": 0, "retransmits": 0, "failures": 0}
        self._busy_samples: list[tuple[float, float]] = []  # (seconds of the day, machine busy s)

    def start(self) -> None:
        env = dict(os.environ, STRONGSWAN_CONF=str(self.conf))
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o mode=0755,size=4m ltrun /run && exec "$@"', "sh",
                str(SW6 / "libexec/ipsec/charon")]
        out = open(self.dir / "stdout", "wb")
        try:
            # own session: the plugin may signal its process group (strongswan6.md §3)
            self.proc = self.ns.popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        finally:
            out.close()

    def _scan(self) -> int:
        """Read what the log gained since the last call (whole lines); returns the number of
        IKE SAs established so far."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        end = chunk.rfind(b"\n") + 1
        chunk = chunk[:end]
        self._offset += end
        if self._first is None:
            m = INITIATING.search(chunk)
            if m:
                self._first = _secs(m)
        self._established += [_secs(m) for m in ESTABLISHED.finditer(chunk)]
        self._counts["children"] += len(CHILD_UP.findall(chunk))
        self._counts["retransmits"] += len(RETRANSMIT.findall(chunk))
        self._counts["failures"] += len(FAILED.findall(chunk))
        return len(self._established)

    def wait(self, timeout: float, stall: float) -> None:
        """Until N IKE SAs are established, nothing moved for ``stall`` s, or ``timeout``."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self._scan()
            if n >= self.n:
                return
            if self.proc.poll() is not None:
                return
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > stall:
                return
            self._busy_samples.append((_seconds_of_day(), machine_busy_seconds()))
            time.sleep(0.05)

    def results(self) -> dict:
        self._scan()
        est, first = self._established, self._first
        rate = None
        if est and first is not None:
            t_last = est[min(self.n, len(est)) - 1]
            dt = t_last - first
            if dt < 0:
                dt += 86400
            rate = len(est[:self.n]) / dt if dt > 0 else None
        busy = None
        if est and first is not None and len(self._busy_samples) >= 2:
            # the machine's busy cores from the first initiation to the N-th set-up, from the
            # samples taken every 50 ms around that window (a day change is not handled)
            t_last = est[min(self.n, len(est)) - 1]
            before = [x for x in self._busy_samples if x[0] <= first] or self._busy_samples[:1]
            after = [x for x in self._busy_samples if x[0] >= t_last] or self._busy_samples[-1:]
            (ta, ba), (tb, bb) = before[-1], after[0]
            busy = (bb - ba) / (tb - ta) if tb > ta else None
        return {"established": len(est), "rate": rate, "busy": busy, **self._counts}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            from netns import kill_pid
            kill_pid(self.proc.pid, timeout=10)


# ----------------------------------------------------------------------------- certificates

class Pki:
    """``--auth ecdsa|rsa3072``: the responder's key and certificate (subjectAltName GW_ID) of that
    kind, from an RSA-2048 CA. The load-tester signs each initiator's certificate and its AUTH
    with the CA's key (it takes RSA keys only: "no private key found" with an ECDSA CA), so an
    RSA-3072 CA makes it the bottleneck (measured: 135 set-ups/s whatever we do). It issues them
    on the fly (``issuer_cert``/``issuer_key``, strongswan6.md §5.3; ``digest = sha256``: its
    default SHA-1 signatures are refused by us) and trusts the CA for the responder's."""

    def __init__(self, workdir: Path, kind: str):
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID

        def key(kind):
            return ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else \
                rsa.generate_private_key(65537, 2048 if kind == "rsa2048" else 3072)

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpn-gw bench"),
                              x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = datetime.datetime.now(datetime.UTC)
        ca_key, gw_key = key("rsa2048"), key(kind)
        ca = (x509.CertificateBuilder().subject_name(name("bench CA")).issuer_name(name("bench CA"))
              .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        gw = (x509.CertificateBuilder().subject_name(name(GW_ID)).issuer_name(ca.subject)
              .public_key(gw_key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName(GW_ID)]), critical=False)
              .sign(ca_key, hashes.SHA256()))
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_cert, self.ca_key = workdir / "ca.pem", workdir / "ca.key"
        self.gw_cert, self.gw_key = workdir / "gw.pem", workdir / "gw.key"
        pem = serialization.Encoding.PEM
        for path, k in ((self.ca_key, ca_key), (self.gw_key, gw_key)):
            path.write_bytes(k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            path.chmod(0o600)
        self.ca_cert.write_bytes(ca.public_bytes(pem))
        self.gw_cert.write_bytes(gw.public_bytes(pem))


# ----------------------------------------------------------------------------- responders

class OursResponder:
    def __init__(self, ns, workdir: Path, dataplane: str, n: int, init_limit: int,
                 crypto_workers: int | None = None, pki: Pki | None = None):
        from tests.gateway import OurGateway, connection
        auth = {"auth": "pubkey", "certs": [str(pki.gw_cert)], "private_key": str(pki.gw_key),
                "cacerts": [str(pki.ca_cert)]} if pki else {}
        conn = connection("lt", GW_IP, "%any", GW_ID, "%any", local_ts=TS_GW, remote_ts=TS_LT,
                          psk=PSK, ike=IKE, esp=ESP, child="lt", **auth)
        # all load from one address, like strongSwan's dos_protection = no (no per-address limits)
        limit = max(1000, 4 * (init_limit + 64))
        self.summary_s: float | None = None  # `status --summary` answer time (control socket)
        self.summary_cli_s: float | None = None  # the same through `vpn-gw status --summary` (a process)
        gateway = {"dataplane": dataplane, "half_open_limit": limit, "cookie_threshold": limit - 1,
                   "half_open_per_address": 0, "new_sa_rate_per_address": 0.0}
        if crypto_workers is not None:
            gateway["crypto_workers"] = crypto_workers
        self.gw = OurGateway(ns, workdir, "ours", [conn], listen=[GW_IP], log_level="warning", gateway=gateway)

    def start(self) -> int:
        self.gw.start(timeout=30)
        return self.gw.proc.pid

    def held(self) -> int | None:
        import vpn_gw.control  # noqa: F401 - imported before the clock starts
        try:
            t = time.perf_counter()
            summary = self.gw.control("status", timeout=30, summary=True)
            self.summary_s = time.perf_counter() - t
            t = time.perf_counter()
            self.gw.cli("status", "--summary", "-s", str(self.gw.socket))
            self.summary_cli_s = time.perf_counter() - t
            return summary["by_state"].get("ESTABLISHED", 0)
        except Exception:   # noqa: BLE001 - an older daemon without --summary
            return None

    def stop(self) -> None:
        self.gw.stop()


class StrongSwanResponder:
    def __init__(self, ns, workdir: Path, n: int, init_limit: int):
        import strongswan as ss
        self.ss = ss
        self.charon = ss.Charon(
            ns, workdir / "sw", "sw",
            log_levels={"default": int(os.environ.get("IKE_SCALE_SW_LOGLEVEL", "0"))},
            plugins="random nonce openssl pem pkcs1 pkcs8 x509 pubkey kdf kernel-libipsec "
                    "kernel-netlink socket-default vici counters",
            charon_settings={"dos_protection": False, "install_routes": False,
                             "ikesa_table_size": IKESA_TABLE_SIZE, "ikesa_table_segments": 16})
        self.charon.write_swanctl_conf({
            "connections": {"lt": {
                "version": 2, "local_addrs": GW_IP, "remote_addrs": "%any", "proposals": IKE,
                "local": {"auth": "psk", "id": GW_ID}, "remote": {"auth": "psk", "id": "%any"},
                "children": {"lt": {"local_ts": TS_GW, "remote_ts": TS_LT, "esp_proposals": ESP}}}},
            "secrets": {"ike-lt": {"secret": PSK}}})

    def start(self) -> int:
        self.charon.start(timeout=20)
        self.charon.load_all()
        return self.charon.pid

    def held(self) -> int | None:
        out = self.charon.swanctl("stats", check=False).stdout
        m = re.search(r"IKE_SAs:\s+(\d+) total, (\d+) half-open", out)
        return int(m.group(1)) - int(m.group(2)) if m else None

    def stop(self) -> None:
        self.charon.stop(timeout=10)


# ----------------------------------------------------------------------------- one run

@dataclass
class Result:
    responder: str
    n: int
    established: int = 0
    children: int = 0
    held: int | None = None
    setups_per_s: float | None = None
    cpu_ms_per_setup: float | None = None      # the responder and its crypto workers
    loop_cpu_ms_per_setup: float | None = None  # the responder's own process (its event loop)
    cores_busy: float | None = None            # responder CPU seconds / set-up wall time
    rss_kib_per_sa: float | None = None
    init_us_empty: float | None = None      # median of the probes
    init_us_held: float | None = None
    init_us_empty_min: float | None = None  # fastest probe (least disturbed by the machine's load)
    init_us_held_min: float | None = None
    probes_lost: int = 0
    status_summary_ms: float | None = None  # ours: `status --summary` control round trip with N held
    status_summary_cli_ms: float | None = None  # ours: the `vpn-gw status --summary` command, start to end
    retransmits: int = 0
    failures: int = 0
    load_before: str = ""
    load_after: str = ""
    notes: list[str] = field(default_factory=list)
    round: int = 0  # --repeat: which round this run belongs to
    lt_cpu_ms_per_setup: float | None = None  # the load generator's CPU (start-up included) per set-up
    machine_busy: float | None = None  # cores busy on the whole machine during the load (/proc/stat)


def probe(ns, count: int) -> tuple[float | None, float | None, int]:
    p = ns.run([PYTHON, str(Path(__file__).resolve()), "probe", "--target", GW_IP,
                "--count", str(count)], check=False, timeout=30 + 3 * count)
    if p.returncode != 0:
        raise RuntimeError(f"probe failed: {p.stderr.strip()[-500:]}")
    rtts = json.loads(p.stdout)
    got = [r for r in rtts if r is not None]
    if not got:
        return None, None, len(rtts)
    return statistics.median(got), min(got), len(rtts) - len(got)


def run_one(kind: str, n: int, args, workdir: Path, workers: int | None = None, rnd: int = 0) -> Result:
    import netns
    label = kind if workers is None or kind == "strongswan" else f"{kind}/w{workers}"
    res = Result(label, n, load_before=loadavg())
    grp = netns.NetnsGroup("isc")
    resp = lt = None
    try:
        lt_ns, gw_ns = grp.add("lt"), grp.add("gw")
        grp.veth(lt_ns, "wan0", gw_ns, "wan0", a_addrs=[f"{LT_IP}/24"], b_addrs=[f"{GW_IP}/24"])
        # the protected side's address: strongSwan (kernel-libipsec) refuses to install a
        # Child SA whose local TS holds none of its addresses ("no local address found")
        gw_ns.add_addr("lo", GW_LAN_IP + "/32")
        rdir = workdir / (f"{label.replace('/', '-')}-{n}" + (f"-r{rnd}" if rnd else ""))
        rdir.mkdir(parents=True)
        pki = Pki(rdir / "pki", args.auth) if args.auth != "psk" else None
        if kind == "strongswan":
            if pki is not None:
                raise RuntimeError("--auth with certificates: strongSwan responder not set up (ours only)")
            resp = StrongSwanResponder(gw_ns, rdir, n, args.init_limit)
        else:
            resp = OursResponder(gw_ns, rdir, kind.split("-", 1)[1], n, args.init_limit, workers, pki)
        pid = resp.start()
        time.sleep(0.5)
        res.init_us_empty, res.init_us_empty_min, lost0 = probe(lt_ns, args.probes)
        cpu0, rss0 = cpu_seconds_tree(pid), rss_kib(pid)
        lt = LoadTester(lt_ns, rdir / "lt", n, args.initiators, args.init_limit, args.delay, pki)
        lt.start()
        lt.wait(timeout=args.timeout, stall=args.stall)
        lt_cpu = sum(cpu_seconds_tree(lt.proc.pid).values()) if lt.proc is not None else None
        time.sleep(1.0)     # let the last IKE_AUTH responses' work and logging settle
        cpu1, rss1 = cpu_seconds_tree(pid), rss_kib(pid)
        r = lt.results()
        res.established, res.children = r["established"], r["children"]
        res.retransmits, res.failures, res.setups_per_s = r["retransmits"], r["failures"], r["rate"]
        done = max(res.established, 1)
        res.cpu_ms_per_setup = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1) * 1000 / done
        res.loop_cpu_ms_per_setup = (cpu1[pid] - cpu0[pid]) * 1000 / done
        wall = n / res.setups_per_s if res.setups_per_s else None
        res.cores_busy = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1) / wall if wall else None
        res.rss_kib_per_sa = (rss1 - rss0) / done
        res.lt_cpu_ms_per_setup = lt_cpu * 1000 / done if lt_cpu is not None else None
        res.machine_busy = r["busy"]
        res.held = resp.held()
        if getattr(resp, "summary_s", None) is not None:
            res.status_summary_ms = resp.summary_s * 1000
        if getattr(resp, "summary_cli_s", None) is not None:
            res.status_summary_cli_ms = resp.summary_cli_s * 1000
        res.init_us_held, res.init_us_held_min, lost1 = probe(lt_ns, args.probes)
        res.probes_lost = lost0 + lost1
        if res.established < n:
            res.notes.append(f"only {res.established} of {n} established (see {lt.log})")
    except Exception as e:  # noqa: BLE001 - report and go on with the next run
        res.notes.append(f"{type(e).__name__}: {e}"[:300])
    finally:
        res.load_after = loadavg()
        for stop in (lt.stop if lt else None, resp.stop if resp else None):
            if stop:
                with contextlib.suppress(Exception):
                    stop()
        grp.close()
    return res


# ----------------------------------------------------------------------------- output

def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def rounds_table(results: list[Result]) -> str:
    """--repeat: per N and responder, the median set-up rate over the rounds and the median of
    the per-round ratios to strongSwan's rate in the same round (background load lands on both)."""
    lines = [f"{'responder':<18} {'N':>6} {'rounds':>6} {'setups/s median':>15} {'(min-max)':>13} "
             f"{'ratio to strongswan, median':>27} {'(min-max)':>11} {'cpu ms/su med':>13}"]
    lines.append("-" * len(lines[0]))
    keys = sorted({(r.n, r.responder) for r in results})
    for n, who in keys:
        runs = [r for r in results if (r.n, r.responder) == (n, who) and r.setups_per_s]
        if not runs:
            continue
        rates = [r.setups_per_s for r in runs]
        ratios = []
        for r in runs:
            sw = next((x for x in results if x.responder == "strongswan" and x.n == n and x.round == r.round
                       and x.setups_per_s), None)
            if sw is not None and who != "strongswan":
                ratios.append(r.setups_per_s / sw.setups_per_s)
        cpu = [r.cpu_ms_per_setup for r in runs if r.cpu_ms_per_setup is not None]
        ratio_s = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        span = f"({min(ratios):.2f}-{max(ratios):.2f})" if ratios else ""
        lines.append(f"{who:<18} {n:>6} {len(runs):>6} {statistics.median(rates):>15.0f} "
                     f"{f'({min(rates):.0f}-{max(rates):.0f})':>13} {ratio_s:>27} {span:>11} "
                     f"{(f'{statistics.median(cpu):.2f}' if cpu else '-'):>13}")
    return "\n".join(lines)


def table(results: list[Result]) -> str:
    head = (f"{'responder':<18} {'N':>6} {'up':>6} {'child':>6} {'held':>6} {'setups/s':>9} {'cpu ms/su':>9} "
            f"{'loop ms':>7} {'cores':>5} {'lt ms':>6} {'busy':>5} "
            f"{'KiB/SA':>7} {'INIT µs@0 med/min':>17} {'INIT µs@N med/min':>17} {'sum ms':>9} "
            f"{'retr':>5} {'fail':>5}  load before "
            "-> after")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.responder:<18} {r.n:>6} {r.established:>6} {r.children:>6} {_f(r.held, 'd'):>6} "
                     f"{_f(r.setups_per_s, '.0f'):>9} {_f(r.cpu_ms_per_setup, '.2f'):>9} "
                     f"{_f(r.loop_cpu_ms_per_setup, '.2f'):>7} {_f(r.cores_busy, '.2f'):>5} "
                     f"{_f(r.lt_cpu_ms_per_setup, '.2f'):>6} {_f(r.machine_busy, '.2f'):>5} "
                     f"{_f(r.rss_kib_per_sa, '.1f'):>7} "
                     f"{_f(r.init_us_empty, '.0f') + '/' + _f(r.init_us_empty_min, '.0f'):>17} "
                     f"{_f(r.init_us_held, '.0f') + '/' + _f(r.init_us_held_min, '.0f'):>17} "
                     f"{_f(r.status_summary_ms, '.0f') + '/' + _f(r.status_summary_cli_ms, '.0f'):>9} "
                     f"{r.retransmits:>5} "
                     f"{r.failures:>5}  {r.load_before} -> {r.load_after}")
        for note in r.notes:
            lines.append(f"    note: {note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    pr = sub.add_parser("probe", help="(internal) time IKE_SA_INIT answers from this namespace")
    pr.add_argument("--target", required=True)
    pr.add_argument("--count", type=int, default=7)
    pr.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--n", type=int, action="append", help="set-ups (= SAs held) per run; repeatable "
                    "(default 200; the issue's points are 1000 and 10000)")
    ap.add_argument("--responders", default=",".join(RESPONDERS),
                    help=f"comma-separated, of {', '.join(RESPONDERS)} (default: all)")
    ap.add_argument("--initiators", type=int, default=4, help="load-tester threads (default 4)")
    ap.add_argument("--init-limit", type=int, default=32,
                    help="half-open IKE SAs the load-tester keeps in flight (default 32)")
    ap.add_argument("--delay", type=int, default=1, help="load-tester delay in ms (default 1, >= 1)")
    ap.add_argument("--probes", type=int, default=15, help="IKE_SA_INIT probes per point (median)")
    ap.add_argument("--timeout", type=float, default=600, help="max seconds per load run")
    ap.add_argument("--stall", type=float, default=30, help="give up after this long without progress")
    ap.add_argument("--crypto-workers", type=int, action="append", dest="crypto_workers",
                    help="our responder's [gateway] crypto_workers; repeatable, one run each "
                         "(default: the daemon's default, \"auto\")")
    ap.add_argument("--auth", choices=("psk", "ecdsa", "rsa3072"), default="psk",
                    help="psk (default), or certificates of this kind on both sides (ours only)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds per N: every responder once per round, the order reversed every "
                         "other round; then medians and per-round ratios to strongSwan (default 1)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--workdir", help="keep logs here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    if args.cmd == "probe":
        probe_main(args.target, args.count, args.timeout)
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if not (SW6 / "libexec/ipsec/charon").exists():
        print(f"no charon-6 at {SW6} (see ../shared/peers/strongswan6.md §2)", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in args.responders.split(",") if k.strip()]
    bad = [k for k in kinds if k not in RESPONDERS]
    if bad:
        ap.error(f"unknown responder(s): {', '.join(bad)}")
    if args.delay < 1:
        ap.error("--delay must be >= 1 (the load-tester busy-waits with 0)")
    ns_list = args.n or [200]
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ike-scale-")
        workdir = Path(tmp.name)
    print(f"# load-tester: charon-6 ({SW6}), {args.initiators} threads, init_limit {args.init_limit}, "
          f"delay {args.delay} ms; {os.cpu_count()} CPUs; load {loadavg()}", flush=True)
    results = []
    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for n in ns_list:
            plan = [(kind, workers) for kind in kinds
                    for workers in ((args.crypto_workers or [None]) if kind != "strongswan" else [None])]
            for rnd in range(max(1, args.repeat)):
                for kind, workers in (plan if rnd % 2 == 0 else plan[::-1]):
                    r = run_one(kind, n, args, workdir, workers, rnd)
                    r.round = rnd
                    results.append(r)
                    print(table([r]).splitlines()[-1 - len(r.notes)], flush=True)
                    for note in r.notes:
                        print(f"    note: {note}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, old)
        print()
        print(table(results))
        if args.repeat > 1:
            print()
            print(rounds_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
        if tmp:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
