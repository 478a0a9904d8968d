"""A million servers in one request: from ``bmsreboot submit`` to the request recorded.

    .venv/bin/python benchmarks/intake.py [--servers 1000000] [--runs 3] [--embedded]
        [--tiny] [--json-out PATH] [--redis-url redis://127.0.0.1:6379/0]

A real worker consuming only the intake queue (``-Q bmsreboot.intake``, prefork, concurrency
1) on Redis and a fresh PostgreSQL database (``--embedded``: SQLite and Celery's SQLAlchemy
transport, 100,000 servers by default) receives one request sent by the CLI:
``bmsreboot submit --ids-file FILE`` with N random UUIDs, one per line. It measures:

- ``recorded_s``: from starting the CLI to the request being in the audit database with all
  its batches (request and batches are written in one transaction, so the first time the
  request row is seen, every batch is there; polled every 20 ms);
- ``cli_s`` and ``cli_rss_mib``: when the CLI returned (it waits up to 5 s for the worker to
  record the request, to report its status) and its peak RSS (``ru_maxrss`` from ``wait4``);
- ``worker_rss_mib``: the peak RSS (``VmHWM``) of each worker process, the main process (which
  receives the message) and its pool child (which records the request).

Targets (issue "Benchmarks and scale"): recorded within 10 s, every process within 256 MiB,
and on the embedded default a 100,000-server request recorded within 5 s. ``--tiny`` sends
5,000 servers once. Everything it starts is stopped, dropped or flushed on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from worker.cli.localworker import kill_worker, start_worker, stop_worker
from worker.db.models import Batch, RebootRequest
from worker.db.session import make_engine, unit_of_work, upgrade_database
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import fleet  # noqa: E402  (benchmarks/ is not a package)

PROJECT = "0123456789abcdef0123456789abcdef"
MIB = 1024 * 1024


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    return 0.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(c) for c in text)
    return found


@contextlib.contextmanager
def intake_worker(
    args: argparse.Namespace, tmp: Path
) -> Iterator[tuple[dict[str, str], Any, subprocess.Popen[bytes]]]:
    """A worker on the intake queue only; yields (the environment the CLI needs, the audit
    database's engine, the worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMSREBOOT_")}
    env["BMSREBOOT_DATA_DIR"] = str(tmp / "data")
    (tmp / "data").mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        database_url = broker_url = None
        if not args.embedded:
            broker_url, database_url = fleet.fresh_services(args, stack)
            env["BMSREBOOT_BROKER_URL"] = broker_url
            env["BMSREBOOT_DATABASE_URL"] = database_url
        settings = Settings(data_dir=tmp / "data", broker_url=broker_url, database_url=database_url)
        upgrade_database(settings.effective_database_url)
        worker = start_worker(
            env,
            tmp / "worker.log",
            f"intake-{uuid.uuid4().hex[:8]}",
            concurrency=1,
            cwd=REPO,
            beat=False,
            queues="bmsreboot.intake",
        )
        stack.callback(kill_worker, worker)
        stack.callback(stop_worker, worker)
        engine = make_engine(settings.effective_database_url)
        stack.callback(engine.dispose)
        yield env, engine, worker


def run_once(args: argparse.Namespace, ids_file: Path, tmp: Path) -> dict[str, Any]:
    with intake_worker(args, tmp) as (env, engine, worker):
        started = time.monotonic()
        # Our own interpreter and fixed arguments: nothing untrusted reaches the command line.
        cli = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "submit",
                "--project-id",
                PROJECT,
                "--ids-file",
                str(ids_file),
                "--json",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        recorded = cli_seconds = None
        cli_rss = 0.0
        deadline = started + args.timeout
        while recorded is None or cli_seconds is None:
            if cli_seconds is None:
                pid, status, usage = os.wait4(cli.pid, os.WNOHANG)
                if pid:
                    cli_seconds = time.monotonic() - started
                    cli_rss = usage.ru_maxrss * 1024 / MIB
                    cli.returncode = os.waitstatus_to_exitcode(status)
            if recorded is None:
                with unit_of_work(engine) as session:
                    request_id = session.scalar(select(RebootRequest.id).limit(1))
                    if request_id is not None:
                        recorded = time.monotonic() - started
                        batches = session.scalar(
                            select(func.count()).where(Batch.request_id == request_id)
                        )
                        total = session.scalar(
                            select(RebootRequest.servers_total).where(
                                RebootRequest.id == request_id
                            )
                        )
            if time.monotonic() > deadline:
                raise TimeoutError(f"not recorded within {args.timeout:.0f} s")
            time.sleep(0.02)
        _out, err = cli.communicate()
        if cli.returncode != 0:
            raise RuntimeError(f"the CLI failed ({cli.returncode}): {err.decode()[-2000:]}")
        worker_rss = {"main": peak_rss_mib(worker.pid)}
        for n, child in enumerate(children(worker.pid)):
            worker_rss[f"child{n}"] = peak_rss_mib(child)
    if total != args.servers or batches != -(-args.servers // 1000):
        raise RuntimeError(f"recorded {total} servers in {batches} batches")
    return {
        "recorded_s": recorded,
        "cli_s": cli_seconds,
        "cli_rss_mib": cli_rss,
        "worker_rss_mib": worker_rss,
        "batches": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--embedded", action="store_true", help="SQLite + SQLAlchemy transport")
    parser.add_argument("--tiny", action="store_true", help="5,000 servers, one run")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="an empty db")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.tiny:
        args.servers, args.runs = 5000, 1
    if args.servers is None:
        args.servers = 100_000 if args.embedded else 1_000_000
    engine = "SQLite + SQLAlchemy transport" if args.embedded else "PostgreSQL + Redis"
    print(f"intake: {args.servers:,} servers in one request, {engine}, {args.runs} run(s)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bmsreboot-intake-") as directory:
        tmp = Path(directory)
        ids_file = tmp / "ids.txt"
        with ids_file.open("w") as f:
            for _ in range(args.servers):
                f.write(f"{uuid.uuid4()}\n")
        for n in range(args.runs):
            run_dir = tmp / f"run{n}"
            run_dir.mkdir()
            result = run_once(args, ids_file, run_dir)
            runs.append(result)
            rss = ", ".join(f"{k} {v:.0f}" for k, v in result["worker_rss_mib"].items())
            print(
                f"  run {n + 1}: recorded after {result['recorded_s']:.2f} s; CLI returned after "
                f"{result['cli_s']:.2f} s, peak {result['cli_rss_mib']:.0f} MiB; worker peak "
                f"MiB: {rss}"
            )
    recorded = [r["recorded_s"] for r in runs]
    cli_rss = [r["cli_rss_mib"] for r in runs]
    worker_rss = [max(r["worker_rss_mib"].values()) for r in runs]
    target = 10.0 if not args.embedded else 5.0
    summary = {
        "scenario": "intake",
        "engine": engine,
        "servers": args.servers,
        "runs": runs,
        "recorded_median_s": statistics.median(recorded),
        "cli_rss_median_mib": statistics.median(cli_rss),
        "worker_rss_max_mib": max(worker_rss),
    }
    print()
    print("| servers | recorded, median (min-max) | CLI peak RSS | worker peak RSS (max) |")
    print("|---|---|---|---|")
    print(
        f"| {args.servers:,} | {statistics.median(recorded):.2f} s "
        f"({min(recorded):.2f}-{max(recorded):.2f}) | {statistics.median(cli_rss):.0f} MiB | "
        f"{max(worker_rss):.0f} MiB |"
    )
    if not args.tiny:
        met = summary["recorded_median_s"] <= target
        print(f"target: recorded within {target:.0f} s: {'met' if met else 'missed'}")
        limit = max(summary["cli_rss_median_mib"], summary["worker_rss_max_mib"])
        print(f"target: every process within 256 MiB: {'met' if limit <= 256 else 'missed'}")
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
