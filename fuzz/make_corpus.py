"""Write the seed corpora of the fuzz harnesses: real certificates from a local CA, CT leaves,
a signed checkpoint, tiles, certstream messages, Alertmanager and Slack payloads, configs.

    .venv/bin/python fuzz/make_corpus.py OUT_DIR      # OUT_DIR/<target>/<seed>

Each seed starts with the harness's mode byte (see each ``fuzz_*.py``). The samples are the
property tests' (``tests/property/bad_input.py``), so both search from the same valid inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from slo.openslo import dump_openslo_yaml  # noqa: E402
from slo.spec import default_slos  # noqa: E402
from tests.property.bad_input import samples  # noqa: E402
from tests.support.certstream_server import GARBAGE, domains_only, heartbeat  # noqa: E402

TARGETS = ("x509", "ct", "certstream", "alertmanager", "slack", "config")


def _seeds() -> dict[str, list[bytes]]:
    s = samples()
    out: dict[str, list[bytes]] = {t: [] for t in TARGETS}

    pem = s.chain_pem + s.key_pem
    out["x509"] = [
        b"\x00" + s.leaf_der,
        b"\x00" + s.rsa_leaf_der,
        b"\x00" + s.ca_root_der,
        b"\x01" + pem,
        b"\x01" + pem[: len(pem) // 2],
        b"\x02\x01" + s.p12,
        b"\x02\x00" + s.p12_plain,
        b"\x03\x00" + pem,
        b"\x03\x01" + s.leaf_der,
        b"\x03\x02" + s.p12,
    ]

    def leaf(leaf_input: bytes, extra: bytes) -> bytes:
        return b"\x00" + struct.pack(">H", len(leaf_input)) + leaf_input + extra

    watchlist = (
        "example.test\n.example.org  # tree\n*.example.net valid_at:2026-01-01\nBücher.example.\n"
    )
    out["ct"] = [
        leaf(s.x509_leaf, s.x509_extra),
        leaf(s.precert_leaf, s.precert_extra),
        b"\x01" + json.dumps(s.sth_json).encode(),
        b"\x02" + s.checkpoint.encode(),
        b"\x03\x03" + s.data_tile,
        b"\x04\x03" + s.hash_tile,
        b"\x05" + watchlist.encode(),
        b"\x06" + json.dumps(s.log_list).encode(),
    ]

    full = json.loads(s.certstream_full)
    out["certstream"] = [
        s.certstream_full.encode(),
        s.certstream_lite.encode(),
        json.dumps(domains_only(full)).encode(),
        json.dumps(heartbeat(1.78e9)).encode(),
        *(g if isinstance(g, bytes) else g.encode() for g in GARBAGE),
    ]

    payload = json.dumps(s.alertmanager).encode()
    out["alertmanager"] = [b"\x00" + payload, b"\x01" + payload, b"\x01{}", b"\x00[]"]

    actions = {
        "type": "block_actions",
        "user": {"id": "U123"},
        "channel": {"id": "C1"},
        "actions": [{"action_id": "certpilot_approve", "value": '{"page": "p:1", "job": 12}'}],
    }
    view = {
        "private_metadata": json.dumps({"page": "p:1", "fingerprint": "ab" * 32}),
        "state": {"values": {"b": {"a": {"selected_option": {"value": "superseded"}}}}},
    }
    out["slack"] = [
        b"\x00" + json.dumps(actions).encode(),
        b"\x01" + json.dumps(view).encode(),
        *(b"\x02" + t.encode() for t in ("status", "expiring 30", "show www", "revoke ab x")),
        b"\x02renew 'www.example.test",
    ]

    # config: mode byte 0 settings, 1 policy, 2 Sloth, 3 Sloth or OpenSLO; each document to
    # the loader it is for (and the odd one to every loader).
    docs = [
        (0, yaml.safe_dump(dict(s.settings))),
        (1, yaml.safe_dump({"policy": dict(s.policy)})),
        (1, yaml.safe_dump(dict(s.policy))),
        (2, yaml.safe_dump(dict(s.sloth))),
        (3, yaml.safe_dump(dict(s.sloth))),
        (3, dump_openslo_yaml(default_slos())),
        *((m, "a: &a [1, 2]\nb: *a\nc: 2026-01-01\n") for m in range(4)),
    ]
    out["config"] = [bytes([m]) + text.encode() for m, text in docs]
    return out


def write(out_dir: Path) -> dict[str, int]:
    """Write every seed; returns the number of bytes per target."""
    sizes: dict[str, int] = {}
    for target, seeds in _seeds().items():
        d = out_dir / target
        d.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (d / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # noqa: S324 (a file name)
        sizes[target] = sum(len(x) for x in seeds)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write <target>/<seed> into")
    args = parser.parse_args()
    sizes = write(args.out)
    print(f"{sum(sizes.values())} bytes of seeds in {args.out}: {sizes}")


if __name__ == "__main__":
    main()
