"""The operator's commands against a running pipeline: ``bmsreboot submit`` and ``status``,
run as a new user would, in a subprocess with only environment variables for configuration."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.fixtures.pipeline import BASE_SIM, PROJECT, Pipeline, new_ids, worker_env
from tests.fixtures.services import claim_redis_db
from worker.cli.localworker import start_worker, stop_worker
from worker.simulator.server import SimulatorServer

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


#: ``submit --wait`` in these tests gives up well before the subprocess is killed, so that a
#: request that never ends fails with exit code 3 and the CLI's own words, not a silent kill.
WAIT = ("--wait", "--timeout", "90")


def bmsreboot(
    pipe: Pipeline, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**pipe.env, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_submit_wait_json_exits_0_when_every_server_succeeded(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(3)
    run = bmsreboot(pipe, "submit", "--project-id", PROJECT, *servers, *WAIT, "--json")
    assert run.returncode == 0, run.stderr
    final = json.loads(run.stdout)
    assert final["status"] == "succeeded"
    assert final["servers"]["succeeded"] == 3
    assert pipe.stats()["reboots"] == dict.fromkeys(servers, 1)


def test_submit_reads_ids_from_stdin_and_wait_exits_1_on_failures(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    servers = new_ids(4)
    pipe.configure(fail_servers=[servers[0]])
    stdin = "# tonight's hosts\n" + "\n".join(servers) + "\n\n" + servers[1] + "\n"
    run = bmsreboot(
        pipe,
        "submit",
        "--project-id",
        PROJECT,
        "--ids-file",
        "-",
        *WAIT,
        "--json",
        stdin=stdin,
    )
    assert run.returncode == 1, run.stderr
    final = json.loads(run.stdout)
    assert final["status"] == "partially_failed"
    assert final["servers"] == {
        "total": 4,
        "succeeded": 3,
        "failed": 1,
        "unknown": 0,
        "pending": 0,
        "cancelled": 0,
        "skipped": 0,
        "verifying": 0,
        "unhealthy": 0,
    }
    assert "1 duplicate server id(s) removed" in run.stderr


def test_submit_json_prints_the_request_id_and_status_shows_it(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(2)
    run = bmsreboot(
        pipe,
        "submit",
        "--project-id",
        PROJECT,
        *servers,
        "--json",
        "--idempotency-key",
        f"cli-{uuid.uuid4()}",
    )
    assert run.returncode == 0, run.stderr
    sent = json.loads(run.stdout)
    # A worker recorded it within moments: the status it has then, never just "sent"
    assert sent["status"] in ("accepted", "running", "succeeded")
    pipe.wait(sent["request_id"])
    shown = bmsreboot(pipe, "status", sent["request_id"], "--json", "--servers")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["request_id"] == sent["request_id"]
    assert {r["id"] for r in status["server_results"]} == set(servers)
    human = bmsreboot(pipe, "status", sent["request_id"])
    assert "succeeded" in human.stdout


def test_submit_shows_the_reasons_of_an_invalid_request_and_records_it(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    run = bmsreboot(pipe, "submit", "--project-id", "nope", "not-a-server", "--json")
    assert run.returncode == 2
    assert "project_id must be 32 hexadecimal characters" in run.stderr
    assert "1 server id(s) are not UUIDs: 'not-a-server'" in run.stderr
    request_id = json.loads(run.stdout)["request_id"]
    recorded = pipe.wait(request_id)
    assert recorded["status"] == "rejected"
    assert sum(pipe.stats()["calls"]["action"].values()) == 0


def test_status_of_an_unknown_request_says_so(pipeline_redis_pg: Pipeline) -> None:
    run = bmsreboot(pipeline_redis_pg, "status", str(uuid.uuid4()))
    assert run.returncode == 1
    assert "no request" in run.stderr


def test_submit_says_sent_and_how_to_start_a_worker_when_none_records_it(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    # A broker database no worker consumes
    with claim_redis_db() as idle:
        env = dict(pipe.env, BMSREBOOT_BROKER_URL=idle)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "worker",
                "submit",
                "--project-id",
                PROJECT,
                *new_ids(2),
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "sent"
    assert "no worker has recorded request" in run.stderr
    assert "celery -A worker worker -B" in run.stderr


def test_submit_wait_shows_progress_and_ends_within_its_timeout(
    pipeline_redis_pg: Pipeline,
) -> None:
    # Given servers whose job runs until the batch's deadline (6 s in the tests' clocks)
    pipe = pipeline_redis_pg
    servers = new_ids(2)
    pipe.configure(stuck_servers=servers)
    # When
    started = time.monotonic()
    run = bmsreboot(pipe, "submit", "--project-id", PROJECT, *servers, "--wait", "--timeout", "3")
    elapsed = time.monotonic() - started
    # Then it showed the request's progress, and gave up at its timeout
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert any(line.startswith("running: batches 0/1 done, 1 in flight") for line in lines), lines
    assert lines[-1].startswith("Error: gave up waiting for request ")
    assert "after 3 s (--timeout); it goes on: bmsreboot watch " in lines[-1]
    assert elapsed < 3 + 4.5  # the interpreter's start, not another wait


def test_submit_wait_on_a_new_data_dir_waits_for_a_worker_and_succeeds_once_one_runs(
    tmp_path: Path,
) -> None:
    # Given a data dir no worker has created, and the simulator
    data_dir = tmp_path / "new" / "data"
    with SimulatorServer(BASE_SIM) as simulator:
        env = worker_env(data_dir, simulator.base_url, None, None)
        # When a request is submitted and followed before any worker runs
        servers = new_ids(3)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "submit",
                "--project-id",
                PROJECT,
                *servers,
                "--wait",
                "--timeout",
                "150",
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        worker = None
        try:
            assert proc.stderr is not None
            # Then it says that it waits for a worker
            notice = proc.stderr.readline()
            while "no worker has recorded request" not in notice:
                assert notice, "submit --wait ended without saying it waits for a worker"
                assert "Traceback" not in notice
                notice = proc.stderr.readline()
            assert "celery -A worker worker -B (still waiting)" in notice
            # And once a worker runs, the request is carried out
            worker = start_worker(
                env, tmp_path / "worker.log", f"test-{uuid.uuid4().hex[:8]}", cwd=ROOT
            )
            out, errors = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait()
            if worker is not None:
                stop_worker(worker)
        assert proc.returncode == 0, errors
        assert json.loads(out)["status"] == "succeeded"
        stats = requests.get(f"{simulator.base_url}/_simulator/stats", timeout=10).json()
        assert stats["reboots"] == dict.fromkeys(servers, 1)


def test_submit_with_a_key_already_used_for_other_servers_exits_2_and_reboots_nothing(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    key = f"nightly-{uuid.uuid4().hex[:8]}"
    first_servers, other_servers = new_ids(2), new_ids(2)
    # Given a request under a key
    first = bmsreboot(
        pipe,
        "submit",
        "--project-id",
        PROJECT,
        *first_servers,
        "--idempotency-key",
        key,
        *WAIT,
        "--json",
    )
    assert first.returncode == 0, first.stderr
    existing = json.loads(first.stdout)["request_id"]
    # When the same key is used for other servers
    run = bmsreboot(
        pipe, "submit", "--project-id", PROJECT, *other_servers, "--idempotency-key", key, "--json"
    )
    # Then the command fails naming the request that holds the key and what differs
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"Error: idempotency key '{key}' is already used by request {existing} with other "
        "servers: nothing was sent for this one (use another key, or the same request to "
        "follow that one)"
    )
    shown = json.loads(run.stdout)
    assert (shown["status"], shown["conflicts_with"]) == ("rejected", existing)
    # And the worker records the refusal under the id the command printed; nothing rebooted
    assert pipe.wait(shown["request_id"])["status"] == "rejected"
    assert set(pipe.stats()["reboots"]) == set(first_servers)


def test_submit_by_tags_shows_in_a_dry_run_what_the_selector_names_now(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure(servers=30)
    run = bmsreboot(
        pipe,
        "submit",
        "--project-id",
        PROJECT,
        "--tag",
        "env=prod",
        "--tag",
        "role=db",
        "--dry-run",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    # The odd servers of 30 that are every fifth: 5, 15, 25
    assert (plan["servers"], plan["selector"]) == (3, {"tags": ["env=prod", "role=db"]})
    assert sum(pipe.stats()["calls"]["action"].values()) == 0


def test_submit_by_name_reboots_the_servers_it_names(pipeline_redis_pg: Pipeline) -> None:
    from worker.simulator.inventory import server_id

    pipe = pipeline_redis_pg
    pipe.configure(servers=30)
    run = bmsreboot(pipe, "submit", "--project-id", PROJECT, "--name", "bms-0002", *WAIT, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["servers"]["succeeded"] == 10
    assert set(pipe.stats()["reboots"]) == {server_id(PROJECT, i) for i in range(20, 30)}


def test_submit_wants_ids_or_a_selector_and_not_both(pipeline_redis_pg: Pipeline) -> None:
    for args in ([], [str(uuid.uuid4()), "--tag", "env=prod"]):
        run = bmsreboot(pipeline_redis_pg, "submit", "--project-id", PROJECT, *args)
        assert run.returncode == 2
        assert "give server ids as arguments, with --ids-file, or by a selector" in run.stderr
        assert "Traceback" not in run.stderr


def test_a_dry_run_shows_the_gate_and_the_silences_the_flags_ask_for(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    # An Alertmanager is configured (the dry run calls nothing): batches would be silenced
    env = {"BMSREBOOT_ALERTMANAGER_URL": "http://127.0.0.1:9"}
    args = ("submit", "--project-id", PROJECT, *new_ids(2), "--dry-run")
    gated = (
        "--gate-query",
        'ALERTS{alertstate="firing"}',
        "--gate-exclude",
        "NodeDown|TargetDown",
        "--gate-timeout",
        "600",
    )
    plan = json.loads(bmsreboot(pipe, *args, *gated, "--json", env=env).stdout)
    assert plan["policy"]["gate"] == {
        "query": 'ALERTS{alertstate="firing"}',
        "exclude": "NodeDown|TargetDown",
        "timeout": 600.0,
    }
    assert plan["policy"]["silence"] is True
    text = bmsreboot(pipe, *args, *gated, env=env).stdout
    assert (
        'gate: ALERTS{alertstate="firing"} (alertnames NodeDown|TargetDown left out); '
        "halts after 600 s closed"
    ) in text
    # No gate asked for and no Prometheus configured: none; --no-silence: none
    plain = json.loads(bmsreboot(pipe, *args, "--no-silence", "--json", env=env).stdout)
    assert (plain["policy"]["gate"], plain["policy"]["silence"]) == (None, False)
    # A gate_exclude that is not a regular expression: the dry run says why
    bad = bmsreboot(pipe, *args, "--gate-query", "up == 0", "--gate-exclude", "(", "--json")
    assert "gate_exclude" in bad.stdout + bad.stderr


def test_submit_carries_the_verification_policy_and_a_dry_run_shows_it(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(4)
    args = ("submit", "--project-id", PROJECT, *servers, "--dry-run", "--json")
    run = bmsreboot(
        pipe,
        *args,
        "--tcp-check",
        "22",
        "--health-timeout",
        "600",
        "--soak",
        "30",
        "--max-in-flight",
        "1",
        "--batch-size",
        "2",
    )
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    policy = plan["policy"]
    assert (policy["health_check"], policy["health_timeout"], policy["soak_seconds"]) == (
        {"tcp_port": 22},
        600.0,
        30.0,
    )
    # The tests' workers run with BMSREBOOT_VERIFY=false: the dry run says what would happen
    assert policy["verify"] is False
    assert plan["estimate"]["boot_s"] is None
    off = json.loads(bmsreboot(pipe, *args, "--no-verify").stdout)
    assert off["policy"]["verify"] is False
    both = bmsreboot(pipe, *args, "--tcp-check", "22", "--http-check", "http://{ip}/")
    assert both.returncode == 2
    assert "give --tcp-check or --http-check, not both" in both.stderr


def test_submit_no_verify_no_silence_and_a_probe_reach_the_recorded_request(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    pipe.configure()
    servers = new_ids(2)
    run = bmsreboot(
        pipe,
        "submit",
        "--project-id",
        PROJECT,
        *servers,
        "--no-verify",
        "--no-silence",
        "--http-check",
        "http://{ip}:9100/-/healthy",
        "--soak",
        "5",
        *WAIT,
        "--json",
    )
    assert run.returncode == 0, run.stderr
    final = json.loads(run.stdout)
    assert final["verify"] is False
    assert final["health_check"] == {"http_url": "http://{ip}:9100/-/healthy"}
    assert final["soak_seconds"] == 5.0
    assert final["silence"] is False
    shown = bmsreboot(pipe, "status", final["request_id"])
    assert "silences: off" in shown.stdout
    assert "verification: off, HTTP check http://{ip}:9100/-/healthy, soak 5 s between" in (
        shown.stdout
    )
