"""Publish the gateway's own address with RFC 2136 dynamic updates signed with TSIG (RFC 8945).

:class:`DnsUpdatePublisher` sends one UPDATE message per :meth:`~DnsUpdatePublisher.publish`
for all its names, applied atomically by the server (all or nothing). Two modes:

* ``mode="replace"`` (one gateway owns the name): for each name the A and AAAA sets (of the
  managed ``families``) are deleted and the given addresses added;
* ``mode="member"`` (a fleet shares the name, docs/fleet.md): each gateway only adds its own
  A/AAAA records (no prerequisite, RFC 2136 2.5.1) and deletes exactly its own records
  (RFC 2136 2.5.4, "delete an RR from an RRset") when its address changes and on
  :meth:`~DnsUpdatePublisher.withdraw`; the records of other members are never touched,
  except through :meth:`~DnsUpdatePublisher.withdraw_records` for a member known to be dead.

Errors are results, not exceptions, with a text an operator can act on::

    TSIG key rejected by 192.0.2.53: BADSIG (wrong secret or algorithm for key 'gw-key.')
    TSIG key rejected by 192.0.2.53: BADKEY (the server does not know key 'gw-key.' or does not allow it here)
    update of example.test. refused by 192.0.2.53: REFUSED
    no answer from 192.0.2.53 port 53 within 5s

:class:`PublishResult` and :class:`Backoff` are shared with the dyndns2 publisher.
"""
from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update

__all__ = ["DnsUpdatePublisher", "PublishResult", "Backoff", "TSIG_ALGORITHMS", "MODES"]

MODES = ("replace", "member")

TSIG_ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}

_TSIG_ERRORS = {
    dns.tsig.PeerBadSignature: "BADSIG (wrong secret or algorithm for key {key!r})",
    dns.tsig.PeerBadKey: "BADKEY (the server does not know key {key!r} or does not allow it here)",
    dns.tsig.PeerBadTime: "BADTIME (clocks differ by more than the TSIG fudge; check NTP)",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
}


@dataclass(frozen=True)
class PublishResult:
    """Outcome of one publish call.

    ``ok``: every name now carries the address(es). ``error``: why not (None when ok).
    ``status``: per name, the server's word (``"NOERROR"``/``"REFUSED"`` for RFC 2136,
    ``"good"``/``"nochg"``/``"nohost"``... for dyndns2). ``sent``: False when nothing was
    sent (back-off, hard stop, address unchanged). ``retry_at``: monotonic time before which
    the publisher should not (dyndns2: will not) send again; None: no restriction.
    ``stopped``: hard stop, nothing more is sent until the configuration changes.
    """

    ok: bool
    error: str | None = None
    addresses: tuple[str, ...] = ()
    status: dict[str, str] = field(default_factory=dict)
    sent: bool = True
    retry_at: float | None = None
    stopped: bool = False


class Backoff:
    """Exponential back-off: ``initial``, ``initial*factor``, ... capped at ``maximum``."""

    def __init__(self, initial: float, maximum: float, factor: float = 2.0):
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.factor = float(factor)
        self.failures = 0

    def delay(self) -> float:
        """Delay after the current number of failures (0 when there was none)."""
        if self.failures == 0:
            return 0.0
        return min(self.initial * self.factor ** (self.failures - 1), self.maximum)

    def fail(self, now: float) -> float:
        """Count a failure; return the monotonic time of the next attempt."""
        self.failures += 1
        return now + self.delay()

    def reset(self) -> None:
        self.failures = 0


def _parse_addresses(addresses: Iterable[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if isinstance(addresses, str):
        addresses = [addresses]
    out = []
    for a in addresses:
        ip = ipaddress.ip_address(str(a).strip())  # ValueError names the bad address
        if ip not in out:
            out.append(ip)
    return out


class DnsUpdatePublisher:
    """RFC 2136 UPDATE of the A/AAAA records of ``names`` in ``zone`` at ``server``.

    ``names`` are FQDNs inside ``zone`` (the apex is allowed). ``tsig_name`` /
    ``tsig_secret_b64`` / ``tsig_algorithm`` sign the update (both None: unsigned, for servers
    that allow updates by address; not recommended). ``ttl``: TTL of the records written.
    ``families``: which record types this publisher owns (4: A, 6: AAAA); a managed type
    with no address in :meth:`publish` is deleted, an unmanaged one is never touched.
    ``backoff_initial``/``backoff_max``: the ``retry_at`` suggested after failures (the
    publisher itself never refuses to send: RFC 2136 servers do not punish retries).
    ``mode``: ``"replace"`` (the whole A/AAAA sets are ours) or ``"member"`` (only our own
    records, the name is shared with other gateways; module docstring).
    """

    def __init__(
        self,
        zone: str,
        names: list[str],
        server: str,
        port: int = 53,
        *,
        tsig_name: str | None = None,
        tsig_secret_b64: str | None = None,
        tsig_algorithm: str = "hmac-sha256",
        ttl: int = 60,
        timeout: float = 5.0,
        families: Iterable[int] = (4, 6),
        backoff_initial: float = 30.0,
        backoff_max: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        mode: str = "replace",
    ):
        if mode not in MODES:
            raise ValueError(f"mode: one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.published: tuple[str, ...] = ()  # member mode: our records in DNS (this life)
        self.zone = dns.name.from_text(zone)
        if not names:
            raise ValueError("names: at least one name to publish")
        self.names: list[dns.name.Name] = []
        for n in names:
            name = dns.name.from_text(n)
            if not name.is_subdomain(self.zone):
                raise ValueError(f"name {n!r} is not inside zone {zone!r}")
            if name not in self.names:
                self.names.append(name)
        ipaddress.ip_address(server)  # ValueError: the server must be an IP address
        self.server = server
        if not 1 <= port <= 65535:
            raise ValueError(f"bad port {port}")
        self.port = port
        if not 0 <= ttl <= 2**31 - 1:
            raise ValueError(f"bad ttl {ttl}")
        self.ttl = int(ttl)
        self.timeout = float(timeout)
        self.families = frozenset(families)
        if not self.families or not self.families <= {4, 6}:
            raise ValueError("families: a non-empty subset of (4, 6)")
        self.key: dns.tsig.Key | None = None
        if (tsig_name is None) != (tsig_secret_b64 is None):
            raise ValueError("tsig_name and tsig_secret_b64 go together")
        if tsig_name is not None and tsig_secret_b64 is not None:
            alg = TSIG_ALGORITHMS.get(tsig_algorithm.lower().rstrip("."))
            if alg is None:
                raise ValueError(f"unknown TSIG algorithm {tsig_algorithm!r} "
                                 f"(one of {', '.join(TSIG_ALGORITHMS)})")
            try:
                self.key = dns.tsig.Key(tsig_name, tsig_secret_b64, alg)
            except Exception as e:  # binascii.Error for bad base64
                raise ValueError(f"TSIG secret for {tsig_name!r} is not valid base64: {e}") from None
        self._clock = clock
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.last_result: PublishResult | None = None

    @property
    def server_text(self) -> str:
        return self.server if self.port == 53 else f"{self.server} port {self.port}"

    def _new_update(self) -> dns.update.UpdateMessage:
        upd = dns.update.UpdateMessage(self.zone)
        if self.key is not None:
            upd.use_tsig(self.key)
        return upd

    def build_update(self, addresses: Iterable[str],
                     withdraw: Iterable[str] = ()) -> dns.update.UpdateMessage:
        """The (TSIG-signed, once rendered) UPDATE message publishing ``addresses`` under every
        name: replace mode replaces the whole A/AAAA sets; member mode adds these records and
        deletes exactly the records of ``withdraw`` (our previous addresses)."""
        ips = _parse_addresses(addresses)
        gone = [ip for ip in _parse_addresses(withdraw) if ip not in ips]
        upd = self._new_update()
        for name in self.names:
            for version, rdtype in ((4, "A"), (6, "AAAA")):
                if version not in self.families:
                    continue
                if self.mode == "replace":
                    upd.delete(name, rdtype)
                else:
                    for ip in gone:
                        if ip.version == version:
                            upd.delete(name, rdtype, str(ip))
                for ip in ips:
                    if ip.version == version:
                        upd.add(name, self.ttl, rdtype, str(ip))
        return upd

    def build_withdraw(self, addresses: Iterable[str]) -> dns.update.UpdateMessage:
        """The UPDATE deleting exactly the A/AAAA records ``addresses`` from every name (other
        records of the names stay)."""
        upd = self._new_update()
        ips = _parse_addresses(addresses)
        for name in self.names:
            for ip in ips:
                if ip.version in self.families:
                    upd.delete(name, "A" if ip.version == 4 else "AAAA", str(ip))
        return upd

    async def publish(self, addresses: Iterable[str], withdraw: Iterable[str] = ()) -> PublishResult:
        """Publish ``addresses`` under every name (one atomic UPDATE). Replace mode: they become
        the whole A/AAAA sets. Member mode: they are added, and our previously published records
        that are not among them (plus ``withdraw``: e.g. our records from a previous life) are
        deleted one by one."""
        ips = [ip for ip in _parse_addresses(addresses) if ip.version in self.families]
        addrs = tuple(str(ip) for ip in ips)
        if not ips:
            # refusing is safer than deleting the records on a transient address loss
            res = PublishResult(False, "no address of a managed family to publish", addrs, sent=False)
            self.last_result = res
            return res
        old = [*self.published, *withdraw] if self.mode == "member" else []
        res = await self._send(self.build_update(addrs, old), addrs)
        if res.ok and self.mode == "member":
            self.published = addrs
        self.last_result = res
        return res

    async def withdraw(self) -> PublishResult:
        """Member mode: delete exactly the records this publisher added (at shutdown). Nothing
        to withdraw is ``ok`` with ``sent=False``."""
        if not self.published:
            return PublishResult(True, None, (), sent=False)
        res = await self.withdraw_records(self.published)
        if res.ok:
            self.published = ()
        return res

    async def withdraw_records(self, addresses: Iterable[str]) -> PublishResult:
        """Delete exactly the A/AAAA records ``addresses`` from every name (ours, or those of a
        fleet member whose heartbeat lapsed); the other records stay. Does not touch the
        back-off of our own publication (``retry_at`` is None)."""
        addrs = tuple(str(ip) for ip in _parse_addresses(addresses) if ip.version in self.families)
        if not addrs:
            return PublishResult(True, None, (), sent=False)
        return await self._send(self.build_withdraw(addrs), addrs, track=False)

    async def _send(self, msg: dns.update.UpdateMessage, addrs: tuple[str, ...],
                    track: bool = True) -> PublishResult:
        """Send ``msg``; ``track``: count the outcome in the back-off of our publication."""
        error = None
        rcode_text = None
        try:
            resp, _tcp = await dns.asyncquery.udp_with_fallback(
                msg, self.server, timeout=self.timeout, port=self.port)
        except dns.tsig.PeerError as e:
            detail = _TSIG_ERRORS.get(type(e), "{err}").format(
                key=self.key.name.to_text() if self.key else "", err=str(e))
            error = f"TSIG key rejected by {self.server}: {detail}"
            rcode_text = "NOTAUTH"
        except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm, dns.tsig.BadTime) as e:
            error = (f"answer from {self.server} fails TSIG verification "
                     f"({type(e).__name__}: {e})")
        except dns.message.UnknownTSIGKey as e:
            error = f"answer from {self.server} is signed with an unknown key ({e})"
        except dns.exception.Timeout:
            error = f"no answer from {self.server_text} within {self.timeout:g}s"
        except OSError as e:
            error = f"cannot reach {self.server_text}: {e.strerror or e}"
        except dns.exception.DNSException as e:
            error = f"bad answer from {self.server_text}: {type(e).__name__}: {e}"
        else:
            rcode = resp.rcode()
            rcode_text = dns.rcode.to_text(rcode)
            if rcode != dns.rcode.NOERROR:
                error = f"update of {self.zone} refused by {self.server}: {rcode_text}"
                notauth = ("the server is not authoritative for the zone, or does not allow "
                           + ("this key to update it" if self.key is not None
                              else "unsigned updates: configure a TSIG key"))
                hint = {
                    dns.rcode.REFUSED: "the server's ACL does not allow this update (key or address)",
                    dns.rcode.NOTAUTH: notauth,
                    dns.rcode.NOTZONE: "a name is outside the zone",
                    dns.rcode.SERVFAIL: "server failure",
                }.get(rcode)
                if hint:
                    error += f" ({hint})"
            elif self.key is not None and not resp.had_tsig:
                error = f"answer from {self.server} is not TSIG-signed"
        now = self._clock()
        status = {n.to_text(): rcode_text or "error" for n in self.names}
        if error is None:
            if track:
                self.backoff.reset()
            res = PublishResult(True, None, addrs, status)
        else:
            res = PublishResult(False, error, addrs, status,
                                retry_at=self.backoff.fail(now) if track else None)
        return res
