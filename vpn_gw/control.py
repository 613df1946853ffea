"""The control socket: newline-delimited JSON over a Unix stream socket.

Request (one line):  ``{"cmd": "up", "args": {"name": "branch1"}, "id": 7}``
  (``args`` and ``id`` are optional; ``id`` is echoed back)
Response (one line): ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "one-line reason"}``

``ControlServer(path, handler)`` serves it from the daemon's event loop; the handler is
``async handler(cmd: str, args: dict) -> result`` and raises ``ControlError`` (or
``ConfigError``) for failures the user should see; anything else is logged with its traceback
and answered as ``internal error in 'CMD': TYPE: message``.
``control_request(path, cmd, **args)`` is the blocking client the CLI uses. docs/control.md
documents the commands and their result schemas.

Streamed answers: a handler that returns ``Stream(items)`` makes the server write one line
``{"item": ...}`` per item, in batches (yielding to the event loop between batches, so the
daemon keeps answering IKE while it streams 100k entries), then the usual final line
``{"ok": true, "result": {"count": N}}``. ``control_stream(path, cmd, **args)`` is its client:
it yields the items as they arrive. Only commands asked to stream (``"stream": true``) do so.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import errno
import ipaddress
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog

from vpn_gw.config import DEFAULT_CONTROL_SOCKET, ConfigError, Secret

__all__ = ["ControlServer", "control_request", "control_stream", "Stream", "ControlError",
           "DaemonNotRunning", "CommandFailed", "DEFAULT_CONTROL_SOCKET", "MAX_LINE",
           "encode_message"]

MAX_LINE = 1 << 20          # a request or response line may not exceed 1 MiB
SUN_PATH_MAX = 107          # sizeof(sockaddr_un.sun_path) - 1 on Linux

Handler = Callable[[str, dict], Awaitable[Any]]
log = structlog.get_logger("vpn_gw.control")


class ControlError(Exception):
    """A control operation failed; str() is a one-line reason for the user."""


class DaemonNotRunning(ControlError):
    """No daemon answers on the control socket."""


class CommandFailed(ControlError):
    """The daemon answered ``{"ok": false}``; str() is its error."""


class Stream:
    """A handler's streamed result: ``items`` (any iterable, consumed lazily in the event loop)
    are sent one per line, ``batch`` lines per event-loop turn."""

    def __init__(self, items: Iterable[Any], batch: int = 200):
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.items = items
        self.batch = batch


def _json_default(o: Any) -> Any:
    if isinstance(o, Secret):
        return "***"
    if isinstance(o, (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                      ipaddress.IPv6Network, Path)):
        return str(o)
    if isinstance(o, enum.Enum):
        return o.name
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()
    if isinstance(o, (datetime.datetime, datetime.date)):
        return o.isoformat()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def encode_message(obj: Any) -> bytes:
    """One JSON line. Addresses, enums, bytes (hex), dataclasses... are converted."""
    return json.dumps(obj, default=_json_default, separators=(",", ":"),
                      ensure_ascii=False).encode() + b"\n"


def _one_line(s: object) -> str:
    return " ".join(str(s).split()) or "error"


class ControlServer:
    """asyncio Unix-socket server for control requests.

    ``start()`` creates the socket's directory if missing (mode 0700), removes a stale socket
    (one nobody listens on) and refuses to start if another process is listening; the socket
    is created with mode 0600. ``stop()`` closes it, ends open connections and removes the socket
    file (only if it is still ours). Usable as ``async with ControlServer(...)``.
    """

    def __init__(self, path: str | os.PathLike, handler: Handler, *, mode: int = 0o600):
        self.path = Path(path)
        self.handler = handler
        self.mode = mode
        self._server: asyncio.AbstractServer | None = None
        self._ino: tuple[int, int] | None = None
        self._conns: set[asyncio.Task] = set()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        path = self.path
        if len(os.fsencode(str(path))) > SUN_PATH_MAX:
            raise ControlError(f"control socket path is too long ({len(str(path))} > "
                               f"{SUN_PATH_MAX} bytes): {path}")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ControlError(f"cannot create directory {path.parent}: {e.strerror}") from None
        self._remove_stale()
        # Bound under a temporary name, listening, then renamed into place: a client never finds
        # the socket before it accepts (a connect between bind() and listen() is refused).
        tmp = path.parent / f".vpn-gw-{os.getpid()}.sock"
        if len(os.fsencode(str(tmp))) > SUN_PATH_MAX:
            tmp = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~self.mode)
        try:
            if tmp != path:
                tmp.unlink(missing_ok=True)
            sock.bind(str(tmp))
            os.chmod(tmp, self.mode)
            sock.listen(100)
            if tmp != path:
                os.replace(tmp, path)
        except OSError as e:
            sock.close()
            if tmp != path:
                tmp.unlink(missing_ok=True)
            raise ControlError(f"cannot bind control socket {path}: {e.strerror}") from None
        finally:
            os.umask(old_umask)
        st = os.stat(path)
        self._ino = (st.st_dev, st.st_ino)
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)
        log.debug("control socket listening", path=str(path))

    def _remove_stale(self) -> None:
        path = self.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket", path=str(path))
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            return
        except OSError:
            pass
        else:
            raise ControlError(f"another vpn-gw is already running (control socket {path} "
                               f"is live)")
        finally:
            probe.close()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        try:
            await asyncio.wait_for(server.wait_closed(), 2.0)
        except TimeoutError:  # pragma: no cover
            pass
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        log.debug("control socket closed", path=str(self.path))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a stream callback always runs in a task
        self._conns.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(encode_message({"ok": False, "error": "request too long"}))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                response = await self._dispatch(line)
                if isinstance(response.get("result"), Stream):
                    response = await self._stream(writer, response)
                try:
                    data = encode_message(response)
                except (TypeError, ValueError) as e:
                    log.error("control result not serialisable", error=str(e))
                    data = encode_message({"ok": False, "error": f"internal error: result not "
                                                                  f"serialisable ({e})",
                                           **({"id": response["id"]} if "id" in response else {})})
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError, OSError):
                pass

    async def _stream(self, writer: asyncio.StreamWriter, response: dict) -> dict:
        """Write a Stream's items, one ``{"item": ...}`` line each, draining and yielding to the
        event loop after every batch; return the final line (the count, or the error that
        stopped the stream)."""
        stream: Stream = response["result"]
        rid = {"id": response["id"]} if "id" in response else {}
        count = 0
        buf = bytearray()
        try:
            for item in stream.items:
                buf += encode_message({"item": item})
                count += 1
                if count % stream.batch == 0:
                    writer.write(bytes(buf))
                    buf.clear()
                    await writer.drain()
                    await asyncio.sleep(0)
        except (ControlError, ConfigError) as e:
            writer.write(bytes(buf))
            return {"ok": False, "error": _one_line(f"stream stopped after {count} items: {e}"),
                    **rid}
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("control stream failed", count=count)
            writer.write(bytes(buf))
            return {"ok": False, "error": _one_line(f"internal error after {count} items: "
                                                    f"{type(e).__name__}: {e}"), **rid}
        writer.write(bytes(buf))
        return {"ok": True, "result": {"count": count}, **rid}

    async def _dispatch(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return {"ok": False, "error": f"malformed request: {_one_line(e)}"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "malformed request: expected a JSON object"}
        rid = {"id": req["id"]} if "id" in req else {}
        cmd = req.get("cmd")
        args = req.get("args", {})
        if not isinstance(cmd, str) or not cmd:
            return {"ok": False, "error": "malformed request: 'cmd' must be a non-empty string",
                    **rid}
        if not isinstance(args, dict):
            return {"ok": False, "error": "malformed request: 'args' must be an object", **rid}
        try:
            result = await self.handler(cmd, args)
        except (ControlError, ConfigError) as e:   # refusals meant for the user
            return {"ok": False, "error": _one_line(str(e)), **rid}
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("control command failed", cmd=cmd)
            return {"ok": False, "error": _one_line(f"internal error in {cmd!r}: "
                                                    f"{type(e).__name__}: {e}"), **rid}
        return {"ok": True, "result": result, **rid}


def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise DaemonNotRunning(f"vpn-gw is not running (no control socket at {path})") from None
    except ConnectionRefusedError:
        sock.close()
        raise DaemonNotRunning(f"vpn-gw is not running (stale control socket at {path})") \
            from None
    except PermissionError:
        sock.close()
        raise ControlError(f"permission denied on control socket {path} (run as root?)") \
            from None
    except TimeoutError:
        sock.close()
        raise ControlError(f"timed out connecting to {path}") from None
    except OSError as e:
        sock.close()
        if e.errno in (errno.ENOTSOCK, errno.ECONNREFUSED):
            raise DaemonNotRunning(f"vpn-gw is not running ({path} is not a live control "
                                   f"socket)") from None
        raise ControlError(f"cannot connect to control socket {path}: {e.strerror or e}") \
            from None
    return sock


def _final(resp: Any) -> Any:
    if not isinstance(resp, dict) or "ok" not in resp:
        raise ControlError("malformed response from vpn-gw (no 'ok' field)")
    if not resp["ok"]:
        raise CommandFailed(_one_line(resp.get("error") or "command failed"))
    return resp.get("result")


def control_request(path: str | os.PathLike, cmd: str, /, *, timeout: float = 5.0,
                    args: dict | None = None, **kwargs: Any) -> Any:
    """Send one command to the daemon and return its result (blocking).

    The command's arguments are the keyword arguments, merged over ``args`` (use ``args`` for
    names that clash with this function's own, e.g. ``args={"timeout": 30}``). ``timeout`` is
    how long to wait for the connection and the answer.

    Raises DaemonNotRunning if nothing listens at path, CommandFailed with the daemon's one-line
    error if it answered ``ok: false``, ControlError for timeouts and malformed answers.
    """
    path = str(path)
    sock = _connect(path, timeout)
    try:
        try:
            sock.sendall(encode_message({"cmd": cmd, "args": {**(args or {}), **kwargs}}))
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > 64 * MAX_LINE:
                    raise ControlError("response from vpn-gw is too long")
        except TimeoutError:
            raise ControlError(f"no answer from vpn-gw within {timeout:g}s ({cmd!r})") from None
        except OSError as e:
            raise ControlError(f"control connection failed: {e.strerror or e}") from None
    finally:
        sock.close()
    if not buf:
        raise ControlError("vpn-gw closed the control connection without answering")
    try:
        resp = json.loads(buf)
    except ValueError:
        raise ControlError("malformed response from vpn-gw (not JSON)") from None
    return _final(resp)


def control_stream(path: str | os.PathLike, cmd: str, /, *, timeout: float = 5.0,
                   args: dict | None = None, **kwargs: Any) -> Iterator[Any]:
    """Send one command that streams (its args get ``"stream": true``) and yield its items as
    they arrive; the generator's return value is the final result (``{"count": N}``).
    ``timeout`` bounds the connection and each wait for the next line, not the whole stream.
    Raises like ``control_request``; a daemon that answers with a plain result (no stream)
    yields nothing and returns that result."""
    path = str(path)
    sock = _connect(path, timeout)
    try:
        try:
            sock.sendall(encode_message({"cmd": cmd, "args": {**(args or {}), **kwargs,
                                                              "stream": True}}))
            with sock.makefile("rb") as f:
                while True:
                    line = f.readline(MAX_LINE + 1)
                    if not line:
                        raise ControlError("vpn-gw closed the control connection in the middle of "
                                           "an answer")
                    if not line.endswith(b"\n"):
                        raise ControlError("response line from vpn-gw is too long")
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        raise ControlError("malformed response from vpn-gw (not JSON)") from None
                    if isinstance(msg, dict) and "item" in msg and "ok" not in msg:
                        yield msg["item"]
                        continue
                    return _final(msg)
        except TimeoutError:
            raise ControlError(f"no answer from vpn-gw within {timeout:g}s ({cmd!r})") from None
        except OSError as e:
            raise ControlError(f"control connection failed: {e.strerror or e}") from None
    finally:
        sock.close()
