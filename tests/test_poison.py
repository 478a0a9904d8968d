"""The corpus: every malformed input, sent as a real task message or written raw into the
broker, through a real worker on Redis and on the embedded broker. Each ends as a ``rejected``
row with its reason or as a dead letter; nothing reaches the API; a valid request sent right
after each is processed, so the worker is still consuming at the end."""

from __future__ import annotations

import base64
import json
import pickle
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.fixtures.pipeline import PROJECT, Pipeline, new_ids
from tests.fixtures.waiting import wait_for
from worker.db.models import DeadLetter
from worker.db.session import unit_of_work
from worker.names import INTAKE_QUEUE

pytestmark = pytest.mark.slow

TASK = "bmsreboot.request_reboot"


@pytest.fixture(params=["redis", "embedded"])
def pipe(request: pytest.FixtureRequest) -> Pipeline:
    name = "pipeline_redis_pg" if request.param == "redis" else "pipeline_embedded"
    pipeline: Pipeline = request.getfixturevalue(name)
    pipeline.configure()
    return pipeline


# --- raw broker entries -----------------------------------------------------------------------


def _headers(task: str | None = TASK) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "test@poison",
        "ignore_result": True,
    }
    if task is not None:
        headers["task"] = task
    return headers


def _envelope(
    body: bytes | str,
    *,
    headers: dict[str, Any] | None = None,
    content_type: str = "application/json",
) -> str:
    encoded = body if isinstance(body, str) else base64.b64encode(body).decode()
    return json.dumps(
        {
            "body": encoded,
            "content-encoding": "utf-8" if content_type == "application/json" else "binary",
            "content-type": content_type,
            "headers": headers if headers is not None else _headers(),
            "properties": {
                "correlation_id": str(uuid.uuid4()),
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": INTAKE_QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
A_REQUEST = {"project_id": PROJECT, "server_ids": ["616fb98f-46ca-475e-917e-2563e5a8cd19"]}

RAW: dict[str, Callable[[], str]] = {
    "a JSON object body instead of [args, kwargs, embed]": lambda: _envelope(
        json.dumps(A_REQUEST).encode()
    ),
    "a body that is not valid base64": lambda: _envelope("!!! not base64 ***"),
    "an entry that is not JSON": lambda: "garbage{{{",
    "an entry that is a JSON list": lambda: "[1,2,3]",
    "a pickle body": lambda: _envelope(
        pickle.dumps(((), A_REQUEST, EMBED)), content_type="application/x-python-serialize"
    ),
    "no task header": lambda: _envelope(
        json.dumps([[], A_REQUEST, EMBED]).encode(), headers=_headers(task=None)
    ),
    "keyword arguments that are not a mapping": lambda: _envelope(
        json.dumps([[], [1, 2], EMBED]).encode()
    ),
    "an unknown task": lambda: _envelope(
        json.dumps([[], A_REQUEST, EMBED]).encode(), headers=_headers(task="nobody.serves_this")
    ),
    "an embed that is not a dict": lambda: _envelope(json.dumps([[], A_REQUEST, [1]]).encode()),
}


def _push_raw(pipe: Pipeline, entry: str) -> None:
    if pipe.settings.broker_url:
        import redis

        redis.Redis.from_url(pipe.settings.broker_url).lpush(INTAKE_QUEUE, entry)
        return
    database = pipe.settings.data_dir / "broker.db"
    with sqlite3.connect(database, timeout=30) as conn:
        (queue_id,) = conn.execute(
            "SELECT id FROM kombu_queue WHERE name = ?", (INTAKE_QUEUE,)
        ).fetchone()
        conn.execute(
            "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id)"
            " VALUES (1, ?, ?, 1, ?)",
            (datetime.now(UTC).replace(tzinfo=None), entry, queue_id),
        )


def _dead_letters(pipe: Pipeline) -> int:
    with unit_of_work(pipe.engine) as session:
        return int(session.scalar(select(func.count()).select_from(DeadLetter)) or 0)


def _wait_dead_letter(pipe: Pipeline, before: int, case: str) -> None:
    """Wait until the dead letters are no longer the ``before`` recorded."""

    def more() -> bool:
        pipe.check_alive()
        return _dead_letters(pipe) != before

    wait_for(more, f"a dead letter for {case}", details=pipe.log_tail)


def _still_consuming(pipe: Pipeline) -> None:
    """A valid request sent now is processed to its end."""
    servers = new_ids(2)
    status = pipe.wait(pipe.send(server_ids=servers), timeout=60)
    assert status["status"] == "succeeded"
    pipe.check_alive()


@pytest.mark.parametrize("case", sorted(RAW))
def test_a_malformed_broker_entry_becomes_a_dead_letter_and_the_worker_goes_on(
    pipe: Pipeline, case: str
) -> None:
    before = _dead_letters(pipe)
    entry = RAW[case]()
    _push_raw(pipe, entry)
    _wait_dead_letter(pipe, before, case)
    with unit_of_work(pipe.engine) as session:
        letter = session.scalars(select(DeadLetter).order_by(DeadLetter.id.desc())).first()
        assert letter is not None
        assert letter.error
        assert letter.size > 0
        assert letter.queue == INTAKE_QUEUE
        raw = letter.raw
    if case in ("an entry that is not JSON", "an entry that is a JSON list"):
        assert raw == entry.encode()  # kept byte for byte
    _still_consuming(pipe)
    # Logged once (by the time a later request has run to its end)
    assert pipe.log_count(f"dead letter {letter.id} ") == 1
    # Nothing of it reached the API: only the valid request's two servers were rebooted
    assert sum(pipe.stats()["reboots"].values()) == 2


# --- task messages a producer can send --------------------------------------------------------

GOOD = ["616fb98f-46ca-475e-917e-2563e5a8cd19", "726fb98f-46ca-475e-917e-2563e5a8cd20"]

REJECTED: dict[str, tuple[dict[str, Any], tuple[Any, ...], str]] = {
    "NUL in project_id": ({"project_id": "0123\x00", "server_ids": GOOD}, (), "project_id"),
    "NUL in source": ({"source": "app\x00"}, (), "source must not contain NUL"),
    "NUL in idempotency_key": ({"idempotency_key": "k\x00"}, (), "idempotency_key must not"),
    "NUL in a keyword name": ({"bad\x00name": 1}, (), "unknown field(s): bad\\x00name"),
    "a keyword named self": ({"self": "x"}, (), "unknown field(s): self"),
    "positional arguments": ({}, (PROJECT, GOOD), "positional argument"),
    "no project": ({"project_id": None}, (), "project_id is missing"),
    "a bad project": ({"project_id": "nope"}, (), "32 hexadecimal"),
    "no servers": ({"server_ids": []}, (), "server_ids is empty"),
    "servers not a list": ({"server_ids": "a,b"}, (), "must be a list"),
    "ids that are not UUIDs": ({"server_ids": ["x", 1]}, (), "not UUIDs"),
    "a bad type": ({"type": "WARM"}, (), "HARD or SOFT"),
    "a bad batch size": ({"batch_size": 1001}, (), "batch_size"),
    "a bad threshold": ({"failure_threshold": 101}, (), "failure_threshold"),
    "a bad request id": ({"request_id": "no"}, (), "request_id must be a UUID"),
    "an unknown field": ({"reboot_now": True}, (), "unknown field"),
    "a bad callback name": ({"notify_task": "a b"}, (), "notify_task"),
    "max_in_flight beyond an integer column": ({"max_in_flight": 2**31}, (), "max_in_flight"),
    "max_in_flight of 31 digits": ({"max_in_flight": 10**30}, (), "max_in_flight"),
    "a window of 100000000 days": ({"not_after": "100000000d"}, (), "at most 366 days"),
    "neither a request id nor a key": ({"request_id": None}, (), "give request_id or"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_a_malformed_request_is_recorded_as_rejected_and_the_worker_goes_on(
    pipe: Pipeline, case: str
) -> None:
    changes, args, reason = REJECTED[case]
    request_id = str(uuid.uuid4())
    kwargs: dict[str, Any] = {} if args else {"project_id": PROJECT, "server_ids": GOOD}
    if "request_id" not in changes:
        kwargs["request_id"] = request_id
    kwargs.update({k: v for k, v in changes.items() if v is not None})
    for k, v in changes.items():
        if v is None:
            kwargs.pop(k, None)
    pipe.app.send_task(TASK, args=args, kwargs=kwargs, queue=INTAKE_QUEUE)
    if "request_id" in changes:
        # No usable id: recorded under a new one; find it by what it was rejected for
        _still_consuming(pipe)
        from worker.db.models import RebootRequest

        with unit_of_work(pipe.engine) as session:
            reasons = session.scalars(
                select(RebootRequest.rejection_reasons)
                .where(RebootRequest.status == "rejected")
                .order_by(RebootRequest.created_at.desc())
                .limit(5)
            ).all()
        assert any(reason in r for rs in reasons for r in rs or [])
        return
    status = pipe.wait(request_id, timeout=60)
    assert status["status"] == "rejected"
    assert any(reason in r for r in status["rejection_reasons"]), status["rejection_reasons"]
    assert "\x00" not in json.dumps(status)
    _still_consuming(pipe)
    assert sum(pipe.stats()["reboots"].values()) == 2


# --- follow-up tasks with arguments they cannot use ------------------------------------------

#: Each is sent as a real task message (the serializer of a producer); each must end as a dead
#: letter naming the argument, never as an acknowledged message and one log line.
BAD_TASKS: dict[str, tuple[str, str, tuple[Any, ...], dict[str, Any], str]] = {
    "a submit of an id that is not a UUID": (
        "bmsreboot.submit_batch",
        "bmsreboot.submit",
        ("not-a-uuid",),
        {},
        "batch_id must be a UUID, got 'not-a-uuid'",
    ),
    "a submit without its batch": (
        "bmsreboot.submit_batch",
        "bmsreboot.submit",
        (),
        {},
        "batch_id must be a UUID, got None",
    ),
    "a poll with a bad seq": (
        "bmsreboot.poll_batch",
        "bmsreboot.poll",
        (str(uuid.uuid4()),),
        {"seq": "x"},
        "seq must be a whole number",
    ),
    "a release of a dict": (
        "bmsreboot.release",
        "bmsreboot.submit",
        ({"a": 1},),
        {},
        "project_id must be 32 hexadecimal characters",
    ),
    "a cancel without its request id": (
        "bmsreboot.cancel_request",
        INTAKE_QUEUE,
        (),
        {"requestid": str(uuid.uuid4())},
        "cancel_request needs request_id; unknown keyword(s): requestid: the cancel was not",
    ),
    "a schedule tick without a zone": (
        "bmsreboot.schedule_tick",
        INTAKE_QUEUE,
        ("nightly", "2026-12-01T03:00:00"),
        {},
        "tick must be an ISO 8601 time with a zone",
    ),
    "a webhook delivery of an id that is not a number": (
        "bmsreboot.deliver_webhook",
        "bmsreboot.webhooks",
        ("12",),
        {},
        "delivery_id must be a whole number of at least 1, got '12'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_a_task_with_an_argument_it_cannot_use_becomes_a_dead_letter(
    pipe: Pipeline, case: str
) -> None:
    name, queue, args, kwargs, reason = BAD_TASKS[case]
    before = _dead_letters(pipe)
    pipe.app.send_task(name, args=args, kwargs=kwargs, queue=queue)
    _wait_dead_letter(pipe, before, case)
    with unit_of_work(pipe.engine) as session:
        letter = session.scalars(select(DeadLetter).order_by(DeadLetter.id.desc())).first()
        assert letter is not None
        assert letter.task == name
        assert letter.queue == queue
        assert reason in letter.error
        message = json.loads(letter.raw)
    # The message itself is kept, to be sent again once mended
    assert message["task"] == name
    assert message["kwargs"] == kwargs
    _still_consuming(pipe)


def test_a_cancel_with_a_misspelled_reason_is_applied_and_says_what_it_ignored(
    pipe: Pipeline,
) -> None:
    # Given a request held back (its servers' jobs take a while) and a cancel whose reason is
    # misspelled
    pipe.configure(job_duration=5.0)
    request_id = pipe.send(server_ids=new_ids(4), batch_size=1, max_in_flight=1)
    pipe.app.send_task(
        "bmsreboot.cancel_request",
        kwargs={"request_id": request_id, "resaon": "bad patch", "actor": "app:patcher"},
        queue=INTAKE_QUEUE,
    )
    # Then the cancel is applied (a cancel errs on the side of stopping), and the keyword it
    # did not know is recorded with it
    status = pipe.wait(request_id, timeout=60)
    assert status["status"] == "cancelled"
    assert "unknown keyword(s) ignored: resaon='bad patch'" in status["reason"]
    assert "app:patcher" in status["reason"]


def test_an_operator_lists_the_dead_letters(pipe: Pipeline) -> None:
    from tests.test_pipeline_cli import bmsreboot

    entry = "garbage{{{" + uuid.uuid4().hex
    before = _dead_letters(pipe)
    _push_raw(pipe, entry)
    _wait_dead_letter(pipe, before, "garbage")
    run = bmsreboot(pipe, "dead-letters", "--json", "--raw", "--limit", "5")
    assert run.returncode == 0, run.stderr
    (newest, *_rest) = json.loads(run.stdout)
    assert newest["queue"] == INTAKE_QUEUE
    assert "JSONDecodeError" in newest["error"]
    assert base64.b64decode(newest["raw_base64"]) == entry.encode()
    human = bmsreboot(pipe, "dead-letters")
    assert human.returncode == 0
    assert entry[:40] in human.stdout
