"""Delivering one row of the outbox: a signed webhook POST, or a chat message through Apprise.

:func:`deliver` is the plain function behind ``bmsreboot.deliver_webhook``: claim the row
(committed), make one attempt with a timeout, record its outcome (committed), then send what
follows: the row's retry as a countdown message (or nothing, when the delay is longer than a
countdown may be: the reconciler re-drives the row when it is due), and the next event of the
request to that destination once this one has ended.

A webhook is POSTed in the CloudEvents structured mode (``worker.webhooks.events``) and signed
per the Standard Webhooks specification with the ``standardwebhooks`` library: headers
``webhook-id`` (the event id: the same on every attempt and destination), ``webhook-timestamp``
(this attempt, Unix seconds) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
``id.timestamp.body`` keyed with ``BMSREBOOT_WEBHOOK_SECRET``). A 2xx answer delivers it;
a redirect is not followed (the specification counts it a failure: fix the URL); 410 Gone
stops every pending delivery of the request to that URL; anything else, or no answer, is
retried (``worker.webhooks.backoff``).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import requests
from sqlalchemy import Engine

from worker import __version__
from worker.censor import mask_url_credentials
from worker.db.models import utcnow
from worker.db.session import unit_of_work
from worker.db.states import DestinationKind
from worker.metrics import Metrics
from worker.pipeline.backoff import countdown_ceiling
from worker.settings import Settings
from worker.webhooks import backoff
from worker.webhooks.events import (
    REQUEST_FINISHED,
    REQUEST_HALTED,
    SERVER_UNHEALTHY,
    chat_line,
    structured,
)
from worker.webhooks.outbox import Answer, Claim, NotNow, claim, destination_key, record

log = logging.getLogger("bmsreboot.webhooks")

#: A message at most this early for its row's attempt (a timer's imprecision) is sent again
#: for the moment it is due; one earlier still is a duplicate, and dropped.
EARLY_RESEND = 1.0
#: How much of a receiver's answer ``last_error`` keeps (masked).
EXCERPT = 80
USER_AGENT = f"bmsreboot/{__version__}"

#: Sends delivery messages (ids, countdown in seconds); False when the broker refused them.
Sender = Callable[[Sequence[int], float], bool]


@dataclass
class DeliveryRuntime:
    """What a delivery needs from the outside world (a worker builds one per process:
    ``worker.webhooks.dispatch.worker_runtime``)."""

    settings: Settings
    engine: Engine
    send: Sender
    metrics: Metrics = field(default_factory=lambda: Metrics(None))
    http: requests.Session = field(default_factory=requests.Session)


def lease_seconds(settings: Settings) -> float:
    """How long a claim holds a row: longer than any attempt can take."""
    return settings.connect_timeout + settings.webhook_timeout + settings.submit_stale_margin


def deliver(delivery_id: int, rt: DeliveryRuntime) -> str:
    """Make one attempt at a delivery if it is due and nobody else holds it; returns what
    happened, one word (``delivered``, ``retry``, ``failed``, ``stopped``, or why nothing
    was attempted: ``early``, ``waiting``, ``busy``, ``done``, ``missing``, ``lost``)."""
    with unit_of_work(rt.engine) as session:
        got = claim(session, delivery_id, utcnow(), lease_seconds(rt.settings))
    if isinstance(got, NotNow):
        return _not_now(delivery_id, got, rt)
    # Committed: this worker holds the row until its lease ends.
    answer = attempt(got, rt)
    with unit_of_work(rt.engine) as session:
        done = record(session, got, answer, utcnow(), rt.settings)
    where = mask_url_credentials(got.url)
    if done.outcome == "lost":
        log.warning(
            "delivery %d (%s) to %s: its claim had expired and another worker took it; "
            "this attempt is not recorded",
            got.id,
            got.type,
            where,
        )
        return done.outcome
    rt.metrics.webhook_delivery(done.outcome, max(done.stopped, 1))
    _log_outcome(got, answer, done.outcome, done.retry_at, done.stopped, where)
    if done.retry_at is not None:
        _later(rt, got.id, done.retry_at)
    if done.next_ids:
        rt.send(done.next_ids, 0.0)
    return done.outcome


def _not_now(delivery_id: int, got: NotNow, rt: DeliveryRuntime) -> str:
    if got.outcome == "early" and got.wait <= EARLY_RESEND:
        _later(rt, delivery_id, utcnow() + dt.timedelta(seconds=got.wait))
    elif got.outcome == "early":
        # A duplicate (the reconciler's, or one redelivered by the broker): the message the
        # row's retry was scheduled with is the live one, and the reconciler re-drives the
        # row if that is lost. Sending this one on would keep two chains of messages alive.
        log.debug(
            "delivery %d is due in %.1f s: dropping an early duplicate", delivery_id, got.wait
        )
    elif got.outcome == "stopped":
        rt.metrics.webhook_delivery("stopped", got.stopped)
        log.info(
            "delivery %d stopped with %d other(s): its destination answered 410 to this "
            "request before",
            delivery_id,
            max(got.stopped - 1, 0),
        )
    elif got.outcome == "missing":
        log.warning("delivery %d does not exist (purged?); nothing to deliver", delivery_id)
    if got.next_ids:
        rt.send(got.next_ids, 0.0)
    return got.outcome


def _later(rt: DeliveryRuntime, delivery_id: int, due: dt.datetime) -> None:
    """The message for the attempt due at ``due``: a countdown, or none when that would be
    longer than any countdown may be (the reconciler re-drives the row once it is due)."""
    countdown = backoff.countdown_for(due, utcnow(), countdown_ceiling(rt.settings))
    if countdown is not None:
        rt.send([delivery_id], countdown)


def _log_outcome(
    got: Claim,
    answer: Answer,
    outcome: str,
    retry_at: dt.datetime | None,
    stopped: int,
    where: str,
) -> None:
    what = f"delivery {got.id} ({got.type}) of request {got.request_id} to {where}"
    if outcome == "delivered":
        log.info("%s delivered (attempt %d, HTTP %s)", what, got.attempt, answer.status or "-")
    elif outcome == "retry":
        assert retry_at is not None
        log.warning(
            "%s: attempt %d failed (%s); next attempt at %s",
            what,
            got.attempt,
            answer.error,
            retry_at.isoformat(timespec="seconds"),
        )
    elif outcome == "stopped":
        log.warning(
            "%s stopped (%s): %d pending deliveries of the request to it stopped",
            what,
            answer.error,
            stopped,
        )
    else:
        log.error("%s failed for good after %d attempts (%s)", what, got.attempt, answer.error)


# --- one attempt ----------------------------------------------------------------------------


def attempt(got: Claim, rt: DeliveryRuntime) -> Answer:
    """One attempt at a claimed delivery. Never raises: what went wrong is the answer."""
    try:
        if got.kind == DestinationKind.APPRISE:
            return notify_chat(got, rt.settings)
        return post_webhook(got, rt.settings, rt.http)
    except Exception as exc:  # a bug or an environment problem must not lose the row
        log.exception("delivery %d: unexpected error", got.id)
        return Answer(ok=False, error=_describe(exc))


def _describe(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {mask_url_credentials(first)[:200]}".rstrip(": ")


_warned_unsigned = False


def signature_headers(
    event_id: str, body: bytes, secret: str | None, now: dt.datetime
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (``webhook-signature`` only with a
    secret). Raises ValueError when the secret is not ``whsec_`` + base64 of 24 to 64 bytes."""
    import base64
    import binascii

    from standardwebhooks.webhooks import Webhook

    headers = {"webhook-id": event_id, "webhook-timestamp": str(int(now.timestamp()))}
    if secret is None:
        return headers
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not 24 <= len(key) <= 64:
        raise ValueError(
            "BMSREBOOT_WEBHOOK_SECRET is not whsec_ followed by base64 of 24 to 64 random "
            "bytes: webhooks are not sent until it is"
        )
    headers["webhook-signature"] = Webhook(secret).sign(event_id, now, body.decode())
    return headers


def post_webhook(got: Claim, settings: Settings, http: requests.Session) -> Answer:
    """POST the event to the webhook's URL, signed."""
    global _warned_unsigned

    if not got.url.lower().startswith(("http://", "https://")):
        return Answer(ok=False, error="not an http(s) URL", permanent=True)
    message = structured(got.document)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    if secret is None and not _warned_unsigned:
        _warned_unsigned = True
        log.warning("BMSREBOOT_WEBHOOK_SECRET is not set: webhooks are sent unsigned")
    try:
        signed = signature_headers(str(got.event_id), message.body, secret, utcnow())
    except ValueError as exc:
        log.error("%s", exc)
        return Answer(ok=False, error=str(exc))
    headers = {**message.headers, **signed, "user-agent": USER_AGENT}
    try:
        response = http.post(
            got.url,
            data=message.body,
            headers=headers,
            timeout=(settings.connect_timeout, settings.webhook_timeout),
            allow_redirects=False,
            verify=settings.ca_bundle or settings.verify_tls,
        )
    except requests.RequestException as exc:
        return Answer(ok=False, error=_describe(exc))
    with response:
        if 200 <= response.status_code < 300:
            return Answer(ok=True, status=response.status_code)
        excerpt = " ".join(response.text[:EXCERPT].split())
        reason = f" {response.reason}" if response.reason else ""
        return Answer(
            ok=False,
            status=response.status_code,
            error=f"HTTP {response.status_code}{reason}" + (f": {excerpt}" if excerpt else ""),
            retry_after=_retry_after(response.headers.get("retry-after")),
        )


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number of seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - utcnow()).total_seconds(), 0.0)


def _chat_kind(type: str, document_data: object) -> str:
    status = document_data.get("status") if isinstance(document_data, dict) else None
    if type == REQUEST_FINISHED:
        return {"succeeded": "success", "cancelled": "info"}.get(str(status), "warning")
    if type in (REQUEST_HALTED, SERVER_UNHEALTHY):
        return "warning"
    return "info"


def notify_chat(got: Claim, settings: Settings) -> Answer:
    """Send the event's one-line message to a chat target with Apprise. The target is the
    ``BMSREBOOT_NOTIFY_APPRISE`` URL of the row's key (the outbox holds it masked only)."""
    import apprise

    url = next((u for u in settings.apprise_urls if destination_key(u) == got.key), None)
    if url is None:
        return Answer(
            ok=False,
            error="this chat target is no longer in BMSREBOOT_NOTIFY_APPRISE",
            unconfigured=True,
        )
    line = chat_line(got.document)
    if line is None:
        return Answer(ok=False, error=f"no chat message for {got.type}", permanent=True)
    targets = apprise.Apprise()
    if not targets.add(url):
        return Answer(ok=False, error="not a URL Apprise knows", permanent=True)
    with apprise.LogCapture(level=logging.WARNING) as captured:  # type: ignore[no-untyped-call]
        sent = bool(
            targets.notify(
                body=line,
                title="",
                notify_type=_chat_kind(got.type, got.document.get("data")),
            )
        )
    if sent:
        return Answer(ok=True)
    lines = [ln for ln in captured.getvalue().splitlines() if ln.strip()]
    why = lines[-1].split(" - ", 2)[-1] if lines else "Apprise could not send it"
    return Answer(ok=False, error=f"Apprise: {why}")
