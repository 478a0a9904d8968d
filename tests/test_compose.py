"""docker-compose.yml: valid against the compose specification, safe by default (no working
default for a password, ports on 127.0.0.1, no example schedule enabled, pinned images, a
restart policy and a healthcheck on every long-running service), and every command it runs in
our image, healthchecks included, is a real command of this project (run here as a local
process)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.fixtures.compose import (
    REQUIRED,
    ROOT,
    compose_config,
    healthcheck,
    local,
    local_env,
    run_config,
    service,
)
from tests.fixtures.monitoring import program
from tests.fixtures.pipeline import worker_env
from tests.fixtures.services import free_port
from tests.fixtures.waiting import wait_for
from worker.cli.localworker import start_worker, stop_worker
from worker.settings import Settings

#: Compose's services listen on every address of their container; here, on 127.0.0.1 only.
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104 (replaced, never bound)
LONG_RUNNING = {"redis", "postgres", "simulator", "worker", "beat", "metrics", "flower"}
MONITORING = {"prometheus", "alertmanager", "grafana"}
LONG_RUNNING |= MONITORING


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


def ours(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if s.get("image") == "bmsreboot:local"}


def run(
    argv: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    # Commands of our compose file, made local: nothing untrusted on the line.
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False, cwd=ROOT, timeout=timeout
    )


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; terminated after it."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def start(
    argv: list[str], env: dict[str, str], log: Path, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(  # our compose file's command, made local
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    procs.append(proc)
    return proc


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, line: str, timeout: float = 60) -> None:
    def seen() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"exited before {line!r}:\n{log.read_text(errors='replace')[-3000:]}")
        return line in log.read_text(errors="replace")

    wait_for(
        seen,
        f"{line!r} in {log.name}",
        timeout=timeout,
        details=lambda: log.read_text(errors="replace")[-3000:],
    )


# --- the file -----------------------------------------------------------------------------


def test_the_file_follows_the_compose_specification(config: dict[str, Any]) -> None:
    assert {"migrate", *LONG_RUNNING} <= set(config["services"])


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_without_a_required_password_compose_refuses_with_the_message(missing: str) -> None:
    # Given every required variable but one
    given = {k: v for k, v in REQUIRED.items() if k != missing}
    # When compose reads the file
    result = run_config(given)
    # Then it refuses, naming the variable and saying what to set
    assert result.returncode != 0
    assert result.stdout == ""
    assert f"required variable {missing} is missing a value: set {missing}" in result.stderr


def test_the_database_url_and_postgres_share_one_password(config: dict[str, Any]) -> None:
    password = REQUIRED["POSTGRES_PASSWORD"]
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    for name, svc in ours(config).items():
        url = svc["environment"]["BMSREBOOT_DATABASE_URL"]
        assert url == f"postgresql+psycopg://bmsreboot:{password}@postgres:5432/bmsreboot", name
    flower = config["services"]["flower"]["environment"]
    assert flower["FLOWER_BASIC_AUTH"] == REQUIRED["FLOWER_BASIC_AUTH"]
    grafana = config["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED["GRAFANA_ADMIN_PASSWORD"]


def test_published_ports_are_bound_to_localhost(config: dict[str, Any]) -> None:
    published = {n: s["ports"] for n, s in config["services"].items() if s.get("ports")}
    assert set(published) == {"flower", "metrics", "simulator", *MONITORING}
    for name, ports in published.items():
        assert [p["host_ip"] for p in ports] == ["127.0.0.1"] * len(ports), name


def test_long_running_services_restart_unless_stopped(config: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert config["services"][name].get("restart") == "unless-stopped", name
    # The one-shot migration is not restarted in a loop once it has done its work
    assert config["services"]["migrate"].get("restart") in (None, "no")


def test_every_long_running_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = config["services"][name].get("healthcheck", {})
        assert check.get("test", [None])[0] in ("CMD", "CMD-SHELL"), name


def test_the_worker_pings_its_own_node(config: dict[str, Any]) -> None:
    kind, line = config["services"]["worker"]["healthcheck"]["test"]
    # A shell, so that the container's $HOSTNAME ($$ in the file) names this worker's node
    assert kind == "CMD-SHELL"
    assert re.search(r"celery -A worker inspect ping -d celery@\$\$HOSTNAME\b", line)


def test_metrics_and_flower_wait_for_redis(config: dict[str, Any]) -> None:
    for name in ("metrics", "flower"):
        redis = config["services"][name]["depends_on"]["redis"]
        assert redis["condition"] == "service_healthy", name


def test_images_are_pinned_never_latest(config: dict[str, Any]) -> None:
    images = {n: s["image"] for n, s in config["services"].items()}
    for name, image in images.items():
        _, sep, tag = image.rpartition(":")
        assert sep, f"{name}: {image} has no tag"
        assert tag not in ("", "latest"), f"{name}: {image}"
    assert re.fullmatch(r"redis:\d+\.\d+", images["redis"])
    assert re.fullmatch(r"postgres:\d+", images["postgres"])
    # The monitoring images: a patch release each
    assert re.fullmatch(r"prom/prometheus:v2\.53\.\d+", images["prometheus"])
    assert re.fullmatch(r"prom/alertmanager:v0\.\d+\.\d+", images["alertmanager"])
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", images["grafana"])


def test_the_example_schedule_is_mounted_with_no_entry_enabled(config: dict[str, Any]) -> None:
    from worker.schedules import load

    beat = config["services"]["beat"]
    assert beat["command"][:4] == ["celery", "-A", "worker", "beat"]
    for name in ("beat", "worker"):
        svc = config["services"][name]
        target = Path(svc["environment"]["BMSREBOOT_SCHEDULE_FILE"]).parent
        (mount,) = [v for v in svc["volumes"] if v["target"] == str(target)]
        assert mount["read_only"] is True
        source = Path(mount["source"])
    # The example file the mount carries is valid, and ships every entry disabled: a stack
    # pointed at the real API must not reboot the example servers
    entries, problems = load(source / "schedules.toml")
    assert problems == []
    assert [e.name for e in entries] == ["kernel-patch-group-a", "canary-group-b"]
    assert [e.enabled for e in entries] == [False, False]


def test_every_setting_it_passes_is_one_the_project_reads(config: dict[str, Any]) -> None:
    known = {f"BMSREBOOT_{name.upper()}" for name in Settings.model_fields}
    known |= {"HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "FLOWER_BASIC_AUTH"}
    for name, svc in ours(config).items():
        unknown = set(svc.get("environment", {})) - known
        assert not unknown, f"{name}: {unknown}"


def test_the_worker_uses_redis_and_postgresql(config: dict[str, Any]) -> None:
    env = config["services"]["worker"]["environment"]
    assert env["BMSREBOOT_BROKER_URL"].startswith("redis://")
    assert env["BMSREBOOT_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_every_command_in_our_image_runs_here(config: dict[str, Any]) -> None:
    for name, svc in ours(config).items():
        result = run([*local(svc["command"]), "--help"], dict(os.environ))
        assert result.returncode == 0, f"{name}: {svc['command']}\n{result.stderr}"


# --- the healthchecks, run against our commands as local processes --------------------------


def test_the_metrics_healthcheck_passes_on_the_running_exporter_and_fails_without_it(
    tmp_path: Path, redis_url: str, pg_url: str, started: list[subprocess.Popen[bytes]]
) -> None:
    from worker.db.session import upgrade_database

    # Given compose's exporter command on a free port, on Redis and a migrated database
    upgrade_database(pg_url)
    port = {"9808": str(free_port()), ALL_ADDRESSES: "127.0.0.1"}
    env = worker_env(tmp_path / "data", "http://127.0.0.1:9", redis_url, pg_url)
    log = tmp_path / "metrics.log"
    proc = start(local(service("metrics")["command"], port), env, log, started)
    wait_for_line(proc, log, "bmsreboot metrics on http://")
    # When the healthcheck runs, then it passes
    check = run(healthcheck("metrics", port), env)
    assert check.returncode == 0, check.stderr
    # And once the exporter is gone, it fails
    proc.terminate()
    proc.wait(timeout=20)
    assert run(healthcheck("metrics", port), env).returncode != 0


def test_the_simulator_healthcheck_passes_on_the_running_simulator_and_fails_without_it(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    # Given compose's simulator command on a free port
    port = {"18080": str(free_port()), ALL_ADDRESSES: "127.0.0.1"}
    env = worker_env(tmp_path / "data", "http://127.0.0.1:9", None, None)
    log = tmp_path / "simulator.log"
    proc = start(local(service("simulator")["command"], port), env, log, started)
    wait_for_line(proc, log, "bmsreboot simulator listening on")
    # When the healthcheck runs, then it passes
    check = run(healthcheck("simulator", port), env)
    assert check.returncode == 0, check.stderr
    # And once the simulator is gone, it fails
    proc.terminate()
    proc.wait(timeout=20)
    assert run(healthcheck("simulator", port), env).returncode != 0


def test_the_beat_healthcheck_passes_while_beat_loops_and_fails_once_it_stopped(
    tmp_path: Path, redis_url: str, started: list[subprocess.Popen[bytes]]
) -> None:
    from worker.beat import heartbeat_path

    # Given compose's beat command on Redis
    env = worker_env(tmp_path / "data", "http://127.0.0.1:9", redis_url, None)
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url)
    log = tmp_path / "beat.log"
    proc = start(local(service("beat")["command"]), env, log, started)

    def looped() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"beat exited:\n{log.read_text(errors='replace')[-3000:]}")
        return heartbeat_path(settings).exists()

    wait_for(looped, "beat's heartbeat", details=lambda: log.read_text(errors="replace")[-3000:])
    # When the healthcheck runs while it loops, then it passes
    check = run(healthcheck("beat"), env)
    assert check.returncode == 0, check.stderr + log.read_text()[-3000:]
    assert "beat: alive" in check.stdout
    # And when beat has not looped for longer than its lock timeout, it fails and says so
    proc.terminate()
    proc.wait(timeout=20)
    past = time.time() - settings.beat_lock_timeout - 5
    os.utime(heartbeat_path(settings), (past, past))
    stale = run(healthcheck("beat"), env)
    assert stale.returncode == 1
    assert "beat: not alive: its last loop was" in stale.stderr


def test_the_beat_healthcheck_fails_when_beat_never_looped(tmp_path: Path) -> None:
    # Given a data dir no beat has run in
    env = worker_env(tmp_path / "data", "http://127.0.0.1:9", None, None)
    # When the healthcheck runs, then it fails and says why
    result = run(healthcheck("beat"), env)
    assert result.returncode == 1
    assert "beat: not alive: it never looped" in result.stderr


def test_the_worker_healthcheck_answers_for_its_own_node_only(
    tmp_path: Path, redis_url: str
) -> None:
    # Given compose's worker on Redis, named as compose names it (celery@ its hostname)
    env = worker_env(tmp_path / "data", "http://127.0.0.1:9", redis_url, None)
    worker = start_worker(env, tmp_path / "worker.log", "celery", beat=False, cwd=ROOT)
    try:
        # When the healthcheck runs in a container whose hostname is the worker's
        own = run(healthcheck("worker"), local_env({**env, "HOSTNAME": socket.gethostname()}))
        # Then the worker answers it
        assert own.returncode == 0, own.stdout + own.stderr
        assert f"celery@{socket.gethostname()}: OK" in own.stdout
        # And in a container of another name, this worker's answer does not count
        other = f"elsewhere-{uuid.uuid4().hex[:8]}"
        theirs = run(healthcheck("worker"), local_env({**env, "HOSTNAME": other}))
        assert theirs.returncode != 0
    finally:
        stop_worker(worker)


def test_the_healthchecks_use_python_not_curl(config: dict[str, Any]) -> None:
    # Our image (python:3.11-slim) has no curl: HTTP checks are Python's urllib
    for name in ("simulator", "metrics", "flower"):
        test = config["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert "urllib.request.urlopen('http://127.0.0.1:" in test[3], name


# --- monitoring: Prometheus, Alertmanager and Grafana wired to deploy/ ----------------------


def rule_names() -> list[str]:
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def mounted(name: str, target: str) -> Path:
    """The host path compose mounts at ``target`` in service ``name``."""
    (mount,) = [v for v in service(name)["volumes"] if v["target"] == target]
    assert mount["read_only"] is True, f"{name}: {target} is writable"
    return Path(mount["source"])


def flag(name: str, option: str) -> str:
    """The value of ``--option=value`` in service ``name``'s command."""
    (value,) = [a.split("=", 1)[1] for a in service(name)["command"] if a.startswith(f"{option}=")]
    return value


def listen_port(name: str) -> str:
    return flag(name, "--web.listen-address").rsplit(":", 1)[1]


def test_prometheus_scrapes_the_metrics_service_and_alerts_through_alertmanager() -> None:
    # Given the configuration compose mounts into Prometheus, with the rules beside it
    directory = mounted("prometheus", "/etc/prometheus")
    assert flag("prometheus", "--config.file") == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load((directory / "prometheus.yml").read_text())
    # Then it scrapes the metrics service, as job bmsreboot, at the port it serves on
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    metrics_port = service("metrics")["command"][-1]
    assert jobs["bmsreboot"]["static_configs"] == [{"targets": [f"metrics:{metrics_port}"]}]
    # And loads the alert rules of deploy/prometheus
    assert config["rule_files"] == ["alerts.yml"]
    assert (directory / "alerts.yml").samefile(ROOT / "deploy" / "prometheus" / "alerts.yml")
    # And sends their alerts to the alertmanager service, at the port it listens on
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [
        {"targets": [f"alertmanager:{listen_port('alertmanager')}"]}
    ]


def test_grafana_starts_with_the_stack_s_prometheus_and_the_dashboard() -> None:
    grafana = service("grafana")
    provisioning = mounted("grafana", "/etc/grafana/provisioning")
    # Given the data sources Grafana provisions: the stack's Prometheus is the default
    sources = {
        s["type"]: s
        for f in sorted((provisioning / "datasources").glob("*.yml"))
        for s in yaml.safe_load(f.read_text())["datasources"]
    }
    assert sources["prometheus"]["url"] == f"http://prometheus:{listen_port('prometheus')}"
    assert sources["prometheus"]["isDefault"] is True
    assert sources["alertmanager"]["url"] == f"http://alertmanager:{listen_port('alertmanager')}"
    # And the dashboards it provisions: the directory the repository's dashboard is mounted in
    (provider,) = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.yml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    target = "/etc/grafana/dashboards/bmsreboot.json"
    assert mounted("grafana", target).samefile(ROOT / "deploy" / "grafana" / "bmsreboot.json")
    assert provider["options"]["path"] == str(Path(target).parent)
    # And it opens on that dashboard, with no sign-up
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == target
    assert grafana["environment"]["GF_USERS_ALLOW_SIGN_UP"] == "false"


def monitoring_healthcheck(name: str, replace: dict[str, str]) -> list[str]:
    """The service's healthcheck (``wget`` of its image) as a local command."""
    from tests.fixtures.services import _missing

    kind, program_name, *args = service(name)["healthcheck"]["test"]
    assert (kind, program_name) == ("CMD", "wget"), name
    wget = shutil.which("wget")
    if wget is None:
        _missing("wget is not installed (Debian: apt-get install wget)")
    assert wget is not None
    for old, new in replace.items():
        args = [arg.replace(old, new) for arg in args]
    return [wget, *args]


def monitoring_command(name: str, replace: dict[str, str]) -> list[str]:
    """The service's command run by the Debian program of the same server here."""
    binary = program("prometheus" if name == "prometheus" else "alertmanager")
    args = list(service(name)["command"])
    for old, new in replace.items():
        args = [arg.replace(old, new) for arg in args]
    return [binary, *args]


def test_the_prometheus_service_loads_the_rules_and_its_healthcheck_follows_readiness(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    # Given compose's Prometheus command run here: the mounted directory, storage and port
    # replaced by ours (its targets, metrics and alertmanager, do not resolve here: down)
    port = str(free_port())
    replace = {
        "=/prometheus": f"={tmp_path / 'data'}",
        "/etc/prometheus": str(mounted("prometheus", "/etc/prometheus")),
        f"{ALL_ADDRESSES}:9090": f"127.0.0.1:{port}",
    }
    log = tmp_path / "prometheus.log"
    proc = start(monitoring_command("prometheus", replace), dict(os.environ), log, started)
    check = monitoring_healthcheck("prometheus", {"127.0.0.1:9090": f"127.0.0.1:{port}"})
    # When its healthcheck runs once it is ready, then it passes
    wait_for_line(proc, log, "Server is ready to receive web requests")
    result = run(check, dict(os.environ))
    assert result.returncode == 0, result.stderr + log.read_text()[-3000:]
    # And it loaded every rule of alerts.yml
    rules = requests.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10).json()
    loaded = [r["name"] for g in rules["data"]["groups"] for r in g["rules"]]
    assert sorted(loaded) == sorted(rule_names())
    # And once Prometheus is gone, the healthcheck fails
    proc.terminate()
    proc.wait(timeout=30)
    assert run(check, dict(os.environ)).returncode != 0


def test_the_alertmanager_service_runs_its_configuration_and_its_healthcheck_follows_readiness(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    port = str(free_port())
    replace = {
        "=/alertmanager": f"={tmp_path / 'data'}",
        "/etc/alertmanager": str(mounted("alertmanager", "/etc/alertmanager")),
        f"{ALL_ADDRESSES}:9093": f"127.0.0.1:{port}",
    }
    log = tmp_path / "alertmanager.log"
    proc = start(monitoring_command("alertmanager", replace), dict(os.environ), log, started)
    check = monitoring_healthcheck("alertmanager", {"127.0.0.1:9093": f"127.0.0.1:{port}"})
    # When it has started on compose's configuration, then its healthcheck passes
    wait_for_line(proc, log, "Listening on")
    last: list[subprocess.CompletedProcess[str]] = []

    def healthy() -> bool:
        last[:] = [run(check, dict(os.environ))]
        return last[0].returncode == 0

    wait_for(
        healthy,
        "alertmanager's healthcheck passing",
        interval=0.2,
        details=lambda: (last[0].stderr if last else "") + log.read_text()[-3000:],
    )
    # And it runs alone: no cluster
    status = requests.get(f"http://127.0.0.1:{port}/api/v2/status", timeout=10).json()
    assert status["cluster"]["status"] == "disabled"
    # And once it is gone, the healthcheck fails
    proc.terminate()
    proc.wait(timeout=30)
    assert run(check, dict(os.environ)).returncode != 0


def test_grafana_s_healthcheck_asks_its_health_endpoint() -> None:
    # Grafana is not packaged for Debian: its check is read, not run
    assert service("grafana")["healthcheck"]["test"] == [
        "CMD",
        "wget",
        "-q",
        "--spider",
        "http://127.0.0.1:3000/api/health",
    ]
    assert [p["target"] for p in service("grafana")["ports"]] == [3000]
