"""Chaos, with real processes: workers killed with SIGKILL, Redis flushed, PostgreSQL
restarted, API faults, two beats, and the shared budget under two workers.

Every test checks the simulator's own per-server reboot counts, not only the audit database:
no server is rebooted twice except in a batch marked ``unknown``; every server ends with a
final outcome; a succeeded server was rebooted exactly once.

``BMSREBOOT_CHAOS_SCALE`` multiplies the sizes (``scripts/chaos`` runs them larger by hand).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery
from sqlalchemy import Engine, select

from tests.fixtures.pipeline import FAST, new_ids
from tests.fixtures.services import (
    REDIS_HOST,
    REDIS_PORT,
    create_pg_database,
    drop_pg_database,
    require_postgres,
    require_redis,
)
from worker.db.models import Batch, ServerResult
from worker.db.session import make_engine, unit_of_work, upgrade_database
from worker.db.states import TERMINAL_REQUEST_STATES
from worker.db.status import request_status
from worker.pipeline.localworker import kill_worker, start_worker, stop_worker
from worker.simulator.config import DEFAULT_AK, DEFAULT_PROJECT_ID, DEFAULT_SK, SimulatorConfig
from worker.simulator.server import SimulatorServer

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

SCALE = float(os.environ.get("BMSREBOOT_CHAOS_SCALE", "1"))
#: The Redis database these tests own (flushed before and after).
REDIS_DB = 12
ROOT = Path(__file__).resolve().parents[1]


def scaled(n: int) -> int:
    return max(1, int(n * SCALE))


def seconds(n: float) -> float:
    """A time limit, grown with the sizes."""
    return n * max(1.0, SCALE)


@dataclass
class Fleet:
    """A simulator, Redis, a PostgreSQL audit database and any number of worker processes."""

    tmp: Path
    simulator: SimulatorServer
    env: dict[str, str]
    database_url: str
    broker_url: str
    engine: Engine
    app: Celery
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.tmp / "worker.log"

    def start_worker(
        self, *, beat: bool = True, concurrency: int = 2, name: str = "chaos"
    ) -> subprocess.Popen[bytes]:
        proc = start_worker(
            self.env,
            self.log,
            f"{name}-{uuid.uuid4().hex[:6]}",
            concurrency=concurrency,
            beat=beat,
            cwd=ROOT,
        )
        self.workers.append(proc)
        return proc

    def start_beat(self, name: str) -> subprocess.Popen[bytes]:
        """A standalone ``celery -A worker beat`` (its own schedule file)."""
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "beat",
                "--loglevel=INFO",
                f"--schedule={self.tmp / (name + '-schedule')}",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        self.others.append(proc)
        return proc

    def configure(self, **knobs: Any) -> None:
        base = self.simulator.base_url
        requests.post(f"{base}/_simulator/reset", timeout=5).raise_for_status()
        requests.post(f"{base}/_simulator/config", json=knobs, timeout=5).raise_for_status()

    def patch(self, **knobs: Any) -> None:
        """Change simulator knobs without resetting its counters."""
        response = requests.post(
            f"{self.simulator.base_url}/_simulator/config", json=knobs, timeout=5
        )
        response.raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = requests.get(f"{self.simulator.base_url}/_simulator/stats", timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def send(self, servers: list[str], batch_size: int) -> str:
        from worker.pipeline.producer import send_payload

        request_id = str(uuid.uuid4())
        send_payload(
            self.app,
            {
                "request_id": request_id,
                "project_id": DEFAULT_PROJECT_ID,
                "server_ids": servers,
                "batch_size": batch_size,
            },
        )
        return request_id

    def status(self, request_id: str) -> dict[str, Any] | None:
        with unit_of_work(self.engine) as session:
            return request_status(session, uuid.UUID(request_id))

    def wait_recorded(self, request_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.status(request_id) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"request {request_id} never recorded\n{self.tail()}")
            time.sleep(0.1)

    def wait(self, request_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            try:
                status = self.status(request_id)
            except Exception:  # the database may be restarting
                status = None
            if status is not None and status["status"] in TERMINAL_REQUEST_STATES:
                return status
            time.sleep(0.25)
        pytest.fail(
            f"request {request_id} not final after {timeout} s: {_brief(status)}\n{self.tail()}"
        )

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def verify(self, request_id: str) -> dict[str, Any]:
        """The invariants every chaos run must keep, from the simulator's own counts."""
        reboots: dict[str, int] = self.stats()["reboots"]
        with unit_of_work(self.engine) as session:
            rows = session.execute(
                select(ServerResult.server_id, ServerResult.status, Batch.status)
                .join(Batch, Batch.id == ServerResult.batch_id)
                .where(ServerResult.request_id == uuid.UUID(request_id))
            ).all()
        assert rows
        outcomes: dict[str, int] = {}
        for server_id, server_status, batch_status in rows:
            count = reboots.get(server_id, 0)
            outcomes[server_status.value] = outcomes.get(server_status.value, 0) + 1
            assert server_status.value != "pending", f"{server_id} has no final outcome"
            if batch_status.value != "unknown":
                assert count <= 1, f"{server_id} rebooted {count} times in a {batch_status} batch"
            if server_status.value == "succeeded":
                assert count == 1, f"{server_id} succeeded but was rebooted {count} times"
            if server_status.value == "failed" and batch_status.value in ("failed", "rejected"):
                assert count == 0, f"{server_id} failed unsubmitted but was rebooted"
        return outcomes


def _brief(status: dict[str, Any] | None) -> str:
    if status is None:
        return "no status"
    batches: dict[str, int] = {}
    for b in status["batches"]:
        batches[b["status"]] = batches.get(b["status"], 0) + 1
    return f"{status['status']} servers={status['servers']} batches={batches}"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    import redis

    from worker.celery import make_celery_app
    from worker.settings import Settings

    require_redis()
    require_postgres()
    broker_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    redis.Redis.from_url(broker_url).flushdb()
    database_url = create_pg_database()
    upgrade_database(database_url)
    simulator = SimulatorServer(
        SimulatorConfig(job_duration=0.5, action_rate_limit=None, job_rate_limit=None)
    )
    simulator.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMSREBOOT_")}
    env.update(FAST)
    env.update(
        {
            "BMSREBOOT_DATA_DIR": str(tmp_path / "data"),
            "BMSREBOOT_BMS_ENDPOINT": simulator.base_url,
            "BMSREBOOT_BROKER_URL": broker_url,
            "BMSREBOOT_DATABASE_URL": database_url,
            "BMSREBOOT_JOB_DEADLINE": "120",
            "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
            "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
        }
    )
    settings = Settings(
        data_dir=tmp_path / "data", broker_url=broker_url, database_url=database_url
    )
    engine = make_engine(database_url)
    app = make_celery_app(settings)
    fleet = Fleet(tmp_path, simulator, env, database_url, broker_url, engine, app)
    try:
        yield fleet
    finally:
        for proc in fleet.others:
            kill_worker(proc)
        for proc in fleet.workers:
            stop_worker(proc, timeout=5)
            kill_worker(proc)
        app.close()
        engine.dispose()
        simulator.stop()
        redis.Redis.from_url(broker_url).flushdb()
        drop_pg_database(database_url)


def test_workers_killed_three_times_mid_run_lose_nothing_and_reboot_nothing_twice(
    fleet: Fleet,
) -> None:
    # Slow POSTs, so that some kills land inside one
    fleet.configure(job_duration=0.5, latency=0.05)
    servers = new_ids(scaled(20_000))
    worker = fleet.start_worker(concurrency=4)
    started = time.monotonic()
    request_id = fleet.send(servers, batch_size=100)
    fleet.wait_recorded(request_id)
    rng = random.Random()
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 3.0))
        kill_worker(worker)
        worker = fleet.start_worker(concurrency=4)
    status = fleet.wait(request_id, timeout=seconds(180))
    elapsed = time.monotonic() - started
    outcomes = fleet.verify(request_id)
    assert sum(outcomes.values()) == len(servers)
    assert status["servers"]["pending"] == 0
    # Nothing waited for the visibility timeout (an hour): the reconciler re-drove it
    assert elapsed < seconds(180)


def test_a_flushed_broker_is_recovered_by_the_reconciler(fleet: Fleet) -> None:
    import redis

    fleet.configure(job_duration=1.0)
    servers = new_ids(scaled(5_000))
    fleet.start_worker(concurrency=2)
    request_id = fleet.send(servers, batch_size=100)
    fleet.wait_recorded(request_id)
    time.sleep(1.0)
    redis.Redis.from_url(fleet.broker_url).flushdb()
    flushed = time.monotonic()
    status = fleet.wait(request_id, timeout=seconds(120))
    assert status["status"] == "succeeded"
    outcomes = fleet.verify(request_id)
    assert outcomes == {"succeeded": len(servers)}
    assert time.monotonic() - flushed < seconds(120)


def test_postgres_restarted_mid_run_loses_nothing(fleet: Fleet) -> None:
    fleet.configure(job_duration=0.5)
    servers = new_ids(scaled(5_000))
    fleet.start_worker(concurrency=2)
    request_id = fleet.send(servers, batch_size=100)
    fleet.wait_recorded(request_id)
    time.sleep(1.0)
    _restart_postgres(fleet.database_url)
    status = fleet.wait(request_id, timeout=seconds(120))
    outcomes = fleet.verify(request_id)
    assert sum(outcomes.values()) == len(servers)
    # A worker lost mid-POST can leave a batch unknown; nothing else may fail
    assert set(outcomes) <= {"succeeded", "unknown"}
    assert status["servers"]["pending"] == 0


def _restart_postgres(database_url: str) -> None:
    """Terminate every connection to the database, then restart the server itself."""
    import psycopg

    from tests.fixtures.services import PG_HOST, PG_PORT, PG_USER

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=120,
    )


def test_api_faults_give_exact_outcomes_and_dropped_batches_stay_unknown(fleet: Fleet) -> None:
    # 20% of calls 5xx (with the API's body: not accepted), 10% of accepted POSTs answered by
    # a dropped connection, and for a while a 429 storm: the simulator's limit lowered far
    # below what our budget believes.
    fleet.configure(job_duration=0.5, fault_5xx=0.2, drop_after_accept=0.1)
    fleet.env["BMSREBOOT_SUBMIT_MAX_ATTEMPTS"] = "50"
    servers = new_ids(scaled(20_000))
    fleet.start_worker(concurrency=4)
    request_id = fleet.send(servers, batch_size=100)
    fleet.wait_recorded(request_id)
    time.sleep(0.5)
    fleet.patch(action_rate_limit=3)
    time.sleep(3.0)
    fleet.patch(action_rate_limit=None)
    status = fleet.wait(request_id, timeout=seconds(240))
    stats = fleet.stats()
    outcomes = fleet.verify(request_id)
    assert stats["calls"]["action"]["throttled"] > 0
    assert stats["calls"]["action"]["faulted"] > 0
    dropped = stats["calls"]["action"]["dropped"]
    assert dropped > 0
    unknown_batches = [b for b in status["batches"] if b["status"] == "unknown"]
    # Exactly the dropped POSTs are unknown, each rebooted once and never resubmitted
    assert len(unknown_batches) == dropped
    assert outcomes == {
        "succeeded": len(servers) - dropped * 100,
        **({"unknown": dropped * 100} if dropped else {}),
    }
    reboots = stats["reboots"]
    assert sorted(set(reboots.values())) == [1]
    assert len(reboots) == len(servers)


def test_two_beats_at_once_never_double_the_work(fleet: Fleet) -> None:
    fleet.configure(job_duration=0.5)
    fleet.start_beat("beat-a")
    fleet.start_beat("beat-b")
    fleet.start_worker(concurrency=2, beat=False)
    servers = new_ids(scaled(2_000))
    request_id = fleet.send(servers, batch_size=100)
    fleet.wait(request_id, timeout=seconds(120))
    time.sleep(3.0)  # a few more ticks of both beats
    outcomes = fleet.verify(request_id)
    assert outcomes == {"succeeded": len(servers)}
    log = fleet.log.read_text(errors="replace")
    runs = log.count("Task bmsreboot.reconcile[")
    skipped = log.count("{'skipped': 1}")
    # Both beats fired, and for each tick only one run did the work
    assert runs >= 4
    assert skipped >= 1


def test_two_workers_share_the_budget_and_see_no_429(fleet: Fleet) -> None:
    # The simulator enforces 600 POSTs and 300 GETs a minute; our budgets say the same. Sixty
    # jobs of 5 s in flight would want far more than 300 GETs in a minute without the budget.
    fleet.configure(job_duration=5.0, action_rate_limit=600, job_rate_limit=300)
    fleet.env.update(
        {
            "BMSREBOOT_ACTION_RATE_LIMIT": "600",
            "BMSREBOOT_JOB_RATE_LIMIT": "300",
            "BMSREBOOT_POLL_FIRST_DELAY": "4",
            "BMSREBOOT_POLL_MAX_INTERVAL": "2",
        }
    )
    fleet.start_worker(concurrency=4, name="one")
    fleet.start_worker(concurrency=4, name="two")
    servers = new_ids(scaled(3_000))
    request_id = fleet.send(servers, batch_size=50)
    status = fleet.wait(request_id, timeout=seconds(150))
    assert status["status"] == "succeeded"
    stats = fleet.stats()
    assert stats["calls"]["action"]["throttled"] == 0
    assert stats["calls"]["jobs"]["throttled"] == 0
    assert fleet.verify(request_id) == {"succeeded": len(servers)}
