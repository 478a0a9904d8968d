"""The lock files (scripts/lock): current against pyproject.toml, every requirement pinned
within its range and hashed, and the image's lock exactly CI's pins with no test tool. No
network: the files are read, not resolved."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.lockfile import LOCKS, STAMP, stale
from tests.fixtures.locks import DEV, ROOT, RUNTIME, Pin, read_lock


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return [Requirement(r) for r in project["dependencies"]]


def dev_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return [Requirement(r) for r in project["optional-dependencies"]["dev"]]


def build_requirements() -> list[Requirement]:
    build = pyproject()["build-system"]
    assert isinstance(build, dict)
    return [Requirement(r) for r in build["requires"]]


def unpinned(requirements: list[Requirement], pins: dict[str, Pin]) -> list[str]:
    """Each requirement (whose markers apply here) without a pin satisfying its range."""
    missing = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            missing.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            missing.append(f"{requirement}: locked at {pin.version}")
    return missing


def copy_of_the_project(dest: Path) -> Path:
    for name in ("pyproject.toml", *LOCKS):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def check(root: Path) -> subprocess.CompletedProcess[str]:
    """``scripts/lockfile.py check`` as scripts/test runs it (the system's Python is enough)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lockfile.py"), "check", str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


# --- current against pyproject.toml -------------------------------------------------------


def test_the_locks_are_current_with_pyproject_tomls_dependencies() -> None:
    # Given the repository's pyproject.toml and its lock files
    # When scripts/test's check runs
    result = check(ROOT)
    # Then both locks were made from these dependencies
    assert result.returncode == 0, result.stderr
    assert stale(ROOT) == []


def test_a_dependency_added_without_scripts_lock_makes_both_locks_stale(tmp_path: Path) -> None:
    # Given a pyproject.toml that asks for one more package than the locks were made for
    project = copy_of_the_project(tmp_path)
    text = (project / "pyproject.toml").read_text()
    (project / "pyproject.toml").write_text(
        text.replace('"click>=8.1",', '"click>=8.1",\n    "apprise>=1.9",', 1)
    )
    # When scripts/test's check runs
    result = check(project)
    # Then it fails with one line for each lock, saying what to run
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    for name, line in zip(LOCKS, lines, strict=True):
        assert line.startswith(f"lock: {name} is stale"), line
        assert line.endswith("run scripts/lock"), line


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"redis>=5",', '"redis>=6",'),  # a range narrowed
        ('    "pytest>=8",\n', ""),  # a dev tool removed
        ('requires = ["setuptools>=68", "wheel"]', 'requires = ["setuptools>=70"]'),  # build
        ('requires-python = ">=3.11"', 'requires-python = ">=3.12"'),
    ],
    ids=["range", "dev-extra", "build-system", "requires-python"],
)
def test_any_change_to_what_the_locks_resolve_makes_them_stale(
    tmp_path: Path, old: str, new: str
) -> None:
    # Given a pyproject.toml changed in one of the parts the locks are resolved from
    project = copy_of_the_project(tmp_path)
    text = (project / "pyproject.toml").read_text()
    assert old in text
    (project / "pyproject.toml").write_text(text.replace(old, new, 1))
    # When the check runs, then both locks are stale
    assert [line.split(" is ")[0] for line in stale(project)] == list(LOCKS)


def test_a_comment_or_another_section_changed_leaves_the_locks_current(tmp_path: Path) -> None:
    # Given a pyproject.toml with a new comment in its dependencies and another ruff rule
    project = copy_of_the_project(tmp_path)
    text = (project / "pyproject.toml").read_text()
    text = text.replace('    "msgpack>=1.0",', '    # a note\n    "msgpack>=1.0",', 1)
    text = text.replace("line-length = 100", "line-length = 99", 1)
    (project / "pyproject.toml").write_text(text)
    # When the check runs, then nothing is stale
    assert check(project).returncode == 0


def test_a_lock_without_its_stamp_is_stale(tmp_path: Path) -> None:
    # Given a lock that pip-compile wrote but scripts/lock did not stamp
    project = copy_of_the_project(tmp_path)
    lock = project / "requirements.lock"
    lines = lock.read_text().splitlines()
    lock.write_text("\n".join(ln for ln in lines if not ln.startswith(STAMP)) + "\n")
    # When the check runs, then that lock (only) is stale
    assert [line.split(" is ")[0] for line in stale(project)] == ["requirements.lock"]


def test_a_missing_lock_is_reported_with_the_command_that_makes_it(tmp_path: Path) -> None:
    project = copy_of_the_project(tmp_path)
    (project / "requirements-dev.lock").unlink()
    result = check(project)
    assert result.returncode == 1
    assert result.stderr == "lock: requirements-dev.lock is missing: run scripts/lock\n"


# --- what the locks pin -------------------------------------------------------------------


def test_every_runtime_and_build_requirement_is_pinned_within_its_range_for_the_image() -> None:
    assert unpinned(runtime_requirements() + build_requirements(), read_lock(RUNTIME)) == []


def test_every_requirement_with_the_dev_extra_is_pinned_within_its_range_for_ci() -> None:
    requirements = runtime_requirements() + dev_requirements() + build_requirements()
    assert unpinned(requirements, read_lock(DEV)) == []


def test_every_pin_of_both_locks_is_exact_and_hashed() -> None:
    for path in (RUNTIME, DEV):
        pins = read_lock(path)
        assert pins, path.name
        for name, pin in pins.items():
            assert pin.hashes, f"{path.name}: {name} has no hash"
            assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), name


def test_the_image_gets_exactly_the_versions_and_files_ci_tests() -> None:
    # Given the image's lock and CI's
    runtime, dev = read_lock(RUNTIME), read_lock(DEV)
    # Then every package of the image is in CI's lock at the same version, with the same files
    differ = {name: (pin, dev.get(name)) for name, pin in runtime.items() if dev.get(name) != pin}
    assert differ == {}


def test_the_image_carries_no_test_tool() -> None:
    # Given the dev extra's packages (pytest, mypy, the official SDK, pip-tools...)
    dev_only = {canonicalize_name(r.name) for r in dev_requirements()}
    # Then none is in the image's lock
    assert dev_only & set(read_lock(RUNTIME)) == set()
    assert {"pytest", "mypy", "ruff", "huaweicloudsdkcore"} <= dev_only


def test_the_locks_were_made_with_the_images_python() -> None:
    # Given the Python line of the image's base (FROM python:3.11-...)
    (base,) = re.findall(r"^FROM python:(\d+\.\d+)-", (ROOT / "Dockerfile").read_text(), re.M)
    for path in (RUNTIME, DEV):
        # Then pip-compile resolved each lock's markers for that Python
        assert f"# This file is autogenerated by pip-compile with Python {base}\n" in (
            path.read_text()
        ), path.name
