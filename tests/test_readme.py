"""The README's main command, tried as a new user would: a copy of the project, a clean
virtual environment, nothing configured, the command exactly as the README writes it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def readme_command(prefix: str) -> str:
    text = (ROOT / "README.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return line


def copy_project(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def test_the_demo_command_installs_and_runs_in_a_clean_environment(tmp_path: Path) -> None:
    command = readme_command("python3 -m venv .venv && ")
    assert command.endswith("bmsreboot demo")
    project = tmp_path / "bmsreboot"
    copy_project(project)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BMSREBOOT_", "HUAWEICLOUD_", "VIRTUAL_ENV", "PYTHONPATH"))
    }
    env["HOME"] = str(tmp_path / "home")  # nothing configured, nothing left behind
    run = subprocess.run(
        ["bash", "-c", command],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"simulator: 2500 servers rebooted, 0 more than once", run.stdout)
    assert (tmp_path / "home" / ".local" / "share" / "bmsreboot" / "demo" / "audit.db").exists()
