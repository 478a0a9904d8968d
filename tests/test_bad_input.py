"""Nothing a producer or the API sends can strand work or vanish: driven by hand on SQLite and
PostgreSQL (follow-ups recorded, not sent), against the simulator or a loopback server that
answers what a test needs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import PROJECT, accept, ids, run_to_end, sent
from tests.test_signing import CaptureServer, capture_server  # noqa: F401 - a fixture
from worker.db.models import Batch, RebootRequest
from worker.db.session import unit_of_work
from worker.db.status import request_status
from worker.pipeline import intake, submit
from worker.pipeline.producer import IDEMPOTENCY_NAMESPACE, build_payload, checked
from worker.pipeline.runtime import Runtime

# --- answers from the API we cannot record ----------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    [
        "j" * 65,  # longer than the column
        "abc/def",  # not a path segment we can poll
        "abc\x00def",
        " ",
    ],
)
def test_an_accepted_post_with_an_unusable_job_id_makes_the_batch_unknown_at_once(
    make_rt: Callable[..., Runtime],
    capture_server: CaptureServer,  # noqa: F811 - the imported fixture
    job_id: str,
) -> None:
    import json

    capture_server.answer = (200, json.dumps({"job_id": job_id}).encode())
    rt = make_rt(bms_endpoint=capture_server.base_url)
    request_id = accept(rt, ids(3))
    (batch_id,) = sent(rt, "submit")
    assert submit.submit_batch(batch_id, rt) == "unknown"
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id, include_servers=True)
    assert status is not None
    (batch,) = status["batches"]
    assert batch["status"] == "unknown"
    assert batch["job_id"] is None
    # The raw answer is recorded, made storable
    assert "job_id" in batch["last_error"]["message"]
    assert "\x00" not in batch["last_error"]["message"]
    assert {s["status"] for s in status["server_results"]} == {"unknown"}
    # Never sent again
    assert submit.submit_batch(batch_id, rt) == "skipped"
    assert len(capture_server.requests) == 1


# --- one unknown server must not block the others ---------------------------------------------


def test_a_batch_refused_for_an_unknown_server_is_split_until_the_server_is_found(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    servers = ids(10)
    unknown = servers[6]
    simulator.configure(job_duration=0.1, unknown_servers=[unknown])
    rt = make_rt()
    request_id = accept(rt, servers, batch_size=10)
    status = run_to_end(rt, request_id)
    results = {s["id"]: s for s in status["server_results"]}
    assert results[unknown]["status"] == "failed"
    assert results[unknown]["error_code"] == "BMS.0040"
    assert {sid: r["status"] for sid, r in results.items() if sid != unknown} == dict.fromkeys(
        [s for s in servers if s != unknown], "succeeded"
    )
    # Every other server rebooted exactly once; the unknown one never
    assert simulator.stats()["reboots"] == {s: 1 for s in servers if s != unknown}
    assert status["status"] == "partially_failed"
    # The splits are visible, each linked to the batch it came from
    batches = status["batches"]
    assert batches[0]["status"] == "rejected"
    assert batches[0]["split_from"] is None
    splits = [b for b in batches if b["split_from"] is not None]
    assert {b["split_from"] for b in splits} >= {0}
    assert sum(b["size"] for b in batches if b["split_from"] == 0) == 10
    # Halving 10 -> 5 -> 2 or 3 -> 1: the culprit ends alone in a rejected batch of one
    (alone,) = [b for b in batches if b["status"] == "rejected" and b["size"] == 1]
    assert alone["last_error"]["code"] == "BMS.0040"


def test_without_isolation_a_refused_batch_says_the_api_refused_it_whole(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    servers = ids(4)
    simulator.configure(unknown_servers=[servers[1]])
    rt = make_rt(isolate_unknown_servers=False)
    request_id = accept(rt, servers)
    status = run_to_end(rt, request_id)
    assert [b["status"] for b in status["batches"]] == ["rejected"]
    for server in status["server_results"]:
        assert server["status"] == "failed"
        assert "refused the whole batch" in server["fail_reason"]
        assert "does not exist" in server["fail_reason"]  # the API's words, quoted
    assert simulator.stats()["reboots"] == {}


# --- inputs that must end as a rejected row ---------------------------------------------------


def _rejected(rt: Runtime, payload: dict[str, Any]) -> dict[str, Any]:
    result = intake.accept_request(payload, rt)
    assert result.status == "rejected", result
    with unit_of_work(rt.engine) as session:
        status = request_status(session, result.request_id)
    assert status is not None
    assert status["status"] == "rejected"
    return status


GOOD_IDS = ["616fb98f-46ca-475e-917e-2563e5a8cd19"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"project_id": "0123\x00", "server_ids": GOOD_IDS}, "project_id must be"),
        ({"project_id": PROJECT, "server_ids": GOOD_IDS, "source": "app\x00"}, "NUL"),
        ({"project_id": PROJECT, "server_ids": GOOD_IDS, "idempotency_key": "k\x00"}, "NUL"),
        ({"project_id": PROJECT, "server_ids": GOOD_IDS, "bad\x00name": 1}, "unknown field"),
        ({"project_id": PROJECT, "server_ids": GOOD_IDS, "self": 1}, "unknown field(s): self"),
        ({"project_id": PROJECT, "server_ids": GOOD_IDS, "notify_task": "a b"}, "notify_task"),
        ({"project_id": PROJECT, "server_ids": GOOD_IDS, "notify_queue": "q\x00"}, "NUL"),
    ],
)
def test_inputs_a_database_cannot_store_are_recorded_as_rejected_made_safe(
    make_rt: Callable[..., Runtime], payload: dict[str, Any], reason: str
) -> None:
    rt = make_rt()
    status = _rejected(rt, payload)
    assert any(reason in r for r in status["rejection_reasons"])
    text = repr(status)
    assert "\x00" not in text


def test_a_rejected_request_does_not_hold_its_idempotency_key(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    key = f"nightly-{uuid.uuid4()}"
    # A producer's first try is invalid; the producer API gives it a random id, not the one
    # derived from the key
    first = build_payload("not-a-project", GOOD_IDS, idempotency_key=key)
    assert not checked(first, rt.settings).valid
    assert first["request_id"] != str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))
    rejected = _rejected(rt, first)
    assert rejected["idempotency_key"] == key  # kept for the record
    # The corrected retry with the same key is a new request, accepted
    second = build_payload(PROJECT, GOOD_IDS, idempotency_key=key)
    assert checked(second, rt.settings).valid
    result = intake.accept_request(second, rt)
    assert result.created
    assert result.status == "accepted"
    assert str(result.request_id) == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))
    # and the key now belongs to it: a third send returns it
    again = intake.accept_request(build_payload(PROJECT, GOOD_IDS, idempotency_key=key), rt)
    assert not again.created
    assert again.request_id == result.request_id
    with unit_of_work(rt.engine) as session:
        holders = session.scalars(
            select(RebootRequest.id).where(RebootRequest.idempotency_key == key)
        ).all()
    assert holders == [result.request_id]


# --- completion callbacks ---------------------------------------------------------------------


def test_the_callback_goes_to_the_producers_queue(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    request_id = accept(rt, ids(2), notify_task="patching.done", notify_queue="patching")
    run_to_end(rt, request_id)
    ((task_name, payload, queue),) = sent(rt, "notify")
    assert (task_name, queue) == ("patching.done", "patching")
    assert payload["request_id"] == str(request_id)


def test_split_batches_draw_from_the_same_budget(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    servers = ids(4)
    simulator.configure(unknown_servers=[servers[0]])
    rt = make_rt(action_rate_limit=60)  # one POST a second
    request_id = accept(rt, servers)
    (batch_id,) = sent(rt, "submit")
    assert submit.submit_batch(batch_id, rt) == "split"
    # The halves wait for the release step, which spaces them by the project's budget
    assert sent(rt, "release") == [PROJECT]
    from worker.pipeline import release

    release.release_project(PROJECT, rt)
    with unit_of_work(rt.engine) as session:
        halves = session.scalars(
            select(Batch)
            .where(Batch.request_id == request_id, Batch.parent_batch_id == batch_id)
            .order_by(Batch.index)
        ).all()
        parent = session.get(Batch, batch_id)
    assert parent is not None
    assert [b.size for b in halves] == [2, 2]
    # The halves get the next slots after the refused POST's, one interval apart each
    assert all(b.released_at is not None for b in halves)
    assert parent.next_attempt_at is not None
    gaps = [
        (b.next_attempt_at - parent.next_attempt_at).total_seconds()  # type: ignore[operator]
        for b in halves
    ]
    assert gaps == [pytest.approx(1.0, abs=1e-3), pytest.approx(2.0, abs=1e-3)]


def test_a_request_for_a_project_this_deployment_does_not_serve_is_rejected_with_no_call(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    other = "fedcba9876543210fedcba9876543210"
    rt = make_rt(allowed_projects=f" {other.upper()} , 00000000000000000000000000000000")
    status = _rejected(rt, build_payload(PROJECT, GOOD_IDS))
    assert status["rejection_reasons"] == [
        f"project {PROJECT} is not one this deployment serves (BMSREBOOT_ALLOWED_PROJECTS): "
        "nothing was sent to the cloud"
    ]
    # A project on the list (ids compared without case) is served
    assert intake.accept_request(build_payload(other, GOOD_IDS), rt).status == "accepted"
    assert sum(simulator.stats()["calls"]["action"].values()) == 0
