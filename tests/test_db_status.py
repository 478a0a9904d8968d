"""What operators read: a request's status (the ``status --json`` shape) and a server's history."""

from __future__ import annotations

import json
import uuid

from sqlalchemy.orm import Session

from tests.fixtures.db import new_request, pending_batches, sid
from worker.db.states import BatchStatus, ServerStatus
from worker.db.status import request_status, server_history
from worker.db.transitions import (
    ErrorInfo,
    ServerOutcome,
    record_poll,
    settle_batch,
    transition_batch,
)

B, S = BatchStatus, ServerStatus


def test_request_status_has_the_documented_shape(session: Session) -> None:
    # Given a request with one batch settled, one still pending
    request = new_request(
        session, [sid("a"), sid("b"), sid("c")], batch_size=2, idempotency_key="k"
    )
    first = pending_batches(session, request.id)[0]
    transition_batch(session, first.id, B.SUBMITTING, actor="t")
    transition_batch(session, first.id, B.SUBMITTED, actor="t", job_id="job-1")
    record_poll(session, first.id, next_poll_at=None, error=ErrorInfo("E.1", "slow", 503, "r-1"))
    settle_batch(
        session,
        first.id,
        B.PARTIALLY_FAILED,
        actor="t",
        outcomes={sid("a"): ServerOutcome(S.SUCCEEDED)},
        default_status=S.FAILED,
        default_error_code="BMS.9",
        default_fail_reason="power",
    )
    # When an operator asks for it, servers included
    status = request_status(session, request.id, include_servers=True)
    # Then the shape is exactly what `bmsreboot status --json` prints, and plain JSON
    assert status is not None
    json.dumps(status)
    assert {"request_id", "status", "project_id", "type", "servers", "batches"} <= set(status)
    assert status["request_id"] == str(request.id)
    assert (status["status"], status["project_id"], status["type"]) == (
        "accepted",
        "project-1",
        "HARD",
    )
    assert status["servers"] == {
        "total": 3,
        "succeeded": 1,
        "failed": 1,
        "unknown": 0,
        "pending": 1,
        "cancelled": 0,
        "skipped": 0,
        "verifying": 0,
        "unhealthy": 0,
    }
    first_batch, second_batch = status["batches"]
    assert {k: first_batch[k] for k in ("index", "status", "job_id", "size", "polls")} == {
        "index": 0,
        "status": "partially_failed",
        "job_id": "job-1",
        "size": 2,
        "polls": 1,
    }
    assert first_batch["last_error"] == {
        "code": "E.1",
        "message": "slow",
        "status": 503,
        "request_id": "r-1",
    }
    assert (second_batch["index"], second_batch["status"], second_batch["job_id"]) == (
        1,
        "pending",
        None,
    )
    unverified = {"verified_at": None, "returned_at": None}
    assert status["server_results"] == [
        {
            "id": sid("a"),
            "status": "succeeded",
            "error_code": None,
            "fail_reason": None,
            **unverified,
        },
        {
            "id": sid("b"),
            "status": "failed",
            "error_code": "BMS.9",
            "fail_reason": "power",
            **unverified,
        },
        {
            "id": sid("c"),
            "status": "pending",
            "error_code": None,
            "fail_reason": None,
            **unverified,
        },
    ]
    assert "server_results" not in (request_status(session, request.id) or {})


def test_request_status_of_an_unknown_request_is_none(session: Session) -> None:
    assert request_status(session, uuid.uuid4()) is None


def test_server_history_answers_was_it_rebooted_by_whom_and_did_it_work(session: Session) -> None:
    # Given two requests that both included server "x", the later one failing it
    for source, outcome in (("app:first", S.SUCCEEDED), ("schedule:nightly", S.FAILED)):
        request = new_request(session, [sid("x"), sid("y")], batch_size=2, source=source)
        batch = pending_batches(session, request.id)[0]
        transition_batch(session, batch.id, B.SUBMITTING, actor="t")
        transition_batch(session, batch.id, B.SUBMITTED, actor="t", job_id=f"job-{source}")
        settle_batch(session, batch.id, B.SUCCEEDED, actor="t", default_status=outcome)
    # When an operator asks about "x"
    history = server_history(session, sid("x"))
    # Then both show, newest first, with who asked and the outcome
    assert [(h["source"], h["status"], h["job_id"]) for h in history] == [
        ("schedule:nightly", "failed", "job-schedule:nightly"),
        ("app:first", "succeeded", "job-app:first"),
    ]
    json.dumps(history)
    assert server_history(session, sid("x"), limit=1)[0]["source"] == "schedule:nightly"
    assert server_history(session, "nobody") == []
