"""Memory over a long run: a steady stream of requests, the RSS of each worker process sampled.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--warmup-minutes 3] [--every 2]
        [--servers 10] [--job-duration 5] [--concurrency 4] [--sample-every 5]
        [--max-memory-per-child KIB] [--tracemalloc] [--tracemalloc-every 60]
        [--redis-url URL] [--tiny] [--json-out PATH] [--log-dir DIR]

``--json-out PATH`` also writes every sample to ``PATH`` with the suffix ``.series.json``.

The simulator runs as its own process with the API's documented limits (``bmsreboot simulator``:
50 POSTs and 2000 GETs a minute), jobs of ``--job-duration`` seconds. bmsreboot runs as
production does: one ``celery -A worker worker`` (prefork, ``--concurrency`` pool processes)
and a standalone ``celery -A worker beat``, on Redis (``--redis-url``, an empty db) and a fresh
PostgreSQL database, with its default settings. For ``--minutes``, one request of ``--servers``
servers (one batch) is sent every ``--every`` seconds: with the defaults 30 requests a minute,
as in the soak of 300 requests in 10 minutes that saw the pool children grow.

Every ``--sample-every`` seconds the RSS (``VmRSS``) and the private memory (``Private_Clean +
Private_Dirty`` of ``smaps_rollup``: what the process does not share with the others, copy-on-
write pages included) of the worker's main process, of each pool child and of beat are read from
``/proc``. For each process it reports the first sample after the warm-up (``--warmup-minutes``,
or the first sample of a child born later), the last one, the peak, and the slope (least squares
over the samples after the warm-up, MB a minute; and over their second half alone: growth that
levels off is slower there, a leak is not). A child that the pool replaced (Celery's
``worker_max_memory_per_child``, ``BMSREBOOT_MAX_MEMORY_PER_CHILD``) ends its row; its successor
gets its own. After the last request the benchmark waits for every request to be final and checks
that nothing was lost (else it exits 1): every request final and ``succeeded``, every server
rebooted once (the simulator's counters), no dead letter.

``--tracemalloc`` turns on the worker's diagnostic (``BMSREBOOT_TRACEMALLOC_DIR``,
``worker.diagnostics``): each pool child traces its allocations and reports every
``--tracemalloc-every`` seconds; the report adds, per child, what tracemalloc traced at the first
report and at the last, and the sites that grew most in between. tracemalloc costs CPU and
memory of its own: RSS figures of such a run are not those of a production child.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet
import measure
import workers
from sqlalchemy import func, select

from worker import diagnostics
from worker.db.models import DeadLetter, RebootRequest
from worker.db.session import unit_of_work
from worker.db.states import TERMINAL_REQUEST_STATES
from worker.pipeline.producer import build_payload, send_payload
from worker.simulator.config import DEFAULT_PROJECT_ID

#: The line a pool child logs as it leaves for the memory bound (``worker.celery``).
RECYCLED = re.compile(rb"pool process \d+ replaced: its peak RSS of \d+ KiB passed")


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, private) KiB of a process, None once it is gone."""
    try:
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        private = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1])
        return rss, private
    except (OSError, ValueError):
        return None


class MemorySampler:
    """The worker's main process, its pool children and beat, every ``every`` seconds."""

    def __init__(self, worker_pid: int, beat_pid: int, every: float) -> None:
        self.worker_pid = worker_pid
        self.beat_pid = beat_pid
        self.every = every
        self.t0 = time.monotonic()
        #: pid -> its role ("main", "beat", "child") and samples (seconds, RSS KiB, private KiB)
        self.roles: dict[int, str] = {}
        self.samples: dict[int, list[tuple[float, int, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory", daemon=True)

    def start(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling after one last sample; its time (seconds) is the window's end: a
        child seen in it lived to the end, one last seen earlier was replaced."""
        self._stop.set()
        self._thread.join()
        return self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> float:
        at = time.monotonic() - self.t0
        procs = measure.processes()
        pids = {self.worker_pid: "main", self.beat_pid: "beat"}
        pids |= {pid: "child" for pid, (ppid, _, _) in procs.items() if ppid == self.worker_pid}
        for pid, role in pids.items():
            memory = memory_kib(pid)
            if memory is None:
                continue
            self.roles.setdefault(pid, role)
            self.samples.setdefault(pid, []).append((at, *memory))
        return at

    def rows(self, warmup: float, end: float) -> list[dict[str, Any]]:
        """One row a process, children numbered in the order they were first seen."""
        rows = []
        order = sorted(self.samples, key=lambda p: (self.roles[p] != "main", self.samples[p][0]))
        seen: Counter[str] = Counter()
        for pid in order:
            role = self.roles[pid]
            seen[role] += 1
            name = f"child-{seen[role]}" if role == "child" else role
            rows.append(summary(name, pid, self.samples[pid], warmup, end))
        return rows


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB), as MB a minute; None under 3 points."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    fit = statistics.linear_regression(xs, ys)
    return round(fit.slope * 60, 3)


def summary(
    name: str, pid: int, samples: list[tuple[float, int, int]], warmup: float, end: float
) -> dict[str, Any]:
    window = [s for s in samples if warmup <= s[0] <= end]
    first, last = (window[0], window[-1]) if window else (samples[-1], samples[-1])
    alive_to_end = samples[-1][0] >= end - 1e-6
    return {
        "process": name,
        "pid": pid,
        "first_seen_s": round(samples[0][0], 1),
        "last_seen_s": round(samples[-1][0], 1),
        "replaced": name.startswith("child") and not alive_to_end,
        "rss_start_mb": measure.mb(first[1] * 1024),
        "rss_end_mb": measure.mb(last[1] * 1024),
        "rss_peak_mb": measure.mb(max(s[1] for s in samples) * 1024),
        "rss_slope_mb_per_min": slope([(s[0], s[1] / 1024) for s in window]),
        # Growth that levels off (warming caches) is slower in the second half; a leak is not.
        "rss_slope_second_half_mb_per_min": slope(
            [(s[0], s[1] / 1024) for s in window if s[0] >= (first[0] + last[0]) / 2]
        ),
        "private_start_mb": measure.mb(first[2] * 1024),
        "private_end_mb": measure.mb(last[2] * 1024),
        "private_slope_mb_per_min": slope([(s[0], s[2] / 1024) for s in window]),
        "window_min": round((last[0] - first[0]) / 60, 2),
    }


def send_one(app: Any, servers: int) -> uuid.UUID:
    request_id = uuid.uuid4()
    payload = build_payload(
        DEFAULT_PROJECT_ID, fleet.new_ids(servers), request_id=request_id, source="soak"
    )
    send_payload(app, payload)
    return request_id


def final_count(engine: Any, ids: list[uuid.UUID]) -> int:
    with unit_of_work(engine) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(RebootRequest)
                .where(RebootRequest.id.in_(ids))
                .where(RebootRequest.status.in_(list(TERMINAL_REQUEST_STATES)))
            )
            or 0
        )


def outcome(engine: Any, ids: list[uuid.UUID], base_url: str, servers: int) -> dict[str, Any]:
    with unit_of_work(engine) as session:
        statuses = session.execute(
            select(RebootRequest.status, func.count())
            .where(RebootRequest.id.in_(ids))
            .group_by(RebootRequest.status)
        ).all()
        dead = session.scalar(select(func.count()).select_from(DeadLetter)) or 0
    reboots = fleet.stats(base_url)["reboots"]
    return {
        "requests_sent": len(ids),
        "requests_by_status": {str(status): n for status, n in statuses},
        "servers_sent": len(ids) * servers,
        "servers_rebooted": len(reboots),
        "servers_rebooted_twice": sum(1 for n in reboots.values() if n > 1),
        "dead_letters": int(dead),
    }


def keep_warm_snapshots(directory: Path, warm_at: float) -> None:
    """From the end of the warm-up (``warm_at``, wall clock): each child's first snapshot
    taken since becomes its ``-warm.snap``, the baseline of :func:`tracemalloc_report` (the
    diagnostic's own baseline, its first report, comes before the warm-up). Called until the
    run ends: on a loaded machine a child's second report may come after the warm-up."""
    for latest in directory.glob("tracemalloc-*-latest.snap"):
        warm = latest.with_name(latest.name.replace("-latest", "-warm"))
        if not warm.exists() and latest.stat().st_mtime >= warm_at:
            shutil.copyfile(latest, warm)


def tracemalloc_report(directory: Path) -> list[dict[str, Any]]:
    """Per child: its reports after the warm-up (the first and the last, the slope of what
    tracemalloc traced), and the sites that grew most from its warm snapshot to its latest."""
    children = []
    for path in sorted(directory.glob("tracemalloc-*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        warm_path = path.with_name(path.stem + "-warm.snap")
        latest_path = path.with_name(path.stem + "-latest.snap")
        if not (warm_path.exists() and latest_path.exists()):
            continue
        warm = tracemalloc.Snapshot.load(str(warm_path))
        latest = tracemalloc.Snapshot.load(str(latest_path))
        grew = diagnostics.report(warm, latest)
        # The reports from the warm snapshot on (it was the latest at the end of the warm-up).
        since = max(x["uptime_s"] for x in lines if x["at"] <= warm_path.stat().st_mtime + 1)
        lines = [x for x in lines if x["uptime_s"] >= since]
        if len(lines) < 2:
            continue
        first, last = lines[0], lines[-1]
        minutes = (last["uptime_s"] - first["uptime_s"]) / 60
        children.append(
            {
                "pid": last["pid"],
                "reports": len(lines),
                "minutes": round(minutes, 1),
                "rss_mb": [round(first["rss_kib"] / 1024, 1), round(last["rss_kib"] / 1024, 1)],
                "traced_mb": [
                    round(first["traced_kib"] / 1024, 2),
                    round(last["traced_kib"] / 1024, 2),
                ],
                "traced_slope_mb_per_min": slope(
                    [(x["uptime_s"], x["traced_kib"] / 1024) for x in lines]
                ),
                "rss_slope_mb_per_min": slope(
                    [(x["uptime_s"], x["rss_kib"] / 1024) for x in lines]
                ),
                "compiled_cache_entries": [
                    first.get("compiled_cache_entries"),
                    last.get("compiled_cache_entries"),
                ],
                "by_file": grew["by_file"][:10],
                "by_traceback": grew["by_traceback"][:10],
            }
        )
    return children


def print_rows(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'process':>9} {'pid':>7} {'seen s':>13} {'RSS start':>9} {'end':>7} {'peak':>7} "
        f"{'MB/min':>7} {'2nd half':>8}  {'private start':>13} {'end':>7} {'MB/min':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        seen = f"{r['first_seen_s']:.0f}-{r['last_seen_s']:.0f}"
        print(
            f"{r['process']:>9} {r['pid']:>7} {seen:>13} {r['rss_start_mb']:>9.1f} "
            f"{r['rss_end_mb']:>7.1f} {r['rss_peak_mb']:>7.1f} {fmt(r['rss_slope_mb_per_min'])} "
            f"{fmt(r['rss_slope_second_half_mb_per_min']):>8}  {r['private_start_mb']:>13.1f} "
            f"{r['private_end_mb']:>7.1f} "
            f"{fmt(r['private_slope_mb_per_min'])}"
        )


def fmt(value: float | None) -> str:
    return f"{'-':>7}" if value is None else f"{value:>7.3f}"


def print_tracemalloc(children: list[dict[str, Any]]) -> None:
    for child in children:
        print(
            f"tracemalloc, child {child['pid']} over {child['minutes']} min: traced "
            f"{child['traced_mb'][0]} -> {child['traced_mb'][1]} MB "
            f"({child['traced_slope_mb_per_min']} MB/min), RSS {child['rss_mb'][0]} -> "
            f"{child['rss_mb'][1]} MB, SQLAlchemy's compiled cache "
            f"{child['compiled_cache_entries'][0]} -> {child['compiled_cache_entries'][1]} entries"
        )
        for site in child["by_file"][:5]:
            print(f"  {site['size_diff_kib']:>9.1f} KiB  {site['count_diff']:>7}  {site['file']}")
        for site in child["by_traceback"][:3]:
            print(f"  {site['size_diff_kib']:>9.1f} KiB  {site['count_diff']:>7}  traceback:")
            for frame in site["frames"]:
                print(f"        {frame}")


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    log_dir = args.log_dir or tmp
    args.worker_log = log_dir / "worker.log"
    args.embedded = False
    args.worker_env = {}
    if args.max_memory_per_child is not None:
        args.worker_env["BMSREBOOT_MAX_MEMORY_PER_CHILD"] = str(args.max_memory_per_child)
    trace_dir = log_dir / "tracemalloc"
    if args.tracemalloc:
        args.worker_env["BMSREBOOT_TRACEMALLOC_DIR"] = str(trace_dir)
        args.worker_env["BMSREBOOT_TRACEMALLOC_INTERVAL"] = str(args.tracemalloc_every)
    with (
        workers.simulator_process(args.job_duration, log_dir / "simulator.log", ()) as (
            base_url,
            _,
        ),
        fleet.bmsreboot_workers(base_url, args, tmp, 1, separate_beat=True) as (
            app,
            engine,
            (worker,),
        ),
    ):
        sampler = MemorySampler(worker.pid, args.beat.pid, args.sample_every).start()
        ids: list[uuid.UUID] = []
        started = time.monotonic()
        end = started + args.minutes * 60
        next_send = started
        next_line = started + 60
        warm_at = started + args.warmup_minutes * 60
        warm_wall = time.time() + args.warmup_minutes * 60
        while time.monotonic() < end:
            if args.tracemalloc and time.monotonic() >= warm_at:
                keep_warm_snapshots(trace_dir, warm_wall)
            for proc, what in ((worker, "the worker"), (args.beat, "beat")):
                if proc.poll() is not None:
                    raise RuntimeError(f"{what} exited with {proc.returncode}: see its log")
            ids.append(send_one(app, args.servers))
            next_send += args.every
            now = time.monotonic()
            if now >= next_line:
                next_line += 60
                rss = " ".join(
                    f"{sampler.roles[p]} {p} {s[-1][1] / 1024:.1f}"
                    for p, s in sorted(sampler.samples.items())
                    if s[-1][0] >= now - sampler.t0 - 2 * args.sample_every
                )
                minute = (now - started) / 60
                print(f"  {minute:.0f} min: {len(ids)} requests sent; RSS MB: {rss}", flush=True)
            time.sleep(max(0.0, min(next_send, end) - time.monotonic()))
        window_end = sampler.stop()
        # What tracemalloc saw over the run's window, before the wait for the last requests
        # (a slow drain must not cost the report).
        traced = None
        if args.tracemalloc:
            keep_warm_snapshots(trace_dir, warm_wall)
            traced = tracemalloc_report(trace_dir)
        deadline = time.monotonic() + 300 + 10 * args.job_duration
        while final_count(engine, ids) < len(ids):
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}: see its log")
            if time.monotonic() > deadline:
                raise TimeoutError("requests still not final 5 minutes after the last one")
            time.sleep(1.0)
        lost = outcome(engine, ids, base_url, args.servers)
    warmup = args.warmup_minutes * 60 + (started - sampler.t0)
    rows = sampler.rows(warmup, window_end)
    recycled = len(RECYCLED.findall(args.worker_log.read_bytes()))
    series = {
        row["process"]: {"pid": row["pid"], "samples": sampler.samples[row["pid"]]} for row in rows
    }
    report: dict[str, Any] = {
        "results": rows,
        "series": series,
        "outcome": lost | {"children_recycled_for_memory": recycled},
    }
    if traced is not None:
        report["tracemalloc"] = traced
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="of requests sent")
    parser.add_argument("--warmup-minutes", type=float, default=3.0, help="left out of slopes")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between requests")
    parser.add_argument("--servers", type=int, default=10, help="servers a request (one batch)")
    parser.add_argument("--job-duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--concurrency", type=int, default=4, help="pool processes")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--max-memory-per-child",
        type=int,
        help="KiB, as BMSREBOOT_MAX_MEMORY_PER_CHILD (0: off; default: the worker's own)",
    )
    parser.add_argument("--tracemalloc", action="store_true", help="trace the pool children")
    parser.add_argument("--tracemalloc-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="an empty db")
    parser.add_argument("--tiny", action="store_true", help="30 s, a request a second")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--log-dir", type=Path, help="keep the logs (and tracemalloc's) here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.tiny:
        args.minutes, args.warmup_minutes, args.every = 0.5, 0.1, 1.0
        args.job_duration, args.sample_every, args.tracemalloc_every = 1.0, 1.0, 5.0
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    scenario = {
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "every_s": args.every,
        "servers_per_request": args.servers,
        "job_duration_s": args.job_duration,
        "concurrency": args.concurrency,
        "sample_every_s": args.sample_every,
        "max_memory_per_child_kib": args.max_memory_per_child,
        "tracemalloc": args.tracemalloc,
        "cores": os.cpu_count(),
    }
    print(
        f"soak: a request of {args.servers} servers every {args.every:g} s for "
        f"{args.minutes:g} min (warm-up {args.warmup_minutes:g} min), jobs of "
        f"{args.job_duration:g} s, concurrency {args.concurrency}, RSS every "
        f"{args.sample_every:g} s"
        + (
            f", max memory per child {args.max_memory_per_child} KiB"
            if args.max_memory_per_child is not None
            else ""
        )
        + (", tracemalloc on" if args.tracemalloc else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bmsreboot-soak-") as directory:
        try:
            report = run(args, Path(directory))
        except Exception:
            log = (args.log_dir or Path(directory)) / "worker.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-40:]
                print("the worker log ends with:", *tail, sep="\n")
            raise
    report = {"scenario": scenario, **report}
    print()
    print_rows(report["results"])
    print("outcome:", json.dumps(report["outcome"]))
    if "tracemalloc" in report:
        print_tracemalloc(report["tracemalloc"])
    series = report.pop("series")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        # Every sample, (seconds, RSS KiB, private KiB) by process, beside the report (not in
        # it: run_all.py summarizes every number of a report).
        series_out = args.json_out.with_suffix(".series.json")
        series_out.write_text(json.dumps(series) + "\n")
    o = report["outcome"]
    if (
        o["servers_rebooted"] != o["servers_sent"]
        or o["servers_rebooted_twice"]
        or o["dead_letters"]
        or o["requests_by_status"] != {"succeeded": o["requests_sent"]}
    ):
        # A replaced child, a slow machine or a long run may cost time, never a request.
        sys.exit("soak: something was lost or done twice (see the outcome)")


if __name__ == "__main__":
    main()
