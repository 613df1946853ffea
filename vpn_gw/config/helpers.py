"""The package's validation helpers for section validators that live outside it
(``vpn_gw.radius.settings``, ``vpn_gw.pools.pg_settings``): one namespace with the converters of
``convert`` (``_Table``, ``_int``, ``_duration``, ...), ``_read_file``/``_check_private_perms`` of
``credentials`` and ``Secret``."""
from __future__ import annotations

import types


def section_helpers() -> types.SimpleNamespace:
    from vpn_gw.config import convert, credentials
    from vpn_gw.config.secret import Secret
    names = {k: getattr(convert, k) for k in dir(convert) if k.startswith("_") and not k.startswith("__")}
    return types.SimpleNamespace(**names, _read_file=credentials._read_file,
                                 _check_private_perms=credentials._check_private_perms, Secret=Secret)
