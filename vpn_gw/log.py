"""Logging for the daemon: structlog, human ("console") or JSON lines, with secrets redacted.

``setup_logging(level, fmt)`` configures structlog and routes the standard library's logging
(pyroute2, asyncio, ...) through the same processors, so every line is redacted and formatted
alike. ``redact_secrets`` is the processor: any key named like a secret (psk, secret, password,
key, private_key, sk_*, ...) and any ``Secret`` value, at any depth, becomes ``"***"``.

``RateLimitedLogger`` bounds floods (one log line per dropped packet would be a DoS amplifier):
at most ``limit`` events per key and ``global_limit`` in all per ``interval`` seconds (however
many keys, e.g. spoofed source addresses, there are), with "suppressed N" summaries.
"""
from __future__ import annotations

import logging
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TextIO

import structlog

from vpn_gw.config import Secret

__all__ = ["setup_logging", "redact_secrets", "is_secret_key", "RateLimitedLogger", "flush_all", "get_logger",
           "REDACTED", "LEVELS", "enabled"]

REDACTED = "***"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}

# The level setup_logging configured (NOTSET until then: everything passes, as structlog's default
# configuration does). A call through a module's structlog proxy costs ~15 µs even when its level
# is filtered (it builds a bound logger each time): hot paths ask ``enabled`` first (~0.1 µs).
_min_level = logging.NOTSET
_settings = ("info", "console")  # (level, format) of the last setup_logging: for worker processes


def current_settings() -> tuple[str, str]:
    """(level, format) as setup_logging last configured them (a worker process logs alike)."""
    return _settings


def enabled(level: str) -> bool:
    """Would a line at ``level`` ("debug", "info", ...) be logged?"""
    return LEVELS.get(level, logging.INFO) >= _min_level


_SECRET_NAMES = frozenset({
    "psk", "secret", "secrets", "password", "passwd", "passphrase", "key", "keys", "keymat",
    "private_key", "privkey", "skeyseed", "shared_secret", "dh_secret", "token",
})
_SECRET_SUFFIXES = ("_psk", "_secret", "_password", "_passphrase", "_key", "_keymat")
_NOT_SECRET = frozenset({"public_key", "pubkey", "peer_key", "rate_limit_key"})


def is_secret_key(name: object) -> bool:
    """Whether a log field of this name carries key material (case-insensitive)."""
    if not isinstance(name, str):
        return False
    n = name.lower()
    if n in _NOT_SECRET:
        return False
    return n in _SECRET_NAMES or n.startswith("sk_") or n.endswith(_SECRET_SUFFIXES)


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) else _redact(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [_redact(v, depth + 1) for v in value]
        return out if isinstance(value, list) else tuple(out)
    return value


def redact_secrets(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: blank secret-named keys and Secret values, recursively."""
    for k in list(event_dict):
        if k == "event":
            if isinstance(event_dict[k], Secret):
                event_dict[k] = REDACTED
            continue
        if is_secret_key(k):
            event_dict[k] = REDACTED
        else:
            event_dict[k] = _redact(event_dict[k])
    return event_dict


def _renderer(fmt: str, stream: TextIO):
    if fmt == "json":
        return structlog.processors.JSONRenderer(default=_json_default, sort_keys=False)
    if fmt == "console":
        colors = bool(getattr(stream, "isatty", lambda: False)())
        return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=
                                             structlog.dev.plain_traceback)
    raise ValueError(f"unknown log format {fmt!r} (console or json)")


def _json_default(o: Any) -> Any:
    if isinstance(o, Secret):
        return REDACTED
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).hex()
    return str(o)


def setup_logging(level: str | int = "info", fmt: str = "console",
                  stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging. level: debug|info|warning|error; fmt: console|json."""
    if isinstance(level, str):
        try:
            lvl = LEVELS[level.lower()]
        except KeyError:
            raise ValueError(f"unknown log level {level!r} "
                             f"(one of {', '.join(LEVELS)})") from None
    else:
        lvl = int(level)
    global _min_level, _settings
    _min_level = lvl
    _settings = (next((n for n, v in LEVELS.items() if v == lvl), "info"), fmt)
    stream = stream or sys.stderr
    renderer = _renderer(fmt, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=shared + [
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact_secrets]
    if fmt == "json":
        final.append(structlog.processors.format_exc_info)
    final.append(renderer)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared + [structlog.stdlib.ExtraAdder()],
        processors=final,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("vpn-gw")
    # Libraries that narrate every netlink message or event-loop detail at debug level would
    # drown the gateway's own events: their records below INFO are dropped here. A filter on our
    # handler, not a level on their loggers, because pyroute2 resets its logger's level when it is
    # imported, and importing it here only to override that cost ~200 ms of every start-up.
    handler.addFilter(_QuietLibraries(max(lvl, logging.INFO)))
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "vpn-gw":
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(lvl)


class _QuietLibraries(logging.Filter):
    NOISY = ("pyroute2", "asyncio")

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not record.name.startswith(self.NOISY)


def get_logger(name: str | None = None, **initial: Any):
    return structlog.get_logger(name, **initial)


class RateLimitedLogger:
    """At most ``limit`` events per key and ``global_limit`` events in all per ``interval`` seconds.

    ``log(key, event, **fields)`` logs through ``logger`` unless the key's budget for the current
    window is spent or the logger's global budget is: the global budget bounds the output however
    many keys (e.g. spoofed source addresses) an attacker brings. Suppressed events are counted:

    * per key: when the key's window has ended, the next ``log()`` or ``flush()`` first emits
      ``"suppressed N similar messages"`` (fields ``rate_limit_key``, ``suppressed``,
      ``interval``, ``last_event``); that summary spends global budget like any line;
    * globally: events suppressed by the global budget, and per-key counts whose summary found
      no budget or whose key was forgotten, are summed and emitted as one
      ``"suppressed N similar messages"`` line with ``rate_limit_key = "*"`` and ``events``
      (the most frequent event names and their counts) when the global window ends.

    So each window yields at most ``global_limit + 1`` lines, and the numbers in the summaries
    plus the lines emitted add up to every event logged. At most ``max_keys`` keys are tracked
    (the oldest window is summarised and forgotten when more appear). ``clock`` is a callable
    returning seconds (``time.monotonic`` by default) so tests can drive time. The daemon calls
    ``flush_all()`` periodically, so summaries appear even when the flood stops.
    """

    MAX_EVENT_NAMES = 16  # distinct event names counted in the global summary; the rest are "other"

    def __init__(self, logger: Any = None, *, limit: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, level: str = "warning",
                 max_keys: int = 4096, global_limit: int = 100):
        if limit < 1 or interval <= 0 or global_limit < 1 or max_keys < 1:
            raise ValueError("limit, global_limit and max_keys must be >= 1 and interval > 0")
        self.logger = logger if logger is not None else structlog.get_logger("vpn_gw.ratelimit")
        self.limit = limit
        self.global_limit = global_limit
        self.interval = interval
        self.clock = clock
        self.level = level
        self.max_keys = max_keys
        # key -> [window_start, emitted, suppressed, level, event]
        self._windows: OrderedDict[Hashable, list] = OrderedDict()
        self._global_start: float | None = None
        self._global_emitted = 0
        self._global_suppressed: dict[str, int] = {}
        self._global_level = level
        _INSTANCES.add(self)

    def _emit(self, level: str, event: str, **fields):
        getattr(self.logger, level)(event, **fields)

    # ------------------------------------------------------------------ the global budget

    def _roll_global(self, now: float) -> None:
        if self._global_start is None:
            self._global_start = now
        elif now - self._global_start >= self.interval:
            self._global_summary()
            self._global_start = now
            self._global_emitted = 0

    def _global_summary(self) -> bool:
        counts = self._global_suppressed
        if not counts:
            return False
        total = sum(counts.values())
        top = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:5])
        self._emit(self._global_level, f"suppressed {total} similar messages", rate_limit_key="*",
                   suppressed=total, interval=self.interval, events=top)
        self._global_suppressed = {}
        return True

    def _fold(self, event: str, n: int, level: str) -> None:
        if n <= 0:
            return
        counts = self._global_suppressed
        if event not in counts and len(counts) >= self.MAX_EVENT_NAMES:
            event = "other"
        counts[event] = counts.get(event, 0) + n
        self._global_level = level

    def _budgeted(self, level: str, event: str, count: int, name: str, **fields) -> bool:
        """Emit a line if the global budget allows, else count ``count`` events called ``name``
        as suppressed."""
        if self._global_emitted < self.global_limit:
            self._global_emitted += 1
            self._emit(level, event, **fields)
            return True
        self._fold(name, count, level)
        return False

    # ------------------------------------------------------------------ per key

    def _summary(self, key: Hashable, w: list) -> bool:
        if not w[2]:
            return False
        return self._budgeted(w[3], f"suppressed {w[2]} similar messages", w[2], w[4], rate_limit_key=_key_str(key),
                              suppressed=w[2], interval=self.interval, last_event=w[4])

    def log(self, key: Hashable, event: str, level: str | None = None, **fields) -> bool:
        """Log unless rate-limited; returns whether the event was emitted."""
        level = level or self.level
        now = self.clock()
        self._roll_global(now)
        w = self._windows.get(key)
        if w is not None and now - w[0] >= self.interval:
            self._summary(key, w)
            del self._windows[key]
            w = None
        if w is None:
            while len(self._windows) >= self.max_keys:
                old_key, old = self._windows.popitem(last=False)
                self._summary(old_key, old)
            w = self._windows[key] = [now, 0, 0, level, event]
        if w[1] < self.limit:
            w[1] += 1
            if self._budgeted(level, event, 1, event, **fields):
                return True
            return False
        w[2] += 1
        w[3], w[4] = level, event
        return False

    def flush(self, force: bool = False) -> int:
        """Emit summaries for windows that have ended (all windows if force), and the global
        summary when its window has ended (or if force); returns how many summaries."""
        now = self.clock()
        n = 0
        for key in list(self._windows):
            w = self._windows[key]
            if force or now - w[0] >= self.interval:
                if w[2]:
                    n += 1
                self._summary(key, w)
                del self._windows[key]
        if self._global_start is not None and (force or now - self._global_start >= self.interval):
            n += self._global_summary()
            self._global_start = now
            self._global_emitted = 0
        return n

    def suppressed(self, key: Hashable) -> int:
        w = self._windows.get(key)
        return w[2] if w else 0

    @property
    def keys(self) -> int:
        return len(self._windows)


_INSTANCES: weakref.WeakSet[RateLimitedLogger] = weakref.WeakSet()


def flush_all() -> int:
    """Emit the due summaries of every RateLimitedLogger (the daemon calls this periodically)."""
    return sum(rl.flush() for rl in list(_INSTANCES))


def _key_str(key: Hashable) -> str:
    if isinstance(key, tuple):
        return "/".join(str(k) for k in key)
    return str(key)
