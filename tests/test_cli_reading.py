"""The read commands on an audit database, without a worker: ``list``'s columns and times, and
a request's events (who cancelled or decided what, and why) from ``history REQUEST_ID`` and
``status --events``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.db import new_request
from tests.test_cli_errors import bmsreboot
from worker.db.session import make_engine, unit_of_work, upgrade_database


@pytest.fixture
def audit_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade_database(url)
    return url


def recorded(url: str, servers: int = 3, **fields: Any) -> str:
    """An accepted request in the audit database (as intake records one); its id."""
    engine = make_engine(url)
    try:
        with unit_of_work(engine) as session:
            return str(new_request(session, servers, **fields).id)
    finally:
        engine.dispose()


def test_list_has_a_header_row_and_times_with_their_zone(tmp_path: Path, audit_db: str) -> None:
    # Given two requests
    first = recorded(audit_db, 3, source="app:first")
    second = recorded(audit_db, 2, source="app:second")
    # When
    run = bmsreboot(tmp_path / "data", "list", BMSREBOOT_DATABASE_URL=audit_db)
    # Then
    assert run.returncode == 0, run.stderr
    header, *rows = run.stdout.strip().splitlines()
    assert header.split() == ["REQUEST", "STATUS", "CREATED", "SOURCE", "SERVERS"]
    assert {row.split()[0] for row in rows} == {first, second}
    for row in rows:
        created = row.split()[2]
        assert created.endswith("+00:00"), row
        assert len(created) == len("2026-11-28T03:00:00+00:00"), row


def test_history_of_a_request_shows_who_cancelled_it_and_why(tmp_path: Path, audit_db: str) -> None:
    # Given a request an operator cancelled
    data = tmp_path / "data"
    request_id = recorded(audit_db, 3, batch_size=2)
    cancel = bmsreboot(
        data,
        "cancel",
        request_id,
        "--reason",
        "maintenance moved to Sunday",
        "--actor",
        "ops:alice",
        BMSREBOOT_DATABASE_URL=audit_db,
    )
    assert cancel.returncode == 0, cancel.stderr
    # When
    run = bmsreboot(data, "history", request_id, "--json", BMSREBOOT_DATABASE_URL=audit_db)
    # Then: the request's and its batches' events, newest first, with who and why
    assert run.returncode == 0, run.stderr
    events = json.loads(run.stdout)
    assert events[0]["entity"] == "request"
    assert events[0]["to_state"] == "cancelled"
    assert {e["entity"] for e in events} == {"request", "batch"}
    stop = next(e for e in events if (e["detail"] or {}).get("stop") == "cancelled")
    assert stop["actor"] == "ops:alice"
    assert stop["detail"]["reason"] == "cancelled by ops:alice: maintenance moved to Sunday"
    batches = [e for e in events if e["entity"] == "batch"]
    assert sorted(e["batch_index"] for e in batches) == [0, 1]
    assert {(e["from_state"], e["to_state"], e["actor"]) for e in batches} == {
        ("pending", "cancelled", "ops:alice")
    }
    # And the text says the same, with times in UTC
    text = bmsreboot(data, "history", request_id, BMSREBOOT_DATABASE_URL=audit_db)
    assert text.returncode == 0, text.stderr
    line = next(line for line in text.stdout.splitlines() if "stop=cancelled" in line)
    assert "by ops:alice" in line
    assert "reason=cancelled by ops:alice: maintenance moved to Sunday" in line
    assert "+00:00" in line
    # And --servers adds each server's events
    servers = bmsreboot(
        data, "history", request_id, "--servers", "--json", BMSREBOOT_DATABASE_URL=audit_db
    )
    cancelled = [e for e in json.loads(servers.stdout) if e["entity"] == "server"]
    assert len(cancelled) == 3
    assert {e["to_state"] for e in cancelled} == {"cancelled"}


def test_status_events_show_the_requests_events_with_its_status(
    tmp_path: Path, audit_db: str
) -> None:
    # Given a cancelled request
    data = tmp_path / "data"
    request_id = recorded(audit_db, 2)
    env = {"BMSREBOOT_DATABASE_URL": audit_db}
    assert bmsreboot(data, "cancel", request_id, "--actor", "ops:bob", **env).returncode == 0
    # When
    run = bmsreboot(data, "status", request_id, "--events", "--json", **env)
    # Then
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["status"] == "cancelled"
    assert status["events"][0]["to_state"] == "cancelled"
    assert {e["actor"] for e in status["events"]} >= {"ops:bob"}
    text = bmsreboot(data, "status", request_id, "--events", **env)
    assert "events, newest first" in text.stdout
    assert "by ops:bob" in text.stdout
    # And without --events there are none
    plain = json.loads(bmsreboot(data, "status", request_id, "--json", **env).stdout)
    assert "events" not in plain


def test_history_of_an_id_that_is_neither_a_request_nor_a_server_says_so(
    tmp_path: Path, audit_db: str
) -> None:
    unknown = str(uuid.uuid4())
    run = bmsreboot(tmp_path / "data", "history", unknown, BMSREBOOT_DATABASE_URL=audit_db)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (
        f"no request {unknown} and no reboot of server {unknown} in the audit database"
    )
