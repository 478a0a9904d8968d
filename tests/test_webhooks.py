"""Webhooks and chat messages from the outbox, on SQLite and PostgreSQL, to real receivers over
HTTP (``tests/fixtures/receiver.py``: an http.server that verifies every delivery with the
``standardwebhooks`` library).

The deliveries run in this process through :class:`Broker`, which stands for the broker and
a worker taking one message at a time: it keeps the messages ``deliver`` sends (countdowns
included) and runs them when due, oldest first. The tests with real worker processes are in
tests/test_webhooks_worker.py.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from tests.fixtures.db import new_request
from tests.fixtures.receiver import Receiver, new_secret
from worker.db.models import RebootRequest, WebhookDelivery, utcnow
from worker.db.retention import purge_finished
from worker.db.session import unit_of_work
from worker.db.states import DeliveryStatus, RequestStatus
from worker.metrics import DatabaseCounters, Metrics
from worker.settings import Settings
from worker.webhooks import (
    BATCH_ENDED,
    REQUEST_ACCEPTED,
    REQUEST_FINISHED,
    REQUEST_HALTED,
    SERVER_UNHEALTHY,
    DeliveryRuntime,
    deliver,
    emit,
    redeliver_lost,
)
from worker.webhooks.delivery import lease_seconds
from worker.webhooks.outbox import Answer, Claim, claim, record

FINAL = {"delivered", "failed", "stopped"}
STATUS = {
    "request_id": "",
    "status": "partially_failed",
    "source": "schedule:kernel-a",
    "servers": {"total": 1000, "succeeded": 980, "failed": 20, "unknown": 0},
}


def settings_for(tmp_path: Path, secret: str | None, **extra: Any) -> Settings:
    """Fast retries: the schedule's shape, in hundredths of a second."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "webhook_secret": secret,
        "webhook_retry_base": 0.02,
        "webhook_retry_max": 0.1,
        "connect_timeout": 1.0,
        "webhook_timeout": 2.0,
        "submit_stale_margin": 1.0,
    }
    values.update(extra)
    return Settings(**values)


class Broker:
    """The messages ``deliver`` sends, run when due, one at a time (a worker of concurrency
    1 on a broker that loses nothing). ``send`` is the runtime's sender."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count()
        self.sent: list[tuple[int, float]] = []

    def send(self, ids: Sequence[int], countdown: float) -> bool:
        for delivery_id in ids:
            self.sent.append((delivery_id, countdown))
            heapq.heappush(self._heap, (time.monotonic() + countdown, next(self._seq), delivery_id))
        return True

    def run(self, rt: DeliveryRuntime, until: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the deliveries did not end in time"
            assert self._heap, "no message left, and the deliveries have not ended"
            due, _, delivery_id = heapq.heappop(self._heap)
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the countdown of the message, as the broker keeps it
            deliver(delivery_id, rt)


def runtime(engine: Engine, settings: Settings, broker: Broker, **extra: Any) -> DeliveryRuntime:
    return DeliveryRuntime(settings=settings, engine=engine, send=broker.send, **extra)


def a_request(engine: Engine) -> uuid.UUID:
    with unit_of_work(engine) as session:
        return new_request(session).id


def emitted(engine: Engine, settings: Settings, **kwargs: Any) -> list[int]:
    with unit_of_work(engine) as session:
        return emit(session, settings=settings, **kwargs)


def rows(engine: Engine, ids: Sequence[int] | None = None) -> list[WebhookDelivery]:
    with unit_of_work(engine) as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if ids is not None:
            query = query.where(WebhookDelivery.id.in_(list(ids)))
        return list(session.scalars(query))


def ended(engine: Engine, ids: Sequence[int]) -> Callable[[], bool]:
    return lambda: all(r.status.value in FINAL for r in rows(engine, ids))


def finished(request_id: uuid.UUID) -> dict[str, Any]:
    return {**STATUS, "request_id": str(request_id)}


# --- what is written ----------------------------------------------------------------------


def test_an_event_is_written_once_per_destination_in_the_transaction_that_caused_it(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a default webhook URL and a request with its own notify_url
    settings = settings_for(tmp_path, new_secret(), webhook_url="http://127.0.0.1:9/default")
    request_id = a_request(engine)
    # When an event is emitted in a transaction that is rolled back
    session = Session(engine)
    try:
        emit(
            session,
            type=REQUEST_ACCEPTED,
            request_id=request_id,
            data=finished(request_id),
            notify_url="http://127.0.0.1:9/own",
            settings=settings,
        )
        session.rollback()
    finally:
        session.close()
    # Then nothing was recorded
    assert rows(engine) == []
    # When it is emitted in one that commits
    ids = emitted(
        engine,
        settings,
        type=REQUEST_ACCEPTED,
        request_id=request_id,
        data=finished(request_id),
        notify_url="http://127.0.0.1:9/own",
    )
    # Then one pending row per destination holds the same event, due at once
    got = rows(engine)
    assert [r.id for r in got] == ids
    assert {r.url for r in got} == {"http://127.0.0.1:9/own", "http://127.0.0.1:9/default"}
    assert len({r.event_id for r in got}) == 1
    assert {r.status for r in got} == {DeliveryStatus.PENDING}
    assert all(r.next_attempt_at == r.created_at for r in got)


def test_no_destination_configured_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    request_id = a_request(engine)
    ids = emitted(
        engine,
        settings_for(tmp_path, None),
        type=REQUEST_FINISHED,
        request_id=request_id,
        data=finished(request_id),
    )
    assert ids == []
    assert rows(engine) == []


def test_the_same_url_as_notify_url_and_default_gets_the_event_once(
    engine: Engine, tmp_path: Path
) -> None:
    url = "http://127.0.0.1:9/hook"
    request_id = a_request(engine)
    ids = emitted(
        engine,
        settings_for(tmp_path, None, webhook_url=url),
        type=BATCH_ENDED,
        request_id=request_id,
        data={"request_id": str(request_id), "index": 0},
        notify_url=url,
    )
    assert len(ids) == 1


def test_chat_targets_get_only_the_events_people_read(engine: Engine, tmp_path: Path) -> None:
    # Given a chat target and no webhook
    settings = settings_for(tmp_path, None, notify_apprise="json://127.0.0.1:9/chat")
    request_id = a_request(engine)
    # When each type of event is emitted
    written = {
        type: emitted(engine, settings, type=type, request_id=request_id, data=finished(request_id))
        for type in (REQUEST_ACCEPTED, BATCH_ENDED, REQUEST_HALTED, SERVER_UNHEALTHY)
    }
    # Then only halted and unhealthy go to chat (finished too: see the Apprise test)
    assert {t: len(ids) for t, ids in written.items()} == {
        REQUEST_ACCEPTED: 0,
        BATCH_ENDED: 0,
        REQUEST_HALTED: 1,
        SERVER_UNHEALTHY: 1,
    }


def test_the_document_is_a_cloudevent_the_cloudevents_library_reads(
    engine: Engine, tmp_path: Path
) -> None:
    secret = new_secret()
    settings = settings_for(tmp_path, secret)
    request_id = a_request(engine)
    broker = Broker()
    with Receiver(secret) as receiver:
        ids = emitted(
            engine,
            settings,
            type=REQUEST_FINISHED,
            request_id=request_id,
            data=finished(request_id),
            notify_url=receiver.url(),
        )
        broker.send(ids, 0.0)
        broker.run(runtime(engine, settings, broker), ended(engine, ids))
        (got,) = receiver.webhooks()
    # The body is a structured-mode CloudEvent the library parses from the HTTP message
    assert got.headers["content-type"] == "application/cloudevents+json; charset=utf-8"
    event = from_http_event(HTTPMessage(headers=got.headers, body=got.body))
    attributes = event.get_attributes()
    assert attributes["specversion"] == "1.0"
    assert attributes["source"] == "bmsreboot"
    assert attributes["type"] == REQUEST_FINISHED
    assert attributes["subject"] == str(request_id)
    assert attributes["time"].tzinfo is not None
    assert event.get_data() == finished(request_id)
    # And the webhook-id is the event's id
    assert got.headers["webhook-id"] == attributes["id"]


# --- delivery -----------------------------------------------------------------------------


def test_a_receiver_that_fails_twice_gets_every_event_once_accepted_with_a_valid_signature(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a receiver that verifies every delivery and answers 500 to two attempts of each
    secret = new_secret()
    settings = settings_for(tmp_path, secret)
    broker = Broker()
    with Receiver(secret, fail_first=2) as receiver:
        # When three requests each announce two events
        ids: list[int] = []
        for _ in range(3):
            request_id = a_request(engine)
            for type in (REQUEST_ACCEPTED, REQUEST_FINISHED):
                ids += emitted(
                    engine,
                    settings,
                    type=type,
                    request_id=request_id,
                    data=finished(request_id),
                    notify_url=receiver.url(),
                )
        broker.send(ids, 0.0)
        broker.run(runtime(engine, settings, broker), ended(engine, ids))
        # Then every attempt carried a valid signature, and each event was accepted once
        assert [r.error for r in receiver.webhooks()] == [None] * 18
        accepted = receiver.accepted()
    assert sorted(e["id"] for e in accepted) == sorted(str(r.event_id) for r in rows(engine))
    assert {(r.status, r.attempts) for r in rows(engine)} == {(DeliveryStatus.DELIVERED, 3)}


def test_one_requests_events_reach_the_receiver_in_the_order_of_their_time(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a receiver that fails two attempts of each event
    secret = new_secret()
    settings = settings_for(tmp_path, secret)
    broker = Broker()
    request_id = a_request(engine)
    with Receiver(secret, fail_first=2) as receiver:
        # And four events of one request, whose messages come in reverse order
        ids = [
            emitted(
                engine,
                settings,
                type=type,
                request_id=request_id,
                data=finished(request_id),
                notify_url=receiver.url(),
            )[0]
            for type in (REQUEST_ACCEPTED, BATCH_ENDED, BATCH_ENDED, REQUEST_FINISHED)
        ]
        broker.send(list(reversed(ids)), 0.0)
        # When they are delivered
        broker.run(runtime(engine, settings, broker), ended(engine, ids))
        accepted = receiver.accepted()
    # Then the receiver accepted them in the order of their time, each once
    times = [e["time"] for e in accepted]
    assert len(accepted) == 4
    assert times == sorted(times)
    assert [e["id"] for e in accepted] == [str(r.event_id) for r in rows(engine, ids)]


def test_a_410_stops_that_url_for_that_request_and_nothing_else(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a receiver whose /gone answers 410 Gone
    secret = new_secret()
    settings = settings_for(tmp_path, secret)
    rt = runtime(engine, settings, Broker())
    with Receiver(secret, answer={"/gone": 410}) as receiver:
        first, other = a_request(engine), a_request(engine)

        def announce(request_id: uuid.UUID, path: str, type: str = BATCH_ENDED) -> list[int]:
            return emitted(
                engine,
                settings,
                type=type,
                request_id=request_id,
                data=finished(request_id),
                notify_url=receiver.url(path),
            )

        gone = announce(first, "/gone") + announce(first, "/gone")
        # When the first event of a request to /gone is answered 410
        assert deliver(gone[0], rt) == "stopped"
        # Then every pending delivery of that request to that URL is stopped, unsent
        assert {r.status for r in rows(engine, gone)} == {DeliveryStatus.STOPPED}
        assert [r.attempts for r in rows(engine, gone)] == [1, 0]
        # And so is a later event of the request to that URL, even once /gone would answer
        del receiver.answer["/gone"]
        later = announce(first, "/gone", REQUEST_FINISHED)
        assert deliver(later[0], rt) == "stopped"
        assert len(receiver.webhooks()) == 1
        # While the request's other URL, and another request to that URL, are delivered
        elsewhere = announce(first, "/ok") + announce(other, "/gone", REQUEST_ACCEPTED)
        assert [deliver(i, rt) for i in elsewhere] == ["delivered", "delivered"]
        assert len(receiver.accepted()) == 2


def test_a_receiver_that_refuses_connections_for_a_while_gets_its_events_when_it_returns(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a receiver that is down (nothing listens on its port)
    secret = new_secret()
    settings = settings_for(tmp_path, secret)
    broker = Broker()
    receiver = Receiver(secret)
    request_id = a_request(engine)
    ids = emitted(
        engine,
        settings,
        type=REQUEST_FINISHED,
        request_id=request_id,
        data=finished(request_id),
        notify_url=receiver.url(),
    )
    rt = runtime(engine, settings, broker)
    broker.send(ids, 0.0)
    # When the delivery has been tried three times in vain
    broker.run(rt, lambda: rows(engine, ids)[0].attempts >= 3)
    (row,) = rows(engine, ids)
    assert row.status == DeliveryStatus.PENDING
    assert row.last_error is not None
    assert row.last_error.startswith("ConnectionError")
    # And the receiver comes back
    with receiver:
        broker.run(rt, ended(engine, ids))
        # Then it gets the event
        assert [e["id"] for e in receiver.accepted()] == [str(row.event_id)]
    assert rows(engine, ids)[0].status == DeliveryStatus.DELIVERED


def test_a_duplicate_message_for_a_delivery_waiting_to_retry_is_dropped(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a delivery whose first attempt failed, its retry 30 s away
    secret = new_secret()
    settings = settings_for(tmp_path, secret, webhook_retry_base=30.0, webhook_retry_max=60.0)
    broker = Broker()
    rt = runtime(engine, settings, broker)
    with Receiver(secret, answer={"/hook": 500}) as receiver:
        request_id = a_request(engine)
        ids = emitted(
            engine,
            settings,
            type=REQUEST_FINISHED,
            request_id=request_id,
            data=finished(request_id),
            notify_url=receiver.url(),
        )
        assert deliver(ids[0], rt) == "retry"
        assert [countdown > 29 for _, countdown in broker.sent] == [True]
        # When a duplicate message for it comes (the reconciler's, or a redelivery)
        assert deliver(ids[0], rt) == "early"
        # Then it is not attempted, and sends no second chain of messages
        assert len(receiver.webhooks()) == 1
        assert len(broker.sent) == 1


def test_a_delivery_is_failed_once_its_event_is_retry_hours_old(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a delivery to a receiver that always fails, of an event almost 24 h old
    secret = new_secret()
    settings = settings_for(tmp_path, secret, webhook_retry_hours=24)
    broker = Broker()
    with Receiver(secret, answer={"/hook": 503}) as receiver:
        request_id = a_request(engine)
        ids = emitted(
            engine,
            settings,
            type=REQUEST_FINISHED,
            request_id=request_id,
            data=finished(request_id),
            notify_url=receiver.url(),
            now=utcnow() - dt.timedelta(hours=24) + dt.timedelta(seconds=0.3),
        )
        # When it is tried until it ends
        broker.send(ids, 0.0)
        broker.run(runtime(engine, settings, broker), ended(engine, ids))
    # Then it is failed, with the receiver's status as its last error
    (row,) = rows(engine, ids)
    assert row.status == DeliveryStatus.FAILED
    assert row.attempts >= 2
    assert row.last_status == 503
    assert row.last_error is not None
    assert row.last_error.startswith("HTTP 503")


def test_a_url_that_is_not_http_fails_at_once(engine: Engine, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, new_secret())
    request_id = a_request(engine)
    ids = emitted(
        engine,
        settings,
        type=REQUEST_FINISHED,
        request_id=request_id,
        data=finished(request_id),
        notify_url="ftp://example.invalid/x",
    )
    assert deliver(ids[0], runtime(engine, settings, Broker())) == "failed"
    assert rows(engine, ids)[0].last_error == "not an http(s) URL"


# --- one attempt at a time, and nothing lost ---------------------------------------------


def _claim(engine: Engine, delivery_id: int, lease: float) -> Any:
    with unit_of_work(engine) as session:
        return claim(session, delivery_id, utcnow(), lease)


def test_two_workers_never_attempt_one_delivery_at_once(engine: Engine, tmp_path: Path) -> None:
    # Given a pending delivery
    settings = settings_for(tmp_path, new_secret())
    request_id = a_request(engine)
    (delivery_id,) = emitted(
        engine,
        settings,
        type=REQUEST_FINISHED,
        request_id=request_id,
        data=finished(request_id),
        notify_url="http://127.0.0.1:9/hook",
    )
    # When one worker claims it, a second finds it busy
    first = _claim(engine, delivery_id, lease=60.0)
    assert isinstance(first, Claim)
    assert _claim(engine, delivery_id, lease=60.0).outcome == "busy"
    # When the first worker's claim has run out (it died), another claims it
    with unit_of_work(engine) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(claimed_until=utcnow() - dt.timedelta(seconds=1))
        )
    second = _claim(engine, delivery_id, lease=60.0)
    assert isinstance(second, Claim)
    assert second.attempt == first.attempt + 1
    # Then the first worker's late answer is not recorded over the second's claim
    with unit_of_work(engine) as session:
        late = record(session, first, Answer(ok=True, status=200), utcnow(), settings)
    assert late.outcome == "lost"
    with unit_of_work(engine) as session:
        assert record(session, second, Answer(ok=True), utcnow(), settings).outcome == ("delivered")
    assert rows(engine)[0].attempts == 2


def test_events_committed_without_their_message_are_re_driven_from_the_audit_database(
    engine: Engine, tmp_path: Path
) -> None:
    # Given two events committed 20 s ago by a worker killed before it sent their messages
    secret = new_secret()
    settings = settings_for(tmp_path, secret)
    with Receiver(secret) as receiver:
        request_id = a_request(engine)
        ago = utcnow() - dt.timedelta(seconds=20)
        ids = [
            emitted(
                engine,
                settings,
                type=type,
                request_id=request_id,
                data=finished(request_id),
                notify_url=receiver.url(),
                now=ago,
            )[0]
            for type in (REQUEST_ACCEPTED, REQUEST_FINISHED)
        ]
        # When the reconciler looks with a grace they are not yet overdue by, it leaves them
        assert redeliver_lost(engine, utcnow(), 100, grace=30.0) == []
        # When they are overdue by more than its grace
        lost = redeliver_lost(engine, utcnow(), 100, grace=15.0)
        # Then it re-drives the first of the request's line (the second waits for it)
        assert lost == ids[:1]
        # And their messages deliver both, in order
        broker = Broker()
        broker.send(lost, 0.0)
        broker.run(runtime(engine, settings, broker), ended(engine, ids))
        assert [e["type"] for e in receiver.accepted()] == [REQUEST_ACCEPTED, REQUEST_FINISHED]
    # And a later look finds nothing more
    later = utcnow() + dt.timedelta(seconds=60)
    assert redeliver_lost(engine, later, 100, grace=15.0) == []


def test_a_re_driven_delivery_is_not_re_driven_again_within_the_grace(
    engine: Engine, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, None)
    request_id = a_request(engine)
    ids = emitted(
        engine,
        settings,
        type=REQUEST_FINISHED,
        request_id=request_id,
        data={},
        notify_url="http://127.0.0.1:9/hook",
        now=utcnow() - dt.timedelta(seconds=20),
    )
    now = utcnow()
    assert redeliver_lost(engine, now, 100, grace=15.0) == ids
    # Its message may only be slow: the next run does not send another at once
    assert redeliver_lost(engine, now + dt.timedelta(seconds=10), 100, grace=15.0) == []
    assert redeliver_lost(engine, now + dt.timedelta(seconds=16), 100, grace=15.0) == ids


def test_a_delivery_claimed_by_a_live_worker_is_not_re_driven(
    engine: Engine, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, new_secret())
    request_id = a_request(engine)
    (delivery_id,) = emitted(
        engine,
        settings,
        type=REQUEST_FINISHED,
        request_id=request_id,
        data=finished(request_id),
        notify_url="http://127.0.0.1:9/hook",
        now=utcnow() - dt.timedelta(minutes=5),
    )
    assert isinstance(_claim(engine, delivery_id, lease=lease_seconds(settings)), Claim)
    assert redeliver_lost(engine, utcnow(), 100, grace=1.0) == []
    # Once its claim has run out (the worker died mid-attempt), it is
    later = utcnow() + dt.timedelta(seconds=lease_seconds(settings) + 2)
    assert redeliver_lost(engine, later, 100, grace=1.0) == [delivery_id]


# --- chat ---------------------------------------------------------------------------------


def test_chat_messages_reach_a_local_json_endpoint_through_apprise_and_are_retried(
    engine: Engine, tmp_path: Path
) -> None:
    # Given an Apprise json:// target that fails its first attempt
    with Receiver(new_secret(), fail_first=1) as receiver:
        settings = settings_for(
            tmp_path, None, notify_apprise=f"json://127.0.0.1:{receiver.port}/chat"
        )
        request_id = a_request(engine)
        # When a request finishes
        ids = emitted(
            engine,
            settings,
            type=REQUEST_FINISHED,
            request_id=request_id,
            data=finished(request_id),
        )
        broker = Broker()
        broker.send(ids, 0.0)
        broker.run(runtime(engine, settings, broker), ended(engine, ids))
        chats = receiver.chats()
    # Then one line for people arrived, after one retry
    assert [c["message"] for c in chats][-1] == (
        f"bmsreboot: request {request_id} finished partially_failed: 980 succeeded, 20 failed "
        "of 1000 (source schedule:kernel-a)"
    )
    assert len(chats) == 2
    (row,) = rows(engine, ids)
    assert (row.status, row.attempts, row.kind.value) == (DeliveryStatus.DELIVERED, 2, "apprise")


def test_a_chat_target_removed_from_the_settings_is_stopped(engine: Engine, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, None, notify_apprise="json://127.0.0.1:9/chat")
    request_id = a_request(engine)
    ids = emitted(
        engine,
        settings,
        type=REQUEST_HALTED,
        request_id=request_id,
        data={"reason": "failure brake"},
    )
    rt = runtime(engine, settings_for(tmp_path, None), Broker())
    assert deliver(ids[0], rt) == "stopped"


# --- secrets ------------------------------------------------------------------------------


def test_no_secret_is_in_the_outbox_or_the_logs_and_a_urls_password_is_masked(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a signing secret and a URL with a password and a token, to a receiver that fails
    secret = new_secret()
    broker = Broker()
    with Receiver(secret, fail_first=1) as receiver:
        url = f"http://ops:pa55word@127.0.0.1:{receiver.port}/hook?token=t0ken&x=1"
        settings = settings_for(
            tmp_path, secret, notify_apprise=f"json://bot:chatpa55@127.0.0.1:{receiver.port}/c"
        )
        request_id = a_request(engine)
        with caplog.at_level(logging.INFO, logger="bmsreboot"):
            ids = emitted(
                engine,
                settings,
                type=REQUEST_FINISHED,
                request_id=request_id,
                data=finished(request_id),
                notify_url=url,
            )
            broker.send(ids, 0.0)
            broker.run(runtime(engine, settings, broker), ended(engine, ids))
        assert len(receiver.accepted()) == 1
    # Then the secret is nowhere in the outbox, and the chat target's password neither
    columns = [c.key for c in WebhookDelivery.__table__.columns]
    stored = json.dumps([[str(getattr(r, c)) for c in columns] for r in rows(engine)])
    key = secret.removeprefix("whsec_")
    assert key not in stored
    assert "chatpa55" not in stored
    # And the logs name the URL with its password and token masked
    logged = caplog.text
    assert "delivery" in logged
    assert "http://********@127.0.0.1" in logged
    for secret_text in (key, "pa55word", "t0ken", "chatpa55"):
        assert secret_text not in logged


def test_a_secret_that_is_not_whsec_base64_sends_nothing_unsigned(
    engine: Engine, tmp_path: Path
) -> None:
    with Receiver(new_secret()) as receiver:
        settings = settings_for(tmp_path, "whsec_short")
        request_id = a_request(engine)
        ids = emitted(
            engine,
            settings,
            type=REQUEST_FINISHED,
            request_id=request_id,
            data=finished(request_id),
            notify_url=receiver.url(),
        )
        assert deliver(ids[0], runtime(engine, settings, Broker())) == "retry"
        assert receiver.received == []
    assert "BMSREBOOT_WEBHOOK_SECRET is not whsec_" in (rows(engine, ids)[0].last_error or "")


# --- metrics and retention ---------------------------------------------------------------


def test_deliveries_are_counted_by_outcome(engine: Engine, tmp_path: Path) -> None:
    from worker.metrics import Collector

    secret = new_secret()
    settings = settings_for(tmp_path, secret)
    store = DatabaseCounters(engine)
    broker = Broker()
    with Receiver(secret, fail_first=1, answer={"/gone": 410}) as receiver:
        request_id = a_request(engine)
        ids = [
            emitted(
                engine,
                settings,
                type=REQUEST_FINISHED,
                request_id=request_id,
                data=finished(request_id),
                notify_url=receiver.url(path),
            )[0]
            for path in ("/hook", "/gone")
        ]
        broker.send(ids, 0.0)
        broker.run(runtime(engine, settings, broker, metrics=Metrics(store)), ended(engine, ids))
    families = {f.name: f for f in Collector(store, engine).collect()}
    samples = {
        s.labels["outcome"]: s.value
        for s in families["bmsreboot_webhook_deliveries"].samples
        if s.name == "bmsreboot_webhook_deliveries_total"
    }
    assert samples == {"delivered": 1.0, "retry": 1.0, "failed": 0.0, "stopped": 1.0}


def test_deliveries_go_with_their_request_and_ended_ones_by_age(
    engine: Engine, tmp_path: Path
) -> None:
    # Given an old finished request and a running one, each with deliveries
    settings = settings_for(tmp_path, None, webhook_url="http://127.0.0.1:9/hook")
    old, running = a_request(engine), a_request(engine)
    long_ago = utcnow() - dt.timedelta(days=100)
    with unit_of_work(engine) as session:
        session.execute(
            update(RebootRequest)
            .where(RebootRequest.id == old)
            .values(status=RequestStatus.SUCCEEDED, finished_at=long_ago)
        )
    old_ids = emitted(
        engine, settings, type=REQUEST_FINISHED, request_id=old, data={}, now=long_ago
    )
    aged = emitted(engine, settings, type=BATCH_ENDED, request_id=running, data={}, now=long_ago)
    pending = emitted(engine, settings, type=BATCH_ENDED, request_id=running, data={}, now=long_ago)
    fresh = emitted(engine, settings, type=BATCH_ENDED, request_id=running, data={})
    with unit_of_work(engine) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(aged + fresh))
            .values(status=DeliveryStatus.DELIVERED)
        )
    assert len(rows(engine)) == len(old_ids + aged + pending + fresh) == 4
    # When the retention purge runs
    with unit_of_work(engine) as session:
        assert purge_finished(session, older_than_days=90) == 1
    # Then the purged request's deliveries and the old ended ones are gone; a pending one
    # and a recent one stay
    assert {r.id for r in rows(engine)} == set(pending + fresh)
