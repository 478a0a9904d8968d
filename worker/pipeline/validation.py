"""Validation of a reboot request: one function used by the producer API, the CLI and the task.

It never raises on bad input. It returns every reason, in words an operator understands, so that
an invalid request can be recorded as ``rejected`` with all of them at once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic import ValidationError

from worker import ids
from worker.bms.client import MAX_SERVERS_PER_CALL, POWER_TYPES
from worker.pipeline.message import (
    MAX_NOT_AFTER_DAYS,
    PROJECT_ID_PATTERN,
    RebootRequestMessage,
    gate_exclude_problem,
    notify_url_problem,
)
from worker.text import clean

MAX_BATCH_SIZE = MAX_SERVERS_PER_CALL
REBOOT_TYPES = POWER_TYPES
SOFT_WARNING = (
    "type SOFT is documented by the BMS API as ineffective (不生效): BMS reboots are always hard"
)
PROJECT_ID_RE = re.compile(PROJECT_ID_PATTERN)
UUID_RE = ids.UUID_RE
MAX_TEXT = 255

#: Every keyword argument the intake task understands: the fields of the one message model.
KNOWN_FIELDS = frozenset(RebootRequestMessage.model_fields)
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


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
    #: Where the request's webhooks go (besides BMSREBOOT_WEBHOOK_URL).
    notify_url: str | None
    not_after: dt.datetime | None
    not_before: dt.datetime | None
    #: The selector the servers are resolved from at intake (None: the ids were given).
    selector: dict[str, Any] | None
    #: Whether to read each batch's servers before its POST (None: BMSREBOOT_PREFLIGHT).
    preflight: bool | None
    #: Verification after each job (None: the settings'): on, the timeout, a probe, a soak.
    verify: bool | None
    health_timeout: float | None
    health_check: dict[str, Any] | None
    #: Whether its batches are silenced in Alertmanager (``silence: false`` opts out).
    silence: bool
    soak_seconds: float | None
    #: The alert gate before each wave (None: no gate): the PromQL, the alertnames it
    #: ignores, how long it may hold the request.
    gate_query: str | None
    gate_exclude: str | None
    gate_timeout: float | None
    servers_given: int
    duplicates_removed: int
    #: What the producer asked for, compared when a request id or key comes again.
    fingerprint: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.reasons

    def recorded(self) -> dict[str, Any]:
        """The normalised request as ``create_request`` records it (by name, no list)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("servers_given", "reasons", "warnings")
        }

    @property
    def servers(self) -> int:
        """How many unique servers the request holds."""
        return ids.count(self.packed_ids)

    @property
    def server_ids(self) -> list[str]:
        """The unique server ids as text (lower case), in order."""
        return ids.unpack(self.packed_ids)


#: What a retry under the same request id or idempotency key must repeat: the servers (a digest
#: of the ids in the order given, duplicates removed), the type, the project and the rollout
#: limits as the producer gave them (the operator's defaults are not part of it). Not the
#: window (``not_after``): a retry of ``--not-after 2h`` computes it anew.
FINGERPRINT_FIELDS = (
    "project_id",
    "type",
    "servers",
    "batch_size",
    "max_in_flight",
    "canary_size",
    "failure_threshold",
)


def _check(value: Any) -> dict[str, Any] | None:
    """A valid health check as it is recorded: the one key given."""
    if not isinstance(value, Mapping):
        return None
    return {k: value[k] for k in ("tcp_port", "http_url") if value.get(k) is not None}


def _selector(value: Any) -> dict[str, Any] | None:
    """A valid selector as it is recorded: only the keys given, tags in their order."""
    if not isinstance(value, Mapping):
        return None
    return {k: value[k] for k in ("tags", "name", "enterprise_project_id") if value.get(k)}


def fingerprint(payload: Mapping[str, Any], packed: bytes) -> dict[str, Any]:
    """What the producer asked for (``FINGERPRINT_FIELDS``), as plain JSON. A selector's
    request is known by its selector, not by what it resolved to."""
    threshold = payload.get("failure_threshold")
    kind = payload.get("type")
    selector = _selector(payload.get("selector"))
    servers = (
        "selector:" + json.dumps(selector, sort_keys=True)
        if selector
        else f"{ids.count(packed)}:{hashlib.sha256(packed).hexdigest()}"
    )
    return {
        "project_id": str(payload.get("project_id", "")).lower(),
        "type": kind.upper() if isinstance(kind, str) else "HARD",
        "servers": servers,
        "batch_size": payload.get("batch_size"),
        "max_in_flight": payload.get("max_in_flight"),
        "canary_size": payload.get("canary_size"),
        "failure_threshold": None if threshold is None else float(threshold),
    }


def differences(recorded: Mapping[str, Any] | None, asked: Mapping[str, Any]) -> list[str]:
    """The fields in which ``asked`` differs from what a recorded request asked for (none for a
    request recorded without a fingerprint)."""
    if not recorded:
        return []
    return [name for name in FINGERPRINT_FIELDS if recorded.get(name) != asked.get(name)]


def conflict_id(existing: uuid.UUID, asked: Mapping[str, Any]) -> uuid.UUID:
    """The id under which a request refused for reusing ``existing``'s id or key with another
    payload is recorded: the same for the same retry, so it is recorded once."""
    from worker.names import IDEMPOTENCY_NAMESPACE

    digest = hashlib.sha256(repr(sorted(asked.items())).encode()).hexdigest()
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"conflict:{existing}:{digest}")


def conflict_reason(key: str | None, existing: uuid.UUID, differ: list[str]) -> str:
    what = (
        f"idempotency key {key!r} is already used by request {existing}"
        if key
        else f"request id {existing} is already recorded"
    )
    return (
        f"{what} with other {', '.join(differ)}: nothing was sent for this one (use another "
        "key, or the same request to follow that one)"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def safe_text(value: Any, limit: int = MAX_TEXT) -> str:
    """A producer's text as any audit database stores it, on one line (``worker.text``)."""
    return clean(value, limit, controls=True)


def parse_duration(text: str) -> dt.timedelta | None:
    """``90s``, ``30m``, ``2h``, ``1d``, ``1h30m`` (or a number of seconds); None if not one
    (or too long for any clock: more than a few million years)."""
    text = text.strip().lower()
    try:
        if text.isdigit():
            return dt.timedelta(seconds=int(text))
        match = _DURATION_RE.match(text)
        if not text or match is None:
            return None
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        return None


def parse_not_after(
    value: Any, now: dt.datetime, *, name: str = "not_after", past: bool = False
) -> tuple[dt.datetime | None, str | None]:
    """A cut-off time from an ISO 8601 time with a zone (``2026-11-28T03:00:00Z``) or a
    duration from ``now`` (``2h``); returns (the time in UTC, None) or (None, the reason).
    ``past``: a time already past is ``now`` (``not_before``), not a mistake."""
    if not isinstance(value, str) or not value.strip():
        return None, f"{name} must be an ISO 8601 time or a duration, got {_short(value)}"
    longest = dt.timedelta(days=MAX_NOT_AFTER_DAYS)
    duration = parse_duration(value)
    if duration is not None:
        if duration <= dt.timedelta(0):
            return None, f"{name} must be a positive duration, got {_short(value)}"
        if duration > longest:
            return (
                None,
                f"{name} must be at most {MAX_NOT_AFTER_DAYS} days ahead, got {_short(value)}",
            )
        return now + duration, None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None, (
            f"{name} must be an ISO 8601 time with a zone (2026-11-28T03:00:00Z) or a "
            f"duration (90m, 2h, 1d), got {_short(value)}"
        )
    if moment.tzinfo is None:
        return None, f"{name} needs a time zone (Z or +08:00), got {_short(value)}"
    try:
        moment = moment.astimezone(dt.UTC)
    except OverflowError:
        return None, f"{name} is not a time a clock can hold, got {_short(value)}"
    if moment <= now:
        if past:
            return now, None
        return None, f"{name} is already past: {moment.isoformat()}"
    if moment - now > longest:
        return (
            None,
            f"{name} must be at most {MAX_NOT_AFTER_DAYS} days ahead, got {_short(value)}",
        )
    return moment, None


def _server_ids(
    payload: Mapping[str, Any], max_servers: int, reasons: list[str]
) -> tuple[bytes, int]:
    """Returns (the unique ids packed, in order; how many ids were given).

    The ids come as ``server_ids`` (a list of UUID strings) or, for large requests, as
    ``server_ids_packed`` (base64 of their 16-byte values: ``worker.ids``); never both."""
    listed, packed_text = payload.get("server_ids"), payload.get("server_ids_packed")
    if payload.get("selector") is not None:
        if listed is not None or packed_text is not None:
            reasons.append("give server_ids, server_ids_packed or selector: only one of them")
        return b"", 0
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


#: Fields whose text is stripped and must not be blank or hold NUL.
TEXT_FIELDS = (
    "idempotency_key",
    "source",
    "notify_task",
    "notify_queue",
    "gate_query",
    "gate_exclude",
)
#: The ids are checked by :func:`_server_ids` (a million of them, as bytes), not by the model.
ID_FIELDS = ("server_ids", "server_ids_packed")


def _bounds(name: str) -> tuple[Any, Any]:
    """The ``ge`` and ``le`` of a field of the message model (None when unbounded)."""
    low = high = None
    for rule in RebootRequestMessage.model_fields[name].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high


#: Fields whose every error gets one reason: what the field must be.
_WHAT_IT_MUST_BE = {
    "project_id": "32 hexadecimal characters",
    "request_id": "a UUID",
    "type": "HARD or SOFT",
    "failure_threshold": "a percentage from 0 to 100",
    "not_after": "an ISO 8601 time or a duration",
    "not_before": "an ISO 8601 time or a duration",
    "region": "a region name such as cn-north-4",
}


def _reason(name: str, error: Mapping[str, Any], value: Any) -> str:
    """One pydantic error on one field of the message, in an operator's words."""
    kind = error["type"]
    if name == "notify_url":
        # Never the URL as given: it may hold a token (masked here).
        return notify_url_problem(value) or f"notify_url: {error['msg']}"
    got = _short(value)
    if name == "health_check":
        return (
            "health_check must be {tcp_port: PORT} or {http_url: URL} (one of them): "
            f"{error['msg']}, got {got}"
        )
    if name in ("health_timeout", "soak_seconds", "gate_timeout") and kind in (
        "greater_than",
        "greater_than_equal",
        "less_than_equal",
        "float_type",
        "int_type",
    ):
        return f"{name} must be a number of seconds up to 86400, got {got}"
    if name == "selector":
        where = ".".join(str(part) for part in error["loc"][1:])
        return (
            "selector must be an object of tags (a list of key=value or key), name and "
            "enterprise_project_id, at least one of them: "
            + (f"{where}: " if where else "")
            + f"{error['msg']}, got {got}"
        )
    if name in TEXT_FIELDS and isinstance(value, str) and "\x00" in value:
        return f"{name} must not contain NUL characters, got {got}"
    if kind == "missing":
        return f"{name} is missing"
    if name in _WHAT_IT_MUST_BE:
        return f"{name} must be {_WHAT_IT_MUST_BE[name]}, got {got}"
    if kind == "bool_type":
        return f"{name} must be true or false, got {got}"
    if kind == "int_type":
        return f"{name} must be a whole number, got {got}"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = _bounds(name)
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        return f"{name} must be {bound}, got {got}"
    if kind == "string_too_long":
        return f"{name} must be at most {error['ctx']['max_length']} characters, got {len(value)}"
    if kind == "string_pattern_mismatch" and name in ("notify_task", "notify_queue"):
        return f"{name} must be a Celery name (letters, digits and _ . : @ -), got {got}"
    if kind in ("string_type", "string_too_short"):
        return f"{name} must be a non-empty string, got {got}"
    return f"{name}: {error['msg']}, got {got}"


def _scope(
    project_id: str,
    asked: str | None,
    allowed: frozenset[str] | None,
    project_regions: Mapping[str, str] | None,
    region: str | None,
) -> list[str]:
    """Why the deployment does not serve this project (in the region asked), if it does not."""
    key = project_id.lower()
    if project_regions is not None and key not in project_regions:
        return [
            f"project {project_id} is not in the fleet file (BMSREBOOT_FLEET_FILE): nothing "
            "was sent to the cloud"
        ]
    if allowed is not None and key not in allowed:
        return [
            f"project {project_id} is not one this deployment serves "
            "(BMSREBOOT_ALLOWED_PROJECTS): nothing was sent to the cloud"
        ]
    if asked is None:
        return []
    if project_regions is not None and project_regions[key] != asked:
        return [f"project {project_id} is in region {project_regions[key]}, not {asked}"]
    if project_regions is None and region is not None and region != asked:
        return [f"this deployment serves region {region} (BMSREBOOT_REGION), not {asked}"]
    return []


def validate_request(
    payload: Mapping[str, Any],
    *,
    max_servers: int,
    default_batch_size: int = MAX_BATCH_SIZE,
    positional: int = 0,
    policy_defaults: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
    allowed_projects: frozenset[str] | None = None,
    project_regions: Mapping[str, str] | None = None,
    region: str | None = None,
) -> ValidatedRequest:
    """Check and normalise a request payload (the intake task's keyword arguments).

    The fields, their types and bounds are the message model's (``RebootRequestMessage``):
    pydantic checks them and each error becomes one reason in an operator's words. What the
    model cannot say is checked here: the server ids (a million of them, as bytes), text that
    is blank or holds NUL, ``not_after`` as a time or a duration. ``positional`` counts
    arguments a producer sent without names (never accepted). ``policy_defaults`` fills the
    rollout policy's fields the payload leaves out (the operator's settings); ``not_after``
    durations count from ``now``. A field given as None counts as not given.
    ``allowed_projects``: the only projects this deployment serves (None: any).
    ``project_regions``: the fleet file's projects (lower case) and their regions, the only
    projects served (None: no fleet file); without one, ``region`` is the one region served
    (``BMSREBOOT_REGION``). A request's ``region`` must be its project's."""
    now = now or dt.datetime.now(dt.UTC)
    given = {k: v for k, v in payload.items() if v is not None}
    if policy_defaults:
        given = {**{k: v for k, v in policy_defaults.items() if v is not None}, **given}
    found: dict[str, str] = {}  # field -> its reason
    reasons: list[str] = []
    warnings: list[str] = []
    if positional:
        reasons.append(
            f"the request must be sent as keyword arguments (kwargs={{...}}), "
            f"got {positional} positional argument(s)"
        )
    unknown = sorted(str(name) for name in set(given) - KNOWN_FIELDS)
    if unknown:
        names = ", ".join(safe_text(name, 60) for name in unknown[:20])
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        reasons.append(f"unknown field(s): {names}{more}")

    fields = {k: v for k, v in given.items() if k in KNOWN_FIELDS and k not in ID_FIELDS}
    if isinstance(fields.get("type"), str):
        fields["type"] = fields["type"].upper()
    try:
        RebootRequestMessage.model_validate(fields)
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            found.setdefault(name, _reason(name, error, given.get(name)))
    for name in TEXT_FIELDS:
        value = fields.get(name)
        if name in found or not isinstance(value, str):
            continue
        if "\x00" in value:
            found[name] = f"{name} must not contain NUL characters, got {_short(value)}"
        elif not value.strip():
            found[name] = f"{name} must be a non-empty string, got {_short(value)}"
        else:
            fields[name] = value.strip()
    not_after = not_before = None
    if "not_after" in fields and "not_after" not in found:
        not_after, problem = parse_not_after(fields["not_after"], now)
        if problem:
            found["not_after"] = problem
    if "not_before" in fields and "not_before" not in found:
        not_before, problem = parse_not_after(
            fields["not_before"], now, name="not_before", past=True
        )
        if problem:
            found["not_before"] = problem
        elif not_before is not None and not_after is not None and not_before >= not_after:
            found["not_before"] = (
                f"not_before ({not_before.isoformat()}) must come before not_after "
                f"({not_after.isoformat()})"
            )
    if isinstance(fields.get("gate_exclude"), str) and "gate_exclude" not in found:
        problem = gate_exclude_problem(fields["gate_exclude"])
        if problem:
            found["gate_exclude"] = f"{problem}, got {_short(fields['gate_exclude'])}"
    if "request_id" not in given and "idempotency_key" not in given:
        reasons.append(
            "give request_id or idempotency_key: without either, a producer that sends the "
            "same request again (a retry after a broker timeout) would reboot every server "
            "twice (the producer API and `bmsreboot submit` set request_id)"
        )
    packed, servers_given = _server_ids(given, max_servers, reasons)
    duplicates = servers_given - ids.count(packed) if packed else 0
    if duplicates:
        warnings.append(f"{duplicates} duplicate server id(s) removed")
    reasons.extend(found[name] for name in RebootRequestMessage.model_fields if name in found)

    # The fields that passed, as the model has them; the others fall back to their defaults
    # (recorded on a rejected request for the record).
    ok = RebootRequestMessage.model_construct(**{k: v for k, v in fields.items() if k not in found})
    if ok.type == "SOFT":
        warnings.append(SOFT_WARNING)
    project_id = ok.project_id if "project_id" in fields and "project_id" not in found else None
    if project_id is not None:
        asked = ok.region if "region" in fields and "region" not in found else None
        reasons.extend(_scope(str(project_id), asked, allowed_projects, project_regions, region))
    return ValidatedRequest(
        request_id=uuid.UUID(str(ok.request_id)) if ok.request_id else uuid.uuid4(),
        project_id=project_id or safe_text(given.get("project_id", ""), 64),
        packed_ids=packed,
        type=ok.type,
        idempotency_key=ok.idempotency_key,
        source=ok.source or "unknown",
        batch_size=ok.batch_size or default_batch_size,
        max_in_flight=ok.max_in_flight,
        canary_size=ok.canary_size,
        failure_threshold=float(ok.failure_threshold) if ok.failure_threshold is not None else None,
        notify_task=ok.notify_task,
        notify_queue=ok.notify_queue,
        notify_url=ok.notify_url,
        not_after=not_after,
        not_before=not_before,
        selector=_selector(fields.get("selector")) if "selector" not in found else None,
        preflight=ok.preflight if isinstance(ok.preflight, bool) else None,
        verify=ok.verify if isinstance(ok.verify, bool) else None,
        silence=ok.silence is not False,
        health_timeout=float(ok.health_timeout) if ok.health_timeout is not None else None,
        health_check=_check(fields.get("health_check")) if "health_check" not in found else None,
        soak_seconds=float(ok.soak_seconds) if ok.soak_seconds is not None else None,
        gate_query=ok.gate_query,
        gate_exclude=ok.gate_exclude,
        gate_timeout=float(ok.gate_timeout) if ok.gate_timeout is not None else None,
        servers_given=servers_given,
        duplicates_removed=duplicates,
        fingerprint=fingerprint(payload, packed),
        reasons=reasons,
        warnings=warnings,
    )
