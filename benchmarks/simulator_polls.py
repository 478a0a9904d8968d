"""Job polls per second the simulator sustains, for jobs of 10 and of 1000 servers.

    .venv/bin/python benchmarks/simulator_polls.py [--threads 4] [--seconds 5] [--tiny]
        [--json-out PATH]

Runs the simulator twice, in this process and as a ``bmsreboot simulator`` subprocess (rate
limits off, jobs finish at once); each time it creates a few finished jobs of each size, then
lets several client threads poll them for a bounded time, each with its own keep-alive
``requests.Session`` signed by ``worker.bms.signing.AkSkAuth``; every poll parses the JSON, as
a real client does. Prints polls/second and latency percentiles per job size. Clients and
simulator share the machine (and, in-process, the GIL), so the figures are a lower bound of
what the simulator serves. ``--tiny`` polls for half a second with 2 threads (a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from worker.bms.signing import AkSkAuth
from worker.simulator.config import DEFAULT_AK, DEFAULT_PROJECT_ID, DEFAULT_SK, SimulatorConfig
from worker.simulator.server import SimulatorServer

JOBS_PER_SIZE = 4
#: The subprocess simulator, whose CPU time tells its own cost per poll.
SIMULATOR_PIDS: list[int] = []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc); 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


def session() -> requests.Session:
    s = requests.Session()
    s.auth = AkSkAuth(DEFAULT_AK, DEFAULT_SK)
    s.headers["X-Project-Id"] = DEFAULT_PROJECT_ID
    return s


def create_jobs(base_url: str, servers: int) -> list[str]:
    s = session()
    url = f"{base_url}/v1/{DEFAULT_PROJECT_ID}/baremetalservers/action"
    ids = [sid(n) for n in range(servers)]
    body = {"reboot": {"type": "HARD", "servers": [{"id": i} for i in ids]}}
    return [s.post(url, json=body, timeout=10).json()["job_id"] for _ in range(JOBS_PER_SIZE)]


def measure(base_url: str, job_ids: list[str], threads: int, seconds: float) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        s = session()
        mine = latencies[index]
        n = index
        while time.monotonic() < stop_at:
            url = f"{base_url}/v1/{DEFAULT_PROJECT_ID}/jobs/{job_ids[n % len(job_ids)]}"
            started = time.perf_counter()
            resp = s.get(url, timeout=10)
            resp.raise_for_status()
            assert resp.json()["status"] == "SUCCESS"
            mine.append(time.perf_counter() - started)
            n += 1

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    flat = sorted(x for per in latencies for x in per)
    return {
        "polls": len(flat),
        "per_second": len(flat) / elapsed,
        "p50_ms": statistics.median(flat) * 1000,
        "p99_ms": flat[int(len(flat) * 0.99) - 1] * 1000,
    }


@contextlib.contextmanager
def simulator(where: str) -> Iterator[str]:
    """A simulator in this process (sharing the clients' GIL) or as ``bmsreboot simulator``."""
    if where == "in-process":
        config = SimulatorConfig(job_duration=0.0, action_rate_limit=None, job_rate_limit=None)
        with SimulatorServer(config) as server:
            yield server.base_url
        return
    exe = Path(sys.executable).with_name("bmsreboot")
    argv = [str(exe), "simulator", "--port", "0", "--no-rate-limit", "--job-duration", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        SIMULATOR_PIDS.append(proc.pid)
        yield proc.stdout.readline().rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tiny", action="store_true", help="2 threads, 0.5 s per size")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.tiny:
        args.threads, args.seconds = 2, 0.5
    rows: list[dict[str, object]] = []
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}")
    print(f"{args.threads} client threads, {args.seconds:g} s per size, keep-alive, signed")
    for where in ("in-process", "subprocess"):
        with simulator(where) as base_url:
            for servers in (10, 1000):
                job_ids = create_jobs(base_url, servers)
                time.sleep(0.05)  # let the zero-duration jobs reach SUCCESS
                pid = SIMULATOR_PIDS[-1] if where == "subprocess" else None
                cpu_before = cpu_seconds(pid) if pid else 0.0
                r = measure(base_url, job_ids, args.threads, args.seconds)
                cost = ""
                per_poll = None
                if pid:
                    per_poll = (cpu_seconds(pid) - cpu_before) / r["polls"]
                    cost = f", simulator CPU {per_poll * 1000:.2f} ms/poll"
                rows.append(
                    {
                        "where": where,
                        "job_servers": servers,
                        "polls": int(r["polls"]),
                        "polls_per_s": round(r["per_second"], 1),
                        "p50_ms": round(r["p50_ms"], 2),
                        "p99_ms": round(r["p99_ms"], 2),
                        "simulator_cpu_ms_per_poll": per_poll and round(per_poll * 1000, 3),
                    }
                )
                print(
                    f"{where:>10}, jobs of {servers:>4} servers: {r['per_second']:6.0f} polls/s "
                    f"({r['polls']:.0f} polls, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
                    f"{cost})"
                )
    if args.json_out:
        scenario = {"threads": args.threads, "seconds": args.seconds, "cores": os.cpu_count()}
        report = {"scenario": scenario, "results": rows}
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
