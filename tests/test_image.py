"""The Dockerfile, read with Docker's own parser (PyPI ``dockerfile``: BuildKit's, in Go): the
image installs every package from requirements.lock with its hashes and fetches nothing else,
carries no test tool, runs as a user that is not root and has a healthcheck. There is no Docker
engine here, so its install steps run in a clean virtual environment, and its healthcheck
against a local worker."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import dockerfile
import pytest
from packaging.utils import canonicalize_name

from tests.fixtures.compose import local_env
from tests.fixtures.locks import ROOT, RUNTIME, read_lock
from tests.fixtures.pipeline import worker_env
from worker.cli.localworker import start_worker, stop_worker


def instructions() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def only(cmd: str) -> dockerfile.Command:
    (found,) = [i for i in instructions() if i.cmd == cmd]
    return found


def commands(run: dockerfile.Command) -> list[list[str]]:
    """A shell-form RUN's commands, split at ``&&``."""
    assert not run.json, run.original
    (line,) = run.value
    return [shlex.split(part) for part in line.split("&&")]


def pip_installs() -> list[list[str]]:
    """The arguments of every ``pip install`` the image runs."""
    return [
        argv[2:]
        for run in instructions()
        if run.cmd == "RUN"
        for argv in commands(run)
        if argv[:2] == ["pip", "install"]
    ]


def healthcheck_line() -> str:
    check = only("HEALTHCHECK")
    kind, line = check.value
    assert kind == "CMD", check.original
    return str(line)


# --- the file -----------------------------------------------------------------------------


def test_the_image_installs_its_dependencies_from_the_lock_with_their_hashes() -> None:
    # Given every pip install in the Dockerfile
    installs = pip_installs()
    # Then one installs the lock, each file checked against its sha256, and nothing besides
    from_lock = [a for a in installs if "-r" in a and a[a.index("-r") + 1] == "requirements.lock"]
    assert len(from_lock) == 1, installs
    assert {"--require-hashes", "--no-deps"} <= set(from_lock[0])
    # And every other fetches nothing (the project itself, built with the locked setuptools)
    for args in installs:
        if args is not from_lock[0]:
            assert {"--no-index", "--no-deps", "--no-build-isolation"} <= set(args), args


def test_the_dockerfile_names_neither_cis_lock_nor_the_dev_extra() -> None:
    # Given the Dockerfile, then the image gets no test tool from it
    text = (ROOT / "Dockerfile").read_text()
    assert "requirements-dev.lock" not in text
    assert "[dev]" not in text


def test_the_image_runs_as_a_user_of_its_own_that_is_not_root() -> None:
    # Given the Dockerfile's last USER, which the container runs as
    steps = instructions()
    users = [i for i in steps if i.cmd == "USER"]
    assert users, "no USER: the container would run as root"
    (user,) = users[-1].value
    uid, _, gid = user.partition(":")
    # Then it is neither root by name nor by number
    assert uid not in ("root", "0"), user
    assert gid not in ("root", "0"), user
    # And the image creates that user (by number, so Kubernetes' runAsNonRoot can verify it)
    created = [
        argv
        for run in steps
        if run.cmd == "RUN"
        for argv in commands(run)
        if argv[:1] == ["useradd"]
    ]
    assert len(created) == 1, created
    assert ["--uid", uid] == created[0][created[0].index("--uid") :][:2]
    # And nothing runs after the user is set but the default command and its healthcheck
    after = [i.cmd for i in steps[steps.index(users[-1]) + 1 :]]
    assert set(after) <= {"ENV", "HEALTHCHECK", "CMD"}, after


def test_the_images_healthcheck_pings_the_worker_of_its_default_command() -> None:
    # Given the image's default command, a worker
    assert only("CMD").value[:4] == ("celery", "-A", "worker", "worker")
    # Then its healthcheck asks this container's own node, not any worker that answers
    assert 'inspect ping -d "celery@$HOSTNAME"' in healthcheck_line()
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in only("HEALTHCHECK").flags)
    assert set(flags) >= {"interval", "timeout", "start-period", "retries"}


def test_the_base_image_is_pythons_311_line_on_a_named_debian_release() -> None:
    (base,) = only("FROM").value
    assert re.fullmatch(r"python:3\.11-slim-[a-z]+", base), base


# --- the image's steps, run here ----------------------------------------------------------


def build_here(context: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """The Dockerfile's steps on this machine, ``root`` standing for the image's ``/``: its
    Python a fresh virtual environment first on the PATH, COPY from ``context``, ENV, WORKDIR,
    and each RUN that calls pip, as the Dockerfile writes it. The RUN that creates the user is
    left out (it needs root and changes this machine); every other RUN fails this build.
    Returns the virtual environment and the environment its steps ran with."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    workdir = root
    for step in instructions():
        if step.cmd == "ENV":
            names, values = step.value[0::2], step.value[1::2]
            env.update(zip(names, values, strict=True))
        elif step.cmd == "WORKDIR":
            (path,) = step.value
            workdir = root / path.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.cmd == "COPY":
            *sources, dest = step.value
            target = workdir / dest
            for source in sources:
                if (context / source).is_dir():
                    shutil.copytree(
                        context / source,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                elif dest.endswith("/") or len(sources) > 1:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / source, target / Path(source).name)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / source, target)
        elif step.cmd == "RUN":
            argvs = commands(step)
            if all(argv[0] in ("groupadd", "useradd") for argv in argvs):
                continue
            assert all(argv[0] == "pip" for argv in argvs), f"unknown here: {step.original}"
            (line,) = step.value
            done = subprocess.run(  # the Dockerfile's own line
                ["sh", "-c", line],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=900,
            )
            assert done.returncode == 0, f"{step.original}\n{done.stdout[-3000:]}{done.stderr}"
    return venv, env


@pytest.mark.slow
def test_the_images_install_steps_install_exactly_the_lock_in_a_clean_environment(
    tmp_path: Path,
) -> None:
    # Given the Dockerfile's steps run in a clean virtual environment (pip check among them)
    venv, env = build_here(ROOT, tmp_path / "image")
    python = str(venv / "bin" / "python")
    # Then every package of the lock is installed at its locked version
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    locked = {name: pin.version for name, pin in read_lock(RUNTIME).items()}
    assert {n: installed.get(n) for n in locked} == locked
    # And nothing else but pip and the project itself (no test tool)
    assert set(installed) - set(locked) == {"pip", "bmsreboot"}
    # And the worker, the tasks and the CLI work from the installed copy
    neutral = tmp_path / "elsewhere"
    neutral.mkdir()
    imports = "import worker.celery, tasks, migrations; print(worker.celery.__file__)"
    shown = subprocess.run(
        [python, "-c", imports],
        cwd=neutral,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(str(venv)), shown.stdout
    cli = subprocess.run(
        [str(venv / "bin" / "bmsreboot"), "--help"],
        cwd=neutral,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr


def test_the_images_healthcheck_answers_for_its_own_worker_only(
    tmp_path: Path, redis_url: str
) -> None:
    # Given the image's default command, a worker on Redis, named as in a container whose
    # hostname is this machine's
    env = worker_env(tmp_path / "data", "http://127.0.0.1:9", redis_url, None)
    worker = start_worker(env, tmp_path / "worker.log", "celery", beat=False, cwd=ROOT)
    try:
        # When the image's healthcheck runs there
        own = run_healthcheck({**env, "HOSTNAME": socket.gethostname()})
        # Then it passes: the worker answers its own name
        assert own.returncode == 0, own.stdout + own.stderr
        assert f"celery@{socket.gethostname()}: OK" in own.stdout
        # And in a container of another name, it fails
        other = run_healthcheck({**env, "HOSTNAME": f"elsewhere-{uuid.uuid4().hex[:8]}"})
        assert other.returncode != 0
    finally:
        stop_worker(worker)


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # HEALTHCHECK CMD in shell form: the engine runs it with /bin/sh -c, in the WORKDIR.
    return subprocess.run(
        ["sh", "-c", healthcheck_line()],
        env=local_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
