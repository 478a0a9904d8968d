"""The alert gate on a real Prometheus: it scrapes (every second) a metric endpoint of the
test's, whose gauge the test sets and removes; the gate's query reads that gauge. The release
step (on a real audit database and the simulator, follow-ups recorded: tests/fixtures/steps.py)
asks that Prometheus through ``worker.monitoring.PrometheusClient``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.fixtures.monitoring import PrometheusServer
from tests.fixtures.services import free_port
from tests.fixtures.steps import PROJECT, clock_of, ids, sent
from tests.fixtures.waiting import wait_for
from worker.db.session import unit_of_work
from worker.db.status import request_status
from worker.pipeline import intake, release
from worker.pipeline.runtime import RecordingDispatcher, Runtime

QUERY = "bmsreboot_test_trouble > 0"


class Trouble:
    """A metric endpoint of the test's: ``bmsreboot_test_trouble{service}``, set or removed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauge = Gauge(
            "bmsreboot_test_trouble", "Trouble the test makes", ["service"], registry=self.registry
        )
        self.port = free_port()
        self.server, self.thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trouble() -> Iterator[Trouble]:
    endpoint = Trouble()
    try:
        yield endpoint
    finally:
        endpoint.close()


def series(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    answer = prometheus.query(QUERY)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def submit_request(rt: Runtime, **fields: Any) -> uuid.UUID:
    payload = {"request_id": str(uuid.uuid4()), "project_id": PROJECT, "server_ids": ids(2)}
    return intake.accept_request({**payload, "batch_size": 1, **fields}, rt).request_id


def run_release(rt: Runtime) -> None:
    """One release run of the project, as the wake-up at its next check runs it."""
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.sent[:] = [e for e in rt.dispatcher.sent if e[0] != "release"]
    release.release_project(PROJECT, rt)


def status_of(rt: Runtime, request_id: uuid.UUID) -> dict[str, Any]:
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id)
    assert status is not None
    return status


def test_the_gate_holds_while_the_series_exists_and_releases_when_it_goes(
    make_prometheus: Callable[..., PrometheusServer],
    make_rt: Callable[..., Runtime],
    trouble: Trouble,
) -> None:
    # Given a Prometheus that sees trouble in a service
    prometheus = make_prometheus(jobs={"trouble": [trouble.target]}, interval="1s")
    trouble.gauge.labels(service="db").set(1)
    wait_for(lambda: series(prometheus), "Prometheus sees the trouble")
    rt = make_rt(prometheus_url=prometheus.url, gate_query=QUERY, gate_interval=1)
    # When a request is accepted and released
    request_id = submit_request(rt)
    run_release(rt)
    # Then nothing is sent: the gate is closed by that series
    assert sent(rt, "submit") == []
    gate = status_of(rt, request_id)["gate"]
    assert gate["closed_since"] is not None
    assert 'service="db"' in gate["reason"]
    # When the trouble goes away and Prometheus no longer returns it
    trouble.gauge.remove("db")
    wait_for(lambda: not series(prometheus), "Prometheus no longer returns the series")
    # And the request's next check comes
    clock_of(rt).advance(1)
    run_release(rt)
    # Then its batches go and the gate is clear
    assert len(sent(rt, "submit")) == 2
    gate = status_of(rt, request_id)["gate"]
    assert gate["closed_since"] is None
    assert gate["reason"] is None


def test_the_gate_holds_then_halts_when_prometheus_is_stopped(
    make_prometheus: Callable[..., PrometheusServer],
    make_rt: Callable[..., Runtime],
    trouble: Trouble,
) -> None:
    # Given a request held by a series on a real Prometheus, with a gate timeout of a minute
    prometheus = make_prometheus(jobs={"trouble": [trouble.target]}, interval="1s")
    trouble.gauge.labels(service="db").set(1)
    wait_for(lambda: series(prometheus), "Prometheus sees the trouble")
    rt = make_rt(prometheus_url=prometheus.url, gate_query=QUERY, gate_interval=1)
    request_id = submit_request(rt, gate_timeout=60)
    run_release(rt)
    assert status_of(rt, request_id)["gate"]["closed_since"] is not None
    # When that Prometheus stops, and the trouble goes away meanwhile
    prometheus.stop()
    trouble.gauge.remove("db")
    # Then the next check cannot ask it, and the gate stays closed (fail-closed)
    clock_of(rt).advance(1)
    run_release(rt)
    assert sent(rt, "submit") == []
    status = status_of(rt, request_id)
    assert status["status"] == "accepted"
    assert "fail-closed" in status["gate"]["reason"]
    assert "unreachable" in status["gate"]["reason"]
    # And at the first check past the gate timeout, the request is halted with that reason
    clock_of(rt).advance(60)
    run_release(rt)
    status = status_of(rt, request_id)
    assert status["status"] == "halted"
    assert [b["status"] for b in status["batches"]] == ["cancelled", "cancelled"]
    # (61 s on the clock, plus the real time the test took)
    assert re.search(r"alert gate closed for 6\d s, past its timeout of 60 s", status["reason"])
    assert "unreachable" in status["reason"]
    assert sent(rt, "submit") == []
