"""Secrets read from the configuration: pre-shared keys, certificates, private keys."""
from __future__ import annotations

import base64
import binascii
import re
import stat
from pathlib import Path

from vpn_gw.config.convert import _Bad, _Ctx, _describe, _list, _nonempty_str
from vpn_gw.config.secret import Secret

# Minimum PSK length: shorter keys are rejected outright (documented in docs/config.md).
PSK_MIN_BYTES = 8
# PSKs shorter than this load, with a warning.
PSK_WARN_BYTES = 16
_BASE64_ADVICE = ("if it is base64, write \"0s\" before it (on both sides: strongSwan also takes a "
                  "bare string as its characters)")


def _read_file(ctx: _Ctx, s: str, what: str) -> tuple[Path, bytes]:
    p = ctx.path(s)
    try:
        return p, p.read_bytes()
    except OSError as e:
        raise _Bad(f"cannot read {what} {str(p)!r}: {e.strerror or e}") from None


def _check_private_perms(ctx: _Ctx, path: tuple, p: Path, what: str):
    try:
        mode = p.stat().st_mode
    except OSError:  # pragma: no cover
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        ctx.warn(path, f"{what} file {str(p)!r} is readable by group/others "
                       f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")


def _looks_like_base64(s: str) -> bool:
    """Whether a bare (no 0x/0s) key looks like the output of `... | base64`."""
    if len(s) < 16 or len(s) % 4 or not _BASE64_RE.fullmatch(s):
        return False
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return False
    mixed = any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s)
    return s.endswith("=") or "+" in s or "/" in s or mixed


_BASE64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _psk(ctx: _Ctx, path: tuple, *, base64_hint: bool = False):
    """A secret: inline text, "0x" hex, "0s" base64 or "file:PATH". base64_hint: warn when the
    text looks like base64 without "0s" (for psk; a TSIG secret is base64 by definition)."""
    def conv(v):
        if not isinstance(v, str):
            raise _Bad(f"expected a string, got {_describe(v, show=False)}")
        if v.startswith("file:"):
            p, data = _read_file(ctx, v[5:].strip(), "PSK file")
            _check_private_perms(ctx, path, p, "PSK")
            text = data.rstrip(b"\r\n")
            # a file may itself hold 0x/0s notation
            try:
                s = text.decode()
            except UnicodeDecodeError:
                value = text
            else:
                value = _decode_psk(s) if s.startswith(("0x", "0s")) else text
                if base64_hint and not s.startswith(("0x", "0s")) and _looks_like_base64(s):
                    ctx.warn(path, f"PSK file {str(p)!r} holds what looks like base64 without the "
                                   f"'0s' prefix, so its {len(s)} characters are the key, not the "
                                   f"{len(base64.b64decode(s))} bytes they encode; {_BASE64_ADVICE}")
        else:
            value = _decode_psk(v)
            ctx.inline_secrets.append(path)
            if base64_hint and not v.startswith(("0x", "0s")) and _looks_like_base64(v):
                ctx.warn(path, f"the key looks like base64 without the '0s' prefix, so its {len(v)} "
                               f"characters are the key, not the {len(base64.b64decode(v))} bytes they "
                               f"encode; {_BASE64_ADVICE}")
        if len(value) < PSK_MIN_BYTES:
            raise _Bad(f"pre-shared key is {len(value)} bytes; at least {PSK_MIN_BYTES} are required "
                       f"(use a long random key: `head -c 32 /dev/urandom | base64`, written as "
                       f"\"0s<base64>\")")
        if len(value) < PSK_WARN_BYTES:
            ctx.warn(path, f"pre-shared key is only {len(value)} bytes; use at least "
                           f"{PSK_WARN_BYTES} random bytes (`head -c 32 /dev/urandom | base64`, "
                           f"written as \"0s<base64>\")")
        return Secret(bytes(value))
    return conv


PPK_MIN_BYTES = 32  # RFC 8784 3: a PPK should have at least 256 bits of entropy


def _ppk(ctx: _Ctx, path: tuple):
    """A post-quantum preshared key: like a PSK (inline, 0x, 0s, file:), at least 32 bytes."""
    as_psk = _psk(ctx, path, base64_hint=True)

    def conv(v):
        secret = as_psk(v)
        n = len(secret.reveal())
        if n < PPK_MIN_BYTES:
            raise _Bad(f"PPK is {n} bytes; RFC 8784 wants at least {PPK_MIN_BYTES} random bytes "
                       f"(e.g. `head -c 32 /dev/urandom | base64` and \"0s...\")")
        return secret
    return conv


def _check_inline_secret_perms(ctx: _Ctx, source: Path | None):
    """A configuration file that holds secrets inline must not be readable by group/others."""
    if source is None or not ctx.inline_secrets:
        return
    try:
        mode = source.stat().st_mode
    except OSError:  # pragma: no cover - it was just read
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        first = ctx.inline_secrets[0]
        more = len(ctx.inline_secrets) - 1
        also = f" (and {more} more secret{'s' if more > 1 else ''})" if more else ""
        ctx.warn(first, f"the {first[-1]}{also} is written inline in this file, which is readable by "
                        f"group/others (mode {stat.S_IMODE(mode):04o}); chmod 600 it, or keep the "
                        f"secret in a file of its own (\"file:PATH\", mode 600)")


def _decode_psk(s: str) -> bytes:
    if s.startswith("0x"):
        try:
            return bytes.fromhex(s[2:])
        except ValueError:
            raise _Bad("pre-shared key starts with '0x' but is not valid hex") from None
    if s.startswith("0s"):
        try:
            return base64.b64decode(s[2:], validate=True)
        except (binascii.Error, ValueError):
            raise _Bad("pre-shared key starts with '0s' but is not valid base64") from None
    return s.encode()


def _certs(ctx: _Ctx):
    def conv(v):
        files = _list(_nonempty_str, example='["/etc/vpn-gw/hq.pem"]')(v)
        from cryptography import x509
        paths, certs = [], []
        for i, s in enumerate(files):
            try:
                p, data = _read_file(ctx, s, "certificate file")
            except _Bad as e:
                raise _Bad(str(e), (i,)) from None
            try:
                loaded = x509.load_pem_x509_certificates(data)
            except ValueError:
                raise _Bad(f"{str(p)!r} is not a PEM certificate file (expected "
                           f"-----BEGIN CERTIFICATE-----)", (i,)) from None
            paths.append(p)
            certs.extend(loaded)
        return tuple(paths), tuple(certs)
    return conv


def _private_key(ctx: _Ctx, path: tuple):
    def conv(v):
        s = _nonempty_str(v)
        from cryptography.hazmat.primitives import serialization
        p, data = _read_file(ctx, s, "private key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise _Bad(f"private key {str(p)!r} is encrypted; vpn-gw needs an unencrypted key "
                       f"(protect it with file mode 0600 instead)") from None
        except (ValueError, Exception):
            raise _Bad(f"{str(p)!r} is not a PEM private key") from None
        _check_private_perms(ctx, path, p, "private key")
        return p, Secret(key)
    return conv


def _check_key_matches(ctx: _Ctx, path: tuple, cert, key):
    from cryptography.hazmat.primitives import serialization
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        same = cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    except Exception:  # pragma: no cover - exotic key types
        return
    if not same:
        ctx.error(path + ("private_key",), "private_key does not match the public key of the "
                                           "first certificate in certs")
