"""Validation of reboot requests: every reason, in an operator's words, never an exception."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.pipeline.producer import IDEMPOTENCY_NAMESPACE, build_payload
from worker.pipeline.validation import SOFT_WARNING, validate_request

PROJECT = "0123456789abcdef0123456789abcdef"


def check(**payload: Any) -> Any:
    payload.setdefault("request_id", str(uuid.uuid4()))
    payload.setdefault("project_id", PROJECT)
    payload.setdefault("server_ids", [str(uuid.uuid4())])
    return validate_request(payload, max_servers=10)


def test_a_good_request_is_normalised() -> None:
    ids = [str(uuid.uuid4()).upper(), str(uuid.uuid4())]
    result = check(server_ids=ids, type="hard", source="  app  ")
    assert result.valid
    assert result.server_ids == [ids[0].lower(), ids[1]]
    assert result.type == "HARD"
    assert result.source == "app"
    assert result.batch_size == 1000


def test_duplicates_are_removed_and_reported_in_order() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    result = check(server_ids=[a, b, a, a.upper()])
    assert result.valid
    assert result.server_ids == [a, b]
    assert result.duplicates_removed == 2
    assert result.warnings == ["2 duplicate server id(s) removed"]


def test_soft_is_accepted_with_a_warning() -> None:
    result = check(type="SOFT")
    assert result.valid
    assert result.warnings == [SOFT_WARNING]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"project_id": None}, "project_id is missing"),
        ({"project_id": "abc"}, "project_id must be 32 hexadecimal characters, got 'abc'"),
        ({"server_ids": None}, "server_ids is missing: give at least one server id"),
        ({"server_ids": []}, "server_ids is empty: give at least one server id"),
        ({"server_ids": "x"}, "server_ids must be a list of server ids, got str"),
        ({"server_ids": ["x", 3]}, "2 server id(s) are not UUIDs: 'x', 3"),
        (
            {"server_ids": [str(uuid.uuid4()) for _ in range(11)]},
            "too many servers: 11 given, at most 10 per request (BMSREBOOT_MAX_REQUEST_SERVERS)",
        ),
        ({"type": "NICE"}, "type must be HARD or SOFT, got 'NICE'"),
        ({"batch_size": 0}, "batch_size must be between 1 and 1000, got 0"),
        ({"batch_size": True}, "batch_size must be a whole number, got True"),
        ({"max_in_flight": 0}, "max_in_flight must be between 1 and 1000000, got 0"),
        ({"max_in_flight": 2**31}, "max_in_flight must be between 1 and 1000000, got 2147483648"),
        ({"max_in_flight": 10**30}, f"max_in_flight must be between 1 and 1000000, got {10**30}"),
        ({"not_after": "100000000d"}, "not_after must be at most 366 days ahead, got '100000000d'"),
        (
            {"not_after": "9" * 30 + "s"},
            "not_after must be an ISO 8601 time with a zone (2026-11-28T03:00:00Z) or a "
            f"duration (90m, 2h, 1d), got '{'9' * 30}s'",
        ),
        (
            {"not_after": "9999-12-31T23:59:59+00:00"},
            "not_after must be at most 366 days ahead, got '9999-12-31T23:59:59+00:00'",
        ),
        ({"canary_size": 1001}, "canary_size must be between 1 and 1000, got 1001"),
        ({"failure_threshold": -1}, "failure_threshold must be a percentage from 0 to 100, got -1"),
        ({"request_id": "r-1"}, "request_id must be a UUID, got 'r-1'"),
        ({"idempotency_key": ""}, "idempotency_key must be a non-empty string, got ''"),
        ({"source": "x" * 300}, "source must be at most 255 characters, got 300"),
        ({"extra": 1, "more": 2}, "unknown field(s): extra, more"),
    ],
)
def test_each_problem_has_its_reason(fields: dict[str, Any], reason: str) -> None:
    result = check(**fields)
    assert not result.valid
    assert result.reasons == [reason]


def test_not_before_delays_the_release_and_must_come_before_not_after() -> None:
    now = datetime.now(UTC)
    later = check(not_before="2h")
    assert later.valid
    assert later.not_before is not None
    assert timedelta(hours=1, minutes=59) < later.not_before - now < timedelta(hours=2, minutes=1)
    # A time already past is now, not a mistake (a countdown that came due in the queue)
    past = check(not_before=(now - timedelta(minutes=5)).isoformat())
    assert past.valid
    assert past.not_before is not None
    assert past.not_before >= now
    assert check(not_before="3h", not_after="2h").reasons[0].startswith("not_before (")
    assert check(not_before="400d").reasons == [
        "not_before must be at most 366 days ahead, got '400d'"
    ]


def test_every_problem_is_reported_at_once() -> None:
    result = validate_request(
        {"project_id": "p", "server_ids": ["s"], "type": "X", "batch_size": 5000},
        max_servers=10,
    )
    # neither request_id nor idempotency_key, the project, the id, the type, the batch size
    assert len(result.reasons) == 5


@pytest.mark.parametrize("key", ["request_id", "idempotency_key"])
def test_a_request_needs_a_request_id_or_an_idempotency_key(key: str) -> None:
    # Given a message with neither (a producer's retry could not be told from a new request)
    bare = {"project_id": PROJECT, "server_ids": [str(uuid.uuid4())]}
    result = validate_request(bare, max_servers=10)
    # Then it is refused, saying why; with either one it is accepted
    assert result.reasons == [
        "give request_id or idempotency_key: without either, a producer that sends the same "
        "request again (a retry after a broker timeout) would reboot every server twice (the "
        "producer API and `bmsreboot submit` set request_id)"
    ]
    value = str(uuid.uuid4()) if key == "request_id" else "nightly-2026-12-01"
    assert validate_request({**bare, key: value}, max_servers=10).valid


def test_many_bad_ids_are_summarised() -> None:
    result = check(server_ids=[f"bad{i}" for i in range(8)])
    assert result.reasons == [
        "8 server id(s) are not UUIDs: 'bad0', 'bad1', 'bad2', 'bad3', 'bad4' and 3 more"
    ]


def test_a_given_request_id_is_kept() -> None:
    rid = uuid.uuid4()
    assert check(request_id=str(rid)).request_id == rid


def test_an_idempotency_key_gives_a_stable_request_id() -> None:
    first = build_payload(PROJECT, ["a"], idempotency_key="nightly")
    again = build_payload(PROJECT, ["a"], idempotency_key="nightly")
    assert first["request_id"] == again["request_id"]
    assert first["request_id"] == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, "nightly"))
    assert (
        build_payload(PROJECT, ["a"])["request_id"] != build_payload(PROJECT, ["a"])["request_id"]
    )


def test_the_payload_leaves_out_unset_fields_and_survives_json() -> None:
    import json

    payload = build_payload(PROJECT, ["a"], batch_size=10)
    assert set(payload) == {"request_id", "project_id", "server_ids", "type", "batch_size"}
    assert json.loads(json.dumps(payload)) == payload


def test_build_payload_refuses_a_name_that_is_not_a_field() -> None:
    with pytest.raises(TypeError, match="not a field of a reboot request: batchsize"):
        build_payload(PROJECT, ["a"], batchsize=10)


def test_validation_follows_the_message_model_for_every_bound() -> None:
    # The bounds come from RebootRequestMessage: what the schema says is what intake checks
    from worker.pipeline.message import RebootRequestMessage

    for name in ("batch_size", "canary_size", "max_in_flight"):
        low = next(
            r.ge for r in RebootRequestMessage.model_fields[name].metadata if hasattr(r, "ge")
        )
        assert not check(**{name: low - 1}).valid
        assert check(**{name: low}).valid
    assert check(type="soft").type == "SOFT"
    assert check(source="  app ").source == "app"
    assert check(notify_task="a b").reasons == [
        "notify_task must be a Celery name (letters, digits and _ . : @ -), got 'a b'"
    ]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"verify": "yes"}, "verify must be true or false, got 'yes'"),
        ({"health_timeout": 0}, "health_timeout must be a number of seconds up to 86400, got 0"),
        (
            {"health_timeout": 10**6},
            "health_timeout must be a number of seconds up to 86400, got 1000000",
        ),
        ({"soak_seconds": -1}, "soak_seconds must be a number of seconds up to 86400, got -1"),
        ({"soak_seconds": "1m"}, "soak_seconds must be a number of seconds up to 86400, got '1m'"),
        (
            {"health_check": {"tcp_port": 22, "http_url": "http://x"}},
            "health_check must be {tcp_port: PORT} or {http_url: URL} (one of them)",
        ),
        ({"health_check": {"tcp_port": 0}}, "health_check must be {tcp_port: PORT}"),
        ({"health_check": {"http_url": "ftp://x"}}, "health_check must be {tcp_port: PORT}"),
        ({"health_check": "22"}, "health_check must be {tcp_port: PORT}"),
    ],
)
def test_each_verification_problem_has_its_reason(fields: dict[str, Any], reason: str) -> None:
    result = check(**fields)
    assert not result.valid
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith(reason), result.reasons


def test_the_verification_policy_is_recorded_as_given() -> None:
    result = check(
        verify=True,
        health_timeout=600,
        health_check={"http_url": "http://{ip}:9100/-/healthy"},
        soak_seconds=30,
    )
    assert result.valid, result.reasons
    assert (result.verify, result.health_timeout, result.soak_seconds) == (True, 600.0, 30.0)
    assert result.health_check == {"http_url": "http://{ip}:9100/-/healthy"}
    assert check().health_check is None
    assert check().verify is None
