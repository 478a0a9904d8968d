"""One server in two requests, and one idempotency key for two payloads: neither reboots a
server the producer did not mean, and each says so (steps on SQLite and PostgreSQL against the
simulator)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import select

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import PROJECT, accept, ids, run_to_end
from worker.db.models import Batch, RebootRequest
from worker.db.session import unit_of_work
from worker.pipeline import intake, submit
from worker.pipeline.producer import build_payload
from worker.pipeline.runtime import RecordingDispatcher, Runtime


def _batches(rt: Runtime, request_id: uuid.UUID) -> list[uuid.UUID]:
    with unit_of_work(rt.engine) as session:
        return list(
            session.scalars(
                select(Batch.id).where(Batch.request_id == request_id).order_by(Batch.index)
            )
        )


def _servers(status: dict[str, object]) -> dict[str, tuple[str, str | None]]:
    return {s["id"]: (s["status"], s["fail_reason"]) for s in status["server_results"]}  # type: ignore[attr-defined, index]


def test_the_later_request_skips_a_server_the_earlier_still_holds_even_if_it_claims_first(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    a, b, shared, d = ids(4)
    # Given two requests for one shared server, the earlier one not sent yet
    first = accept(rt, [a, b, shared])
    second = accept(rt, [shared, d])
    # When the later request's batch is claimed first
    (later_batch,) = _batches(rt, second)
    assert submit.submit_batch(later_batch, rt) == "submitted"
    # Then the shared server is not sent by it, and says who holds it
    both = run_to_end(rt, first), run_to_end(rt, second)
    assert _servers(both[1])[shared] == (
        "skipped",
        f"not sent: the server is waiting to be sent in request {first}",
    )
    assert _servers(both[0])[shared][0] == "succeeded"
    # And the cloud rebooted each server once
    assert simulator.stats()["reboots"] == {a: 1, b: 1, shared: 1, d: 1}
    assert both[1]["status"] == "partially_failed"
    assert both[1]["servers"]["skipped"] == 1


def test_a_server_rebooted_by_another_request_after_this_one_was_made_is_not_sent_again(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    a, shared, d = ids(3)
    first = accept(rt, [a, shared])
    second = accept(rt, [shared, d])
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    later = _batches(rt, second)
    # The earlier request runs to its end before the later one is claimed
    rt.dispatcher.sent = [e for e in rt.dispatcher.sent if e[1] not in later]
    assert run_to_end(rt, first)["status"] == "succeeded"
    submit.submit_batch(later[0], rt)
    status = run_to_end(rt, second)
    state, reason = _servers(status)[shared]
    assert state == "skipped"
    assert reason is not None
    assert reason.startswith(f"not sent: request {first} rebooted the server at ")
    assert reason.endswith("after this request was made")
    assert simulator.stats()["reboots"] == {a: 1, shared: 1, d: 1}


def test_a_request_whose_every_server_is_held_elsewhere_ends_failed_with_no_post(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    servers = ids(3)
    first = accept(rt, servers)
    second = accept(rt, list(reversed(servers)))
    (later_batch,) = _batches(rt, second)
    assert submit.submit_batch(later_batch, rt) == "skipped"
    status = run_to_end(rt, second)
    assert status["status"] == "failed"
    assert [b["status"] for b in status["batches"]] == ["skipped"]
    assert status["servers"]["skipped"] == 3
    assert run_to_end(rt, first)["status"] == "succeeded"
    # One POST: the earlier request's
    assert simulator.stats()["calls"]["action"]["accepted"] == 1


def test_requests_that_never_overlap_each_reboot_the_server(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    (server,) = ids(1)
    assert run_to_end(rt, accept(rt, [server]))["status"] == "succeeded"
    # A request made after the first one ended asks for a new reboot
    assert run_to_end(rt, accept(rt, [server]))["status"] == "succeeded"
    assert simulator.stats()["reboots"] == {server: 2}


# --- one idempotency key, two payloads ----------------------------------------------------


def test_a_key_reused_with_other_servers_is_refused_naming_the_request_that_has_it(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    servers, others = ids(2), ids(2)
    # Given a request under the key k
    first = intake.accept_request(build_payload(PROJECT, servers, idempotency_key="k"), rt)
    assert first.status == "accepted"
    # When the same key comes with other servers and another type
    again = build_payload(PROJECT, others, idempotency_key="k", type="SOFT")
    refused = intake.accept_request(again, rt)
    # Then it is recorded as rejected, saying which request holds the key and what differs
    assert refused.status == "rejected"
    assert refused.request_id != first.request_id
    assert refused.reasons == [
        f"idempotency key 'k' is already used by request {first.request_id} with other "
        "type, servers: nothing was sent for this one (use another key, or the same request "
        "to follow that one)"
    ]
    # Sent twice, it is recorded once
    assert intake.accept_request(again, rt).request_id == refused.request_id
    with unit_of_work(rt.engine) as session:
        row = session.get(RebootRequest, refused.request_id)
        assert row is not None
        assert row.rejected_idempotency_key == "k"
        assert session.scalar(select(Batch.id).where(Batch.request_id == row.id)) is None
    # And the same key with the same payload is still the first request
    same = intake.accept_request(build_payload(PROJECT, servers, idempotency_key="k"), rt)
    assert (same.request_id, same.created) == (first.request_id, False)
    run_to_end(rt, first.request_id)
    assert set(simulator.stats()["reboots"]) == set(servers)


def test_a_request_id_reused_with_another_policy_is_refused(
    make_rt: Callable[..., Runtime],
) -> None:
    rt = make_rt()
    servers = ids(3)
    request_id = str(uuid.uuid4())
    payload = {"request_id": request_id, "project_id": PROJECT, "server_ids": servers}
    assert intake.accept_request(payload, rt).status == "accepted"
    refused = intake.accept_request({**payload, "max_in_flight": 1}, rt)
    assert refused.status == "rejected"
    assert refused.reasons[0].startswith(
        f"request id {request_id} is already recorded with other max_in_flight: nothing was"
    )
