"""A FreeRADIUS server (Debian's freeradius 3.x) for tests, started in a given network namespace
with its own minimal configuration directory (not /etc/freeradius) and stopped by PID.

Users live in its ``files`` module (``users`` file); EAP-MSCHAPv2 (default) and EAP-MD5 are
enabled, EAP-TLS, EAP-TTLS and PEAP too when ``tls`` (certificate, key, CA) is given (TTLS and
PEAP with inner EAP-MSCHAPv2 in the ``inner-tunnel`` virtual server, the same users file);
accounting goes to ``<dir>/acct/detail`` (the ``detail`` module).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

from tests.netns import stop_process

CONFIG = """\
prefix = /usr
exec_prefix = ${{prefix}}
sysconfdir = /etc
localstatedir = /var
sbindir = ${{exec_prefix}}/sbin
raddbdir = {dir}
confdir = ${{raddbdir}}
logdir = ${{raddbdir}}/log
radacctdir = ${{raddbdir}}/acct
run_dir = ${{raddbdir}}/run
libdir = /usr/lib/freeradius
pidfile = ${{run_dir}}/radiusd.pid
name = freeradius
max_request_time = 30
cleanup_delay = 1
max_requests = 1024
hostname_lookups = no
log {{
  destination = files
  file = ${{logdir}}/radius.log
  auth = yes
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = yes
}}
thread pool {{
  start_servers = 1
  max_servers = 4
  min_spare_servers = 1
  max_spare_servers = 2
  max_requests_per_server = 0
}}
client any4 {{
  ipaddr = 0.0.0.0/0
  secret = {secret}
  require_message_authenticator = yes
}}
modules {{
  eap {{
    default_eap_type = mschapv2
    timer_expire = 60
    max_sessions = 1024
    md5 {{
    }}
    mschapv2 {{
      send_error = no
    }}
{tls}  }}
  mschap {{
  }}
  files {{
    filename = ${{raddbdir}}/users
    acctusersfile = ${{raddbdir}}/acct_users
  }}
  detail {{
    filename = ${{radacctdir}}/detail
    permissions = 0600
    header = "%t"
  }}
  always ok {{
    rcode = ok
  }}
}}
server default {{
  listen {{
    type = auth
    ipaddr = {address}
    port = {auth_port}
  }}
  listen {{
    type = acct
    ipaddr = {address}
    port = {acct_port}
  }}
  authorize {{
    eap {{
      ok = return
    }}
    files
  }}
  authenticate {{
    eap
    Auth-Type MS-CHAP {{
      mschap
    }}
  }}
  post-auth {{
    Post-Auth-Type REJECT {{
      eap
    }}
  }}
  preacct {{
  }}
  accounting {{
    detail
    ok
  }}
}}
{inner}"""

# The inner (phase 2) authentication of PEAP and EAP-TTLS: the same users file, EAP-MSCHAPv2
# (the inner EAP method FreeRADIUS asks for) through the same eap module.
INNER_TUNNEL = """\
server inner-tunnel {
  authorize {
    eap {
      ok = return
    }
    files
  }
  authenticate {
    eap
    Auth-Type MS-CHAP {
      mschap
    }
  }
  post-auth {
    Post-Auth-Type REJECT {
      eap
    }
  }
}
"""


class FreeRadius:
    """``with FreeRadius(ns, tmpdir, users=...) as fr:`` — ``fr.detail_records()`` parses the
    accounting detail file."""

    def __init__(self, ns, workdir: Path, *, users: str, secret: str = "testing123",
                 address: str = "127.0.0.1", auth_port: int = 1812, acct_port: int = 1813,
                 tls: tuple[Path, Path, Path] | None = None):
        self.ns = ns
        self.dir = Path(workdir)
        self.users = users
        self.secret = secret
        self.address = address
        self.auth_port = auth_port
        self.acct_port = acct_port
        self.tls = tls  # (certificate, private key, CA) PEM files: enables EAP-TLS
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def log(self) -> Path:
        return self.dir / "log" / "radius.log"

    @property
    def detail_file(self) -> Path:
        return self.dir / "acct" / "detail"

    def start(self, timeout: float = 20.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Writes the configuration and starts the server without waiting for it (a test that
        starts other services meanwhile calls ``wait_ready`` before the first request)."""
        if shutil.which("freeradius") is None:
            raise RuntimeError("freeradius is not installed (scripts/setup.sh installs it)")
        for sub in ("log", "acct", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "radiusd.conf").write_text(CONFIG.format(
            dir=self.dir, secret=self.secret, address=self.address,
            auth_port=self.auth_port, acct_port=self.acct_port, tls=self._tls_section(),
            inner=INNER_TUNNEL if self.tls else ""))
        (self.dir / "users").write_text(self.users)
        (self.dir / "acct_users").write_text("")
        (self.dir / "dictionary").write_text("")
        # -f: foreground (our child, stopped by PID); -x: log each request (for failures)
        self.proc = self.ns.popen(["freeradius", "-f", "-x", "-d", str(self.dir)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the log says "Ready to process requests"; stops it and raises if it died."""
        assert self.proc is not None, "launch() first"
        ok = wait_for(lambda: self.proc.poll() is not None or
                      (self.log.exists() and "Ready to process requests" in self.log.read_text()),
                      timeout=timeout)
        if not ok or self.proc.poll() is not None:
            text = self.log.read_text() if self.log.exists() else "(no log)"
            self.stop()
            raise RuntimeError(f"FreeRADIUS did not start:\n{text[-3000:]}")

    def _tls_section(self) -> str:
        if self.tls is None:
            return ""
        cert, key, ca = self.tls
        return (f"    tls-config tls-common {{\n      private_key_file = {key}\n"
                f"      certificate_file = {cert}\n      ca_file = {ca}\n"
                f'      cipher_list = "DEFAULT"\n      tls_min_version = "1.2"\n'
                f'      tls_max_version = "1.2"\n    }}\n    tls {{\n      tls = tls-common\n    }}\n'
                + "".join(f"    {m} {{\n      tls = tls-common\n      default_eap_type = mschapv2\n"
                          f"      copy_request_to_tunnel = yes\n      use_tunneled_reply = yes\n"
                          f"      virtual_server = inner-tunnel\n    }}\n"
                          for m in ("ttls", "peap")))

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def detail_records(self) -> list[dict[str, str]]:
        """The accounting records of the detail file: one dict per record (values unquoted)."""
        if not self.detail_file.exists():
            return []
        records, cur = [], None
        for line in self.detail_file.read_text().splitlines():
            if not line.strip():
                if cur:
                    records.append(cur)
                cur = None
                continue
            if not line[0].isspace():
                cur = {}
                continue
            m = re.match(r"\s+([\w-]+) = (.*)$", line)
            if m and cur is not None:
                cur[m.group(1)] = m.group(2).strip('"')
        if cur:
            records.append(cur)
        return records


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def run_in_netns(ns_name: str, fn, timeout: float = 60.0):
    """Runs ``fn()`` in a new thread that has joined network namespace ``ns_name`` (setns is per
    thread: the test process stays where it is). Returns fn's result or re-raises its error."""
    result: dict = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{ns_name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"function in netns {ns_name} did not finish in {timeout} s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def wait_for(pred, timeout: float = 10.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
