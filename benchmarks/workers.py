"""More workers: one fixed workload end to end with 1 and with 2 worker processes.

    .venv/bin/python benchmarks/workers.py [--servers 100000] [--projects 10]
        [--batch-size 1000] [--job-duration 1] [--workers 1,2] [--concurrency 1]
        [--redis-url URL] [--tiny] [--json-out PATH] [--log-dir DIR]

The API's limits are off: the simulator runs without rate limits as its own process
(``bmsreboot simulator --no-rate-limit``, so that its CPU is measured apart from the
benchmark's), bmsreboot's budgets are raised to millions a minute
(``BMSREBOOT_ACTION_RATE_LIMIT``, ``BMSREBOOT_JOB_RATE_LIMIT``) and its first poll comes at
the job duration (``BMSREBOOT_POLL_FIRST_DELAY``), so that only the work itself bounds the
time. The workload: ``--servers`` servers spread over ``--projects`` projects, one request
each, in batches of ``--batch-size``, jobs of ``--job-duration`` seconds.

For each entry of ``--workers`` (N separate ``celery worker`` processes, each with
``--concurrency`` pool processes, the first with embedded beat; a fresh PostgreSQL database and
Redis db each time) every request is sent at once and timed from the send to the last
request's ``finished_at`` (intake to final status). It reports the wall time, the speed-up
against the first entry, and CPU seconds per 1,000 servers for each part, read from ``/proc``
and Redis's ``INFO``: the workers (every process of their trees), the simulator, PostgreSQL's
backends of the benchmark's database, every PostgreSQL process (other databases included), Redis
(the whole instance) and the benchmark itself (it sends the requests and counts the final
ones once a second). CPU seconds per wall second of all of them together say how close the run
came to the machine's cores (``os.cpu_count()``); the machine's own count (``/proc/stat``: every
process, ours or anyone else's) says how much of them the run had to share.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet
import inflight
import measure

BUDGET = "10000000"  # calls a minute: no budget ever waits
PARTS = ("workers", "simulator", "postgres_db", "postgres_all", "redis", "benchmark")


@contextlib.contextmanager
def simulator_process(
    job_duration: float, log: Path, options: Sequence[str] = ("--no-rate-limit",)
) -> Iterator[tuple[str, int]]:
    """``bmsreboot simulator`` on a free port, by default without rate limits (``options``:
    more of its command-line options); yields (base URL, pid)."""
    exe = Path(sys.executable).with_name("bmsreboot")
    argv = [str(exe), "simulator", "--port", "0", *options]
    argv += ["--job-duration", str(job_duration)]
    with log.open("ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if " listening on " not in line:
            raise RuntimeError(f"the simulator did not start: {line!r}, see {log}")
        # Drain the rest of its banner in the background; it prints nothing else.
        threading.Thread(target=drain, args=(proc,), daemon=True).start()
        yield line.rsplit(" ", 1)[1].strip(), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


def run_count(
    args: argparse.Namespace,
    base_url: str,
    sim_pid: int,
    projects: list[str],
    count: int,
    tmp: Path,
) -> dict[str, Any]:
    """One measured run with ``count`` worker processes."""
    per_project = args.servers // len(projects)
    batches = -(-per_project // args.batch_size)
    timeout = 600.0 + args.servers / 50
    fleet.reset(base_url)
    args.worker_log = (args.log_dir or tmp) / f"workers-{count}.log"
    with fleet.bmsreboot_workers(base_url, args, tmp, count) as (app, engine, workers):
        database = args.database
        pids = [w.pid for w in workers]
        groups: dict[str, measure.Group] = {
            "workers": lambda p: measure.tree(p, pids),
            "simulator": lambda p: measure.tree(p, [sim_pid]),
            "postgres_db": lambda p: measure.postgres_backends(database, p),
            "postgres_all": lambda p: measure.named(p, "postgres"),
        }
        sampler = measure.Sampler(groups, args.redis_url).start()
        sent = time.time()
        ids = inflight.send_requests(app, projects, batches, args.batch_size, per_project)
        inflight.wait_final(engine, workers, ids, timeout)
        used = sampler.stop()
        outcome = inflight.read_outcome(engine, ids)
    counters = fleet.stats(base_url)
    servers = per_project * len(projects)
    wall = outcome["finished_at"] - sent
    cpu = used["cpu_s"]
    thousands = servers / 1000
    # PostgreSQL's background processes (WAL writer, checkpointer) are in postgres_all only.
    total = sum(cpu[p] for p in PARTS if p != "postgres_db")
    return {
        "workers": count,
        "concurrency": args.concurrency,
        "servers": servers,
        "status": ",".join(outcome["statuses"]),
        "wall_s": round(wall, 2),
        "servers_per_s": round(servers / wall),
        "cpu_s": cpu,
        "cpu_s_per_1000_servers": {p: round(cpu[p] / thousands, 3) for p in PARTS},
        "cpu_s_per_1000_servers_total": round(total / thousands, 3),
        "cores_used": {
            "workers": round(cpu["workers"] / used["wall_s"], 2),
            "all": round(total / used["wall_s"], 2),
            "machine": used["machine_cores_busy"],
            "stolen": used["machine_cores_stolen"],
        },
        "posts": sum(counters["calls"]["action"].values()),
        "gets": sum(counters["calls"]["jobs"].values()),
        "servers_rebooted": len(counters["reboots"]),
        "servers_rebooted_twice": sum(1 for n in counters["reboots"].values() if n > 1),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'workers':>7} {'wall s':>7} {'speed-up':>8} {'servers/s':>9} "
        f"{'worker cores':>12} {'all cores':>9} {'machine':>7}  CPU s per 1000 servers: "
        f"{'workers':>7} {'sim':>5} {'pg db':>5} {'pg all':>6} {'redis':>5} {'bench':>5} "
        f"{'total':>6}"
    )
    print(head)
    print("-" * len(head))
    base = rows[0]["wall_s"] if rows else 1.0
    for r in rows:
        per = r["cpu_s_per_1000_servers"]
        print(
            f"{r['workers']:>7} {r['wall_s']:>7.1f} {base / r['wall_s']:>8.2f} "
            f"{r['servers_per_s']:>9} {r['cores_used']['workers']:>12.2f} "
            f"{r['cores_used']['all']:>9.2f} {r['cores_used']['machine']:>7.2f}  {'':>23}"
            f"{per['workers']:>7.3f} {per['simulator']:>5.3f} {per['postgres_db']:>5.3f} "
            f"{per['postgres_all']:>6.3f} {per['redis']:>5.3f} {per['benchmark']:>5.3f} "
            f"{r['cpu_s_per_1000_servers_total']:>6.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=100_000)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--job-duration", type=float, default=1.0, help="seconds")
    parser.add_argument("--workers", default="1,2", help="comma list of worker process counts")
    parser.add_argument("--concurrency", type=int, default=1, help="pool processes a worker")
    parser.add_argument("--pool", default=None, help="Celery pool (default: prefork)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="an empty db")
    parser.add_argument("--tiny", action="store_true", help="2,000 servers, 4 projects, 0.5 s")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--log-dir", type=Path, help="keep the workers' logs here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.tiny:
        args.servers, args.projects, args.batch_size, args.job_duration = 2000, 4, 100, 0.5
    counts = [int(n) for n in args.workers.split(",")]
    args.embedded = False
    args.worker_env = {
        "BMSREBOOT_ACTION_RATE_LIMIT": BUDGET,
        "BMSREBOOT_JOB_RATE_LIMIT": BUDGET,
        "BMSREBOOT_POLL_FIRST_DELAY": str(args.job_duration),
    }
    projects = [uuid.uuid4().hex for _ in range(args.projects)]
    print(
        f"workers: {args.servers:,} servers over {args.projects} projects in batches of "
        f"{args.batch_size}, jobs of {args.job_duration:g} s, no rate limits; worker processes "
        f"{args.workers} (concurrency {args.concurrency} each); {os.cpu_count()} cores"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bmsreboot-workers-") as directory:
        tmp = Path(directory)
        with simulator_process(args.job_duration, tmp / "simulator.log") as (base_url, sim_pid):
            for count in counts:
                print(f"{count} worker process(es) ...", flush=True)
                try:
                    rows.append(run_count(args, base_url, sim_pid, projects, count, tmp))
                except Exception:
                    for log in sorted(tmp.glob("workers-*.log")):
                        tail = log.read_text(errors="replace").splitlines()[-30:]
                        print(f"{log.name} ends with:", *tail, sep="\n")
                    raise
    print()
    print_table(rows)
    for r in rows:
        if r["servers_rebooted"] != r["servers"] or r["servers_rebooted_twice"]:
            print(
                f"WARNING {r['workers']} worker(s): {r['servers_rebooted']} of {r['servers']} "
                f"rebooted, {r['servers_rebooted_twice']} twice"
            )
    speedup = None
    if len(rows) > 1:
        speedup = round(rows[0]["wall_s"] / rows[-1]["wall_s"], 3)
        ratio = rows[-1]["workers"] / rows[0]["workers"]
        target = 0.9 * ratio
        print(
            f"speed-up of {rows[-1]['workers']} over {rows[0]['workers']} worker(s): {speedup} "
            f"(target >= {target:g}): {'met' if speedup >= target else 'MISSED'}"
        )
    if args.json_out:
        scenario = {
            "servers": args.servers,
            "projects": args.projects,
            "batch_size": args.batch_size,
            "job_duration_s": args.job_duration,
            "concurrency": args.concurrency,
            "pool": args.pool or "prefork",
            "cores": os.cpu_count(),
        }
        report = {"scenario": scenario, "results": rows, "speedup": speedup}
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
