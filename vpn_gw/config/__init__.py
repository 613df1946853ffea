"""Gateway configuration: TOML file -> validated, immutable dataclasses.

``load_config(path)`` reads and validates a file; ``parse_config(text, ...)`` does the same for a
string. Every problem found is reported as a ``ConfigError`` whose ``str`` is one line naming the
file, the line, the key and what is wrong, e.g.::

    hq.toml:14: connection[0].child[0].local_ts[1] (connection 'branch1', child 'net'): '10.1.0.5/24' has
    host bits set (did you mean '10.1.0.0/24'?)

All problems of a file are collected (``ConfigError.problems``); the first one is the message.
Key names follow strongSwan's swanctl.conf. ``docs/config.md`` documents every key; keep the two
in step (tests/test_config_docs.py checks that every key is documented).

The package, one module per job (import the API from here, not from the modules):

- ``loader``: ``load_config``/``parse_config``: read the file, parse TOML, assemble the sections
- ``gateway``: ``[gateway]`` and ``GatewayConfig`` (the whole file)
- ``connection``: ``[[connection]]``/``[[connection.child]]``, ``ConnectionConfig``, ``ChildConfig``
- ``pools``: ``[[pool]]``, ``PoolConfig``;  ``ddns``: ``[[ddns]]``, ``DdnsConfig``
- ``keys``: the keys each table accepts and the "belongs in ..." hints
- ``convert``: the shared validation machinery and value converters (durations and sizes are
  parsed by ``vpn_gw.durations``)
- ``credentials``: PSKs, certificates, private keys;  ``secret``: ``Secret``
- ``locator``: source lines for key paths (``KeyLocator``);  ``errors``: ``Problem``, ``ConfigError``
- ``diff``: ``diff_configs`` for ``vpn-gw reload``;  ``helpers``: the helpers for section validators
  that live outside the package (``[radius]``, the PostgreSQL keys of ``[[pool]]``)

Underscore names are shared between the package's modules but are not API outside it.
"""
from __future__ import annotations

from vpn_gw.config.connection import ChildConfig, ConnectionConfig, parse_identity
from vpn_gw.config.ddns import DdnsConfig
from vpn_gw.config.diff import ConfigDiff, diff_configs
from vpn_gw.config.errors import ConfigError, Problem
from vpn_gw.config.gateway import DEFAULT_CONTROL_SOCKET, GatewayConfig
from vpn_gw.config.keys import CHILD_KEYS, CONNECTION_KEYS, DDNS_KEYS, GATEWAY_KEYS, POOL_KEYS, TOP_KEYS
from vpn_gw.config.loader import load_config, parse_config
from vpn_gw.config.locator import KeyLocator, format_key_path
from vpn_gw.config.pools import PoolConfig
from vpn_gw.config.secret import Secret

__all__ = [
    "ConfigError", "Problem", "Secret", "parse_identity",
    "GatewayConfig", "ConnectionConfig", "ChildConfig", "PoolConfig", "DdnsConfig", "ConfigDiff",
    "load_config", "parse_config", "diff_configs", "KeyLocator", "format_key_path",
    "DEFAULT_CONTROL_SOCKET",
    "TOP_KEYS", "GATEWAY_KEYS", "CONNECTION_KEYS", "CHILD_KEYS", "POOL_KEYS", "DDNS_KEYS",
]
