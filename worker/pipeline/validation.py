"""Validation of a reboot request: one function used by the producer API, the CLI and the task.

It never raises on bad input. It returns every reason, in words an operator understands, so that
an invalid request can be recorded as ``rejected`` with all of them at once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker import ids
from worker.bms.client import MAX_SERVERS_PER_CALL, POWER_TYPES
from worker.pipeline.message import RebootRequestMessage

MAX_BATCH_SIZE = MAX_SERVERS_PER_CALL
REBOOT_TYPES = POWER_TYPES
SOFT_WARNING = (
    "type SOFT is documented by the BMS API as ineffective (不生效): BMS reboots are always hard"
)
#: Project ids are 32 hexadecimal characters in Huawei Cloud.
PROJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$")
UUID_RE = ids.UUID_RE
MAX_TEXT = 255

#: Every keyword argument the intake task understands: the fields of the one message model.
KNOWN_FIELDS = frozenset(RebootRequestMessage.model_fields)
#: The rollout policy's fields; their defaults come from the settings (``policy_defaults``).
POLICY_FIELDS = ("max_in_flight", "canary_size", "failure_threshold", "not_after")
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
#: A Celery queue or task name a producer may name for its callback.
NAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,255}$")


@dataclass
class ValidatedRequest:
    """The normalised request, or the reasons it cannot be accepted."""

    request_id: uuid.UUID
    project_id: str
    #: The unique server ids, packed (``worker.ids``), in the order given.
    packed_ids: bytes
    type: str
    idempotency_key: str | None
    source: str
    batch_size: int
    max_in_flight: int | None
    canary_size: int | None
    failure_threshold: float | None
    notify_task: str | None
    notify_queue: str | None
    not_after: dt.datetime | None
    servers_given: int
    duplicates_removed: int
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.reasons

    @property
    def servers(self) -> int:
        """How many unique servers the request holds."""
        return ids.count(self.packed_ids)

    @property
    def server_ids(self) -> list[str]:
        """The unique server ids as text (lower case), in order."""
        return ids.unpack(self.packed_ids)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def safe_text(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as text that any audit database stores: NUL and other control characters are
    written as escapes (PostgreSQL text cannot hold NUL), and it is cut to ``limit``."""
    text = str(value)
    if any(ch < " " or ch == "\x7f" for ch in text):
        text = "".join(
            ch if ch >= " " and ch != "\x7f" else ch.encode("unicode_escape").decode()
            for ch in text
        )
    return text[:limit]


def _int_field(
    payload: Mapping[str, Any], name: str, low: int, high: int | None, reasons: list[str]
) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        reasons.append(f"{name} must be a whole number, got {_short(value)}")
        return None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        reasons.append(f"{name} must be {bound}, got {value}")
        return None
    return value


def _text_field(payload: Mapping[str, Any], name: str, reasons: list[str]) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        reasons.append(f"{name} must be a non-empty string, got {_short(value)}")
        return None
    if "\x00" in value:
        reasons.append(f"{name} must not contain NUL characters, got {_short(value)}")
        return None
    if len(value) > MAX_TEXT:
        reasons.append(f"{name} must be at most {MAX_TEXT} characters, got {len(value)}")
        return None
    return value.strip()


def parse_duration(text: str) -> dt.timedelta | None:
    """``90s``, ``30m``, ``2h``, ``1d``, ``1h30m`` (or a number of seconds); None if not one."""
    text = text.strip().lower()
    if text.isdigit():
        return dt.timedelta(seconds=int(text))
    match = _DURATION_RE.match(text)
    if not text or match is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_not_after(value: Any, now: dt.datetime) -> tuple[dt.datetime | None, str | None]:
    """A cut-off time from an ISO 8601 time with a zone (``2026-11-28T03:00:00Z``) or a
    duration from ``now`` (``2h``); returns (the time in UTC, None) or (None, the reason)."""
    if not isinstance(value, str) or not value.strip():
        return None, f"not_after must be an ISO 8601 time or a duration, got {_short(value)}"
    duration = parse_duration(value)
    if duration is not None:
        if duration <= dt.timedelta(0):
            return None, f"not_after must be a positive duration, got {_short(value)}"
        return now + duration, None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None, (
            "not_after must be an ISO 8601 time with a zone (2026-11-28T03:00:00Z) or a "
            f"duration (90m, 2h, 1d), got {_short(value)}"
        )
    if moment.tzinfo is None:
        return None, f"not_after needs a time zone (Z or +08:00), got {_short(value)}"
    moment = moment.astimezone(dt.UTC)
    if moment <= now:
        return None, f"not_after is already past: {moment.isoformat()}"
    return moment, None


def _name_field(payload: Mapping[str, Any], name: str, reasons: list[str]) -> str | None:
    """A Celery task or queue name (letters, digits and ``_ . : @ -``)."""
    value = _text_field(payload, name, reasons)
    if value is not None and not NAME_RE.match(value):
        reasons.append(
            f"{name} must be a Celery name (letters, digits and _ . : @ -), got {_short(value)}"
        )
        return None
    return value


def _server_ids(
    payload: Mapping[str, Any], max_servers: int, reasons: list[str]
) -> tuple[bytes, int]:
    """Returns (the unique ids packed, in order; how many ids were given).

    The ids come as ``server_ids`` (a list of UUID strings) or, for large requests, as
    ``server_ids_packed`` (base64 of their 16-byte values: ``worker.ids``); never both."""
    listed, packed_text = payload.get("server_ids"), payload.get("server_ids_packed")
    if listed is not None and packed_text is not None:
        reasons.append("give server_ids or server_ids_packed, not both")
        return b"", 0
    packed = b""
    if packed_text is not None:
        decoded = _decode_packed(packed_text, reasons)
        if decoded is None:
            return b"", 0
        packed, given = decoded, ids.count(decoded)
    elif listed is None:
        reasons.append("server_ids is missing: give at least one server id")
        return b"", 0
    elif isinstance(listed, str) or not isinstance(listed, list | tuple):
        reasons.append(f"server_ids must be a list of server ids, got {type(listed).__name__}")
        return b"", 0
    else:
        given = len(listed)
    if given == 0:
        reasons.append("server_ids is empty: give at least one server id")
        return b"", 0
    if given > max_servers:
        reasons.append(
            f"too many servers: {given} given, at most {max_servers} per request "
            "(BMSREBOOT_MAX_REQUEST_SERVERS)"
        )
        return b"", given
    if isinstance(listed, list | tuple):
        try:
            packed = ids.pack(listed)
        except ids.BadIds as exc:
            examples = ", ".join(shown for _, shown in exc.bad)
            more = f" and {exc.count - len(exc.bad)} more" if exc.count > len(exc.bad) else ""
            reasons.append(f"{exc.count} server id(s) are not UUIDs: {examples}{more}")
            return b"", given
    return ids.dedupe(packed), given


def _decode_packed(value: Any, reasons: list[str]) -> bytes | None:
    """Packed ids: bytes (a msgpack message) or their base64 (a JSON message)."""
    if isinstance(value, bytes):
        packed = value
    elif not isinstance(value, str):
        reasons.append(f"server_ids_packed must be a base64 string, got {type(value).__name__}")
        return None
    else:
        try:
            packed = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            reasons.append("server_ids_packed is not valid base64")
            return None
    if len(packed) % ids.SIZE:
        reasons.append(f"server_ids_packed must hold 16 bytes per server id, got {len(packed)}")
        return None
    return packed


def validate_request(
    payload: Mapping[str, Any],
    *,
    max_servers: int,
    default_batch_size: int = MAX_BATCH_SIZE,
    positional: int = 0,
    policy_defaults: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> ValidatedRequest:
    """Check and normalise a request payload (the intake task's keyword arguments).
    ``positional`` counts arguments a producer sent without names (never accepted).
    ``policy_defaults`` fills the rollout policy's fields the payload leaves out (the
    operator's settings); ``not_after`` durations count from ``now``."""
    now = now or dt.datetime.now(dt.UTC)
    if policy_defaults:
        payload = {
            **{k: v for k, v in policy_defaults.items() if v is not None},
            **{k: v for k, v in payload.items() if v is not None or k not in policy_defaults},
        }
    reasons: list[str] = []
    warnings: list[str] = []
    if positional:
        reasons.append(
            f"the request must be sent as keyword arguments (kwargs={{...}}), "
            f"got {positional} positional argument(s)"
        )

    unknown = sorted(str(name) for name in set(payload) - KNOWN_FIELDS)
    if unknown:
        names = ", ".join(safe_text(name, 60) for name in unknown[:20])
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        reasons.append(f"unknown field(s): {names}{more}")

    raw_id = payload.get("request_id")
    request_id = uuid.uuid4()
    if raw_id is not None:
        try:
            request_id = uuid.UUID(str(raw_id))
        except ValueError:
            reasons.append(f"request_id must be a UUID, got {_short(raw_id)}")

    project_id = payload.get("project_id")
    if project_id is None:
        reasons.append("project_id is missing")
        project_id = ""
    elif not isinstance(project_id, str) or not PROJECT_ID_RE.match(project_id):
        reasons.append(f"project_id must be 32 hexadecimal characters, got {_short(project_id)}")
        project_id = safe_text(project_id, 64)

    reboot_type = payload.get("type", "HARD")
    if isinstance(reboot_type, str) and reboot_type.upper() in REBOOT_TYPES:
        reboot_type = reboot_type.upper()
        if reboot_type == "SOFT":
            warnings.append(SOFT_WARNING)
    else:
        reasons.append(f"type must be HARD or SOFT, got {_short(reboot_type)}")
        reboot_type = "HARD"

    packed, given = _server_ids(payload, max_servers, reasons)
    duplicates = given - ids.count(packed) if packed else 0
    if duplicates:
        warnings.append(f"{duplicates} duplicate server id(s) removed")

    batch_size = _int_field(payload, "batch_size", 1, MAX_BATCH_SIZE, reasons)
    failure_threshold = payload.get("failure_threshold")
    if failure_threshold is not None and (
        isinstance(failure_threshold, bool)
        or not isinstance(failure_threshold, int | float)
        or not 0 <= failure_threshold <= 100
    ):
        reasons.append(
            f"failure_threshold must be a percentage from 0 to 100, got {_short(failure_threshold)}"
        )
        failure_threshold = None

    not_after = None
    if payload.get("not_after") is not None:
        not_after, problem = parse_not_after(payload["not_after"], now)
        if problem:
            reasons.append(problem)

    return ValidatedRequest(
        request_id=request_id,
        project_id=project_id,
        packed_ids=packed,
        type=reboot_type,
        idempotency_key=_text_field(payload, "idempotency_key", reasons),
        source=_text_field(payload, "source", reasons) or "unknown",
        batch_size=batch_size or default_batch_size,
        max_in_flight=_int_field(payload, "max_in_flight", 1, None, reasons),
        canary_size=_int_field(payload, "canary_size", 1, MAX_BATCH_SIZE, reasons),
        failure_threshold=float(failure_threshold) if failure_threshold is not None else None,
        notify_task=_name_field(payload, "notify_task", reasons),
        notify_queue=_name_field(payload, "notify_queue", reasons),
        not_after=not_after,
        servers_given=given,
        duplicates_removed=duplicates,
        reasons=reasons,
        warnings=warnings,
    )
