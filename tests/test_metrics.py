"""The metrics exporter during and after a real run: every documented name, parsed with the
Prometheus client's own parser; counters that add up across the worker's processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from tests.fixtures.pipeline import Pipeline, new_ids
from tests.fixtures.services import free_port
from tests.fixtures.waiting import wait_for
from worker.metrics import Collector, DatabaseCounters, Metrics

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

NAMES = {
    "bmsreboot_requests",
    "bmsreboot_servers",
    "bmsreboot_batches_in_flight",
    "bmsreboot_api_calls",
    "bmsreboot_api_throttled",
    "bmsreboot_budget_wait_seconds",
    "bmsreboot_polls_per_job",
    "bmsreboot_detection_delay_seconds",
    "bmsreboot_oldest_unfinished_batch_seconds",
    "bmsreboot_dead_letters",
    "bmsreboot_queue_messages",
}
#: The worker's broker queues (``worker.names.QUEUES``): each has a depth gauge.
QUEUES = {"bmsreboot.intake", "bmsreboot.submit", "bmsreboot.poll", "bmsreboot.webhooks"}


@pytest.fixture
def exporter(pipeline_redis_pg: Pipeline) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "metrics", "--port", str(port)],
        env=pipeline_redis_pg.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def answers() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            return requests.get(url, timeout=2) is not None

        wait_for(answers, "the exporter answering", ignoring=(requests.ConnectionError,))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def scrape(url: str) -> dict[str, Any]:
    text = requests.get(url, timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], name: str, sample_name: str, **labels: str) -> float:
    for s in families[name].samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


def test_the_exporter_serves_every_metric_during_and_after_a_run(
    pipeline_redis_pg: Pipeline, exporter: str
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure(job_duration=1.0)
    before = scrape(exporter)
    assert set(before) >= NAMES
    calls_before = sample(
        before, "bmsreboot_api_calls", "bmsreboot_api_calls_total", route="action", code="200"
    )
    request_id = pipe.send(server_ids=new_ids(30), batch_size=10)
    # During the run: batches in flight are seen
    seen_in_flight = wait_for(
        lambda: sample(
            scrape(exporter), "bmsreboot_batches_in_flight", "bmsreboot_batches_in_flight"
        ),
        "batches in flight in the exporter's answer",
    )
    assert seen_in_flight >= 1
    pipe.wait(request_id)
    after = scrape(exporter)
    calls = sample(
        after, "bmsreboot_api_calls", "bmsreboot_api_calls_total", route="action", code="200"
    )
    assert calls - calls_before == 3  # one POST per batch, counted in the worker's processes
    assert (
        sample(after, "bmsreboot_api_calls", "bmsreboot_api_calls_total", route="job", code="200")
        >= 3
    )
    polls = sample(after, "bmsreboot_polls_per_job", "bmsreboot_polls_per_job_count")
    assert polls >= 3
    assert (
        sample(
            after, "bmsreboot_detection_delay_seconds", "bmsreboot_detection_delay_seconds_count"
        )
        >= 3
    )
    assert (
        sample(after, "bmsreboot_budget_wait_seconds", "bmsreboot_budget_wait_seconds_count") >= 3
    )
    assert sample(after, "bmsreboot_requests", "bmsreboot_requests", status="succeeded") >= 1
    assert sample(after, "bmsreboot_servers", "bmsreboot_servers", status="succeeded") >= 30


def test_the_exporter_counts_the_queues_429s_on_every_route_and_the_reconcilers_last_run(
    pipeline_redis_pg: Pipeline, exporter: str
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure(job_duration=0.3)
    pipe.wait(pipe.send(server_ids=new_ids(5), batch_size=5))
    families = scrape(exporter)
    depth = {s.labels["queue"]: s.value for s in families["bmsreboot_queue_messages"].samples}
    assert set(depth) == QUEUES
    assert all(value >= 0 for value in depth.values()), depth
    throttled = {s.labels["route"] for s in families["bmsreboot_api_throttled"].samples}
    assert {"action", "job", "list", "token"} <= throttled
    # The worker's embedded beat runs the reconciler: the second pass from now began, and so
    # ended, after this moment
    started = time.time()
    pipe.reconciled(passes=2)
    last = sample(
        scrape(exporter),
        "bmsreboot_reconcile_last_run_timestamp_seconds",
        "bmsreboot_reconcile_last_run_timestamp_seconds",
    )
    assert started <= last <= time.time()


def test_a_gauge_set_in_the_audit_database_keeps_its_last_value_and_uncounted_queues_are_left_out(
    engine: Engine,
) -> None:
    # Given the audit database's store (the broker is not Redis)
    store = DatabaseCounters(engine)
    metrics = Metrics(store)
    metrics.api_call("list", 200)
    # When the reconciler's end is set twice, then the second value is the gauge's
    metrics.reconciled(1000.0)
    metrics.reconciled(2000.5)
    collector = Collector(store, engine, lambda: {"bmsreboot.intake": 3, "bmsreboot.poll": None})
    families = {family.name: family for family in collector.collect()}
    (last,) = families["bmsreboot_reconcile_last_run_timestamp_seconds"].samples
    assert last.value == 2000.5
    depth = {s.labels["queue"]: s.value for s in families["bmsreboot_queue_messages"].samples}
    assert depth == {"bmsreboot.intake": 3.0}
    calls = {
        (s.labels["route"], s.labels["code"]): s.value
        for s in families["bmsreboot_api_calls"].samples
    }
    assert calls == {("list", "200"): 1.0}


def test_no_reconciler_run_no_gauge_and_no_queue_callable_no_depth(engine: Engine) -> None:
    families = {f.name for f in Collector(DatabaseCounters(engine), engine).collect()}
    assert "bmsreboot_reconcile_last_run_timestamp_seconds" not in families
    assert "bmsreboot_queue_messages" not in families
