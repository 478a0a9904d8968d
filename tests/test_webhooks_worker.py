"""Deliveries by real worker processes on Redis and PostgreSQL: ``bmsreboot.deliver_webhook``
on the ``bmsreboot.webhooks`` queue, to receivers over HTTP, through a worker that retries,
dies (SIGKILL) and loses messages.

The pipeline's own calls (``emit`` where a state changes, ``send_deliveries`` after its
commit, ``redeliver_lost`` from the reconciler) are made here by the test, as the pipeline
makes them.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, select

from tests.fixtures.db import new_request
from tests.fixtures.pipeline import worker_env
from tests.fixtures.receiver import Receiver, new_secret
from tests.fixtures.services import (
    claim_redis_db,
    create_pg_database,
    drop_pg_database,
    require_postgres,
)
from worker.cli.localworker import kill_worker, start_worker, stop_worker
from worker.db.models import WebhookDelivery, utcnow
from worker.db.session import make_engine, unit_of_work, upgrade_database
from worker.db.states import DeliveryStatus
from worker.settings import Settings
from worker.webhooks import (
    REQUEST_ACCEPTED,
    REQUEST_FINISHED,
    REQUEST_HALTED,
    emit,
    redeliver_lost,
    send_deliveries,
)

pytestmark = pytest.mark.slow

#: The worker's clocks: retries within a second, a claim that runs out in 4 s.
HOOK_ENV = {
    "BMSREBOOT_WEBHOOK_RETRY_BASE": "0.2",
    "BMSREBOOT_WEBHOOK_RETRY_MAX": "1",
    "BMSREBOOT_WEBHOOK_TIMEOUT": "2",
    "BMSREBOOT_CONNECT_TIMEOUT": "1",
    "BMSREBOOT_SUBMIT_STALE_MARGIN": "1",
}
GRACE = 1.0


@dataclass
class Hooks:
    tmp: Path
    env: dict[str, str]
    settings: Settings
    app: Celery
    engine: Engine
    secret: str
    chat: Receiver
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.tmp / "worker.log"

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = start_worker(
            self.env, self.log, f"hooks-{uuid.uuid4().hex[:6]}", beat=False, cwd=ROOT
        )
        self.workers.append(proc)
        return proc

    def emit(self, type: str, notify_url: str | None, *, send: bool = True) -> list[int]:
        """A request and one event of it, committed; its messages sent after the commit
        (``send=False``: the worker that committed it died before sending them)."""
        with unit_of_work(self.engine) as session:
            request_id = new_request(session).id
            ids = emit(
                session,
                type=type,
                request_id=request_id,
                data={"status": "failed", "reason": "failure brake tripped", "source": "t"},
                notify_url=notify_url,
                settings=self.settings,
            )
        if send:
            assert send_deliveries(self.app, ids)
        return ids

    def rows(self, ids: list[int]) -> list[WebhookDelivery]:
        with unit_of_work(self.engine) as session:
            query = select(WebhookDelivery).where(WebhookDelivery.id.in_(ids))
            return list(session.scalars(query.order_by(WebhookDelivery.id)))

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.1)
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{what}: not within {timeout} s\n{tail}")

    def delivered(self, ids: list[int]) -> None:
        self.wait(
            f"deliveries {ids} delivered",
            lambda: all(r.status == DeliveryStatus.DELIVERED for r in self.rows(ids)),
        )


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooks]:
    from worker.celery import make_celery_app

    require_postgres()
    tmp = tmp_path_factory.mktemp("hooks")
    secret = new_secret()
    with contextlib.ExitStack() as stack, claim_redis_db() as broker_url:
        database_url = create_pg_database()
        stack.callback(drop_pg_database, database_url)
        upgrade_database(database_url)
        chat = stack.enter_context(Receiver(secret))
        apprise = f"json://127.0.0.1:{chat.port}/chat"
        env = worker_env(tmp / "data", "http://127.0.0.1:9", broker_url, database_url)
        env.update(HOOK_ENV)
        env["BMSREBOOT_WEBHOOK_SECRET"] = secret
        env["BMSREBOOT_NOTIFY_APPRISE"] = apprise
        settings = Settings(
            data_dir=tmp / "data",
            broker_url=broker_url,
            database_url=database_url,
            notify_apprise=apprise,
        )
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        app = make_celery_app(settings)
        stack.callback(app.close)
        hooks = Hooks(tmp, env, settings, app, engine, secret, chat)
        try:
            yield hooks
        finally:
            for proc in hooks.workers:
                stop_worker(proc, timeout=10)


@pytest.fixture
def worker(hooks: Hooks) -> Iterator[subprocess.Popen[bytes]]:
    proc = hooks.start_worker()
    try:
        yield proc
    finally:
        stop_worker(proc, timeout=10)


def test_a_worker_delivers_signed_events_to_a_receiver_that_fails_twice(
    hooks: Hooks, worker: subprocess.Popen[bytes]
) -> None:
    # Given a receiver that verifies every delivery and answers 500 to two attempts of each,
    # at a URL with a password
    with Receiver(hooks.secret, fail_first=2) as receiver:
        url = f"http://ops:pa55word@127.0.0.1:{receiver.port}/hook"
        # When three events are emitted and their messages sent
        ids = [
            hooks.emit(t, url)[0] for t in (REQUEST_ACCEPTED, REQUEST_ACCEPTED, REQUEST_ACCEPTED)
        ]
        # Then the worker delivers each, every attempt signed
        hooks.delivered(ids)
        assert len(receiver.webhooks()) == 9
        assert all(r.error is None for r in receiver.webhooks())
        assert sorted(e["id"] for e in receiver.accepted()) == sorted(
            str(r.event_id) for r in hooks.rows(ids)
        )
    # And the worker's log names the URL without its password, and never the secret
    log = hooks.log.read_text(errors="replace")
    assert "http://********@127.0.0.1" in log
    assert "pa55word" not in log
    assert hooks.secret.removeprefix("whsec_") not in log


def test_a_receiver_that_is_down_for_a_while_gets_the_events_when_it_returns(
    hooks: Hooks, worker: subprocess.Popen[bytes]
) -> None:
    # Given a receiver that is down (its port refuses connections)
    receiver = Receiver(hooks.secret)
    ids = hooks.emit(REQUEST_FINISHED, receiver.url())
    # When the worker has tried in vain three times
    hooks.wait("three attempts", lambda: hooks.rows(ids)[0].attempts >= 3)
    assert hooks.rows(ids)[0].status == DeliveryStatus.PENDING
    # And the receiver comes back
    with receiver:
        # Then its retries deliver the event
        hooks.delivered(ids)
        assert [e["id"] for e in receiver.accepted()] == [str(hooks.rows(ids)[0].event_id)]


def test_chat_messages_are_sent_by_the_worker_through_apprise(
    hooks: Hooks, worker: subprocess.Popen[bytes]
) -> None:
    # Given a chat target (an Apprise json:// URL) in the worker's settings
    # When a request is halted
    ids = hooks.emit(REQUEST_HALTED, None)
    # Then the worker sends its one line there
    hooks.delivered(ids)
    request_id = hooks.rows(ids)[0].request_id
    assert f"bmsreboot: request {request_id} halted: failure brake tripped (source t)" in [
        c["message"] for c in hooks.chat.chats()
    ]


def test_events_committed_by_a_worker_that_died_before_sending_them_are_re_driven(
    hooks: Hooks, worker: subprocess.Popen[bytes]
) -> None:
    # Given events committed whose messages were never sent (the worker that committed them
    # died between its commit and its send, or the broker lost them)
    with Receiver(hooks.secret) as receiver:
        ids = [hooks.emit(REQUEST_ACCEPTED, receiver.url(), send=False)[0] for _ in range(3)]
        # When the reconciler, run after run, re-drives what is overdue by its grace
        found: set[int] = set()

        def reconcile() -> bool:
            lost = redeliver_lost(hooks.engine, utcnow(), 100, grace=GRACE)
            assert send_deliveries(hooks.app, lost)
            found.update(lost)
            return found >= set(ids)

        hooks.wait("the events found lost", reconcile)
        # Then it found exactly those, and the worker delivers every one
        assert found == set(ids)
        hooks.delivered(ids)
        assert len(receiver.accepted()) == 3


def test_kill_9_of_the_worker_in_the_middle_of_a_delivery_loses_no_event(hooks: Hooks) -> None:
    # Given a worker delivering to a receiver that holds the request open
    with Receiver(hooks.secret, hold=True) as receiver:
        first = hooks.start_worker()
        ids = hooks.emit(REQUEST_ACCEPTED, receiver.url())
        assert receiver.arrived.wait(30), "the worker never POSTed"
        # When the worker is killed with SIGKILL mid-POST (its message dies with it: acks
        # late, it is back only after the visibility timeout)
        kill_worker(first)
        receiver.hold = False
        receiver.release.set()
        (row,) = hooks.rows(ids)
        assert (row.status, row.attempts) == (DeliveryStatus.PENDING, 1)
        # Then, once its claim has run out, the reconciler re-drives it to another worker
        second = hooks.start_worker()
        try:
            lost = hooks.wait(
                "the delivery found lost",
                lambda: redeliver_lost(hooks.engine, utcnow(), 100, grace=GRACE),
            )
            assert lost == ids
            assert send_deliveries(hooks.app, lost)
            hooks.delivered(ids)
        finally:
            stop_worker(second, timeout=10)
        # And the receiver got the event (at least once: the held attempt too)
        assert [e["id"] for e in receiver.accepted()][-1] == str(hooks.rows(ids)[0].event_id)
