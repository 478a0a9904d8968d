"""A reboot counts only when the server is back: verification after each job, the health
checks, and waves paced by servers out of service (steps on SQLite and PostgreSQL against the
simulator's inventory over HTTP; ``test_verify_worker`` runs them with real workers)."""

from __future__ import annotations

import datetime as dt
import http.server
import itertools
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import PROJECT, accept, clock_of, run_to_end, sent
from tests.fixtures.waiting import wait_for
from worker.db.models import Batch
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus
from worker.pipeline import poll, reconcile, release, submit, verify
from worker.pipeline.inventory import forget_snapshots
from worker.pipeline.runtime import RecordingDispatcher, Runtime
from worker.simulator.inventory import server_id


@pytest.fixture(autouse=True)
def _fresh_lists() -> None:
    forget_snapshots()


def fleet(count: int) -> list[str]:
    return [server_id(PROJECT, i) for i in range(1, count + 1)]


def verifying_rt(make_rt: Callable[..., Runtime], **overrides: Any) -> Runtime:
    fields: dict[str, Any] = {
        "verify": True,
        "verify_first_delay": 0.2,
        "verify_max_interval": 0.3,
        "health_timeout": 20.0,
        "probe_timeout": 1.0,
    }
    fields.update(overrides)
    return make_rt(**fields)


def servers_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["server_results"]}


def epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def test_a_rebooted_server_is_verifying_until_the_inventory_shows_it_back(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given servers that take 1.5 s to boot after their job ends
    simulator.configure(servers=12, job_duration=0.2, boot_seconds=1.5)
    servers = fleet(12)
    rt = verifying_rt(make_rt)
    request_id = accept(rt, servers)
    # When the job ends
    status = _until_job_ends(rt, request_id)
    # Then the batch and its servers are verifying, not succeeded
    assert [b["status"] for b in status["batches"]] == ["verifying"]
    assert status["status"] == "running"
    assert status["servers"]["verifying"] == 12
    assert status["servers"]["succeeded"] == 0
    # And once they are back, each is succeeded, seen back after its job's end and its boot
    final = run_to_end(rt, request_id)
    assert final["status"] == "succeeded"
    assert [b["status"] for b in final["batches"]] == ["succeeded"]
    history = simulator.stats()["servers"]
    for sid, result in servers_of(final).items():
        assert result["status"] == "succeeded"
        returned = history[sid]["returned"][0]
        assert epoch(result["verified_at"]) >= returned
        assert returned - 1.0 <= epoch(result["returned_at"]) <= epoch(result["verified_at"])
    batch = final["batches"][0]
    assert batch["boot_seconds"] is not None
    # (learned from the inventory's updated times, which the API gives to the second)
    assert 0.5 <= batch["boot_seconds"] <= 2.5
    assert batch["checks"] >= 1
    # and one reboot each: a check never calls the action API
    assert simulator.stats()["reboots"] == dict.fromkeys(servers, 1)


def test_checks_read_the_list_in_pages_not_a_get_per_server(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=300, job_duration=0.2, boot_seconds=0.5)
    rt = verifying_rt(make_rt)
    final = run_to_end(rt, accept(rt, fleet(300), batch_size=300))
    assert final["status"] == "succeeded"
    calls = simulator.stats()["calls"]
    # 300 servers fit one page of the list: a check is one list call, never 300 GETs
    assert calls["server"]["accepted"] == 0
    assert 1 <= calls["servers"]["accepted"] <= final["batches"][0]["checks"]


def test_servers_that_never_come_back_end_unhealthy_with_what_was_seen(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    servers = fleet(10)
    lost = servers[2:4]
    simulator.configure(servers=10, job_duration=0.2, boot_seconds=0.3, no_return_servers=lost)
    rt = verifying_rt(make_rt)
    final = run_to_end(rt, accept(rt, servers))
    shown = servers_of(final)
    for sid in lost:
        assert shown[sid]["status"] == "unhealthy"
        assert shown[sid]["fail_reason"] == "status ERROR after its reboot"
        assert shown[sid]["verified_at"] is None
    assert {shown[s]["status"] for s in servers if s not in lost} == {"succeeded"}
    assert final["servers"]["unhealthy"] == 2
    assert final["status"] == "partially_failed"
    assert [b["status"] for b in final["batches"]] == ["partially_failed"]


def test_a_server_not_back_within_its_health_timeout_is_unhealthy(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a server stuck in its reboot after its job ended
    simulator.configure(servers=3, job_duration=0.2, boot_seconds=0.2)
    servers = fleet(3)
    rt = verifying_rt(make_rt)
    request_id = accept(rt, servers, health_timeout=1.5)
    _until_job_ends(rt, request_id)
    simulator.set_server(servers[0], status="HARD_REBOOT", task_state="reboot_started_hard")
    # Then it ends unhealthy at its timeout, with the last thing seen; the others pass
    final = run_to_end(rt, request_id)
    shown = servers_of(final)
    assert shown[servers[0]]["status"] == "unhealthy"
    assert shown[servers[0]]["fail_reason"] == (
        "not back within 1.5 s: not back yet: status HARD_REBOOT, task_state reboot_started_hard"
    )
    assert {shown[s]["status"] for s in servers[1:]} == {"succeeded"}


def test_unhealthy_servers_trip_the_failure_brake_like_failed_ones(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # 20 servers in batches of 5, one at a time; batch 0 has two that never come back: 2 of
    # 20 is 10%, above a threshold of 5%, so the brake trips when batch 0 ends
    servers = fleet(20)
    simulator.configure(
        servers=20, job_duration=0.2, boot_seconds=0.2, no_return_servers=servers[:2]
    )
    rt = verifying_rt(make_rt)
    final = run_to_end(rt, accept(rt, servers, batch_size=5, max_in_flight=1, failure_threshold=5))
    assert final["status"] == "halted"
    assert final["reason"].startswith(
        "failure brake: 2 of 20 servers failed, unknown or unhealthy (10.00%)"
    )
    assert [b["status"] for b in final["batches"]] == [
        "partially_failed",
        "cancelled",
        "cancelled",
        "cancelled",
    ]
    assert set(simulator.stats()["reboots"]) == set(servers[:5])


def test_a_canary_with_one_unhealthy_server_halts_the_request(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    servers = fleet(12)
    simulator.configure(
        servers=12, job_duration=0.2, boot_seconds=0.2, no_return_servers=[servers[1]]
    )
    rt = verifying_rt(make_rt)
    final = run_to_end(rt, accept(rt, servers, canary_size=3, batch_size=3))
    assert final["status"] == "halted"
    assert final["reason"].startswith("canary failed: batch 0 ended partially_failed")
    # Nothing but the canary was rebooted
    assert set(simulator.stats()["reboots"]) == set(servers[:3])


def test_max_in_flight_counts_a_batch_until_its_servers_are_back(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Jobs of 0.2 s, boots of 1 s, one batch at a time
    simulator.configure(servers=9, job_duration=0.2, boot_seconds=1.0)
    servers = fleet(9)
    rt = verifying_rt(make_rt)
    request_id = accept(rt, servers, batch_size=3, max_in_flight=1)
    _until_job_ends(rt, request_id)
    # While batch 0 is verifying, a release step (the reconciler's, another request's end)
    # releases nothing of this request
    before = len(sent(rt, "submit"))
    assert release.release_project(PROJECT, rt) == 0
    assert len(sent(rt, "submit")) == before
    final = run_to_end(rt, request_id)
    assert final["status"] == "succeeded"
    # Each batch's POST (its servers' reboots accepted) came after every server of the
    # batch before it was back, by the simulator's own clock
    history = simulator.stats()["servers"]
    waves = [servers[i : i + 3] for i in range(0, 9, 3)]
    for before, after in itertools.pairwise(waves):
        back = max(history[s]["returned"][0] for s in before)
        posted = min(history[s]["reboots"][0] for s in after)
        assert posted >= back, (posted, back)


def test_soak_time_is_kept_between_verified_batches(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=6, job_duration=0.2, boot_seconds=0.2)
    servers = fleet(6)
    rt = verifying_rt(make_rt)
    request_id = accept(rt, servers, batch_size=2, max_in_flight=1, soak_seconds=2)
    _until_job_ends(rt, request_id)
    # When batch 0's servers are back, the batch ends and the request's soak starts
    _until_verified(rt, request_id)
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    wakeups = [e for e in rt.dispatcher.sent if e[0] == "release"]
    assert [e[2] for e in wakeups] == [2.0]
    rt.dispatcher.sent.clear()
    # Then nothing is released during the soak, whoever runs the release step
    assert release.release_project(PROJECT, rt) == 0
    # (the clock moves the soak's way; the simulator's jobs and boots run on the real time,
    # and so do the health timeouts measured from a job's end, hence a short soak)
    clock_of(rt).advance(1)
    assert release.release_project(PROJECT, rt) == 0
    # and the next batch is, once it is over
    clock_of(rt).advance(1)
    assert release.release_project(PROJECT, rt) == 1
    final = run_to_end(rt, request_id)
    assert final["status"] == "succeeded"
    assert final["soak_seconds"] == 2
    assert final["soak_until"] is not None


def test_a_request_may_turn_verification_off(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=6, job_duration=0.2, boot_seconds=30)
    rt = verifying_rt(make_rt)
    final = run_to_end(rt, accept(rt, fleet(6), verify=False))
    # Succeeded when the job did, though the servers are still booting; no list was read
    assert final["status"] == "succeeded"
    assert simulator.stats()["calls"]["servers"]["accepted"] == 0
    assert simulator.stats()["calls"]["server"]["accepted"] == 0


def test_a_list_the_api_refuses_halts_the_request_and_calls_no_server_healthy(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=12, job_duration=0.2, boot_seconds=0.2)
    servers = fleet(12)
    rt = verifying_rt(make_rt)
    request_id = accept(rt, servers, batch_size=6, max_in_flight=1)
    _until_job_ends(rt, request_id)
    simulator.configure(denied_permissions=["bms:servers:list"])
    final = run_to_end(rt, request_id)
    assert final["status"] == "halted"
    assert "bms:servers:list" in final["reason"]
    assert final["servers"]["succeeded"] == 0
    shown = servers_of(final)
    assert {shown[s]["status"] for s in servers[:6]} == {"unknown"}
    assert {shown[s]["status"] for s in servers[6:]} == {"cancelled"}
    assert set(simulator.stats()["reboots"]) == set(servers[:6])


def test_a_check_re_sent_by_the_reconciler_never_doubles_the_chain(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=3, job_duration=0.2, boot_seconds=60)
    rt = verifying_rt(make_rt, reconcile_grace=0.0)
    request_id = accept(rt, fleet(3))
    _until_job_ends(rt, request_id)
    batch_id = _only_batch(rt, request_id)
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    first = [e for e in rt.dispatcher.sent if e[0] == "verify"]
    assert [e.options["seq"] for e in first] == [0]
    # The first check runs, and books the next (seq 1)
    assert verify.verify_batch(batch_id, rt, seq=0) == "waiting"
    # A late duplicate of the first message is stale: it books nothing
    assert verify.verify_batch(batch_id, rt, seq=0) == "stale"
    # The reconciler re-sends an overdue check with the batch's current count
    with unit_of_work(rt.engine) as session:
        session.get_one(Batch, batch_id).next_check_at = rt.now() - dt.timedelta(seconds=5)
    rt.dispatcher.sent.clear()
    done = reconcile.reconcile(rt)
    assert done.get("checks") == 1
    assert [e.options["seq"] for e in rt.dispatcher.sent if e[0] == "verify"] == [1]


def test_a_server_being_verified_is_not_sent_by_another_request(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=4, job_duration=0.2, boot_seconds=60)
    servers = fleet(4)
    rt = verifying_rt(make_rt)
    first = accept(rt, servers[:2])
    _until_job_ends(rt, first)
    second = run_to_end(rt, accept(rt, servers[1:3], verify=False))
    shown = servers_of(second)
    assert shown[servers[1]]["status"] == "skipped"
    assert shown[servers[1]]["fail_reason"] == (
        f"not sent: the server is being verified in request {first}"
    )
    assert simulator.stats()["reboots"][servers[1]] == 1


# --- probes -----------------------------------------------------------------------------------


@pytest.fixture
def http_health() -> Iterator[int]:
    """An HTTP server on 127.0.0.1: ``/ok/...`` answers 200, anything else 500."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path.startswith("/ok/") else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("check", "passes"),
    [
        (lambda port: {"http_url": f"http://{{ip}}:{port}/ok/{{name}}"}, True),
        (lambda port: {"http_url": f"http://{{ip}}:{port}/fail/{{id}}"}, False),
        (lambda port: {"tcp_port": port}, True),
        (lambda port: {"tcp_port": closed_port()}, False),
    ],
    ids=["http_200", "http_500", "tcp_open", "tcp_closed"],
)
def test_a_health_check_that_fails_makes_the_server_unhealthy_one_that_passes_lets_it(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    http_health: int,
    check: Callable[[int], dict[str, Any]],
    passes: bool,
) -> None:
    simulator.configure(servers=2, job_duration=0.2, boot_seconds=0.2)
    servers = fleet(2)
    simulator.set_server(*servers, ip="127.0.0.1")
    rt = verifying_rt(make_rt)
    final = run_to_end(rt, accept(rt, servers, health_check=check(http_health), health_timeout=2))
    shown = servers_of(final)
    if passes:
        assert final["status"] == "succeeded"
    else:
        assert {shown[s]["status"] for s in servers} == {"unhealthy"}
        reason = shown[servers[0]]["fail_reason"]
        assert "back, but its health check fails" in reason
        assert (
            "HTTP http://127.0.0.1" in reason and ": 500" in reason
        ) or "TCP 127.0.0.1" in reason


# --- helpers ----------------------------------------------------------------------------------


def _only_batch(rt: Runtime, request_id: uuid.UUID) -> uuid.UUID:
    from sqlalchemy import select

    with unit_of_work(rt.engine) as session:
        return session.scalars(select(Batch.id).where(Batch.request_id == request_id)).one()


def _until_verified(rt: Runtime, request_id: uuid.UUID) -> None:
    """Play the recorded checks until no batch of the request is verifying (the other
    follow-ups stay recorded)."""
    from sqlalchemy import select

    from tests.fixtures.steps import servers_settled
    from worker.db.models import ServerResult

    assert isinstance(rt.dispatcher, RecordingDispatcher)
    while True:
        with unit_of_work(rt.engine) as session:
            waiting = list(
                session.scalars(
                    select(ServerResult.server_id).where(
                        ServerResult.request_id == request_id,
                        ServerResult.status == "verifying",
                    )
                )
            )
        if not waiting:
            return
        entry = next(e for e in rt.dispatcher.sent if e[0] == "verify")
        rt.dispatcher.sent.remove(entry)
        wait_for(
            lambda waiting=waiting: servers_settled(rt, waiting),  # type: ignore[misc]
            "the servers back at the simulator",
        )
        verify.verify_batch(entry[1], rt, **entry.options)


def _until_job_ends(rt: Runtime, request_id: uuid.UUID, timeout: float = 20) -> dict[str, Any]:
    """Play the recorded follow-ups until every sent batch's job has ended (the checks stay
    recorded)."""
    import time

    from sqlalchemy import select

    from worker.db.status import request_status

    assert isinstance(rt.dispatcher, RecordingDispatcher)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with unit_of_work(rt.engine) as session:
            statuses = list(
                session.scalars(select(Batch.status).where(Batch.request_id == request_id))
            )
        if BatchStatus.VERIFYING in statuses and not {
            BatchStatus.SUBMITTING,
            BatchStatus.SUBMITTED,
        } & set(statuses):
            break
        entry = next((e for e in rt.dispatcher.sent if e[0] != "verify"), None)
        if entry is None:
            time.sleep(0.05)
            continue
        rt.dispatcher.sent.remove(entry)
        time.sleep(min(entry[2], 1.0))
        if entry[0] == "release":
            release.release_project(entry[1], rt)
        elif entry[0] == "submit":
            submit.submit_batch(entry[1], rt)
        elif entry[0] == "poll":
            poll.poll_batch(entry[1], rt, **entry.options)
    else:
        pytest.fail("no batch came to verifying in time")
    assert sent(rt, "verify")
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id, include_servers=True)
    assert status is not None
    return status


def test_a_dry_runs_estimate_counts_each_wave_as_job_time_plus_boot_time() -> None:
    from worker.pipeline.control import plan
    from worker.pipeline.validation import validate_request
    from worker.settings import Settings

    checked = validate_request(
        {
            "request_id": str(uuid.uuid4()),
            "project_id": PROJECT,
            "server_ids": [str(uuid.uuid4()) for _ in range(40)],
            "batch_size": 10,
            "max_in_flight": 2,
        },
        max_servers=100,
    )
    settings = Settings(action_rate_limit=6000, verify=True)
    # 4 batches, 2 at a time: two waves of (job 5 s + boot 60 s)
    estimate = plan(checked, settings, learned=5.0, boot=60.0)["estimate"]
    assert (estimate["boot_s"], estimate["boot_from"]) == (60.0, "the project's recent returns")
    assert 130.0 <= estimate["total_s"] < 131.0
    # Without a learned boot time, the first check's delay stands in; verify off: jobs only
    guessed = plan(checked, settings, learned=5.0)["estimate"]
    assert guessed["boot_s"] == settings.verify_first_delay
    off = plan(checked, Settings(action_rate_limit=6000, verify=False), learned=5.0)["estimate"]
    assert off["boot_s"] is None
    assert 10.0 <= off["total_s"] < 11.0


def test_the_time_to_come_back_is_recorded_where_the_embedded_metrics_live(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # The embedded default keeps its metrics in the audit database itself: a check records
    # them after its own transaction (on SQLite, inside it, it would wait on itself)
    from worker.metrics import DatabaseCounters, Metrics

    simulator.configure(servers=8, job_duration=0.2, boot_seconds=0.3)
    rt = verifying_rt(make_rt)
    store = DatabaseCounters(rt.engine)
    rt.metrics = Metrics(store)
    final = run_to_end(rt, accept(rt, fleet(8)))
    assert final["status"] == "succeeded"
    counts = {k: v for k, v in store.read().items() if "bmsreboot_verify_seconds_count" in k}
    assert list(counts.values()) == [8.0]
