"""A worker that cannot do its work says so and loses nothing: it refuses to start on an audit
database it cannot use, and a request intake fails on in a way nobody foresaw is a dead letter,
never an acknowledged message and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import select

from tests.fixtures.fleet import ROOT, Fleet
from tests.fixtures.pipeline import new_ids, worker_env
from tests.fixtures.services import create_pg_database, drop_pg_database, require_postgres
from worker.db.models import DeadLetter
from worker.db.session import unit_of_work
from worker.names import INTAKE_QUEUE
from worker.simulator.config import DEFAULT_PROJECT_ID

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


def test_a_worker_on_an_audit_database_never_migrated_exits_before_consuming(
    tmp_path: Path, redis_url: str
) -> None:
    # Given an empty PostgreSQL database (no `bmsreboot db upgrade`) and a request waiting
    require_postgres()
    database_url = create_pg_database()
    try:
        from worker.celery import make_celery_app
        from worker.pipeline.producer import send_payload
        from worker.settings import Settings

        app = make_celery_app(Settings(data_dir=tmp_path, broker_url=redis_url))
        send_payload(
            app,
            {
                "request_id": str(uuid.uuid4()),
                "project_id": DEFAULT_PROJECT_ID,
                "server_ids": new_ids(2),
            },
        )
        app.close()
        env = worker_env(tmp_path / "data", "http://127.0.0.1:9", redis_url, database_url)
        # When a worker starts on it
        run = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        drop_pg_database(database_url)
    # Then it exits non-zero with the one line that says what to do, and the request is
    # still on its queue for the worker that will run once the database is upgraded
    assert run.returncode != 0
    line = (
        "bmsreboot: the worker did not start: the audit database is not at the schema head: "
        "run `bmsreboot db upgrade`"
    )
    assert line in run.stderr.splitlines()
    assert " ready." not in run.stderr
    with redis.Redis.from_url(redis_url) as client:
        assert client.llen(INTAKE_QUEUE) == 1


def test_an_unforeseen_error_in_intake_leaves_a_dead_letter_with_the_message(
    fleet: Fleet,
) -> None:
    # Given a running worker whose audit database loses its requests table under it (an
    # operator's mistake): intake then fails with an error no code of ours expects
    fleet.start_worker(concurrency=1)
    name = fleet.database_url.rsplit("/", 1)[1]
    with psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname=name, autocommit=True
    ) as conn:
        conn.execute("ALTER TABLE reboot_requests RENAME TO reboot_requests_moved")
    # When a request arrives
    request_id = fleet.send(new_ids(3), batch_size=10)

    # Then the message and the reason are a dead letter: nothing vanished
    def dead_letter() -> DeadLetter | None:
        with unit_of_work(fleet.engine) as session:
            return session.scalars(
                select(DeadLetter).where(DeadLetter.task == "bmsreboot.request_reboot")
            ).first()

    letter = fleet.wait_until(dead_letter, "a dead letter of the intake")
    assert letter.queue == INTAKE_QUEUE
    assert "reboot_requests" in letter.error
    message = json.loads(letter.raw)
    assert message["kwargs"]["request_id"] == request_id
    # And the worker goes on: with the table back, a request runs to its end
    with psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname=name, autocommit=True
    ) as conn:
        conn.execute("ALTER TABLE reboot_requests_moved RENAME TO reboot_requests")
    again = fleet.send(new_ids(3), batch_size=10)
    assert fleet.wait(again, timeout=60)["status"] == "succeeded"
