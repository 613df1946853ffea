"""Traffic and capture helpers for the ours-to-ours namespace tests (and bench/throughput.py).

Everything is bounded in time and started through ``Netns.popen`` (so the namespace group's
cleanup kills whatever a failing test leaves behind); every helper also stops its own
processes by PID.

* :class:`Capture` - tcpdump on one interface of one namespace, ``-s 0 -w file``.
* :func:`ipv4_packets` - the IPv4 packets of a pcap file with their outer header fields
  (no reassembly: the fragmentation tests need to see fragments as they are on the wire).
* :class:`UdpReceiver` - a UDP socket in a namespace that reports every datagram's length
  and payload digest (JSON lines on stdout).
* :func:`send_udp` - one datagram from a namespace, DF set or clear.
* :func:`iperf3` - an iperf3 run between two namespaces, parsed JSON result, with the CPU of
  given PIDs, of both iperf3 processes and of the whole machine over the run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.interop.pcapfile import read_pcap
from tests.netns import Capture, Netns, descendants, kill_pid, wait_until  # noqa: F401  (Capture: re-exported)

PYTHON = sys.executable


# --------------------------------------------------------------------------- capture


@dataclass
class Ip4:
    time: float
    src: str
    dst: str
    proto: int
    total_len: int
    ident: int
    df: bool
    mf: bool
    frag_offset: int  # bytes
    sport: int | None  # UDP/TCP ports of unfragmented packets (or first fragments)
    dport: int | None
    l4: bytes  # everything after the IP header (as captured)

    @property
    def is_fragment(self) -> bool:
        return self.mf or self.frag_offset != 0

    @property
    def udp_payload(self) -> bytes:
        return self.l4[8:] if self.proto == 17 and len(self.l4) >= 8 else b""


def _ipv4(ts: float, pkt: bytes) -> Ip4 | None:
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    total, ident, fl = struct.unpack("!HHH", pkt[2:8])
    src = ".".join(str(b) for b in pkt[12:16])
    dst = ".".join(str(b) for b in pkt[16:20])
    l4 = pkt[ihl:total]
    off = (fl & 0x1FFF) * 8
    sport = dport = None
    if pkt[9] in (6, 17) and off == 0 and len(l4) >= 4:
        sport, dport = struct.unpack("!HH", l4[:4])
    return Ip4(ts, src, dst, pkt[9], total, ident, bool(fl & 0x4000), bool(fl & 0x2000), off,
               sport, dport, l4)


def ipv4_packets(path: Path | str) -> list[Ip4]:
    """Every IPv4 packet of a classic pcap (Ethernet, Linux cooked or raw IP link types)."""
    out = []
    for ts, lt, frame in read_pcap(path):
        if lt == 1:
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                continue
            pkt = frame[14:]
        elif lt == 113:
            if frame[14:16] != b"\x08\x00":
                continue
            pkt = frame[16:]
        elif lt == 276:
            if frame[0:2] != b"\x08\x00":
                continue
            pkt = frame[20:]
        elif lt in (101, 12, 228):
            pkt = frame
        else:
            continue
        p = _ipv4(ts, pkt)
        if p is not None:
            out.append(p)
    return out


def esp_in_udp(pkts: list[Ip4], port: int = 4500) -> list[Ip4]:
    """The ESP-in-UDP packets among ``pkts`` (no keepalives, no IKE with the non-ESP marker)."""
    return [p for p in pkts if p.proto == 17 and not p.is_fragment and port in (p.sport, p.dport)
            and len(p.udp_payload) > 1 and p.udp_payload[:4] != b"\0\0\0\0"]


# --------------------------------------------------------------------------- UDP


_RECEIVER = r"""
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print(json.dumps({"ready": True}), flush=True)
while True:
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        break
    print(json.dumps({"len": len(data), "sha": hashlib.sha256(data).hexdigest()[:16],
                      "from": peer[0]}), flush=True)
"""


class UdpReceiver:
    """``python -c`` UDP receiver in ``ns``; exits by itself after ``lifetime`` seconds."""

    def __init__(self, ns: Netns, addr: str, port: int, lifetime: float = 25.0):
        self.ns = ns
        self.proc = ns.popen([PYTHON, "-u", "-c", _RECEIVER, addr, str(port), str(lifetime)],
                             stdout=subprocess.PIPE)
        self._buf = b""
        line = self._readline(10.0)
        if not line or not json.loads(line).get("ready"):
            self.stop()
            raise RuntimeError(f"UDP receiver in {ns.name} did not start")
        self.got: list[dict] = []

    def _readline(self, timeout: float) -> str | None:
        """The next line, from our own buffer first: several lines may arrive in one read, and
        select() cannot see lines already taken off the pipe (a buffered reader would hide
        them, which once made 5 received datagrams look like 1)."""
        import os
        import select
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def wait(self, n: int, timeout: float = 5.0) -> list[dict]:
        """Wait until ``n`` datagrams in total have arrived (or the timeout); returns all."""
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            line = self._readline(left)
            if not line:
                break
            self.got.append(json.loads(line))
        return self.got

    def drain(self, quiet: float = 0.5) -> list[dict]:
        """Collect whatever arrives until ``quiet`` seconds pass with nothing new."""
        while True:
            line = self._readline(quiet)
            if not line:
                return self.got
            self.got.append(json.loads(line))

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill_pid(self.proc.pid, timeout=2.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2.0)
        if self.proc.stdout:
            self.proc.stdout.close()


_SENDER = r"""
import socket, sys
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 10, 0, 2
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if sys.argv[4] == "df" else IP_PMTUDISC_DONT)
if sys.argv[5] != "-":
    s.bind((sys.argv[5], 0))
data = bytes.fromhex(sys.stdin.read().strip())
for _ in range(int(sys.argv[3])):
    s.sendto(data, (sys.argv[1], int(sys.argv[2])))
"""


def send_udp(ns: Netns, dst: str, port: int, payload: bytes, *, df: bool = False, count: int = 1,
             src: str | None = None) -> None:
    """Send ``payload`` ``count`` times from ``ns`` to dst:port, DF set or clear."""
    ns.run([PYTHON, "-c", _SENDER, dst, str(port), str(count), "df" if df else "nodf", src or "-"],
           input=payload.hex(), timeout=10)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------- iperf3


def iperf3(client: Netns, server: Netns, server_ip: str, *, seconds: float = 2.0, streams: int = 1,
           port: int = 5201, extra: list[str] | None = None, cpu_of: list[int] | None = None) -> dict:
    """One iperf3 run (client -> server; TCP unless ``extra`` says ``-u``). Returns iperf3's JSON
    plus, over the client's run (% of one core, so up to 100 x CPUs):

    * ``"_cpu"`` (when ``cpu_of`` is given): {pid: %} for those PIDs (/proc/PID/stat), and
      ``"_cpu_system"``: the part of it in the kernel (stime);
    * ``"_iperf3_cpu"``: {"client": %, "server": %}, each iperf3 process's whole life (all its
      threads; reaped with wait4, so exact even though both have exited by then);
    * ``"_machine"``: the whole machine from /proc/stat (:func:`machine_share`) and the part
      of it outside this process tree (:func:`outside_share`).
    """
    srv = server.popen(["iperf3", "-s", "-1", "-B", server_ip, "-p", str(port)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(server, port), timeout=5.0, what="iperf3 server")
        with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
            before = cpu_sample(cpu_of or [])
            cli = client.popen(["iperf3", "-c", server_ip, "-p", str(port), "-t", f"{seconds:g}",
                                "-P", str(streams), "-J", "--connect-timeout", "3000", *(extra or [])],
                               stdout=out_f, stderr=err_f)
            cli_cpu = _wait_cpu(cli, timeout=seconds + 20)
            window = cpu_over(before, cpu_sample(cpu_of or []))
            if cli_cpu is None:
                kill_pid(cli.pid, timeout=2.0)
                raise RuntimeError(f"iperf3 client still running after {seconds + 20:g} s")
            out_f.seek(0)
            err_f.seek(0)
            stdout, stderr = out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace")
        try:
            out = json.loads(stdout)
        except ValueError:
            raise RuntimeError(f"iperf3 gave no JSON (rc {cli.returncode}): {stdout[-500:]} "
                               f"{stderr[-500:]}") from None
        if "error" in out:
            raise RuntimeError(f"iperf3: {out['error']}")
        if cpu_of:
            out["_cpu"], out["_cpu_system"] = window["cpu"], window["cpu_system"]
        elapsed = window["elapsed"]
        srv_cpu = _wait_cpu(srv, timeout=5.0)  # ``-1``: the server exits after its one test
        out["_iperf3_cpu"] = {"client": round(100.0 * cli_cpu / elapsed, 1)}
        if srv_cpu is not None:
            out["_iperf3_cpu"]["server"] = round(100.0 * srv_cpu / elapsed, 1)
        out["_machine"] = window["machine"]
        return out
    finally:
        if srv.poll() is None:
            kill_pid(srv.pid, timeout=2.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            srv.wait(timeout=2.0)


CpuSample = tuple[dict[int, "tuple[int, int] | None"], list[int], dict[int, tuple[bool, int]], float]


def cpu_sample(pids: list[int]) -> CpuSample:
    """Now: the CPU ticks of ``pids`` (:func:`_cpu_split`), of the machine and of every process
    outside this process tree and ``pids``, and the monotonic time; for :func:`cpu_over`."""
    return {pid: _cpu_split(pid) for pid in pids}, machine_ticks(), outside_ticks(pids), time.monotonic()


def cpu_over(before: CpuSample, after: CpuSample) -> dict:
    """The CPU between two :func:`cpu_sample` s of the same pids, in % of one core: ``cpu``
    {pid: user + system} and ``cpu_system`` {pid: system: the kernel, i.e. system calls and the
    softirq work this kernel charges to them} for the pids seen at both, ``machine``
    (:func:`machine_share` | :func:`outside_share`) and ``elapsed`` seconds."""
    (c0, m0, o0, t0), (c1, m1, o1, t1) = before, after
    hz, elapsed = os.sysconf("SC_CLK_TCK"), t1 - t0
    both = {pid: (a, b) for pid, a in c0.items() if a is not None and (b := c1.get(pid)) is not None}
    return {"cpu": {pid: round(100.0 * (sum(b) - sum(a)) / hz / elapsed, 1) for pid, (a, b) in both.items()},
            "cpu_system": {pid: round(100.0 * (b[1] - a[1]) / hz / elapsed, 1) for pid, (a, b) in both.items()},
            "machine": machine_share(m0, m1) | outside_share(o0, o1, elapsed), "elapsed": elapsed}


def _wait_cpu(proc: subprocess.Popen, timeout: float) -> float | None:
    """Wait (bounded) for ``proc`` to exit and reap it with wait4: its CPU seconds (user + system,
    all threads, whole life), or None if it still runs at the deadline or was reaped already."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_ticks() -> list[int]:
    """The machine-wide ``cpu`` line of /proc/stat (all CPUs, USER_HZ ticks): user, nice,
    system, idle, iowait, irq, softirq, steal. Namespaces do not change it."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:1 + len(_STAT_FIELDS)]]


PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread


def outside_ticks(exclude: Iterable[int] = ()) -> dict[int, tuple[bool, int]]:
    """Every process outside this one, its descendants and ``exclude``: {pid: (is a kernel
    thread, CPU ticks so far)}, ticks = utime + stime (USER_HZ, all threads). Not cutime/cstime:
    a child reaped between two samples would add its whole life, not its share of the interval."""
    mine = descendants(os.getpid()) | {os.getpid(), *exclude}
    out: dict[int, tuple[bool, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        out[int(d)] = (bool(int(fields[6]) & PF_KTHREAD), int(fields[11]) + int(fields[12]))
    return out


def outside_share(before: dict[int, tuple[bool, int]], after: dict[int, tuple[bool, int]],
                  elapsed: float) -> dict[str, float]:
    """CPU between two :func:`outside_ticks` samples, in % of one core over ``elapsed`` s:
    ``kthreads`` (ksoftirqd, kworkers: kernel work not charged to the process that caused it)
    and ``others`` (user-space processes outside this benchmark: other work on the machine).
    A process that ended in between is left out (so a lower bound when short-lived processes
    run); one that started counts whole."""
    hz = os.sysconf("SC_CLK_TCK")
    sums = {True: 0, False: 0}
    for pid, (kthread, ticks) in after.items():
        old = before.get(pid)
        sums[kthread] += max(0, ticks - (old[1] if old and old[0] == kthread else 0))
    return {"kthreads": round(100.0 * sums[True] / hz / elapsed, 1),
            "others": round(100.0 * sums[False] / hz / elapsed, 1)}


def machine_share(before: list[int], after: list[int]) -> dict[str, float]:
    """The machine's CPU time between two :func:`machine_ticks` samples, in % of one core
    (all CPUs busy = 100 x CPUs, e.g. 200 %): ``busy`` (user + nice + system + irq + softirq +
    steal), ``softirq``, ``steal`` and ``idle`` (idle + iowait); busy + idle = 100 x CPUs."""
    d = dict(zip(_STAT_FIELDS, (b - a for a, b in zip(before, after, strict=True)), strict=True))
    total = sum(d.values())
    cores = os.cpu_count() or 1

    def pct(ticks: int) -> float:
        return round(100.0 * cores * ticks / total, 1) if total else 0.0

    return {"busy": pct(d["user"] + d["nice"] + d["system"] + d["irq"] + d["softirq"] + d["steal"]),
            "softirq": pct(d["softirq"]), "steal": pct(d["steal"]), "idle": pct(d["idle"] + d["iowait"])}


def listening(ns: Netns, port: int) -> bool:
    out = ns.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


def _cpu_split(pid: int) -> tuple[int, int] | None:
    """(utime, stime) of a process so far, in USER_HZ ticks (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])
    except OSError:
        return None


def mbps(result: dict) -> float:
    """Receiver-side throughput of an iperf3 JSON result in Mbit/s."""
    return result["end"]["sum_received"]["bits_per_second"] / 1e6


def retransmits(result: dict) -> int:
    return int(result["end"]["sum_sent"].get("retransmits", 0))
