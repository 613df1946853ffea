"""Publish the gateway's address with the dyndns2 HTTP(S) protocol (DynDNS, No-IP, many others).

One :meth:`Dyndns2Publisher.publish` sends::

    GET /nic/update?hostname=a.example.org,b.example.org&myip=203.0.113.5&wildcard=NOCHG&mx=NOCHG&backmx=NOCHG
    Authorization: Basic ...
    User-Agent: vpn-gw/0.1

``wildcard``/``mx``/``backmx`` are ``NOCHG`` so settings made at the provider are kept.
The answer has one line per host name, in request order (a single line applies to all).

Providers ban clients that ignore their answers, so the publisher enforces a state machine
(see :data:`ANSWERS`):

* ``good``/``nochg``: success; the address is *confirmed* and not sent again until it changes
  (unless ``force=True``: the periodic refresh). ``good 127.0.0.1`` for another address means
  the provider ignored the request (client considered misbehaving) and is a hard stop.
* ``badauth``, ``!donator``, ``badagent``, ``numhost``: hard stop of the publisher: nothing is
  sent until the configuration changes (a new publisher, or :meth:`reset`).
* ``nohost``, ``notfqdn``, ``abuse``, ``!yours``: hard stop for that host name only; the
  other names go on.
* ``911``, ``dnserr``, HTTP 5xx: server trouble: exponential back-off from ``backoff_initial``
  (30 min, as DynDNS requires) doubling up to ``backoff_max``; :meth:`publish` refuses to send
  before then, whatever the address does.
* network/TLS errors, unreadable answers, other HTTP errors: exponential back-off from
  ``retry_initial`` up to ``retry_max``; a *new* address is still sent at once after a
  network error (the provider never saw the failed request).

HTTP runs in a worker thread (``http.client``), so :meth:`publish` does not block the loop.
"""
from __future__ import annotations

import asyncio
import base64
import http.client
import ipaddress
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from vpn_gw.ddns.publisher import Backoff, PublishResult

__all__ = ["Dyndns2Publisher", "Answer", "parse_answer", "ANSWERS", "MAX_HOSTS"]

MAX_HOSTS = 20  # dyndns2: more hosts in one request gives 'numhost'

# code -> (kind, explanation); kind: ok | stop (whole publisher) | stop-name | backoff
ANSWERS: dict[str, tuple[str, str]] = {
    "good": ("ok", "updated"),
    "nochg": ("ok", "already up to date"),
    "badauth": ("stop", "user name or password rejected"),
    "!donator": ("stop", "option not available for this account"),
    "badagent": ("stop", "user agent or request method blocked by the provider"),
    "numhost": ("stop", "too many host names in one update"),
    "notfqdn": ("stop-name", "not a fully qualified domain name"),
    "nohost": ("stop-name", "host name does not exist in this account"),
    "!yours": ("stop-name", "host name belongs to another account"),
    "abuse": ("stop-name", "host name blocked for update abuse"),
    "dnserr": ("backoff", "DNS error at the provider"),
    "911": ("backoff", "problem or maintenance at the provider"),
}


@dataclass(frozen=True)
class Answer:
    """One line of a dyndns2 answer: ``code`` (lower case, e.g. ``"good"``), ``address``."""

    code: str
    address: str | None = None
    text: str = ""

    @property
    def kind(self) -> str:
        return ANSWERS.get(self.code, ("unknown", ""))[0]


def parse_answer(body: str, names: list[str]) -> dict[str, Answer]:
    """Map each host name to its answer line.

    Lines are in request order; one line for several names applies to all of them (e.g.
    ``badauth``). Fewer lines than names otherwise: the missing ones get code ``""``.
    """
    lines = [ln.strip() for ln in body.replace("\r", "\n").split("\n") if ln.strip()]
    answers = []
    for ln in lines:
        parts = ln.split()
        code = parts[0].lower()
        addr = parts[1] if len(parts) > 1 else None
        answers.append(Answer(code, addr, ln))
    if len(answers) == 1 and len(names) > 1:
        answers = answers * len(names)
    out = {}
    for i, n in enumerate(names):
        out[n] = answers[i] if i < len(answers) else Answer("", None, "")
    return out


class Dyndns2Publisher:
    """dyndns2 client for ``names`` at ``host`` (see the module doc for the state machine).

    ``port`` defaults to 443 for https and 80 for http. ``ca_file``: PEM file of the CA(s)
    to trust instead of the system store (https only). ``user_agent``: providers want
    ``company-product-version``. ``timeout``: per HTTP request. Times are ``clock()``
    (monotonic) seconds.
    """

    def __init__(
        self,
        host: str,
        names: list[str],
        user: str,
        password: str,
        port: int | None = None,
        path: str = "/nic/update",
        scheme: str = "https",
        ca_file: str | None = None,
        user_agent: str = "vpn-gw/0.1",
        *,
        timeout: float = 15.0,
        backoff_initial: float = 1800.0,
        backoff_max: float = 86400.0,
        retry_initial: float = 60.0,
        retry_max: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', not {scheme!r}")
        if not host:
            raise ValueError("host: the provider's host name or address")
        seen: list[str] = []
        for n in names:
            n = n.strip().rstrip(".").lower()
            if not n or any(c in n for c in ",/?&= "):
                raise ValueError(f"bad host name {n!r}")
            if n not in seen:
                seen.append(n)
        if not seen:
            raise ValueError("names: at least one host name")
        if len(seen) > MAX_HOSTS:
            raise ValueError(f"dyndns2 allows at most {MAX_HOSTS} host names per update "
                             f"(got {len(seen)}); use several [[ddns]] entries")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        if ca_file is not None and scheme != "https":
            raise ValueError("ca_file only makes sense with scheme = 'https'")
        self.host = host
        self.names = seen
        self.user = user
        self._password = password
        self.scheme = scheme
        self.port = port if port is not None else (443 if scheme == "https" else 80)
        if not 1 <= self.port <= 65535:
            raise ValueError(f"bad port {self.port}")
        self.path = path
        self.ca_file = ca_file
        self.user_agent = user_agent
        self.timeout = float(timeout)
        self._clock = clock
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ssl.create_default_context(cafile=ca_file)  # ca_file only: no system CAs
        self.server_backoff = Backoff(backoff_initial, backoff_max)
        self.retry_backoff = Backoff(retry_initial, retry_max)
        self.reset()

    # ---------------------------------------------------------------- state

    def reset(self) -> None:
        """Forget hard stops and back-off (only after the configuration was changed)."""
        self.stopped: str | None = None            # reason of a whole-publisher hard stop
        self.stopped_names: dict[str, str] = {}     # name -> answer code
        self.hold_until: float = 0.0
        self.hold_reason: str | None = None
        self.hold_kind: str | None = None           # "server" (911/dnserr/5xx), "answer", "network"
        self.failed_address: str | None = None      # address of the request that failed
        self.confirmed: str | None = None           # address confirmed by good/nochg
        self.server_backoff.reset()
        self.retry_backoff.reset()
        self.requests_sent = 0
        self.last_result: PublishResult | None = None

    @property
    def active_names(self) -> list[str]:
        return [n for n in self.names if n not in self.stopped_names]

    @property
    def state(self) -> str:
        """``"stopped"``, ``"backoff"`` (until :attr:`hold_until`) or ``"ready"``."""
        if self.stopped or not self.active_names:
            return "stopped"
        if self._clock() < self.hold_until:
            return "backoff"
        return "ready"

    def _stop_text(self) -> str:
        if self.stopped:
            return self.stopped
        return "all host names stopped: " + ", ".join(
            f"{n}: {c}" for n, c in self.stopped_names.items())

    # ---------------------------------------------------------------- request

    def build_query(self, address: str, names: list[str] | None = None) -> str:
        """Path and query string of the update request."""
        q = [
            ("hostname", ",".join(names if names is not None else self.active_names)),
            ("myip", address),
            ("wildcard", "NOCHG"),
            ("mx", "NOCHG"),
            ("backmx", "NOCHG"),
        ]
        return self.path + "?" + urllib.parse.urlencode(q, safe=",:")

    def build_headers(self) -> dict[str, str]:
        cred = base64.b64encode(f"{self.user}:{self._password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {cred}", "User-Agent": self.user_agent,
                "Accept": "text/plain", "Connection": "close"}

    def _http_get(self, target: str) -> tuple[int, str]:
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", target, headers=self.build_headers())
            resp = conn.getresponse()
            body = resp.read(65536).decode("utf-8", "replace")
            return resp.status, body
        finally:
            conn.close()

    def _endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    async def publish(self, address: str, *, force: bool = False) -> PublishResult:
        """Publish ``address`` for every active name, unless the state machine forbids it.

        Sends nothing (``sent=False``) when stopped, backing off, or when ``address`` was
        already confirmed and ``force`` is false (the periodic refresh passes ``force=True``).
        """
        ip = ipaddress.ip_address(address.strip())  # ValueError for a bad address
        address = str(ip)
        now = self._clock()
        if self.stopped or not self.active_names:
            return self._done(PublishResult(False, f"not sending: {self._stop_text()}", (address,),
                                            dict(self.stopped_names), sent=False, stopped=True))
        # a network failure never reached the provider: a new address may go out at once
        network_only = self.hold_kind == "network" and address != self.failed_address
        if now < self.hold_until and not network_only:
            return self._done(PublishResult(
                False, f"holding back for {self.hold_until - now:.0f}s more after: {self.hold_reason}",
                (address,), sent=False, retry_at=self.hold_until))
        if not force and address == self.confirmed:
            return self._done(PublishResult(True, None, (address,), sent=False))
        names = self.active_names
        target = self.build_query(address, names)
        self.requests_sent += 1
        try:
            status, body = await asyncio.to_thread(self._http_get, target)
        except ssl.SSLCertVerificationError as e:
            return self._retry(address, f"TLS certificate of {self.host} not accepted: "
                                        f"{e.verify_message or e}")
        except ssl.SSLError as e:
            return self._retry(address, f"TLS error with {self.host}:{self.port}: {e.reason or e}")
        except TimeoutError:
            return self._retry(address, f"no answer from {self._endpoint()} within {self.timeout:g}s")
        except (OSError, http.client.HTTPException) as e:
            text = getattr(e, "strerror", None) or str(e) or type(e).__name__
            return self._retry(address, f"cannot reach {self._endpoint()}: {text}")
        return self.apply_answer(address, names, status, body)

    # ---------------------------------------------------------------- answer

    def _done(self, res: PublishResult) -> PublishResult:
        self.last_result = res
        return res

    def _retry(self, address: str, error: str, *, reached: bool = False) -> PublishResult:
        """Back off after a failure; ``reached``: the provider saw the request."""
        now = self._clock()
        self.hold_until = self.retry_backoff.fail(now)
        self.hold_reason = error
        self.hold_kind = "answer" if reached else "network"
        self.failed_address = address
        return self._done(PublishResult(False, error, (address,), sent=True, retry_at=self.hold_until))

    def _server_trouble(self, address: str, error: str, status: dict[str, str]) -> PublishResult:
        now = self._clock()
        self.hold_until = self.server_backoff.fail(now)
        self.hold_reason = error
        self.hold_kind = "server"
        self.failed_address = address
        return self._done(PublishResult(False, error, (address,), status, retry_at=self.hold_until))

    def _hard_stop(self, address: str, code: str, status: dict[str, str]) -> PublishResult:
        why = ANSWERS.get(code, ("", code))[1]
        self.stopped = f"{self.host} answered {code!r} ({why}); fix the configuration"
        self.confirmed = None
        return self._done(PublishResult(False, self.stopped, (address,), status, stopped=True))

    def apply_answer(self, address: str, names: list[str], http_status: int, body: str) -> PublishResult:
        """Apply the provider's answer (``http_status``, ``body``) to a request that published
        ``address`` for ``names``; returns the result :meth:`publish` gives (see module doc)."""
        answers = parse_answer(body, names)
        status = {n: a.code for n, a in answers.items()}
        codes = [a.code for a in answers.values()]
        if http_status in (401, 403) and not any(ANSWERS.get(c) for c in codes):
            return self._hard_stop(address, "badauth", {n: "badauth" for n in names})
        # whole-publisher hard stops first: they say nothing about single names
        for code in codes:
            if ANSWERS.get(code, ("",))[0] == "stop":
                return self._hard_stop(address, code, status)
        for n, a in answers.items():
            if a.kind == "ok" and a.address and a.address == "127.0.0.1" and address != "127.0.0.1":
                return self._hard_stop(address, "badagent",
                                       {**status, n: "good 127.0.0.1 (request ignored)"})
        if any(ANSWERS.get(c, ("",))[0] == "backoff" for c in codes):
            bad = sorted({c for c in codes if ANSWERS.get(c, ("",))[0] == "backoff"})
            why = "; ".join(f"{c} ({ANSWERS[c][1]})" for c in bad)
            return self._server_trouble(address, f"{self.host} answered {why}; backing off", status)
        if http_status >= 500 or (http_status >= 400 and not any(c in ANSWERS for c in codes)):
            snippet = body.strip().splitlines()[0][:80] if body.strip() else ""
            err = f"{self.host} answered HTTP {http_status}" + (f": {snippet}" if snippet else "")
            if http_status >= 500:
                return self._server_trouble(address, err, status)
            return self._retry(address, err, reached=True)
        errors = []
        for n, a in answers.items():
            kind = a.kind
            if kind == "stop-name":
                self.stopped_names[n] = a.code
                errors.append(f"{n}: {a.code} ({ANSWERS[a.code][1]}), not updated again")
            elif kind != "ok":
                errors.append(f"{n}: unexpected answer {a.text!r}" if a.text else f"{n}: no answer line")
        unknown = [n for n, a in answers.items() if a.kind not in ("ok", "stop-name")]
        if unknown:
            return self._retry(address, f"{self.host}: " + "; ".join(errors), reached=True)
        self.retry_backoff.reset()
        self.server_backoff.reset()
        self.hold_until = 0.0
        self.hold_reason = None
        self.hold_kind = None
        self.failed_address = None
        if errors:
            if self.active_names:
                self.confirmed = address
            return self._done(PublishResult(False, f"{self.host}: " + "; ".join(errors), (address,),
                                            status, stopped=not self.active_names))
        self.confirmed = address
        return self._done(PublishResult(True, None, (address,), status))
