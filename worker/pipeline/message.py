"""The intake message, as one pydantic model: the contract producers in any language write to.

``bmsreboot schema`` prints its JSON Schema. The task ``bmsreboot.request_reboot`` on the queue
``bmsreboot.intake`` takes these fields as JSON keyword arguments. The field names here are the
only list of them: validation (``worker.pipeline.validation.KNOWN_FIELDS``) takes them from this
model. Validation itself stays a function that never raises and collects every reason in an
operator's words, so that an invalid request is recorded as ``rejected`` with all of them.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from worker import ids
from worker.bms.client import MAX_SERVERS_PER_CALL as MAX_BATCH_SIZE

UUID_PATTERN = ids.UUID_RE.pattern
#: Project ids are 32 hexadecimal characters in Huawei Cloud.
PROJECT_ID_PATTERN = r"^[0-9a-fA-F]{32}$"
#: A region's name: cn-north-4, ap-southeast-1 (lower-case words and numbers joined by "-").
REGION_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
#: A Celery task or queue name a producer may name for its callback.
CELERY_NAME = r"^[A-Za-z0-9_.:@-]{1,255}$"
#: The most batches a request can have in flight that means anything: a request holds at most
#: a million servers (``BMSREBOOT_MAX_REQUEST_SERVERS``), so at most that many batches. (Far
#: below what the audit database's integer columns hold: 2**31 - 1.)
MAX_IN_FLIGHT = 1_000_000
#: The farthest a ``not_after`` may lie ahead: a maintenance window, not a date in years.
MAX_NOT_AFTER_DAYS = 366
#: The longest ``notify_url`` (a webhook URL with a token in its path or query fits).
MAX_NOTIFY_URL = 2000
#: An http(s) URL without spaces or control characters.
NOTIFY_URL_PATTERN = r"^https?://[^\x00-\x20\x7f]+$"


def gate_exclude_problem(value: str) -> str | None:
    """Why ``value`` cannot be a request's ``gate_exclude`` (a regular expression on
    alertname), or None: intake and the schedule file's check both ask here."""
    try:
        re.compile(value)
    except re.error as exc:
        return f"gate_exclude must be a regular expression (on alertname): {exc}"
    return None


def notify_url_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a request's ``notify_url``, or None. The URL is quoted with its
    credentials masked (a token in its user info or query): the reason is recorded on the
    rejected request and shown to people."""
    from urllib.parse import urlsplit

    from worker.censor import mask_url_credentials

    if isinstance(value, str):
        shown = mask_url_credentials(value)
        shown = repr(shown if len(shown) <= 80 else shown[:77] + "...")
    else:
        shown = type(value).__name__
    what = f"notify_url must be an http(s) URL of at most {MAX_NOTIFY_URL} characters"
    if not isinstance(value, str):
        return f"{what}, got {shown}"
    if len(value) > MAX_NOTIFY_URL:
        return f"{what}, got {len(value)} characters"
    if not re.match(NOTIFY_URL_PATTERN, value):
        return f"{what} (no spaces or control characters), got {shown}"
    try:
        host = urlsplit(value).hostname
    except ValueError:
        host = None
    if not host:
        return f"{what} with a host, got {shown}"
    return None


def _only(schema: dict[str, Any], shape: dict[str, Any]) -> None:
    """A field that is optional in Python (one of two forms) but never null on the wire."""
    schema.pop("anyOf", None)
    schema.pop("default", None)
    schema.update(shape)


def _not_null(schema: dict[str, Any]) -> None:
    """An optional object field that is never null on the wire: its schema alone."""
    shapes = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
    schema.pop("default", None)
    if shapes:
        schema.update(shapes[0])


class SelectorMessage(BaseModel):
    """Which servers of the project: every listed tag, a part of the name, an enterprise
    project (every key optional, at least one). Resolved once, at intake, from the list API."""

    model_config = ConfigDict(extra="forbid", title="selector")

    tags: list[Annotated[str, Field(min_length=1, max_length=255)]] | None = Field(
        None,
        min_length=1,
        max_length=20,
        description="Tags a server must all have: key=value, or a bare key (any value).",
    )
    name: str | None = Field(
        None, min_length=1, max_length=255, description="A part of the server's name."
    )
    enterprise_project_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="An enterprise project id, or all_granted_eps.",
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> SelectorMessage:
        if not (self.tags or self.name or self.enterprise_project_id):
            raise ValueError("give at least one of tags, name, enterprise_project_id")
        return self


#: The longest a server may take to come back, and the longest pause between waves (a day).
MAX_HEALTH_TIMEOUT = 86_400
#: The longest gate query or exclusion a request may carry (characters).
MAX_GATE_TEXT = 2000


class HealthCheckMessage(BaseModel):
    """A probe once the inventory shows a server back: a TCP connect to its first fixed IPv4
    address, or an HTTP GET (2xx is healthy; ``{ip}``, ``{id}`` and ``{name}`` are filled)."""

    model_config = ConfigDict(extra="forbid", title="health_check")

    tcp_port: StrictInt | None = Field(None, ge=1, le=65535, description="A port to connect to.")
    http_url: str | None = Field(
        None,
        min_length=1,
        max_length=1000,
        pattern=r"^https?://",
        description="A URL to GET: http://{ip}:9100/-/healthy.",
    )

    @model_validator(mode="after")
    def _one(self) -> HealthCheckMessage:
        if (self.tcp_port is None) == (self.http_url is None):
            raise ValueError("give one of tcp_port or http_url")
        return self


class RebootRequestMessage(BaseModel):
    """A request to reboot BMS servers (keyword arguments of ``bmsreboot.request_reboot``)."""

    model_config = ConfigDict(
        extra="forbid",
        title="bmsreboot.request_reboot",
        json_schema_extra={
            "allOf": [
                # Exactly one way to name the servers: the ids (two forms), or a selector.
                {
                    "oneOf": [
                        {"required": ["server_ids"]},
                        {"required": ["server_ids_packed"]},
                        {"required": ["selector"]},
                    ]
                },
                # A retried message must be recognised as the same request: without either,
                # a producer's retry (after a broker timeout, say) would reboot every server
                # again. The producer API and `bmsreboot submit` always set request_id.
                {"anyOf": [{"required": ["request_id"]}, {"required": ["idempotency_key"]}]},
            ]
        },
    )

    project_id: str = Field(
        pattern=PROJECT_ID_PATTERN, description="Huawei Cloud project id (32 hex characters)."
    )
    region: str | None = Field(
        None,
        pattern=REGION_PATTERN,
        max_length=64,
        description="The project's region (cn-north-4), checked: a project in another region "
        "(the fleet file's, else BMSREBOOT_REGION) is rejected with no API call.",
    )
    server_ids: list[str] | None = Field(
        None,
        min_length=1,
        description="BMS ids (UUIDs); duplicates are removed and reported.",
        json_schema_extra=lambda schema: _only(
            schema,
            {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": UUID_PATTERN}},
        ),
    )
    server_ids_packed: str | bytes | None = Field(
        None,
        description="The same ids packed, for large requests: each id's 16 bytes "
        "(uuid.UUID(id).bytes) one after the other, in order, as base64 (RFC 4648, padded) "
        "in a JSON message, or as bytes in a msgpack message (content type "
        "application/x-msgpack). Give this or server_ids, not both.",
        json_schema_extra=lambda schema: _only(
            schema, {"type": "string", "contentEncoding": "base64"}
        ),
    )
    selector: SelectorMessage | None = Field(
        None,
        description="Instead of ids: the project's servers that match, resolved once, at intake.",
        json_schema_extra=lambda schema: _not_null(schema),
    )
    request_id: uuid.UUID | None = Field(
        None,
        description="Chosen by the producer; the same id is never recorded twice. A request "
        "needs this or idempotency_key, so that a producer's retry is recognised.",
    )
    type: Literal["HARD", "SOFT"] = Field(
        "HARD", description="HARD (default) or SOFT (documented as ineffective on BMS)."
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="The same key returns the existing request.",
    )
    source: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Who asks: an application, schedule:<name>, cli:<user>.",
    )
    batch_size: StrictInt | None = Field(
        None, ge=1, le=MAX_BATCH_SIZE, description="Servers per API call (default 1000)."
    )
    max_in_flight: StrictInt | None = Field(
        None, ge=1, le=MAX_IN_FLIGHT, description="At most this many batches submitted at once."
    )
    canary_size: StrictInt | None = Field(
        None, ge=1, le=MAX_BATCH_SIZE, description="Batch 0 holds this many servers, first."
    )
    failure_threshold: Annotated[float, Strict()] | None = Field(
        None, ge=0, le=100, description="Halt when more than this percent fail or are unknown."
    )
    not_after: str | None = Field(
        None,
        max_length=64,
        description="No batch released after: ISO 8601 with a zone, or a duration (2h); at "
        f"most {MAX_NOT_AFTER_DAYS} days ahead.",
    )
    preflight: StrictBool | None = Field(
        None,
        description="Read each batch's servers just before its POST and send none that is "
        "locked, busy or down (default: BMSREBOOT_PREFLIGHT, on).",
    )
    verify: StrictBool | None = Field(
        None,
        description="Count a reboot only once the server is seen back (ACTIVE, idle, its host "
        "up) after its job (default: BMSREBOOT_VERIFY, on).",
    )
    silence: StrictBool | None = Field(
        None,
        description="Silence each batch's servers in Alertmanager while they reboot; false "
        "opts out (default: on when BMSREBOOT_ALERTMANAGER_URL is set).",
    )
    health_timeout: Annotated[float, Strict()] | StrictInt | None = Field(
        None,
        gt=0,
        le=MAX_HEALTH_TIMEOUT,
        description="Seconds a rebooted server has to come back before it is unhealthy "
        "(default: BMSREBOOT_HEALTH_TIMEOUT, 1200).",
    )
    health_check: HealthCheckMessage | None = Field(
        None,
        description="A probe once the inventory shows a server back.",
        json_schema_extra=lambda schema: _not_null(schema),
    )
    soak_seconds: Annotated[float, Strict()] | StrictInt | None = Field(
        None,
        ge=0,
        le=MAX_HEALTH_TIMEOUT,
        description="After a batch is verified, the next release waits this long (default 0).",
    )
    gate_query: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_GATE_TEXT,
        description="A PromQL expression evaluated before each wave: any series it returns "
        "(and any error) holds the next batches (default: BMSREBOOT_GATE_QUERY when "
        "BMSREBOOT_PROMETHEUS_URL is set).",
    )
    gate_exclude: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_GATE_TEXT,
        description="A regular expression on alertname (anchored): series it matches do not "
        "hold the request (alerts its reboots cause). Default: BMSREBOOT_GATE_EXCLUDE.",
    )
    gate_timeout: Annotated[float, Strict()] | StrictInt | None = Field(
        None,
        gt=0,
        le=MAX_HEALTH_TIMEOUT,
        description="Seconds the gate may stay closed before the request is halted "
        "(default: BMSREBOOT_GATE_TIMEOUT, 3600).",
    )
    not_before: str | None = Field(
        None,
        max_length=64,
        description="No batch released before: ISO 8601 with a zone, or a duration (2h); at "
        f"most {MAX_NOT_AFTER_DAYS} days ahead. A countdown or ETA on the message itself "
        "becomes this (the request is recorded at once).",
    )
    notify_task: str | None = Field(
        None,
        pattern=CELERY_NAME,
        max_length=255,
        description="Celery task sent the final status dict.",
    )
    notify_queue: str | None = Field(
        None,
        pattern=CELERY_NAME,
        max_length=255,
        description="The queue of notify_task (default: celery).",
    )
    notify_url: str | None = Field(
        None,
        max_length=MAX_NOTIFY_URL,
        pattern=NOTIFY_URL_PATTERN,
        description="An http(s) URL that gets the request's webhooks (CloudEvents signed per "
        "Standard Webhooks: accepted or rejected, each batch's end, unhealthy servers, "
        "halted, finished), besides BMSREBOOT_WEBHOOK_URL.",
    )

    @field_validator("notify_url")
    @classmethod
    def _notify_url(cls, value: str | None) -> str | None:
        problem = None if value is None else notify_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value


def json_schema() -> dict[str, Any]:
    schema = RebootRequestMessage.model_json_schema()
    schema["$comment"] = (
        "Send as keyword arguments of the Celery task bmsreboot.request_reboot on the queue "
        "bmsreboot.intake (JSON serializer)."
    )
    return schema
