"""Start and stop a real Celery worker process on this machine (the demo and the tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

READY = b" ready."

#: Run by the worker's interpreter before Celery. On Linux it asks the kernel to send SIGTERM
#: (Celery's warm shutdown) when the process that started it dies (``PR_SET_PDEATHSIG``), so
#: a killed test session or demo never leaves a worker behind, consuming its broker and
#: stealing the next session's messages; then it becomes Celery (``exec``, same pid). The
#: signal follows the *thread* that started the worker: start it from a thread that lives as
#: long as the worker should (the main thread, in the demo, the tests and the benchmarks).
_LAUNCH = """
import os, signal, sys
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit("the process that started this worker is gone")
os.execv(sys.executable, [sys.executable, "-m", "celery", *sys.argv[2:]])
"""


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
    beat: bool = True,
    queues: str | None = None,
    loglevel: str = "INFO",
) -> subprocess.Popen[bytes]:
    """``celery -A worker worker`` with ``env``, its output in ``log_path``; returns once the
    worker says it is ready. ``beat`` embeds Celery beat (``-B``), which sends the reconciler
    and the retention purge: what a one-machine setup runs instead of a separate beat process.
    ``queues`` (comma-separated) limits the queues it consumes (``-Q``); ``loglevel`` is
    Celery's (DEBUG for a test that reads everything the worker says).
    The worker leads its own process group, so that :func:`kill_worker` reaches its children."""
    start = log_path.stat().st_size if log_path.exists() else 0
    log = log_path.open("ab")
    # Our own interpreter and fixed arguments: nothing untrusted reaches the command line.
    proc = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-c",
            _LAUNCH,
            str(os.getpid()),
            "-A",
            "worker",
            "worker",
            f"--loglevel={loglevel}",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
            "--without-gossip",
            "--without-mingle",
            *(["-B"] if beat else []),
            *(["-Q", queues] if queues else []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if READY in log_path.read_bytes()[start:]:
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


def kill_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and every process of its group (pool children, embedded beat): the
    crash nothing can clean up after."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
