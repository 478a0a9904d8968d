"""A pool child's memory: bounded by replacing the child (``BMSREBOOT_MAX_MEMORY_PER_CHILD``,
Celery's ``worker_max_memory_per_child``) without losing a task, and a diagnostic that names the
allocation sites that grew (``BMSREBOOT_TRACEMALLOC_DIR``, ``worker.diagnostics``)."""

from __future__ import annotations

import json
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.fixtures.fleet import Fleet
from tests.fixtures.pipeline import new_ids
from worker.celery import celery_config
from worker.db.models import DeadLetter
from worker.db.session import unit_of_work
from worker.diagnostics import MemoryTrace
from worker.settings import Settings

#: What a pool child logs as it leaves for the memory bound (``worker.celery``).
REPLACED = re.compile(r"pool process \d+ replaced: its peak RSS of \d+ KiB passed")
#: A task that ended in a pool child, and which child (billiard names them in order).
ENDED = re.compile(r"\[[^]]*/(ForkPoolWorker-\d+)\] Task bmsreboot\.\S+ succeeded")


def test_the_memory_bound_reaches_celery_and_zero_turns_it_off(tmp_path: Path) -> None:
    bounded = celery_config(Settings(data_dir=tmp_path, max_memory_per_child=200_000))
    unbounded = celery_config(Settings(data_dir=tmp_path, max_memory_per_child=0))
    assert bounded["worker_max_memory_per_child"] == 200_000
    assert unbounded["worker_max_memory_per_child"] is None
    assert Settings(data_dir=tmp_path).max_memory_per_child > 0  # bounded by default


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_a_pool_child_past_its_memory_bound_is_replaced_after_its_task_and_loses_nothing(
    fleet: Fleet,
) -> None:
    # Given a worker whose pool children are over their bound after any task (1 KiB)
    fleet.env["BMSREBOOT_MAX_MEMORY_PER_CHILD"] = "1"
    fleet.env["BMSREBOOT_RECONCILE_INTERVAL"] = "30"  # nothing re-drives what a child dropped
    worker = fleet.start_worker(concurrency=2)
    # When a request of two batches runs through it (intake, release, submits, polls)
    request_id = fleet.send(new_ids(4), batch_size=2)
    status = fleet.wait(request_id, timeout=120)
    # Then every server was rebooted once and the request succeeded
    assert status["status"] == "succeeded", status
    assert fleet.verify(request_id) == {"succeeded": 4}
    assert sum(fleet.stats()["reboots"].values()) == 4
    # And each child ran one task and was replaced once it had ended, saying why (intake,
    # the release, the submit sweep and the poll sweep at least: worker.pipeline.sweep)
    ended = ENDED.findall(fleet.log.read_text(errors="replace"))
    assert len(ended) >= 4, fleet.tail()
    assert len(set(ended)) == len(ended), ended
    deadline = time.monotonic() + 30
    while len(REPLACED.findall(fleet.log.read_text(errors="replace"))) < len(ended):
        assert time.monotonic() < deadline, fleet.tail()
        time.sleep(0.2)
    # And nothing was lost with a child: no dead letter, no lost worker, the worker still runs
    assert "WorkerLostError" not in fleet.log.read_text(errors="replace")
    with unit_of_work(fleet.engine) as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0
    assert worker.poll() is None


def _hoard(n: int) -> list[bytes]:
    return [bytes(1000) + str(i).encode() for i in range(n)]


def test_the_memory_trace_reports_the_site_that_grew_since_its_first_report(
    tmp_path: Path,
) -> None:
    was_tracing = tracemalloc.is_tracing()
    trace = MemoryTrace(tmp_path, interval=3600).start()
    try:
        # Given a first report (the baseline)
        first = trace.tick()
        # When this process then holds 2000 new objects of about 1 KB
        hoard = _hoard(2000)
        line = trace.tick()
    finally:
        trace.stop()
        if not was_tracing:
            tracemalloc.stop()
    # Then the next report names where they were allocated, with their size
    top = line["by_traceback"][0]
    assert any(frame.startswith(f"{__file__}:") for frame in top["frames"]), top
    assert top["size_diff_kib"] >= 1900
    assert top["count_diff"] >= 2000
    assert line["by_file"][0]["file"] == __file__
    assert "by_traceback" not in first
    # And both reports are JSON lines in the directory, with the snapshots beside them
    lines = (tmp_path / f"tracemalloc-{trace.pid}.jsonl").read_text().splitlines()
    assert [json.loads(x)["traced_kib"] for x in lines] == [first["traced_kib"], line["traced_kib"]]
    assert tracemalloc.Snapshot.load(str(trace.path("-latest.snap"))).traces
    assert len(hoard) == 2000
