"""``vpn-gw import-swanctl``: read a strongSwan swanctl.conf, print the equivalent vpn-gw TOML.

:mod:`.parser` reads swanctl.conf's syntax strictly (sections, ``key = value``, comments,
``include``) into :class:`Section` trees; :mod:`.convert` maps connections, children,
proposals, secrets and pools onto our keys (docs/config.md) and lists, item by item, what
cannot be converted. docs/migrate-strongswan.md describes the mapping.
"""
from vpn_gw.swanctl_import.convert import Conversion, convert, convert_file
from vpn_gw.swanctl_import.parser import Section, SwanctlSyntaxError, parse_file, parse_text

__all__ = ["Conversion", "Section", "SwanctlSyntaxError", "convert", "convert_file", "parse_file",
           "parse_text"]
