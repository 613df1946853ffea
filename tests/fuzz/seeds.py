"""Write a seed corpus for the decoder fuzzer: generated messages plus recorded strongSwan ones."""
from __future__ import annotations

import json
import pathlib
import sys

from hypothesis import HealthCheck, given, settings

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write_seeds(out: pathlib.Path, count: int = 200) -> int:
    sys.path.insert(0, str(ROOT))
    from ikev2.message import encode_message
    from tests.strategies import messages

    out.mkdir(parents=True, exist_ok=True)
    seeds: list[bytes] = []

    @settings(max_examples=count, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages())
    def collect(msg):
        seeds.append(encode_message(msg))

    collect()
    for path in sorted((ROOT / "tests" / "data" / "strongswan").glob("*.json")):
        for m in json.loads(path.read_text()).get("messages", []):
            seeds.append(bytes.fromhex(m["hex"]))
    for i, s in enumerate(seeds):
        (out / f"seed-{i:05d}").write_bytes(s)
    return len(seeds)


if __name__ == "__main__":
    print(write_seeds(pathlib.Path(sys.argv[1])))
