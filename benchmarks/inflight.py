"""Thousands of jobs in flight on one project, held under the job route's limit.

    .venv/bin/python benchmarks/inflight.py [--jobs 2000] [--job-duration 45] [--json-out PATH]

One request of N servers in batches of one (N jobs) on one project of the simulator, whose job
route enforces its documented 2000 GETs a minute (the action route is left unlimited here, and
so is bmsreboot's action budget, so that the jobs pile up). bmsreboot runs with its default job
budget (2000 a minute) after a warm-up that teaches it the job duration. It prints the most jobs
the simulator had running at once, the GETs and 429s on the job route, GETs per job, the wall
time and the detection delays. (The simulator's token bucket starts full, so 0 x 429 shows the
budget held in steady state.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet

from worker.simulator.config import SimulatorConfig
from worker.simulator.server import SimulatorServer


def most_at_once(jobs: dict[str, Any]) -> int:
    edges = sorted(
        [(j["created"], 1) for j in jobs.values()] + [(j["ends"], -1) for j in jobs.values()]
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--job-duration", type=float, default=45.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="an empty db")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    args.embedded = False
    args.worker_env = {"BMSREBOOT_ACTION_RATE_LIMIT": "1000000"}
    config = SimulatorConfig(
        job_duration=args.job_duration, action_rate_limit=None, job_rate_limit=fleet.JOB_LIMIT
    )
    print(
        f"in flight: {args.jobs} jobs of {args.job_duration:g} s on one project; simulator job "
        f"route {fleet.JOB_LIMIT}/min; bmsreboot job budget 2000/min, concurrency "
        f"{args.concurrency}"
    )
    with tempfile.TemporaryDirectory(prefix="bmsreboot-inflight-") as directory:
        tmp = Path(directory)
        args.worker_log = tmp / "worker.log"
        with SimulatorServer(config) as sim:
            timeout = 20 * args.job_duration + 600
            with fleet.bmsreboot_worker(sim.base_url, args, tmp) as (app, engine, worker):
                warm = fleet.new_ids(4)
                seconds, _ = fleet.run_request(app, engine, worker, warm, 1, timeout)
                print(f"  warm-up: 4 jobs in {seconds:.1f} s")
                fleet.reset(sim.base_url)
                started = time.monotonic()
                ids = fleet.new_ids(args.jobs)
                seconds, status = fleet.run_request(app, engine, worker, ids, 1, timeout)
                elapsed = time.monotonic() - started
            counters = fleet.stats(sim.base_url)
    calls = counters["calls"]["jobs"]
    gets = sum(calls.values())
    delays = [
        fleet.epoch(b["detected_at"]) - fleet.epoch(b["job_ended_at"])
        for b in status["batches"]
        if b["detected_at"] and b["job_ended_at"]
    ]
    row = {
        "jobs": args.jobs,
        "job_duration_s": args.job_duration,
        "status": status["status"],
        "wall_s": round(seconds, 1),
        "most_jobs_at_once": most_at_once(counters["jobs"]),
        "gets": gets,
        "gets_per_job": round(gets / args.jobs, 2),
        "job_route_429": calls["throttled"],
        "action_429": counters["calls"]["action"]["throttled"],
        "detect_median_s": round(statistics.median(delays), 2) if delays else None,
        "detect_p90_s": round(statistics.quantiles(delays, n=10)[-1], 2) if delays else None,
        "detect_worst_s": round(max(delays), 2) if delays else None,
        "servers_rebooted_twice": sum(1 for n in counters["reboots"].values() if n > 1),
        "elapsed_s": round(elapsed, 1),
    }
    for key, value in row.items():
        print(f"  {key:<24} {value}")
    if args.json_out:
        args.json_out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
