"""The audit database schema: requests, batches, per-server outcomes and the event log.

One declarative ``Base``; column shapes are named once as ``Annotated`` aliases. Conventions:

- Enums are stored **by value** in a ``VARCHAR`` with a named ``CHECK`` constraint
  (``native_enum=False``). Not a PostgreSQL ``ENUM`` type: adding a state is then a plain
  constraint swap in a migration (no ``ALTER TYPE`` outside a transaction), the same DDL works on
  SQLite, and a bad value is still refused by the database itself.
- Times are timezone-aware UTC (``UTCDateTime``). SQLite keeps no offset, so values are stored as
  naive UTC there and come back aware; PostgreSQL uses ``timestamptz``.
- JSON is ``JSONB`` on PostgreSQL, ``JSON`` elsewhere; ids are ``sqlalchemy.Uuid`` (native
  ``uuid`` on PostgreSQL, ``CHAR(32)`` on SQLite). Server rows and events, the two big tables,
  use ``BIGINT`` identity keys (``INTEGER`` on SQLite, where only that is auto-incrementing).
- ``events`` is append-only: nothing updates it; rows go only with a purged request.
- ``webhook_deliveries`` is the outbox of webhooks and chat notifications (``worker.webhooks``):
  written in the transaction that caused the event, delivered at least once from here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from worker.db.states import (
    BatchStatus,
    DeliveryStatus,
    DestinationKind,
    EventEntity,
    RebootType,
    RequestStatus,
    ServerStatus,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes, on every engine."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the audit database stores UTC only")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# none_as_null: a Python None is SQL NULL, not the JSON literal ``null``.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


def _enum(cls: type[StrEnum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


uuid_pk = Annotated[uuid.UUID, mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)]
bigint_pk = Annotated[int, mapped_column(BigIntKey, primary_key=True, autoincrement=True)]
timestamp = Annotated[dt.datetime, mapped_column(UTCDateTime())]
timestamp_now = Annotated[dt.datetime, mapped_column(UTCDateTime(), default=utcnow)]
count = Annotated[int, mapped_column(Integer(), default=0)]
str64 = Annotated[str, mapped_column(String(64))]
str255 = Annotated[str, mapped_column(String(255))]
request_status = Annotated[RequestStatus, mapped_column(_enum(RequestStatus, "request_status"))]
batch_status = Annotated[BatchStatus, mapped_column(_enum(BatchStatus, "batch_status"))]
server_status = Annotated[ServerStatus, mapped_column(_enum(ServerStatus, "server_status"))]


def _request_fk() -> Any:
    return mapped_column(Uuid(), ForeignKey("reboot_requests.id", ondelete="CASCADE"))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, list[str]: JSONType}

    def __repr__(self) -> str:
        keys = [str(c.key) for c in self.__mapper__.primary_key]
        pk = ", ".join(f"{key}={getattr(self, key, None)!r}" for key in keys)
        return f"{type(self).__name__}({pk})"


class RebootRequest(Base):
    """One ask to reboot a set of servers: who asked, with which rollout policy, and how it went."""

    __tablename__ = "reboot_requests"

    id: Mapped[uuid_pk]
    idempotency_key: Mapped[str255 | None] = mapped_column(unique=True)
    project_id: Mapped[str64]
    region: Mapped[str64 | None]
    endpoint: Mapped[str255 | None]
    type: Mapped[RebootType] = mapped_column(_enum(RebootType, "reboot_type"))
    source: Mapped[str255]
    batch_size: Mapped[int]
    max_in_flight: Mapped[int | None]
    canary_size: Mapped[int | None]
    failure_threshold: Mapped[float | None] = mapped_column(Float())
    #: No batch is released after this time (a maintenance window's end).
    not_after: Mapped[timestamp | None]
    #: No batch is released before this time (its batches are due then).
    not_before: Mapped[timestamp | None]
    #: The selector the servers were resolved from at intake (None: ids were given).
    selector: Mapped[dict[str, Any] | None]
    #: Whether each batch's servers are read before its POST (None: BMSREBOOT_PREFLIGHT).
    preflight: Mapped[bool | None]
    #: Whether each server must be seen back after its reboot (None: BMSREBOOT_VERIFY).
    verify: Mapped[bool | None]
    #: Whether each batch's servers are silenced in Alertmanager while they reboot (when
    #: BMSREBOOT_ALERTMANAGER_URL is set): a request's ``silence: false`` opts out.
    silence: Mapped[bool] = mapped_column(default=True)
    #: Seconds a rebooted server has to come back (None: BMSREBOOT_HEALTH_TIMEOUT).
    health_timeout: Mapped[float | None] = mapped_column(Float())
    #: A probe once the inventory shows a server back: ``{"tcp_port": 22}`` or
    #: ``{"http_url": "http://{ip}:9100/-/healthy"}``.
    health_check: Mapped[dict[str, Any] | None]
    #: After a batch is verified, the request's next release waits this long.
    soak_seconds: Mapped[float | None] = mapped_column(Float())
    #: No batch of the request is released before this time: the soak after its last
    #: verified batch.
    soak_until: Mapped[timestamp | None]
    #: The alert gate before each wave (``worker.pipeline.gate``; None: no gate): the PromQL
    #: whose series hold the next batches, the alertnames it ignores (a regular expression),
    #: and the seconds it may stay closed before the request is halted.
    gate_query: Mapped[str | None] = mapped_column(Text())
    gate_exclude: Mapped[str | None] = mapped_column(Text())
    gate_timeout: Mapped[float | None] = mapped_column(Float())
    #: While the gate is closed: since when, why (the series or the error), and the time
    #: before which the request is not looked at again (its next check); all None when open.
    gate_closed_since: Mapped[timestamp | None]
    gate_reason: Mapped[str | None] = mapped_column(Text())
    gate_held_until: Mapped[timestamp | None]
    #: Set when a rollout control stopped the request (``halted``: failure brake, failed canary,
    #: cut-off; ``cancelled``: cancel): nothing more is released, pending batches are cancelled,
    #: and the request ends in this state once its batches in flight have ended. ``reason``
    #: says why.
    stop: Mapped[RequestStatus | None] = mapped_column(_enum(RequestStatus, "stop_request_status"))
    notify_task: Mapped[str255 | None]
    #: The queue the completion callback goes to (None: Celery's default queue, ``celery``).
    notify_queue: Mapped[str255 | None]
    #: Where the request's webhooks go, besides ``BMSREBOOT_WEBHOOK_URL`` (an http(s) URL as
    #: the producer gave it; shown with its credentials masked).
    notify_url: Mapped[str | None] = mapped_column(String(2000))
    status: Mapped[request_status]
    servers_total: Mapped[count]
    servers_succeeded: Mapped[count]
    servers_failed: Mapped[count]
    servers_unknown: Mapped[count]
    servers_cancelled: Mapped[count]
    servers_skipped: Mapped[count]
    servers_unhealthy: Mapped[count]
    duplicates_removed: Mapped[count]
    created_at: Mapped[timestamp_now]
    started_at: Mapped[timestamp | None]
    finished_at: Mapped[timestamp | None]
    reason: Mapped[str | None] = mapped_column(Text())
    rejection_reasons: Mapped[list[str] | None]
    #: The idempotency key a rejected request came with. A rejected request does not hold its
    #: key (``idempotency_key`` stays empty), so a corrected retry with the same key is accepted.
    rejected_idempotency_key: Mapped[str255 | None]
    #: When the completion callback was handed to the broker (at least once: see notify.py).
    notified_at: Mapped[timestamp | None]
    #: What the producer asked for, as intake compares a retry with it (the same request id or
    #: idempotency key must come with the same servers, type, project and policy):
    #: ``worker.pipeline.validation.fingerprint``. None for requests recorded before it.
    fingerprint: Mapped[dict[str, Any] | None]

    __table_args__ = (
        Index(None, "status", "finished_at"),
        Index(None, "created_at"),
    )


#: Server rows another request must not send (the partial index of ``server_results``).
HELD_SERVERS = "status IN ('pending', 'verifying')"

#: The request's final counts by server state: the column each state's count is kept in.
SERVER_COUNT_COLUMNS: dict[ServerStatus, str] = {
    ServerStatus.SUCCEEDED: "servers_succeeded",
    ServerStatus.FAILED: "servers_failed",
    ServerStatus.UNKNOWN: "servers_unknown",
    ServerStatus.CANCELLED: "servers_cancelled",
    ServerStatus.SKIPPED: "servers_skipped",
    ServerStatus.UNHEALTHY: "servers_unhealthy",
}


def count_columns(counts: dict[ServerStatus, int]) -> dict[str, int]:
    """The request's count columns from its servers' counts by state (0 for none)."""
    return {column: counts.get(state, 0) for state, column in SERVER_COUNT_COLUMNS.items()}


class Batch(Base):
    """Up to ``batch_size`` servers sent in one API call, and the job that call started."""

    __tablename__ = "batches"

    id: Mapped[uuid_pk]
    request_id: Mapped[uuid.UUID] = _request_fk()
    #: The batch this one was split from (a batch the API refused whole, to isolate the
    #: servers it does not know); None for the batches intake made.
    parent_batch_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(), ForeignKey("batches.id", ondelete="CASCADE")
    )
    #: The request's project, copied here so that the release step is one indexed query.
    project_id: Mapped[str64]
    index: Mapped[int]
    status: Mapped[batch_status]
    job_id: Mapped[str64 | None] = mapped_column(unique=True)
    #: A ``pending`` batch: when it is due for release (creation, or the end of a retry
    #: backoff); once released, the budget slot its submit message is scheduled for.
    next_attempt_at: Mapped[timestamp | None]
    #: Set when the release step reserved an API slot and sent the submit message; cleared when
    #: the batch is claimed or goes back to ``pending``.
    released_at: Mapped[timestamp | None]
    #: The job's own end time (from the job API), and when the audit database learned it.
    job_ended_at: Mapped[timestamp | None]
    detected_at: Mapped[timestamp | None]
    size: Mapped[int]
    #: The batch's server ids packed (16 bytes each, ``worker.ids``) until its
    #: ``server_results`` rows are written, when it is first claimed or settled; then None.
    #: Intake thus writes one row per batch, not one per server. Deferred: loaded only when
    #: asked for.
    pending_ids: Mapped[bytes | None] = mapped_column(LargeBinary(), deferred=True)
    submit_attempts: Mapped[count]
    submitted_at: Mapped[timestamp | None]
    last_polled_at: Mapped[timestamp | None]
    next_poll_at: Mapped[timestamp | None]
    deadline_at: Mapped[timestamp | None]
    poll_count: Mapped[count]
    #: A ``verifying`` batch: its next check of its servers, and how many were made.
    next_check_at: Mapped[timestamp | None]
    checks: Mapped[count]
    #: The median time its servers took from the job's end to being seen back (learned).
    boot_seconds: Mapped[float | None] = mapped_column(Float())
    #: The Alertmanager silence of the batch's servers (``worker.pipeline.silences``), when it
    #: ends (set to the moment it was expired, once it is), and why one could not be created,
    #: extended or expired.
    silence_id: Mapped[str64 | None]
    silence_ends_at: Mapped[timestamp | None]
    silence_error: Mapped[str | None] = mapped_column(Text())
    #: Since when the job API has answered that it does not know the job (404).
    job_missing_since: Mapped[timestamp | None]
    last_error_code: Mapped[str64 | None]
    last_error_message: Mapped[str | None] = mapped_column(Text())
    last_error_status: Mapped[int | None]
    last_error_request_id: Mapped[str255 | None]
    created_at: Mapped[timestamp_now]
    updated_at: Mapped[timestamp_now]
    finished_at: Mapped[timestamp | None]

    __table_args__ = (
        UniqueConstraint("request_id", "index"),
        Index(None, "status", "next_poll_at"),  # batches due for polling
        Index(None, "request_id", "status"),  # batches of a request by status
        Index(None, "project_id", "status", "index"),  # the release step's next batch
        Index(None, "status", "next_attempt_at"),  # the reconciler: overdue releases
        Index(None, "status", "next_check_at"),  # the reconciler: overdue checks
        Index(None, "project_id", "job_ended_at"),  # learned job durations
        Index(None, "parent_batch_id"),  # the splits of a batch
        Index(None, "silence_id"),  # the reconciler: silences of ended batches
    )


class ApiBudget(Base):
    """Shared API budgets (and short leases) when the broker is not Redis: one row per key.

    ``value`` is a wall-clock time in epoch seconds: a budget's theoretical arrival time (GCRA),
    a lease's expiry, or a scheduled wake-up (``worker.budget``)."""

    __tablename__ = "api_budgets"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[float] = mapped_column(Float())
    updated_at: Mapped[timestamp_now]


class DeadLetter(Base):
    """A broker message the worker could not read as a task: moved aside, never lost.

    ``raw`` holds the message as it came off the broker (at most ``RAW_LIMIT`` bytes; ``size``
    is the whole), so an operator can inspect it (``bmsreboot dead-letters``) and re-send it."""

    __tablename__ = "dead_letters"

    id: Mapped[bigint_pk]
    received_at: Mapped[timestamp_now]
    queue: Mapped[str255 | None]
    task: Mapped[str255 | None]
    error: Mapped[str] = mapped_column(Text())
    raw: Mapped[bytes] = mapped_column(LargeBinary())
    size: Mapped[int]

    __table_args__ = (Index(None, "received_at"),)


class ScheduleTick(Base):
    """One tick of a schedule entry: the request it created, or why it was skipped.

    ``(name, tick_at)`` is unique: of two beats (or a late duplicate) one records the tick."""

    __tablename__ = "schedule_ticks"

    id: Mapped[bigint_pk]
    name: Mapped[str255]
    tick_at: Mapped[timestamp]
    #: ``fired`` (claimed, then its request created or found), ``rejected`` (intake refused
    #: it: see ``detail``) or ``skipped`` (``detail`` says why: superseded by a later tick,
    #: missed beyond the grace, before a new entry's first check, the previous request still
    #: running, past its window, or the entry is gone).
    status: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())
    detail: Mapped[str | None] = mapped_column(Text())
    recorded_at: Mapped[timestamp_now]

    __table_args__ = (UniqueConstraint("name", "tick_at"),)


class MetricCounter(Base):
    """The workers' shared counters when the broker is not Redis (``worker.metrics``): one row
    per metric and label set (``key`` is the JSON of both)."""

    __tablename__ = "metric_counters"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[float] = mapped_column(Float())


class ServerResult(Base):
    """One server of one request: its batch and its outcome."""

    __tablename__ = "server_results"

    id: Mapped[bigint_pk]
    request_id: Mapped[uuid.UUID] = _request_fk()
    batch_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey("batches.id", ondelete="CASCADE")
    )
    server_id: Mapped[str64]
    status: Mapped[server_status]
    error_code: Mapped[str64 | None]
    fail_reason: Mapped[str | None] = mapped_column(Text())
    sub_job_id: Mapped[str64 | None]
    begin_time: Mapped[timestamp | None]
    end_time: Mapped[timestamp | None]
    #: When the inventory showed it back after its reboot.
    verified_at: Mapped[timestamp | None]
    #: When it came back, by the inventory's own ``updated`` time (at most ``verified_at``):
    #: what the project's learned boot time is made of, free of how often we looked.
    returned_at: Mapped[timestamp | None]
    updated_at: Mapped[timestamp_now]

    __table_args__ = (
        Index(None, "server_id", "updated_at"),  # history of server X
        # Servers pending or verifying in some request (few at any time): one server in two
        # requests (worker.db.overlap).
        Index(
            "ix_server_results_pending_server_id",
            "server_id",
            postgresql_where=text(HELD_SERVERS),
            sqlite_where=text(HELD_SERVERS),
        ),
        Index(None, "request_id", "status"),  # counts per request
        Index(None, "batch_id", "status"),  # settle a batch's pending servers
    )


class Event(Base):
    """An append-only record of one state change."""

    __tablename__ = "events"

    id: Mapped[bigint_pk]
    entity: Mapped[EventEntity] = mapped_column(_enum(EventEntity, "event_entity"))
    request_id: Mapped[uuid.UUID] = _request_fk()
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(), ForeignKey("batches.id", ondelete="CASCADE")
    )
    server_id: Mapped[str64 | None]
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    at: Mapped[timestamp_now]
    actor: Mapped[str255]
    detail: Mapped[dict[str, Any] | None]

    __table_args__ = (
        Index(None, "request_id", "at"),
        Index(None, "batch_id"),
    )


class WebhookDelivery(Base):
    """One event for one destination: the outbox of webhooks and chat messages.

    Written in the transaction that caused the event (``worker.webhooks.emit``), so an event
    is recorded exactly when its cause is; delivered at least once from here
    (``worker.webhooks.deliver``), and re-driven by the reconciler when its message was lost.
    ``document`` is the CloudEvents 1.0 document; nothing secret is stored beyond the URL the
    operator configured (``url``; for a chat target, the URL as Apprise masks it, the target
    itself being found again in ``BMSREBOOT_NOTIFY_APPRISE`` by ``destination_key``)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[bigint_pk]
    #: The CloudEvent's ``id`` (and the ``webhook-id`` header): the same for every
    #: destination of one event and every attempt, for receivers to de-duplicate on.
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    type: Mapped[str64]
    request_id: Mapped[uuid.UUID] = _request_fk()
    document: Mapped[dict[str, Any]]
    kind: Mapped[DestinationKind] = mapped_column(_enum(DestinationKind, "destination_kind"))
    url: Mapped[str] = mapped_column(Text())
    #: SHA-256 (hex) of the destination as configured: one row per event and destination, the
    #: order and the 410 stop of one request's deliveries to one destination.
    destination_key: Mapped[str64]
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus, "delivery_status"))
    attempts: Mapped[count]
    #: When the next attempt is due (the event's time at first).
    next_attempt_at: Mapped[timestamp | None]
    #: A worker's claim on a pending row while it delivers it (compare-and-set); a claim past
    #: this time lost its worker and may be taken again.
    claimed_until: Mapped[timestamp | None]
    last_attempt_at: Mapped[timestamp | None]
    #: The receiver's HTTP status of the last attempt (None: no answer, or a chat target).
    last_status: Mapped[int | None]
    #: Why the last attempt failed, short: an HTTP status and a masked excerpt, or an
    #: exception's class and masked first line. Never a secret.
    last_error: Mapped[str | None] = mapped_column(String(300))
    #: The event's time (CloudEvents ``time``): one request's events go out in this order.
    created_at: Mapped[timestamp]
    delivered_at: Mapped[timestamp | None]

    __table_args__ = (
        UniqueConstraint("event_id", "destination_key"),
        Index(None, "status", "next_attempt_at"),  # due and lost deliveries
        Index(None, "request_id", "destination_key", "status"),  # one request's queue
        Index(None, "created_at"),  # newest first, retention by age
    )
