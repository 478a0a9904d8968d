"""The operators' read commands against a real run: list and history."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.pipeline import Pipeline, new_ids
from tests.test_pipeline_cli import bmsreboot

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


def test_list_shows_recent_requests_filtered(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure(job_duration=0.2)
    first = pipe.wait(pipe.send(server_ids=new_ids(3), source="app:list-test"))
    second = pipe.wait(pipe.send(server_ids=new_ids(2), source="app:list-test"))
    run = bmsreboot(pipe, "list", "--source", "app:list-test", "--json")
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    assert [r["request_id"] for r in rows] == [second["request_id"], first["request_id"]]
    assert rows[0]["servers"] == 2
    assert rows[0]["succeeded"] == 2
    filtered = json.loads(
        bmsreboot(pipe, "list", "--status", "rejected", "--since", "1h", "--json").stdout
    )
    assert all(r["status"] == "rejected" for r in filtered)
    human = bmsreboot(pipe, "list", "--limit", "1")
    assert human.returncode == 0
    assert second["request_id"] in human.stdout


def test_history_shows_every_reboot_of_a_server(pipeline_redis_pg: Pipeline) -> None:
    pipe = pipeline_redis_pg
    pipe.configure(job_duration=0.2)
    server = new_ids(1)[0]
    first = pipe.wait(pipe.send(server_ids=[server], source="app:one"))
    second = pipe.wait(pipe.send(server_ids=[server], source="app:two"))
    rows = json.loads(bmsreboot(pipe, "history", server, "--json").stdout)
    assert [(r["request_id"], r["source"], r["status"]) for r in rows] == [
        (second["request_id"], "app:two", "succeeded"),
        (first["request_id"], "app:one", "succeeded"),
    ]
    assert all(r["job_id"] for r in rows)
    empty = bmsreboot(pipe, "history", new_ids(1)[0])
    assert empty.returncode == 0
    assert "no reboot of" in empty.stdout
