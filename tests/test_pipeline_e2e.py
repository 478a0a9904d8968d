"""The reboot pipeline end to end: real worker processes, Redis, PostgreSQL, the simulator.

Every test proves "never reboot twice" from the simulator's inspection endpoint, which counts
the reboot actions it accepted per server.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from tests.fixtures.pipeline import PROJECT, Pipeline, new_ids
from tests.fixtures.regions import redis_text
from worker.simulator.config import SimulatorConfig, server_fails

pytestmark = pytest.mark.slow


def rebooted(pipe: Pipeline) -> dict[str, int]:
    return dict(pipe.stats()["reboots"])


def action_calls(pipe: Pipeline) -> dict[str, int]:
    return dict(pipe.stats()["calls"]["action"])


def by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["server_results"]}


def test_2500_servers_run_in_three_batches_and_each_is_rebooted_once(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    # Given a fleet where about one server in ten fails its reboot
    pipe.configure(fail_fraction=0.1)
    servers = new_ids(2500)
    expected_failed = {s for s in servers if server_fails(s, SimulatorConfig(fail_fraction=0.1))}
    assert 100 < len(expected_failed) < 400

    # When a producer asks for all of them to be rebooted
    request_id = pipe.send(server_ids=servers, source="test-app")
    status = pipe.wait(request_id, servers=True)

    # Then three batches of 1000, 1000 and 500 ran, and each server was rebooted exactly once
    assert [b["size"] for b in status["batches"]] == [1000, 1000, 500]
    assert all(b["job_id"] for b in status["batches"])
    assert rebooted(pipe) == dict.fromkeys(servers, 1)
    # And the per-server outcomes match the injected failures exactly
    results = by_id(status)
    assert {s for s, r in results.items() if r["status"] == "failed"} == expected_failed
    assert {s for s, r in results.items() if r["status"] == "succeeded"} == (
        set(servers) - expected_failed
    )
    assert all(results[s]["error_code"] == "BMS.0036" for s in expected_failed)
    # And the request's status and counts are right
    assert status["status"] == "partially_failed"
    assert status["servers"] == {
        "total": 2500,
        "succeeded": 2500 - len(expected_failed),
        "failed": len(expected_failed),
        "unknown": 0,
        "pending": 0,
        "cancelled": 0,
        "skipped": 0,
        "verifying": 0,
        "unhealthy": 0,
    }
    assert {b["status"] for b in status["batches"]} == {"partially_failed"}


def test_all_servers_succeeding_make_a_succeeded_request(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(1000)
    request_id = pipe.send(server_ids=servers)
    status = pipe.wait(request_id)
    assert status["status"] == "succeeded"
    assert [b["size"] for b in status["batches"]] == [1000]
    assert rebooted(pipe) == dict.fromkeys(servers, 1)


def test_1001_servers_make_two_batches(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(1001)
    status = pipe.wait(pipe.send(server_ids=servers))
    assert status["status"] == "succeeded"
    assert [b["size"] for b in status["batches"]] == [1000, 1]
    assert rebooted(pipe) == dict.fromkeys(servers, 1)


def test_the_same_idempotency_key_never_reboots_again(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(30)
    # Given a request that finished
    first = pipe.send(server_ids=servers, idempotency_key="nightly-2026-11-26")
    assert pipe.wait(first)["status"] == "succeeded"
    # When the same key comes again under another request id, and the same request id again
    second = pipe.send(server_ids=servers, idempotency_key="nightly-2026-11-26")
    pipe.send(server_ids=servers, request_id=first)
    # Then both are taken as the request already recorded
    pipe.wait_log(f"request {first} already recorded", count=2)
    # And nothing new was recorded or rebooted
    assert pipe.status(second) is None
    assert rebooted(pipe) == dict.fromkeys(servers, 1)
    assert action_calls(pipe)["accepted"] == 1


def test_identical_messages_processed_at_once_reboot_once(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure(job_duration=0.5)
    servers = new_ids(2500)
    # When four identical messages arrive together (two worker processes take them at once)
    request_id = str(uuid.uuid4())
    for _ in range(4):
        pipe.send(server_ids=servers, idempotency_key=f"race-{request_id}", request_id=request_id)
    status = pipe.wait(request_id)
    # Then one request ran (the other three messages were taken as that request)
    pipe.wait_log(f"request {request_id} already recorded", count=3)
    # and every server was rebooted exactly once
    assert status["status"] == "succeeded"
    assert rebooted(pipe) == dict.fromkeys(servers, 1)
    assert action_calls(pipe)["accepted"] == 3


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"server_ids": []}, "server_ids is empty"),
        ({"server_ids": ["not-a-uuid"]}, "not UUIDs"),
        ({"server_ids": "abc"}, "must be a list"),
        ({"project_id": "nope"}, "project_id must be 32 hexadecimal"),
        ({"type": "GENTLE"}, "type must be HARD or SOFT"),
        ({"batch_size": 1001}, "batch_size must be between 1 and 1000"),
        ({"batch_size": "ten"}, "batch_size must be a whole number"),
        ({"colour": "blue"}, "unknown field(s): colour"),
        ({"failure_threshold": 150}, "failure_threshold must be a percentage"),
    ],
)
def test_invalid_requests_are_rejected_with_their_reason_and_nothing_is_sent(
    pipeline_redis_pg: Pipeline, payload: dict[str, Any], reason: str
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    payload = {"server_ids": new_ids(3), **payload}
    status = pipe.wait(pipe.send(**payload))
    assert status["status"] == "rejected"
    assert any(reason in r for r in status["rejection_reasons"]), status["rejection_reasons"]
    assert status["batches"] == []
    assert sum(action_calls(pipe).values()) == 0


def test_positional_arguments_are_rejected_with_a_reason(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    request_id = str(uuid.uuid4())
    pipe.app.send_task(
        "bmsreboot.request_reboot",
        args=["0123456789abcdef0123456789abcdef", new_ids(2)],
        kwargs={"request_id": request_id},
        queue="bmsreboot.intake",
    )
    status = pipe.wait(request_id)
    assert status["status"] == "rejected"
    assert any("keyword arguments" in r for r in status["rejection_reasons"])
    assert sum(action_calls(pipe).values()) == 0


def test_a_request_with_many_faults_lists_every_reason(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    status = pipe.wait(pipe.send(project_id="x", server_ids=["a", "b"], type="?"))
    assert len(status["rejection_reasons"]) == 3
    # And the worker carries on with the next request
    good = pipe.wait(pipe.send(server_ids=new_ids(2)))
    assert good["status"] == "succeeded"


def test_soft_reboots_are_accepted(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(5)
    status = pipe.wait(pipe.send(server_ids=servers, type="SOFT"))
    assert status["type"] == "SOFT"
    assert status["status"] == "succeeded"
    assert rebooted(pipe) == dict.fromkeys(servers, 1)


def test_unknown_servers_reject_their_batch_with_the_api_code(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    servers = new_ids(15)
    ghost = servers[12]
    pipe.configure(unknown_servers=[ghost])
    # Given batches of 10: the second batch holds a server the API does not know
    status = pipe.wait(pipe.send(server_ids=servers, batch_size=10), servers=True)
    assert [b["status"] for b in status["batches"][:2]] == ["succeeded", "rejected"]
    results = by_id(status)
    # The refused batch was split until the unknown server stood alone; only it failed
    assert results[ghost]["error_code"] == "BMS.0040"
    assert results[ghost]["status"] == "failed"
    assert {results[s]["status"] for s in servers if s != ghost} == {"succeeded"}
    assert status["status"] == "partially_failed"
    # Each refused batch was sent once, never retried: 5 servers -> 3 -> 1
    assert action_calls(pipe)["rejected"] == 3
    assert rebooted(pipe) == {s: 1 for s in servers if s != ghost}


def test_a_job_that_never_finishes_times_out(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    servers = new_ids(3)
    pipe.configure(stuck_servers=[servers[0]])
    status = pipe.wait(pipe.send(server_ids=servers), servers=True)
    assert status["batches"][0]["status"] == "timed_out"
    assert {r["status"] for r in status["server_results"]} == {"unknown"}
    assert status["status"] == "failed"
    assert rebooted(pipe) == dict.fromkeys(servers, 1)


@pytest.mark.parametrize("fault", ["5xx", "429"])
def test_not_accepted_submits_are_retried_and_reboot_once(
    pipeline_redis_pg: Pipeline, fault: str
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    pipe.inject("action", fault, count=2)
    servers = new_ids(20)
    status = pipe.wait(pipe.send(server_ids=servers))
    assert status["status"] == "succeeded"
    calls = action_calls(pipe)
    assert calls["accepted"] == 1
    assert calls["faulted" if fault == "5xx" else "throttled"] == 2
    assert rebooted(pipe) == dict.fromkeys(servers, 1)


@pytest.mark.parametrize("fault", ["5xx", "429"])
def test_poll_errors_retry_the_poll_and_never_change_the_outcome(
    pipeline_redis_pg: Pipeline, fault: str
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure(fail_servers=[])
    pipe.inject("jobs", fault, count=3)
    servers = new_ids(10)
    status = pipe.wait(pipe.send(server_ids=servers))
    assert status["status"] == "succeeded"
    assert status["batches"][0]["polls"] >= 4
    calls = pipe.stats()["calls"]["jobs"]
    assert calls["faulted" if fault == "5xx" else "throttled"] == 3
    assert rebooted(pipe) == dict.fromkeys(servers, 1)


@pytest.mark.parametrize("fault", ["drop", "gateway_502", "no_job_id"])
def test_maybe_accepted_submits_become_unknown_and_are_never_posted_again(
    pipeline_redis_pg: Pipeline, fault: str
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    pipe.inject("action", fault, count=1)
    servers = new_ids(8)
    status = pipe.wait(pipe.send(server_ids=servers), servers=True)
    assert status["batches"][0]["status"] == "unknown"
    assert {r["status"] for r in status["server_results"]} == {"unknown"}
    assert status["status"] == "failed"
    assert status["batches"][0]["job_id"] is None
    # The simulator took the reboot once; the pipeline never POSTed again, not even the
    # reconciler passes that looked after the end
    pipe.reconciled()
    assert rebooted(pipe) == dict.fromkeys(servers, 1)
    assert sum(action_calls(pipe).values()) == 1


def test_the_completion_callback_receives_the_final_status(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(4)
    request_id = pipe.send(server_ids=servers, notify_task="producer.reboot_finished")
    final = pipe.wait(request_id)
    # The callback is an ordinary task message on the producer's (default) queue
    with pipe.app.connection_for_write() as conn:
        queue = conn.SimpleQueue("celery")
        message = queue.get(timeout=10)
        message.ack()
        queue.close()
    assert message.headers["task"] == "producer.reboot_finished"
    args, _kwargs, _embed = message.decode()
    assert args[0]["request_id"] == request_id
    assert args[0]["status"] == final["status"] == "succeeded"
    assert args[0]["servers"]["succeeded"] == 4


def test_the_embedded_default_runs_end_to_end(pipeline_embedded: Pipeline) -> None:
    pipe = pipeline_embedded
    pipe.configure(fail_fraction=0.1)
    servers = new_ids(2500)
    expected_failed = {s for s in servers if server_fails(s, SimulatorConfig(fail_fraction=0.1))}
    status = pipe.wait(pipe.send(server_ids=servers), timeout=120, servers=True)
    assert [b["size"] for b in status["batches"]] == [1000, 1000, 500]
    assert rebooted(pipe) == dict.fromkeys(servers, 1)
    failed = {r["id"] for r in status["server_results"] if r["status"] == "failed"}
    assert failed == expected_failed
    assert Counter(r["status"] for r in status["server_results"])["succeeded"] == 2500 - len(
        expected_failed
    )


def test_no_secret_reaches_the_worker_log_the_audit_database_or_redis(
    pipeline_redis_pg: Pipeline,
) -> None:
    from sqlalchemy import MetaData, select

    pipe = pipeline_redis_pg
    pipe.configure()
    pipe.inject("action", "5xx", count=1)  # an error path too
    pipe.wait(pipe.send(server_ids=new_ids(3)))
    secret = pipe.env["HUAWEICLOUD_SDK_SK"]
    assert secret not in pipe.log_path.read_text(errors="replace")
    assert secret not in redis_text(pipe.env["BMSREBOOT_BROKER_URL"])
    metadata = MetaData()
    metadata.reflect(pipe.engine)
    with pipe.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                assert secret not in str(tuple(row)), table.name


# --- the inventory: selectors and the pre-flight check, through a real worker -------------


def test_a_worker_reboots_exactly_the_servers_a_tag_selector_names(
    pipeline_redis_pg: Pipeline,
) -> None:
    from worker.simulator.inventory import server_id

    pipe = pipeline_redis_pg
    pipe.configure(servers=40)
    request_id = pipe.send(selector={"tags": ["env=prod", "role=db"]}, preflight=True)
    status = pipe.wait(request_id)
    wanted = {server_id(PROJECT, i) for i in range(1, 41) if i % 2 and i % 5 == 0}
    assert status["status"] == "succeeded"
    assert rebooted(pipe) == dict.fromkeys(wanted, 1)
    assert status["selector"] == {"tags": ["env=prod", "role=db"]}
    # Nothing was throttled on the list route
    assert pipe.stats()["calls"]["servers"]["throttled"] == 0


def test_a_worker_keeps_a_locked_server_back_and_reboots_the_rest(
    pipeline_redis_pg: Pipeline,
) -> None:
    from worker.simulator.inventory import server_id

    pipe = pipeline_redis_pg
    pipe.configure(servers=10)
    servers = [server_id(PROJECT, i) for i in range(1, 11)]
    pipe.set_server(servers[3], locked=True)
    status = pipe.wait(pipe.send(server_ids=servers, preflight=True), servers=True)
    shown = {s["id"]: (s["status"], s["fail_reason"]) for s in status["server_results"]}
    assert shown[servers[3]] == ("skipped", "not sent: locked")
    assert rebooted(pipe) == dict.fromkeys(set(servers) - {servers[3]}, 1)
    assert pipe.stats()["calls"]["action"]["rejected"] == 0
