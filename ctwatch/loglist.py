"""Logs from a v3 log list (the JSON Chrome publishes and certspotter ``-logs`` reads).

Schema: https://www.gstatic.com/ct/log_list/v3/log_list_schema.json. ``operators[].logs[]`` are
RFC 6962 logs (``url``, ``key``), ``operators[].tiled_logs[]`` static-ct-api logs
(``monitoring_url``, ``key``). Logs whose state is ``rejected`` or ``retired`` are left out,
as certspotter does: their entries are either untrusted or frozen and already monitored.
Pure: :func:`parse_log_list` takes the decoded JSON; :func:`load_log_list` reads a file.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from certpilot.domain.errors import ConfigError
from certpilot.settings import shown
from ctwatch.rfc6962 import log_id
from ctwatch.source import LogKind

_SKIPPED_STATES = frozenset({"rejected", "retired"})


@dataclass(frozen=True, slots=True)
class LogInfo:
    url: str
    key_der: bytes
    kind: LogKind = "rfc6962"
    description: str = ""
    operator: str = ""
    origin: str | None = None  # tiled logs: the checkpoint origin (submission prefix)

    @property
    def log_id(self) -> str:
        return base64.b64encode(log_id(self.key_der)).decode("ascii")


def decode_key(value: object, where: str, source: str) -> bytes:
    """A log's base64 DER public key; :class:`ConfigError` naming ``where`` otherwise."""
    if not isinstance(value, str) or not value:
        raise ConfigError(source, where, "a base64 public key is required", shown(value))
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(source, where, "not base64", shown(value)) from None


def _state(log: Mapping[str, object]) -> str:
    state = log.get("state")
    if isinstance(state, Mapping) and state:
        return str(next(iter(state)))
    return ""


def parse_log_list(data: object, source: str) -> list[LogInfo]:
    """Every log of the list that is not rejected or retired, RFC 6962 and tiled."""
    if not isinstance(data, Mapping) or not isinstance(data.get("operators"), list):
        raise ConfigError(
            source, "operators", "not a v3 log list (no operators list)", has_value=False
        )
    out: list[LogInfo] = []
    for i, op in enumerate(data["operators"]):
        if not isinstance(op, Mapping):
            raise ConfigError(source, f"operators[{i}]", "not an object")
        name = str(op.get("name", ""))
        for field, kind, url_field in (
            ("logs", "rfc6962", "url"),
            ("tiled_logs", "static", "monitoring_url"),
        ):
            logs = op.get(field, [])
            if not isinstance(logs, list):
                raise ConfigError(source, f"operators[{i}].{field}", "not a list")
            for j, lg in enumerate(logs):
                where = f"operators[{i}].{field}[{j}]"
                if not isinstance(lg, Mapping):
                    raise ConfigError(source, where, "not an object")
                if _state(lg) in _SKIPPED_STATES:
                    continue
                url = lg.get(url_field)
                if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                    raise ConfigError(
                        source, f"{where}.{url_field}", "not an http(s) URL", shown(url)
                    )
                key = decode_key(lg.get("key"), f"{where}.key", source)
                origin: str | None = None
                submission = lg.get("submission_url")
                if kind == "static" and isinstance(submission, str) and "://" in submission:
                    # static-ct-api: the checkpoint origin is the submission prefix without
                    # its scheme (and trailing slash), which may differ from the monitoring one.
                    origin = submission.split("://", 1)[1].rstrip("/")
                out.append(
                    LogInfo(
                        url=url,
                        key_der=key,
                        kind="static" if kind == "static" else "rfc6962",
                        description=str(lg.get("description", "")),
                        operator=name,
                        origin=origin,
                    )
                )
    return out


def load_log_list(path: str | Path) -> list[LogInfo]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(p), "", "file not found", has_value=False) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), "", f"cannot read: {e}", has_value=False) from None
    except ValueError as e:
        raise ConfigError(str(p), "", f"not JSON: {e}", has_value=False) from None
    return parse_log_list(data, str(p))


__all__ = ["LogInfo", "decode_key", "load_log_list", "parse_log_list"]
