"""bmsreboot watch (live progress to the end, exit codes as submit --wait) and bmsreboot schema
(the intake message's JSON Schema, from the one model whose fields validation uses)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from tests.fixtures.pipeline import PROJECT, Pipeline, new_ids
from tests.test_pipeline_cli import bmsreboot


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.parametrize(
    ("failing", "code", "final"), [(0, 0, "succeeded"), (1, 1, "partially_failed")]
)
def test_watch_follows_a_request_to_its_end(
    pipeline_redis_pg: Pipeline, failing: int, code: int, final: str
) -> None:
    pipe = pipeline_redis_pg
    servers = new_ids(20)
    pipe.configure(job_duration=0.5, fail_servers=servers[:failing])
    request_id = pipe.send(server_ids=servers, batch_size=5)
    run = bmsreboot(pipe, "watch", request_id, "--interval", "0.2", "--timeout", "60")
    assert run.returncode == code, run.stderr
    assert final in run.stdout
    assert pipe.status(request_id)["status"] == final  # type: ignore[index]


def test_schema_is_the_json_schema_of_the_intake_message() -> None:
    from worker.pipeline.message import RebootRequestMessage
    from worker.pipeline.producer import PACK_ABOVE, build_payload
    from worker.pipeline.validation import KNOWN_FIELDS

    run = subprocess.run(
        [sys.executable, "-m", "worker", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    schema = json.loads(run.stdout)
    assert set(schema["properties"]) == KNOWN_FIELDS
    assert schema["required"] == ["project_id"]
    assert schema["allOf"] == [
        {
            "oneOf": [
                {"required": ["server_ids"]},
                {"required": ["server_ids_packed"]},
                {"required": ["selector"]},
            ]
        },
        {"anyOf": [{"required": ["request_id"]}, {"required": ["idempotency_key"]}]},
    ]
    assert schema["additionalProperties"] is False
    # What the producer API builds is a valid message
    payload = build_payload(PROJECT, new_ids(2), batch_size=10, max_in_flight=2, not_after="2h")
    RebootRequestMessage.model_validate(payload)
    # ... also when it packs the ids of a large request
    packed = build_payload(PROJECT, new_ids(PACK_ABOVE + 1))
    assert "server_ids" not in packed
    RebootRequestMessage.model_validate(packed)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_watch_piped_prints_a_line_each_time_the_request_changes(
    pipeline_redis_pg: Pipeline,
) -> None:
    # Given a request whose job runs until the batch's deadline (6 s in the tests' clocks)
    pipe = pipeline_redis_pg
    servers = new_ids(2)
    pipe.configure(stuck_servers=servers)
    request_id = pipe.send(server_ids=servers)
    # When it is watched through a pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "watch", request_id, "--interval", "0.2"],
        env=pipe.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        # Then the first line comes while the request still runs, not at its end
        assert proc.poll() is None, first
        rest, errors = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1, errors
    progress = [first.rstrip("\n"), *rest.split(f"request {request_id}", 1)[0].splitlines()]
    assert all(": batches " in line for line in progress), progress
    assert all(a != b for a, b in itertools.pairwise(progress)), progress
    assert progress[-1].startswith(pipe.status(request_id)["status"] + ": batches 1/1 done")  # type: ignore[index]
    assert any(line.startswith("running: batches 0/1 done, 1 in flight") for line in progress)
