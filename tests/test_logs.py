"""BMSREBOOT_LOG_FORMAT=json: one JSON object a line, with the ids a line names as fields."""

from __future__ import annotations

import json
import logging

import pytest

from tests.fixtures.fleet import Fleet
from tests.fixtures.pipeline import new_ids
from worker.logs import JsonFormatter


def test_a_record_becomes_one_json_object_with_its_ids() -> None:
    record = logging.LogRecord(
        "bmsreboot.pipeline",
        logging.INFO,
        __file__,
        1,
        "batch %s submitted: job %s",
        ("0b8a1f5e-2b4c-4d1e-9f3a-1c2d3e4f5a6b", "2c9eb2c5544cbf6101544f0635672b60"),
        None,
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "INFO"
    assert line["logger"] == "bmsreboot.pipeline"
    assert line["batch_id"] == "0b8a1f5e-2b4c-4d1e-9f3a-1c2d3e4f5a6b"
    assert line["job_id"] == "2c9eb2c5544cbf6101544f0635672b60"
    assert "\n" not in JsonFormatter().format(record)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_a_worker_logs_json_lines_carrying_the_ids(fleet: Fleet) -> None:
    fleet.env["BMSREBOOT_LOG_FORMAT"] = "json"
    fleet.configure(job_duration=0.2)
    fleet.start_worker(concurrency=2)
    request_id = fleet.send(new_ids(3), batch_size=10)
    fleet.wait(request_id, timeout=60)
    lines = [
        json.loads(line) for line in fleet.log.read_text().splitlines() if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert mine, fleet.tail()
    assert any(line.get("batch_id") for line in lines)
    assert any(line.get("task") == "bmsreboot.request_reboot" for line in lines)
