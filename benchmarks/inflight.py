"""Thousands of jobs in flight, on one project or on many, held under the API's limits.

    .venv/bin/python benchmarks/inflight.py [--jobs 2000] [--job-duration 45]
    .venv/bin/python benchmarks/inflight.py --projects 200 --batches-per-project 10
        [--job-duration 60] [--pool prefork,threads] [--concurrency 4,16]
    common: [--batch-size 1] [--no-warmup] [--redis-url URL] [--tiny] [--json-out PATH]

One-project mode (the default): one request of ``--jobs`` servers in batches of one (that many
jobs) on one project; the simulator enforces the job route's documented 2000 GETs a minute, the
action route is left unlimited (and so is bmsreboot's action budget) so that the jobs pile up.

Multi-project mode (``--projects P``): P projects (32 hex digits each) get one request each of
``--batches-per-project`` batches; both routes have their documented limits, per project, in
the simulator and in bmsreboot's default budgets (50 POSTs and 2000 GETs a minute): each
project's POSTs go out 1.2 s apart, so every job can be in flight after
``(batches per project - 1) x 1.2 s`` (the bound).

Either way a warm-up request (one batch per project) first teaches the worker each project's
job duration, then the simulator is reset and the measured requests are sent at once. For each
pool (``--pool``, Celery's ``prefork`` or ``threads``, or ``solo``; a fresh worker, database
and Redis db each) it reports: the most jobs the simulator had running at once and how long
after the first POST that was reached, 429s per route, GETs per job, detection delays (a job's
own end to the batch's ``detected_at``: median, p90, worst), the wall time (send to the last
request's ``finished_at``), the worker's CPU seconds (the worker process and all its children,
from ``/proc``) with CPU seconds per wall second (the cores it used: the target is at most 1.0)
and per API call, the cores busy on the whole machine (every process, ours or not: how much
the run had to share), and the broker's memory (``INFO`` of the whole Redis instance, and the bytes
of the keys in the benchmark's own Redis db) at its peak and at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet
import measure
from sqlalchemy import func, select

from worker.db.models import Batch, RebootRequest
from worker.db.session import unit_of_work
from worker.db.states import TERMINAL_REQUEST_STATES
from worker.pipeline.producer import build_payload, send_payload
from worker.simulator.config import DEFAULT_PROJECT_ID, SimulatorConfig
from worker.simulator.server import SimulatorServer

WAIT_EVERY = 1.0  # how often the benchmark counts the requests not yet final
POOLS = ("prefork", "threads", "solo")


def most_at_once(jobs: dict[str, Any]) -> tuple[int, float]:
    """The most jobs running at once, and when (epoch seconds) that was first reached."""
    edges = sorted(
        [(j["created"], 1) for j in jobs.values()]
        + [(j["ends"], -1) for j in jobs.values() if j["ends"] is not None]
    )
    running = peak = 0
    when = 0.0
    for at, step in edges:
        running += step
        if running > peak:
            peak, when = running, at
    return peak, when


def project_ramps(jobs: dict[str, Any], first_post: float) -> dict[str, dict[str, float | None]]:
    """Where the time to the peak goes: each project's first POST after the run's first POST
    (how late its request got going: intake and its first release), and the time from its
    first POST to its last (its own pace: 1.2 s apart is the action budget)."""
    created: dict[str, list[float]] = {}
    for job in jobs.values():
        created.setdefault(job.get("project_id", ""), []).append(job["created"])
    starts = [min(times) - first_post for times in created.values()]
    spans = [max(times) - min(times) for times in created.values()]
    return {"project_start_s": spread(starts), "project_span_s": spread(spans)}


def send_requests(
    app: Any, projects: list[str], batches: int, batch_size: int, servers: int | None = None
) -> list[uuid.UUID]:
    """One request a project, of ``servers`` servers (default ``batches x batch_size``)."""
    ids = []
    for project in projects:
        request_id = uuid.uuid4()
        server_ids = fleet.new_ids(servers or batches * batch_size)
        payload = build_payload(
            project, server_ids, request_id=request_id, batch_size=batch_size, source="benchmark"
        )
        send_payload(app, payload)
        ids.append(request_id)
    return ids


def wait_final(engine: Any, workers: list[Any], ids: list[uuid.UUID], timeout: float) -> None:
    """Until every request is final (one count query a second)."""
    deadline = time.monotonic() + timeout
    while True:
        for worker in workers:
            if worker.poll() is not None:
                raise RuntimeError(f"a worker exited with {worker.returncode}: see its log")
        with unit_of_work(engine) as session:
            final = session.scalar(
                select(func.count())
                .select_from(RebootRequest)
                .where(RebootRequest.id.in_(ids))
                .where(RebootRequest.status.in_(list(TERMINAL_REQUEST_STATES)))
            )
        if final == len(ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - (final or 0)} requests not final after {timeout} s")
        time.sleep(WAIT_EVERY)


def read_outcome(engine: Any, ids: list[uuid.UUID]) -> dict[str, Any]:
    with unit_of_work(engine) as session:
        requests = session.execute(
            select(RebootRequest.status, RebootRequest.finished_at).where(RebootRequest.id.in_(ids))
        ).all()
        batches = session.execute(
            select(Batch.job_ended_at, Batch.detected_at).where(Batch.request_id.in_(ids))
        ).all()
    delays = [
        (detected - ended).total_seconds() for ended, detected in batches if ended and detected
    ]
    return {
        "statuses": sorted({str(r.status) for r in requests}),
        "finished_at": max(r.finished_at.timestamp() for r in requests if r.finished_at),
        "delays": delays,
    }


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None, "worst": None}
    p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
    return {
        "median": round(statistics.median(values), 2),
        "p90": round(p90, 2),
        "worst": round(max(values), 2),
    }


def run_pool(
    args: argparse.Namespace, sim: SimulatorServer, projects: list[str], tmp: Path
) -> dict[str, Any]:
    """One worker with ``args.pool``: warm-up, then the measured requests."""
    timeout = 20 * args.job_duration + 600
    jobs = len(projects) * args.batches
    with fleet.bmsreboot_worker(sim.base_url, args, tmp) as (app, engine, worker):
        if args.warmup:
            warm_batches = 4 if len(projects) == 1 else 1
            started = time.monotonic()
            wait_final(engine, [worker], send_requests(app, projects, warm_batches, 1), timeout)
            print(
                f"  warm-up: {warm_batches} job(s) a project in {time.monotonic() - started:.1f} s"
            )
            fleet.reset(sim.base_url)
        groups: dict[str, measure.Group] = {"worker": lambda p: measure.tree(p, [worker.pid])}
        sampler = measure.Sampler(groups, args.redis_url).start()
        sent = time.time()
        ids = send_requests(app, projects, args.batches, args.batch_size)
        wait_final(engine, [worker], ids, timeout)
        used = sampler.stop()
        outcome = read_outcome(engine, ids)
    counters = fleet.stats(sim.base_url)
    calls = counters["calls"]
    gets, posts = sum(calls["jobs"].values()), sum(calls["action"].values())
    peak, peak_at = most_at_once(counters["jobs"])
    first_post = min((j["created"] for j in counters["jobs"].values()), default=sent)
    wall = outcome["finished_at"] - sent
    cpu = used["cpu_s"]["worker"]
    ramps = project_ramps(counters["jobs"], first_post)
    delays = spread(outcome["delays"])
    return {
        "pool": args.pool,
        "concurrency": args.concurrency,
        "jobs": jobs,
        "status": ",".join(outcome["statuses"]),
        "wall_s": round(wall, 1),
        "most_jobs_at_once": peak,
        "peak_after_first_post_s": round(peak_at - first_post, 1),
        "first_post_after_send_s": round(first_post - sent, 1),
        # Each a spread (median, p90, worst) over the projects
        "project_start_s": ramps["project_start_s"],
        "project_span_s": ramps["project_span_s"],
        "posts": posts,
        "gets": gets,
        "gets_per_job": round(gets / jobs, 2),
        "action_429": calls["action"]["throttled"],
        "job_route_429": calls["jobs"]["throttled"],
        "detect_median_s": delays["median"],
        "detect_p90_s": delays["p90"],
        "detect_worst_s": delays["worst"],
        "worker_cpu_s": cpu,
        "worker_cores": round(cpu / used["wall_s"], 3),
        # The most cores the worker used over any 10 s: the ramp's burst, which the average
        # over the whole run hides.
        "worker_cores_busiest_10s": used["busiest_10s_cores"]["worker"],
        "worker_cpu_ms_per_call": round(1000 * cpu / max(posts + gets, 1), 2),
        "machine_cores_busy": used["machine_cores_busy"],
        "benchmark_cpu_s": used["cpu_s"]["benchmark"],
        "redis_cpu_s": used["cpu_s"]["redis"],
        "redis_used_memory_mb": used.get("redis_used_memory_mb"),
        "broker_db_mb": used.get("broker_db_mb"),
        "servers_rebooted_twice": sum(1 for n in counters["reboots"].values() if n > 1),
    }


COLUMNS = (
    ("pool", "pool", "{}"),
    ("conc", "concurrency", "{}"),
    ("wall s", "wall_s", "{:.1f}"),
    ("at once", "most_jobs_at_once", "{}"),
    ("peak after s", "peak_after_first_post_s", "{:.1f}"),
    ("project start p50/max s", None, "{}"),
    ("project span p50/max s", None, "{}"),
    ("GETs/job", "gets_per_job", "{:.2f}"),
    ("429 act/job", None, "{}"),
    ("detect p50/p90/max s", None, "{}"),
    ("CPU s", "worker_cpu_s", "{:.1f}"),
    ("cores", "worker_cores", "{:.2f}"),
    ("busiest 10 s", "worker_cores_busiest_10s", "{:.2f}"),
    ("CPU ms/call", "worker_cpu_ms_per_call", "{:.2f}"),
    ("machine cores", "machine_cores_busy", "{:.2f}"),
    ("Redis peak MB", None, "{}"),
    ("broker db MB", None, "{}"),
)


def cell(row: dict[str, Any], key: str | None, fmt: str, title: str) -> str:
    if key is not None:
        return "-" if row[key] is None else fmt.format(row[key])
    if title.startswith("429"):
        return f"{row['action_429']}/{row['job_route_429']}"
    if title.startswith("project"):
        ramp = row["project_start_s" if "start" in title else "project_span_s"]
        return f"{ramp['median']}/{ramp['worst']}"
    if title.startswith("detect"):
        return f"{row['detect_median_s']}/{row['detect_p90_s']}/{row['detect_worst_s']}"
    memory = row["redis_used_memory_mb" if title.startswith("Redis") else "broker_db_mb"]
    return "-" if not memory else f"{memory['peak']:.2f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [[cell(r, key, fmt, title) for title, key, fmt in COLUMNS] for r in rows]
    widths = [
        max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _, _) in enumerate(COLUMNS)
    ]
    print("  ".join(title.rjust(w) for (title, _, _), w in zip(COLUMNS, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(text.rjust(w) for text, w in zip(c, widths, strict=True)))


def target_lines(row: dict[str, Any], jobs: int, bound: float | None) -> list[str]:
    checks = [
        (
            "jobs in flight at once",
            row["most_jobs_at_once"],
            f">= {jobs}",
            row["most_jobs_at_once"] >= jobs,
        ),
        ("429s on the job route", row["job_route_429"], "= 0", row["job_route_429"] == 0),
        ("429s on the action route", row["action_429"], "= 0", row["action_429"] == 0),
        ("GETs per job", row["gets_per_job"], "<= 1.5", row["gets_per_job"] <= 1.5),
        (
            "worker cores (CPU s / wall s)",
            row["worker_cores"],
            "<= 1.0",
            row["worker_cores"] <= 1.0,
        ),
    ]
    if bound is not None:
        after = row["peak_after_first_post_s"]
        checks.append(
            (
                "peak reached after first POST, s",
                after,
                f"<= {bound * 1.1:.1f} (bound {bound:.1f} + 10%)",
                after <= bound * 1.1,
            )
        )
    return [
        f"  {what:<33} {value} (target {limit}): {'met' if ok else 'MISSED'}"
        for what, value, limit, ok in checks
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="one-project mode: jobs")
    parser.add_argument("--projects", type=int, default=1, help="P > 1: multi-project mode")
    parser.add_argument("--batches-per-project", type=int, default=10, help="multi-project mode")
    parser.add_argument("--batch-size", type=int, default=1, help="servers a batch")
    parser.add_argument("--job-duration", type=float, help="seconds (default 45, or 60 for P > 1)")
    parser.add_argument("--pool", default="prefork", help=f"comma list of {', '.join(POOLS)}")
    parser.add_argument("--concurrency", default="4", help="one number, or one a pool")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="an empty db")
    parser.add_argument("--tiny", action="store_true", help="4 projects x 5 jobs of 6 s")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--worker-log", type=Path, help="keep the worker's log here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.tiny:
        args.projects, args.batches_per_project, args.job_duration = 4, 5, 6.0
    pools = [p.strip() for p in args.pool.split(",") if p.strip()]
    if set(pools) - set(POOLS):
        parser.error(f"--pool: pick from {', '.join(POOLS)}")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if len(concurrency) == 1:
        concurrency *= len(pools)
    if len(concurrency) != len(pools):
        parser.error("--concurrency: one number, or one for each pool")

    multi = args.projects > 1
    if multi:
        projects = [uuid.uuid4().hex for _ in range(args.projects)]
        args.batches = args.batches_per_project
        action_limit: int | None = fleet.ACTION_LIMIT
        args.job_duration = args.job_duration or 60.0
        args.worker_env = {}
        bound: float | None = (args.batches - 1) * 60.0 / fleet.ACTION_LIMIT
    else:
        projects = [DEFAULT_PROJECT_ID]
        args.batches = args.jobs
        action_limit = None
        args.job_duration = args.job_duration or 45.0
        args.worker_env = {"BMSREBOOT_ACTION_RATE_LIMIT": "1000000"}
        bound = None
    args.embedded = False
    jobs = len(projects) * args.batches
    config = SimulatorConfig(
        job_duration=args.job_duration,
        action_rate_limit=action_limit,
        job_rate_limit=fleet.JOB_LIMIT,
    )
    print(
        f"in flight: {len(projects)} project(s) x {args.batches} batch(es) of {args.batch_size} "
        f"= {jobs} jobs of {args.job_duration:g} s; simulator limits per project: action "
        f"{action_limit or 'none'}/min, jobs {fleet.JOB_LIMIT}/min; bmsreboot budgets: "
        f"{'default' if multi else 'action unlimited, jobs default'}"
    )
    scenario = {
        "projects": len(projects),
        "batches_per_project": args.batches,
        "batch_size": args.batch_size,
        "jobs": jobs,
        "job_duration_s": args.job_duration,
        "action_rate_limit": action_limit,
        "job_rate_limit": fleet.JOB_LIMIT,
        "warmup": args.warmup,
        "bound_s": bound,
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bmsreboot-inflight-") as directory:
        tmp = Path(directory)
        log = args.worker_log
        with SimulatorServer(config) as sim:
            for pool, conc in zip(pools, concurrency, strict=True):
                args.pool, args.concurrency = pool, conc
                args.worker_log = log.with_suffix(f".{pool}.log") if log else tmp / f"{pool}.log"
                print(f"pool {pool}, concurrency {conc} ...", flush=True)
                fleet.reset(sim.base_url)
                try:
                    rows.append(run_pool(args, sim, projects, tmp))
                except Exception:
                    if args.worker_log.exists():
                        tail = args.worker_log.read_text(errors="replace").splitlines()[-40:]
                        print("the worker log ends with:", *tail, sep="\n")
                    raise
                print_table(rows[-1:])
                if args.json_out:  # after each pool: a later failure keeps the rows so far
                    report = {"scenario": scenario, "results": rows}
                    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print_table(rows)
    for row in rows:
        print(f"targets, pool {row['pool']} (concurrency {row['concurrency']}):")
        print("\n".join(target_lines(row, jobs, bound)))
        if row["servers_rebooted_twice"]:
            print(f"WARNING: {row['servers_rebooted_twice']} servers rebooted twice")


if __name__ == "__main__":
    main()
