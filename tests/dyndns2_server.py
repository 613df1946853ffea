"""A small dyndns2 server for tests (http.server based, HTTP or HTTPS).

It records every request (:attr:`Dyndns2TestServer.requests`) and answers from a *script*:
a list consumed one entry per request, each entry being

* a string: the body, sent with HTTP 200 (``"good 192.0.2.1"``, ``"badauth"``, two lines ...);
* a tuple ``(status, body)``;
* a callable ``f(request) -> str | (status, body)``.

When the script is exhausted (or empty) it behaves like a provider: wrong or missing
credentials give ``401 badauth``; otherwise one line per host name, ``good IP`` or
``nochg IP`` when the host already had that address.

The listening socket is created in the constructor, i.e. in the calling thread's network
namespace. Use it as a context manager (serving runs in a daemon thread)::

    with Dyndns2TestServer("127.0.0.1", users={"u": "p"}, script=["911"]) as srv:
        ...  # srv.url, srv.requests

Also runnable as ``python tests/dyndns2_server.py --listen ADDR --port N [--script FILE]
[--log FILE.jsonl] [--cert C --key K]`` (script file: one answer per line, ``\\n`` escapes).
"""
from __future__ import annotations

import argparse
import base64
import http.server
import json
import socket
import ssl
import threading
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Dyndns2TestServer", "RecordedRequest"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    raw_query: str
    headers: dict[str, str]
    user: str | None
    password: str | None
    client: str
    status: int = 0
    answer: str = ""

    @property
    def hostnames(self) -> list[str]:
        v = self.query.get("hostname", [""])[0]
        return [h for h in v.split(",") if h]

    def param(self, key: str) -> str | None:
        v = self.query.get(key)
        return v[0] if v else None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, owner: Dyndns2TestServer):
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.owner = owner
        super().__init__(addr, handler)

    def handle_error(self, request, client_address):
        """A client that refuses our certificate (a test expects exactly that) or hangs up is
        recorded, not printed as a traceback; anything else still is."""
        import sys
        err = sys.exc_info()[1]
        if isinstance(err, (ssl.SSLError, ConnectionError)):
            with self.owner._lock:
                self.owner.tls_errors.append(f"{client_address[0]}: {err}")
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "dyndns2-test/1"
    timeout = 10

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_GET(self):
        self.server.owner._handle(self)

    do_POST = do_GET


class Dyndns2TestServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        users: dict[str, str] | None = None,
        script: list[Any] | None = None,
        path: str = "/nic/update",
        certfile: str | None = None,
        keyfile: str | None = None,
        log_file: str | None = None,
    ):
        self.users = users
        self.script = list(script or [])
        self.path = path
        self.requests: list[RecordedRequest] = []
        self.tls_errors: list[str] = []  # handshakes the client broke off (e.g. unknown CA)
        self.records: dict[str, str] = {}    # host name -> address
        self.log_file = log_file
        self._lock = threading.Lock()
        self.scheme = "https" if certfile else "http"
        self.httpd = _Server((host, port), _Handler, self)
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True,
                                                do_handshake_on_connect=False)
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{h}:{self.port}{self.path}"

    def start(self) -> Dyndns2TestServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="dyndns2-test", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> Dyndns2TestServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ answers

    def _default_answer(self, req: RecordedRequest) -> tuple[int, str]:
        if self.users is not None and self.users.get(req.user or "\0") != req.password:
            return 401, "badauth"
        if req.path != self.path:
            return 404, "not found"
        ip = req.param("myip") or req.client
        lines = []
        for h in req.hostnames:
            lines.append(("nochg " if self.records.get(h) == ip else "good ") + ip)
            self.records[h] = ip
        return 200, "\n".join(lines) if lines else "notfqdn"

    def _handle(self, h: _Handler) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        user = password = None
        auth = h.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                pass
        req = RecordedRequest(h.command, parsed.path, urllib.parse.parse_qs(parsed.query),
                              parsed.query, dict(h.headers.items()), user, password,
                              h.client_address[0])
        with self._lock:
            entry = self.script.pop(0) if self.script else None
            if entry is None:
                status, body = self._default_answer(req)
            else:
                out = entry(req) if callable(entry) else entry
                status, body = (200, out) if isinstance(out, str) else out
            req.status, req.answer = status, body
            self.requests.append(req)
            if self.log_file:
                with open(self.log_file, "a") as f:
                    f.write(json.dumps(asdict(req)) + "\n")
        data = body.encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(data)))
        if status == 401:
            h.send_header("WWW-Authenticate", 'Basic realm="dyndns2-test"')
        h.end_headers()
        h.wfile.write(data)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8245)
    ap.add_argument("--script", help="file: one answer per line ('\\n' for line breaks)")
    ap.add_argument("--user", action="append", default=[], help="USER:PASSWORD (repeatable)")
    ap.add_argument("--log", help="append each request as a JSON line to this file")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args(argv)
    script = []
    if a.script:
        with open(a.script) as f:
            script = [ln.rstrip("\n").replace("\\n", "\n") for ln in f if ln.strip()]
    users = dict(u.split(":", 1) for u in a.user) or None
    srv = Dyndns2TestServer(a.listen, a.port, users=users, script=script, certfile=a.cert,
                            keyfile=a.key, log_file=a.log)
    print(f"listening on {srv.url}", flush=True)
    try:
        srv.httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        srv.httpd.server_close()


if __name__ == "__main__":
    main()
