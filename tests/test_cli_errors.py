"""Every mistake an operator can make with the command line, and every service it can find
missing, is one line on stderr that says what is wrong and what to do, with a non-zero exit
code: never a traceback. Each runs ``python -m worker`` as a new user would, configured by
environment only, on a data dir of its own (the embedded defaults unless a test says so)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from tests.fixtures.services import free_port, pg_admin_url, require_postgres
from worker.cli.errors import OneLineGroup
from worker.db.session import current_revision, head_revision, make_engine, upgrade_database

PROJECT = "0123456789abcdef0123456789abcdef"
SERVER = "616fb98f-46ca-475e-917e-2563e5a8cd19"


def bmsreboot(
    data_dir: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess: this process's environment less every BMSREBOOT_ setting, the
    given data dir, and ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BMSREBOOT_")}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**clean, "BMSREBOOT_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(stderr: str) -> str:
    """The one line of an error on stderr (fails the test if there is a traceback or more)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir no worker has created: it does not exist yet."""
    return tmp_path / "never" / "created"


@pytest.fixture
def audit_db(tmp_path: Path) -> str:
    """An upgraded SQLite audit database."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade_database(url)
    return url


# --- options and arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["list"], ["history", SERVER], ["dead-letters"], ["status", SERVER, "--events"]]
)
def test_a_limit_below_one_is_refused_naming_the_option_not_the_database(
    data_dir: Path, command: list[str]
) -> None:
    # When
    run = bmsreboot(data_dir, *command, "--limit", "-1")
    # Then
    assert run.returncode == 2
    line = one_line(run.stderr)
    assert "'--limit': -1 is not in the range x>=1" in line
    assert "database" not in line
    assert f"bmsreboot {command[0]} --help" in line


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["status", "nope"], "'REQUEST_ID': not a request id (a UUID): 'nope'"),
        (["history", "not-a-uuid"], "not a request or server id (a UUID): 'not-a-uuid'"),
        (["watch", "nope"], "'REQUEST_ID': not a request id (a UUID): 'nope'"),
        (["cancel", "nope"], "'REQUEST_ID': not a request id (a UUID): 'nope'"),
        (
            ["list", "--project", "nothex"],
            "'--project': not a project id (32 hexadecimal characters): 'nothex'",
        ),
    ],
)
def test_every_command_refuses_the_ids_status_refuses(
    data_dir: Path, command: list[str], named: str
) -> None:
    # When
    run = bmsreboot(data_dir, *command)
    # Then
    assert run.returncode == 2
    assert named in one_line(run.stderr)


def test_demo_refuses_a_fail_fraction_outside_0_to_1(data_dir: Path) -> None:
    run = bmsreboot(data_dir, "demo", "--fail-fraction", "3")
    assert run.returncode == 2
    assert "'--fail-fraction': 3.0 is not in the range 0<=x<=1" in one_line(run.stderr)
    assert not data_dir.exists()  # nothing was started


@pytest.mark.parametrize(
    ("command", "port", "range_"),
    [
        ("metrics", "70000", "1<=x<=65535"),
        ("metrics", "0", "1<=x<=65535"),
        ("simulator", "70000", "0<=x<=65535"),
        ("simulator", "-1", "0<=x<=65535"),
    ],
)
def test_a_port_out_of_range_is_refused(
    data_dir: Path, command: str, port: str, range_: str
) -> None:
    run = bmsreboot(data_dir, command, "--port", port)
    assert run.returncode == 2
    assert f"'--port': {port} is not in the range {range_}" in one_line(run.stderr)


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["metrics", "simulator"])
def test_a_port_in_use_is_one_line_naming_it(
    data_dir: Path, port_in_use: int, command: str
) -> None:
    # When
    run = bmsreboot(data_dir, command, "--port", str(port_in_use))
    # Then
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert f"port {port_in_use} is in use on 127.0.0.1" in line
    assert "choose another --port" in line


# --- bmsreboot db ----------------------------------------------------------------------------


def test_db_downgrade_to_a_revision_that_does_not_exist_says_so(
    data_dir: Path, audit_db: str
) -> None:
    # When
    run = bmsreboot(data_dir, "db", "downgrade", "9999", "--yes", "--url", audit_db)
    # Then
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert "Can't locate revision identified by '9999'" in line
    assert "bmsreboot db current" in line
    assert current_revision(audit_db) == head_revision()


def test_db_downgrade_to_base_drops_nothing_without_yes(data_dir: Path, audit_db: str) -> None:
    # When
    refused = bmsreboot(data_dir, "db", "downgrade", "base", "--url", audit_db)
    # Then
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert "drops every audit table and every record in it: add --yes" in line
    assert current_revision(audit_db) == head_revision()
    # And with --yes it does
    done = bmsreboot(data_dir, "db", "downgrade", "base", "--yes", "--url", audit_db)
    assert (done.returncode, done.stdout.strip()) == (0, "base")
    engine = make_engine(audit_db)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_db_upgrade_of_a_database_that_does_not_exist_says_so_without_the_password(
    data_dir: Path,
) -> None:
    # Given a PostgreSQL URL naming a database nobody created (trust auth: any password)
    require_postgres()
    missing = f"bmsreboot_missing_{uuid.uuid4().hex[:12]}"
    url = pg_admin_url(missing).replace("://postgres@", "://postgres:NOT-SHOWN-pw@")
    # When
    run = bmsreboot(data_dir, "db", "upgrade", "--url", url)
    # Then
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert f'database "{missing}" does not exist' in line
    assert "create it first" in line
    assert "NOT-SHOWN-pw" not in run.stderr
    assert "postgres:***@" in line


def test_db_current_of_something_that_is_not_a_url_says_so(data_dir: Path) -> None:
    run = bmsreboot(data_dir, "db", "current", "--url", "notaurl")
    assert run.returncode == 1
    assert "not a database URL: 'notaurl'" in one_line(run.stderr)


# --- the broker ------------------------------------------------------------------------------


def test_submit_with_the_broker_down_is_one_line_without_its_password(
    data_dir: Path, audit_db: str
) -> None:
    # Given a Redis URL where nothing listens
    port = free_port()
    url = f"redis://:NOT-SHOWN-pw@127.0.0.1:{port}/0"
    # When
    started = time.monotonic()
    run = bmsreboot(
        data_dir,
        "submit",
        "--project-id",
        PROJECT,
        SERVER,
        BMSREBOOT_BROKER_URL=url,
        BMSREBOOT_DATABASE_URL=audit_db,
    )
    # Then
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert f"cannot reach the broker at redis://:***@127.0.0.1:{port}/0" in line
    assert "is Redis running" in line
    assert "NOT-SHOWN-pw" not in run.stderr + run.stdout
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("command", [("submit", "--project-id", PROJECT, SERVER), ("metrics",)])
def test_a_sentinel_broker_without_its_masters_name_is_one_line(
    data_dir: Path, command: tuple[str, ...]
) -> None:
    # Given a Sentinel URL and no master_name in BMSREBOOT_BROKER_TRANSPORT_OPTIONS
    url = "sentinel://:NOT-SHOWN-pw@127.0.0.1:1;sentinel://:NOT-SHOWN-pw@127.0.0.1:2"
    # When a command that needs the broker's Celery app runs
    run = bmsreboot(data_dir, *command, BMSREBOOT_BROKER_URL=url)
    # Then one line says what to set, and nothing was tried
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert line.startswith("Error: BMSREBOOT_BROKER_URL: a sentinel:// broker URL needs")
    assert "BMSREBOOT_BROKER_TRANSPORT_OPTIONS" in line
    assert "NOT-SHOWN-pw" not in run.stderr + run.stdout


@pytest.fixture
def silent_broker() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def test_submit_to_a_broker_that_never_answers_gives_up_within_seconds(
    data_dir: Path, audit_db: str, silent_broker: int
) -> None:
    # When
    started = time.monotonic()
    run = bmsreboot(
        data_dir,
        "submit",
        "--project-id",
        PROJECT,
        SERVER,
        BMSREBOOT_BROKER_URL=f"redis://127.0.0.1:{silent_broker}/0",
        BMSREBOOT_DATABASE_URL=audit_db,
    )
    # Then
    assert run.returncode == 1
    assert f"cannot reach the broker at redis://127.0.0.1:{silent_broker}/0" in one_line(run.stderr)
    assert time.monotonic() - started < 30


# --- a data dir no worker has created ------------------------------------------------------


def test_submit_on_a_data_dir_no_worker_created_sends_and_says_none_recorded_it(
    data_dir: Path,
) -> None:
    # When
    run = bmsreboot(data_dir, "submit", "--project-id", PROJECT, SERVER)
    # Then the embedded broker was created and the request waits in it for a worker
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(": sent")
    line = one_line(run.stderr)
    assert "no worker has recorded request" in line
    assert "celery -A worker worker -B" in line
    assert (data_dir / "broker.db").exists()


def test_submit_wait_ends_within_its_timeout_when_no_worker_records_it(data_dir: Path) -> None:
    # When (the 5 s wait for a worker's record used to come on top of --timeout)
    started = time.monotonic()
    run = bmsreboot(data_dir, "submit", "--project-id", PROJECT, SERVER, "--wait", "--timeout", "2")
    elapsed = time.monotonic() - started
    # Then
    assert run.returncode == 4, run.stderr
    line = last_line(run.stderr)
    assert "no worker has recorded request" in line
    assert "within 2 s (--timeout)" in line
    assert elapsed < 2 + 4.5  # the interpreter's start, not another wait


def test_watch_gives_up_on_a_request_no_worker_records(data_dir: Path, audit_db: str) -> None:
    # Given an id nobody sent
    unknown = str(uuid.uuid4())
    # When
    run = bmsreboot(data_dir, "watch", unknown, "--timeout", "1", BMSREBOOT_DATABASE_URL=audit_db)
    # Then
    assert run.returncode == 4
    line = one_line(run.stderr)
    assert f"no worker has recorded request {unknown} within 1 s" in line
    assert "is the id right" in line


# --- what no command caught ------------------------------------------------------------------


def _group_raising(error: Exception) -> click.Group:
    @click.group(cls=OneLineGroup)
    def group() -> None:
        """A command line like bmsreboot's."""

    @group.command()
    def broken() -> None:
        raise error

    return group


def test_a_database_error_no_command_caught_is_still_one_line() -> None:
    # Given a command that meets a database failure it does not handle
    lost = OperationalError("SELECT 1", {}, Exception("server closed the connection\nmore"))
    # When
    result = CliRunner().invoke(_group_raising(lost), ["broken"])
    # Then
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "Error: the audit database failed: OperationalError: server closed the connection; "
        "is it reachable and upgraded (`bmsreboot db upgrade`)?"
    )


def test_a_bug_keeps_its_traceback() -> None:
    result = CliRunner().invoke(_group_raising(KeyError("bug")), ["broken"])
    assert isinstance(result.exception, KeyError)
