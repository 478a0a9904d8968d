"""The outbox in the audit database: writing events, claiming and recording attempts, finding
lost deliveries, listing them.

Every change of a row is compare-and-set: a claim moves a ``pending`` row's ``attempts`` on by
one and sets its lease (``claimed_until``) only if nobody else did first and no live lease
holds it; the outcome of an attempt is recorded only on the claim that made it. Two workers
holding messages for one row never deliver it at once, and a worker killed mid-attempt leaves
a lease that expires (``BMSREBOOT_CONNECT_TIMEOUT`` + ``BMSREBOOT_WEBHOOK_TIMEOUT`` +
``BMSREBOOT_SUBMIT_STALE_MARGIN``), after which the row is taken again.

**One request's events go to one destination in order.** A row is not attempted while an
older row (by event time, then id) of the same request and destination is still pending; when
that one ends, the next is sent at once. The receiver thus sees a request's events in the
order of their ``time``, whichever workers deliver them and however often one is retried;
only the request's later events to that destination wait for a stuck one (at most
``BMSREBOOT_WEBHOOK_RETRY_HOURS``), and only the head of each such line holds a retry message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from worker.censor import mask_url_credentials
from worker.db.models import WebhookDelivery, utcnow
from worker.db.states import DeliveryStatus, DestinationKind
from worker.settings import Settings
from worker.webhooks import backoff
from worker.webhooks.events import CHAT_TYPES, build

log = logging.getLogger("bmsreboot.webhooks")

#: A message this much early for its row's attempt runs anyway (timer resolution).
EARLY_TOLERANCE = 0.05
#: The longest ``last_error`` kept (the column's size).
ERROR_LIMIT = 300

_P = DeliveryStatus.PENDING


def destination_key(url: str) -> str:
    """The key of a destination as configured (SHA-256, hex): equal URLs, equal keys."""
    return hashlib.sha256(url.encode()).hexdigest()


@dataclass(frozen=True)
class Destination:
    kind: DestinationKind
    #: What the outbox stores and shows: a webhook's URL as configured; a chat target's URL
    #: as Apprise masks it (the target itself is looked up by ``key`` when it is delivered).
    url: str
    key: str


def apprise_display(url: str) -> str:
    """A chat target's URL with its secrets masked by Apprise (which knows, for each service,
    which parts are tokens) and without its query; only the scheme when Apprise does not
    know the URL."""
    import apprise

    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{scheme[:20]}://... (not a URL Apprise knows)"
    masked = str(plugin.url(privacy=True))  # type: ignore[no-untyped-call]
    # Without the query: Apprise writes each of its defaults there (retry=0&wait=0.5...).
    return mask_url_credentials(masked.split("?", 1)[0])


def destinations(type: str, notify_url: str | None, settings: Settings) -> list[Destination]:
    """Where an event of ``type`` goes: the request's ``notify_url`` and the default
    ``BMSREBOOT_WEBHOOK_URL`` (once if they are the same), and, for the chat types, every
    ``BMSREBOOT_NOTIFY_APPRISE`` target."""
    found: dict[str, Destination] = {}
    for url in (notify_url, settings.webhook_url):
        if url and url.strip():
            url = url.strip()
            key = destination_key(url)
            found.setdefault(key, Destination(DestinationKind.WEBHOOK, url, key))
    if type in CHAT_TYPES:
        for url in settings.apprise_urls:
            key = destination_key(url)
            found.setdefault(key, Destination(DestinationKind.APPRISE, apprise_display(url), key))
    return list(found.values())


def emit(
    session: Session,
    *,
    type: str,
    request_id: uuid.UUID,
    data: dict[str, Any],
    notify_url: str | None = None,
    settings: Settings,
    now: dt.datetime | None = None,
) -> list[int]:
    """Record one event for every destination, in the caller's session (the transaction that
    caused the event: it is recorded if and only if that commits). Returns the ids of the
    rows to deliver, for the caller to send after commit (``send_deliveries``); none when no
    destination is configured. Flushes, never commits.

    The event is recorded as often as this is called: call it where the state change that
    causes it is made (compare-and-set), so that a repeated task does not repeat it."""
    now = now or utcnow()
    targets = destinations(type, notify_url, settings)
    if not targets:
        return []
    document = build(type, request_id, data, now=now)
    rows = [
        WebhookDelivery(
            event_id=uuid.UUID(document["id"]),
            type=type,
            request_id=request_id,
            document=document,
            kind=target.kind,
            url=target.url,
            destination_key=target.key,
            status=_P,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for target in targets
    ]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


# --- one attempt ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A row this worker claimed: what the attempt needs, and the claim's number."""

    id: int
    attempt: int
    event_id: uuid.UUID
    type: str
    request_id: uuid.UUID
    kind: DestinationKind
    url: str
    key: str
    document: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class NotNow:
    """Why a row was not attempted: ``missing``, ``done`` (not pending), ``busy`` (another
    worker holds it), ``waiting`` (an older event of its request to its destination goes
    first), ``early`` (``wait`` seconds before it is due) or ``stopped`` (its destination
    answered 410 to the request before). ``next_ids``: rows to send now."""

    outcome: str
    wait: float = 0.0
    next_ids: list[int] = field(default_factory=list)
    stopped: int = 0


def _older_pending(row: Any) -> Any:
    """An older pending row of the same request and destination than ``row`` (a table or
    an alias of it, correlated)."""
    other = aliased(WebhookDelivery)
    return (
        exists()
        .where(
            other.request_id == row.request_id,
            other.destination_key == row.destination_key,
            other.status == _P,
            or_(
                other.created_at < row.created_at,
                and_(other.created_at == row.created_at, other.id < row.id),
            ),
        )
        .correlate(row)
    )


def _gone(request_id: uuid.UUID, key: str) -> Any:
    return exists().where(
        WebhookDelivery.request_id == request_id,
        WebhookDelivery.destination_key == key,
        WebhookDelivery.status == DeliveryStatus.STOPPED,
        WebhookDelivery.last_status == 410,
    )


def claim(session: Session, delivery_id: int, now: dt.datetime, lease: float) -> Claim | NotNow:
    """Claim the row for one attempt (compare-and-set), or say why not."""
    row = session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .execution_options(populate_existing=True)
    )
    if row is None:
        return NotNow("missing")
    if row.status != _P:
        return NotNow("done")
    if row.claimed_until is not None and row.claimed_until > now:
        return NotNow("busy")
    if session.scalar(select(_gone(row.request_id, row.destination_key))):
        stopped = _stop_pending(
            session,
            row.request_id,
            row.destination_key,
            now,
            "an earlier event of this request was answered 410 Gone by this destination",
        )
        return NotNow("stopped", stopped=stopped)
    older = aliased(WebhookDelivery)
    blocked = session.scalar(
        select(_older_pending(older)).select_from(older).where(older.id == delivery_id)
    )
    if blocked:
        return NotNow("waiting")
    due = row.next_attempt_at or row.created_at
    early = (due - now).total_seconds()
    if early > EARLY_TOLERANCE:
        return NotNow("early", wait=early)
    won = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == _P,
            WebhookDelivery.attempts == row.attempts,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until <= now),
        )
        .values(
            attempts=row.attempts + 1,
            claimed_until=now + dt.timedelta(seconds=lease),
            last_attempt_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return NotNow("busy")
    return Claim(
        id=row.id,
        attempt=row.attempts + 1,
        event_id=row.event_id,
        type=row.type,
        request_id=row.request_id,
        kind=row.kind,
        url=row.url,
        key=row.destination_key,
        document=row.document,
        created_at=row.created_at,
    )


@dataclass(frozen=True)
class Answer:
    """What one attempt came to. ``error``: short, masked, never a secret."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    #: No attempt can succeed (not an http(s) URL, not a URL Apprise knows): failed at once.
    permanent: bool = False
    #: The destination is no longer configured (a chat target removed): stopped.
    unconfigured: bool = False

    @property
    def gone(self) -> bool:
        return self.status == 410


@dataclass(frozen=True)
class Recorded:
    """What was recorded: ``delivered``, ``retry`` (at ``retry_at``), ``failed``, ``stopped``
    (``stopped`` rows, this one and the request's others to the destination), or ``lost``
    (the claim had expired and another worker took the row)."""

    outcome: str
    retry_at: dt.datetime | None = None
    next_ids: list[int] = field(default_factory=list)
    stopped: int = 0


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return mask_url_credentials(" ".join(text.split()))[:ERROR_LIMIT]


def _stop_pending(
    session: Session, request_id: uuid.UUID, key: str, now: dt.datetime, why: str
) -> int:
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.request_id == request_id,
            WebhookDelivery.destination_key == key,
            WebhookDelivery.status == _P,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until <= now),
        )
        .values(status=DeliveryStatus.STOPPED, claimed_until=None, last_error=_clip(why))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def next_in_line(session: Session, request_id: uuid.UUID, key: str) -> list[int]:
    """The oldest pending row of a request's deliveries to one destination (none or one)."""
    first = session.scalar(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.request_id == request_id,
            WebhookDelivery.destination_key == key,
            WebhookDelivery.status == _P,
        )
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        .limit(1)
    )
    return [first] if first is not None else []


def record(
    session: Session, claim: Claim, answer: Answer, now: dt.datetime, settings: Settings
) -> Recorded:
    """Record the outcome of the attempt ``claim`` made (compare-and-set on the claim)."""
    mine = [
        WebhookDelivery.id == claim.id,
        WebhookDelivery.status == _P,
        WebhookDelivery.attempts == claim.attempt,
    ]
    values: dict[str, Any] = {
        "claimed_until": None,
        "last_status": answer.status,
        "last_error": _clip(answer.error),
    }
    retry_at: dt.datetime | None = None
    if answer.ok:
        outcome = "delivered"
        values.update(status=DeliveryStatus.DELIVERED, delivered_at=now, last_error=None)
    elif answer.gone or answer.unconfigured:
        outcome = "stopped"
        values.update(status=DeliveryStatus.STOPPED)
    elif answer.permanent:
        outcome = "failed"
        values.update(status=DeliveryStatus.FAILED)
    else:
        retry_at = backoff.next_attempt(
            claim.attempt,
            now=now,
            created_at=claim.created_at,
            base=settings.webhook_retry_base,
            cap=settings.webhook_retry_max,
            retry_hours=settings.webhook_retry_hours,
            retry_after=answer.retry_after,
        )
        if retry_at is None:
            outcome = "failed"
            values.update(status=DeliveryStatus.FAILED)
        else:
            outcome = "retry"
            values.update(next_attempt_at=retry_at)
    done = session.execute(
        update(WebhookDelivery)
        .where(*mine)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        return Recorded("lost")
    if outcome == "stopped":
        others = 0
        if answer.gone:
            others = _stop_pending(
                session,
                claim.request_id,
                claim.key,
                now,
                "an earlier event of this request was answered 410 Gone by this destination",
            )
        return Recorded("stopped", stopped=1 + others)
    if outcome == "retry":
        return Recorded("retry", retry_at=retry_at)
    return Recorded(outcome, next_ids=next_in_line(session, claim.request_id, claim.key))


# --- the reconciler's side ------------------------------------------------------------------


def redeliver_lost(
    session_or_engine: Session | Engine, now: dt.datetime, limit: int, *, grace: float
) -> list[int]:
    """Deliveries whose message was lost: pending, their attempt due more than ``grace``
    seconds ago, no live claim, and first in line of their request and destination. Their
    ``next_attempt_at`` becomes ``now``, so that the next run re-drives them again only if
    they are still not delivered ``grace`` seconds later. The caller sends them after commit
    (``send_deliveries``); a duplicate message is harmless (claims are compare-and-set)."""
    if isinstance(session_or_engine, Engine):
        from worker.db.session import unit_of_work

        with unit_of_work(session_or_engine) as session:
            return redeliver_lost(session, now, limit, grace=grace)
    session = session_or_engine
    overdue = now - dt.timedelta(seconds=grace)
    row = aliased(WebhookDelivery)
    ids = list(
        session.scalars(
            select(row.id)
            .where(
                row.status == _P,
                row.next_attempt_at <= overdue,
                or_(row.claimed_until.is_(None), row.claimed_until <= overdue),
                ~_older_pending(row),
            )
            .order_by(row.next_attempt_at, row.id)
            .limit(limit)
        )
    )
    if ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids), WebhookDelivery.status == _P)
            .values(next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
    return ids


# --- reading ------------------------------------------------------------------


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def as_dict(row: WebhookDelivery) -> dict[str, Any]:
    """One delivery for people and ``--json``: the destination's credentials masked."""
    return {
        "id": row.id,
        "event_id": str(row.event_id),
        "type": row.type,
        "request_id": str(row.request_id),
        "kind": row.kind.value,
        "destination": mask_url_credentials(row.url),
        "status": row.status.value,
        "attempts": row.attempts,
        "last_status": row.last_status,
        "last_error": row.last_error,
        "created_at": _iso(row.created_at),
        "next_attempt_at": _iso(row.next_attempt_at) if row.status == _P else None,
        "last_attempt_at": _iso(row.last_attempt_at),
        "delivered_at": _iso(row.delivered_at),
    }


def recent(
    session: Session,
    *,
    failed: bool = False,
    request_id: uuid.UUID | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Deliveries newest first (``failed``: only those given up on)."""
    query = (
        select(WebhookDelivery)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(limit)
    )
    if failed:
        query = query.where(WebhookDelivery.status == DeliveryStatus.FAILED)
    if request_id is not None:
        query = query.where(WebhookDelivery.request_id == request_id)
    return [as_dict(row) for row in session.scalars(query)]
