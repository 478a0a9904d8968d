"""Time resolving a selector of a large fleet at intake, against the list budget.

    .venv/bin/python benchmarks/selector.py [--servers 100000] [--list-rate-limit 500]
        [--runs 3] [--tiny] [--json-out PATH]

The simulator runs as its own process with N generated servers in one project and its list
route limited as the API documents it (500 calls a minute); intake runs here, on a fresh
PostgreSQL database (``BMSREBOOT_TEST_PG_*``, default postgres@127.0.0.1:5432), with the
project's list budget at the same rate. One request names every server by a part of the name
(``bms-``); the script times intake from the message to the recorded request, and compares it
with the least time the list calls take at the budget: (calls - 1) x 60 / rate, since one call
may go at once. Target (issue "The fleet's inventory"): at most 1.2 x that. ``--tiny`` runs
2,000 servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import create_request

from worker.db.session import make_engine, upgrade_database
from worker.pipeline import intake
from worker.pipeline.runtime import RecordingDispatcher, Runtime
from worker.settings import Settings
from worker.simulator.config import DEFAULT_AK, DEFAULT_PROJECT_ID, DEFAULT_SK

PROJECT = DEFAULT_PROJECT_ID


@contextlib.contextmanager
def simulator(servers: int, rate: int) -> Iterator[str]:
    """``bmsreboot simulator`` with ``servers`` servers and the list route at ``rate``."""
    exe = Path(sys.executable).with_name("bmsreboot")
    argv = [str(exe), "simulator", "--port", "0", "--servers", str(servers)]
    argv += ["--list-rate-limit", str(rate)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if " listening on " not in line:
            raise RuntimeError(f"the simulator did not start: {line!r}")
        threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_once(base_url: str, database_url: str, servers: int, rate: int) -> dict[str, Any]:
    from worker.bms.client import BmsClient

    requests.post(f"{base_url}/_simulator/reset", timeout=10).raise_for_status()
    settings = Settings(
        bms_endpoint=base_url,
        ak=DEFAULT_AK,
        sk=DEFAULT_SK,
        list_rate_limit=rate,
        database_url=database_url,
        max_request_servers=max(servers, 1_000_000),
    )
    client = BmsClient.from_settings(settings)
    engine = make_engine(database_url)
    rt = Runtime(
        settings=settings,
        engine=engine,
        client=lambda: client,
        dispatcher=RecordingDispatcher(),
        actor="benchmark",
    )
    payload = {"request_id": str(uuid.uuid4()), "project_id": PROJECT, "selector": {"name": "bms-"}}
    started = time.perf_counter()
    result = intake.accept_request(payload, rt)
    took = time.perf_counter() - started
    client.close()
    engine.dispose()
    assert result.status == "accepted", result.reasons
    stats = requests.get(f"{base_url}/_simulator/stats", timeout=30).json()
    calls = stats["calls"]["servers"]
    lower = max(calls["accepted"] - 1, 0) * 60.0 / rate
    return {
        "servers": servers,
        "list_calls": calls["accepted"],
        "list_throttled": calls["throttled"],
        "list_calls_at_budget_s": round(lower, 2),
        "recorded_s": round(took, 2),
        "ratio": round(took / lower, 3) if lower else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=100_000)
    parser.add_argument("--list-rate-limit", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="2,000 servers, one run")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.tiny:
        args.servers, args.runs = 2000, 1
    name = f"bmsreboot_bench_{uuid.uuid4().hex[:10]}"
    create_request._admin(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql+psycopg://{create_request.USER}@{create_request.HOST}:{create_request.PORT}/{name}"
    try:
        upgrade_database(database_url)
        with simulator(args.servers, args.list_rate_limit) as base_url:
            runs = [
                run_once(base_url, database_url, args.servers, args.list_rate_limit)
                for _ in range(args.runs)
            ]
    finally:
        create_request._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    recorded = [r["recorded_s"] for r in runs]
    report = {
        "scenario": f"a selector of {args.servers} servers, {args.list_rate_limit} list calls/min",
        "results": runs,
        "recorded_s_median": statistics.median(recorded),
        "ratio_median": statistics.median(r["ratio"] for r in runs if r["ratio"] is not None)
        if any(r["ratio"] is not None for r in runs)
        else None,
    }
    heads = ("run", 4), ("servers", 8), ("calls", 6), ("429", 4), ("budget s", 9)
    print(" ".join(f"{h:>{w}}" for h, w in heads), f"{'recorded s':>11} {'ratio':>6}")
    for i, r in enumerate(runs, start=1):
        print(
            f"{i:>4} {r['servers']:>8} {r['list_calls']:>6} {r['list_throttled']:>4} "
            f"{r['list_calls_at_budget_s']:>9} {r['recorded_s']:>11} {r['ratio'] or '-':>6}"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
