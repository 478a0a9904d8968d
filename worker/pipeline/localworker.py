"""Start and stop a real Celery worker process on this machine (the demo and the tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

READY = b" ready."


class WorkerDidNotStart(RuntimeError):
    pass


def start_worker(
    env: dict[str, str],
    log_path: Path,
    name: str,
    *,
    concurrency: int = 2,
    timeout: float = 90.0,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``celery -A worker worker`` with ``env``, its output in ``log_path``; returns once the
    worker says it is ready."""
    log = log_path.open("wb")
    # Our own interpreter and fixed arguments: nothing untrusted reaches the command line.
    proc = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if READY in log_path.read_bytes():
            return proc
        time.sleep(0.2)
    stop_worker(proc)
    raise WorkerDidNotStart(log_path.read_text(errors="replace")[-5000:])


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM (a warm shutdown that requeues held messages), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
