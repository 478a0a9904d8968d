"""The pipeline announces its moments: each event written once to the outbox, in the
transaction of its state change, with its data, and its deliveries sent after that commit
(the pipeline's steps against the simulator over HTTP, deliveries recorded, not sent;
``test_webhooks_pipeline`` runs a request through a real worker to a receiver)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import PROJECT, accept, clock_of, ids, run_to_end, sent
from worker.db.models import Batch, WebhookDelivery
from worker.db.session import unit_of_work
from worker.db.status import request_status
from worker.pipeline import intake, poll, reconcile
from worker.pipeline.ending import request_changed
from worker.pipeline.inventory import forget_snapshots
from worker.pipeline.runtime import RecordingDispatcher, Runtime
from worker.pipeline.validation import validate_request
from worker.schedules import load_entries
from worker.simulator.inventory import server_id
from worker.webhooks import (
    BATCH_ENDED,
    REQUEST_ACCEPTED,
    REQUEST_FINISHED,
    REQUEST_HALTED,
    REQUEST_REJECTED,
    SERVER_UNHEALTHY,
)

#: A request's own receiver (never contacted here: deliveries stay recorded).
HOOK = "https://ops:pa55word@hooks.example.com/bmsreboot?token=t0ken"
MASKED = "https://********@hooks.example.com/bmsreboot?token=********"
#: The deployment's default receiver.
DEFAULT = "https://default.example.com/hook"


def events(rt: Runtime, request_id: uuid.UUID, url: str = HOOK) -> list[WebhookDelivery]:
    """The request's outbox rows to ``url``, in the order they are delivered."""
    with unit_of_work(rt.engine) as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.request_id == request_id, WebhookDelivery.url == url)
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
        )


def types(rows: list[WebhookDelivery]) -> list[str]:
    return [row.type.removeprefix("bmsreboot.") for row in rows]


def sent_ids(rt: Runtime) -> list[int]:
    return [i for batch in sent(rt, "webhooks") for i in batch]


def status(rt: Runtime, request_id: uuid.UUID) -> dict[str, Any]:
    with unit_of_work(rt.engine) as session:
        found = request_status(session, request_id)
    assert found is not None
    return found


def test_an_accepted_request_announces_accepted_once_with_its_status(
    make_rt: Callable[..., Runtime],
) -> None:
    # Given a runtime with no default receiver
    rt = make_rt()
    payload = {"request_id": str(uuid.uuid4()), "project_id": PROJECT, "server_ids": ids(3)}
    # When a request with a notify_url is accepted, and the same message comes again
    first = intake.accept_request({**payload, "notify_url": HOOK}, rt)
    again = intake.accept_request({**payload, "notify_url": HOOK}, rt)
    # Then one request.accepted went to its URL, sent after the commit, its data the status
    assert (first.created, again.created) == (True, False)
    (row,) = events(rt, first.request_id)
    assert row.type == REQUEST_ACCEPTED
    assert sent_ids(rt) == [row.id]
    data = row.document["data"]
    assert data["request_id"] == str(first.request_id)
    assert data["status"] == "accepted"
    assert data["servers"]["total"] == 3
    # And the status shows the URL with its credentials masked, there and in `status`
    assert data["notify_url"] == MASKED == status(rt, first.request_id)["notify_url"]
    assert row.document["subject"] == str(first.request_id)


def test_a_request_without_any_receiver_writes_nothing_to_the_outbox(
    make_rt: Callable[..., Runtime],
) -> None:
    rt = make_rt()
    request_id = accept(rt, ids(2))
    run_to_end(rt, request_id)
    with unit_of_work(rt.engine) as session:
        assert session.scalars(select(WebhookDelivery)).all() == []
    assert sent(rt, "webhooks") == []


def test_a_rejected_request_announces_rejected_to_its_notify_url(
    make_rt: Callable[..., Runtime],
) -> None:
    # Given a request with a bad server id and a good notify_url
    rt = make_rt()
    result = intake.accept_request(
        {
            "request_id": str(uuid.uuid4()),
            "project_id": PROJECT,
            "server_ids": ["not-a-uuid"],
            "notify_url": HOOK,
        },
        rt,
    )
    # Then it is rejected and its notify_url hears why
    assert result.status == "rejected"
    (row,) = events(rt, result.request_id)
    assert row.type == REQUEST_REJECTED
    assert row.document["data"]["rejection_reasons"] == result.reasons
    assert sent_ids(rt) == [row.id]


def test_a_reused_id_with_another_payload_announces_one_rejection(
    make_rt: Callable[..., Runtime],
) -> None:
    # Given a recorded request
    rt = make_rt()
    request_id = str(uuid.uuid4())
    intake.accept_request(
        {"request_id": request_id, "project_id": PROJECT, "server_ids": ids(2)}, rt
    )
    # When its id comes twice with other servers
    other = {"request_id": request_id, "project_id": PROJECT, "server_ids": ids(2)}
    first = intake.accept_request({**other, "notify_url": HOOK}, rt)
    second = intake.accept_request({**other, "notify_url": HOOK}, rt)
    # Then the refusal is announced once, under the refusal's id
    assert first.request_id == second.request_id != uuid.UUID(request_id)
    rows = events(rt, first.request_id)
    assert types(rows) == ["request.rejected"]
    assert "is already recorded" in rows[0].document["data"]["rejection_reasons"][0]


def test_a_request_announces_each_batch_end_and_its_finish_once_to_each_receiver(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a default receiver and a request with its own, in two batches
    simulator.configure(job_duration=0.2)
    rt = make_rt(webhook_url=DEFAULT)
    request_id = accept(rt, ids(4), batch_size=2, notify_url=HOOK)
    # When it runs to its end, and the reconciler and a duplicate poll come after
    final = run_to_end(rt, request_id)
    request_changed_again(rt, request_id)
    with unit_of_work(rt.engine) as session:
        batch_ids = list(session.scalars(select(Batch.id).where(Batch.request_id == request_id)))
    for batch_id in batch_ids:
        poll.poll_batch(batch_id, rt)
    # Then each receiver got accepted, one batch.ended per batch, finished: once each
    for url in (HOOK, DEFAULT):
        rows = events(rt, request_id, url)
        assert types(rows) == ["request.accepted", "batch.ended", "batch.ended", "request.finished"]
    rows = events(rt, request_id)
    ended = [r.document["data"] for r in rows if r.type == BATCH_ENDED]
    assert [(d["index"], d["status"]) for d in ended] == [(0, "succeeded"), (1, "succeeded")]
    assert [d["servers"] for d in ended] == [{"total": 2, "succeeded": 2}] * 2
    assert all(d["job_id"] and d["request_id"] == str(request_id) for d in ended)
    # And request.finished carries the final status dict
    finished = rows[-1].document["data"]
    assert finished["status"] == "succeeded" == final["status"]
    assert finished["servers"] == final["servers"]
    assert finished == status(rt, request_id)
    # And every row was sent after its commit, each once
    assert sorted(sent_ids(rt)) == sorted(
        r.id for u in (HOOK, DEFAULT) for r in events(rt, request_id, u)
    )


def request_changed_again(rt: Runtime, request_id: uuid.UUID) -> None:
    """What the reconciler does for a request it finds not finalized."""
    with unit_of_work(rt.engine) as session:
        request_changed(session, request_id, rt)


def test_a_halted_request_announces_halted_once_then_finished_also_to_chat(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a chat target, and a request whose first batch has a failing server
    servers = ids(6)
    simulator.configure(job_duration=0.2, fail_servers=[servers[0]])
    rt = make_rt(notify_apprise="json://127.0.0.1:9/chat")
    request_id = accept(
        rt, servers, batch_size=2, max_in_flight=1, failure_threshold=10, notify_url=HOOK
    )
    # When it runs: the failure brake trips after batch 0
    final = run_to_end(rt, request_id)
    request_changed_again(rt, request_id)
    assert final["status"] == "halted"
    # Then its receiver hears halted once, with the reason, before finished
    rows = events(rt, request_id)
    assert types(rows) == ["request.accepted", "batch.ended", "request.halted", "request.finished"]
    halted = rows[2].document["data"]
    assert halted["reason"].startswith("failure brake: 1 of 6 servers failed")
    assert rows[3].document["data"]["status"] == "halted"
    # And the chat target gets the chat types only: halted and finished
    with unit_of_work(rt.engine) as session:
        chat = session.scalars(
            select(WebhookDelivery.type)
            .where(WebhookDelivery.request_id == request_id, WebhookDelivery.kind == "apprise")
            .order_by(WebhookDelivery.id)
        ).all()
    assert list(chat) == [REQUEST_HALTED, REQUEST_FINISHED]


def test_a_cut_off_announces_halted(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a request with a window, nothing of it sent yet
    simulator.configure(job_duration=0.2)
    rt = make_rt()
    request_id = intake.accept_request(
        {
            "request_id": str(uuid.uuid4()),
            "project_id": PROJECT,
            "server_ids": ids(2),
            "not_after": "1h",
            "notify_url": HOOK,
        },
        rt,
    ).request_id
    # When its window has passed and the reconciler runs (twice)
    clock_of(rt).advance(3601)
    reconcile.reconcile(rt)
    clock_of(rt).advance(rt.settings.reconcile_interval)
    reconcile.reconcile(rt)
    # Then it is halted, announced once, and finished
    rows = events(rt, request_id)
    assert types(rows) == ["request.accepted", "request.halted", "request.finished"]
    assert rows[1].document["data"]["reason"].startswith("cut off at ")


def test_each_server_that_does_not_come_back_is_announced_unhealthy_once(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given servers of which two never come back after their reboot
    forget_snapshots()
    servers = [server_id(PROJECT, i) for i in range(1, 7)]
    lost = servers[1:3]
    simulator.configure(servers=6, job_duration=0.2, boot_seconds=0.3, no_return_servers=lost)
    rt = make_rt(verify=True, verify_first_delay=0.2, verify_max_interval=0.3, health_timeout=20.0)
    request_id = accept(rt, servers, notify_url=HOOK)
    # When the request runs to its end
    final = run_to_end(rt, request_id)
    assert final["servers"]["unhealthy"] == 2
    # Then each lost server was announced once, with why, before its batch's end
    rows = events(rt, request_id)
    assert types(rows) == [
        "request.accepted",
        "server.unhealthy",
        "server.unhealthy",
        "batch.ended",
        "request.finished",
    ]
    unhealthy = [r.document["data"] for r in rows if r.type == SERVER_UNHEALTHY]
    assert sorted(d["server_id"] for d in unhealthy) == sorted(lost)
    assert {d["reason"] for d in unhealthy} == {"status ERROR after its reboot"}
    assert rows[3].document["data"]["servers"] == {"total": 6, "succeeded": 4, "unhealthy": 2}


def test_the_reconciler_re_drives_deliveries_whose_message_was_lost(
    make_rt: Callable[..., Runtime],
) -> None:
    # Given an announced event whose delivery message was lost
    rt = make_rt()
    request_id = accept(rt, ids(2), notify_url=HOOK)
    (row,) = events(rt, request_id)
    assert sent_ids(rt) == [row.id]
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.sent[:] = [e for e in rt.dispatcher.sent if e[0] != "webhooks"]
    # When the reconciler runs once it is overdue by the grace
    clock_of(rt).advance(rt.settings.reconcile_grace + 1)
    done = reconcile.reconcile(rt)
    # Then it sends the delivery again, through the dispatcher
    assert done["webhooks"] == 1
    assert sent_ids(rt) == [row.id]


# --- notify_url as a field ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "ftp://ops:pa55word@files.example.com/x",
            "notify_url must be an http(s) URL of at most 2000 characters (no spaces or control "
            "characters), got 'ftp://********@files.example.com/x'",
        ),
        (
            "https://hooks.example.com/a b?token=s3cret",
            "notify_url must be an http(s) URL of at most 2000 characters (no spaces or control "
            "characters), got 'https://hooks.example.com/a b?token=********'",
        ),
        (
            "https://" + "a" * 2000,
            "notify_url must be an http(s) URL of at most 2000 characters, got 2008 characters",
        ),
        (
            "https://:pa55word@/hook",
            "notify_url must be an http(s) URL of at most 2000 characters with a host, got "
            "'https://********@/hook'",
        ),
        (42, "notify_url must be an http(s) URL of at most 2000 characters, got int"),
    ],
)
def test_a_bad_notify_url_is_refused_with_its_credentials_masked(value: Any, reason: str) -> None:
    checked = validate_request(
        {
            "request_id": str(uuid.uuid4()),
            "project_id": PROJECT,
            "server_ids": ids(1),
            "notify_url": value,
        },
        max_servers=10,
    )
    assert checked.reasons == [reason]
    assert "pa55word" not in reason
    assert "s3cret" not in reason
    assert checked.notify_url is None


def test_a_good_notify_url_is_kept_as_given() -> None:
    checked = validate_request(
        {
            "request_id": str(uuid.uuid4()),
            "project_id": PROJECT,
            "server_ids": ids(1),
            "notify_url": HOOK,
        },
        max_servers=10,
    )
    assert checked.valid
    assert checked.notify_url == HOOK
    assert "notify_url" not in checked.fingerprint


def test_a_schedule_entry_sends_its_notify_url_and_a_bad_one_is_a_masked_problem(
    tmp_path: Path,
) -> None:
    schedule = tmp_path / "schedules.toml"
    entry = (
        "[[schedule]]\n"
        'name = "{name}"\n'
        'cron = "0 3 * * *"\n'
        f'project_id = "{PROJECT}"\n'
        f'servers = ["{ids(1)[0]}"]\n'
        'notify_url = "{url}"\n'
    )
    schedule.write_text(
        entry.format(name="good", url=HOOK) + entry.format(name="bad", url="gopher://u:pa55word@x")
    )
    entries, problems = load_entries(schedule)
    assert [e.name for e in entries] == ["good"]
    assert entries[0].payload(dt.datetime(2026, 12, 1, 3, tzinfo=dt.UTC))["notify_url"] == HOOK
    assert problems == [
        "schedule 'bad': notify_url must be an http(s) URL of at most 2000 characters (no "
        "spaces or control characters), got 'gopher://********@x'"
    ]
