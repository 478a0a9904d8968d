"""No password where Celery shows its configuration, and no Flower page without auth.

Real processes: a ``redis-server`` of this module's own with ``requirepass``, a real worker on
it (its broker URL, and so celery-redbeat's ``redbeat_redis_url``, hold the password), ``celery
inspect`` against it, and Flower started as the README's production section runs it (on
127.0.0.1, ``FLOWER_BASIC_AUTH`` from the environment). Every check of a page or a reply first
sees the setting that would carry the password (masked), so a missing configuration cannot
pass for a censored one.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from celery import Celery

from tests.fixtures.compose import healthcheck
from tests.fixtures.pipeline import new_ids, worker_env
from tests.fixtures.regions import PROJECTS, SECRETS, fleet_env, for_fleet, simulator
from tests.fixtures.services import RedisServer, free_port, require_redis
from tests.fixtures.waiting import wait_for
from worker.censor import MASK, censor, install
from worker.cli.localworker import start_worker, stop_worker
from worker.simulator.server import SimulatorServer
from worker.simulator.sts import derive_sk, is_security_token

ROOT = Path(__file__).resolve().parents[1]
REDIS_PASSWORD = f"redis-pw-{uuid.uuid4().hex[:12]}"
FLOWER_USER, FLOWER_PASSWORD = "ops", f"flower-pw-{uuid.uuid4().hex[:12]}"
AUTH = (FLOWER_USER, FLOWER_PASSWORD)


@dataclass
class Secured:
    env: dict[str, str]
    node: str
    redis: RedisServer
    worker_log: Path
    #: Both regions of the worker's fleet file (every credential source: fixtures/regions.py).
    simulator: SimulatorServer


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A worker on a Redis that requires a password, with a fleet file of every credential
    source (one simulator serves both of its regions)."""
    require_redis()  # redis-server is installed (or the test is skipped, failed under CI)
    tmp = tmp_path_factory.mktemp("secured")
    server = RedisServer(tmp / "redis", password=REDIS_PASSWORD).start()
    sim = simulator()
    fleet = fleet_env(tmp, sim, sim)
    env = for_fleet(worker_env(tmp / "data", sim.base_url, server.url(0), None), fleet)
    name = f"secrets-{uuid.uuid4().hex[:6]}"
    log = tmp / "worker.log"
    try:
        worker = start_worker(env, log, name, beat=False, cwd=ROOT)
        try:
            yield Secured(env, f"{name}@{socket.gethostname()}", server, log, sim)
        finally:
            stop_worker(worker)
    finally:
        server.close()
        sim.stop()


def readme_flower() -> tuple[list[str], dict[str, str]]:
    """The README production section's Flower command, and the variables it exports first."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Running it in production", 1)[1].split("```bash", 1)[1]
    block = block.split("```", 1)[0]
    exports: dict[str, str] = {}
    command: list[str] | None = None
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            exports.update(w.split("=", 1) for w in words[1:])
        elif words[:4] == ["celery", "-A", "worker", "flower"]:
            command = words
    assert command is not None, "the README's production section runs no Flower"
    return command, exports


@dataclass
class Flower:
    base: str
    log: Path


@pytest.fixture(scope="module")
def flower(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    """Flower as the README runs it, on a free port, once it sees the worker."""
    command, exports = readme_flower()
    port = free_port()
    argv = [sys.executable, "-m", *[a.replace("5555", str(port)) for a in command]]
    assert "FLOWER_BASIC_AUTH" in exports
    env = {**secured.env, "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"}
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with log.open("ab") as out:
        # The README's command with our interpreter and a free port: nothing untrusted.
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def seen() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"Flower exited:\n{log.read_text()[-3000:]}")
            return _sees(base, secured.node)

        wait_for(seen, f"Flower seeing {secured.node}", details=lambda: log.read_text()[-3000:])
        yield Flower(base, log)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _sees(base: str, node: str) -> bool:
    """Flower answers, and its API lists the worker with its configuration."""
    try:
        workers = requests.get(f"{base}/api/workers?refresh=1", auth=AUTH, timeout=10)
    except requests.ConnectionError:
        return False
    return workers.status_code == 200 and "conf" in workers.json().get(node, {})


def inspect(env: dict[str, str], node: str, *command: str) -> subprocess.CompletedProcess[str]:
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    return subprocess.run(
        [*celery, "inspect", *command, "-d", node, "--timeout", "10", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )


# --- Celery's censored configuration --------------------------------------------------------


def test_a_password_in_any_setting_is_masked_in_the_table_celery_shows() -> None:
    # Given settings whose names Celery does not censor, holding URLs with passwords
    app = Celery("censor-test", set_as_current=False)
    app.conf.update(
        redbeat_redis_url="redis://:pw-one@redis:6379/0",
        custom_sentinels="sentinel://:pw-two@a:26379;sentinel://:pw-three@b:26379",
        broker_transport_options={"nested": {"url": "redis-sentinel://u:pw-four@s:26379"}},
        custom_list=["amqp://guest:pw-five@rabbit//", "http://no-password.example/x"],
        custom_query="redis://r:6379/0?password=pw-six&db=2",
    )
    install()
    # When Celery builds the table it shows (inspect conf, Flower, celery report)
    shown = json.dumps(app.conf.table()) + app.conf.humanize()
    # Then no password shows, and what is not a password does
    for secret in ("pw-one", "pw-two", "pw-three", "pw-four", "pw-five", "pw-six"):
        assert secret not in shown
    assert f"redis://:{MASK}@redis:6379/0" in shown
    assert f"sentinel://:{MASK}@a:26379;sentinel://:{MASK}@b:26379" in shown
    assert "http://no-password.example/x" in shown
    assert "db=2" in shown


def test_values_without_a_password_are_shown_as_they_are() -> None:
    values = {
        "a": "redis://redis:6379/0",
        "b": ["http://user@host/x", 3, None, True],
        "c": ("postgresql://db:5432/x",),
        "d": {"e": 1.5},
    }
    assert censor(values) == values


# --- a real worker: celery inspect --------------------------------------------------------


@pytest.mark.parametrize(
    "command", [("conf",), ("conf", "true"), ("report",)], ids=["conf", "conf-defaults", "report"]
)
def test_celery_inspect_shows_no_password(secured: Secured, command: tuple[str, ...]) -> None:
    # Given a worker whose broker (and so redbeat's Redis) needs a password
    assert REDIS_PASSWORD in secured.env["BMSREBOOT_BROKER_URL"]
    # When its configuration is asked for
    result = inspect(secured.env, secured.node, *command)
    # Then it answers with the settings that hold the URL, and the password masked
    assert result.returncode == 0, result.stderr
    assert "redbeat_redis_url" in result.stdout
    assert f"redis://:{MASK}@127.0.0.1:{secured.redis.port}/0" in result.stdout
    assert REDIS_PASSWORD not in result.stdout + result.stderr


# --- Flower, run as the README says -------------------------------------------------------


def test_the_readme_runs_flower_on_localhost_with_auth_from_the_environment() -> None:
    command, exports = readme_flower()
    assert "--address=127.0.0.1" in command
    # The credentials come from the environment, not the command line (which `ps` shows)
    assert "FLOWER_BASIC_AUTH" in exports
    assert not any(
        arg.startswith("--basic-auth") or arg.startswith("--basic_auth") for arg in command
    )


@pytest.mark.parametrize(
    "page",
    ["/", "/workers", "/worker/{node}", "/tasks", "/api/workers", "/api/tasks", "/api/task/types"],
)
def test_flower_asks_for_auth_on_every_page(secured: Secured, flower: Flower, page: str) -> None:
    url = flower.base + page.format(node=secured.node)
    # Without credentials: refused
    assert requests.get(url, timeout=10, allow_redirects=False).status_code == 401
    # With wrong ones: refused
    wrong = requests.get(url, auth=(FLOWER_USER, "wrong"), timeout=10, allow_redirects=False)
    assert wrong.status_code == 401
    # With the right ones: the page
    assert requests.get(url, auth=AUTH, timeout=30, allow_redirects=False).status_code == 200


def test_flowers_worker_page_shows_the_configuration_without_the_password(
    secured: Secured, flower: Flower
) -> None:
    # When the worker's page is opened (its config tab is in it)
    page = requests.get(f"{flower.base}/worker/{secured.node}", auth=AUTH, timeout=30)
    # Then it shows the setting that holds the broker's Redis URL, with the password masked
    assert page.status_code == 200
    assert "redbeat_redis_url" in page.text
    assert f"redis://:{MASK}@127.0.0.1:{secured.redis.port}/0" in page.text
    assert REDIS_PASSWORD not in page.text
    # And so does the API behind it
    api = requests.get(f"{flower.base}/api/workers?refresh=1", auth=AUTH, timeout=30)
    assert "redbeat_redis_url" in api.json()[secured.node]["conf"]
    assert REDIS_PASSWORD not in api.text


def test_composes_flower_healthcheck_answers_without_auth(flower: Flower) -> None:
    port = flower.base.rsplit(":", 1)[1]
    result = subprocess.run(
        healthcheck("flower", {"5555": port}), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_no_password_in_the_logs_of_flower_and_the_worker(secured: Secured, flower: Flower) -> None:
    # Given the worker's page was served
    page = requests.get(f"{flower.base}/worker/{secured.node}", auth=AUTH, timeout=30)
    assert page.status_code == 200
    # Then both logs name the broker, without its password (nor Flower's)
    for log in (secured.worker_log, flower.log):
        text = log.read_text(errors="replace")
        assert f"@127.0.0.1:{secured.redis.port}" in text, log
        assert REDIS_PASSWORD not in text, log
        assert FLOWER_PASSWORD not in text, log


def test_no_credential_of_any_source_shows_in_flower(secured: Secured, flower: Flower) -> None:
    from worker.celery import make_celery_app
    from worker.cli.follow import follow
    from worker.db.session import make_engine, unit_of_work
    from worker.db.status import request_status
    from worker.pipeline.producer import send_payload
    from worker.settings import Settings

    # Given a request for every account of the worker's fleet file (env, file, metadata,
    # agency, password, a temporary AK/SK with its token, and one without), carried out
    settings = Settings(
        broker_url=secured.env["BMSREBOOT_BROKER_URL"],
        data_dir=Path(secured.env["BMSREBOOT_DATA_DIR"]),
    )
    app = make_celery_app(settings)
    engine = make_engine(settings.effective_database_url)
    requests_sent = []
    for project in PROJECTS.values():
        payload = {"request_id": str(uuid.uuid4()), "project_id": project, "server_ids": new_ids(1)}
        send_payload(app, payload)
        requests_sent.append(payload["request_id"])

    def final(request_id: str) -> dict[str, object]:
        def read() -> dict[str, object] | None:
            try:
                with unit_of_work(engine) as session:
                    return request_status(session, uuid.UUID(request_id))
            except Exception:  # the worker creates the embedded database: not there yet
                return None

        return follow(read, timeout=60, interval=0.2)

    statuses = [final(request_id)["status"] for request_id in requests_sent]
    app.close()
    engine.dispose()
    assert statuses.count("succeeded") == len(PROJECTS) - 1  # all but the tokenless one
    stats = secured.simulator.state.stats_json(time.time())
    # When Flower's pages and API about the worker and its tasks are read
    tasks = requests.get(f"{flower.base}/api/tasks", auth=AUTH, timeout=30)
    assert tasks.status_code == 200
    pages = [tasks.text]
    for task_id in list(tasks.json())[:20]:
        pages.append(requests.get(f"{flower.base}/task/{task_id}", auth=AUTH, timeout=30).text)
    for path in ("/tasks", f"/worker/{secured.node}", "/api/workers?refresh=1"):
        page = requests.get(f"{flower.base}{path}", auth=AUTH, timeout=30)
        assert page.status_code == 200, path
        pages.append(page.text)
    pages.append(flower.log.read_text(errors="replace"))
    shown = "\n".join(pages)
    # Then Flower saw the tasks (their ids), and none of the credentials
    assert requests_sent[0] in shown
    sts_secret = secured.simulator.config.sts_secret
    issued = [ak for aks in stats["issued"].values() for ak in aks]
    assert issued  # the metadata and agency accounts did get temporary credentials
    secrets = [
        *SECRETS.values(),
        secured.env["TEMP_SK"],
        secured.env["TEMP_TOKEN"],
        *(derive_sk(sts_secret, ak) for ak in issued),
        *secured.simulator.state.tokens.values(),
    ]
    for secret in secrets:
        assert secret not in shown
    candidates = re.findall(r"[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{43}", shown)
    assert not [t for t in candidates if is_security_token(sts_secret, t)]
    assert not re.findall(r"HSTA[A-Z0-9]{16}", shown)
