"""``bmsreboot webhooks``: the deliveries of the outbox, with their destinations' credentials
masked, as an operator reads them (the CLI in a subprocess, on an upgraded audit database)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.fixtures.db import new_request
from tests.test_cli_errors import bmsreboot, one_line
from worker.db.models import WebhookDelivery
from worker.db.session import make_engine, unit_of_work, upgrade_database
from worker.db.states import DeliveryStatus
from worker.settings import Settings
from worker.webhooks import REQUEST_ACCEPTED, REQUEST_FINISHED, emit

SECRET_URL = "https://ops:pa55word@hooks.example.com/in?token=t0ken&team=sre"


@pytest.fixture
def audit_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade_database(url)
    return url


def deliveries(url: str, tmp_path: Path) -> tuple[str, str, int]:
    """Two requests with a delivery each to a URL with a password and a token; the second
    request's delivery failed. Returns both request ids and the failed delivery's id."""
    engine = make_engine(url)
    settings = Settings(data_dir=tmp_path)
    try:
        with unit_of_work(engine) as session:
            first = new_request(session).id
            second = new_request(session).id
            emit(
                session,
                type=REQUEST_ACCEPTED,
                request_id=first,
                data={},
                notify_url=SECRET_URL,
                settings=settings,
            )
            (failed,) = emit(
                session,
                type=REQUEST_FINISHED,
                request_id=second,
                data={},
                notify_url=SECRET_URL,
                settings=settings,
            )
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == failed)
                .values(
                    status=DeliveryStatus.FAILED,
                    attempts=34,
                    last_status=503,
                    last_error="HTTP 503 Service Unavailable",
                )
            )
        return str(first), str(second), failed
    finally:
        engine.dispose()


def test_webhooks_lists_deliveries_with_a_header_times_with_zones_and_masked_urls(
    tmp_path: Path, audit_db: str
) -> None:
    # Given two deliveries to a URL with a password and a token
    first, second, _ = deliveries(audit_db, tmp_path)
    # When
    run = bmsreboot(tmp_path / "data", "webhooks", BMSREBOOT_DATABASE_URL=audit_db)
    # Then a header row and one line per delivery, newest first
    assert run.returncode == 0, run.stderr
    header, *rows = run.stdout.strip().splitlines()
    assert header.split()[:6] == ["ID", "EVENT", "AT", "TYPE", "REQUEST", "STATUS"]
    assert [row.split()[3] for row in rows] == [second, first]
    assert [row.split()[4] for row in rows] == ["failed", "pending"]
    assert rows[0].endswith("HTTP 503 Service Unavailable")
    for row in rows:
        assert row.split()[1].endswith("+00:00"), row
    # And the destination's credentials are masked
    assert "https://********@hooks.example.com/in?token=********&team=sre" in rows[0]
    assert "pa55word" not in run.stdout
    assert "t0ken" not in run.stdout


def test_webhooks_failed_and_request_filter_and_json(tmp_path: Path, audit_db: str) -> None:
    first, second, failed = deliveries(audit_db, tmp_path)
    data = tmp_path / "data"
    only_failed = bmsreboot(data, "webhooks", "--failed", "--json", BMSREBOOT_DATABASE_URL=audit_db)
    assert only_failed.returncode == 0, only_failed.stderr
    (row,) = json.loads(only_failed.stdout)
    assert (row["id"], row["request_id"], row["status"]) == (failed, second, "failed")
    assert (row["attempts"], row["last_status"]) == (34, 503)
    assert row["destination"] == "https://********@hooks.example.com/in?token=********&team=sre"
    of_first = bmsreboot(
        data, "webhooks", "--request", first, "--json", BMSREBOOT_DATABASE_URL=audit_db
    )
    assert [r["request_id"] for r in json.loads(of_first.stdout)] == [first]
    assert json.loads(of_first.stdout)[0]["type"] == REQUEST_ACCEPTED
    none = bmsreboot(
        data, "webhooks", "--request", str(uuid.uuid4()), BMSREBOOT_DATABASE_URL=audit_db
    )
    assert (none.returncode, none.stdout.strip()) == (0, "no deliveries")


def test_webhooks_errors_are_one_line(tmp_path: Path, audit_db: str) -> None:
    data = tmp_path / "data"
    bad = bmsreboot(data, "webhooks", "--request", "nope", BMSREBOOT_DATABASE_URL=audit_db)
    assert bad.returncode == 2
    assert "not a request id (a UUID): 'nope'" in one_line(bad.stderr)
    limit = bmsreboot(data, "webhooks", "--limit", "0", BMSREBOOT_DATABASE_URL=audit_db)
    assert limit.returncode == 2
    one_line(limit.stderr)
    down = bmsreboot(
        data,
        "webhooks",
        BMSREBOOT_DATABASE_URL="postgresql+psycopg://u:s3cret@127.0.0.1:1/none",
    )
    assert down.returncode == 1
    line = one_line(down.stderr)
    assert "cannot read the audit database" in line
    assert "s3cret" not in line
