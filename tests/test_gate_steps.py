"""The alert gate before each wave, step by step: the release step on a real audit database and
the simulator, with the Prometheus query replaced by a function of the test's (the gate on a
real Prometheus is tests/test_gate.py)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.engine import Engine

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import PROJECT, accept, clock_of, ids, run_to_end, sent
from worker.db.overdue import projects_with_overdue_releases
from worker.db.session import unit_of_work
from worker.db.status import request_status
from worker.metrics import Collector, DatabaseCounters
from worker.monitoring import MonitoringUnreachable, Series
from worker.pipeline import intake, release
from worker.pipeline.runtime import RecordingDispatcher, Runtime, Sent

PROMETHEUS = "http://prometheus.invalid:9090"
ALERTS = 'ALERTS{alertstate="firing",severity="critical"}'


class FakePrometheus:
    """Answers every query with ``series`` (or raises ``error``), and records the queries."""

    def __init__(self) -> None:
        self.series: list[Series] = []
        self.error: Exception | None = None
        self.queries: list[str] = []

    def __call__(self, expr: str) -> list[Series]:
        self.queries.append(expr)
        if self.error is not None:
            raise self.error
        return list(self.series)

    def fire(self, alertname: str, **labels: str) -> None:
        self.series.append(
            Series(
                labels={"__name__": "ALERTS", "alertname": alertname, **labels},
                value=1.0,
                timestamp=0.0,
            )
        )


def gated_rt(
    make_rt: Callable[..., Runtime], **overrides: object
) -> tuple[Runtime, FakePrometheus]:
    rt = make_rt(prometheus_url=PROMETHEUS, **overrides)
    fake = FakePrometheus()
    rt.prometheus = fake
    return rt, fake


def submit_request(rt: Runtime, servers: list[str], **fields: object) -> uuid.UUID:
    """Intake only: the release step it asks for stays recorded (``release_once`` plays it)."""
    payload = {"request_id": str(uuid.uuid4()), "project_id": PROJECT, "server_ids": servers}
    return intake.accept_request({**payload, **fields}, rt).request_id


def release_once(rt: Runtime) -> list[Sent]:
    """Play the release steps recorded so far, once each, as if each were due now; return the
    release wake-ups they recorded (not played: they are due later)."""
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    due = [e for e in rt.dispatcher.sent if e[0] == "release"]
    for entry in due:
        rt.dispatcher.sent.remove(entry)
        release.release_project(entry[1], rt)
    return [e for e in rt.dispatcher.sent if e[0] == "release"]


def status_of(rt: Runtime, request_id: uuid.UUID) -> dict[str, object]:
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id)
    assert status is not None
    return status


def gated_gauge(engine: Engine) -> float:
    for family in Collector(DatabaseCounters(engine), engine).collect():
        if family.name == "bmsreboot_requests_gated":
            return float(family.samples[0].value)
    raise AssertionError("no bmsreboot_requests_gated")


def test_an_open_gate_releases_the_batches_after_one_query_a_run(
    make_rt: Callable[..., Runtime],
) -> None:
    # Given a Prometheus that returns no series
    rt, fake = gated_rt(make_rt)
    # When a request of three batches is accepted and released
    request_id = accept(rt, ids(3), batch_size=1)
    # Then every batch goes, after one query of the deployment's expression
    assert len(sent(rt, "submit")) == 3
    assert fake.queries == [ALERTS]
    gate = status_of(rt, request_id)["gate"]
    assert gate == {
        "query": ALERTS,
        "exclude": None,
        "timeout": 3600.0,
        "closed_since": None,
        "reason": None,
        "next_check_at": None,
    }


def test_no_prometheus_configured_means_no_gate(make_rt: Callable[..., Runtime]) -> None:
    rt = make_rt()
    request_id = accept(rt, ids(2), batch_size=1)
    assert len(sent(rt, "submit")) == 2
    assert status_of(rt, request_id)["gate"] is None


def test_a_firing_alert_holds_the_request_until_its_next_check(
    make_rt: Callable[..., Runtime], engine: Engine
) -> None:
    # Given a critical alert firing
    rt, fake = gated_rt(make_rt, gate_interval=30)
    fake.fire("DiskFull", instance="db-1")
    # When a request is accepted and its release step runs
    request_id = submit_request(rt, ids(2), batch_size=1)
    wakes = release_once(rt)
    # Then nothing is sent; the gate says why and when it looks again
    assert sent(rt, "submit") == []
    gate = status_of(rt, request_id)["gate"]
    assert isinstance(gate, dict)
    assert gate["closed_since"] is not None
    assert 'alertname="DiskFull"' in gate["reason"]
    assert 'instance="db-1"' in gate["reason"]
    assert gate["next_check_at"] is not None
    assert gated_gauge(engine) == 1.0
    # And the release step wakes again at the interval
    assert [(kind, item) for kind, item, _ in wakes] == [("release", PROJECT)]
    assert 29.0 <= wakes[0][2] <= 30.0


def test_an_excluded_alertname_does_not_close_the_gate(make_rt: Callable[..., Runtime]) -> None:
    # Given only the alert a reboot causes is firing, and the request excludes it
    rt, fake = gated_rt(make_rt)
    fake.fire("NodeDown", instance="bms-7")
    # When the request is accepted
    accept(rt, ids(2), batch_size=1, gate_exclude="NodeDown|InstanceDown")
    # Then its batches go
    assert len(sent(rt, "submit")) == 2


def test_the_exclusion_matches_the_whole_alertname(make_rt: Callable[..., Runtime]) -> None:
    rt, fake = gated_rt(make_rt)
    fake.fire("NodeDownForLong")
    accept(rt, ids(1), gate_exclude="NodeDown")
    assert sent(rt, "submit") == []


def test_an_unreachable_prometheus_closes_the_gate(make_rt: Callable[..., Runtime]) -> None:
    # Given a Prometheus that does not answer
    rt, fake = gated_rt(make_rt)
    fake.error = MonitoringUnreachable(
        f"Prometheus query {ALERTS!r}: {PROMETHEUS}/api/v1/query is unreachable",
        PROMETHEUS,
    )
    # When a request is accepted
    request_id = accept(rt, ids(1))
    # Then nothing is sent, and the reason says so (fail-closed)
    assert sent(rt, "submit") == []
    gate = status_of(rt, request_id)["gate"]
    assert isinstance(gate, dict)
    assert "fail-closed" in gate["reason"]
    assert "unreachable" in gate["reason"]


def test_a_request_of_its_own_query_is_held_when_no_prometheus_is_configured(
    make_rt: Callable[..., Runtime],
) -> None:
    rt = make_rt()
    request_id = accept(rt, ids(1), gate_query="up == 0")
    assert sent(rt, "submit") == []
    gate = status_of(rt, request_id)["gate"]
    assert isinstance(gate, dict)
    assert "BMSREBOOT_PROMETHEUS_URL is not set" in gate["reason"]


def test_a_held_request_is_released_at_its_next_check_once_the_alert_is_gone(
    make_rt: Callable[..., Runtime], engine: Engine
) -> None:
    # Given a request held by a firing alert
    rt, fake = gated_rt(make_rt, gate_interval=30)
    fake.fire("DiskFull")
    request_id = submit_request(rt, ids(2), batch_size=1)
    (wake,) = release_once(rt)
    rt.dispatcher.sent.remove(wake)  # type: ignore[attr-defined]  # played when it is due
    assert sent(rt, "submit") == []
    # When the alert resolves
    fake.series.clear()
    # Then the reconciler does not take the held request for lost before its check is due
    # (it looks for work overdue since before now - grace)
    with unit_of_work(engine) as session:
        before_check = projects_with_overdue_releases(session, rt.now() + timedelta(seconds=29))
        after_check = projects_with_overdue_releases(session, rt.now() + timedelta(seconds=31))
    assert before_check == []
    assert after_check == [PROJECT]
    # And a release step that runs before the check (another batch ended, say) neither asks
    # Prometheus nor sends anything
    rt.dispatcher.release(PROJECT)
    release_once(rt)
    assert sent(rt, "submit") == []
    assert len(fake.queries) == 1
    # When the wake-up comes, at the check
    clock_of(rt).advance(wake[2])
    release.release_project(wake[1], rt)
    # Then the gate is judged again, found open and cleared, and the batches go
    assert len(fake.queries) == 2
    assert len(sent(rt, "submit")) == 2
    gate = status_of(rt, request_id)["gate"]
    assert isinstance(gate, dict)
    assert gate["closed_since"] is None
    assert gate["reason"] is None
    assert gate["next_check_at"] is None
    assert gated_gauge(engine) == 0.0


def test_a_gate_closed_past_its_timeout_halts_the_request_and_follows_what_was_sent(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a request of three batches, one at a time, whose gate is open for the first
    simulator.configure(job_duration=0.2)
    rt, fake = gated_rt(make_rt, gate_interval=30)
    request_id = accept(rt, ids(3), batch_size=1, max_in_flight=1, gate_timeout=90)
    assert len(sent(rt, "submit")) == 1
    # When an alert fires while batch 0 reboots, and never resolves
    fake.fire("DiskFull")
    status = run_to_end(rt, request_id)
    # Then batch 0 is followed to its end, the others are never sent, and the request is
    # halted with the gate's reason once it has been closed for 90 s (checks at 0, 30, 60, 90)
    assert status["status"] == "halted"
    assert [b["status"] for b in status["batches"]] == ["succeeded", "cancelled", "cancelled"]
    assert re.search(r"alert gate closed for 9\d s, past its timeout of 90 s", status["reason"])
    assert 'alertname="DiskFull"' in status["reason"]
    assert len(fake.queries) == 1 + 4
    assert simulator.stats()["calls"]["action"]["accepted"] == 1
