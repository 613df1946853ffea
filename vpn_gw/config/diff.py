"""What a reload changes: ``diff_configs(old, new)`` -> ``ConfigDiff``."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vpn_gw.config.gateway import GatewayConfig


@dataclass(frozen=True)
class ConfigDiff:
    """What ``vpn-gw reload`` changes. Names keep the order of the file they come from."""
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    changed_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    gateway_changed: tuple[str, ...] = ()   # [gateway] keys that differ

    def __bool__(self):
        return bool(self.added or self.removed or self.changed or self.gateway_changed)

    def to_dict(self) -> dict:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": list(self.changed), "unchanged": list(self.unchanged),
                "changed_keys": {k: list(v) for k, v in self.changed_keys.items()},
                "gateway_changed": list(self.gateway_changed)}


def _changed_fields(a, b, skip: Iterable[str] = ()) -> list[str]:
    out = []
    for f in dataclasses.fields(a):
        if f.name in skip or not f.compare:
            continue
        if getattr(a, f.name) != getattr(b, f.name):
            out.append(f.name)
    return out


def diff_configs(old: GatewayConfig, new: GatewayConfig) -> ConfigDiff:
    old_c = {c.name: c for c in old.connections}
    new_c = {c.name: c for c in new.connections}
    added = tuple(n for n in new_c if n not in old_c)
    removed = tuple(n for n in old_c if n not in new_c)
    changed, unchanged, keys = [], [], {}
    for name, nc in new_c.items():
        oc = old_c.get(name)
        if oc is None:
            continue
        if oc == nc:
            unchanged.append(name)
            continue
        changed.append(name)
        ks = _changed_fields(oc, nc, skip=("children",))
        ochild = {c.name: c for c in oc.children}
        nchild = {c.name: c for c in nc.children}
        for cn, ncc in nchild.items():
            occ = ochild.get(cn)
            if occ is None:
                ks.append(f"child {cn}: added")
            elif occ != ncc:
                ks.extend(f"child {cn}: {k}" for k in _changed_fields(occ, ncc))
        ks.extend(f"child {cn}: removed" for cn in ochild if cn not in nchild)
        if [c.name for c in oc.children] != [c.name for c in nc.children] and \
                set(ochild) == set(nchild):
            ks.append("child order")
        keys[name] = tuple(ks)
    gw = tuple(_changed_fields(old, new, skip=("connections",)))
    return ConfigDiff(added, removed, tuple(changed), tuple(unchanged), keys, gw)
