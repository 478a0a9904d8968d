"""Every phase of a request announced by real worker processes (Redis, PostgreSQL, the
simulator over HTTP, embedded beat for the reconciler) to a receiver that verifies each
delivery with the ``standardwebhooks`` library, and to an Apprise ``json://`` chat target.

The pipeline makes its own calls here (``announce`` where a state changes, the deliveries
after the commit, ``redeliver_lost`` from the reconciler); the test only sends requests."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine

from tests.fixtures.pipeline import PROJECT, worker_env
from tests.fixtures.receiver import Receiver, new_secret
from tests.fixtures.services import (
    claim_redis_db,
    create_pg_database,
    drop_pg_database,
    require_postgres,
)
from tests.test_webhooks_worker import HOOK_ENV
from worker.cli.localworker import kill_worker, start_worker, stop_worker
from worker.db.session import make_engine, unit_of_work, upgrade_database
from worker.db.status import request_status
from worker.pipeline.producer import send_payload
from worker.settings import Settings
from worker.simulator.config import SimulatorConfig
from worker.simulator.inventory import server_id
from worker.simulator.server import SimulatorServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stage:
    tmp: Path
    env: dict[str, str]
    simulator: SimulatorServer
    app: Celery
    engine: Engine
    secret: str
    chat: Receiver
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.tmp / "worker.log"

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = start_worker(self.env, self.log, f"wh-{uuid.uuid4().hex[:6]}", cwd=ROOT)
        self.workers.append(proc)
        return proc

    def configure(self, **knobs: Any) -> None:
        self.simulator.state.configure(
            {
                "job_duration": 0.2,
                "fail_servers": [],
                "no_return_servers": [],
                "servers": 0,
                "boot_seconds": 0.0,
                **knobs,
            }
        )

    def send(self, **payload: Any) -> uuid.UUID:
        payload.setdefault("request_id", str(uuid.uuid4()))
        payload.setdefault("project_id", PROJECT)
        send_payload(self.app, payload)
        return uuid.UUID(payload["request_id"])

    def status(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        with unit_of_work(self.engine) as session:
            return request_status(session, request_id)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.1)
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{what}: not within {timeout} s\n{tail}")


def of(receiver: Receiver, request_id: uuid.UUID) -> list[dict[str, Any]]:
    """The request's events the receiver answered 2xx, in the order they came."""
    return [e for e in receiver.accepted() if e["subject"] == str(request_id)]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("bmsreboot.") for e in events]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    from worker.celery import make_celery_app

    require_postgres()
    tmp = tmp_path_factory.mktemp("webhooks-pipeline")
    secret = new_secret()
    with contextlib.ExitStack() as stack, claim_redis_db() as broker_url:
        database_url = create_pg_database()
        stack.callback(drop_pg_database, database_url)
        upgrade_database(database_url)
        simulator = SimulatorServer(SimulatorConfig(job_duration=0.2))
        simulator.start()
        stack.callback(simulator.stop)
        chat = stack.enter_context(Receiver(secret))
        env = worker_env(tmp / "data", simulator.base_url, broker_url, database_url)
        env.update(HOOK_ENV)
        env["BMSREBOOT_WEBHOOK_SECRET"] = secret
        env["BMSREBOOT_NOTIFY_APPRISE"] = f"json://127.0.0.1:{chat.port}/chat"
        # A killed worker's embedded beat is replaced soon (its lock runs out).
        env["BMSREBOOT_BEAT_LOCK_TIMEOUT"] = "6"
        settings = Settings(data_dir=tmp / "data", broker_url=broker_url, database_url=database_url)
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        app = make_celery_app(settings)
        stack.callback(app.close)
        stage = Stage(tmp, env, simulator, app, engine, secret, chat)
        try:
            yield stage
        finally:
            for proc in stage.workers:
                stop_worker(proc, timeout=10)


@pytest.fixture
def worker(stage: Stage) -> Iterator[subprocess.Popen[bytes]]:
    proc = stage.start_worker()
    try:
        yield proc
    finally:
        stop_worker(proc, timeout=10)


def test_every_phase_reaches_a_receiver_that_fails_twice_signed_and_in_order(
    stage: Stage, worker: subprocess.Popen[bytes]
) -> None:
    # Given a receiver that answers 500 to the first two attempts of each event, and a
    # request of two batches with verification, one server of which never comes back
    servers = [server_id(PROJECT, i) for i in range(1, 5)]
    stage.configure(servers=4, boot_seconds=0.2, no_return_servers=[servers[3]])
    with Receiver(stage.secret, fail_first=2) as receiver:
        request_id = stage.send(
            server_ids=servers,
            batch_size=2,
            max_in_flight=1,
            verify=True,
            notify_url=receiver.url(),
        )
        # When it runs to its end
        stage.wait(
            "the request.finished event delivered",
            lambda: "request.finished" in kinds(of(receiver, request_id)),
        )
        events = of(receiver, request_id)
    # Then every phase came, each event once answered 2xx, in the order of its time
    assert kinds(events) == [
        "request.accepted",
        "batch.ended",
        "server.unhealthy",
        "batch.ended",
        "request.finished",
    ]
    times = [e["time"] for e in events]
    assert times == sorted(times)
    # And each was tried three times, every attempt validly signed (the library verified it)
    attempts = [
        r for r in receiver.webhooks() if r.headers["webhook-id"] in {e["id"] for e in events}
    ]
    assert len(attempts) == 3 * len(events)
    assert all(r.error is None and r.event is not None for r in attempts)
    assert events[2]["data"]["server_id"] == servers[3]
    assert events[-1]["data"]["status"] == "partially_failed"
    assert events[-1]["data"]["notify_url"] == receiver.url()
    # And the chat target gets the one-line messages of the chat types
    unhealthy = f"bmsreboot: server {servers[3]} unhealthy after its reboot in request {request_id}"
    finished = f"bmsreboot: request {request_id} finished partially_failed: 3 succeeded"

    def lines() -> list[str]:
        return [c["message"] for c in stage.chat.chats() if str(request_id) in c["message"]]

    stage.wait(
        "the chat lines",
        lambda: (
            any(x.startswith(unhealthy) for x in lines())
            and any(x.startswith(finished) for x in lines())
        ),
    )


def test_a_halted_request_and_a_rejected_one_announce_it(
    stage: Stage, worker: subprocess.Popen[bytes]
) -> None:
    # Given a request whose first batch has a failing server, over a failure threshold, and
    # a request that cannot be accepted
    servers = [str(uuid.uuid4()) for _ in range(4)]
    stage.configure(fail_servers=[servers[0]])
    with Receiver(stage.secret) as receiver:
        halted = stage.send(
            server_ids=servers,
            batch_size=2,
            max_in_flight=1,
            failure_threshold=10,
            notify_url=receiver.url(),
        )
        rejected = stage.send(server_ids=["not-a-uuid"], notify_url=receiver.url("/other"))
        stage.wait(
            "both announced",
            lambda: "request.finished" in kinds(of(receiver, halted)) and of(receiver, rejected),
        )
        # Then the halted one said so, with why, before it finished halted
        assert kinds(of(receiver, halted)) == [
            "request.accepted",
            "batch.ended",
            "request.halted",
            "request.finished",
        ]
        assert of(receiver, halted)[2]["data"]["reason"].startswith("failure brake: 1 of 4")
        # And the rejected one, at its own URL, why it was refused
        (refusal,) = of(receiver, rejected)
        assert refusal["type"] == "bmsreboot.request.rejected"
        assert refusal["data"]["rejection_reasons"]
        assert {
            r.path for r in receiver.webhooks() if r.event and r.event["subject"] == str(rejected)
        } == {"/other"}
    # And the chat target got the halt as one line
    expected = f"bmsreboot: request {halted} halted: failure brake: 1 of 4"
    stage.wait(
        "the halt in the chat",
        lambda: any(c["message"].startswith(expected) for c in stage.chat.chats()),
    )


def test_kill_9_of_the_worker_before_its_delivery_completes_loses_no_event(
    stage: Stage,
) -> None:
    # Given a worker delivering a request's first event to a receiver that holds it open
    stage.configure()
    with Receiver(stage.secret, hold=True) as receiver:
        first = stage.start_worker()
        request_id = stage.send(server_ids=[str(uuid.uuid4())], notify_url=receiver.url())
        assert receiver.arrived.wait(30), "the worker never POSTed"
        # When the worker is killed with SIGKILL (its messages die with it: acks late, they
        # come back only after the broker's visibility timeout)
        kill_worker(first)
        receiver.hold = False
        receiver.release.set()
        # Then another worker's reconciler re-drives what was lost, and every event arrives
        second = stage.start_worker()
        try:
            stage.wait(
                "the request.finished event delivered",
                lambda: "request.finished" in kinds(of(receiver, request_id)),
                timeout=90,
            )
        finally:
            stop_worker(second, timeout=10)
        got = kinds(of(receiver, request_id))
        assert set(got) == {"request.accepted", "batch.ended", "request.finished"}
        assert got[-1] == "request.finished"
        status = stage.status(request_id)
        assert status is not None
        assert status["status"] == "succeeded"
